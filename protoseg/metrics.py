"""Segmentation metrics: pixel scores from confusion counts, instance scores from labels.

Pixel metrics follow segmentation_models_pytorch's functional style: :func:`confusion`
turns binary predictions and targets into true/false positive/negative counts per image,
and :func:`pixel_accuracy`, :func:`f1` (Dice) and :func:`iou` (Jaccard) turn counts into
scores with an explicit ``reduction``:

- ``"micro"``: pool the counts of all images, then score once (every pixel weighs the same;
  the headline numbers of protoseg's tables);
- ``"imagewise"``: score each image, then average (every image weighs the same);
- ``"none"``: one score per image.

An image whose target and prediction are both empty has F1 = IoU = 1 (nothing to find,
nothing found), not 0/0. docs/metrics.md explains the choices.

Instance metrics compare connected components of the binary prediction with the true
instances, using elf's implementation of micro-sam's segmentation accuracy
SA(t) = TP / (TP + FP + FN) with one-to-one matching at IoU >= t.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import label as connected_components

REDUCTIONS = ("micro", "imagewise", "none")
# IoU thresholds of micro-sam's mean segmentation accuracy (mSA): 0.50, 0.55, ..., 0.95.
SA_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))
INSTANCE_SCORES = ("sa50", "msa", "precision50", "recall50", "matched_f1")


def confusion(pred_bin, target_bin) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True/false positive/negative pixel counts of binary masks of shape ``(..., H, W)``.

    Counts are summed over the last two axes, so one image gives scalars and a batch
    ``(N, H, W)`` gives arrays of shape ``(N,)``. Any non-zero value counts as foreground.
    """
    pred = np.asarray(pred_bin).astype(bool, copy=False)
    target = np.asarray(target_bin).astype(bool, copy=False)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    if pred.ndim < 2:
        raise ValueError(f"expected images of shape (..., H, W), got shape {pred.shape}")
    axes = (-2, -1)
    tp = np.logical_and(pred, target).sum(axis=axes, dtype=np.int64)
    fp = np.logical_and(pred, ~target).sum(axis=axes, dtype=np.int64)
    fn = np.logical_and(~pred, target).sum(axis=axes, dtype=np.int64)
    tn = np.logical_and(~pred, ~target).sum(axis=axes, dtype=np.int64)
    return tp, fp, fn, tn


