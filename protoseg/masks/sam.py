"""micro-sam for the mask methods ``sam-auto`` (AMG or AIS, registered here) and
``sam-prompted`` (points, boxes; registered in :mod:`protoseg.masks.prompts`, which builds
on this module and never the other way round).

Both run on one plane at a time, read the config's ``masks.sam`` section
(:func:`settings_from_config`) and share, through :class:`SamMethod`:

- the model, loaded once per process (``get_sam_model`` by name from micro-sam's cache, or
  a local checkpoint), on the configured device (auto: cuda, mps, cpu);
- the image embeddings, cached on disk as ``{embeddings_dir}/{model}/{state}/z{z}.zarr``
  (micro-sam's own zarr format, which its napari annotator opens too) and reused by later
  runs; a cache made for another image, model or tiling is recomputed, not trusted;
- tiling for large images (``tile_shape`` and ``halo``), micro-sam's tiled embeddings;
- the checks before any work: the device, and :func:`check_model`, which finds out from
  micro-sam's cache that weights are missing offline and names the config key to set.

torch and micro-sam are imported inside functions so that this module imports without
them (the method registry imports it at Snakemake parse time).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from protoseg.device import resolve_device
from protoseg.errors import ConfigError
from protoseg.masks import MaskMethod, register_method
from protoseg.masks.imported import relabel_mask

log = logging.getLogger(__name__)

MODES = ("amg", "ais")
# SAM encoder architectures; micro-sam's fine-tuned names start with one (vit_b_lm ...).
ARCHITECTURES = ("vit_t", "vit_b", "vit_l", "vit_h")
# Signature entries of a cached embedding that must match for it to be reused.
EMBEDDING_KEYS = ("data_signature", "tile_shape", "halo", "model_type", "model_hash")


@dataclass(frozen=True)
class SamSettings:
    """The ``masks.sam`` config section (docs/masks.md), ``tile_shape`` and ``halo`` as tuples."""

    model_type: str
    checkpoint: str | None
    mode: str
    device: str
    tile_shape: tuple[int, int] | None
    halo: tuple[int, int] | None
    embeddings_dir: str | None
    download: bool
    points_per_side: int
    min_size: int

    @property
    def model_key(self) -> str:
        """Folder name of this model's embedding cache."""
        if self.checkpoint:
            return f"{self.model_type}-{Path(self.checkpoint).stem}"
        return self.model_type


def _pair(value) -> tuple[int, int] | None:
    return None if value is None else tuple(int(number) for number in value)


def settings_from_config(section: dict) -> SamSettings:
    """:class:`SamSettings` from the validated ``masks.sam`` section, its keys checked together."""
    unknown = set(section) - {field.name for field in fields(SamSettings)}
    if unknown:
        raise ConfigError(f"masks.sam.{sorted(unknown)[0]}", "unknown key")
    settings = SamSettings(
        model_type=section["model_type"],
        checkpoint=section["checkpoint"],
        mode=section["mode"],
        device=section["device"],
        tile_shape=_pair(section["tile_shape"]),
        halo=_pair(section["halo"]),
        embeddings_dir=section["embeddings_dir"],
        download=section["download"],
        points_per_side=section["points_per_side"],
        min_size=section["min_size"],
    )
    if settings.mode not in MODES:
        raise ConfigError(
            "masks.sam.mode", f"unknown mode '{settings.mode}'; use one of {', '.join(MODES)}"
        )
    if settings.tile_shape is not None:
        if settings.halo is None:
            raise ConfigError(
                "masks.sam.halo", "must be set when masks.sam.tile_shape is set, e.g. [64, 64]"
            )
        if any(2 * h >= t for h, t in zip(settings.halo, settings.tile_shape, strict=True)):
            raise ConfigError(
                "masks.sam.halo",
                f"{list(settings.halo)} must be less than half of tile_shape {list(settings.tile_shape)}",
            )
    elif settings.halo is not None:
        raise ConfigError(
            "masks.sam.tile_shape", "must be set when masks.sam.halo is set (or set halo to null)"
        )
    return settings


# ---------------------------------------------------------------- model availability


def model_names() -> list[str]:
    """Model names micro-sam knows (its registry, decoders left out)."""
    from micro_sam import util

    return [name for name in util.get_model_names() if not name.endswith("_decoder")]


def _registry():
    from micro_sam import util

    return util.models()


def missing_weights(model_type: str, with_decoder: bool = True) -> list[Path]:
    """Files micro-sam would have to download for ``model_type`` (empty: all cached).

    micro-sam keeps weights in a pooch cache (``MICROSAM_CACHEDIR`` or the user cache);
    a named model with a decoder (``vit_b_lm`` ...) needs both files.
    """
    registry = _registry()
    names = [model_type]
    if with_decoder and f"{model_type}_decoder" in registry.registry:
        names.append(f"{model_type}_decoder")
    return [
        Path(registry.abspath) / name
        for name in names
        if not (Path(registry.abspath) / name).is_file()
    ]


