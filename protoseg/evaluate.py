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

import cv2
import numpy as np
import pandas as pd
from skimage.segmentation import expand_labels
from tqdm import tqdm

from protoseg import metrics
from protoseg.dataset import shard_files
from protoseg.errors import ConfigError, InputError
from protoseg.inference import predict_probabilities
from protoseg.io import read_image

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
INSTANCE_SOURCES = ("labels", "components")


def instances_at_mask(labels: np.ndarray, binary: np.ndarray) -> np.ndarray:
    """True instances at the dataset's scale: instance labels resized (nearest) onto the
    dataset's binary mask, whose fringe pixels take the label of the nearest cell.

    The binary mask stays the reference (it is what pixel scores use); the labels only say
    which of its pixels belong to which cell, so touching cells stay apart.
    """
    binary = np.asarray(binary) > 0
    height, width = binary.shape
    small = cv2.resize(
        np.asarray(labels).astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST
    )
    small[~binary] = 0
    fringe = binary & (small == 0)
    if fringe.any():
        grown = expand_labels(small, distance=3)
        small[fringe] = grown[fringe]
        # Mask pixels far from any resized cell (a cell lost by the resize) get their own ids.
        orphans = binary & (small == 0)
        if orphans.any():
            extra = metrics.instances_from_binary(orphans).astype(np.int32)
            small[orphans] = extra[orphans] + small.max()
    return small.astype(np.uint32)


def split_batches(split, instances: str = "labels") -> Iterator[dict]:
    """A dataset split (:func:`protoseg.dataset.open_split`) as :func:`evaluate_batches`
    batches, one shard at a time (memory-mapped: only the rows of this split are read).

    ``instances``: ``labels`` reads each sample's instance mask (the manifest's ``mask``
    file, cached per file since a state mask serves all its planes) and brings it to the
    dataset's scale with :func:`instances_at_mask`; ``components`` uses the connected
    components of the binary mask instead.
    """
    if instances not in INSTANCE_SOURCES:
        raise ConfigError(
            "evaluate.instances", f"unknown '{instances}'; use one of {', '.join(INSTANCE_SOURCES)}"
        )
    cache: dict[str, np.ndarray] = {}
    for shard, rows in split.manifest.groupby("shard", sort=False):
        image_file, mask_file = shard_files(split.dataset_dir, shard)
        for path in (image_file, mask_file):
            if not path.is_file():
                raise InputError(
                    path, "shard named in the manifest is missing (rebuild the data set)"
                )
        images, masks = np.load(image_file, mmap_mode="r"), np.load(mask_file, mmap_mode="r")
        index = rows["row"].to_numpy()
        if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
            # A contiguous run stays a memory map; predict copies one batch at a time.
            images, masks = (
                images[index[0] : index[0] + len(index)],
                np.asarray(masks[index[0] : index[0] + len(index)]),
            )
        else:
            images, masks = images[index], np.asarray(masks[index])
        batch = {"images": images, "masks": masks, "rows": rows.reset_index(drop=True)}
        if instances == "labels":
            true_instances = []
            for mask_path, binary in zip(rows["mask"], masks, strict=True):
                if mask_path not in cache:
                    cache.clear()
                    cache[mask_path] = read_image(mask_path)
                true_instances.append(instances_at_mask(cache[mask_path], binary))
            batch["instances"] = np.stack(true_instances)
        yield batch


def evaluate_model(
    model_path: str | Path,
    dataset_dir: str | Path,
    threshold: float = 0.5,
    device: str = "auto",
    batch_size: int = 16,
    overlay_state: str | None = None,
    instances: str = "labels",
) -> tuple[pd.DataFrame, dict]:
    """Score the model at ``model_path`` on the test split of the dataset in ``dataset_dir``.

    ``overlay_state``: the test state whose predictions are kept for the overlay figure
    (None: the first test state); ``instances``: see :func:`split_batches`. Raises
    :class:`ConfigError` for a state that is not in the test split and
    :class:`InputError` for an empty test split or a model that takes other channels than
    the dataset has.
    """
    from protoseg.dataset import open_split
    from protoseg.device import resolve_device
    from protoseg.model import load_model

    device = resolve_device(device, key="evaluate.device")
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
    model, _ = load_model(model_path, device)
    in_channels = model.architecture["in_channels"]
    if in_channels != int(split.info["channels"]):
        raise InputError(
            model_path,
            f"the model takes {in_channels} channel(s), the dataset in {dataset_dir} has {split.info['channels']}",
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
        split_batches(split, instances),
        threshold=threshold,
        device=device,
        batch_size=batch_size,
        overlay_state=overlay_state,
        total=len(rows),
    )
