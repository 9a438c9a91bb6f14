"""Training data sets: images, binary and instance masks, split by a catalogue column, on
disk in memory-mapped shards.

One sample is one image (the study's "all" data set holds the bright-field and the
fluorescent image of a plane as two samples) paired with its mask, the merged mask of its
state (the study) or its plane's per-z mask. A focal-context variant
(``dataset.variants.<name>.context_planes`` = k > 0, docs/focal-context.md) gives the sample
of plane z the images of the same state and channel at z's k neighbouring planes on each
side as well, as channels (:func:`protoseg.transforms.context_window`: planes beyond the
stack's ends repeat the nearest one); its mask stays plane z's. Images are prepared by
:func:`protoseg.transforms.prepare_image` (the same function inference uses): intensity
(``dataset.normalise``: ``dtype``, the study's integer / dtype maximum, or ``percentile``,
per image), colour (``dataset.colour``), then one of two geometries (``dataset.geometry``):

* ``resize`` (the study): every whole image resized (linear) to ``dataset.size``; the mask
  resized as a 0/255 image and binarised (> 0 -> 1). Samples share one shape and are stored
  ``dataset.shard_size`` to a shard.
* ``patches`` (real microscopes): every image rescaled by one factor, ``dataset.scale`` or
  ``target_diameter / cell_diameter``, so cells keep their size whatever the image size;
  training cuts patches (:mod:`protoseg.sampling`). Each sample is its own shard, with its
  instance labels (nearest neighbour) and up to :data:`FOREGROUND_LIMIT` cell pixels.

A network with instance outputs (``model.instances``, :mod:`protoseg.instances`) needs the
instance labels in both geometries: ``instances=True`` stores them for ``resize`` too (the
labels resized onto the binary mask, :func:`protoseg.transforms.instances_at_mask`), and
masks that carry no instance labels (binary only) are labelled by connected components,
with a warning saying so.

Layout of ``dataset_dir`` (the choice of format: docs/benchmarks/dataset.md):

* ``manifest.csv``: one row per sample: ``sample, split, shard, row, image, mask, state,
  z, modality, channel``, the split key column, the original and stored size and the number
  of cells of its mask; for a focal-context variant also ``context_z`` and ``context`` (the
  window's planes and image files, ``;``-separated, in channel order);
* ``dataset.json``: the :class:`DatasetRecord` (geometry, preprocessing, split, ...);
* ``shards/{shard}-images.npy`` (float32, N x C x H x W), ``{shard}-masks.npy`` (uint8,
  N x H x W), for ``patches`` (and ``resize`` with ``instances``) ``{shard}-instances.npy``
  (uint32), and for ``patches`` ``{shard}-foreground.npy`` (int32 K x 2). Plain ``.npy`` so that readers memory-map them
  and touch only the pages they use. C is the image's channels (3 for ``rgb``, 1 for
  ``grey``) times the 2k + 1 planes of its focal window.

The build streams image by image into one shard buffer, so its memory is one shard plus one
full-size image, whatever the number of images; a focal-context variant also keeps the
prepared images of its sliding window (2k + 2 planes per modality), so each image is read
and prepared once.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from protoseg.catalogue import parse_value
from protoseg.config import complete_section
from protoseg.errors import ConfigError, InputError
from protoseg.io import atomic_path, read_image, write_csv, write_text
from protoseg.metrics import instances_from_binary
from protoseg.transforms import (
    Preprocessing,
    binary_mask,
    context_window,
    instances_at_mask,
    is_binary_labels,
    join_planes,
    label_image,
    prepare_image,
    resize_labels,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
MASK_SOURCES = ("state", "per_z")
MANIFEST_COLUMNS = [
    "sample",
    "split",
    "shard",
    "row",
    "image",
    "mask",
    "state",
    "z",
    "modality",
    "channel",
]
SHARD_DIR = "shards"
MANIFEST_NAME = "manifest.csv"
INFO_NAME = "dataset.json"
# Cell pixels kept per sample for the patch sampler (nnU-Net keeps 10,000 per class).
FOREGROUND_LIMIT = 10_000
# Rescale factors beyond these are a unit mistake, not a microscope.
MIN_SCALE, MAX_SCALE = 0.01, 16.0


# ---------------------------------------------------------------- planning the samples
def check_variant(name: str, modalities: Sequence[str], known: Sequence[str]) -> list[str]:
    """The variant's modalities, checked against those the catalogue knows."""
    key = f"dataset.variants.{name}"
    if not modalities:
        raise ConfigError(key, "names no modality")
    unknown = [m for m in modalities if m not in known]
    if unknown:
        raise ConfigError(key, f"unknown modality {unknown}; the catalogue has {sorted(known)}")
    return list(dict.fromkeys(modalities))