def check_model(settings: SamSettings) -> None:
    """Stop with a :class:`ConfigError` before any work when the model cannot be loaded.

    Checks: a checkpoint path that does not exist; an unknown model name (the message
    lists the valid ones); AIS with a named model that has no decoder; a named model whose
    weights are not in micro-sam's cache while downloads are off (or impossible offline).
    """
    architecture = settings.model_type[:5]
    if settings.checkpoint:
        if not Path(settings.checkpoint).is_file():
            raise ConfigError(
                "masks.sam.checkpoint", f"checkpoint file not found: {settings.checkpoint}"
            )
        if architecture not in ARCHITECTURES:
            raise ConfigError(
                "masks.sam.model_type",
                f"'{settings.model_type}' names no SAM architecture; with a checkpoint use the "
                f"architecture it was trained from: one of {', '.join(ARCHITECTURES)} (or a micro-sam name such as vit_b_lm)",
            )
        return
    names = model_names()
    if settings.model_type not in names:
        raise ConfigError(
            "masks.sam.model_type",
            f"unknown model '{settings.model_type}'; valid names: {', '.join(names)} "
            "(or set masks.sam.checkpoint to a local .pt file)",
        )
    if settings.mode == "ais" and f"{settings.model_type}_decoder" not in _registry().registry:
        with_decoder = [name for name in names if f"{name}_decoder" in _registry().registry]
        raise ConfigError(
            "masks.sam.mode",
            f"'ais' needs a model with an instance-segmentation decoder, and '{settings.model_type}' has none; "
            f"use mode 'amg' or one of {', '.join(with_decoder)}",
        )
    missing = missing_weights(settings.model_type)
    if missing and not settings.download:
        raise ConfigError(
            "masks.sam.checkpoint",
            f"the weights of '{settings.model_type}' are not on this machine "
            f"(looked for {', '.join(str(path) for path in missing)}) and downloads are off. "
            "Set masks.sam.checkpoint to a local .pt file, or download the weights on a machine with "
            f"internet (python -c \"from micro_sam.util import get_sam_model; get_sam_model('{settings.model_type}')\") "
            "and copy micro-sam's cache folder here (or point MICROSAM_CACHEDIR at it), "
            "or set masks.sam.download: true where this machine has internet.",
        )


# ---------------------------------------------------------------- model loading


@functools.lru_cache(maxsize=2)
def _load_predictor(model_type: str, checkpoint: str | None, device: str):
    from micro_sam import util

    log.info(
        "loading SAM %s%s on %s", model_type, f" from {checkpoint}" if checkpoint else "", device
    )
    try:
        return util.get_sam_model(
            model_type=model_type, device=device, checkpoint_path=checkpoint, return_state=True
        )
    except Exception as error:
        # pooch raises requests' errors (OSError) when a download fails; torch raises
        # RuntimeError / UnpicklingError for a file that is not a SAM checkpoint.
        key = "masks.sam.model_type" if "model_type" in str(error) else "masks.sam.checkpoint"
        source = f" from {checkpoint}" if checkpoint else ""
        raise ConfigError(
            key,
            f"could not load SAM '{model_type}'{source} ({type(error).__name__}: {error}). "
            "Offline, set masks.sam.checkpoint to a local SAM .pt file of that architecture.",
        ) from error


def load_predictor(settings: SamSettings):
    """``(predictor, state)`` for the configured model, loaded once per process."""
    device = resolve_device(settings.device, key="masks.sam.device")
    return _load_predictor(settings.model_type, settings.checkpoint, device)


@functools.lru_cache(maxsize=2)
def _load_segmenter(settings: SamSettings, device: str):
    from micro_sam.automatic_segmentation import get_predictor_and_segmenter

    predictor, state = _load_predictor(settings.model_type, settings.checkpoint, device)
    if settings.mode == "ais" and "decoder_state" not in state:
        raise ConfigError(
            "masks.sam.mode",
            f"'ais' needs a model with an instance-segmentation decoder, and the model loaded "
            f"({settings.checkpoint or settings.model_type}) has none; use mode 'amg' or a model such as vit_b_lm",
        )
    extra = {"points_per_side": settings.points_per_side} if settings.mode == "amg" else {}
    _, segmenter = get_predictor_and_segmenter(
        model_type=settings.model_type,
        checkpoint=settings.checkpoint,
        device=device,
        segmentation_mode=settings.mode,
        is_tiled=settings.tile_shape is not None,
        predictor=predictor,
        state=state,
        **extra,
    )
    return predictor, segmenter


