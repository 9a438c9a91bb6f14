"""A network that separates instances: its extra outputs, their targets, their losses and the
seeded watershed that turns them into cells (``model.instances``).

The study's U-Net predicts cell or background, so touching and overlapping cells merge into
one object. micro-sam's instance decoder and torch_em's boundary networks predict more than
foreground and split cells with a seeded watershed; protoseg does the same with its U-Net:

* ``none`` (the default, the study's): one output, the foreground;
* ``boundaries``: foreground + a boundary map (torch_em's ``BoundaryTransform``, ``thick``:
  the pixels on either side of every edge between a cell and anything else, so where two
  cells touch). Cells: :func:`torch_em.util.segmentation.watershed_from_components`: seeds
  are the connected components of foreground - boundaries above ``seed_threshold``, grown
  over the boundary map within the foreground;
* ``distances``: foreground + the distance to each cell's centre and to its boundary, each
  normalised per cell to [0, 1] and inverted so that both are 0 at the centre and 1 at the
  edge and outside (torch_em's ``PerObjectDistanceTransform``, as micro-sam's decoder is
  trained). Cells: :func:`torch_em.util.segmentation.watershed_from_center_and_boundary_distances`:
  seeds where both smoothed distances lie below their thresholds, grown over the boundary
  distance within the foreground.

Both: a foreground component that holds no seed (a network that over-calls boundaries, or
a cell too faint for the distance thresholds) is kept as one cell, as connected components
would give it, rather than dropped as torch_em's watershed alone would.

Targets are made from the instance labels the data set stores (per training patch, after
augmentation). Every output goes through a sigmoid. The foreground keeps ``train.losses``;
the extra outputs' losses are fixed by the mode: soft Dice of the boundary map
(``boundaries``, torch_em's default for boundary channels), or Dice of each distance masked
to the true foreground (``distances``, micro-sam's ``DiceBasedDistanceLoss`` without its
foreground term). The watershed's settings are chosen on the validation split after the
foreground threshold (:func:`choose_settings`), stored in ``model.pt`` and used by
evaluation and prediction.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from numbers import Number

import numpy as np

from protoseg.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("none", "boundaries", "distances")
# Output channels after the foreground, by mode.
EXTRA_OUTPUTS = {
    "none": (),
    "boundaries": ("boundaries",),
    "distances": ("center_distances", "boundary_distances"),
}
# Objects smaller than this (pixels at the training scale) get no distance target, as in
# micro-sam's decoder training (PerObjectDistanceTransform min_size=25).
DISTANCE_MIN_SIZE = 25
# micro-sam's default Gaussian smoothing of the predicted distances before the seeds.
DISTANCE_SMOOTHING = 1.6
DEFAULTS = {
    "boundaries": {"seed_threshold": 0.5, "min_size": 25},
    "distances": {
        "center_threshold": 0.5,
        "boundary_threshold": 0.5,
        "smoothing": DISTANCE_SMOOTHING,
        "min_size": 25,
    },
}
# The validation grid (micro-sam's grid search for its decoder: 0.3..0.7 in 0.1 steps).
SEED_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DISTANCE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_SIZE_GRID = (0, 10, 25, 50, 100, 200)
SETTING_MODES = ("auto",)


def check_mode(mode: str, key: str = "model.instances") -> str:
    if mode not in MODES:
        raise ConfigError(key, f"unknown instance mode '{mode}'; use one of {', '.join(MODES)}")
    return mode


def output_channels(mode: str) -> int:
    """The network's output channels for ``mode``: the foreground plus the extra outputs."""
    return 1 + len(EXTRA_OUTPUTS[check_mode(mode)])


def mode_of_channels(channels: int) -> str | None:
    """The instance mode a network with ``channels`` outputs was built for (None: unknown)."""
    found = [mode for mode in MODES if output_channels(mode) == channels]
    return found[0] if found else None


