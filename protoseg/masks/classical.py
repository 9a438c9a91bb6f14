"""The ``classical`` mask method: outline filter, fill, seeded watershed (no network, no weights).

Works on the study's fluorescent images (blue membrane outlines on a dark background) and,
with ``enhance="intensity"``, on fluorescence of filled objects such as nuclei:

1. one grey channel: the maximum over colour channels (the blue channel of a blue-on-black
   image; the image itself for greyscale stored as RGB), scaled by its 1st/99.8th
   percentiles so 8- and 16-bit images share one scale;
2. foreground: ``enhance="ridge"`` thresholds a bright-ridge filter (Sato, scales ``sigma``
   and ``2 * sigma``), which answers to thin sharp outlines and hardly to blurred ones;
   ``enhance="intensity"`` thresholds the Gaussian-smoothed image (``sigma``), after
   subtracting a broad background (``background_sigma``) if the illumination is uneven;
3. ring interiors filled: holes enclosed by foreground, and, for cells cut by the image
   edge, holes that touch the edge but are no larger than a cell (``max_area``, or 5 % of
   the image); a filled ring is then cut back to the middle of its outline;
4. touching and overlapping cells split by a seeded watershed on the distance transform,
   one seed per regional maximum deeper than ``split_depth`` pixels (h-maxima: a neck
   between two cells splits them, a ragged outline does not);
5. objects outside [``min_area``, ``max_area``] dropped, and, with ``min_sharpness`` > 0,
   objects whose outline is out of focus: sharpness is the median, along the object's
   outline, of the ridge response divided by the local brightness (a ratio, so it does not
   depend on how bright the cell or the image is). A focal stack then keeps each cell on
   the planes where it is in focus, which is what per-z masks need.

The settings are the config's ``masks.classical`` section (:func:`settings_from_config`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

from protoseg.errors import ConfigError
from protoseg.masks import MaskMethod, register_method

# A hole touching the image edge is filled when it is no larger than this share of the
# image (used when max_area is not set): a cut-off cell is small next to the background.
EDGE_HOLE_FRACTION = 0.05

THRESHOLDS = {
    "otsu": filters.threshold_otsu,
    "li": filters.threshold_li,
    "triangle": filters.threshold_triangle,
}
ENHANCE = ("ridge", "intensity")


def to_grey(image: np.ndarray) -> np.ndarray:
    """One float channel in [0, 1] from a grey or colour image (max over channels)."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., :3].max(axis=-1)  # drop alpha; blue-on-black -> blue
    if image.ndim != 2:
        raise ValueError(f"expected a 2D grey or (H, W, C) colour image, got shape {image.shape}")
    grey = image.astype(np.float32)
    low, high = np.percentile(grey, [1.0, 99.8])
    if high <= low:
        return np.zeros_like(grey)
    return np.clip((grey - low) / (high - low), 0.0, 1.0)


def ridges(grey: np.ndarray, sigma: float) -> np.ndarray:
    """Bright-ridge response (Sato filter at ``sigma`` and ``2 * sigma``)."""
    sigma = max(float(sigma), 0.5)
    return filters.sato(grey, sigmas=[sigma, 2 * sigma], black_ridges=False, mode="reflect")


def _fill_interiors(foreground: np.ndarray, max_edge_hole: int) -> np.ndarray:
    filled = ndi.binary_fill_holes(foreground)
    # What is left of the background touches the image edge: cut-off cells' interiors and
    # the background itself. Fill the small pieces (cells), keep the large (background).
    return morphology.remove_small_holes(filled, max_size=max_edge_hole, connectivity=1)


