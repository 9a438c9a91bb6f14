"""Reading images and writing outputs atomically.

Every writer goes through :func:`atomic_path`: the data is written to a
temporary file beside the target and renamed into place, so an interrupted or
failed step never leaves a half-written output that Snakemake would trust.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

from protoseg.errors import InputError

TIFF_SUFFIXES = {".tif", ".tiff"}
OTHER_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
IMAGE_SUFFIXES = TIFF_SUFFIXES | OTHER_IMAGE_SUFFIXES


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the permissions of a normal file.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF or PNG/JPEG image as it is stored (RGB order for colour images).

    Raises :class:`InputError` naming the file when it is missing, unreadable or
    truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        try:
            image = tifffile.imread(path)
        except Exception as error:  # tifffile raises many types for corrupt files
            raise InputError(
                path, f"unreadable or truncated TIFF ({type(error).__name__}: {error})"
            ) from error
    elif suffix in OTHER_IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InputError(path, "unreadable or truncated image (OpenCV could not decode it)")
        if image.ndim == 3 and image.shape[2] in (3, 4):
            image = cv2.cvtColor(
                image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
            )
    else:
        raise InputError(
            path, f"unsupported image type '{path.suffix}' (use one of {sorted(IMAGE_SUFFIXES)})"
        )
    if image.ndim not in (2, 3):
        raise InputError(
            path, f"expected a 2D greyscale or colour image, got an array of shape {image.shape}"
        )
    return np.asarray(image)


def image_header(path: str | Path) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of an image without decoding all of it where the format allows."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype = tuple(series.shape), str(series.dtype)
            # Decode once as well: a truncated file often has an intact header.
            tifffile.imread(path)
            return shape, dtype
        except Exception as error:
            raise InputError(
                path, f"unreadable or truncated TIFF ({type(error).__name__}: {error})"
            ) from error
    image = read_image(path)
    return tuple(image.shape), str(image.dtype)


def write_tiff(path: str | Path, array: np.ndarray, **kwargs) -> None:
    """Write ``array`` as a (zlib-compressed) TIFF atomically."""
    kwargs.setdefault("compression", "zlib")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, **kwargs)


def write_csv(path: str | Path, table: pd.DataFrame, **kwargs) -> None:
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, **kwargs)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB (or greyscale) uint8 image as PNG atomically."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):  # tmp keeps the .png suffix cv2 needs
            raise OSError(f"{path}: could not write PNG")


def save_figure(path: str | Path, figure, **kwargs) -> None:
    """Save a matplotlib figure atomically (format from the target's suffix)."""
    kwargs.setdefault("dpi", 120)
    kwargs.setdefault("bbox_inches", "tight")
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)


def save_npz(path: str | Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
