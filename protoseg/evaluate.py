"""Scoring a trained model on its dataset's test split, one image at a time.

For every test image: the model's probabilities (:mod:`protoseg.inference`), thresholded
into a binary prediction; pixel counts and scores against the binary mask (accuracy, F1,
IoU; :mod:`protoseg.metrics`); instance scores of the prediction's connected components
against the true cells (SA50, mean SA, matched F1). The dataset is read shard by shard, so
memory holds one shard, never the whole split.

The per-image table keeps the manifest's columns (source image, state, z, modality, ...), so
the tables stage can group by plane without the dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from protoseg import metrics
from protoseg.errors import ConfigError, InputError
from protoseg.inference import predict_probabilities

log = logging.getLogger(__name__)

COUNT_COLUMNS = ["tp", "fp", "fn", "tn"]
PIXEL_COLUMNS = ["accuracy", "f1", "iou"]
INSTANCE_COLUMNS = ["n_true", "n_pred", "tp50", *metrics.INSTANCE_SCORES]
METRIC_COLUMNS = ["threshold", *COUNT_COLUMNS, *PIXEL_COLUMNS, *INSTANCE_COLUMNS]


def score_image(
    probability: np.ndarray, mask: np.ndarray, threshold: float, instances: np.ndarray | None = None
) -> dict:
    """Pixel counts and scores and instance scores of one image's prediction.

    ``mask``: the binary target (any non-zero value is cell); ``instances``: the true cells
    as a label image where the dataset has them, else the mask's connected components (so
    touching cells count as one).
    """
    predicted = np.asarray(probability) > threshold
    target = np.asarray(mask) > 0
    tp, fp, fn, tn = (int(count) for count in metrics.confusion(predicted, target))
    row = {"threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    row |= metrics.pixel_scores(tp, fp, fn, tn, reduction="micro")
    truth = metrics.instances_from_binary(target) if instances is None else np.asarray(instances)
    row |= metrics.instance_scores(metrics.instances_from_binary(predicted), truth)
    return row


def to_display(image: np.ndarray) -> np.ndarray:
    """Model input (C, H, W) in [0, 1] -> uint8 RGB (H, W, 3) for overlays."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    return (np.clip(np.moveaxis(image[:3], 0, 2), 0, 1) * 255 + 0.5).astype(np.uint8)