def _trim_outlines(foreground: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Cut filled rings back to the middle of their outline.

    A thresholded outline is several pixels thick (more when blurred); the cell edge is
    its centre line. In objects with an interior (a filled hole), keep the interior and
    the outline pixels nearer to it than to the outside; objects without one (nuclei)
    are kept as thresholded.
    """
    interior = filled & ~foreground
    if not interior.any():
        return filled
    objects = measure.label(filled, connectivity=1)
    ringed = np.isin(objects, np.unique(objects[interior]))
    to_interior = ndi.distance_transform_edt(~interior)
    to_outside = ndi.distance_transform_edt(filled)
    keep_ring = interior | (to_interior <= to_outside)
    return filled & (keep_ring | ~ringed)


def sharpness(labels: np.ndarray, grey: np.ndarray, response: np.ndarray) -> dict[int, float]:
    """Focus score of every object: median over its outline of ridge response / brightness."""
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return {}
    smooth = filters.gaussian(grey, sigma=1.0)
    floor = np.percentile(smooth, 5)
    ratio = response / np.maximum(smooth - floor, 1e-3)
    outline = np.where(segmentation.find_boundaries(labels, mode="inner"), labels, 0)
    medians = ndi.median(ratio, labels=outline, index=ids)
    return {int(i): float(m) for i, m in zip(ids, np.atleast_1d(medians), strict=True)}


@dataclass(frozen=True)
class ClassicalSettings:
    """The ``masks.classical`` config section, checked (a bad value names its key).

    ``sigma``: scale in pixels of the ridge filter or the smoothing. ``min_area``/
    ``max_area``: objects outside this pixel-area range are dropped (``max_area=None``: no
    upper limit). ``enhance``: "ridge" for outline stains, "intensity" for filled objects.
    ``threshold``: "otsu", "li" or "triangle" (scikit-image's automatic thresholds).
    ``background_sigma``: with "intensity", subtract a Gaussian background of this sigma
    first (None: no). ``split_depth``: how far (distance-transform pixels) a cell centre
    must rise above the neck joining it to a neighbour to get its own label.
    ``min_sharpness``: drop objects whose outline sharpness is below this (0: keep all; see
    the module docstring).
    """

    enhance: str
    sigma: float
    threshold: str
    background_sigma: float | None
    split_depth: float
    min_area: int
    max_area: int | None
    min_sharpness: float

    def __post_init__(self) -> None:
        key = "masks.classical."
        if self.sigma < 0:
            raise ConfigError(key + "sigma", f"must be >= 0, got {self.sigma}")
        if self.min_area < 0:
            raise ConfigError(key + "min_area", f"must be >= 0, got {self.min_area}")
        if self.max_area is not None and self.max_area < max(self.min_area, 1):
            raise ConfigError(
                key + "max_area", f"must be >= min_area ({self.min_area}), got {self.max_area}"
            )
        if self.enhance not in ENHANCE:
            raise ConfigError(
                key + "enhance", f"unknown value '{self.enhance}' (use one of {list(ENHANCE)})"
            )
        if self.threshold not in THRESHOLDS:
            raise ConfigError(
                key + "threshold",
                f"unknown method '{self.threshold}' (use one of {sorted(THRESHOLDS)})",
            )
        if self.background_sigma is not None and self.background_sigma < 0:
            raise ConfigError(
                key + "background_sigma", f"must be >= 0 or null, got {self.background_sigma}"
            )
        if self.split_depth <= 0:
            raise ConfigError(key + "split_depth", f"must be > 0, got {self.split_depth}")
        if self.min_sharpness < 0:
            raise ConfigError(key + "min_sharpness", f"must be >= 0, got {self.min_sharpness}")


def settings_from_config(section: dict) -> ClassicalSettings:
    """:class:`ClassicalSettings` from the validated ``masks.classical`` section."""
    return ClassicalSettings(
        enhance=section["enhance"],
        sigma=section["sigma"],
        threshold=section["threshold"],
        background_sigma=section["background_sigma"],
        split_depth=section["split_depth"],
        min_area=section["min_area"],
        max_area=section["max_area"],
        min_sharpness=section["min_sharpness"],
    )


def segment(image: np.ndarray, settings: ClassicalSettings) -> np.ndarray:
    """Instance labels (uint16, 0 = background) of the cells in one fluorescent image.

    ``image``: (H, W) or (H, W, C), any integer or float dtype.
    """
    grey = to_grey(image)
    if grey.max() - grey.min() < 1e-6:  # blank plane: nothing to find
        return np.zeros(grey.shape, dtype=np.uint16)

    sigma, min_area, max_area = settings.sigma, settings.min_area, settings.max_area
    ridge = settings.enhance == "ridge"
    response = ridges(grey, sigma) if ridge or settings.min_sharpness > 0 else None
    if ridge:
        signal = response
    else:
        signal = filters.gaussian(grey, sigma=sigma) if sigma > 0 else grey
        if settings.background_sigma:
            # Uneven illumination: subtract a broad blur so one threshold fits the whole field.
            signal = signal - filters.gaussian(signal, sigma=settings.background_sigma)
    if signal.max() - signal.min() < 1e-9:
        return np.zeros(grey.shape, dtype=np.uint16)
    foreground = signal > THRESHOLDS[settings.threshold](signal)

    max_edge_hole = max_area if max_area is not None else int(EDGE_HOLE_FRACTION * grey.size)
    filled = _fill_interiors(foreground, max_edge_hole)
    filled = _trim_outlines(foreground, filled)
    # Specks far below a cell's size would each seed a label; drop them first.
    filled = morphology.remove_small_objects(filled, max_size=max(min_area // 4, 1), connectivity=1)

    distance = ndi.distance_transform_edt(filled)
    seeds = morphology.h_maxima(filters.gaussian(distance, sigma=1.0), settings.split_depth)
    markers = measure.label(seeds & filled)
    labels = segmentation.watershed(-distance, markers, mask=filled)

    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    if max_area is not None:
        keep &= areas <= max_area
    keep[0] = False
    if settings.min_sharpness > 0:
        for label, score in sharpness(np.where(keep[labels], labels, 0), grey, response).items():
            keep[label] = score >= settings.min_sharpness
    labels = np.where(keep[labels], labels, 0)
    labels, _, _ = segmentation.relabel_sequential(labels)
    if labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{labels.max()} objects do not fit in uint16 labels")
    return labels.astype(np.uint16)


@register_method("classical")
class ClassicalMethod(MaskMethod):
    """:func:`segment` with the ``masks.classical`` settings; reads no other files."""

    @functools.cached_property
    def settings(self) -> ClassicalSettings:
        return settings_from_config(self.masks_cfg["classical"])

    def check(
        self,
        state: str,
        planes: Sequence[int],
        states: Sequence[str] | None,
        image_paths: Sequence[str | Path | None],
    ) -> None:
        _ = self.settings  # parsing checks the values: a bad one stops the run before any work

    def segment(
        self, image: np.ndarray, state: str, z: int, image_path: str | Path | None
    ) -> np.ndarray:
        return segment(image, self.settings)
