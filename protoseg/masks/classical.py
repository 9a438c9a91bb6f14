"""The offline mask method: outline filter, fill, seeded watershed (no network, no weights).

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
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

from protoseg.errors import ConfigError

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
    # Background pieces that touch the image edge: cut-off cells' interiors and the
    # background itself. Fill the small ones (cells), keep the large ones (background).
    background = measure.label(~filled, connectivity=1)
    if background.max() == 0:
        return filled
    sizes = np.bincount(background.ravel())
    small = np.flatnonzero(sizes <= max_edge_hole)
    small = small[small > 0]
    if small.size:
        filled = filled | np.isin(background, small)
    return filled


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


def _drop_small_pieces(mask: np.ndarray, max_size: int) -> np.ndarray:
    pieces = measure.label(mask, connectivity=1)
    return (np.bincount(pieces.ravel()) > max_size)[pieces] & mask


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


def segment(
    image: np.ndarray,
    *,
    sigma: float = 1.0,
    min_area: int = 150,
    max_area: int | None = None,
    enhance: str = "ridge",
    threshold: str = "li",
    background_sigma: float | None = None,
    split_depth: float = 2.0,
    min_sharpness: float = 0.0,
) -> np.ndarray:
    """Instance labels (uint16, 0 = background) of the cells in one fluorescent image.

    ``image``: (H, W) or (H, W, C), any integer or float dtype. ``sigma``: scale in pixels
    of the ridge filter or the smoothing. ``min_area``/``max_area``: objects outside this
    pixel-area range are dropped (``max_area=None``: no upper limit). ``enhance``: "ridge"
    for outline stains, "intensity" for filled objects. ``threshold``: "otsu", "li" or
    "triangle" (scikit-image's automatic thresholds). ``background_sigma``: with
    "intensity", subtract a Gaussian background of this sigma first (None: no). ``split_depth``:
    how far (distance-transform pixels) a cell centre must rise above the neck joining it to
    a neighbour to get its own label. ``min_sharpness``: drop objects whose outline
    sharpness is below this (0: keep all; see the module docstring).
    """
    _check(
        sigma, min_area, max_area, enhance, threshold, background_sigma, split_depth, min_sharpness
    )
    grey = to_grey(image)
    if grey.max() - grey.min() < 1e-6:  # blank plane: nothing to find
        return np.zeros(grey.shape, dtype=np.uint16)

    response = ridges(grey, sigma) if enhance == "ridge" or min_sharpness > 0 else None
    if enhance == "ridge":
        signal = response
    else:
        signal = filters.gaussian(grey, sigma=sigma) if sigma > 0 else grey
        if background_sigma:
            # Uneven illumination: subtract a broad blur so one threshold fits the whole field.
            signal = signal - filters.gaussian(signal, sigma=background_sigma)
    if signal.max() - signal.min() < 1e-9:
        return np.zeros(grey.shape, dtype=np.uint16)
    foreground = signal > THRESHOLDS[threshold](signal)

    max_edge_hole = max_area if max_area is not None else int(EDGE_HOLE_FRACTION * grey.size)
    filled = _fill_interiors(foreground, max_edge_hole)
    filled = _trim_outlines(foreground, filled)
    # Specks far below a cell's size would each seed a label; drop them first.
    filled = _drop_small_pieces(filled, max(min_area // 4, 1))

    distance = ndi.distance_transform_edt(filled)
    seeds = morphology.h_maxima(filters.gaussian(distance, sigma=1.0), split_depth)
    markers = measure.label(seeds & filled)
    labels = segmentation.watershed(-distance, markers, mask=filled)

    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    if max_area is not None:
        keep &= areas <= max_area
    keep[0] = False
    if min_sharpness > 0:
        for label, score in sharpness(np.where(keep[labels], labels, 0), grey, response).items():
            keep[label] = score >= min_sharpness
    labels = np.where(keep[labels], labels, 0)
    labels, _, _ = segmentation.relabel_sequential(labels)
    if labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{labels.max()} objects do not fit in uint16 labels")
    return labels.astype(np.uint16)


def _check(
    sigma, min_area, max_area, enhance, threshold, background_sigma, split_depth, min_sharpness
) -> None:
    key = "masks.classical."
    if sigma < 0:
        raise ConfigError(key + "sigma", f"must be >= 0, got {sigma}")
    if min_area < 0:
        raise ConfigError(key + "min_area", f"must be >= 0, got {min_area}")
    if max_area is not None and max_area < max(min_area, 1):
        raise ConfigError(key + "max_area", f"must be >= min_area ({min_area}), got {max_area}")
    if enhance not in ENHANCE:
        raise ConfigError(
            key + "enhance", f"unknown value '{enhance}' (use one of {list(ENHANCE)})"
        )
    if threshold not in THRESHOLDS:
        raise ConfigError(
            key + "threshold", f"unknown method '{threshold}' (use one of {sorted(THRESHOLDS)})"
        )
    if background_sigma is not None and background_sigma < 0:
        raise ConfigError(key + "background_sigma", f"must be >= 0 or null, got {background_sigma}")
    if split_depth <= 0:
        raise ConfigError(key + "split_depth", f"must be > 0, got {split_depth}")
    if min_sharpness < 0:
        raise ConfigError(key + "min_sharpness", f"must be >= 0, got {min_sharpness}")
