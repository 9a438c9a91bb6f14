"""One way from a trained network to cells: the :class:`Segmenter`.

A :class:`Segmenter` is what a ``model.pt`` becomes when it is used, as micro-sam's
``get_predictor_and_segmenter`` and cellpose's ``CellposeModel.eval`` give one call from an
image to its masks. It owns everything between an image and its cells:

* preprocessing from the model's :class:`protoseg.dataset.DatasetRecord` (intensity,
  colour, geometry: :func:`protoseg.transforms.prepare_image`);
* device and precision (:mod:`protoseg.device`);
* the sliding window at the training scale (:func:`protoseg.inference.sliding_window`);
* rescaling back to the image's own size;
* the threshold (chosen on validation images in training, or the one the caller sets);
* the instance step: the network's own seeded watershed (:mod:`protoseg.instances`) where it
  has instance outputs, else connected components or a distance watershed of the binary
  mask, with an object filter (``min_area``) and the filter learned on validation images
  (:class:`protoseg.objects.ObjectFilter`: area, mean probability, solidity), stored in
  ``model.pt`` as ``object_filter``;
* test-time augmentation (``tta``): the network's outputs averaged over the 8 flips and
  quarter turns of its input (nnU-Net's mirroring), each turned back before averaging.

Evaluation, validation during training, ``protoseg predict``, the predict rule and export
all call it: :meth:`Segmenter.probabilities` and :meth:`Segmenter.segment` for a raw image,
:meth:`Segmenter.outputs` and :meth:`Segmenter.cells` for an input already prepared (a
stored sample, a focal window of planes). The modules around it only plan inputs, score and
write outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import label as connected_components
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from protoseg.config import complete_section
from protoseg.dataset import DatasetRecord
from protoseg.device import resolve_placement
from protoseg.errors import InputError
from protoseg.inference import sliding_window, to_original_size
from protoseg.instances import model_instances
from protoseg.instances import segment as own_watershed
from protoseg.objects import ObjectFilter
from protoseg.transforms import Preprocessing, prepare_image

log = logging.getLogger(__name__)

# Instance steps of a binary mask; with a network's own instances (``model``) and ``auto``
# (the network's own where it has them, else connected components), predict.instances.
BINARY_INSTANCE_METHODS = ("cc", "watershed")
INSTANCE_CHOICES = ("auto", "model", *BINARY_INSTANCE_METHODS)
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Segmentation:
    """One plane's result at the image's own size."""

    probabilities: np.ndarray  # float32 (H, W), the foreground
    binary: np.ndarray  # bool (H, W): probabilities > threshold
    labels: np.ndarray  # uint16 (H, W), uint32 past 65,535 cells; 0 = background


def stored_threshold(meta: dict, override: float | None = None) -> tuple[float, str]:
    """The threshold to use and where it came from: ``override`` (config or command line),
    else the one the model file stores (chosen on validation images, or the fixed training
    setting), else 0.5 (``default``)."""
    if override is not None:
        return float(override), "config"
    stored = meta.get("threshold")
    if stored is None:
        return DEFAULT_THRESHOLD, "default"
    return float(stored["value"]), str(stored["source"])


def stored_filter(meta: dict, source: object = "model") -> ObjectFilter | None:
    """The object filter a model file stores (``meta["object_filter"]``), or None."""
    stored = meta.get("object_filter")
    if stored is None:
        return None
    try:
        return ObjectFilter.from_dict(stored, key="object_filter")
    except Exception as error:
        raise InputError(source, f"stored object filter is unusable: {error}") from error


def dihedral(array: np.ndarray, index: int, inverse: bool = False) -> np.ndarray:
    """The ``index``-th (0..7) of the 8 flips and quarter turns of (..., H, W), or its
    inverse: ``index % 4`` quarter turns, then a flip of the last axis for ``index >= 4``."""
    turns, flip = index % 4, index >= 4
    if not inverse:
        turned = np.rot90(array, turns, axes=(-2, -1))
        return np.ascontiguousarray(turned[..., ::-1] if flip else turned)
    unflipped = array[..., ::-1] if flip else array
    return np.ascontiguousarray(np.rot90(unflipped, -turns, axes=(-2, -1)))


def record_of(meta: dict, network, source: object) -> DatasetRecord:
    """The data set record a model file carries, checked against its network's inputs."""
    if not isinstance(meta.get("dataset"), dict) or "preprocessing" not in meta["dataset"]:
        raise InputError(
            source,
            "model file records no training geometry (written by an older protoseg?); retrain it",
        )
    record = DatasetRecord.from_dict(meta["dataset"], source)
    architecture = getattr(network, "architecture", {}) or {}
    if architecture.get("in_channels", record.channels) != record.channels:
        raise InputError(
            source,
            f"network takes {architecture['in_channels']} channel(s) but its data set had "
            f"{record.channels}",
        )
    return record


