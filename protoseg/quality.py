"""Mask quality against truth masks (the demo's generator writes them; the study had none).

Instance scores come from elf (``elf.evaluation``), the functions micro-sam's own evaluation
uses: segmentation accuracy SA(t) = TP / (TP + FP + FN), where a predicted and a true
object match one to one (Hungarian matching) when their IoU is at least t.

- ``sa50``: SA at IoU 0.5;
- ``msa``: mean SA over IoU 0.50, 0.55, ..., 0.95 (micro-sam's mSA);
- ``precision`` = TP / (TP + FP) and ``recall`` = TP / (TP + FN), at IoU 0.5;
- ``pixel_iou``: IoU of the foregrounds (label > 0), ignoring instance identity.

When neither mask has any object, every score is 1 (nothing to find, nothing found; elf
would say 0). When only one is empty, the instance scores are 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd
from elf.evaluation import matching, mean_segmentation_accuracy

from protoseg.errors import InputError

log = logging.getLogger(__name__)

SCORES = ["sa50", "msa", "precision", "recall", "pixel_iou"]
COUNTS = ["n_pred", "n_true"]
# Rows of the quality table, in the order they are shown.
KINDS = {
    "plane": "plane mask vs plane truth",
    "per_z": "per-z mask vs plane truth",
    "state": "state mask vs state truth",
}


def score(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Instance and pixel scores of one predicted label image against its truth."""
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    n_pred = len(np.unique(prediction[prediction > 0]))
    n_true = len(np.unique(truth[truth > 0]))
    counts = {"n_pred": n_pred, "n_true": n_true}
    if n_pred == 0 and n_true == 0:
        return {name: 1.0 for name in SCORES} | counts
    if n_pred == 0 or n_true == 0:
        return {name: 0.0 for name in SCORES} | counts
    # elf wants non-negative integer labels of one kind.
    prediction = prediction.astype(np.uint32)
    truth = truth.astype(np.uint32)
    msa, accuracies = mean_segmentation_accuracy(prediction, truth, return_accuracies=True)
    at50 = matching(prediction, truth, threshold=0.5)
    pred_fg, true_fg = prediction > 0, truth > 0
    pixel_iou = np.logical_and(pred_fg, true_fg).sum() / np.logical_or(pred_fg, true_fg).sum()
    return {
        "sa50": float(accuracies[0]),
        "msa": float(msa),
        "precision": float(at50["precision"]),
        "recall": float(at50["recall"]),
        "pixel_iou": float(pixel_iou),
    } | counts


def score_pairs(pairs: Iterable[dict], read) -> pd.DataFrame:
    """Score many (prediction, truth) pairs.

    ``pairs``: dicts with ``prediction`` and ``truth`` paths plus any identifying columns
    (state, method, kind, z) copied to the output; ``read``: path -> label array (e.g.
    :func:`protoseg.io.read_image`). A shape mismatch is an :class:`InputError` naming
    the prediction.
    """
    rows = []
    for pair in pairs:
        prediction, truth = read(pair["prediction"]), read(pair["truth"])
        if prediction.shape != truth.shape:
            raise InputError(pair["prediction"], f"shape {prediction.shape} differs from its truth {pair['truth']} {truth.shape}")
        rows.append({key: value for key, value in pair.items() if key not in ("prediction", "truth")} | score(prediction, truth))
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean scores over states per method, kind and plane, plus an "all" row per method and
    kind (mean over every image of that kind). Counts are summed."""
    if table.empty:
        return pd.DataFrame(columns=["method", "kind", "z", "images", *SCORES, *COUNTS])
    table = table.assign(z=table["z"].astype("string").fillna("-"))
    aggregations = {name: "mean" for name in SCORES} | {name: "sum" for name in COUNTS}
    per_plane = table.groupby(["method", "kind", "z"], sort=False).agg(images=("state", "size"), **{k: (k, v) for k, v in aggregations.items()}).reset_index()
    overall = table.groupby(["method", "kind"], sort=False).agg(images=("state", "size"), **{k: (k, v) for k, v in aggregations.items()}).reset_index()
    overall = overall[overall["kind"] != "state"].assign(z="all")
    summary = pd.concat([per_plane, overall], ignore_index=True)
    kind_order = {kind: k for k, kind in enumerate(KINDS)}
    summary = summary.assign(
        _kind=summary["kind"].map(kind_order),
        _z=pd.to_numeric(summary["z"], errors="coerce").fillna(np.inf),
    )
    summary = summary.sort_values(["method", "_kind", "_z"], kind="stable").drop(columns=["_kind", "_z"])
    return summary.reset_index(drop=True)


def markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table with a short legend."""
    lines = [
        "# Mask quality",
        "",
        "Mean over states. SA50: segmentation accuracy TP/(TP+FP+FN) at IoU 0.5; mSA: mean SA",
        "over IoU 0.50-0.95 (micro-sam's definition, elf's implementation); precision and",
        "recall at IoU 0.5; pixel IoU: foreground vs foreground. Kinds: "
        + "; ".join(f"{kind} = {text}" for kind, text in KINDS.items())
        + ". z = all: mean over every plane image.",
        "",
    ]
    if summary.empty:
        return "\n".join([*lines, "No masks were scored.", ""])
    header = ["method", "kind", "z", "images", "SA50", "mSA", "precision", "recall", "pixel IoU", "cells (pred/true)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|")
    for row in summary.itertuples(index=False):
        values = [row.method, row.kind, row.z, str(row.images)]
        values += [f"{getattr(row, name):.3f}" for name in SCORES]
        values.append(f"{row.n_pred}/{row.n_true}")
        lines.append("| " + " | ".join(str(value) for value in values) + " |")
    return "\n".join(lines) + "\n"