# ---------------------------------------------------------------- settings
def check_settings(mode: str, settings: Mapping, key: str = "train.watershed") -> dict:
    """The watershed settings of ``mode``, filled with defaults and checked: thresholds in
    (0, 1), ``min_size`` a whole number of pixels >= 0, ``smoothing`` in [0, 10]. Out of
    range or unknown keys raise :class:`ConfigError` naming ``key``."""
    check_mode(mode)
    if mode == "none":
        return {}
    if not isinstance(settings, Mapping):
        raise ConfigError(
            key, f"expected auto or a mapping of watershed settings, got {settings!r}"
        )
    unknown = sorted(set(settings) - set(DEFAULTS[mode]))
    if unknown:
        raise ConfigError(
            key,
            f"unknown setting(s) {unknown} for instances '{mode}'; known: {sorted(DEFAULTS[mode])}",
        )
    values = {**DEFAULTS[mode], **settings}
    for name, value in values.items():
        if not isinstance(value, Number) or isinstance(value, bool) or not np.isfinite(value):
            raise ConfigError(f"{key}.{name}", f"must be a number, got {value!r}")
        if name.endswith("threshold") and not 0 < float(value) < 1:
            raise ConfigError(f"{key}.{name}", f"a threshold lies in (0, 1), got {value}")
        if name == "min_size" and (float(value) < 0 or float(value) != int(value)):
            raise ConfigError(f"{key}.{name}", f"a whole number of pixels >= 0, got {value}")
        if name == "smoothing" and not 0 <= float(value) <= 10:
            raise ConfigError(f"{key}.{name}", f"a Gaussian sigma in [0, 10] pixels, got {value}")
    values["min_size"] = int(values["min_size"])
    return {name: float(value) if name != "min_size" else value for name, value in values.items()}


def check_setting(value, mode: str) -> None:
    """``train.watershed``: ``auto`` (chosen on the validation split) or fixed settings."""
    if isinstance(value, str):
        if value not in SETTING_MODES:
            raise ConfigError(
                "train.watershed", f"use auto or a mapping of settings, got '{value}'"
            )
        return
    if mode == "none":
        return
    check_settings(mode, value)


# ---------------------------------------------------------------- targets
def targets(labels: np.ndarray, mode: str) -> np.ndarray:
    """The extra outputs' targets (K, H, W) float32 of an instance label image (H, W).

    ``boundaries``: 1 on the thick boundaries (both sides of every edge between two labels,
    background included); ``distances``: the per-cell normalised centre and boundary
    distances, 0 at the centre, 1 at the edge and outside (cells under
    :data:`DISTANCE_MIN_SIZE` pixels are treated as outside).
    """
    from torch_em.transform.label import BoundaryTransform, PerObjectDistanceTransform

    labels = np.asarray(labels)
    if mode == "boundaries":
        return BoundaryTransform(mode="thick")(labels).astype(np.float32)
    if mode == "distances":
        transform = PerObjectDistanceTransform(
            distances=True,
            boundary_distances=True,
            directed_distances=False,
            foreground=False,
            instances=False,
            # Our labels are instances already; connected components of them would split a
            # cell cut in two by the patch border into two, as torch_em's default does too.
            apply_label=True,
            min_size=DISTANCE_MIN_SIZE,
        )
        return np.ascontiguousarray(transform(labels.astype(np.uint32)), dtype=np.float32)
    raise ValueError(f"instance mode '{mode}' has no extra outputs")


def with_targets(mask: np.ndarray, labels: np.ndarray, mode: str) -> np.ndarray:
    """The full training target (1 + K, H, W) float32: the binary mask, then :func:`targets`."""
    foreground = (np.asarray(mask) > 0).astype(np.float32)[None]
    if mode == "none":
        return foreground
    return np.concatenate([foreground, targets(labels, mode)], axis=0)


