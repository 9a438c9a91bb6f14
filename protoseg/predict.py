"""Apply a trained U-Net to new images of any size: label TIFFs and overlays per image.

The scale choice. The study trained on whole fields of view shrunk from 2880 x 2048 to
512 x 512, so the network learnt cells at that shrunken size (about 5.6x smaller across,
4x smaller down). A new image is therefore resized by the same factors per axis that took
the training images from their source size to the training size, so its cells appear at
the size the model knows. It is then cut into overlapping tiles of the training size (a
mosaic larger than one field of view is not squeezed into one tile), predicted tile by
tile (:func:`protoseg.inference.predict_tiled`), and the probabilities are resized back
to the image's own size, where they are thresholded and split into instances. A
full-size image from the study's microscope thus gives one 512 x 512 tile, exactly as in
training; a crop of a quarter of the field keeps its cells at the learnt size rather
than blowing them up four times.

The factors come from the model file: ``scale``, or the training size over
``source_size`` (the raw images' size), in its meta or its dataset section. A model
that records neither gets each image resized to the training size, which is what the
dataset stage did to every training image whatever its size (right for whole fields of
view from the same microscope).

Per input image ``NAME.ext`` the output folder gets ``NAME_binary.tif`` (uint8, 1 = cell),
``NAME_labels.tif`` (uint16 instance labels, 0 = background), ``NAME_overlay.png`` (cell
outlines on the image) and one row in ``predictions.csv``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import label as connected_components
from skimage.morphology import remove_small_objects
from skimage.segmentation import find_boundaries, relabel_sequential, watershed
from tqdm import tqdm

from protoseg.errors import InputError
from protoseg.inference import predict_image, prepare_image
from protoseg.io import IMAGE_SUFFIXES, image_header, read_image, write_csv, write_png, write_tiff

log = logging.getLogger(__name__)

INSTANCE_METHODS = ("cc", "watershed")
SUMMARY_NAME = "predictions.csv"
OUTLINE_COLOUR = (255, 220, 0)  # yellow reads on bright-field and on dark fluorescence


@dataclass(frozen=True)
class PredictionModel:
    """A trained network and what prediction needs to know about its training data."""

    network: object  # torch.nn.Module, kept untyped so this module imports without torch
    in_channels: int
    colour: str
    # Training image size (height, width): the tile size.
    train_size: tuple[int, int]
    # Per-axis factors from a raw image to the training scale (training size / source
    # size); None: resize each image to the training size, as the dataset stage did.
    scale: tuple[float, float] | None
    name: str


def image_files(inputs: list[str | Path]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders by their image files.

    Folders are not searched recursively; hidden files are skipped. Raises
    :class:`InputError` for a missing path, a file that is not an image, an input with no
    image at all, or two images whose names would give the same output names.
    """
    files: list[Path] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            found = sorted(
                child
                for child in path.iterdir()
                if child.is_file()
                and not child.name.startswith(".")
                and child.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise InputError(
                    path, f"folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(
                    path, f"not an image file (use one of {', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            files.append(path)
        else:
            raise InputError(path, "no such file or folder")
    if not files:
        raise InputError("<inputs>", "no images given")
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem and by_stem[path.stem].resolve() != path.resolve():
            raise InputError(
                path, f"has the same name as {by_stem[path.stem]}, so their outputs would collide"
            )
        by_stem[path.stem] = path
    return list(by_stem.values())


def output_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """The files written for the image named ``stem``."""
    out_dir = Path(out_dir)
    return {
        "binary": out_dir / f"{stem}_binary.tif",
        "labels": out_dir / f"{stem}_labels.tif",
        "overlay": out_dir / f"{stem}_overlay.png",
    }


def check_channels(path: str | Path, model: PredictionModel) -> None:
    """Refuse an image whose channels the model cannot take, from its header alone."""
    shape, dtype = image_header(path)
    probe = (
        np.zeros((1, 1, *shape[2:]), dtype=dtype)
        if len(shape) == 3
        else np.zeros((1, 1), dtype=dtype)
    )
    if len(shape) == 3 and shape[2] not in (1, 3, 4):
        raise InputError(
            path,
            f"has {shape[2]} channels; the model {model.name} takes greyscale or RGB(A) images "
            f"({model.in_channels} channel(s) after '{model.colour}' conversion)",
        )
    prepare_image(probe, model.in_channels, model.colour, source=str(path))


def label_instances(
    binary: np.ndarray, method: str = "cc", min_distance: int = 10, min_area: int = 0
) -> np.ndarray:
    """Instance labels (uint16, 0 = background) of a binary cell mask.

    ``cc``: connected components (touching cells stay one object). ``watershed``: cells
    are split at the necks between them: seeds at the maxima of the distance to the
    background at least ``min_distance`` pixels apart, flooded over the inverted
    distance within the mask. Objects smaller than ``min_area`` pixels are dropped.
    """
    if method not in INSTANCE_METHODS:
        raise ValueError(
            f"unknown instance method '{method}'; use one of {', '.join(INSTANCE_METHODS)}"
        )
    binary = np.asarray(binary, dtype=bool)
    if min_area > 0:
        binary = remove_small_objects(binary, max_size=min_area - 1)
    components = connected_components(binary, connectivity=1)
    if method == "watershed" and components.max() > 0:
        distance = ndi.distance_transform_edt(binary)
        peaks = peak_local_max(
            distance,
            min_distance=max(1, int(min_distance)),
            labels=components,
            exclude_border=False,
        )
        markers = np.zeros(binary.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # A component without a peak (e.g. a thin sliver) keeps one seed of its own.
        unseeded = np.setdiff1d(np.unique(components[binary]), np.unique(components[markers > 0]))
        for index, component in enumerate(unseeded, start=len(peaks) + 1):
            ys, xs = np.nonzero(components == component)
            markers[ys[0], xs[0]] = index
        components = watershed(-distance, markers, mask=binary)
    labels, _, _ = relabel_sequential(components.astype(np.int64))
    if labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{labels.max()} instances do not fit uint16 labels")
    return labels.astype(np.uint16)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An 8-bit RGB view of a raw image for overlays (each channel stretched to its range)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    image = image.astype(np.float32)
    low, high = np.percentile(image, (0.5, 99.5))
    scaled = np.clip((image - low) / max(float(high - low), 1e-6), 0, 1)
    scaled = (scaled * 255).astype(np.uint8)
    return np.repeat(scaled[..., None], 3, axis=2) if scaled.ndim == 2 else scaled


def overlay_outlines(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image (8-bit RGB) with each instance's outline drawn in yellow."""
    overlay = display_rgb(image).copy()
    overlay[find_boundaries(labels, mode="inner")] = OUTLINE_COLOUR
    return overlay


def load_prediction_model(model_path: str | Path, device: str = "cpu") -> PredictionModel:
    """Read a ``model.pt`` written by the training stage, with its training scale."""
    from protoseg import model as model_module

    network, meta = model_module.load_model(model_path, device=device)
    architecture = getattr(network, "architecture", {}) or {}
    return prediction_model_from_meta(
        network, meta, name=str(model_path), architecture=architecture
    )


def _lookup(meta: dict, *keys: str):
    """The first of ``keys`` found in ``meta`` or its ``dataset`` section (the dataset info)."""
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    for key in keys:
        for section in (meta, dataset):
            if section.get(key) is not None:
                return section[key]
    return None


def prediction_model_from_meta(
    network, meta: dict, name: str = "model", architecture: dict | None = None
) -> PredictionModel:
    """What prediction needs from a model file's metadata (see :func:`training_scale`).

    The training image size, colour mode and channels come from the model's own keys or
    its ``dataset`` section (the dataset stage's ``dataset.json``); the channels fall back
    to the network's architecture.
    """
    size = _lookup(meta, "image_size", "size")
    in_channels = _lookup(meta, "in_channels", "channels") or (architecture or {}).get(
        "in_channels"
    )
    if size is None or in_channels is None:
        raise InputError(name, "model file does not record its training image size and channels")
    height, width = (int(value) for value in size)
    return PredictionModel(
        network=network,
        in_channels=int(in_channels),
        colour=str(_lookup(meta, "colour") or "rgb"),
        train_size=(height, width),
        scale=training_scale(meta),
        name=name,
    )


def training_scale(meta: dict) -> tuple[float, float] | None:
    """Per-axis resize factors (height, width) from a raw image to the training scale.

    From ``scale`` when the model file records it, else from the training image size
    and the source images' size (``source_size``, in the model's meta or its dataset
    section). None when neither is recorded: each image is then resized to the training
    size, exactly as the dataset stage resized every training image whatever its size.
    """
    scale = _lookup(meta, "scale")
    if scale is not None:
        scale_y, scale_x = (scale, scale) if np.isscalar(scale) else scale
        return float(scale_y), float(scale_x)
    source = _lookup(meta, "source_size")
    size = _lookup(meta, "image_size", "size")
    if source is not None and size is not None:
        (height, width), (source_h, source_w) = size, source
        return height / source_h, width / source_w
    return None


def image_scale(model: PredictionModel, height: int, width: int) -> tuple[float, float]:
    """The resize factors for one image: the training scale, or the training size over
    the image's size when the model does not record a scale (see :func:`training_scale`)."""
    if model.scale is not None:
        return model.scale
    return model.train_size[0] / height, model.train_size[1] / width


def predict_files(
    model: PredictionModel,
    images: list[str | Path],
    out_dir: str | Path,
    *,
    tile: int | tuple[int, int] | None = None,
    overlap: int = 32,
    threshold: float = 0.5,
    instances: str = "cc",
    min_distance: int = 10,
    min_area: int = 0,
    device: str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Segment each image file; write its outputs (:func:`output_paths`) and a summary.

    Every image is checked for channels the model takes before any is predicted, so a
    bad input stops the run before anything is written. ``tile`` defaults to the training
    size; ``overlap`` is capped at half the tile. Returns the summary table (one
    row per image: image, height, width, cells, cell_fraction, outputs), also written to
    ``out_dir/predictions.csv``.
    """
    if instances not in INSTANCE_METHODS:
        raise ValueError(
            f"unknown instance method '{instances}'; use one of {', '.join(INSTANCE_METHODS)}"
        )
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie between 0 and 1, got {threshold}")
    files = image_files(images)
    for path in files:
        check_channels(path, model)
    tile = model.train_size if tile is None else tile
    tile_h, tile_w = (tile, tile) if np.isscalar(tile) else tile
    if overlap < 0:
        raise ValueError(f"overlap must be 0 or more, got {overlap}")
    if overlap > min(tile_h, tile_w) // 2:
        # Tiles must advance; more than half a tile of overlap buys nothing.
        log.warning(
            "overlap %d is more than half the tile %s; using %d",
            overlap,
            tile,
            min(tile_h, tile_w) // 2,
        )
        overlap = min(tile_h, tile_w) // 2
    rows = []
    for path in tqdm(files, desc="predict", unit="image", disable=not progress):
        image = read_image(path)
        probabilities = predict_image(
            model.network,
            image,
            in_channels=model.in_channels,
            colour=model.colour,
            scale=image_scale(model, *image.shape[:2]),
            tile=tile,
            overlap=overlap,
            device=device,
            batch_size=batch_size,
            source=str(path),
        )
        binary = probabilities > threshold
        labels = label_instances(binary, instances, min_distance=min_distance, min_area=min_area)
        paths = output_paths(out_dir, path.stem)
        write_tiff(paths["binary"], binary.astype(np.uint8))
        write_tiff(paths["labels"], labels)
        write_png(paths["overlay"], overlay_outlines(image, labels))
        rows.append(
            {
                "image": str(path),
                "height": binary.shape[0],
                "width": binary.shape[1],
                "cells": int(labels.max()),
                "cell_fraction": float(binary.mean()),
                **{f"{kind}_path": str(target) for kind, target in paths.items()},
            }
        )
        log.info("%s: %d cells", path.name, labels.max())
    summary = pd.DataFrame(rows)
    write_csv(Path(out_dir) / SUMMARY_NAME, summary)
    return summary