def binary_instances(
    binary: np.ndarray, method: str = "cc", min_distance: int = 10, min_area: int = 0
) -> np.ndarray:
    """Instance labels (uint16, uint32 past 65,535; 0 = background) of a binary cell mask.

    ``cc``: connected components (touching cells stay one object). ``watershed``: cells
    are split at the necks between them: seeds at the maxima of the distance to the
    background at least ``min_distance`` pixels apart, flooded over the inverted
    distance within the mask. Objects smaller than ``min_area`` pixels are dropped.
    """
    if method not in BINARY_INSTANCE_METHODS:
        raise ValueError(
            f"unknown instance method '{method}'; use one of {', '.join(BINARY_INSTANCE_METHODS)}"
        )
    binary = np.asarray(binary, dtype=bool)
    if min_area > 0:
        binary = remove_small_objects(binary, max_size=min_area - 1)
    # Connected components are numbered 1..N already (skimage.measure.label), so only the
    # watershed's labels need relabelling: a full-image relabel costs more than the labelling
    # itself, 49 times per image when training chooses its threshold.
    labels = connected_components(binary, connectivity=1)
    if method == "watershed" and labels.max() > 0:
        watershed_labels = _distance_watershed(binary, labels, min_distance)
        labels, _, _ = relabel_sequential(watershed_labels.astype(np.int64))
    return compact_labels(labels)


