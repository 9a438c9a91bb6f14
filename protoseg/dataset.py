"""Training data sets: images and binary masks, split by a catalogue column, on disk in shards.

One sample is one image (the study's "all" data set holds the bright-field and the
fluorescent image of a plane as two samples) paired with its mask, the merged mask of its
state (the study) or its plane's per-z mask. What the build does to each sample, as the
study did:

* **image**: read (RGB order), scaled to [0, 1] (uint8 / 255, uint16 / 65535, other
  integer types by their dtype's maximum, bool as 0/1, floating point taken as already in
  [0, 1] and clipped), colour handled by ``dataset.colour`` (``rgb``: 3 channels, greyscale
  repeated; ``grey``: 1 channel, RGB converted to luminance 0.299 R + 0.587 G + 0.114 B, as
  OpenCV does; an alpha channel is dropped), then resized with ``cv2.INTER_LINEAR`` to
  ``dataset.size`` [height, width] and stored channels-first as float32;
* **mask**: instance labels -> 0/255 uint8, resized with ``cv2.INTER_LINEAR`` like the
  image, then binarised (> 0 -> 1), stored as uint8.

Layout of ``dataset_dir`` (the choice of format: docs/benchmarks/dataset.md):

* ``manifest.csv``: one row per sample: ``sample, split, shard, row, image, mask, state,
  z, modality, channel`` plus the split key column;
* ``dataset.json``: size, colour, channels, variant modalities, split and mask source;
* ``shards/{split}-{k:03d}-images.npy`` (float32, N x C x H x W) and
  ``shards/{split}-{k:03d}-masks.npy`` (uint8, N x H x W), at most ``dataset.shard_size``
  samples each. Plain ``.npy`` so that readers memory-map them and touch only the samples
  they use (compressed ``.npz`` must be decompressed whole to read one sample).

The build streams image by image into one shard buffer, so its memory is one shard plus one
full-size image, whatever the number of images.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from protoseg import naming
from protoseg.errors import ConfigError, InputError
from protoseg.io import atomic_path, read_image, write_csv, write_text

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
COLOURS = ("rgb", "grey")
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
DEFAULT_SHARD_SIZE = 64


# ---------------------------------------------------------------- per-image transforms
def scale_to_unit(image: np.ndarray, source: str | Path = "image") -> np.ndarray:
    """``image`` as float32 in [0, 1]: integer types divided by their dtype's maximum.

    uint8 / 255, uint16 / 65535 (a 12-bit camera's images stay dim: the scale is the
    dtype's, never the image's own maximum, so every image of a set is scaled alike),
    bool as 0/1, floating point clipped to [0, 1].
    """
    image = np.asarray(image)
    if image.dtype == bool:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        if info.min < 0:
            raise InputError(
                source, f"signed integer image ({image.dtype}); expected unsigned intensities"
            )
        return image.astype(np.float32) / np.float32(info.max)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise InputError(source, f"unsupported pixel type {image.dtype}")


def convert_colour(image: np.ndarray, colour: str, source: str | Path = "image") -> np.ndarray:
    """A float image (H x W or H x W x C) as H x W x 3 (``rgb``) or H x W x 1 (``grey``)."""
    if colour not in COLOURS:
        raise ConfigError(
            "dataset.colour", f"unknown colour '{colour}'; use one of {', '.join(COLOURS)}"
        )
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]  # alpha carries no intensity
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        grey = image
        return np.repeat(grey[..., None], 3, axis=2) if colour == "rgb" else grey[..., None]
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            source, f"expected a greyscale, RGB or RGBA image, got shape {image.shape}"
        )
    if colour == "rgb":
        return image
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[..., None]


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize H x W (x C) to ``size`` = [height, width] with linear interpolation."""
    height, width = int(size[0]), int(size[1])
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 3 and resized.ndim == 2:  # OpenCV drops a single channel axis
        resized = resized[..., None]
    return resized


def prepare_image(
    image: np.ndarray, size: Sequence[int], colour: str, source: str | Path = "image"
) -> np.ndarray:
    """Scale to [0, 1], convert colour, resize: float32 C x H x W."""
    unit = convert_colour(scale_to_unit(image, source), colour, source)
    return np.ascontiguousarray(resize(unit, size).transpose(2, 0, 1), dtype=np.float32)


