"""The ``import`` mask method: masks a person made elsewhere, checked and relabelled.

The study annotated every plane in micro-sam's napari annotator and saved the
``committed_objects`` layer as a TIFF. Such files go into ``masks.import.dir`` under the
name ``masks.import.template`` (:func:`import_path`). Any integer label image of
the plane's height and width is accepted; labels are renumbered 1..n (uint16). A binary
mask (values 0 and one other value, e.g. 0/255 or 0/1, as in ground-truth PNGs) is split
into instances by connected components. The method's inputs are these files, so editing
one reruns its state's masks, and a missing one stops the run before any work.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential

from protoseg.errors import ConfigError, InputError
from protoseg.io import read_image
from protoseg.masks import MaskMethod, register_method
from protoseg.stacks import source_file


@dataclass(frozen=True)
class ImportSettings:
    """The ``masks.import`` config section: the folder and the file name of one plane."""

    dir: str | None
    template: str


def settings_from_config(section: dict) -> ImportSettings:
    """:class:`ImportSettings` from the validated ``masks.import`` section."""
    return ImportSettings(dir=section["dir"], template=section["template"])


def import_path(
    import_dir: str | Path | None,
    template: str,
    state: str,
    z: int,
    image_path: str | Path | None = None,
) -> Path:
    """Where the imported mask of ``state``'s plane ``z`` is expected.

    The template may use ``{state}`` and ``{z}``, and, when the image the mask belongs to
    is known, ``{image_dir}`` (its folder), ``{stem}`` (its name without suffix) and
    ``{name}``: ground truth kept beside the images under the same names, as in
    ``fig1/nucleus/A.png`` -> ``fig1/gt/A.png``, is ``{image_dir}/../gt/{stem}.png``.
    """
    if not import_dir:
        raise ConfigError(
            "masks.import.dir",
            "must name the folder of imported masks when masks.method is 'import'",
        )
    try:
        image_fields = {}
        if image_path is not None:
            image_path = Path(source_file(image_path))  # a container's plane: its file
            image_fields = {
                "image_dir": str(image_path.parent),
                "stem": image_path.stem,
                "name": image_path.name,
            }
        name = template.format(state=state, z=z, **image_fields)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(
            "masks.import.template",
            f"'{template}' is not a valid template ({error!r}); it may use {{state}}, {{z}}, {{image_dir}}, {{stem}} and {{name}}",
        ) from error
    # An absolute {image_dir} makes the template absolute and import_dir is then ignored.
    return Path(import_dir) / name


def _as_plane(mask: np.ndarray, path: Path) -> np.ndarray:
    """One 2D label plane; a colour-stored grey mask (equal channels) is reduced to one."""
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        channels = mask[..., :3]
        if not (
            np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise InputError(
                path, f"mask is a colour image of shape {mask.shape}; expected one label plane"
            )
        mask = channels[..., 0]
    elif mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise InputError(path, f"mask has shape {mask.shape}; expected one 2D label plane")
    return mask


def relabel_mask(mask: np.ndarray, path: str | Path = "<mask>") -> np.ndarray:
    """Integer (or boolean) mask -> uint16 labels 1..n; a binary mask -> connected components."""
    path = Path(path)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputError(
            path,
            f"mask has dtype {mask.dtype}; expected integer labels (uint8/uint16/uint32/int...)",
        )
    if mask.size and mask.min() < 0:
        raise InputError(
            path,
            f"mask has negative labels (minimum {mask.min()}); expected 0 = background, 1.. = cells",
        )
    values = np.unique(mask)
    foreground_values = values[values > 0]
    if len(foreground_values) == 1:
        # 0/255 or 0/1: one value for every cell, so cells are what touches.
        labels = connected_components(mask > 0, connectivity=1)
    else:
        labels, _, _ = relabel_sequential(mask)
    if labels.max() > np.iinfo(np.uint16).max:
        raise InputError(path, f"mask has {labels.max()} objects, more than uint16 labels can hold")
    return labels.astype(np.uint16)


def load_imported_mask(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """Read one imported mask, check it against the image ``shape`` and relabel it to uint16.

    Raises :class:`InputError` naming the file when it is missing, unreadable, not one
    2D plane, not integer-typed, or not of the image's height and width.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            path, "imported mask not found (config masks.import.dir and masks.import.template)"
        )
    mask = _as_plane(read_image(path), path)
    expected = tuple(shape[:2])
    if mask.shape != expected:
        raise InputError(
            path,
            f"mask is {mask.shape[0]} x {mask.shape[1]} (rows x columns) but its image is {expected[0]} x {expected[1]}",
        )
    return relabel_mask(mask, path)


def mask_pairs(
    masks_cfg: dict, state: str, planes: Sequence[int], image_paths: Sequence[str | Path]
) -> list[tuple[str, str]]:
    """(image, imported mask) of each plane of ``state`` when ``masks.method`` is
    ``import`` (else none): what the catalogue job checks before any mask job."""
    if masks_cfg["method"] != "import":
        return []
    settings = settings_from_config(masks_cfg["import"])
    return [
        (str(image), str(import_path(settings.dir, settings.template, state, z, image)))
        for z, image in zip(planes, image_paths, strict=True)
    ]


@register_method("import")
class ImportMethod(MaskMethod):
    """Each plane's mask read from ``masks.import.dir``, checked and relabelled."""

    @functools.cached_property
    def settings(self) -> ImportSettings:
        return settings_from_config(self.masks_cfg["import"])

    def path(self, state: str, z: int, image_path: str | Path | None) -> Path:
        return import_path(self.settings.dir, self.settings.template, state, z, image_path)

    def inputs(
        self, state: str, planes: Sequence[int], image_paths: Sequence[str | Path | None]
    ) -> list[str]:
        return [
            str(self.path(state, z, image_path))
            for z, image_path in zip(planes, image_paths, strict=True)
        ]

    def check(
        self,
        state: str,
        planes: Sequence[int],
        states: Sequence[str] | None,
        image_paths: Sequence[str | Path | None],
    ) -> None:
        for z, image_path in zip(planes, image_paths, strict=True):
            path = self.path(state, z, image_path)
            if not path.is_file():
                raise InputError(
                    path,
                    f"imported mask of {state} z{z} not found (config masks.import.dir and masks.import.template)",
                )

    def segment(
        self, image: np.ndarray, state: str, z: int, image_path: str | Path | None
    ) -> np.ndarray:
        return load_imported_mask(self.path(state, z, image_path), image.shape)
