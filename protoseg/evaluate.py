"""Scoring a trained model on its dataset's test split, one image at a time.

For every test image: the model's probabilities by the one inference path (the sliding
window of :mod:`protoseg.inference` over the stored sample at the training scale), brought
back to the image's own size and thresholded at the model's threshold (chosen on validation
images when training had them); pixel counts and scores against the image's original mask
(accuracy, F1, IoU; :mod:`protoseg.metrics`); instance scores of the prediction's connected
components against the true cells (SA50, mean SA, matched F1). Scoring at the original
resolution makes numbers of different geometries comparable; ``evaluate.resolution:
training`` scores against the stored (resized) masks instead, as the study did. Samples are
read one at a time from the memory-mapped shards.

A model with instance outputs (:mod:`protoseg.instances`) is scored twice for instances:
the connected components of its thresholded foreground (the columns every model has) and
the cells of its seeded watershed, with its stored settings, in the same columns prefixed
:data:`WATERSHED_PREFIX` (``ws_sa50``, ``ws_msa``, ``ws_matched_f1``, ...); its overlay data
holds those cells too.

The per-image table keeps the manifest's columns (source image, state, z, modality, ...), so
the tables stage can group by plane without the dataset. A focal-context model
(docs/focal-context.md) is scored like any other: its sample of plane z, which holds the
neighbouring planes as channels, against plane z's truth; ``context_planes`` says how many.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from protoseg import metrics
from protoseg.config import complete_section
from protoseg.errors import ConfigError, InputError
from protoseg.inference import sliding_window, to_original_size
from protoseg.io import read_image
from protoseg.transforms import centre_plane, display_rgb, instances_at_mask, label_image

log = logging.getLogger(__name__)

COUNT_COLUMNS = ["tp", "fp", "fn", "tn"]
PIXEL_COLUMNS = ["accuracy", "f1", "iou"]
INSTANCE_COLUMNS = ["n_true", "n_pred", "tp50", *metrics.INSTANCE_SCORES]
METRIC_COLUMNS = ["threshold", *COUNT_COLUMNS, *PIXEL_COLUMNS, *INSTANCE_COLUMNS]
# Instance scores of a network's own instances (seeded watershed of its instance outputs).
WATERSHED_PREFIX = "ws_"
WATERSHED_COLUMNS = [f"{WATERSHED_PREFIX}{name}" for name in INSTANCE_COLUMNS if name != "n_true"]


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
    stacked = {
        "images": np.stack(overlay["images"])[order],
        "masks": np.stack(overlay["masks"])[order],
        "probabilities": np.stack(overlay["probabilities"])[order],
        "z": np.array(overlay["z"])[order],
        "modality": np.array(overlay["modality"])[order],
    }
    if overlay.get("instances"):
        stacked["instances"] = np.stack(overlay["instances"])[order]
    return stacked


# ---------------------------------------------------------------- one model, its dataset
INSTANCE_SOURCES = ("labels", "components")


RESOLUTIONS = ("original", "training")


def predict_sample(
    model,
    split,
    index: int,
    *,
    tile,
    overlap: float,
    device: str,
    batch_size: int,
    precision: str,
    all_outputs: bool = False,
) -> np.ndarray:
    """Probabilities (H, W) of one stored sample at the training scale, by the one
    inference path (:func:`protoseg.inference.sliding_window`); with ``all_outputs`` every
    output channel (K, H, W)."""
    image, _ = split.arrays(index)
    return sliding_window(
        model,
        image,
        split.record.preprocessing.tile if tile is None else tuple(tile),
        overlap,
        device=device,
        batch_size=batch_size,
        precision=precision,
        all_outputs=all_outputs,
    )


class TruthReader:
    """The truth of each sample at the resolution scores are computed at.

    ``original``: the sample's own mask file (instance labels at the image's size), so
    numbers from different geometries compare; ``training``: the data set's stored binary
    mask, with instances from the stored labels (``patches``) or the labels resized onto it
    (``resize``, :func:`instances_at_mask`), as the study scored at 512 x 512. ``instances``
    ``components`` uses the connected components of the binary truth instead of labels.
    """

    def __init__(self, split, resolution: str, instances: str):
        if resolution not in RESOLUTIONS:
            raise ConfigError(
                "evaluate.resolution",
                f"unknown '{resolution}'; use one of {', '.join(RESOLUTIONS)}",
            )
        if instances not in INSTANCE_SOURCES:
            raise ConfigError(
                "evaluate.instances",
                f"unknown '{instances}'; use one of {', '.join(INSTANCE_SOURCES)}",
            )
        self.split, self.resolution, self.instances = split, resolution, instances
        self._cache: dict[str, np.ndarray] = {}  # a state mask serves all its planes

    def _labels(self, path: str) -> np.ndarray:
        if path not in self._cache:
            self._cache.clear()
            self._cache[path] = label_image(read_image(path), path)
        return self._cache[path]

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(binary truth, instance labels or None for components) of sample ``index``."""
        row = self.split.manifest.iloc[index]
        if self.resolution == "original":
            labels = self._labels(str(row["mask"]))
            binary = labels > 0
            return binary, (labels if self.instances == "labels" else None)
        _, binary = self.split.arrays(index)
        if self.instances == "components":
            return binary, None
        if self.split.record.has_instances:
            return binary, self.split.instances(index)
        return binary, instances_at_mask(self._labels(str(row["mask"])), binary)