def load_segmenter(settings: SamSettings):
    """``(predictor, segmenter)`` for automatic segmentation, built once per process."""
    device = resolve_device(settings.device, key="masks.sam.device")
    return _load_segmenter(settings, device)


# ---------------------------------------------------------------- embeddings


def embedding_path(
    embeddings_dir: str | Path | None, settings: SamSettings, state: str, z: int
) -> Path | None:
    """Where one plane's image embeddings are cached (None: no cache)."""
    if embeddings_dir is None:
        return None
    return Path(embeddings_dir) / settings.model_key / str(state) / f"z{z}.zarr"


def drop_stale_embeddings(
    path: Path | None, image: np.ndarray, predictor, settings: SamSettings
) -> bool:
    """Remove a cached embedding that was not made for this image, model and tiling.

    micro-sam refuses a cache made for another image or tiling and only warns about
    another model's; both are recomputed here instead. An unfinished cache (no
    signature yet, e.g. an interrupted run) is removed too. Returns True if removed.
    """
    if path is None or not Path(path).exists():
        return False
    import zarr
    from micro_sam import util

    try:
        attrs = dict(zarr.open(str(path), mode="r").attrs)
    except Exception:  # unreadable cache: recompute
        attrs = {}
    reason = None
    if "input_size" not in attrs:
        reason = "unfinished"
    else:
        expected = util._get_embedding_signature(
            image, predictor, settings.tile_shape, settings.halo
        )
        changed = [key for key in EMBEDDING_KEYS if attrs.get(key) != expected[key]]
        if changed:
            reason = f"made with another {', '.join(changed)}"
    if reason is None:
        return False
    log.info("recomputing embeddings %s: the cache was %s", path, reason)
    shutil.rmtree(path) if Path(path).is_dir() else os.remove(path)
    return True


def compute_embeddings(predictor, image: np.ndarray, path: Path | None, settings: SamSettings):
    """Image embeddings of one plane, read from ``path`` when cached there, else computed (and saved)."""
    from micro_sam import util

    drop_stale_embeddings(path, image, predictor, settings)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return util.precompute_image_embeddings(
        predictor=predictor,
        input_=image,
        save_path=None if path is None else str(path),
        ndim=2,
        tile_shape=settings.tile_shape,
        halo=settings.halo,
        verbose=False,
    )


# ---------------------------------------------------------------- segmentation


def segment_auto(
    image: np.ndarray, settings: SamSettings, embeddings: Path | None = None
) -> np.ndarray:
    """micro-sam automatic instance segmentation (AMG or AIS) of one plane -> uint16 labels."""
    from micro_sam.automatic_segmentation import automatic_instance_segmentation

    predictor, segmenter = load_segmenter(settings)
    drop_stale_embeddings(embeddings, image, predictor, settings)
    if embeddings is not None:
        Path(embeddings).parent.mkdir(parents=True, exist_ok=True)
    # AMG drops objects below min_mask_region_area, AIS below min_size: one config key.
    size_key = "min_mask_region_area" if settings.mode == "amg" else "min_size"
    instances = automatic_instance_segmentation(
        predictor,
        segmenter,
        np.asarray(image),
        embedding_path=None if embeddings is None else str(embeddings),
        ndim=2,
        tile_shape=settings.tile_shape,
        halo=settings.halo,
        verbose=False,
        **{size_key: settings.min_size},
    )
    return relabel_mask(np.asarray(instances).astype(np.int64, copy=False), "sam-auto result")


# ---------------------------------------------------------------- the methods


class SamMethod(MaskMethod):
    """What the SAM methods share: ``masks.sam``, its checks and the embedding cache."""

    uses_sam = True

    @functools.cached_property
    def settings(self) -> SamSettings:
        return settings_from_config(self.masks_cfg["sam"])

    def check(
        self,
        state: str,
        planes: Sequence[int],
        states: Sequence[str] | None,
        image_paths: Sequence[str | Path | None],
    ) -> None:
        resolve_device(self.settings.device, key="masks.sam.device")
        check_model(self.settings)

    def embeddings(self, state: str, z: int) -> Path | None:
        """Where this plane's image embeddings are cached (None: no cache)."""
        return embedding_path(self.settings.embeddings_dir, self.settings, state, z)


@register_method("sam-auto")
class SamAutoMethod(SamMethod):
    """micro-sam's automatic instance segmentation (``masks.sam.mode``: AMG or AIS)."""

    def segment(
        self, image: np.ndarray, state: str, z: int, image_path: str | Path | None
    ) -> np.ndarray:
        return segment_auto(image, self.settings, self.embeddings(state, z))