def assign_splits(catalogue: pd.DataFrame, split_cfg: dict) -> pd.Series:
    """Split of every catalogue row (train, validation or test) by the ``split.key`` column.

    All rows with one key value go to one split, so no state is in two splits. A split
    that leaves train or test empty raises :class:`ConfigError` naming ``split.test``.
    """
    split_cfg = complete_section("split", split_cfg)
    key = split_cfg["key"]
    if key not in catalogue.columns:
        raise ConfigError(
            "split.key", f"'{key}' is not a catalogue column (columns: {list(catalogue.columns)})"
        )
    values = catalogue[key].map(parse_value)
    test = {parse_value(v) for v in split_cfg["test"]}
    validation = {parse_value(v) for v in split_cfg["validation"]}
    both = test & validation
    if both:
        raise ConfigError(
            "split.validation", f"values {sorted(both, key=str)} are also in split.test"
        )
    present = set(values)
    for name, chosen in (("split.test", test), ("split.validation", validation)):
        missing = chosen - present
        if missing:
            warnings.warn(
                f"config key '{name}': values {sorted(missing, key=str)} match no image (column '{key}')",
                stacklevel=2,
            )
    splits = pd.Series("train", index=catalogue.index, dtype=object)
    splits[values.isin(test)] = "test"
    splits[values.isin(validation)] = "validation"
    for split in ("train", "test"):
        if not (splits == split).any():
            raise ConfigError(
                "split.test",
                f"{split} split is empty: '{key}' values {sorted(present, key=str)} in the catalogue, test = {sorted(test, key=str)}, validation = {sorted(validation, key=str)}",
            )
    return splits


def plan_samples(
    catalogue: pd.DataFrame,
    variant: str,
    modalities: Sequence[str],
    split_cfg: dict,
    mask_path: Callable[[str, int], str | Path],
    *,
    context_planes: int,
) -> pd.DataFrame:
    """One row per sample of a variant, ordered by split, state, plane and modality.

    ``mask_path(state, z)`` names the mask of each image. Every mask must exist before any
    work starts (:class:`InputError` naming the first missing file). ``context_planes`` k > 0
    adds each sample's focal window (:func:`focal_windows`): columns ``context_z`` and
    ``context``.
    """
    split_cfg = complete_section("split", split_cfg)
    for column in ("path", "state", "modality", "z"):
        if column not in catalogue.columns:
            raise InputError("catalogue", f"has no '{column}' column")
    modalities = check_variant(variant, modalities, sorted(catalogue["modality"].unique()))
    splits = assign_splits(catalogue, split_cfg)
    chosen = catalogue.assign(split=splits)
    chosen = chosen[chosen["modality"].isin(modalities)].copy()
    if chosen.empty:
        raise ConfigError(f"dataset.variants.{variant}", f"no image of modalities {modalities}")
    chosen["mask"] = [
        str(mask_path(state, int(z))) for state, z in zip(chosen["state"], chosen["z"], strict=True)
    ]
    for mask, state in zip(chosen["mask"], chosen["state"], strict=True):
        if not Path(mask).is_file():
            raise InputError(mask, f"mask file not found: the images of state {state} have no mask")
    chosen["split_order"] = chosen["split"].map({s: i for i, s in enumerate(SPLITS)})
    chosen["modality_order"] = chosen["modality"].map({m: i for i, m in enumerate(modalities)})
    chosen = chosen.sort_values(["split_order", "state", "z", "modality_order"], kind="stable")
    key = split_cfg["key"]
    samples = pd.DataFrame(
        {
            "split": chosen["split"].to_numpy(),
            "image": chosen["path"].astype(str).to_numpy(),
            "mask": chosen["mask"].to_numpy(),
            "state": chosen["state"].to_numpy(),
            "z": chosen["z"].astype(int).to_numpy(),
            "modality": chosen["modality"].to_numpy(),
            "channel": chosen["channel"].to_numpy() if "channel" in chosen else "",
            # micrometres per pixel (NaN where unknown): a model in micrometres rescales by it
            "pixel_size": pd.to_numeric(chosen["pixel_size"]).to_numpy()
            if "pixel_size" in chosen
            else np.nan,
        }
    )
    if key not in samples.columns:
        samples[key] = chosen[key].to_numpy()
    if context_planes:
        windows = focal_windows(catalogue, samples, variant, context_planes)
        samples["context_z"] = [";".join(str(z) for z, _ in window) for window in windows]
        samples["context"] = [";".join(path for _, path in window) for window in windows]
    return samples


def focal_windows(
    catalogue: pd.DataFrame, samples: pd.DataFrame, variant: str, context_planes: int
) -> list[list[tuple[int, str]]]:
    """(plane, image file) of every sample's focal window, in channel order: the images of
    the sample's state and channel at :func:`protoseg.transforms.context_window`'s planes of
    the catalogue's stack (every plane it holds; the stack's ends repeated).

    A state without an image its window needs is an :class:`InputError` naming the sample's
    image, the state, the channel and the plane (the catalogue stops such a state first; this
    guards hand-made catalogues).
    """
    stack = sorted(int(z) for z in catalogue["z"].unique())
    files = {
        (str(state), str(modality), int(z)): str(path)
        for state, modality, z, path in zip(
            catalogue["state"],
            catalogue["modality"],
            catalogue["z"],
            catalogue["path"],
            strict=True,
        )
    }
    windows = []
    for sample in samples.itertuples(index=False):
        window = []
        for plane in context_window(stack, int(sample.z), context_planes):
            found = files.get((str(sample.state), str(sample.modality), plane))
            if found is None:
                raise InputError(
                    sample.image,
                    f"state {sample.state} has no {sample.modality} image at plane z{plane}, "
                    f"which the focal context of its z{sample.z} image needs "
                    f"(dataset.variants.{variant}.context_planes: {context_planes})",
                )
            window.append((plane, found))
        windows.append(window)
    return windows