def _distance_watershed(binary: np.ndarray, components: np.ndarray, min_distance: int):
    distance = ndi.distance_transform_edt(binary)
    peaks = peak_local_max(
        distance, min_distance=max(1, int(min_distance)), labels=components, exclude_border=False
    )
    markers = np.zeros(binary.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # A component without a peak (e.g. a thin sliver) keeps one seed of its own.
    unseeded = np.setdiff1d(np.unique(components[binary]), np.unique(components[markers > 0]))
    for index, component in enumerate(unseeded, start=len(peaks) + 1):
        ys, xs = np.nonzero(components == component)
        markers[ys[0], xs[0]] = index
    return watershed(-distance, markers, mask=binary)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as uint16, or uint32 past 65,535 objects (a weak network at a low threshold
    on a large image: noise, which the scores should count, not a reason to stop)."""
    fits = labels.max(initial=0) <= np.iinfo(np.uint16).max
    return labels.astype(np.uint16 if fits else np.uint32)


class Segmenter:
    """A trained network and everything between an image and its cells.

    Build it with :meth:`from_file` (a ``model.pt``), :meth:`from_meta` (a network and its
    file's metadata) or directly from a network and its :class:`DatasetRecord` (training,
    before any file exists). ``instances``: ``auto`` (the network's own cells where it has
    instance outputs, else connected components), ``model``, ``cc`` or ``watershed``
    (:func:`binary_instances`); ``own``: the network's stored watershed (mode, settings), or
    None for a network that predicts foreground only.
    """

    def __init__(
        self,
        network,
        record: DatasetRecord,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        threshold_source: str = "default",
        own: dict | None = None,
        name: str = "model",
        device: str = "cpu",
        precision: str = "fp32",
        tile=None,
        overlap: float = 0.5,
        batch_size: int = 4,
        instances: str = "auto",
        min_distance: int = 10,
        min_area: int = 0,
        object_filter: ObjectFilter | None = None,
        tta: bool = False,
        blending: str = "gaussian",
        fold_batch_norm: bool = False,
    ):
        if instances not in INSTANCE_CHOICES:
            raise ValueError(
                f"unknown instance method '{instances}'; use one of {', '.join(INSTANCE_CHOICES)}"
            )
        if instances == "model" and own is None:
            raise InputError(
                name,
                "instances 'model' needs a model with instance outputs (model.instances "
                "boundaries or distances); this one predicts foreground only (use cc or "
                "watershed)",
            )
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must lie between 0 and 1, got {threshold}")
        from protoseg.model import fold_batch_norm as folded  # torch, once a network is used

        # The network as given (training may still be updating it), and the one that runs:
        # with fold_batch_norm a copy with batch norm folded into the convolutions, the
        # same function and 1.2x faster in bfloat16, whose rounding differs from the
        # unfolded network's (docs/benchmarks/fold_batch_norm.md).
        self.given_network, self.fold_batch_norm = network, bool(fold_batch_norm)
        self.network = folded(network) if self.fold_batch_norm else network
        self.record, self.name = record, name
        self.threshold, self.threshold_source = float(threshold), threshold_source
        self.own = own
        self.device, self.precision = str(device), precision
        self.tile = tuple(int(v) for v in tile) if tile is not None else record.preprocessing.tile
        self.overlap, self.batch_size = float(overlap), int(batch_size)
        # The instance step: the network's own watershed, or one of a binary mask.
        uses_own = own is not None and instances in ("auto", "model")
        self.own_step = own if uses_own else None
        self.method = own["mode"] if uses_own else ("cc" if instances == "auto" else instances)
        self.min_distance, self.min_area = int(min_distance), int(min_area)
        # Learned on validation images (model.pt's object_filter); None or all zero: off.
        self.object_filter = object_filter if object_filter and object_filter.active else None
        self.tta = bool(tta)
        # How overlapping tiles are averaged (inference.sliding_window); only the ablation
        # of benchmarks/realdata_ablation.py sets anything but Gaussian.
        self.blending = blending

    # ------------------------------------------------------------ building one
    @classmethod
    def from_meta(
        cls, network, meta: dict, name: str = "model", record=None, **settings
    ) -> Segmenter:
        """A segmenter of a network and the metadata of its model file (threshold, data set
        record, stored instance settings); ``settings`` as :meth:`__init__` takes them,
        ``threshold`` None (or left out) for the model's own. ``record``: the data set the
        network is applied to (evaluation), instead of the one the file records."""
        record = record or record_of(meta, network, name)
        threshold, source = stored_threshold(meta, settings.pop("threshold", None))
        out_channels = int((getattr(network, "architecture", None) or {}).get("out_channels", 1))
        own = model_instances(meta, out_channels, name)
        settings.setdefault("object_filter", stored_filter(meta, name))
        return cls(
            network,
            record,
            threshold=threshold,
            threshold_source=source,
            own=own,
            name=name,
            **settings,
        )

    @classmethod
    def from_file(
        cls,
        model_path: str | Path,
        section: str = "predict",
        names: dict | None = None,
        record=None,
        **settings,
    ) -> tuple[Segmenter, dict]:
        """The segmenter of a ``model.pt`` and the file's metadata.

        ``settings``: keys of the config's ``section`` (``predict`` or ``evaluate``: tile,
        overlap, threshold, device, precision, ...; those left out take the schema's
        defaults). Device and precision are checked here, each bad value named by its key
        (``section.KEY``, or what ``names`` calls it, e.g. a command-line option).
        ``record``: as :meth:`from_meta` takes it.
        """
        from protoseg.model import load_model

        names = {key: f"{section}.{key}" for key in ("device", "precision")} | (names or {})
        settings = complete_section(section, settings)
        device, precision = resolve_placement(
            settings["device"], settings["precision"], names["device"], names["precision"]
        )
        network, meta = load_model(model_path, device=device)
        chosen = {
            key: settings[key]
            for key in (
                "tile",
                "overlap",
                "batch_size",
                "instances",
                "min_distance",
                "min_area",
                "tta",
                "fold_batch_norm",
            )
            if key in settings and settings[key] is not None
        }
        if section == "evaluate":
            chosen.pop("instances", None)  # evaluate.instances is the truth's, not the step
        segmenter = cls.from_meta(
            network,
            meta,
            name=str(model_path),
            record=record,
            threshold=settings.get("threshold"),
            device=device,
            precision=precision,
            **chosen,
        )
        return segmenter, meta

    def with_settings(self, **settings) -> Segmenter:
        """The same network with other settings (tile, threshold, instances, ...)."""
        current = {
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "own": self.own,
            "name": self.name,
            "device": self.device,
            "precision": self.precision,
            "tile": self.tile,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "instances": self._instance_choice(),
            "min_distance": self.min_distance,
            "min_area": self.min_area,
            "object_filter": self.object_filter,
            "tta": self.tta,
            "blending": self.blending,
            "fold_batch_norm": self.fold_batch_norm,
        }
        if settings.get("threshold") is not None and "threshold_source" not in settings:
            settings["threshold_source"] = "config"
        settings = {key: value for key, value in settings.items() if value is not None}
        return Segmenter(self.given_network, self.record, **(current | settings))

    def _instance_choice(self) -> str:
        if self.own_step is not None:
            return "auto"
        return self.method

    # ------------------------------------------------------------ what it was trained on
    @property
    def preprocessing(self) -> Preprocessing:
        return self.record.preprocessing

    @property
    def context_planes(self) -> int:
        return int(self.record.context_planes)

    @property
    def in_channels(self) -> int:
        return self.record.channels

    @property
    def colour(self) -> str:
        return self.preprocessing.colour

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.record.modalities)

    @property
    def instance_outputs(self) -> bool:
        """Whether the network predicts more than foreground (its own instances)."""
        return self.own is not None

    # ------------------------------------------------------------ image to probabilities
    def prepare(self, image: np.ndarray, source: object = "image", pixel_size=None) -> np.ndarray:
        """A raw image as the network's input (C, H, W) at the training scale."""
        return prepare_image(image, self.preprocessing, source, pixel_size)

    def outputs(self, prepared: np.ndarray, size=None) -> np.ndarray:
        """Every output channel (K, H, W), float32, of an input prepared at the training
        scale (a stored sample, a focal window), by the sliding window; brought back to
        ``size`` = (height, width) when given. With ``tta`` the mean over the 8 flips and
        quarter turns of the input, each output turned back."""
        if not self.tta:
            outputs = self._window(prepared)
        else:
            outputs = self._window(prepared)
            for index in range(1, 8):
                turned = self._window(dihedral(prepared, index))
                outputs += dihedral(turned, index, inverse=True)
            outputs /= 8.0
        return outputs if size is None else self.at_size(outputs, size)

    def _window(self, prepared: np.ndarray) -> np.ndarray:
        return sliding_window(
            self.network,
            prepared,
            self.tile,
            self.overlap,
            device=self.device,
            batch_size=self.batch_size,
            precision=self.precision,
            all_outputs=True,
            blending=self.blending,
        )

    @staticmethod
    def at_size(outputs: np.ndarray, size) -> np.ndarray:
        """Outputs (K, H, W) at the training scale brought back to ``size`` (linear)."""
        return to_original_size(outputs, int(size[0]), int(size[1]))

    def sample_outputs(self, split, index: int) -> np.ndarray:
        """:meth:`outputs` of a data set's stored sample, at the training scale."""
        image, _ = split.arrays(index)
        return self.outputs(image)

    def probabilities(self, image: np.ndarray, source: object = "image", pixel_size=None):
        """Cell probabilities (H, W) float32 of a raw image, at the image's own size."""
        height, width = np.asarray(image).shape[:2]
        return self.outputs(self.prepare(image, source, pixel_size), (height, width))[0]

    # ------------------------------------------------------------ probabilities to cells
    def cells(
        self, outputs: np.ndarray, threshold: float | None = None, filtered: bool = True
    ) -> np.ndarray:
        """Instance labels (uint16; uint32 past 65,535) of outputs (K, H, W) at any
        resolution: the network's own watershed, or connected components / distance
        watershed of the foreground above the threshold; objects under ``min_area`` pixels
        dropped, then (``filtered``) those the object filter drops."""
        threshold = self.threshold if threshold is None else float(threshold)
        if self.own_step is None:
            labels = binary_instances(
                outputs[0] > threshold, self.method, self.min_distance, self.min_area
            )
        else:
            settings = dict(self.own_step["settings"])
            settings["min_size"] = max(int(settings["min_size"]), self.min_area)
            labels = compact_labels(
                own_watershed(outputs, self.own_step["mode"], threshold, settings)
            )
        if filtered and self.object_filter is not None:
            labels = self.object_filter.apply(labels, outputs[0])
        return labels

    def segment_prepared(self, prepared: np.ndarray, size) -> Segmentation:
        """Probabilities, binary mask and cells of an input already prepared, at ``size``."""
        outputs = self.outputs(prepared, size)
        return Segmentation(outputs[0], outputs[0] > self.threshold, self.cells(outputs))

    def segment_image(
        self, image: np.ndarray, source: object = "image", pixel_size=None
    ) -> Segmentation:
        """:meth:`segment_prepared` of a raw image, at its own size."""
        prepared = self.prepare(image, source, pixel_size)
        return self.segment_prepared(prepared, np.asarray(image).shape[:2])

    def segment(self, image: np.ndarray, source: object = "image", pixel_size=None) -> np.ndarray:
        """Cells (uint16 labels, 0 = background) of a raw image, at its own size."""
        return self.segment_image(image, source, pixel_size).labels

    def describe(self) -> str:
        """One line for logs: what this segmenter does."""
        return (
            f"{self.name}: {self.record.geometry} geometry, device {self.device}, "
            f"{self.precision}, threshold {self.threshold:.2f} ({self.threshold_source}), "
            f"instances {self.method}"
            + (f", object filter: {self.object_filter.describe()}" if self.object_filter else "")
            + (", test-time augmentation (8 flips/turns)" if self.tta else "")
        )
