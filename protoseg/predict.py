"""Apply a trained U-Net to new images of any size: label TIFFs and overlays per image.

A model file carries the data set record it was trained on (:mod:`protoseg.dataset`), so a
new image is prepared exactly as the training images were
(:func:`protoseg.transforms.prepare_image`) and predicted by the same sliding window that
evaluation uses (:func:`protoseg.inference.predict_image`):

* ``resize`` geometry (the study): each image resized whole to the training size, as every
  training image was whatever its size (right for whole fields of view of one microscope);
* ``patches`` geometry: each image rescaled by the training scale factor, so its cells appear
  at the size the model learnt, then covered by Gaussian-blended tiles of the training
  patch (or ``predict.tile``).

Probabilities are brought back to the image's own size and thresholded at the model's
threshold (chosen on validation images in training, or the configured one), unless
``predict.threshold`` overrides it.

Cells: a model with instance outputs (:mod:`protoseg.instances`) gives its own, by the
seeded watershed with the settings stored in it (``instances: auto``, the default, or
``model``); binary models' cells are the connected components (``auto``, ``cc``) or a
distance watershed of the binary mask (``watershed``).

Per input image ``NAME.ext`` the output folder gets ``NAME_binary.tif`` (uint8, 1 = cell),
``NAME_labels.tif`` (uint16 instance labels, 0 = background), ``NAME_overlay.png`` (cell
outlines on the image; each cell in its own colour for a model's own instances) and one row
in ``predictions.csv``.

A focal-context model (``context_planes`` k > 0, docs/focal-context.md) looks at each plane
with its k neighbouring planes on each side, so it takes focal stacks (:func:`plan_inputs`):

* per-plane files named by the config's ``data.pattern`` (as the raw images are): each
  file's window is found among the inputs by state, channel and plane (``data.planes``,
  the stack's ends repeated); a plane the window needs and the inputs lack is an error
  naming the state and plane, before anything is predicted. Outputs as above, per file.
* multi-page TIFFs, the pages being the planes in order: ``NAME_binary.tif`` and
  ``NAME_labels.tif`` get one page per plane, ``NAME_overlay.png`` the planes side by side,
  ``predictions.csv`` one row per page.

A single image (one plane, not named by the pattern) is refused for such a model.

Microscope containers (OME-TIFF, OME-Zarr, ND2, CZI, LIF; :mod:`protoseg.stacks`) are read
through :class:`protoseg.stacks.Stack`: every scene and time point is one stack, segmented
plane by plane (a focal-context model: each plane with its neighbours along Z) in the
channel whose ``data.channels`` modality the model was trained on, or a single-channel
file's only channel. Its outputs are named ``NAME_s{scene}_t{time}`` where the file has
more than one scene or time point (only the axis that has more). Plain multi-page TIFFs
keep :func:`protoseg.io.read_planes`: bioio-tifffile reads tifffile's unnamed page axis as
Z for grey pages but as channels for colour ones, so it would change what a stack of RGB
planes means.

``predict.format: ome-zarr`` writes ``NAME.ome.zarr`` (:func:`write_ome_zarr`) instead of
the two TIFFs: the input planes as the NGFF image, the instance labels as ``labels/cells``
and the binary mask as ``labels/mask``, scaled in micrometres by the file's pixel size (or
``data.pixel_size``), so napari opens image and labels together at the right scale.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from protoseg.config import complete_section
from protoseg.device import resolve_placement
from protoseg.errors import ConfigError, InputError
from protoseg.io import (
    IMAGE_SUFFIXES,
    atomic_dir,
    image_header,
    read_image,
    read_planes,
    write_csv,
    write_png,
    write_tiff,
)
from protoseg.qc import OUTLINE_COLOUR, overlay_instances, overlay_outlines, with_zoomed_crop
from protoseg.segmenter import Segmenter, compact_labels
from protoseg.stacks import (
    SUFFIX_FORMATS,
    Stack,
    StackInfo,
    configured_pixel_size,
    is_zarr_folder,
    open_stack,
    pixel_size_um,
    resolve_format,
)
from protoseg.transforms import context_window, join_planes

log = logging.getLogger(__name__)

SUMMARY_NAME = "predictions.csv"
# Container files besides TIFFs (OME-Zarr is a folder ending in .zarr).
CONTAINER_SUFFIXES = frozenset(
    Path(ending).suffix for ending in SUFFIX_FORMATS if not ending.endswith(".zarr")
)
INPUT_SUFFIXES = IMAGE_SUFFIXES | CONTAINER_SUFFIXES
ZARR_SUFFIX = ".zarr"
PIXEL_SIZE_KEY = "data.pixel_size"


def input_stem(path: str | Path) -> str:
    """The name an input's outputs start with: the file name without its format's ending
    (``a.ome.tif`` and ``a.ome.zarr`` give ``a``, as ``a.tif`` does)."""
    name = Path(path).name
    for ending in sorted(SUFFIX_FORMATS, key=len, reverse=True):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return Path(path).stem


def image_files(inputs: list[str | Path]) -> list[Path]:
    """The image files named by ``inputs``: files (and OME-Zarr folders) as given, other
    folders by their image files and OME-Zarr folders.

    Folders are not searched recursively; hidden files are skipped. Raises
    :class:`InputError` for a missing path, a file that is not an image, an input with no
    image at all, or two images whose names would give the same output names.
    """
    suffixes = ", ".join(sorted(INPUT_SUFFIXES | {ZARR_SUFFIX}))
    files: list[Path] = []
    for entry in inputs:
        path = Path(entry)
        if is_zarr_folder(path):
            files.append(path)
        elif path.is_dir():
            found = sorted(
                child
                for child in path.iterdir()
                if not child.name.startswith(".")
                and (
                    (child.is_file() and child.suffix.lower() in INPUT_SUFFIXES)
                    or is_zarr_folder(child)
                )
            )
            if not found:
                raise InputError(path, f"folder holds no image files ({suffixes})")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in INPUT_SUFFIXES:
                raise InputError(path, f"not an image file (use one of {suffixes})")
            files.append(path)
        else:
            raise InputError(path, "no such file or folder")
    if not files:
        raise InputError("<inputs>", "no images given")
    by_stem: dict[str, Path] = {}
    for path in files:
        stem = input_stem(path)
        if stem in by_stem and by_stem[stem].resolve() != path.resolve():
            raise InputError(
                path, f"has the same name as {by_stem[stem]}, so their outputs would collide"
            )
        by_stem[stem] = path
    return list(by_stem.values())


def output_paths(out_dir: str | Path, stem: str, data_format: str = "tiff") -> dict[str, Path]:
    """The files written for the image named ``stem`` in ``predict.format`` ``data_format``:
    binary and label TIFFs, or one OME-Zarr holding both; the overlay either way."""
    out_dir = Path(out_dir)
    if data_format == "ome-zarr":
        masks = {"zarr": out_dir / f"{stem}.ome.zarr"}
    else:
        masks = {
            "binary": out_dir / f"{stem}_binary.tif",
            "labels": out_dir / f"{stem}_labels.tif",
        }
    return {**masks, "overlay": out_dir / f"{stem}_overlay.png"}


def check_channels(path: str | Path, model: Segmenter, shape=None) -> None:
    """Refuse an image whose channels the model cannot take, from its header alone (or from
    ``shape``, one plane's, e.g. a page of a stack)."""
    if shape is None:
        shape, _ = image_header(path)
    if len(shape) == 3 and shape[2] not in (1, 3, 4):
        raise InputError(
            path,
            f"has {shape[2]} channels; the model {model.name} takes greyscale or RGB(A) images "
            f"({model.preprocessing.channels} channel(s) after '{model.colour}' conversion)",
        )
    # Greyscale and colour images both convert to the model's channels ('rgb' repeats a
    # grey image, 'grey' takes the luminance of a colour one).


# ---------------------------------------------------------------- focal stacks
@dataclass(frozen=True)
class PredictInput:
    """One input file and where the focal window of each of its planes comes from.

    ``stack`` False: the file is one plane, predicted from ``window``, the files of its
    focal window in channel order (the file alone for a single-plane model); ``plane`` is its
    z (focal-context models). ``stack`` True: a multi-page TIFF whose pages are the planes,
    each predicted with its neighbouring pages, or (``container``, its format) one
    ``scene`` and ``time`` point of a microscope container, whose Z planes are the stack.
    ``stem``: what its outputs are named (the file's name without its ending, by default).
    """

    path: Path
    stack: bool
    window: tuple[Path, ...] = ()
    plane: int | None = None
    container: str | None = None
    scene: int = 0
    time: int = 0
    stem: str = ""

    def __post_init__(self):
        if not self.stem:
            object.__setattr__(self, "stem", input_stem(self.path))


def container_format(path: Path) -> str | None:
    """The format of a microscope container that :class:`protoseg.stacks.Stack` reads, or
    None for an ordinary image or a plain multi-page TIFF (:func:`protoseg.io.read_planes`:
    bioio-tifffile would read a stack of colour pages as channels)."""
    found = resolve_format(path)
    return None if found in (None, "tiff") else found


def container_inputs(path: Path, data_format: str) -> list[PredictInput]:
    """One input per scene and time point of a container; the scene's index and the time
    point join the output names where the file has more than one of them."""
    items = []
    with Stack(path, data_format) as stack:
        for scene in range(len(stack.scenes)):
            times = stack.info(scene).times
            for time in range(times):
                stem = input_stem(path)
                stem += f"_s{scene}" if len(stack.scenes) > 1 else ""
                stem += f"_t{time}" if times > 1 else ""
                items.append(
                    PredictInput(
                        path, stack=True, container=data_format, scene=scene, time=time, stem=stem
                    )
                )
    return items


def plan_inputs(
    files: list[Path], context_planes: int, data_cfg: dict | None, name: str = "the model"
) -> list[PredictInput]:
    """What each input is and what each of its planes is predicted from, from the file
    names, TIFF headers and containers' metadata (no pixels read).

    A microscope container (:func:`container_format`) gives one stack per scene and time
    point (:func:`container_inputs`). Of the other files, a single-plane model
    (``context_planes`` 0) takes each as one plane. A focal-context model takes the files
    ``data.pattern`` names (``data_cfg``) as planes of stacks, each with its window of the
    same state and channel among the inputs (:func:`protoseg.transforms.context_window`
    over ``data.planes``); a plane the window needs that no input is raises
    :class:`InputError` naming the file, the state and the missing plane. Files the pattern
    does not name (or all, without ``data_cfg``) must be multi-page stacks, which
    :func:`predict_files` checks when it reads them. Two inputs whose outputs would have
    one name are an :class:`InputError`.
    """
    files = [Path(path) for path in files]
    containers = {
        path: container_inputs(path, found) for path in files if (found := container_format(path))
    }
    others = plan_planes(
        [path for path in files if path not in containers], context_planes, data_cfg, name
    )
    planned = [
        item
        for path in files
        for item in (containers[path] if path in containers else [others[path]])
    ]
    by_stem: dict[str, Path] = {}
    for item in planned:
        if item.stem in by_stem and by_stem[item.stem] != item.path:
            raise InputError(
                item.path,
                f"gives outputs named {item.stem}, as {by_stem[item.stem]} does: rename one",
            )
        by_stem[item.stem] = item.path
    return planned


def plan_planes(
    files: list[Path], context_planes: int, data_cfg: dict | None, name: str
) -> dict[Path, PredictInput]:
    """:func:`plan_inputs` of ordinary images and plain multi-page TIFFs, by file."""
    if not files:
        return {}
    if not context_planes:
        return {path: PredictInput(path, False, (path,)) for path in files}
    if data_cfg is None:
        return {path: PredictInput(path, True) for path in files}
    from protoseg.catalogue import match_names

    records, unnamed = match_names(files, data_cfg)
    found = {
        (str(state), str(channel), int(z)): Path(path)
        for state, channel, z, path in zip(
            records["state"], records["channel"], records["z"], records["path"], strict=True
        )
    }
    windows: dict[Path, PredictInput] = {}
    for state, channel, z, path in zip(
        records["state"], records["channel"], records["z"], records["path"], strict=True
    ):
        window = []
        for plane in context_window(data_cfg["planes"], int(z), context_planes):
            neighbour = found.get((str(state), str(channel), plane))
            if neighbour is None:
                raise InputError(
                    path,
                    f"is plane z{z} of state {state} (channel {channel}); {name} looks at "
                    f"{context_planes} neighbouring plane(s) on each side, but no input is "
                    f"plane z{plane} of state {state} (channel {channel}): give every plane of "
                    "the stack, each a file named by data.pattern, or the stack as a "
                    "multi-page TIFF",
                )
            window.append(neighbour)
        windows[Path(path)] = PredictInput(Path(path), False, tuple(window), int(z))
    unnamed = set(unnamed)
    return {path: PredictInput(path, True) if path in unnamed else windows[path] for path in files}


def read_stack(item: PredictInput, model: Segmenter) -> list[np.ndarray]:
    """The planes of a multi-page input, checked: more than one, each of channels the model
    takes. A single image is refused: a focal-context model needs the planes around it."""
    planes = read_planes(item.path)
    if len(planes) < 2:
        raise InputError(
            item.path,
            f"is a single image, but {model.name} is a focal-context model: it looks at each "
            f"plane with its {model.context_planes} neighbouring plane(s) on each side, so it "
            "takes focal stacks: a multi-page TIFF of the planes, or every plane as its own "
            "file named by the config's data.pattern (protoseg predict --config)",
        )
    for page, plane in enumerate(planes, start=1):
        check_channels(f"{item.path} (page {page})", model, plane.shape)
    return planes


def container_channel(info: StackInfo, model: Segmenter, data_cfg: dict | None) -> int:
    """The channel of a container scene that ``model`` segments: the one ``data.channels``
    maps to a modality the model was trained on (channel names matched first, then
    indices from 0, as :meth:`protoseg.stacks.Stack.channel_index` does; a model of
    several modalities takes its first the file has).

    A single-channel file's only channel is taken unless ``data.channels`` maps it to
    another modality: the workflow's ``data.channels`` names the training images' channels,
    which a new file need not share. A file of several channels without one for the model
    is an :class:`InputError` naming the file and its channels; a ``data.channels`` that
    maps nothing to the model's modalities is a :class:`ConfigError`."""
    names = ", ".join(repr(name) for name in info.channels)
    modalities = " or ".join(model.modalities) or "unknown"
    mapping = {str(key): value for key, value in ((data_cfg or {}).get("channels") or {}).items()}
    if len(info.channels) == 1:
        mapped = mapping.get(info.channels[0], mapping.get("0"))
        if mapped is None or mapped in model.modalities:
            return 0
        raise InputError(
            info.path,
            f"has one channel ({names}), which data.channels maps to {mapped}; {model.name} "
            f"segments {modalities}",
        )
    if not mapping:
        raise InputError(
            info.path,
            f"has {len(info.channels)} channels ({names}); say which one {model.name} takes "
            f"(modality {modalities}) in data.channels (protoseg predict --config), e.g. "
            f"{info.channels[0]}: {model.modalities[0] if model.modalities else 'brightfield'}",
        )
    wanted = [
        key
        for modality in model.modalities
        for key, mapped in mapping.items()
        if mapped == modality
    ]
    if not wanted:
        raise ConfigError(
            "data.channels",
            f"maps no channel to a modality {model.name} was trained on ({modalities}); "
            f"it maps {mapping}",
        )
    for key in wanted:
        if key in info.channels:
            return info.channels.index(key)
    for key in wanted:
        if key.isdigit() and int(key) < len(info.channels):
            return int(key)
    raise InputError(
        info.path,
        f"has no channel {' or '.join(repr(key) for key in wanted)} (what data.channels "
        f"maps to {modalities}, which {model.name} segments) in scene '{info.scene_name}'; "
        f"its channels: {names}",
    )


def read_container(
    stack: Stack, item: PredictInput, model: Segmenter, data_cfg: dict | None, read=True
) -> tuple[list[np.ndarray], StackInfo, int]:
    """The Z planes of one scene and time point of a container (``stack``, opened) in the
    channel the model takes (:func:`container_channel`), checked as :func:`read_stack`
    checks a multi-page TIFF; with ``read`` False only checked (no pixels read, no planes
    returned). Also returns the scene's :class:`~protoseg.stacks.StackInfo` and the
    channel's index."""
    info = stack.info(item.scene)
    channel = container_channel(info, model, data_cfg)
    where = f"{item.path} (scene '{info.scene_name}', time point {item.time})"
    if model.context_planes and info.planes < 2:
        raise InputError(
            where,
            f"holds a single plane (Z), but {model.name} is a focal-context model: it looks "
            f"at each plane with its {model.context_planes} neighbouring plane(s) on each "
            "side, so it takes stacks of several planes",
        )
    shape = (info.height, info.width) + ((info.samples,) if info.samples > 1 else ())
    check_channels(where, model, shape)
    if not read:
        return [], info, channel
    planes = [stack.read_plane(z, channel, item.time, item.scene) for z in range(info.planes)]
    return planes, info, channel


def write_ome_zarr(
    path: str | Path,
    planes: list[np.ndarray],
    binary: np.ndarray,
    labels: np.ndarray,
    pixel_size: float | None,
    plane_spacing: float | None = None,
) -> None:
    """Write one input's prediction as an OME-Zarr (NGFF) image group, atomically.

    The image is the input's planes as read (axes ``yx``; ``zyx`` for a stack of several
    planes; a leading ``c`` for colour samples), so that a viewer shows the cells on it;
    ``labels/cells`` holds the instance labels (uint16; uint32 past 65,535) and
    ``labels/mask`` the binary mask (uint8, 1 = cell, drawn in the overlay's yellow), each
    labels image pointing to the image as its source. ``pixel_size`` micrometres per pixel
    becomes the y and x scale with unit "micrometer"; None leaves the axes in pixels.
    ``plane_spacing`` (micrometres between focal planes, as a container states it) becomes a
    stack's z scale; without it z keeps a scale of 1, the plane's index. One resolution
    level, for image and labels alike (NGFF asks labels to have the image's levels).
    """
    import zarr
    from ome_zarr.writer import write_image, write_labels

    image = np.stack([np.asarray(plane) for plane in planes])  # Z, Y, X[, S]
    binary, labels = np.asarray(binary, np.uint8), compact_labels(np.asarray(labels))
    spatial = "zyx" if len(planes) > 1 else "yx"
    if len(planes) == 1:
        image, binary, labels = (
            image[0],
            binary.reshape(image.shape[1:3]),
            labels.reshape(image.shape[1:3]),
        )
    colour = image.ndim == len(spatial) + 1
    if colour:
        image = np.moveaxis(image, -1, 0)  # NGFF's order: c before z, y, x
    sizes = {"y": pixel_size, "x": pixel_size} if pixel_size is not None else {}
    if spatial == "zyx" and plane_spacing is not None:
        sizes["z"] = plane_spacing
    physical = {"scale": sizes, "axes_units": dict.fromkeys(sizes, "micrometer")} if sizes else {}
    source = {"source": {"image": "../../"}}  # lets readers find the image a labels image is of
    with atomic_dir(path) as folder:
        group = zarr.open_group(str(folder), mode="w")
        write_image(
            image, group, axes=("c" if colour else "") + spatial, scale_factors=[], **physical
        )
        # scaler=None: its default would add a pyramid whatever scale_factors says.
        write_labels(
            labels,
            group,
            name="cells",
            axes=spatial,
            scaler=None,
            scale_factors=[],
            label_metadata=source,
            **physical,
        )
        write_labels(
            binary,
            group,
            name="mask",
            axes=spatial,
            scaler=None,
            scale_factors=[],
            label_metadata={
                **source,
                "colors": [{"label-value": 1, "rgba": [*OUTLINE_COLOUR, 255]}],
            },
            **physical,
        )


@dataclass(frozen=True)
class Predicted:
    """One input's cells: a page per plane (one page for a single plane)."""

    planes: list[np.ndarray]  # the raw planes, as read
    binary: np.ndarray  # bool (P, H, W)
    labels: np.ndarray  # uint16 (P, H, W)
    overlay: np.ndarray  # RGB, the planes side by side
    pages: list  # the plane's z (per-plane files) or number from 1 (stacks)
    described: dict  # a container's scene, time point and channel
    pixel_size: float | None
    plane_spacing: float | None = None


def check_inputs(
    inputs: list[PredictInput],
    files: list[Path],
    segmenter: Segmenter,
    data_cfg: dict | None,
    configured: float | None,
    out_dir: str | Path,
    data_format: str,
) -> None:
    """Refuse, before anything is predicted, an input the model cannot take: channels, a
    container's channel, a stack of one plane, a missing pixel size for a model that works
    in micrometres (``configured``: data.pixel_size), or an output that would overwrite an
    input."""
    in_micrometres = segmenter.preprocessing.pixel_size is not None
    for item in inputs:
        if item.container:
            _, info, _ = read_container(
                open_stack(item.path, item.container), item, segmenter, data_cfg, read=False
            )
            pixel_size_um(info, configured, needed=in_micrometres, key=PIXEL_SIZE_KEY)
        else:
            if item.stack:
                read_stack(item, segmenter)  # read again when predicted: stacks are not all held
            else:
                check_channels(item.path, segmenter)
            if in_micrometres and configured is None:
                raise InputError(
                    item.path,
                    f"states no pixel size and {PIXEL_SIZE_KEY} is not set, but "
                    f"{segmenter.name} works at {segmenter.preprocessing.pixel_size:.4g} um per "
                    "pixel (dataset.cell_diameter_um): set data.pixel_size (--config) or give "
                    "the images as OME-TIFF with their pixel size",
                )
        target = output_paths(out_dir, item.stem, data_format).get("zarr")
        if target is not None and any(target.resolve() == path.resolve() for path in files):
            raise InputError(
                item.path, f"would be overwritten by its output {target}: choose another --out"
            )


class PreparedPlanes:
    """Raw and prepared images of the recent per-plane files: the planes of a stack come one
    after the other, so a focal window slides over them; a single-plane model keeps none."""

    def __init__(self, segmenter: Segmenter, pixel_size: float | None):
        self.segmenter, self.pixel_size = segmenter, pixel_size
        self.recent: OrderedDict[Path, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __call__(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if path in self.recent:
            self.recent.move_to_end(path)
            return self.recent[path]
        raw = read_image(path)
        entry = (raw, self.segmenter.prepare(raw, str(path), self.pixel_size))
        context = self.segmenter.context_planes
        if context:
            self.recent[path] = entry
            while len(self.recent) > 2 * context + 2:
                self.recent.popitem(last=False)
        return entry


def segment_plane(segmenter: Segmenter, prepared: np.ndarray, raw: np.ndarray):
    """Binary mask, cells and overlay of one plane from its prepared input."""
    result = segmenter.segment_prepared(prepared, raw.shape[:2])
    draw = overlay_instances if segmenter.own_step is not None else overlay_outlines
    return result.binary, result.labels, with_zoomed_crop(draw(raw, result.labels), result.labels)


def segment_stack(
    segmenter: Segmenter, planes: list[np.ndarray], names: list[str], pixel_size
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`segment_plane` of every plane of a stack, each with its focal window."""
    ready = [
        segmenter.prepare(plane, name, pixel_size)
        for plane, name in zip(planes, names, strict=True)
    ]
    results = []
    for index in range(len(planes)):
        window = context_window(range(len(planes)), index, segmenter.context_planes)
        prepared = join_planes([ready[j] for j in window], [names[j] for j in window])
        results.append(segment_plane(segmenter, prepared, planes[index]))
    binary = np.stack([result[0] for result in results])
    labels = np.stack([result[1] for result in results])
    return binary, labels, side_by_side([result[2] for result in results])


def predict_input(
    item: PredictInput,
    segmenter: Segmenter,
    data_cfg: dict | None,
    configured: float | None,
    prepared: PreparedPlanes,
) -> Predicted:
    """Read one planned input and segment each of its planes."""
    described: dict = {}
    pixel_size, spacing = configured, None
    if item.container:
        planes, info, channel = read_container(
            open_stack(item.path, item.container), item, segmenter, data_cfg
        )
        spacing = info.plane_spacing
        where = f"{item.path} (scene '{info.scene_name}', time point {item.time}"
        names = [f"{where}, z={z})" for z in range(len(planes))]
        described = {"scene": info.scene_name, "time": item.time, "channel": info.channels[channel]}
        pixel_size = pixel_size_um(info, configured, key=PIXEL_SIZE_KEY)
    elif item.stack:
        planes = read_stack(item, segmenter)
        names = [f"{item.path} (page {page})" for page in range(1, len(planes) + 1)]
    if item.stack:
        binary, labels, overlay = segment_stack(segmenter, planes, names, pixel_size)
        pages = list(range(1, len(planes) + 1))
    else:
        entries = [prepared(path) for path in item.window]
        raw = entries[segmenter.context_planes][0]  # the window's middle: the file itself
        joined = join_planes([entry[1] for entry in entries], list(item.window))
        binary, labels, overlay = segment_plane(segmenter, joined, raw)
        binary, labels, pages, planes = binary[None], labels[None], [item.plane], [raw]
    return Predicted(planes, binary, labels, overlay, pages, described, pixel_size, spacing)


def write_predicted(
    paths: dict[str, Path], item: PredictInput, predicted: Predicted, data_format: str
) -> None:
    """Write one input's masks (TIFFs or an OME-Zarr) and its overlay."""
    if data_format == "ome-zarr":
        if predicted.pixel_size is None:
            log.warning(
                "%s: no pixel size (the file states none and %s is not set): %s has "
                "its axes in pixels, not micrometres",
                item.path,
                PIXEL_SIZE_KEY,
                paths["zarr"].name,
            )
        write_ome_zarr(
            paths["zarr"],
            predicted.planes,
            predicted.binary,
            predicted.labels,
            predicted.pixel_size,
            predicted.plane_spacing,
        )
    else:
        # A stack's outputs hold one page per plane (never colour samples, whatever
        # their number); a plane's, the plane alone.
        stored = slice(None) if len(predicted.pages) > 1 else 0
        binary = predicted.binary.astype(np.uint8)[stored]
        write_tiff(paths["binary"], binary, photometric="minisblack")
        write_tiff(paths["labels"], predicted.labels[stored], photometric="minisblack")
    write_png(paths["overlay"], predicted.overlay)


def summary_rows(
    item: PredictInput, predicted: Predicted, paths: dict[str, Path], segmenter: Segmenter
) -> list[dict]:
    """The summary's rows of one input: one per plane."""
    rows = []
    several = segmenter.context_planes or len(predicted.pages) > 1
    for page, binary, labels in zip(
        predicted.pages, predicted.binary, predicted.labels, strict=True
    ):
        row = {
            "image": str(item.path),
            "height": binary.shape[0],
            "width": binary.shape[1],
            "cells": int(labels.max()),
            "cell_fraction": float(binary.mean()),
            "threshold": float(segmenter.threshold),
            "instances": segmenter.method,
            **{f"{kind}_path": str(target) for kind, target in paths.items()},
            **predicted.described,
        }
        if several:
            row["plane"] = page
        row["pixel_size_um"] = predicted.pixel_size
        rows.append(row)
    return rows


# The predict section's keys that a segmenter takes (the rest: device, precision, format).
SEGMENTER_KEYS = (
    "tile",
    "overlap",
    "threshold",
    "instances",
    "min_distance",
    "min_area",
    "tta",
    "fold_batch_norm",
)


def with_predict_settings(segmenter: Segmenter, settings: dict) -> tuple[Segmenter, str]:
    """``segmenter`` with the ``predict`` settings given (checked against the schema, each
    bad value named by its key) and the output format (``predict.format``)."""
    given = dict(settings)
    if given.get("tile") is not None:
        given["tile"] = list(given["tile"])  # the schema's array
    checked = complete_section("predict", given)
    overrides = {key: checked[key] for key in SEGMENTER_KEYS if key in given}
    if "device" in given or "precision" in given:
        overrides["device"], overrides["precision"] = resolve_placement(
            checked["device"], checked["precision"], "predict.device", "predict.precision"
        )
    return segmenter.with_settings(**overrides), checked["format"]


def predict_files(
    segmenter: Segmenter,
    images: list[str | Path],
    out_dir: str | Path,
    *,
    data_cfg: dict | None = None,
    progress: bool = True,
    **settings,
) -> pd.DataFrame:
    """Segment each image file with ``segmenter``; write its outputs (:func:`output_paths`)
    and a summary.

    ``settings``: keys of the config's ``predict`` section that change the segmenter's
    (``tile``, ``overlap``, ``threshold``, ``instances``, ``min_distance``, ``min_area``, ``tta``,
    ``fold_batch_norm``, ``device``, ``precision``) and ``format`` (``tiff`` or
    ``ome-zarr``). Every input is checked (:func:`check_inputs`) before any is predicted, so
    a bad input stops the run before anything is written. ``data_cfg`` (the config's
    ``data`` section): how per-plane files of focal stacks are named, for a focal-context model
    (:func:`plan_inputs`); which channel of a container the model segments
    (``data.channels``, :func:`container_channel`); ``data.pixel_size`` for files that
    state none. Returns the summary table (one row per image, or per plane of a stack:
    image, height, width, cells, cell_fraction, threshold, instances, outputs; ``plane``
    for a focal-context model or a stack of several planes: the file's z or the plane's
    number, 1 = first; ``scene``, ``time`` and ``channel`` for a container;
    ``pixel_size_um``), also written to ``out_dir/predictions.csv``.
    """
    segmenter, data_format = with_predict_settings(segmenter, settings)
    log.info("%s", segmenter.describe())
    files = image_files(images)
    inputs = plan_inputs(files, segmenter.context_planes, data_cfg, segmenter.name)
    configured = configured_pixel_size((data_cfg or {}).get("pixel_size"), PIXEL_SIZE_KEY)
    check_inputs(inputs, files, segmenter, data_cfg, configured, out_dir, data_format)
    prepared = PreparedPlanes(segmenter, configured)
    rows = []
    for item in tqdm(inputs, desc="predict", unit="image", disable=not progress):
        predicted = predict_input(item, segmenter, data_cfg, configured, prepared)
        paths = output_paths(out_dir, item.stem, data_format)
        write_predicted(paths, item, predicted, data_format)
        rows.extend(summary_rows(item, predicted, paths, segmenter))
        log.info("%s: %d cells", item.stem, int(sum(plane.max() for plane in predicted.labels)))
    summary = pd.DataFrame(rows)
    write_csv(Path(out_dir) / SUMMARY_NAME, summary)
    return summary


def predict_model_files(
    model_path: str | Path,
    images: list[str | Path],
    out_dir: str | Path,
    *,
    data_cfg: dict | None = None,
    progress: bool = True,
    names: dict | None = None,
    **settings,
) -> pd.DataFrame:
    """:func:`predict_files` with the segmenter of a ``model.pt`` on the device and in the
    precision ``settings`` ask for (keys of the config's ``predict`` section, those left
    out taking the schema's defaults); ``names``: what messages call the device and
    precision settings (default ``predict.device``, ``predict.precision``)."""
    placement = {key: settings.pop(key) for key in ("device", "precision") if key in settings}
    segmenter, _ = Segmenter.from_file(model_path, "predict", names=names, **placement)
    return predict_files(
        segmenter, images, out_dir, data_cfg=data_cfg, progress=progress, **settings
    )


def side_by_side(images: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """RGB images of one size in a row, ``gap`` white pixels apart (a stack's overlays)."""
    height = images[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts = []
    for index, image in enumerate(images):
        if index:
            parts.append(spacer)
        parts.append(np.asarray(image, np.uint8))
    return np.concatenate(parts, axis=1)
