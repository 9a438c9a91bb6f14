"""The image catalogue: one row per raw image, checked before any work is done.

Builds on :mod:`protoseg.naming` (which only reads names) by opening every file and
reading all its pixels. What stops the run here, with a message naming the file:

* unreadable or truncated images;
* anything but one 2D plane: a z-stack or multi-page TIFF (axes ``ZYX``, ``QYX``, ...,
  named in the message) is refused, since each focal plane is its own file named with
  its ``z``; colour stored channels-first (``SYX``);
* channel counts other than 1 (greyscale), 3 (RGB) and 4 (RGBA);
* pixel types other than unsigned integers, bool and float: a signed integer image;
* float images with NaN or infinite values, or values outside [0, 1] (see
  :data:`FLOAT_TOLERANCE`): later steps take a float image as already scaled to
  [0, 1], while unsigned integers are divided by their type's maximum (uint8 by 255,
  uint16 by 65535);
* images of one state with different heights and widths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from protoseg import naming
from protoseg.errors import InputError
from protoseg.io import read_image_axes

STANDARD_COLUMNS = [
    "path",
    "day",
    "time",
    "channel",
    "modality",
    "xy",
    "z",
    "state",
    "height",
    "width",
    "channels",
    "dtype",
]
# Channel counts of a plane: greyscale, RGB, RGBA.
CHANNEL_COUNTS = (1, 3, 4)
# Float pixels may stray this far outside [0, 1] (rounding); later steps clip them.
FLOAT_TOLERANCE = 1e-3
# tifffile's axis letters for the rows, columns and colour samples of one plane.
PLANE_AXES = {"Y", "X", "S"}
EXPECTED_LAYOUT = "expected greyscale (1 channel), RGB (3) or RGBA (4), one 2D plane per file"


def plane_layout(path: str | Path, shape: tuple[int, ...], axes: str) -> tuple[int, int, int]:
    """Height, width and channel count of an image whose axes are ``axes`` (tifffile's letters).

    Other axes of length 1 are ignored (``H x W x 1`` is greyscale; :func:`protoseg.io.read_image`
    drops leading ones, ``1 x H x W``). Raises :class:`InputError` naming the file and its axes
    when it is not one 2D plane of 1, 3 or 4 channels.
    """
    described = f"axes {axes}, shape {'x'.join(map(str, shape))}"
    kept = [
        (axis, size) for axis, size in zip(axes, shape, strict=True) if size > 1 or axis in "YX"
    ]
    letters = "".join(axis for axis, _ in kept)
    sizes = dict(kept)
    if letters in ("YX", "YXS") and axes.startswith("YX"):
        channels = sizes.get("S", 1)
        if channels not in CHANNEL_COUNTS:
            raise InputError(path, f"{channels} channels ({described}); {EXPECTED_LAYOUT}")
        return sizes["Y"], sizes["X"], channels
    if letters in ("SYX", "CYX") and sizes[letters[0]] in (3, 4):
        raise InputError(
            path,
            f"channels-first colour image ({described}); store colour as the last axis "
            f"(height x width x {sizes[letters[0]]})",
        )
    extra = [(axis, size) for axis, size in kept if axis not in PLANE_AXES]
    if "Y" in sizes and "X" in sizes and extra:
        planes = int(np.prod([size for _, size in extra]))
        problem = (
            f"a stack of {planes} planes of {sizes['Y']} x {sizes['X']} pixels ({described}), "
            "e.g. a z-stack or multi-page TIFF. protoseg reads one focal plane per file: save "
            "each plane as its own file, named with its z (docs/troubleshooting.md)"
        )
        if len(shape) == 3 and shape[-1] not in CHANNEL_COUNTS and shape[-1] <= 4:
            # tifffile writes an H x W x 2 array as H pages of W x 2: say both readings.
            problem += (
                f". If it is one {shape[0]} x {shape[1]} image with {shape[-1]} channels: "
                f"{EXPECTED_LAYOUT}"
            )
        raise InputError(path, problem)
    raise InputError(path, f"not one 2D image ({described}); {EXPECTED_LAYOUT}")


def check_pixels(path: str | Path, image: np.ndarray) -> None:
    """Refuse pixel types and values the later steps cannot scale to [0, 1].

    Unsigned integers and bool are always fine (divided by the type's maximum, or 0/1).
    Float images must be finite and within [0, 1] (give or take :data:`FLOAT_TOLERANCE`):
    they are taken as already scaled, so a float image of 0..255 would become all 1.
    """
    dtype = image.dtype
    if np.issubdtype(dtype, np.bool_) or np.issubdtype(dtype, np.unsignedinteger):
        return
    if np.issubdtype(dtype, np.signedinteger):
        low, high = (image.min(), image.max()) if image.size else (0, 0)
        raise InputError(
            path,
            f"signed integer pixels ({dtype}, values {low}..{high}); protoseg scales unsigned "
            "integers by their type's maximum: save the image as uint8 or uint16",
        )
    if not np.issubdtype(dtype, np.floating):
        raise InputError(
            path, f"unsupported pixel type {dtype}; use uint8, uint16 or float in [0, 1]"
        )
    finite = np.isfinite(image)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = bad[0]
        kinds = sorted({"NaN" if np.isnan(v) else "infinite" for v in image[~finite][:1000]})
        raise InputError(
            path,
            f"{len(bad)} {' and '.join(kinds)} pixel value(s) ({dtype}), the first at row "
            f"{first[0]}, column {first[1]}; every pixel must be a finite number",
        )
    if not image.size:
        return
    low, high = float(image.min()), float(image.max())
    if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
        raise InputError(
            path,
            f"float pixels ({dtype}) range from {low:g} to {high:g}, outside [0, 1]; protoseg "
            "takes float images as already scaled to [0, 1]. Divide by the right maximum "
            "(e.g. 255 or 65535) or save the image as uint8/uint16",
        )


def describe_image(path: str | Path) -> dict:
    """Height, width, channels and dtype of one image, after every check of one file."""
    image, axes = read_image_axes(path)
    height, width, channels = plane_layout(path, image.shape, axes)
    check_pixels(path, image)
    return {"height": height, "width": width, "channels": channels, "dtype": str(image.dtype)}


def describe_images(records: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """Add height, width, channels and dtype, read and checked from each file."""
    shapes = [
        describe_image(path)
        for path in tqdm(records["path"], desc="catalogue", unit="image", disable=not progress)
    ]
    return pd.concat([records.reset_index(drop=True), pd.DataFrame(shapes)], axis=1)


def check_shapes(catalogue: pd.DataFrame) -> None:
    """All images of a state (both channels, all planes) must share height and width."""
    for state, group in catalogue.groupby("state", sort=True):
        sizes = group[["height", "width"]].drop_duplicates()
        if len(sizes) > 1:
            reference = group.iloc[0]
            odd = group[
                (group["height"] != reference["height"]) | (group["width"] != reference["width"])
            ].iloc[0]
            raise InputError(
                odd["path"],
                f"shape {odd['height']}x{odd['width']} differs from the other images of state {state} "
                f"({reference['height']}x{reference['width']}, e.g. {reference['path']})",
            )


def build_catalogue(
    paths: list[str | Path], raw_dir: str | Path, data_cfg: dict, progress: bool = True
) -> pd.DataFrame:
    """Parse, open and check every image; return the catalogue table."""
    if not paths:
        raise InputError(raw_dir, "no images found (check data.raw_dir and data.pattern)")
    if data_cfg.get("sample_sheet"):
        # The sheet, not the names, says what each file is.
        records = naming.read_sample_sheet(data_cfg["sample_sheet"], data_cfg, raw_dir)
        records = records[records["path"].isin([str(path) for path in paths])].reset_index(
            drop=True
        )
    else:
        records = naming.parse_paths(paths, raw_dir, data_cfg)
    naming.check_complete(records, data_cfg, data_cfg.get("sample_sheet") or raw_dir)
    catalogue = describe_images(records, progress=progress)
    check_shapes(catalogue)
    ordered = [c for c in STANDARD_COLUMNS if c in catalogue.columns]
    return catalogue[ordered + [c for c in catalogue.columns if c not in ordered]]