# ---------------------------------------------------------------- post-processing
def _relabel(segmentation: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    labels, _, _ = relabel_sequential(np.asarray(segmentation).astype(np.int64))
    return labels.astype(np.uint32)


def _size_filter(segmentation: np.ndarray, min_size: int) -> np.ndarray:
    """Objects smaller than ``min_size`` pixels removed (to background), relabelled 1..n."""
    segmentation = np.asarray(segmentation)
    if min_size > 0 and segmentation.any():
        sizes = np.bincount(segmentation.ravel())
        small = np.flatnonzero(sizes < min_size)
        small = small[small > 0]
        if len(small):
            segmentation = np.where(np.isin(segmentation, small), 0, segmentation)
    return _relabel(segmentation)


def seeded_watershed(
    outputs: np.ndarray, mode: str, threshold: float, settings: Mapping
) -> np.ndarray:
    """The watershed of ``outputs`` (1 + K, H, W probabilities) before the size filter."""
    from torch_em.util.segmentation import (
        watershed_from_center_and_boundary_distances,
        watershed_from_components,
    )

    outputs = np.asarray(outputs, dtype=np.float32)
    if outputs.shape[0] != output_channels(mode):
        raise ValueError(
            f"instances '{mode}' needs {output_channels(mode)} output channels, got {outputs.shape[0]}"
        )
    foreground = outputs[0]
    if mode == "boundaries":
        segmentation = watershed_from_components(
            outputs[1],
            foreground,
            min_size=0,
            threshold1=float(settings["seed_threshold"]),
            threshold2=float(threshold),
        )
    elif mode == "distances":
        segmentation = watershed_from_center_and_boundary_distances(
            outputs[1],
            outputs[2],
            foreground,
            center_distance_threshold=float(settings["center_threshold"]),
            boundary_distance_threshold=float(settings["boundary_threshold"]),
            foreground_threshold=float(threshold),
            distance_smoothing=float(settings["smoothing"]),
            min_size=0,
        )
    else:
        raise ValueError(f"instance mode '{mode}' has no watershed")
    segmentation = np.asarray(segmentation).astype(np.int64)
    # Foreground that no seed reached is a component without a seed (the watershed floods
    # every mask pixel connected to one): keep it as one cell, as connected components
    # would, so that a network over-calling boundaries never loses a cell entirely.
    unseeded = (foreground > threshold) & (segmentation == 0)
    if unseeded.any():
        from protoseg.metrics import instances_from_binary

        extra = instances_from_binary(unseeded).astype(np.int64)
        segmentation[unseeded] = extra[unseeded] + segmentation.max()
    return segmentation


def segment(outputs: np.ndarray, mode: str, threshold: float, settings: Mapping) -> np.ndarray:
    """Instance labels (uint32, 0 = background) from a network's outputs (1 + K, H, W),
    its foreground ``threshold`` and watershed ``settings`` (:func:`check_settings`)."""
    settings = check_settings(mode, settings, key="watershed settings")
    return _size_filter(
        seeded_watershed(outputs, mode, threshold, settings), int(settings["min_size"])
    )


def settings_grid(mode: str) -> list[dict]:
    """The seed settings tried on validation images (the size filter is tried on each)."""
    if mode == "boundaries":
        return [{"seed_threshold": value} for value in SEED_GRID]
    if mode == "distances":
        return [
            {"center_threshold": c, "boundary_threshold": b, "smoothing": DISTANCE_SMOOTHING}
            for c, b in itertools.product(DISTANCE_GRID, DISTANCE_GRID)
        ]
    raise ValueError(f"instance mode '{mode}' has no watershed")


def size_filtered_scores(
    segmentation: np.ndarray, truth: np.ndarray, min_sizes=MIN_SIZE_GRID
) -> np.ndarray:
    """(mSA, SA50) of ``segmentation`` against ``truth`` after each size filter of
    ``min_sizes``: an array (len(min_sizes), 2), from one overlap table.

    Removing small objects leaves the IoU of the others as it was, so one table serves
    every minimum size. At IoU >= 0.5 an object can match at most one other, so the
    matched pairs at a threshold t >= 0.5 are simply the pairs with IoU >= t: the counts of
    elf's (micro-sam's) optimal matching, which :func:`protoseg.metrics.instance_scores`
    runs, without the assignment problem for each of 10 thresholds and each size.
    """
    from protoseg.metrics import SA_THRESHOLDS

    segmentation = np.asarray(segmentation).astype(np.int64).ravel()
    truth = np.asarray(truth).astype(np.int64).ravel()
    pred_sizes = np.bincount(segmentation)
    true_ids = np.unique(truth[truth > 0])
    n_true = len(true_ids)
    true_sizes = np.bincount(truth)
    both = (segmentation > 0) & (truth > 0)
    width = int(truth.max()) + 1
    pairs, inter = np.unique(segmentation[both] * width + truth[both], return_counts=True)
    pred_of_pair, true_of_pair = pairs // width, pairs % width
    iou = inter / (pred_sizes[pred_of_pair] + true_sizes[true_of_pair] - inter)
    present = np.flatnonzero(pred_sizes)
    present = present[present > 0]
    thresholds = np.asarray(SA_THRESHOLDS, dtype=np.float64)
    results = np.zeros((len(min_sizes), 2))
    for row, min_size in enumerate(min_sizes):
        kept_ids = present[pred_sizes[present] >= min_size]
        n_pred = len(kept_ids)
        if n_pred == 0 or n_true == 0:
            results[row] = 1.0 if n_pred == n_true else 0.0
            continue
        kept = pred_sizes[pred_of_pair] >= min_size
        tp = (iou[kept][:, None] >= thresholds[None, :]).sum(axis=0)
        accuracies = tp / (n_pred + n_true - tp)
        results[row] = (accuracies.mean(), accuracies[0])
    return results


def choose_settings(
    mode: str, threshold: float, images: Iterable[tuple[np.ndarray, np.ndarray]]
) -> dict:
    """The watershed settings with the best mean mSA (then SA50) over ``images``.

    ``images`` yields (outputs (1 + K, H, W), true instance labels (H, W)) of the
    validation split only; ``threshold`` is the foreground threshold chosen there before.
    Every seed setting of :func:`settings_grid` is run once and scored after each minimum
    size of :data:`MIN_SIZE_GRID` (:func:`size_filtered_scores`). Returns ``{"settings",
    "msa", "sa50", "images"}``.
    """
    grid = settings_grid(mode)
    totals = np.zeros((len(grid), len(MIN_SIZE_GRID), 2))
    count = 0
    for outputs, truth in images:
        count += 1
        for seed_index, seeds in enumerate(grid):
            raw = seeded_watershed(outputs, mode, threshold, {**DEFAULTS[mode], **seeds})
            totals[seed_index] += size_filtered_scores(raw, truth)
    if count == 0:
        raise ValueError("no validation images to choose the watershed settings on")
    means = totals / count
    # Best mSA, then SA50; the first in grid order among exact ties.
    order = np.lexsort((-means[..., 1].ravel(), -means[..., 0].ravel()))
    seed_index, size_index = np.unravel_index(int(order[0]), means.shape[:2])
    settings = {**DEFAULTS[mode], **grid[seed_index], "min_size": MIN_SIZE_GRID[size_index]}
    return {
        "settings": check_settings(mode, settings),
        "msa": float(means[seed_index, size_index, 0]),
        "sa50": float(means[seed_index, size_index, 1]),
        "images": count,
    }


# ---------------------------------------------------------------- what a model file says
def model_instances(meta: Mapping, out_channels: int, source: object = "model") -> dict | None:
    """The instance post-processing a model file records (``meta["instances"]``: mode,
    settings, where they came from), checked against its network's ``out_channels``.

    None for a binary model. A network with instance outputs whose file records no (or
    another) mode, or stored settings out of range, raise :class:`InputError`.
    """
    from protoseg.errors import InputError

    stored = meta.get("instances")
    if out_channels == 1 and (stored is None or stored.get("mode", "none") == "none"):
        return None
    if not isinstance(stored, Mapping) or "mode" not in stored:
        raise InputError(
            source,
            f"network has {out_channels} outputs but the file records no instance mode; "
            "it was not written by this protoseg's training (retrain it)",
        )
    mode = str(stored["mode"])
    if mode not in MODES or output_channels(mode) != out_channels:
        raise InputError(
            source,
            f"records instances '{mode}' but its network has {out_channels} output channel(s)",
        )
    try:
        settings = check_settings(mode, stored.get("settings") or {}, key="watershed settings")
    except ConfigError as error:
        raise InputError(source, f"stored {error}") from error
    return {
        "mode": mode,
        "settings": settings,
        "source": str(stored.get("source", "unknown")),
    }