# ---------------------------------------------------------------- the data set's record
@dataclass(frozen=True)
class DatasetRecord:
    """What a built data set is: written as ``dataset.json`` by the build, read by training,
    evaluation and prediction (and copied into ``model.pt``), so a model knows its geometry."""

    variant: str
    modalities: tuple[str, ...]
    preprocessing: Preprocessing
    patch_size: tuple[int, int] | None  # patches geometry: the training patch
    mask_source: str
    split: dict
    samples: dict
    shard_size: int
    has_instances: bool
    # Focal context: the sample of plane z holds the planes z-k..z+k (k = this) as channels.
    context_planes: int
    cell_diameter: float | None = None
    target_diameter: float | None = None
    # The raw images' sizes [height, width], each once: what a model was trained from.
    source_sizes: tuple[tuple[int, int], ...] = ()
    # Typical cell diameter in micrometres (dataset.cell_diameter_um), when given.
    cell_diameter_um: float | None = None
    # The raw images' pixel sizes (micrometres, each once; empty when unknown) and pixel
    # types, so a model's file says what microscopes and cameras it learnt from.
    source_pixel_sizes: tuple[float, ...] = ()
    source_dtypes: tuple[str, ...] = ()

    @property
    def plane_channels(self) -> int:
        """Channels of one prepared image (3 for ``rgb``, 1 for ``grey``)."""
        return self.preprocessing.channels

    @property
    def channels(self) -> int:
        """Channels of a sample, the network's input: one image's times the 2k + 1 planes
        of its focal window."""
        return self.preprocessing.channels * (2 * self.context_planes + 1)

    @property
    def geometry(self) -> str:
        return self.preprocessing.geometry

    def to_dict(self) -> dict:
        values = {
            "variant": self.variant,
            "modalities": list(self.modalities),
            "preprocessing": self.preprocessing.to_dict(),
            "patch_size": None if self.patch_size is None else list(self.patch_size),
            "mask_source": self.mask_source,
            "split": self.split,
            "samples": self.samples,
            "shard_size": self.shard_size,
            "has_instances": self.has_instances,
            "context_planes": self.context_planes,
            "cell_diameter": self.cell_diameter,
            "target_diameter": self.target_diameter,
            "source_sizes": [list(size) for size in self.source_sizes],
            "cell_diameter_um": self.cell_diameter_um,
            "source_pixel_sizes": list(self.source_pixel_sizes),
            "source_dtypes": list(self.source_dtypes),
        }
        # Plain keys that older readers and people look for first.
        values["geometry"] = self.geometry
        values["channels"] = self.channels
        values["colour"] = self.preprocessing.colour
        values["size"] = None if self.preprocessing.size is None else list(self.preprocessing.size)
        values["scale"] = self.preprocessing.scale
        return values

    @classmethod
    def from_dict(cls, values: dict, source: object = INFO_NAME) -> DatasetRecord:
        try:
            return cls(
                variant=str(values["variant"]),
                modalities=tuple(values["modalities"]),
                preprocessing=Preprocessing.from_dict(values["preprocessing"]),
                patch_size=None
                if values.get("patch_size") is None
                else tuple(values["patch_size"]),
                mask_source=str(values["mask_source"]),
                split=dict(values["split"]),
                samples=dict(values["samples"]),
                shard_size=int(values["shard_size"]),
                has_instances=bool(values["has_instances"]),
                # Data sets and models written before focal context are single-plane.
                context_planes=int(values.get("context_planes", 0)),
                cell_diameter=values.get("cell_diameter"),
                target_diameter=values.get("target_diameter"),
                source_sizes=tuple(
                    tuple(int(v) for v in size) for size in values.get("source_sizes", [])
                ),
                cell_diameter_um=values.get("cell_diameter_um"),
                source_pixel_sizes=tuple(float(v) for v in values.get("source_pixel_sizes", [])),
                source_dtypes=tuple(str(v) for v in values.get("source_dtypes", [])),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(
                source,
                f"not a data set description of this protoseg version ({error!r}); rebuild it",
            ) from error


def preprocessing_from_config(dataset_cfg: dict) -> tuple[Preprocessing, tuple | None]:
    """The preprocessing and training patch of config ``dataset``, checked.

    ``patches`` geometry: the scale is ``dataset.scale``, or ``target_diameter /
    cell_diameter`` when the typical cell diameter is given (cellpose's way); absurd scales
    (outside 1/100..16) are refused, naming the key.
    """
    dataset_cfg = complete_section("dataset", dataset_cfg)
    geometry, colour, normalise = (
        dataset_cfg["geometry"],
        dataset_cfg["colour"],
        dataset_cfg["normalise"],
    )
    percentiles = tuple(float(v) for v in dataset_cfg["percentiles"])
    if not percentiles[0] < percentiles[1]:
        raise ConfigError("dataset.percentiles", f"need low < high, got {list(percentiles)}")
    if geometry == "resize":
        if dataset_cfg["size"] is None:
            raise ConfigError("dataset.size", "the resize geometry needs a size [height, width]")
        size = tuple(int(v) for v in dataset_cfg["size"])
        prep = Preprocessing(geometry, colour, normalise, percentiles, size, None, size)
        return prep, None
    patch = tuple(int(v) for v in dataset_cfg["patch_size"])
    pixel_size = model_pixel_size(dataset_cfg)
    if pixel_size is not None:
        # Each image's own factor: its pixel size over the model's (checked per image).
        prep = Preprocessing(
            geometry, colour, normalise, percentiles, None, None, patch, pixel_size=pixel_size
        )
        return prep, patch
    scale = dataset_scale(
        dataset_cfg["scale"], dataset_cfg["cell_diameter"], dataset_cfg["target_diameter"]
    )
    prep = Preprocessing(geometry, colour, normalise, percentiles, None, scale, patch)
    return prep, patch


def model_pixel_size(dataset_cfg: dict) -> float | None:
    """Micrometres per pixel the model works at, ``cell_diameter_um / target_diameter``
    (cells of that diameter then span ``target_diameter`` pixels, whatever the microscope's
    magnification), or None when no diameter in micrometres is given."""
    diameter_um = dataset_cfg.get("cell_diameter_um")
    if diameter_um is None:
        return None
    for key in ("scale", "cell_diameter"):
        if dataset_cfg.get(key) is not None:
            raise ConfigError(
                f"dataset.{key}",
                "give one of dataset.scale, dataset.cell_diameter (pixels) and "
                "dataset.cell_diameter_um (micrometres), not several",
            )
    return float(diameter_um) / float(dataset_cfg["target_diameter"])


def check_image_scale(scale: float, source: object, pixel_size: float) -> None:
    """An image's rescale factor from its pixel size must be one a microscope gives."""
    if not np.isfinite(scale) or not MIN_SCALE <= scale <= MAX_SCALE:
        raise InputError(
            source,
            f"pixel size {pixel_size:.4g} um gives a rescale factor of {scale:.4g} for "
            f"dataset.cell_diameter_um, outside {MIN_SCALE}..{MAX_SCALE}: is the pixel size "
            "in micrometres?",
        )


def dataset_scale(
    scale: float | None, cell_diameter: float | None, target_diameter: float
) -> float:
    """The patches geometry's rescale factor: ``dataset.scale``, or ``target_diameter /
    cell_diameter`` when the typical cell diameter is given, or 1."""
    diameter = cell_diameter
    if scale is not None and diameter is not None:
        raise ConfigError(
            "dataset.scale", "give either dataset.scale or dataset.cell_diameter, not both"
        )
    if diameter is not None:
        target = target_diameter
        for key, value in (("cell_diameter", diameter), ("target_diameter", target)):
            if value is None or not np.isfinite(float(value)) or float(value) <= 0:
                raise ConfigError(
                    f"dataset.{key}", f"must be a positive number of pixels, got {value}"
                )
        scale = float(target) / float(diameter)
        key = "dataset.cell_diameter"
    else:
        scale = 1.0 if scale is None else float(scale)
        key = "dataset.scale"
    if not np.isfinite(scale) or not MIN_SCALE <= scale <= MAX_SCALE:
        raise ConfigError(
            key,
            f"gives a rescale factor of {scale:.4g}, outside {MIN_SCALE}..{MAX_SCALE}: "
            "is the diameter in pixels of the raw images?",
        )
    return scale


# ---------------------------------------------------------------- building
def mask_template(template: str) -> Callable[[str, int], str]:
    """A ``mask_path(state, z)`` from a template such as ``results/masks/per_z/{state}/z{z}.tif``."""
    return lambda state, z: template.format(state=state, z=z)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:03d}"