def evaluate_split(
    model,
    split,
    *,
    threshold: float,
    resolution: str,
    instances: str,
    tile,
    overlap: float,
    device: str,
    batch_size: int,
    precision: str,
    overlay_state: str | None,
    progress: bool = True,
    watershed: dict | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Score every sample of ``split`` (a :class:`protoseg.dataset.SplitData`).

    Returns the per-image table (manifest columns + :data:`METRIC_COLUMNS` + ``resolution``)
    and the overlay data of ``overlay_state`` at the training scale (``images`` uint8
    (K, H, W, 3), ``masks`` bool, ``probabilities`` float16, ``z``, ``modality``, ordered by
    modality and plane; and ``state``, ``threshold``), ready for :func:`protoseg.io.save_npz`.
    ``watershed``: the instance post-processing of a model with instance outputs (its
    ``mode`` and ``settings``, :func:`protoseg.instances.model_instances`): its cells are
    scored too (:data:`WATERSHED_COLUMNS`) and kept in the overlay (``instances`` uint32).
    """
    from protoseg.instances import segment
    from protoseg.transforms import resize_labels

    truth = TruthReader(split, resolution, instances)
    keys = ("images", "masks", "probabilities", "z", "modality")
    rows, overlay = [], {key: [] for key in keys + (("instances",) if watershed else ())}
    for index in tqdm(range(len(split)), desc="evaluate", unit="image", disable=not progress):
        row = split.manifest.iloc[index]
        outputs = predict_sample(
            model,
            split,
            index,
            tile=tile,
            overlap=overlap,
            device=device,
            batch_size=batch_size,
            precision=precision,
            all_outputs=watershed is not None,
        )
        probabilities = outputs if watershed is None else outputs[0]
        binary, labels = truth(index)
        if resolution == "original":
            scored = to_original_size(outputs, *binary.shape)
        else:
            scored = outputs
        record = row.to_dict() | score_image(
            scored if watershed is None else scored[0], binary, threshold, labels
        )
        if watershed is not None:
            cells = segment(scored, watershed["mode"], threshold, watershed["settings"])
            true_cells = metrics.instances_from_binary(binary) if labels is None else labels
            record |= {
                f"{WATERSHED_PREFIX}{name}": value
                for name, value in metrics.instance_scores(cells, true_cells).items()
                if name != "n_true"
            }
            record["instance_mode"] = watershed["mode"]
        rows.append(record | {"resolution": resolution})
        if overlay_state is not None and str(row["state"]) == str(overlay_state):
            image, stored_mask = split.arrays(index)
            # A focal-context sample holds its neighbours too: show the plane it is of.
            plane = centre_plane(image, split.record.context_planes)
            overlay["images"].append(display_rgb(plane, channels_first=True))
            overlay["masks"].append(stored_mask > 0)
            overlay["probabilities"].append(probabilities.astype(np.float16))
            overlay["z"].append(int(row["z"]))
            overlay["modality"].append(str(row.get("modality", "")))
            if watershed is not None:
                overlay["instances"].append(resize_labels(cells, probabilities.shape))
    if not rows:
        raise ValueError("no images to evaluate")
    stacked = _stack_overlay(overlay)
    stacked["state"] = np.array("" if overlay_state is None else str(overlay_state))
    stacked["threshold"] = np.array(float(threshold))
    return pd.DataFrame.from_records(rows), stacked


def threshold_counts(
    model,
    split,
    *,
    tile=None,
    overlap: float = 0.5,
    device: str = "cpu",
    batch_size: int = 4,
    precision: str = "fp32",
) -> metrics.ThresholdCounts:
    """Pixel counts of every threshold over a split at the training scale (for choosing the
    threshold on validation images; :class:`protoseg.metrics.ThresholdCounts`)."""
    counts = metrics.ThresholdCounts()
    for index in range(len(split)):
        probabilities = predict_sample(
            model,
            split,
            index,
            tile=tile,
            overlap=overlap,
            device=device,
            batch_size=batch_size,
            precision=precision,
        )
        counts.add(probabilities, split.arrays(index)[1])
    return counts


def model_threshold(meta: dict, override: float | None) -> tuple[float, str]:
    """The threshold to score with and where it came from: ``override`` (config), else the
    one stored in the model (chosen on validation images, or the fixed training setting)."""
    if override is not None:
        return float(override), "config"
    stored = meta.get("threshold")
    if stored is None:
        return 0.5, "default"
    return float(stored["value"]), str(stored["source"])


def evaluate_model(
    model_path: str | Path,
    dataset_dir: str | Path,
    **settings,
) -> tuple[pd.DataFrame, dict]:
    """Score the model at ``model_path`` on the test split of the dataset in ``dataset_dir``.

    ``settings``: keys of the config's ``evaluate`` section (``threshold``, ``resolution``,
    ``instances``, ``tile``, ``overlap``, ``device``, ``batch_size``, ``precision``,
    ``overlay_state``); those left out take the schema's defaults.

    ``threshold``: None uses the model's own (see :func:`model_threshold`). The per-image
    table also says the geometry, threshold source and resolution that made it. Raises
    :class:`ConfigError` for an overlay state that is not in the test split and
    :class:`InputError` for an empty test split or a model that takes other channels than
    the dataset has.
    """
    from protoseg.dataset import open_split
    from protoseg.device import resolve_device, resolve_precision
    from protoseg.model import load_model

    settings = complete_section("evaluate", settings)
    threshold, resolution, overlay_state = (
        settings["threshold"],
        settings["resolution"],
        settings["overlay_state"],
    )
    device = resolve_device(settings["device"], key="evaluate.device")
    precision = resolve_precision(settings["precision"], device, key="evaluate.precision")
    split = open_split(dataset_dir, "test")
    if len(split) == 0:
        raise InputError(
            Path(dataset_dir) / "manifest.csv", "the test split has no images; check split.test"
        )
    states = sorted(split.manifest["state"].astype(str).unique())
    if overlay_state is None:
        overlay_state = states[0]
    elif str(overlay_state) not in states:
        raise ConfigError(
            "evaluate.overlay_state",
            f"'{overlay_state}' is not a test state; test states: {', '.join(states)}",
        )
    model, meta = load_model(model_path, device)
    in_channels = model.architecture["in_channels"]
    if in_channels != split.record.channels:
        raise InputError(
            model_path,
            f"the model takes {in_channels} channel(s), the dataset in {dataset_dir} has {split.record.channels}",
        )
    from protoseg.instances import model_instances

    watershed = model_instances(meta, int(model.architecture["out_channels"]), model_path)
    value, source = model_threshold(meta, threshold)
    if source == "default":
        log.warning("%s records no threshold; scoring at 0.5", model_path)
    log.info(
        "evaluating %s on %d test images of %s (%s geometry, device %s, %s, threshold %.2f from %s, %s resolution)",
        model_path,
        len(split),
        dataset_dir,
        split.record.geometry,
        device,
        precision,
        value,
        source,
        resolution,
    )
    per_image, overlay = evaluate_split(
        model,
        split,
        threshold=value,
        resolution=resolution,
        instances=settings["instances"],
        tile=settings["tile"],
        overlap=settings["overlap"],
        device=device,
        batch_size=settings["batch_size"],
        precision=precision,
        overlay_state=overlay_state,
        watershed=watershed,
    )
    per_image["threshold_source"] = source
    per_image["geometry"] = split.record.geometry
    per_image["context_planes"] = split.record.context_planes
    return per_image, overlay