def _ratio(numerator, denominator, empty: float) -> np.ndarray:
    """numerator / denominator, with ``empty`` where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, empty)


def _reduce(score_of_counts, counts, reduction: str):
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction '{reduction}'; use one of {', '.join(REDUCTIONS)}")
    counts = [np.asarray(count, dtype=np.int64) for count in counts]
    if reduction == "micro":
        return float(score_of_counts(*(count.sum() for count in counts)))
    per_image = score_of_counts(*counts)
    if reduction == "imagewise":
        return float(np.mean(per_image))
    return per_image


def pixel_accuracy(tp, fp, fn, tn, reduction: str = "micro"):
    """(TP + TN) / all pixels."""
    return _reduce(
        lambda tp, fp, fn, tn: _ratio(tp + tn, tp + fp + fn + tn, 1.0), (tp, fp, fn, tn), reduction
    )


def f1(tp, fp, fn, tn, reduction: str = "micro"):
    """F1 score = Dice coefficient = 2 TP / (2 TP + FP + FN); 1 when both masks are empty."""
    return _reduce(
        lambda tp, fp, fn, tn: _ratio(2 * tp, 2 * tp + fp + fn, 1.0), (tp, fp, fn, tn), reduction
    )


def iou(tp, fp, fn, tn, reduction: str = "micro"):
    """Jaccard index = TP / (TP + FP + FN); 1 when both masks are empty."""
    return _reduce(
        lambda tp, fp, fn, tn: _ratio(tp, tp + fp + fn, 1.0), (tp, fp, fn, tn), reduction
    )


PIXEL_METRICS = {"accuracy": pixel_accuracy, "f1": f1, "iou": iou}


def pixel_scores(tp, fp, fn, tn, reduction: str = "micro") -> dict:
    """Accuracy, F1 and IoU of the same counts and reduction, keyed by name."""
    return {name: metric(tp, fp, fn, tn, reduction) for name, metric in PIXEL_METRICS.items()}


# ---------------------------------------------------------------- instances
def instances_from_binary(binary: np.ndarray) -> np.ndarray:
    """Connected components (4-connected, so cells touching only at a corner stay apart)."""
    return connected_components(np.asarray(binary) > 0, connectivity=1).astype(np.uint32)


def instance_scores(pred_labels: np.ndarray, true_labels: np.ndarray) -> dict:
    """Instance scores of predicted against true label images (0 = background).

    Returns ``n_true``, ``n_pred``, ``tp50`` (objects matched at IoU >= 0.5) and
    ``sa50``, ``msa`` (mean SA over IoU 0.50..0.95), ``precision50``, ``recall50``,
    ``matched_f1`` (F1 of the matching at IoU 0.5). Both empty: every score 1; only one
    empty: every score 0 (elf gives 0 for both cases).
    """
    from elf.evaluation import matching, mean_segmentation_accuracy

    pred_labels = np.asarray(pred_labels)
    true_labels = np.asarray(true_labels)
    if pred_labels.shape != true_labels.shape:
        raise ValueError(
            f"prediction shape {pred_labels.shape} differs from truth shape {true_labels.shape}"
        )
    n_pred = int(len(np.unique(pred_labels[pred_labels > 0])))
    n_true = int(len(np.unique(true_labels[true_labels > 0])))
    counts = {"n_true": n_true, "n_pred": n_pred}
    if n_pred == 0 or n_true == 0:
        score = 1.0 if n_pred == n_true else 0.0
        return counts | {"tp50": 0} | dict.fromkeys(INSTANCE_SCORES, score)
    # elf wants non-negative integer labels of one kind.
    pred_labels = pred_labels.astype(np.uint32)
    true_labels = true_labels.astype(np.uint32)
    msa, accuracies = mean_segmentation_accuracy(
        pred_labels, true_labels, thresholds=list(SA_THRESHOLDS), return_accuracies=True
    )
    at50 = matching(pred_labels, true_labels, threshold=0.5)
    return counts | {
        # recall = TP / n_true, so the matched count comes back exactly after rounding.
        "tp50": int(round(at50["recall"] * n_true)),
        "sa50": float(accuracies[0]),
        "msa": float(msa),
        "precision50": float(at50["precision"]),
        "recall50": float(at50["recall"]),
        "matched_f1": float(at50["f1"]),
    }


def pooled_instance_scores(n_true, n_pred, tp50) -> dict:
    """SA50, precision, recall and matched F1 at IoU 0.5 from counts pooled over images."""
    n_true, n_pred, tp = (int(np.sum(value)) for value in (n_true, n_pred, tp50))
    fp, fn = n_pred - tp, n_true - tp
    if n_true == 0 and n_pred == 0:
        return {"sa50": 1.0, "precision50": 1.0, "recall50": 1.0, "matched_f1": 1.0}
    return {
        "sa50": tp / (tp + fp + fn),
        "precision50": tp / n_pred if n_pred else 0.0,
        "recall50": tp / n_true if n_true else 0.0,
        "matched_f1": 2 * tp / (2 * tp + fp + fn),
    }


# ---------------------------------------------------------------- choosing a threshold
# Thresholds tried when one is chosen on validation images: 0.02..0.98 in steps of 0.01,
# finer towards both ends. Oversampled, Dice-trained networks over-call cells, so the best
# one often lies high (REALDATA-NOTES: 0.9 was the top of a 0.1..0.9 grid; on aiSEGcell's
# validation images the bce+dice model's best was 0.99, beyond a grid that ended at 0.98).
THRESHOLD_GRID = tuple(
    float(t)
    for t in sorted(
        {0.002, 0.005, 0.01, *np.round(np.arange(0.02, 0.985, 0.01), 2), 0.985, 0.99, 0.995, 0.998}
    )
)


class ThresholdCounts:
    """Pixel counts of many images at every threshold at once, from probability histograms.

    :meth:`add` bins each image's probabilities (``bins`` equal bins over [0, 1]) separately
    for cell and background pixels; the counts at a threshold t (prediction: probability
    > t) are then sums of bins, so choosing among a hundred thresholds costs one pass over the
    images, not one pass per threshold.
    """

    def __init__(self, bins: int = 1000):
        self.bins = int(bins)
        self.cell = np.zeros(self.bins, dtype=np.int64)
        self.background = np.zeros(self.bins, dtype=np.int64)

    def add(self, probabilities: np.ndarray, target: np.ndarray) -> None:
        probabilities = np.asarray(probabilities, dtype=np.float32)
        target = np.asarray(target) > 0
        if probabilities.shape != target.shape:
            raise ValueError(
                f"probabilities {probabilities.shape} and target {target.shape} differ in shape"
            )
        index = np.clip((probabilities * self.bins).astype(np.int64), 0, self.bins - 1)
        self.cell += np.bincount(index[target], minlength=self.bins)
        self.background += np.bincount(index[~target], minlength=self.bins)

    def counts(self, threshold: float) -> tuple[int, int, int, int]:
        """(tp, fp, fn, tn) of the prediction probability > ``threshold``."""
        first = int(np.clip(np.ceil(threshold * self.bins - 1e-9), 0, self.bins))
        tp, fn = int(self.cell[first:].sum()), int(self.cell[:first].sum())
        fp, tn = int(self.background[first:].sum()), int(self.background[:first].sum())
        return tp, fp, fn, tn

    def f1_at(self, thresholds=THRESHOLD_GRID) -> np.ndarray:
        return np.array([f1(*self.counts(t)) for t in thresholds])

    def best(self, thresholds=THRESHOLD_GRID) -> tuple[float, float]:
        """(threshold, F1) of the threshold with the highest pooled F1 (the lowest one of ties)."""
        scores = self.f1_at(thresholds)
        index = int(np.argmax(scores))
        return float(thresholds[index]), float(scores[index])