def shard_files(dataset_dir: str | Path, shard: str) -> tuple[Path, Path]:
    """Images and binary masks of one shard."""
    folder = Path(dataset_dir) / SHARD_DIR
    return folder / f"{shard}-images.npy", folder / f"{shard}-masks.npy"


def extra_shard_file(dataset_dir: str | Path, shard: str, kind: str) -> Path:
    """The ``instances`` (labels) or ``foreground`` (sampled cell pixels) file of a shard."""
    return Path(dataset_dir) / SHARD_DIR / f"{shard}-{kind}.npy"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def foreground_sample(mask: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Up to ``limit`` (y, x) cell pixels of a binary mask, drawn without replacement.

    Stored with each sample so the patch sampler finds cells without scanning whole masks
    (nnU-Net keeps 10,000 locations per class the same way).
    """
    coordinates = np.argwhere(np.asarray(mask) > 0).astype(np.int32)
    if len(coordinates) > limit:
        chosen = np.random.default_rng(seed).choice(len(coordinates), limit, replace=False)
        coordinates = coordinates[np.sort(chosen)]
    return coordinates


def _read_catalogue(catalogue) -> pd.DataFrame:
    if isinstance(catalogue, (str, Path)):
        catalogue_path = Path(catalogue)
        if not catalogue_path.is_file():
            raise InputError(catalogue_path, "catalogue not found")
        return pd.read_csv(catalogue_path)
    return catalogue


class PreparedImages:
    """Prepared images of the focal windows, most recently used last: samples go plane by
    plane through each state, so a window slides and ``keep`` images suffice (0: each image
    is one sample, read once)."""

    def __init__(self, prep: Preprocessing, pixel_sizes: dict, keep: int):
        self.prep, self.pixel_sizes, self.keep = prep, pixel_sizes, keep
        self.recent: OrderedDict[str, tuple[tuple[int, int], np.ndarray]] = OrderedDict()

    def __call__(self, path: str) -> tuple[tuple[int, int], np.ndarray]:
        """(raw height and width, prepared image) of one image file."""
        if path in self.recent:
            self.recent.move_to_end(path)
            return self.recent[path]
        raw = read_image(path)
        pixel_size = self.pixel_sizes.get(path)
        pixel_size = None if pixel_size is None or pd.isna(pixel_size) else float(pixel_size)
        if self.prep.pixel_size is not None:
            check_image_scale(self.prep.scale_for(pixel_size, path), path, pixel_size)
        entry = (tuple(raw.shape[:2]), prepare_image(raw, self.prep, path, pixel_size))
        if self.keep:
            self.recent[path] = entry
            while len(self.recent) > self.keep:
                self.recent.popitem(last=False)
        return entry


# Where each sample is stored, its sizes and its cells, filled in as shards are written.
STORAGE_COLUMNS = ("shard", "row", "height", "width", "stored_height", "stored_width", "cells")


class DatasetBuilder:
    """The state of one variant's build: prepared images, shards as they fill, the
    manifest's columns and what to warn about (:func:`build_dataset`)."""

    def __init__(
        self, catalogue, dataset_dir, variant, prep, patch, shard_size, context_planes, instances
    ):
        self.dataset_dir, self.variant = Path(dataset_dir), variant
        self.prep, self.patch = prep, patch
        self.patches = prep.geometry == "patches"
        self.shard_size = 1 if self.patches else int(shard_size)
        self.store_instances = self.patches or bool(instances)
        self.instances, self.context_planes = bool(instances), int(context_planes)
        self.catalogue = catalogue
        self.columns: dict[str, list] = {key: [] for key in STORAGE_COLUMNS}
        self.empty_masks: list[str] = []
        self.binary_only: list[str] = []
        self.padded = 0
        self._labels: dict[str, np.ndarray] = {}  # a state mask serves all its planes

    def images_for(self, samples: pd.DataFrame) -> PreparedImages:
        """The prepared-image cache for these samples, with every image's pixel size (a
        focal window's neighbours included)."""
        catalogue = self.catalogue
        pixel_sizes = (
            dict(zip(catalogue["path"].astype(str), catalogue["pixel_size"], strict=True))
            if "pixel_size" in catalogue
            else {}
        )
        modalities = len(set(samples["modality"]))
        keep = (2 * self.context_planes + 2) * modalities if self.context_planes else 0
        return PreparedImages(self.prep, pixel_sizes, keep)

    def labels(self, sample, raw_shape) -> np.ndarray:
        """The instance labels of a sample's mask, checked against its image's size."""
        if sample.mask not in self._labels:
            self._labels.clear()
            labels = label_image(read_image(sample.mask), sample.mask)
            if labels.shape[:2] != raw_shape:
                raise InputError(
                    sample.mask,
                    f"mask is {labels.shape[:2]} but image {sample.image} is {raw_shape}",
                )
            if self.instances and is_binary_labels(labels):
                self.binary_only.append(sample.mask)
                labels = instances_from_binary(labels)
            self._labels[sample.mask] = labels
            if not labels.any():
                self.empty_masks.append(sample.mask)
        return self._labels[sample.mask]

    def write_shard(self, name: str, index: int, chunk: pd.DataFrame, images_of, bar) -> None:
        """Prepare the samples of one shard and write its arrays."""
        images = masks = stored_labels = None
        self._labels.clear()
        for row, sample in enumerate(chunk.itertuples(index=False)):
            window = sample.context.split(";") if self.context_planes else [sample.image]
            entries = [images_of(path) for path in window]
            raw_shape = entries[self.context_planes][0]  # the window's middle: the sample
            image = join_planes([prepared for _, prepared in entries], window)
            labels = self.labels(sample, raw_shape)
            stored = image.shape[1:]
            if images is None:  # buffers of exactly this shard's length
                images = np.empty((len(chunk), *image.shape), np.float32)
                masks = np.empty((len(chunk), *stored), np.uint8)
                if self.store_instances:
                    stored_labels = np.empty((len(chunk), *stored), np.uint32)
            images[row] = image
            masks[row] = binary_mask(labels, stored, sample.mask)
            if self.patches:
                stored_labels[row] = resize_labels(labels, stored)
                if stored[0] < self.patch[0] or stored[1] < self.patch[1]:
                    self.padded += 1
            elif self.store_instances:
                stored_labels[row] = instances_at_mask(labels, masks[row])
            cells = int(len(np.unique(labels[labels > 0])))
            self.add_row(name, row, raw_shape, stored, cells)
            bar.update()
        self.save_shard(name, index, images, masks, stored_labels)

    def add_row(self, name, row, raw_shape, stored, cells) -> None:
        values = (name, row, raw_shape[0], raw_shape[1], stored[0], stored[1], cells)
        for key, value in zip(STORAGE_COLUMNS, values, strict=True):
            self.columns[key].append(value if key == "shard" else int(value))

    def save_shard(self, name, index, images, masks, stored_labels) -> None:
        image_file, mask_file = shard_files(self.dataset_dir, name)
        _save_npy(image_file, images)
        _save_npy(mask_file, masks)
        if self.store_instances:
            _save_npy(extra_shard_file(self.dataset_dir, name, "instances"), stored_labels)
        if self.patches:
            _save_npy(
                extra_shard_file(self.dataset_dir, name, "foreground"),
                foreground_sample(masks[0], FOREGROUND_LIMIT, seed=index),
            )

    def write_shards(self, samples: pd.DataFrame, progress: bool) -> None:
        """Every split's samples into shards, written as they fill."""
        shards = self.dataset_dir / SHARD_DIR
        shards.mkdir(parents=True, exist_ok=True)
        for stale in shards.glob("*.npy"):
            stale.unlink()  # a rebuild must not leave shards of an earlier, larger build
        images_of = self.images_for(samples)
        bar = tqdm(
            total=len(samples), desc=f"dataset {self.variant}", unit="image", disable=not progress
        )
        for split, group in samples.groupby("split", sort=False):
            for index, start in enumerate(range(0, len(group), self.shard_size)):
                chunk = group.iloc[start : start + self.shard_size]
                name = f"{split}-{index:05d}" if self.patches else shard_name(split, index)
                self.write_shard(name, index, chunk, images_of, bar)
        bar.close()

    def manifest(self, samples: pd.DataFrame) -> pd.DataFrame:
        """The samples with where each is stored, its sizes and its cell count."""
        manifest = samples.copy()
        manifest.insert(0, "sample", np.arange(len(manifest)))
        for position, key in enumerate(("shard", "row"), start=2):
            manifest.insert(position, key, self.columns[key])
        for key in ("height", "width", "stored_height", "stored_width", "cells"):
            manifest[key] = self.columns[key]
        train_rows = manifest[manifest["split"] == "train"]
        if int(train_rows["cells"].sum()) == 0:
            raise InputError(
                train_rows["mask"].iloc[0] if len(train_rows) else self.dataset_dir,
                f"no cell in any training image of data set {self.variant}: every training "
                "mask is empty, so there is nothing to learn (check the masks stage and "
                "split.test)",
            )
        validation_rows = manifest[manifest["split"] == "validation"]
        if len(validation_rows) and int(validation_rows["cells"].sum()) == 0:
            states = sorted(validation_rows["state"].astype(str).unique())
            warnings.warn(
                f"data set {self.variant}: the validation split ({len(validation_rows)} "
                f"image(s) of state(s) {', '.join(states[:5])}{' ...' if len(states) > 5 else ''}) "
                "holds no cell, so nothing can be chosen on it: training uses threshold 0.5, "
                "keeps the last epoch and no object filter (give split.validation states with "
                "cells)",
                stacklevel=2,
            )
        return manifest

    def warn(self) -> None:
        """What a user must know about the masks and images the build met."""
        for mask in dict.fromkeys(self.empty_masks):
            warnings.warn(
                f"{mask}: empty mask (no cells); its images are kept as all-background samples",
                stacklevel=3,
            )
        if self.binary_only:
            warnings.warn(
                f"{len(set(self.binary_only))} mask(s) carry no instance labels (binary only, "
                f"e.g. {self.binary_only[0]}); model.instances needs instance labels, so "
                "connected components were used to label their cells: touching cells there "
                "are one instance in the training targets and the stored truth",
                stacklevel=3,
            )
        if self.padded:
            prep = self.prep
            log.warning(
                "%d image(s) of %s are smaller than the %s patch at the training scale (%s); "
                "training pads them (mirrored) to the patch size",
                self.padded,
                self.variant,
                list(self.patch),
                f"{prep.pixel_size:.4g} um per pixel"
                if prep.pixel_size is not None
                else f"scale {prep.scale:.3g}",
            )

    def record(self, manifest, samples, modalities, dataset_cfg, split_cfg) -> DatasetRecord:
        """What the data set is, for training, evaluation, predict and export."""
        catalogue, columns = self.catalogue, self.columns
        sized = dataset_cfg.get("cell_diameter") or dataset_cfg.get("cell_diameter_um")
        return DatasetRecord(
            variant=self.variant,
            modalities=tuple(dict.fromkeys(modalities)),
            preprocessing=self.prep,
            patch_size=self.patch,
            mask_source=dataset_cfg["mask_source"],
            split={
                "key": split_cfg["key"],
                "test": list(split_cfg["test"]),
                "validation": list(split_cfg["validation"]),
            },
            samples={split: int((manifest["split"] == split).sum()) for split in SPLITS},
            shard_size=self.shard_size,
            has_instances=self.store_instances,
            context_planes=self.context_planes,
            cell_diameter=dataset_cfg.get("cell_diameter"),
            target_diameter=dataset_cfg.get("target_diameter") if sized else None,
            source_sizes=tuple(sorted(set(zip(columns["height"], columns["width"], strict=True)))),
            cell_diameter_um=dataset_cfg.get("cell_diameter_um"),
            source_pixel_sizes=tuple(
                sorted({round(float(size), 6) for size in samples["pixel_size"] if pd.notna(size)})
            ),
            source_dtypes=tuple(
                sorted(
                    set(catalogue.loc[catalogue["modality"].isin(modalities), "dtype"].astype(str))
                )
                if "dtype" in catalogue
                else ()
            ),
        )


def build_dataset(
    catalogue: pd.DataFrame | str | Path,
    dataset_dir: str | Path,
    *,
    variant: str,
    modalities: Sequence[str],
    split_cfg: dict,
    dataset_cfg: dict,
    mask_path: Callable[[str, int], str | Path] | str,
    context_planes: int,
    instances: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Build one variant's data set into ``dataset_dir``; returns the manifest.

    ``mask_path`` is a function ``(state, z) -> path`` or a template with ``{state}`` and
    ``{z}``. ``resize`` geometry: samples of one shape, ``dataset.shard_size`` per shard.
    ``patches`` geometry: each sample its own shard at its own rescaled size, with its
    instance labels and a sample of its cell pixels. ``instances`` (a network with instance
    outputs will train on it): instance labels in every geometry, binary-only masks
    labelled by connected components (a warning names them). ``context_planes`` (the
    variant's ``context_planes``) k > 0: each sample holds its plane's focal window, the
    images of its state and channel at its k neighbouring planes on each side
    (:func:`focal_windows`), as channels. Shards are written as they fill; the
    manifest last, so a build that fails leaves no manifest (and the workflow treats the
    data set as missing).
    """
    catalogue = _read_catalogue(catalogue)
    if isinstance(mask_path, str):
        mask_path = mask_template(mask_path)
    prep, patch = preprocessing_from_config(dataset_cfg)
    dataset_cfg = complete_section("dataset", dataset_cfg)
    split_cfg = complete_section("split", split_cfg)
    context_planes = int(context_planes)
    samples = plan_samples(
        catalogue, variant, modalities, split_cfg, mask_path, context_planes=context_planes
    )
    builder = DatasetBuilder(
        catalogue,
        dataset_dir,
        variant,
        prep,
        patch,
        dataset_cfg["shard_size"],
        context_planes,
        instances,
    )
    builder.write_shards(samples, progress)
    manifest = builder.manifest(samples)
    builder.warn()
    record = builder.record(manifest, samples, modalities, dataset_cfg, split_cfg)
    dataset_dir = Path(dataset_dir)
    write_text(dataset_dir / INFO_NAME, json.dumps(record.to_dict(), indent=2) + "\n")
    write_csv(dataset_dir / MANIFEST_NAME, manifest)
    log.info(
        "dataset %s (%s geometry%s): %s samples per split in %d shards",
        variant,
        prep.geometry,
        f", focal context of {context_planes} plane(s) on each side" if context_planes else "",
        record.samples,
        len(set(builder.columns["shard"])),
    )
    return manifest


# ---------------------------------------------------------------- reading
def read_manifest(dataset_dir: str | Path) -> pd.DataFrame:
    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(path, "data set manifest not found (build the data set first)")
    manifest = pd.read_csv(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise InputError(path, f"not a protoseg manifest: missing columns {missing}")
    return manifest


def read_info(dataset_dir: str | Path) -> dict:
    """``dataset.json`` as a plain dict (see :func:`read_record` for the typed record)."""
    path = Path(dataset_dir) / INFO_NAME
    if not path.is_file():
        raise InputError(path, "data set description not found (build the data set first)")
    return json.loads(path.read_text())


def read_record(dataset_dir: str | Path) -> DatasetRecord:
    return DatasetRecord.from_dict(read_info(dataset_dir), Path(dataset_dir) / INFO_NAME)


@dataclass
class Sample:
    image: np.ndarray  # float32 C x H x W at the training scale
    mask: np.ndarray  # uint8 H x W, 0/1
    row: dict  # the sample's manifest row


class SplitData(Sequence):
    """One split of a built data set, read lazily from memory-mapped shards: the one reader.

    ``data[i]`` is a :class:`Sample`; :meth:`arrays`, :meth:`region`, :meth:`instances` and
    :meth:`foreground` read parts of it. Only the shards that are touched are opened, and
    only the pages read are loaded. No torch needed.
    """

    def __init__(self, dataset_dir: str | Path, split: str):
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; use one of {SPLITS}")
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        self.info = read_info(self.dataset_dir)
        self.record = DatasetRecord.from_dict(self.info, self.dataset_dir / INFO_NAME)
        manifest = read_manifest(self.dataset_dir)
        self.manifest = manifest[manifest["split"] == split].reset_index(drop=True)
        self._shards: dict[tuple[str, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.manifest)

    def _array(self, shard: str, kind: str) -> np.ndarray:
        if (shard, kind) not in self._shards:
            if kind in ("images", "masks"):
                path = shard_files(self.dataset_dir, shard)[0 if kind == "images" else 1]
            else:
                path = extra_shard_file(self.dataset_dir, shard, kind)
            if not path.is_file():
                raise InputError(
                    path, "shard named in the manifest is missing (rebuild the data set)"
                )
            self._shards[(shard, kind)] = np.load(path, mmap_mode="r")
        return self._shards[(shard, kind)]

    def _entry(self, index: int) -> tuple[str, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        entry = self.manifest.iloc[index]
        return str(entry["shard"]), int(entry["row"])

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask of sample ``index`` (copies, safe to modify)."""
        shard, row = self._entry(index)
        return np.array(self._array(shard, "images")[row]), np.array(
            self._array(shard, "masks")[row]
        )

    def shape(self, index: int) -> tuple[int, int]:
        """(height, width) of sample ``index`` as stored (at the training scale)."""
        shard, _ = self._entry(index)
        return tuple(self._array(shard, "masks").shape[1:])

    def region(self, index: int, top: int, left: int, height: int, width: int):
        """Image (C, h, w), binary mask and instance labels (h, w) of a window of a sample;
        only its pages are read. Labels are the connected components where the data set has
        no instance labels."""
        shard, row = self._entry(index)
        window = (slice(top, top + height), slice(left, left + width))
        image = np.asarray(self._array(shard, "images")[row][(slice(None), *window)])
        mask = np.asarray(self._array(shard, "masks")[row][window])
        if self.record.has_instances:
            labels = np.asarray(self._array(shard, "instances")[row][window])
        else:
            labels = mask.astype(np.uint32)
        return image, mask, labels

    def instances(self, index: int) -> np.ndarray:
        """Instance labels (H, W) at the training scale (data sets with instance labels:
        ``patches``, or ``resize`` built for a network with instance outputs)."""
        shard, row = self._entry(index)
        return np.array(self._array(shard, "instances")[row])

    def foreground(self, index: int) -> np.ndarray:
        """Up to :data:`FOREGROUND_LIMIT` (y, x) cell pixels of sample ``index``."""
        shard, row = self._entry(index)
        if self.record.geometry == "patches":
            return np.asarray(self._array(shard, "foreground"))
        return foreground_sample(self._array(shard, "masks")[row], FOREGROUND_LIMIT, seed=index)

    def __getitem__(self, index: int) -> Sample:
        image, mask = self.arrays(index)
        return Sample(
            image, mask, self.manifest.iloc[index if index >= 0 else index + len(self)].to_dict()
        )

    def __getstate__(self):  # memory maps are reopened after pickling (DataLoader workers)
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state


def open_split(dataset_dir: str | Path, split: str) -> SplitData:
    """The ``train``, ``validation`` or ``test`` split of a built data set, loaded lazily."""
    return SplitData(dataset_dir, split)


class TorchSplit:
    """A map-style torch data set over whole samples: (image C x H x W, target 1 x H x W).

    ``instances`` (:data:`protoseg.instances.MODES`): with a mode other than ``none`` the
    target also holds that mode's extra outputs (1 + K x H x W), made from the stored
    instance labels. Plain class (torch's ``DataLoader`` needs only ``__len__`` and
    ``__getitem__``), so that this module imports without torch and the object pickles into
    DataLoader workers.
    """

    def __init__(self, data: SplitData, instances: str = "none"):
        self.data = data
        self.mode = instances

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        import torch

        image, mask = self.data.arrays(index)
        if self.mode == "none":
            return torch.from_numpy(image), torch.from_numpy(mask).unsqueeze(0).float()
        from protoseg.instances import with_targets

        target = with_targets(mask, self.data.instances(index), self.mode)
        return torch.from_numpy(image), torch.from_numpy(target)


def torch_dataset(dataset_dir: str | Path, split: str) -> TorchSplit:
    """The split as a torch data set (see :class:`TorchSplit`)."""
    return TorchSplit(open_split(dataset_dir, split))
