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
from tqdm import tqdm

from protoseg import metrics
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
    """Instance and pixel scores of one predicted label image against its truth
    (:func:`protoseg.metrics.instance_scores`, the one scoring module)."""
    instance = metrics.instance_scores(prediction, truth)
    pred_fg, true_fg = np.asarray(prediction) > 0, np.asarray(truth) > 0
    union = np.logical_or(pred_fg, true_fg).sum()
    pixel_iou = np.logical_and(pred_fg, true_fg).sum() / union if union else 1.0
    if instance["n_pred"] == 0 or instance["n_true"] == 0:
        pixel_iou = 1.0 if instance["n_pred"] == instance["n_true"] else 0.0
    return {
        "sa50": instance["sa50"],
        "msa": instance["msa"],
        "precision": instance["precision50"],
        "recall": instance["recall50"],
        "pixel_iou": float(pixel_iou),
        "n_pred": instance["n_pred"],
        "n_true": instance["n_true"],
    }


def build_pairs(
    states: Iterable[str],
    planes: Iterable[int],
    *,
    method: str,
    plane_mask: str,
    per_z_mask: str,
    state_mask: str,
    truth_plane: str,
    truth_state: str,
    classical_images: dict | None = None,
) -> list[dict]:
    """What is scored against what: one dict per (state, method, kind, plane).

    The path arguments are templates with ``{state}`` and ``{z}``. ``classical_images``:
    (state, z) -> image path, to score the classical method on those images too.
    """
    planes = list(planes)
    pairs = []
    for state in states:
        for z in planes:
            truth = truth_plane.format(state=state, z=z)
            for kind, template in (("plane", plane_mask), ("per_z", per_z_mask)):
                prediction = template.format(state=state, z=z)
                pairs.append(
                    dict(
                        state=state,
                        method=method,
                        kind=kind,
                        z=z,
                        prediction=prediction,
                        truth=truth,
                    )
                )
            if classical_images:
                image = classical_images[(state, z)]
                pairs.append(
                    dict(
                        state=state, method="classical", kind="plane", z=z, image=image, truth=truth
                    )
                )
        prediction, truth = state_mask.format(state=state), truth_state.format(state=state)
        pairs.append(
            dict(
                state=state, method=method, kind="state", z=None, prediction=prediction, truth=truth
            )
        )
    return pairs


def score_pairs(pairs: Iterable[dict], classical: dict | None = None) -> pd.DataFrame:
    """Score many (prediction, truth) pairs read from files.

    ``pairs``: dicts with a ``truth`` path and either a ``prediction`` path (a label
    TIFF) or an ``image`` path, which is segmented here with the classical method and
    ``classical`` (its settings, config ``masks.classical``); every other key (state,
    method, kind, z) is copied to the output row. A shape mismatch is an
    :class:`InputError` naming the prediction.
    """
    from protoseg.io import read_image
    from protoseg.masks.classical import segment, settings_from_config

    pairs = list(pairs)
    rows = []
    for pair in tqdm(pairs, desc="mask quality", unit="mask", disable=len(pairs) < 20):
        truth = read_image(pair["truth"])
        if "prediction" in pair:
            source = pair["prediction"]
            prediction = read_image(source)
        else:
            source = pair["image"]
            prediction = segment(read_image(source), settings_from_config(classical))
        if prediction.ndim != 2:
            raise InputError(source, f"expected a 2D label image, got shape {prediction.shape}")
        if prediction.shape != truth.shape:
            raise InputError(
                source,
                f"shape {prediction.shape} differs from its truth {pair['truth']} {truth.shape}",
            )
        info = {
            key: value for key, value in pair.items() if key not in ("prediction", "truth", "image")
        }
        rows.append(info | score(prediction, truth))
    table = pd.DataFrame(rows)
    if "z" in table:  # plane numbers stay integers; state rows have none
        table["z"] = pd.to_numeric(table["z"], errors="coerce").astype("Int64")
    return table


def write_quality(
    pairs: Iterable[dict], csv_path, md_path, classical: dict | None = None
) -> pd.DataFrame:
    """Score ``pairs`` (see :func:`score_pairs`); write the per-image CSV and the Markdown summary."""
    from protoseg.io import write_csv, write_text

    table = score_pairs(pairs, classical)
    summary = summarise(table)
    write_csv(csv_path, table)
    write_text(md_path, markdown(summary))
    for row in summary[summary["z"].isin(["all", "-"])].itertuples(index=False):
        log.info("%s %s: SA50 %.3f, mSA %.3f", row.method, row.kind, row.sa50, row.msa)
    return table


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean scores over states per method, kind and plane, plus an "all" row per method and
    kind (mean over every image of that kind). Counts are summed."""
    if table.empty:
        return pd.DataFrame(columns=["method", "kind", "z", "images", *SCORES, *COUNTS])
    z = pd.to_numeric(table["z"], errors="coerce").astype("Int64").astype("string").fillna("-")
    table = table.assign(z=z)
    aggregations = {name: "mean" for name in SCORES} | {name: "sum" for name in COUNTS}
    per_plane = (
        table.groupby(["method", "kind", "z"], sort=False)
        .agg(images=("state", "size"), **{k: (k, v) for k, v in aggregations.items()})
        .reset_index()
    )
    overall = (
        table.groupby(["method", "kind"], sort=False)
        .agg(images=("state", "size"), **{k: (k, v) for k, v in aggregations.items()})
        .reset_index()
    )
    overall = overall[overall["kind"] != "state"].assign(z="all")
    summary = pd.concat([per_plane, overall], ignore_index=True)
    kind_order = {kind: k for k, kind in enumerate(KINDS)}
    summary = summary.assign(
        _kind=summary["kind"].map(kind_order),
        _z=pd.to_numeric(summary["z"], errors="coerce").astype("float64").fillna(np.inf),
    )
    summary = summary.sort_values(["method", "_kind", "_z"], kind="stable").drop(
        columns=["_kind", "_z"]
    )
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
    header = [
        "method",
        "kind",
        "z",
        "images",
        "SA50",
        "mSA",
        "precision",
        "recall",
        "pixel IoU",
        "cells (pred/true)",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|")
    for row in summary.itertuples(index=False):
        values = [row.method, row.kind, row.z, str(row.images)]
        values += [f"{getattr(row, name):.3f}" for name in SCORES]
        values.append(f"{row.n_pred}/{row.n_true}")
        lines.append("| " + " | ".join(str(value) for value in values) + " |")
    return "\n".join(lines) + "\n"
