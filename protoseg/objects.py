"""Object-level decisions learned on validation images: which predicted objects to keep, and
which probability threshold makes objects that match the truth.

After the threshold and the instance step, every predicted object is kept or dropped by an
:class:`ObjectFilter`: at least ``min_area`` pixels, a mean foreground probability of at
least ``min_mean_probability``, a solidity (area / convex hull area) of at least
``min_solidity`` (measured with :func:`skimage.measure.regionprops_table`), and an area of at
least ``min_relative_area`` times the image's typical object area (:func:`typical_area`), a
size rule that holds whatever the magnification. Debris and out-of-focus specks are small,
faint or ragged; nuclei and cells are not. As StarDist's
``optimize_thresholds`` and cellpose's ``cellprob_threshold``, the parameters are chosen on
the validation split, for the instance score: the matched F1 at IoU 0.5 (what SA50
rewards), pooled over the validation images (:func:`choose_filter`).

The threshold can be chosen for the same objective (:func:`choose_threshold`): on
:data:`LOGIT_GRID` (evenly spaced in logit, so fine near 0 and 1), taking the centre of the
widest run of grid points within ``tolerance`` of the best score (:func:`plateau_centre`),
so that a broad plateau beats a lone peak that may not transfer to the test images.

Matching at IoU 0.5 is one-to-one without a search: two disjoint objects cannot both
overlap one true cell by more than half, so each predicted object is a hit or not whatever
else is kept, and a filter's score over a grid is a sum over objects (:func:`object_table`).
(An IoU of exactly 0.5 counts as a hit, as in :func:`protoseg.metrics.instance_scores`.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
from skimage.measure import regionprops_table
from skimage.segmentation import relabel_sequential

from protoseg.errors import ConfigError

FILTER_KEYS = ("min_area", "min_mean_probability", "min_solidity", "min_relative_area")
# The grids a filter is chosen on; the first of each keeps every object.
AREA_GRID = (0, 5, 10, 20, 40, 80, 160, 320)
PROBABILITY_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
SOLIDITY_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9)
# Fractions of the image's typical object area; not searched by default (filter_grid).
RELATIVE_AREA_GRID = (0.0, 0.1, 0.2, 0.3, 0.5)
# Thresholds of the instance objective: sigmoid of -6..6 in steps of 0.25 (0.0025..0.9975),
# 0.5 among them.
LOGIT_GRID = tuple(
    float(np.round(1.0 / (1.0 + np.exp(-x)), 4)) for x in np.arange(-6.0, 6.0 + 1e-9, 0.25)
)
PLATEAU_TOLERANCE = 0.005


@dataclass(frozen=True)
class ObjectFilter:
    """Which predicted objects are kept; all zero keeps every object."""

    min_area: int = 0
    min_mean_probability: float = 0.0
    min_solidity: float = 0.0
    min_relative_area: float = 0.0
    source: str = "config"
    validation_matched_f1: float | None = None

    @classmethod
    def from_dict(cls, stored: Mapping, key: str = "train.object_filter") -> ObjectFilter:
        """A filter from a config section or a model file's ``object_filter``; a value out
        of range raises :class:`ConfigError` naming ``key.NAME``."""
        unknown = sorted(set(stored) - set(FILTER_KEYS) - {"source", "validation_matched_f1"})
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", f"unknown key; use {', '.join(FILTER_KEYS)}")
        values = {}
        for name in FILTER_KEYS:
            value = stored.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ConfigError(f"{key}.{name}", f"must be a number, got {value!r}")
            high = np.inf if name == "min_area" else 1.0
            if not 0 <= value <= high or (name == "min_area" and value != int(value)):
                kind = "a whole number >= 0" if name == "min_area" else "between 0 and 1"
                raise ConfigError(f"{key}.{name}", f"must be {kind}, got {value}")
            values[name] = int(value) if name == "min_area" else float(value)
        score = stored.get("validation_matched_f1")
        return cls(
            **values,
            source=str(stored.get("source", "config")),
            validation_matched_f1=None if score is None else float(score),
        )

    def to_dict(self) -> dict:
        stored = asdict(self)
        if stored["validation_matched_f1"] is None:
            del stored["validation_matched_f1"]
        return stored

    @property
    def active(self) -> bool:
        return any(getattr(self, name) > 0 for name in FILTER_KEYS)

    def describe(self) -> str:
        relative = (
            f", area >= {self.min_relative_area:.2f} x the image's typical object"
            if self.min_relative_area
            else ""
        )
        return (
            f"area >= {self.min_area} px, mean probability >= {self.min_mean_probability:.2f}, "
            f"solidity >= {self.min_solidity:.2f}{relative} ({self.source})"
        )

    def keep(self, measures: Mapping[str, np.ndarray]) -> np.ndarray:
        """Which objects of :func:`measure` pass (bool per object)."""
        return (
            (measures["area"] >= self.min_area)
            & (measures["mean_probability"] >= self.min_mean_probability)
            & (measures["solidity"] >= self.min_solidity)
            & (measures["relative_area"] >= self.min_relative_area)
        )

    def apply(self, labels: np.ndarray, probability: np.ndarray) -> np.ndarray:
        """``labels`` with the objects that fail dropped, renumbered 1..n (same dtype)."""
        labels = np.asarray(labels)
        if not self.active or labels.max(initial=0) == 0:
            return labels
        measures = measure(labels, probability)
        dropped = measures["label"][~self.keep(measures)]
        kept = np.where(np.isin(labels, dropped), 0, labels)
        return relabel_sequential(kept)[0].astype(labels.dtype)


def typical_area(areas: np.ndarray) -> float:
    """The area of the object a foreground pixel typically belongs to: the area-weighted
    median of ``areas`` (0 without objects). Many small specks hardly move it, so it tells
    the size of an image's cells, whatever the magnification, where the plain median of
    an over-segmented image would be a speck's."""
    areas = np.sort(np.asarray(areas, dtype=np.float64))
    if not len(areas):
        return 0.0
    cumulative = np.cumsum(areas)
    return float(areas[np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def measure(labels: np.ndarray, probability: np.ndarray) -> dict[str, np.ndarray]:
    """Label, area, mean probability, solidity and area relative to :func:`typical_area` of
    every object of ``labels`` (one image)."""
    labels = np.asarray(labels)
    table = regionprops_table(
        labels if np.issubdtype(labels.dtype, np.integer) else labels.astype(np.int64),
        intensity_image=np.asarray(probability, dtype=np.float32),
        properties=("label", "area", "intensity_mean", "solidity"),
    )
    area = np.asarray(table["area"], dtype=np.float64)
    return {
        "label": np.asarray(table["label"]),
        "area": area,
        "mean_probability": np.asarray(table["intensity_mean"], dtype=np.float64),
        "solidity": np.asarray(table["solidity"], dtype=np.float64),
        "relative_area": area / max(typical_area(area), 1.0),
    }


def matched_objects(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels of ``pred`` and whether each matches a true cell at IoU >= 0.5."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    labels = np.unique(pred[pred > 0]).astype(np.int64)
    if not len(labels) or truth.max(initial=0) == 0:
        return labels, np.zeros(len(labels), dtype=bool)
    # Only the (predicted, true) pairs that overlap, counted once each: a dense matrix of
    # every pair is tens of thousands of rows for a weak network at a low threshold.
    both = (pred > 0) & (truth > 0)
    true_labels = int(truth.max()) + 1
    pairs, overlap = np.unique(
        pred[both].astype(np.int64) * true_labels + truth[both].astype(np.int64),
        return_counts=True,
    )
    pair_pred, pair_true = np.divmod(pairs, true_labels)
    pred_area = np.bincount(pred.ravel().astype(np.intp, copy=False))
    true_area = np.bincount(truth.ravel().astype(np.intp, copy=False))
    iou = overlap / (pred_area[pair_pred] + true_area[pair_true] - overlap)
    return labels, np.isin(labels, pair_pred[iou >= 0.5])


def true_count(truth: np.ndarray) -> int:
    truth = np.asarray(truth)
    return int(len(np.unique(truth[truth > 0])))


def matched_f1(tp: int, n_pred: int, n_true: int) -> float:
    """2 TP / (2 TP + FP + FN) of counts; 1 when nothing is there and nothing predicted."""
    denominator = n_pred + n_true
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def object_table(pred: np.ndarray, probability: np.ndarray, truth: np.ndarray) -> dict:
    """:func:`measure` of every predicted object with ``hit`` (matched at IoU 0.5)."""
    measures = measure(pred, probability)
    labels, hits = matched_objects(pred, truth)
    hit_of = dict(zip(labels.tolist(), hits.tolist(), strict=True))
    measures["hit"] = np.array([hit_of[int(v)] for v in measures["label"]], dtype=bool)
    return measures


def filter_grid(relative_areas=(0.0,)) -> list[ObjectFilter]:
    """Every filter of the grids, the one that keeps everything first (``relative_areas``:
    the ``min_relative_area`` values searched, e.g. :data:`RELATIVE_AREA_GRID`)."""
    return [
        ObjectFilter(area, probability, solidity, relative)
        for area in AREA_GRID
        for probability in PROBABILITY_GRID
        for solidity in SOLIDITY_GRID
        for relative in relative_areas
    ]


def choose_filter(images: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], grid=None) -> dict:
    """The filter of ``grid`` (default :func:`filter_grid`) with the best pooled matched F1
    at IoU 0.5.

    ``images`` yields (predicted cells before any filter, foreground probability, true
    cells) of the validation images, all at one resolution. Exact ties go to the mildest
    filter (the first in grid order). Returns ``{"filter", "matched_f1",
    "matched_f1_unfiltered", "n_true", "images"}``; ``n_true`` 0 means there was nothing
    to tune on (the caller decides what to do).
    """
    tables = [
        (object_table(pred, probability, truth), true_count(truth))
        for pred, probability, truth in images
    ]
    return best_filter(tables, grid)


def best_filter(tables: list[tuple[dict, int]], grid=None) -> dict:
    """:func:`choose_filter` of images already measured: (:func:`object_table`, number of
    true cells) per image."""
    n_true = sum(count for _, count in tables)
    joined = {
        key: np.concatenate([t[key] for t, _ in tables]) if tables else np.zeros(0)
        for key in ("area", "mean_probability", "solidity", "relative_area", "hit")
    }
    hits = joined["hit"].astype(bool)
    grid = filter_grid() if grid is None else list(grid)
    scores = []
    for candidate in grid:
        kept = candidate.keep(joined)
        scores.append(matched_f1(int((kept & hits).sum()), int(kept.sum()), n_true))
    best = int(np.argmax(scores))
    return {
        "filter": grid[best],
        "matched_f1": float(scores[best]),
        "matched_f1_unfiltered": float(scores[0]),
        "n_true": n_true,
        "images": len(tables),
    }


def grid_edge(value: float, grid=LOGIT_GRID) -> str | None:
    """``"highest"`` or ``"lowest"`` when ``value`` is that end of ``grid``, else None: a
    threshold chosen there may have its best beyond the grid, and says the network is
    (nearly) certain of everything it calls cell, or of nothing."""
    if np.isclose(value, max(grid)):
        return "highest"
    if np.isclose(value, min(grid)):
        return "lowest"
    return None


def plateau_centre(scores, tolerance: float = PLATEAU_TOLERANCE) -> int:
    """The index of the centre of the widest run of consecutive scores within ``tolerance``
    of the best (the first such run among equally wide ones; the lower middle of an even
    run)."""
    scores = np.asarray(scores, dtype=np.float64)
    near = scores >= scores.max() - tolerance
    best_start, best_length, start = 0, 0, None
    for index, flag in enumerate([*near.tolist(), False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            if index - start > best_length:
                best_start, best_length = start, index - start
            start = None
    return best_start + (best_length - 1) // 2


def choose_threshold(
    images: Iterable[tuple[np.ndarray, np.ndarray]],
    cells,
    grid=LOGIT_GRID,
    tolerance: float = PLATEAU_TOLERANCE,
) -> dict:
    """The threshold of ``grid`` at the centre of the plateau of pooled matched F1 at IoU
    0.5 over ``images`` (outputs (K, H, W), true cells). ``cells(outputs, threshold)``
    gives the predicted cells (the segmenter's instance step, without an object filter).
    Returns ``{"value", "matched_f1", "matched_f1_at_05", "scores", "n_true", "images"}``.
    """
    grid = tuple(float(t) for t in grid)
    tp, n_pred = np.zeros(len(grid), np.int64), np.zeros(len(grid), np.int64)
    n_true, count = 0, 0
    for outputs, truth in images:
        n_true += true_count(truth)
        count += 1
        for index, threshold in enumerate(grid):
            _, hits = matched_objects(cells(outputs, threshold), truth)
            tp[index] += int(hits.sum())
            n_pred[index] += len(hits)
    scores = np.array([matched_f1(int(a), int(b), n_true) for a, b in zip(tp, n_pred, strict=True)])
    chosen = plateau_centre(scores, tolerance)
    half = grid.index(0.5) if 0.5 in grid else None
    return {
        "value": grid[chosen],
        "matched_f1": float(scores[chosen]),
        "matched_f1_at_05": None if half is None else float(scores[half]),
        "scores": scores,
        "n_true": n_true,
        "images": count,
    }


def choose_threshold_and_filter(
    images: Iterable[tuple[np.ndarray, np.ndarray]],
    cells,
    grid=LOGIT_GRID,
    tolerance: float = PLATEAU_TOLERANCE,
    filters=None,
) -> dict:
    """The threshold and the object filter chosen together, as StarDist's
    ``optimize_thresholds`` searches its two thresholds together: at every threshold of
    ``grid`` the best filter of :func:`choose_filter`, and the threshold at the centre of the
    plateau of those best pooled matched F1 scores (:func:`plateau_centre`). A filter can
    drop the debris that a low threshold lets through, so the best pair often has a lower
    threshold than the best threshold without a filter (:func:`choose_threshold`), and
    cells keep more of their extent. ``images``: (outputs (K, H, W), true cells);
    ``cells(outputs, threshold)``: the predicted cells without any filter. Returns
    ``{"value", "filter", "matched_f1", "matched_f1_unfiltered", "matched_f1_at_05",
    "scores", "n_true", "images"}`` (``matched_f1_unfiltered``: at the chosen threshold;
    ``matched_f1_at_05``: 0.5 with its best filter). ``filters``: the candidate filters
    (default :func:`filter_grid`).
    """
    grid = tuple(float(t) for t in grid)
    return joint_choice(threshold_tables(images, cells, grid), grid, tolerance, filters)


def threshold_tables(
    images: Iterable[tuple[np.ndarray, np.ndarray]], cells, grid=LOGIT_GRID
) -> list[list[tuple[dict, int]]]:
    """Per image, per threshold of ``grid``: (:func:`object_table` of the predicted cells,
    number of true cells). The costly part of :func:`choose_threshold_and_filter`, kept
    so that choices on several subsets of the images (:func:`held_out_score`) measure each
    image once."""
    return [
        [
            (object_table(cells(outputs, threshold), outputs[0], truth), true_count(truth))
            for threshold in grid
        ]
        for outputs, truth in images
    ]


def joint_choice(
    tables: list[list[tuple[dict, int]]],
    grid=LOGIT_GRID,
    tolerance: float = PLATEAU_TOLERANCE,
    filters=None,
) -> dict:
    """:func:`choose_threshold_and_filter` of images measured by :func:`threshold_tables`."""
    grid = tuple(float(t) for t in grid)
    best = [best_filter([image[index] for image in tables], filters) for index in range(len(grid))]
    scores = np.array([chosen["matched_f1"] for chosen in best])
    index = plateau_centre(scores, tolerance)
    half = grid.index(0.5) if 0.5 in grid else None
    return {
        "value": grid[index],
        "filter": best[index]["filter"],
        "matched_f1": float(scores[index]),
        "matched_f1_unfiltered": best[index]["matched_f1_unfiltered"],
        "matched_f1_at_05": None if half is None else float(scores[half]),
        "scores": scores,
        "n_true": best[index]["n_true"] if best else 0,
        "images": len(tables),
    }


def held_out_score(
    tables: list[list[tuple[dict, int]]],
    grid=LOGIT_GRID,
    tolerance: float = PLATEAU_TOLERANCE,
    filters=None,
) -> dict:
    """How well the joint choice transfers to an image it did not see: each image of
    :func:`threshold_tables` scored with the threshold and filter chosen on all the others
    (leave one image out), the counts pooled into one matched F1 at IoU 0.5. The score on
    the images the choice was made on rewards a larger grid whether or not it transfers;
    this one does not. Returns ``{"matched_f1", "tp", "n_pred", "n_true", "choices"}``
    (``choices``: the threshold and filter that scored each image)."""
    grid = tuple(float(t) for t in grid)
    tp = n_pred = n_true = 0
    choices = []
    for held_out, image in enumerate(tables):
        others = tables[:held_out] + tables[held_out + 1 :]
        chosen = joint_choice(others, grid, tolerance, filters)
        table, count = image[grid.index(chosen["value"])]
        kept = chosen["filter"].keep(table)
        tp += int((kept & table["hit"].astype(bool)).sum())
        n_pred += int(kept.sum())
        n_true += count
        choices.append((chosen["value"], chosen["filter"]))
    return {
        "matched_f1": matched_f1(tp, n_pred, n_true),
        "tp": tp,
        "n_pred": n_pred,
        "n_true": n_true,
        "choices": choices,
    }
