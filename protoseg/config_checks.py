"""Config checks beyond the schema, run when Snakemake parses the workflow.

The schema (``workflow/schemas/config.schema.yaml``) checks each key on its own: its
type, its allowed values. The checks here relate keys to each other and to the image
records read from the file names (:mod:`protoseg.catalogue`), so that a value that can only
fail later (in a training job, after the masks and datasets were made) stops the run
before any job starts, ``snakemake -n`` included. Each raises
:class:`~protoseg.errors.ConfigError` naming the key.

* :func:`check_config` (config alone): modalities named by ``masks.modality`` and
  ``dataset.variants.*.modalities`` must be values of ``data.channels`` (loss names,
  methods and geometries are the schema's enums); ``train.lr_min <= train.lr_max``;
  ``train.watershed`` settings must be in range and of ``model.instances``' mode; a
  variant's ``context_planes`` needs a stack of more than one plane in ``data.planes`` (a
  window wider than the stack only warns: its ends repeat); a SAM method's weights must be
  on this machine or downloads allowed (:func:`check_mask_method`).
* :func:`check_split` (config and records): ``split.key`` must be a column of the
  records, every ``split.test`` and ``split.validation`` value must match an image, the
  two must not share a value, and some images must be left for training.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from numbers import Number

import numpy as np
import pandas as pd

from protoseg.catalogue import parse_value
from protoseg.config import complete_section
from protoseg.errors import ConfigError
from protoseg.masks import get_method

# Catalogue columns read from the pixels, so unknown when the workflow is parsed.
CATALOGUE_ONLY_COLUMNS = ("height", "width", "channels", "dtype")
# train.threshold: a number in (0, 1), or chosen in training.
THRESHOLD_MODES = ("auto", "validation")


def check_config(config: dict) -> None:
    """Every check that needs only the config."""
    modalities = sorted(set(map(str, config["data"]["channels"].values())))
    check_modality("masks.modality", config["masks"]["modality"], modalities)
    variants = complete_section("dataset", config["dataset"])["variants"]
    for name, variant in variants.items():
        for modality in variant["modalities"]:
            check_modality(f"dataset.variants.{name}.modalities", modality, modalities)
        check_context(name, variant["context_planes"], config["data"]["planes"])
    train = complete_section("train", config["train"])
    check_learning_rates(train["lr_min"], train["lr_max"])
    from protoseg.instances import check_mode, check_setting

    mode = check_mode(complete_section("model", config.get("model"))["instances"])
    check_setting(train["watershed"], mode)
    check_mask_method(config["masks"])


def check_mask_method(masks_cfg: dict) -> None:
    """A SAM method (``sam-auto``, ``sam-prompted``) needs its weights: a
    ``masks.sam.checkpoint`` that exists, or the named model in micro-sam's cache, or
    ``masks.sam.download: true``. Checked here, when the workflow is parsed, as the masks
    job checks it again before any work; the device is left to the job (a cluster node's)."""
    if not get_method(masks_cfg["method"]).uses_sam:
        return
    from protoseg.masks.sam import check_model, settings_from_config

    check_model(settings_from_config(masks_cfg["sam"]))


def check_modality(key: str, modality: str, known: Iterable[str]) -> None:
    known = sorted(known)
    if str(modality) not in known:
        raise ConfigError(
            key,
            f"modality '{modality}' is not one of data.channels' modalities "
            f"({', '.join(known)}); use one of those or add its channel to data.channels",
        )


def check_context(variant: str, context_planes: int, planes: Iterable[int]) -> None:
    """A focal-context variant (``context_planes`` k > 0) needs a stack: ``data.planes``
    of more than one plane. A window of 2k + 1 planes wider than the stack works (its ends
    repeat the nearest plane) but fits no plane, so it warns."""
    planes = sorted({int(z) for z in planes})
    key = f"dataset.variants.{variant}.context_planes"
    if context_planes > 0 and len(planes) < 2:
        raise ConfigError(
            key,
            f"{context_planes} asks for the neighbouring planes of each image, but data.planes "
            f"holds one plane ({', '.join(f'z{z}' for z in planes)}): there is no focal stack "
            "to take them from; set it to 0 or list every plane of the stacks in data.planes",
        )
    if 2 * context_planes + 1 > len(planes):
        warnings.warn(
            f"config key '{key}': a window of {2 * context_planes + 1} planes is wider than "
            f"the stack of {len(planes)} (data.planes): every sample's window runs past the "
            "stack's ends, whose planes it repeats",
            stacklevel=2,
        )


def check_learning_rates(lr_min: float, lr_max: float) -> None:
    """``lr_min <= lr_max``: the cyclic learning rate runs from one up to the other."""
    if float(lr_min) > float(lr_max):
        raise ConfigError(
            "train.lr_min",
            f"lr_min {lr_min} is above lr_max {lr_max}; the cyclic learning rate runs from "
            "lr_min up to lr_max",
        )


def check_split(split_cfg: dict, records: pd.DataFrame) -> None:
    """``split`` against the images: a known key, values that match, a non-empty train split."""
    key = split_cfg["key"]
    columns = [c for c in records.columns if c != "path"]
    if key in CATALOGUE_ONLY_COLUMNS:
        return  # known only once the catalogue has opened the images
    if key not in columns:
        raise ConfigError(
            "split.key",
            f"'{key}' is not a field of the image names (fields: {', '.join(columns)}, "
            f"or one of {', '.join(CATALOGUE_ONLY_COLUMNS)})",
        )
    values = records[key].map(parse_value)
    present = set(values)
    shown = ", ".join(map(str, sorted(present, key=_order)))
    chosen = {}
    for name in ("test", "validation"):
        wanted = [parse_value(value) for value in split_cfg.get(name) or []]
        missing = [value for value in wanted if value not in present]
        if missing:
            raise ConfigError(
                f"split.{name}",
                f"value{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
                f"match{'' if len(missing) > 1 else 'es'} no image ({key} of the images: {shown})",
            )
        chosen[name] = set(wanted)
    both = chosen["test"] & chosen["validation"]
    if both:
        raise ConfigError(
            "split.validation",
            f"values {', '.join(map(str, sorted(both, key=_order)))} are also in split.test",
        )
    if not present - chosen["test"] - chosen["validation"]:
        raise ConfigError(
            "split.test",
            f"no image is left for training: split.test and split.validation take every "
            f"{key} ({shown})",
        )


def check_pixel_sizes(dataset_cfg: dict, records: pd.DataFrame) -> None:
    """With a cell diameter in micrometres (``dataset.cell_diameter_um``), every image needs
    a pixel size (its file's or ``data.pixel_size``) that gives a sane rescale factor; the
    first that has none, or an absurd one, is named before any job starts."""
    from protoseg.dataset import check_image_scale, model_pixel_size
    from protoseg.errors import InputError

    dataset_cfg = complete_section("dataset", dataset_cfg)
    model_size = model_pixel_size(dataset_cfg)
    if model_size is None:
        return
    if dataset_cfg["geometry"] != "patches":
        raise ConfigError(
            "dataset.cell_diameter_um",
            "needs the patches geometry (the resize geometry resizes every image to "
            "dataset.size whatever its pixel size)",
        )
    sizes = pd.to_numeric(records.get("pixel_size", pd.Series(np.nan, index=records.index)))
    unknown = records[sizes.isna()]
    if len(unknown):
        raise InputError(
            unknown["path"].iloc[0],
            f"states no pixel size and data.pixel_size is not set, but "
            f"dataset.cell_diameter_um ({dataset_cfg['cell_diameter_um']} um) needs each "
            f"image's micrometres per pixel ({len(unknown)} image(s) without one)",
        )
    for path, size in zip(records["path"], sizes, strict=True):
        check_image_scale(float(size) / model_size, path, float(size))


def _order(value: int | str) -> tuple[bool, int | str]:
    """Numbers first, in numeric order, then names."""
    return isinstance(value, str), value


def check_threshold_setting(value, has_validation: bool | None = None) -> None:
    """``train.threshold``: auto, validation or a number in (0, 1); ``validation`` needs a
    validation split (checked when ``has_validation`` is known)."""
    if isinstance(value, Number) and not isinstance(value, bool):
        if not 0 < float(value) < 1:
            raise ConfigError("train.threshold", f"a fixed threshold lies in (0, 1), got {value}")
        return
    if value not in THRESHOLD_MODES:
        raise ConfigError(
            "train.threshold", f"use auto, validation or a number in (0, 1), got '{value}'"
        )
    if value == "validation" and has_validation is False:
        raise ConfigError(
            "train.threshold",
            "'validation' chooses the threshold on the validation split, but split.validation "
            "selects no image; add validation values or set a number (e.g. 0.5)",
        )
