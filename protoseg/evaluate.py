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
            "instances": np.zeros((0, 0, 0), np.uint16),
        }
    order = np.lexsort((np.array(overlay["z"]), np.array(overlay["modality"])))
    stacked = {
        "images": np.stack(overlay["images"])[order],
        "masks": np.stack(overlay["masks"])[order],
        "probabilities": np.stack(overlay["probabilities"])[order],
        "z": np.array(overlay["z"])[order],
        "modality": np.array(overlay["modality"])[order],
        "instances": np.stack(overlay["instances"])[order],
    }
    return stacked


# ---------------------------------------------------------------- one model, its dataset
INSTANCE_SOURCES = ("labels", "components")


RESOLUTIONS = ("original", "training")


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


class OverlayData:
    """The overlay data of one state's test samples at the training scale (figures): image,
    true mask, probabilities and the segmenter's cells (its instance step and object filter,
    as scored)."""

    KEYS = ("images", "masks", "probabilities", "z", "modality", "instances")

    def __init__(self, state: str | None, segmenter):
        self.state, self.segmenter = state, segmenter
        self.parts: dict[str, list] = {key: [] for key in self.KEYS}

    def add(self, split, index: int, row, outputs: np.ndarray, cells=None) -> None:
        """Keep sample ``index`` if it is of the overlay's state. ``outputs``: the network's
        (K, H, W) at the training scale; ``cells``: its cells where scoring made them at
        another resolution (the network's own watershed), else made here from ``outputs``."""
        if self.state is None or str(row["state"]) != str(self.state):
            return
        from protoseg.transforms import resize_labels

        image, stored_mask = split.arrays(index)
        probabilities = outputs[0]
        # A focal-context sample holds its neighbours too: show the plane it is of.
        plane = centre_plane(image, split.record.context_planes)
        self.parts["images"].append(display_rgb(plane, channels_first=True))
        self.parts["masks"].append(stored_mask > 0)
        self.parts["probabilities"].append(probabilities.astype(np.float16))
        self.parts["z"].append(int(row["z"]))
        self.parts["modality"].append(str(row.get("modality", "")))
        if cells is None:
            cells = self.segmenter.cells(outputs)
        self.parts["instances"].append(resize_labels(cells, probabilities.shape))

    def stacked(self, threshold: float) -> dict:
        stacked = _stack_overlay(self.parts)
        stacked["state"] = np.array("" if self.state is None else str(self.state))
        stacked["threshold"] = np.array(float(threshold))
        return stacked


def score_sample(segmenter, split, index: int, truth: TruthReader, resolution: str):
    """The per-image row of sample ``index`` (manifest columns and scores), the network's
    outputs at the training scale, and the network's own cells (None for a binary network)."""
    row = split.manifest.iloc[index]
    outputs = segmenter.sample_outputs(split, index)
    binary, labels = truth(index)
    scored = segmenter.at_size(outputs, binary.shape) if resolution == "original" else outputs
    record = row.to_dict() | score_image(scored[0], binary, segmenter.threshold, labels)
    record |= filtered_scores(segmenter, scored, binary, labels)
    if segmenter.threshold != 0.5:
        record |= scores_at_half(segmenter, scored, binary, labels)
    cells = None
    if segmenter.own_step is not None:
        cells = segmenter.cells(scored)
        true_cells = metrics.instances_from_binary(binary) if labels is None else labels
        record |= {
            f"{WATERSHED_PREFIX}{name}": value
            for name, value in metrics.instance_scores(cells, true_cells).items()
            if name != "n_true"
        }
        record["instance_mode"] = segmenter.own_step["mode"]
    return record | {"resolution": resolution}, outputs, cells


def filtered_scores(segmenter, scored: np.ndarray, binary, labels) -> dict:
    """With an object filter (binary networks; a network's own cells are filtered in
    :meth:`Segmenter.cells`): the instance columns of the filtered cells, the unfiltered
    count and matched F1 beside them, and the filter (``object_filter``). Else nothing."""
    if segmenter.object_filter is None or segmenter.own_step is not None:
        return {} if segmenter.object_filter is None else _filter_note(segmenter)
    truth = metrics.instances_from_binary(binary) if labels is None else labels
    unfiltered = metrics.instance_scores(segmenter.cells(scored, filtered=False), truth)
    filtered = metrics.instance_scores(segmenter.cells(scored), truth)
    return (
        filtered
        | {"n_pred_unfiltered": unfiltered["n_pred"]}
        | {"matched_f1_unfiltered": unfiltered["matched_f1"]}
        | _filter_note(segmenter)
    )


def _filter_note(segmenter) -> dict:
    return {"object_filter": segmenter.object_filter.describe()}


