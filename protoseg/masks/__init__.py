"""Step 1 of the study: one instance mask (uint16, 0 = background) per plane.

``masks.method`` picks how:

- ``classical``: outline filter, fill, seeded watershed (:mod:`protoseg.masks.classical`);
- ``sam-auto``: micro-sam automatic segmentation, AMG or AIS (:mod:`protoseg.masks.sam`);
- ``sam-prompted``: micro-sam from point/box prompts in a CSV (:mod:`protoseg.masks.prompts`);
- ``import``: masks committed in micro-sam's annotator (:mod:`protoseg.masks.imported`).

:func:`make_state_masks` is what the workflow runs, once per state: it checks everything
it can before any work (method, model weights, prompts, imported files), segments every
plane, and only then writes all masks, so a failure leaves no partial output.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from protoseg.errors import ConfigError
from protoseg.io import read_image, write_tiff

log = logging.getLogger(__name__)

METHODS = ("classical", "sam-auto", "sam-prompted", "import")


def _check_method_name(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(
            "masks.method", f"unknown method '{method}'; use one of {', '.join(METHODS)}"
        )


def _sam_settings(masks_cfg: dict):
    from protoseg.masks import sam

    return sam.settings_from_config(masks_cfg.get("sam"))


def _embeddings_root(masks_cfg: dict, embedding_dir: str | Path | None) -> str | Path | None:
    if embedding_dir is not None:
        return embedding_dir
    return (masks_cfg.get("sam") or {}).get("embeddings_dir", "results/embeddings")


def _prompts_path(masks_cfg: dict) -> Path:
    path = (masks_cfg.get("prompted") or {}).get("prompts")
    if not path:
        raise ConfigError(
            "masks.prompted.prompts",
            "must name a prompts CSV when masks.method is 'sam-prompted' (docs/masks.md)",
        )
    return Path(path)


@functools.lru_cache(maxsize=4)
def _read_prompts_cached(path: str, modified: float):
    from protoseg.masks import prompts

    return prompts.read_prompts(path)


def _load_prompts(masks_cfg: dict):
    path = _prompts_path(masks_cfg)
    from protoseg.masks import prompts

    if not path.is_file():
        return prompts.read_prompts(path)  # raises the file-not-found InputError
    return _read_prompts_cached(str(path), path.stat().st_mtime)


def _import_settings(masks_cfg: dict) -> tuple[str | None, str]:
    from protoseg.masks.imported import DEFAULT_TEMPLATE

    section = masks_cfg.get("import") or {}
    return section.get("dir"), section.get("template") or DEFAULT_TEMPLATE


def method_inputs(
    masks_cfg: dict,
    state: str,
    planes: Sequence[int],
    image_paths: Sequence[str | Path] | None = None,
) -> list[str]:
    """Files ``masks.method`` reads besides the images (the workflow's rule inputs).

    The prompts CSV for ``sam-prompted``, the state's mask files for ``import``; editing
    them then reruns the masks.
    """
    method = masks_cfg.get("method")
    if method == "sam-prompted" and (masks_cfg.get("prompted") or {}).get("prompts"):
        return [str(masks_cfg["prompted"]["prompts"])]
    if method == "import":
        from protoseg.masks.imported import import_path

        import_dir, template = _import_settings(masks_cfg)
        paths = image_paths if image_paths is not None else [None] * len(planes)
        return [
            str(import_path(import_dir, template, state, z, path))
            for z, path in zip(planes, paths, strict=True)
        ]
    return []


def check_method(
    method: str,
    masks_cfg: dict,
    *,
    planes: Sequence[int],
    state: str | None = None,
    states: Sequence[str] | None = None,
    image_paths: Sequence[str | Path] | None = None,
) -> None:
    """Raise :class:`ConfigError`/:class:`InputError` for anything that would stop the run later.

    Unknown method; for SAM methods an unknown model, missing checkpoint or weights not
    on this machine; for ``sam-prompted`` an unreadable prompts file or prompts for a
    state or plane that does not exist; for ``import`` a missing mask file of ``state``.
    """
    _check_method_name(method)
    if method in ("sam-auto", "sam-prompted"):
        from protoseg.device import resolve_device
        from protoseg.masks import sam

        settings = _sam_settings(masks_cfg)
        resolve_device(settings.device, key="masks.sam.device")
        sam.check_model(settings)
    if method == "sam-prompted":
        from protoseg.masks import prompts

        table = _load_prompts(masks_cfg)
        prompts.check_prompts(
            table,
            _prompts_path(masks_cfg),
            planes=list(planes),
            states=None if states is None else list(states),
        )
    if method == "import" and state is not None:
        from protoseg.errors import InputError
        from protoseg.masks.imported import import_path

        import_dir, template = _import_settings(masks_cfg)
        paths = image_paths if image_paths is not None else [None] * len(planes)
        for z, image_path in zip(planes, paths, strict=True):
            path = import_path(import_dir, template, state, z, image_path)
            if not path.is_file():
                raise InputError(
                    path,
                    f"imported mask of {state} z{z} not found (config masks.import.dir and masks.import.template)",
                )


def make_plane_mask(
    image: np.ndarray,
    *,
    method: str,
    masks_cfg: dict,
    state: str,
    z: int,
    embedding_dir: str | Path | None = None,
    image_path: str | Path | None = None,
) -> np.ndarray:
    """Instance labels (uint16, 0 = background) of one plane's image by ``method``.

    ``image_path`` (the file ``image`` came from) lets an ``import`` template find a mask
    stored beside its image.

    ``masks_cfg`` is the config's ``masks`` section. ``embedding_dir`` overrides
    ``masks.sam.embeddings_dir`` (the root of the SAM embedding cache). A plane with no
    cells gives an all-zero mask and a logged warning.
    """
    _check_method_name(method)
    image = np.asarray(image)
    if method == "classical":
        from protoseg.masks import classical

        mask = classical.segment(image, **(masks_cfg.get("classical") or {}))
    elif method == "sam-auto":
        from protoseg.masks import sam

        settings = _sam_settings(masks_cfg)
        cache = sam.embedding_path(_embeddings_root(masks_cfg, embedding_dir), settings, state, z)
        mask = sam.segment_auto(image, settings, cache)
    elif method == "sam-prompted":
        from protoseg.masks import prompts

        table = _load_prompts(masks_cfg)
        objects = prompts.plane_objects(table, state, z)
        if objects:
            from protoseg.masks import sam

            rows = table[(table["state"] == str(state)) & (table["z"] == int(z))]
            prompts.check_inside(rows, _prompts_path(masks_cfg), image.shape[:2])
            settings = _sam_settings(masks_cfg)
            cache = sam.embedding_path(
                _embeddings_root(masks_cfg, embedding_dir), settings, state, z
            )
            mask = sam.segment_prompted(image, objects, settings, cache)
        else:
            log.warning(
                "%s z%s: no prompts in %s for this plane", state, z, _prompts_path(masks_cfg)
            )
            mask = np.zeros(image.shape[:2], dtype=np.uint16)
    else:  # import
        from protoseg.masks.imported import import_path, load_imported_mask

        import_dir, template = _import_settings(masks_cfg)
        mask = load_imported_mask(
            import_path(import_dir, template, state, z, image_path), image.shape
        )
    mask = np.asarray(mask)
    if mask.dtype != np.uint16:
        mask = mask.astype(np.uint16)
    if not mask.any():
        log.warning("%s z%s: the %s mask has no cells; writing an empty mask", state, z, method)
    return mask


def make_state_masks(
    image_paths: Sequence[str | Path],
    output_paths: Sequence[str | Path],
    *,
    method: str,
    masks_cfg: dict,
    state: str,
    planes: Sequence[int],
    states: Sequence[str] | None = None,
    embedding_dir: str | Path | None = None,
) -> list[np.ndarray]:
    """Make and write the masks of all planes of one state; returns them in plane order.

    ``image_paths`` and ``output_paths`` are ordered like ``planes``. Everything is
    checked first (:func:`check_method`, prompt positions against the image sizes), all
    planes are segmented, and only then are the masks written (atomically), so a failure
    on any plane leaves none written.
    """
    if not (len(image_paths) == len(output_paths) == len(planes)):
        raise ValueError(
            f"{state}: {len(image_paths)} images, {len(output_paths)} outputs and {len(planes)} planes; they must match"
        )
    check_method(
        method, masks_cfg, planes=planes, state=state, states=states, image_paths=image_paths
    )
    images = [read_image(path) for path in image_paths]
    if method == "sam-prompted":
        from protoseg.masks import prompts

        table = _load_prompts(masks_cfg)
        for z, image in zip(planes, images, strict=True):
            rows = table[(table["state"] == str(state)) & (table["z"] == int(z))]
            prompts.check_inside(rows, _prompts_path(masks_cfg), image.shape[:2])

    masks = []
    for z, image, image_path in tqdm(
        list(zip(planes, images, image_paths, strict=True)),
        desc=f"masks {state} ({method})",
        unit="plane",
    ):
        masks.append(
            make_plane_mask(
                image,
                method=method,
                masks_cfg=masks_cfg,
                state=state,
                z=int(z),
                embedding_dir=embedding_dir,
                image_path=image_path,
            )
        )
    for path, mask in zip(output_paths, masks, strict=True):
        write_tiff(path, mask)
    counts = ", ".join(f"z{z}: {int(mask.max())}" for z, mask in zip(planes, masks, strict=True))
    log.info("%s: %s masks written (cells per plane: %s)", state, method, counts)
    return masks