def prepare_mask(mask: np.ndarray, size: Sequence[int], source: str | Path = "mask") -> np.ndarray:
    """Instance labels -> binary uint8 H x W at ``size``: resized linearly, then > 0 -> 1.

    The labels become 0/255 uint8 first (a binary mask image, as the study saved and read
    them), so OpenCV's fixed-point interpolation decides the fringe: a pixel becomes cell
    where the interpolated value rounds to at least 1 of 255.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(source, f"expected a 2D label mask, got shape {mask.shape}")
    binary = np.where(mask > 0, np.uint8(255), np.uint8(0))
    return (resize(binary, size) > 0).astype(np.uint8)


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
    key = split_cfg.get("key", "xy")
    if key not in catalogue.columns:
        raise ConfigError(
            "split.key", f"'{key}' is not a catalogue column (columns: {list(catalogue.columns)})"
        )
    values = catalogue[key].map(naming.parse_value)
    test = {naming.parse_value(v) for v in split_cfg.get("test", [])}
    validation = {naming.parse_value(v) for v in split_cfg.get("validation", []) or []}
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
) -> pd.DataFrame:
    """One row per sample of a variant, ordered by split, state, plane and modality.

    ``mask_path(state, z)`` names the mask of each image. Every mask must exist before any
    work starts (:class:`InputError` naming the first missing file).
    """
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
    key = split_cfg.get("key", "xy")
    samples = pd.DataFrame(
        {
            "split": chosen["split"].to_numpy(),
            "image": chosen["path"].astype(str).to_numpy(),
            "mask": chosen["mask"].to_numpy(),
            "state": chosen["state"].to_numpy(),
            "z": chosen["z"].astype(int).to_numpy(),
            "modality": chosen["modality"].to_numpy(),
            "channel": chosen["channel"].to_numpy() if "channel" in chosen else "",
        }
    )
    if key not in samples.columns:
        samples[key] = chosen[key].to_numpy()
    return samples


# ---------------------------------------------------------------- building
def mask_template(template: str) -> Callable[[str, int], str]:
    """A ``mask_path(state, z)`` from a template such as ``results/masks/per_z/{state}/z{z}.tif``."""
    return lambda state, z: template.format(state=state, z=z)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:03d}"


def shard_files(dataset_dir: str | Path, shard: str) -> tuple[Path, Path]:
    folder = Path(dataset_dir) / SHARD_DIR
    return folder / f"{shard}-images.npy", folder / f"{shard}-masks.npy"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def build_dataset(
    catalogue: pd.DataFrame | str | Path,
    dataset_dir: str | Path,
    *,
    variant: str,
    modalities: Sequence[str],
    split_cfg: dict,
    dataset_cfg: dict,
    mask_path: Callable[[str, int], str | Path] | str,
    progress: bool = True,
) -> pd.DataFrame:
    """Build one variant's data set into ``dataset_dir``; returns the manifest.

    ``mask_path`` is a function ``(state, z) -> path`` or a template with ``{state}`` and
    ``{z}``. Shards are written as they fill; the manifest last, so a build that fails
    leaves no manifest (and the workflow treats the data set as missing).
    """
    if isinstance(catalogue, (str, Path)):
        catalogue_path = Path(catalogue)
        if not catalogue_path.is_file():
            raise InputError(catalogue_path, "catalogue not found")
        catalogue = pd.read_csv(catalogue_path)
    if isinstance(mask_path, str):
        mask_path = mask_template(mask_path)
    size = [int(v) for v in dataset_cfg["size"]]
    colour = dataset_cfg.get("colour", "rgb")
    if colour not in COLOURS:
        raise ConfigError(
            "dataset.colour", f"unknown colour '{colour}'; use one of {', '.join(COLOURS)}"
        )
    shard_size = int(dataset_cfg.get("shard_size", DEFAULT_SHARD_SIZE))
    if shard_size < 1:
        raise ConfigError("dataset.shard_size", "must be at least 1")
    channels = 3 if colour == "rgb" else 1
    samples = plan_samples(catalogue, variant, modalities, split_cfg, mask_path)

    dataset_dir = Path(dataset_dir)
    (dataset_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (dataset_dir / SHARD_DIR).glob("*.npy"):
        stale.unlink()  # a rebuild must not leave shards of an earlier, larger build

    shards, rows = [], []
    bar = tqdm(total=len(samples), desc=f"dataset {variant}", unit="image", disable=not progress)
    for split, group in samples.groupby("split", sort=False):
        for index, start in enumerate(range(0, len(group), shard_size)):
            chunk = group.iloc[start : start + shard_size]
            name = shard_name(split, index)
            # Buffers of exactly this shard's length: memory is one shard, never the set.
            images = np.empty((len(chunk), channels, *size), np.float32)
            masks = np.empty((len(chunk), *size), np.uint8)
            mask_cache: dict[str, np.ndarray] = {}  # a state mask serves all its planes
            for row, sample in enumerate(chunk.itertuples(index=False)):
                image = read_image(sample.image)
                if sample.mask not in mask_cache:
                    mask_cache.clear()
                    labels = read_image(sample.mask)
                    if labels.shape[:2] != image.shape[:2]:
                        raise InputError(
                            sample.mask,
                            f"mask is {labels.shape[:2]} but image {sample.image} is {image.shape[:2]}",
                        )
                    mask_cache[sample.mask] = prepare_mask(labels, size, sample.mask)
                    if not labels.any():
                        warnings.warn(
                            f"{sample.mask}: empty mask (no cells); its images are kept as all-background samples",
                            stacklevel=2,
                        )
                images[row] = prepare_image(image, size, colour, sample.image)
                masks[row] = mask_cache[sample.mask]
                shards.append(name)
                rows.append(row)
                bar.update()
            image_file, mask_file = shard_files(dataset_dir, name)
            _save_npy(image_file, images)
            _save_npy(mask_file, masks)
            del images, masks
    bar.close()

    manifest = samples.copy()
    manifest.insert(0, "sample", np.arange(len(manifest)))
    manifest.insert(2, "shard", shards)
    manifest.insert(3, "row", rows)
    info = {
        "variant": variant,
        "modalities": list(dict.fromkeys(modalities)),
        "size": size,
        "colour": colour,
        "channels": channels,
        "scaling": "integer images / dtype maximum (uint8 / 255, uint16 / 65535); float clipped to [0, 1]",
        "interpolation": "linear",
        "mask_source": dataset_cfg.get("mask_source", "state"),
        "shard_size": shard_size,
        "split": {
            "key": split_cfg.get("key", "xy"),
            "test": list(split_cfg.get("test", [])),
            "validation": list(split_cfg.get("validation", []) or []),
        },
        "samples": {split: int((manifest["split"] == split).sum()) for split in SPLITS},
    }
    write_text(dataset_dir / INFO_NAME, json.dumps(info, indent=2) + "\n")
    write_csv(dataset_dir / MANIFEST_NAME, manifest)
    log.info(
        "dataset %s: %s samples per split in %d shards", variant, info["samples"], len(set(shards))
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
    path = Path(dataset_dir) / INFO_NAME
    if not path.is_file():
        raise InputError(path, "data set description not found (build the data set first)")
    return json.loads(path.read_text())


@dataclass
class Sample:
    image: np.ndarray  # float32 C x H x W in [0, 1]
    mask: np.ndarray  # uint8 H x W, 0/1
    row: dict  # the sample's manifest row


class SplitData(Sequence):
    """One split of a built data set, read lazily from memory-mapped shards.

    ``data[i]`` is a :class:`Sample` (image float32 C x H x W, mask uint8 H x W, manifest
    row); only the shards that are touched are opened, and only the pages of the samples
    read are loaded. No torch needed.
    """

    def __init__(self, dataset_dir: str | Path, split: str):
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; use one of {SPLITS}")
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        self.info = read_info(self.dataset_dir)
        manifest = read_manifest(self.dataset_dir)
        self.manifest = manifest[manifest["split"] == split].reset_index(drop=True)
        self._shards: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.manifest)

    def _open(self, shard: str) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._shards:
            image_file, mask_file = shard_files(self.dataset_dir, shard)
            for path in (image_file, mask_file):
                if not path.is_file():
                    raise InputError(
                        path, "shard named in the manifest is missing (rebuild the data set)"
                    )
            self._shards[shard] = (
                np.load(image_file, mmap_mode="r"),
                np.load(mask_file, mmap_mode="r"),
            )
        return self._shards[shard]

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask of sample ``index`` (copies, safe to modify)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        entry = self.manifest.iloc[index]
        images, masks = self._open(entry["shard"])
        row = int(entry["row"])
        return np.array(images[row]), np.array(masks[row])

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
    """A map-style torch data set over a split: (image C x H x W, mask 1 x H x W), float32 tensors.

    Plain class (torch's ``DataLoader`` needs only ``__len__`` and ``__getitem__``), so that
    this module imports without torch and the object pickles into DataLoader workers.
    """

    def __init__(self, data: SplitData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        import torch

        image, mask = self.data.arrays(index)
        return torch.from_numpy(image), torch.from_numpy(mask).unsqueeze(0).float()


def torch_dataset(dataset_dir: str | Path, split: str) -> TorchSplit:
    """The split as a torch data set (see :class:`TorchSplit`)."""
    return TorchSplit(open_split(dataset_dir, split))
