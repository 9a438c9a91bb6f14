"""Step 1 of the study: one instance mask (uint16, 0 = background) per plane.

``masks.method`` names a :class:`MaskMethod`, registered under that name by the module
that implements it:

- ``classical``: outline filter, fill, seeded watershed (:mod:`protoseg.masks.classical`);
- ``sam-auto``: micro-sam automatic segmentation, AMG or AIS (:mod:`protoseg.masks.sam`);
- ``sam-prompted``: micro-sam from point/box prompts in a CSV (:mod:`protoseg.masks.prompts`);
- ``import``: masks committed in micro-sam's annotator (:mod:`protoseg.masks.imported`).

A method is built from the config's ``masks`` section as :func:`protoseg.config.validate`
fills it, reads its own subsection (``masks.classical``, ``masks.sam`` ...) and answers
four things: the files it reads besides the images (:meth:`MaskMethod.inputs`, the
workflow rule's inputs), what it checks before any work (:meth:`MaskMethod.check` and
:meth:`MaskMethod.check_images`), one plane's labels (:meth:`MaskMethod.segment`), and
whether it runs SAM (:attr:`MaskMethod.uses_sam`: the rule's conda env, threads, memory).

Adding a method is one new module in this package that defines a :class:`MaskMethod`
subclass decorated with :func:`register_method` (and the name in the schema's
``masks.method`` enum, with its settings section). Every module of the package is
imported the first time the registry is asked (:func:`get_method`,
:func:`method_names`), which is how a new file registers without a list to edit; method
modules therefore import torch and micro-sam inside functions only, so that the registry
stays cheap at Snakemake parse time. Importing ``protoseg.masks`` itself imports none of
the method modules.

:func:`make_state_masks` is what the workflow runs, once per state: it checks everything
it can before any work, segments every plane, and only then writes all masks, so a
failure leaves no partial output.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from tqdm import tqdm

from protoseg.errors import ConfigError
from protoseg.io import read_image, write_tiff

log = logging.getLogger(__name__)


class MaskMethod:
    """One way of making a plane's instance mask, built from the config's ``masks`` section.

    Subclasses read their own subsection, which validation has filled, so a missing key
    (a ``KeyError``) means the caller skipped :func:`protoseg.config.validate`.
    """

    name: ClassVar[str]  # set by register_method
    # The workflow then runs it in envs/sam.yaml with SAM's threads and memory.
    uses_sam: ClassVar[bool] = False

    def __init__(self, masks_cfg: dict):
        self.masks_cfg = masks_cfg

    def inputs(
        self, state: str, planes: Sequence[int], image_paths: Sequence[str | Path | None]
    ) -> list[str]:
        """Files read besides the images; editing one reruns the state's masks."""
        return []

    def check(
        self,
        state: str,
        planes: Sequence[int],
        states: Sequence[str] | None,
        image_paths: Sequence[str | Path | None],
    ) -> None:
        """Raise :class:`ConfigError`/:class:`InputError` for anything that would stop
        the run later; runs before any image is read. ``states=None``: not known."""

    def check_images(self, state: str, planes: Sequence[int], images: Sequence[np.ndarray]) -> None:
        """Checks that need the state's images, before any plane is segmented."""

    def segment(
        self, image: np.ndarray, state: str, z: int, image_path: str | Path | None
    ) -> np.ndarray:
        """Instance labels of one plane (any integer dtype; 0 = background).

        ``image_path`` is the file ``image`` came from, where known.
        """
        raise NotImplementedError


METHODS: dict[str, type[MaskMethod]] = {}


def register_method(name: str):
    """Class decorator: make a :class:`MaskMethod` available as ``masks.method: name``."""

    def decorate(cls: type[MaskMethod]) -> type[MaskMethod]:
        if METHODS.get(name, cls) is not cls:
            raise ValueError(
                f"mask method '{name}' is registered twice ({METHODS[name].__module__} and {cls.__module__})"
            )
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorate


@functools.cache
def _import_method_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def method_names() -> list[str]:
    _import_method_modules()
    return sorted(METHODS)


def get_method(name: str, key: str = "masks.method") -> type[MaskMethod]:
    """The method registered as ``name``; an unknown name raises :class:`ConfigError` naming ``key``."""
    names = method_names()
    if name not in METHODS:
        raise ConfigError(key, f"unknown method '{name}'; use one of {', '.join(names)}")
    return METHODS[name]


def _paths_or_none(image_paths: Sequence[str | Path] | None, planes: Sequence[int]) -> list:
    return list(image_paths) if image_paths is not None else [None] * len(planes)


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
    method = get_method(masks_cfg["method"])(masks_cfg)
    return method.inputs(state, planes, _paths_or_none(image_paths, planes))


def _plane_mask(
    method: MaskMethod, image: np.ndarray, state: str, z: int, image_path: str | Path | None
) -> np.ndarray:
    mask = np.asarray(method.segment(np.asarray(image), state, z, image_path))
    if mask.dtype != np.uint16:
        mask = mask.astype(np.uint16)
    if not mask.any():
        log.warning(
            "%s z%s: the %s mask has no cells; writing an empty mask", state, z, method.name
        )
    return mask


def make_plane_mask(
    image: np.ndarray,
    *,
    method: str,
    masks_cfg: dict,
    state: str,
    z: int,
    image_path: str | Path | None = None,
) -> np.ndarray:
    """Instance labels (uint16, 0 = background) of one plane's image by ``method``.

    ``masks_cfg`` is the config's ``masks`` section, filled by validation. ``image_path``
    (the file ``image`` came from) lets an ``import`` template find a mask stored beside
    its image. A plane with no cells gives an all-zero mask and a logged warning.
    """
    return _plane_mask(get_method(method)(masks_cfg), image, state, int(z), image_path)


def make_state_masks(
    image_paths: Sequence[str | Path],
    output_paths: Sequence[str | Path],
    *,
    method: str,
    masks_cfg: dict,
    state: str,
    planes: Sequence[int],
    states: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Make and write the masks of all planes of one state; returns them in plane order.

    ``image_paths`` and ``output_paths`` are ordered like ``planes``. Everything is
    checked first (:meth:`MaskMethod.check`, then :meth:`MaskMethod.check_images`), all
    planes are segmented, and only then are the masks written (atomically), so a failure
    on any plane leaves none written.
    """
    if not (len(image_paths) == len(output_paths) == len(planes)):
        raise ValueError(
            f"{state}: {len(image_paths)} images, {len(output_paths)} outputs and {len(planes)} planes; they must match"
        )
    mask_method = get_method(method)(masks_cfg)
    mask_method.check(state, planes, states, image_paths)
    images = [read_image(path) for path in image_paths]
    mask_method.check_images(state, planes, images)

    masks = [
        _plane_mask(mask_method, image, state, int(z), image_path)
        for z, image, image_path in tqdm(
            list(zip(planes, images, image_paths, strict=True)),
            desc=f"masks {state} ({method})",
            unit="plane",
        )
    ]
    for path, mask in zip(output_paths, masks, strict=True):
        write_tiff(path, mask)
    counts = ", ".join(f"z{z}: {int(mask.max())}" for z, mask in zip(planes, masks, strict=True))
    log.info("%s: %s masks written (cells per plane: %s)", state, method, counts)
    return masks