def scores_at_half(segmenter, scored: np.ndarray, binary, labels) -> dict:
    """Pixel F1 and matched F1 of the same outputs thresholded at 0.5 instead (the tables
    show them beside the chosen threshold's): ``f1_at_05``, ``matched_f1_at_05``."""
    target = np.asarray(binary) > 0
    counts = metrics.confusion(scored[0] > 0.5, target)
    truth = metrics.instances_from_binary(target) if labels is None else labels
    cells = (
        segmenter.cells(scored, 0.5)
        if segmenter.object_filter is not None
        else metrics.instances_from_binary(scored[0] > 0.5)
    )
    return {
        "f1_at_05": metrics.f1(*(int(c) for c in counts)),
        "matched_f1_at_05": metrics.instance_scores(cells, truth)["matched_f1"],
    }


def evaluate_split(
    segmenter,
    split,
    *,
    resolution: str,
    instances: str,
    overlay_state: str | None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Score every sample of ``split`` (a :class:`protoseg.dataset.SplitData`) with
    ``segmenter`` (:class:`protoseg.segmenter.Segmenter`, at its threshold).

    Returns the per-image table (manifest columns + :data:`METRIC_COLUMNS` + ``resolution``)
    and the overlay data of ``overlay_state`` at the training scale (``images`` uint8
    (K, H, W, 3), ``masks`` bool, ``probabilities`` float16, ``instances`` (the segmenter's
    cells, uint16), ``z``, ``modality``, ordered by modality and plane; and ``state``,
    ``threshold``), ready for :func:`protoseg.io.save_npz`. A network with instance outputs
    has its own cells scored too (:data:`WATERSHED_COLUMNS`).
    """
    truth = TruthReader(split, resolution, instances)
    overlay = OverlayData(overlay_state, segmenter)
    rows = []
    for index in tqdm(range(len(split)), desc="evaluate", unit="image", disable=not progress):
        record, outputs, cells = score_sample(segmenter, split, index, truth, resolution)
        rows.append(record)
        overlay.add(split, index, split.manifest.iloc[index], outputs, cells)
    if not rows:
        raise ValueError("no images to evaluate")
    return pd.DataFrame.from_records(rows), overlay.stacked(segmenter.threshold)


def threshold_counts(segmenter, split) -> metrics.ThresholdCounts:
    """Pixel counts of every threshold over a split at the training scale (for choosing the
    threshold on validation images; :class:`protoseg.metrics.ThresholdCounts`)."""
    counts = metrics.ThresholdCounts()
    for index in range(len(split)):
        counts.add(segmenter.sample_outputs(split, index)[0], split.arrays(index)[1])
    return counts


def open_test_split(dataset_dir: str | Path, overlay_state):
    """The test split of a data set and the state whose overlay is kept (the first test
    state unless ``overlay_state`` names one); an empty split or an unknown state raise."""
    from protoseg.dataset import open_split

    split = open_split(dataset_dir, "test")
    if len(split) == 0:
        raise InputError(
            Path(dataset_dir) / "manifest.csv", "the test split has no images; check split.test"
        )
    states = sorted(split.manifest["state"].astype(str).unique())
    if overlay_state is None:
        return split, states[0]
    if str(overlay_state) not in states:
        raise ConfigError(
            "evaluate.overlay_state",
            f"'{overlay_state}' is not a test state; test states: {', '.join(states)}",
        )
    return split, overlay_state


def evaluate_model(
    model_path: str | Path,
    dataset_dir: str | Path,
    **settings,
) -> tuple[pd.DataFrame, dict]:
    """Score the model at ``model_path`` on the test split of the dataset in ``dataset_dir``.

    ``settings``: keys of the config's ``evaluate`` section (``threshold``, ``resolution``,
    ``instances``, ``tile``, ``overlap``, ``device``, ``batch_size``, ``precision``,
    ``overlay_state``); those left out take the schema's defaults.

    ``threshold``: None uses the model's own (:func:`protoseg.segmenter.stored_threshold`).
    The per-image table also says the geometry, threshold source and resolution that made
    it. Raises :class:`ConfigError` for an overlay state that is not in the test split and
    :class:`InputError` for an empty test split or a model that takes other channels than
    the dataset has.
    """
    from protoseg.segmenter import Segmenter

    settings = complete_section("evaluate", settings)
    split, overlay_state = open_test_split(dataset_dir, settings["overlay_state"])
    # The test split's record: the data set the model is scored on.
    segmenter, _ = Segmenter.from_file(model_path, "evaluate", record=split.record, **settings)
    in_channels = segmenter.network.architecture["in_channels"]
    if in_channels != split.record.channels:
        raise InputError(
            model_path,
            f"the model takes {in_channels} channel(s), the dataset in {dataset_dir} "
            f"has {split.record.channels}",
        )
    if segmenter.threshold_source == "default":
        log.warning("%s records no threshold; scoring at 0.5", model_path)
    log.info(
        "evaluating %s on %d test images of %s (%s resolution)",
        segmenter.describe(),
        len(split),
        dataset_dir,
        settings["resolution"],
    )
    per_image, overlay = evaluate_split(
        segmenter,
        split,
        resolution=settings["resolution"],
        instances=settings["instances"],
        overlay_state=overlay_state,
    )
    per_image["threshold_source"] = segmenter.threshold_source
    per_image["geometry"] = split.record.geometry
    per_image["context_planes"] = split.record.context_planes
    return per_image, overlay