def evaluate_batches(
    model,
    batches: Iterable[dict],
    threshold: float = 0.5,
    device: str = "cpu",
    batch_size: int = 16,
    overlay_state: str | None = None,
    total: int | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Score every image of ``batches``.

    Each batch is a dict with ``images`` (N, C, H, W) float in [0, 1], ``masks`` (N, H, W),
    ``rows`` (the N manifest rows, a DataFrame with at least ``state`` and ``z``) and
    optionally ``instances`` (N, H, W) true label images. Returns the per-image table
    (manifest columns + :data:`METRIC_COLUMNS`) and the overlay data of ``overlay_state``
    (``images`` uint8 (K, H, W, 3), ``masks`` bool, ``probabilities`` float16, ``z``,
    ``modality``, ordered by modality and plane, empty when the state has no image here;
    and ``state``, ``threshold``), ready for :func:`protoseg.io.save_npz`.
    """
    tables = []
    overlay: dict[str, list] = {
        "images": [],
        "masks": [],
        "probabilities": [],
        "z": [],
        "modality": [],
    }
    bar = tqdm(total=total, desc="evaluate", unit="image")
    for batch in batches:
        images, masks, rows = batch["images"], batch["masks"], batch["rows"].reset_index(drop=True)
        if len(images) != len(rows) or len(masks) != len(rows):
            raise ValueError(
                f"batch of {len(images)} images, {len(masks)} masks and {len(rows)} manifest rows"
            )
        probabilities = predict_probabilities(model, images, device=device, batch_size=batch_size)
        instances = batch.get("instances")
        scores = []
        for index in range(len(rows)):
            truth = None if instances is None else instances[index]
            scores.append(score_image(probabilities[index], masks[index], threshold, truth))
            bar.update(1)
        tables.append(pd.concat([rows, pd.DataFrame.from_records(scores)], axis=1))
        if overlay_state is not None:
            for index in np.flatnonzero(rows["state"].astype(str).to_numpy() == str(overlay_state)):
                overlay["images"].append(to_display(images[index]))
                overlay["masks"].append(np.asarray(masks[index]) > 0)
                overlay["probabilities"].append(probabilities[index].astype(np.float16))
                overlay["z"].append(int(rows.loc[index, "z"]))
                overlay["modality"].append(str(rows.loc[index].get("modality", "")))
    bar.close()
    if not tables:
        raise ValueError("no test images to evaluate")
    per_image = pd.concat(tables, ignore_index=True)
    stacked = _stack_overlay(overlay)
    stacked["state"] = np.array("" if overlay_state is None else str(overlay_state))
    stacked["threshold"] = np.array(float(threshold))
    return per_image, stacked


def pooled_scores(per_image: pd.DataFrame) -> dict:
    """Accuracy, F1 and IoU of all images of a per-image table, pixels pooled."""
    return metrics.pixel_scores(
        *(per_image[column].to_numpy() for column in COUNT_COLUMNS), reduction="micro"
    )


def _stack_overlay(overlay: dict) -> dict:
    if not overlay["images"]:
        return {
            "images": np.zeros((0, 0, 0, 3), np.uint8),
            "masks": np.zeros((0, 0, 0), bool),
            "probabilities": np.zeros((0, 0, 0), np.float16),
            "z": np.zeros(0, int),
            "modality": np.zeros(0, str),
        }
    order = np.lexsort((np.array(overlay["z"]), np.array(overlay["modality"])))
    return {
        "images": np.stack(overlay["images"])[order],
        "masks": np.stack(overlay["masks"])[order],
        "probabilities": np.stack(overlay["probabilities"])[order],
        "z": np.array(overlay["z"])[order],
        "modality": np.array(overlay["modality"])[order],
    }


# ---------------------------------------------------------------- one model, its dataset
def _test_batches(split) -> Iterator[dict]:
    """The dataset module's test split as :func:`evaluate_batches` batches, shard by shard."""
    for shard in split.shards():
        batch = {"images": shard.images, "masks": shard.masks, "rows": shard.rows}
        if getattr(shard, "instances", None) is not None:
            batch["instances"] = shard.instances
        yield batch


def evaluate_model(
    model_path: str | Path,
    dataset_dir: str | Path,
    threshold: float = 0.5,
    device: str = "auto",
    batch_size: int = 16,
    overlay_state: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Score the model at ``model_path`` on the test split of the dataset in ``dataset_dir``.

    ``overlay_state``: the test state whose predictions are kept for the overlay figure
    (None: the first test state). Raises :class:`ConfigError` for a state that is not in
    the test split and :class:`InputError` for an empty test split or a model that takes
    other channels than the dataset has.
    """
    from protoseg.dataset import open_split
    from protoseg.device import resolve_device
    from protoseg.model import load_model

    device = resolve_device(device, key="evaluate.device")
    model, meta = load_model(model_path, device)
    split = open_split(dataset_dir, "test")
    rows = split.manifest
    if len(rows) == 0:
        raise InputError(
            Path(dataset_dir) / "manifest.csv", "the test split has no images; check split.test"
        )
    states = sorted(rows["state"].astype(str).unique())
    if overlay_state is None:
        overlay_state = states[0]
    elif str(overlay_state) not in states:
        raise ConfigError(
            "evaluate.overlay_state",
            f"'{overlay_state}' is not a test state; test states: {', '.join(states)}",
        )
    in_channels = meta.get("in_channels") if isinstance(meta, dict) else None
    if in_channels is not None and in_channels != split.channels:
        raise InputError(
            model_path,
            f"the model takes {in_channels} channel(s), the dataset has {split.channels}",
        )
    log.info(
        "evaluating %s on %d test images of %s (device %s)",
        model_path,
        len(rows),
        dataset_dir,
        device,
    )
    return evaluate_batches(
        model,
        _test_batches(split),
        threshold=threshold,
        device=device,
        batch_size=batch_size,
        overlay_state=overlay_state,
        total=len(rows),
    )
