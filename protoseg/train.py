"""Training a U-Net on a built data set, resumable and reproducible: :class:`Trainer`.

Two geometries (:mod:`protoseg.dataset`):

* ``resize`` (the study's recipe): each epoch is one shuffled pass over the whole resized
  training images, with light augmentation (flips, quarter turns) of each batch;
* ``patches``: each epoch is ``samples_per_epoch`` random patches (:mod:`protoseg.sampling`),
  a ``foreground_share`` of every batch centred on cells, augmented by flips, quarter turns,
  scale, brightness, contrast and gamma.

Both: Adam, one loss from :mod:`protoseg.losses`, a learning rate stepped every batch
(``cyclic``: the study's triangle between ``lr_min`` and ``lr_max``, ``lr_half_cycle_epochs``
epochs up; ``cosine``: from ``lr_max`` down to ``lr_min``), a seed for every random source,
and a precision (``train.precision``; :func:`protoseg.device.resolve_precision`: bf16
autocast + channels_last on CPUs that compute bf16 natively and on GPUs that support it,
fp16 + GradScaler on older GPUs; losses in float32). On CUDA the training network is
compiled (``train.compile: auto``; a failed compilation falls back to eager mode with a
warning in the log), batches come from ``train.workers`` persistent worker processes into
pinned memory, and checkpoints are copied to the CPU and written by a background thread.
``train.device: cuda`` on a machine with several GPUs takes one that no other protoseg
job there holds (:func:`protoseg.device.claim_gpu`); ``cuda:N`` names one. With a validation split the model is scored on it every ``validate_every``
epochs by the one inference path (pooled F1 at the best threshold); ``keep_best`` keeps the
weights of the best epoch rather than the last, and the threshold is chosen on the
validation images (``threshold: auto`` or ``validation``), stored in ``model.pt`` and used by
evaluation and prediction. Without a validation split the threshold is 0.5 (a warning says
so) or the number ``train.threshold`` gives.

A network with instance outputs (``model.instances``: ``boundaries`` or ``distances``,
:mod:`protoseg.instances`) trains its foreground with the configured loss and its extra
outputs with the mode's fixed loss (:class:`protoseg.losses.InstanceOutputLoss`) on targets
made from the data set's instance labels; after the foreground threshold, its watershed
settings are chosen on the validation split (``train.watershed: auto``) or taken from the
config, and stored in ``model.pt``.

Outputs in ``model_dir``: ``model.pt`` (see :mod:`protoseg.model`; byte-identical for
identical runs on one machine), ``history.csv`` (one row per epoch), ``curve.png`` and
``checkpoints/epoch-NNN.pt`` (model, optimiser, scheduler, scaler, every RNG state, history,
best weights). A rerun resumes after the newest readable checkpoint written with the same
settings and data; on the CPU the result is bitwise that of an uninterrupted run. Settings
decided after the last epoch (:data:`NOT_IN_FINGERPRINT`) do not count: a finished run whose
kept epoch, threshold or object filter changes is finished again from its last checkpoint. A
checkpoint that cannot be read is moved aside (``*.pt.unreadable``) with a warning naming it.
A non-finite loss stops training with :class:`TrainingError`; the checkpoints of the good
epochs stay. After the last epoch the batch-norm statistics are recomputed over training
images with the final weights (``recalibrate_bn``, see :func:`recalibrate_batch_norm`).

Batches stream from the data set's memory-mapped shards, so memory does not grow with the
data set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from numbers import Number
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from protoseg import dataset as datasets
from protoseg import instances as instance_outputs
from protoseg import metrics
from protoseg import objects as object_rules
from protoseg.config import complete_section
from protoseg.config_checks import check_threshold_setting
from protoseg.device import (
    autocast_dtype,
    claim_gpu,
    resolve_compile,
    resolve_device,
    resolve_precision,
    uses_channels_last,
)
from protoseg.ema import WeightAverage
from protoseg.errors import ConfigError, InputError, ProtosegError
from protoseg.evaluate import TruthReader, threshold_counts
from protoseg.io import atomic_path, save_figure, write_csv
from protoseg.losses import InstanceOutputLoss, get_loss
from protoseg.model import architecture_from_config, build_model, count_parameters, save_model
from protoseg.sampling import PatchSampler
from protoseg.segmenter import Segmenter
from protoseg.transforms import Augmentation

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# Batches per epoch of the patches geometry when train.samples_per_epoch is null.
DEFAULT_PATCH_BATCHES = 32
# The sampler's epoch number of the batch-norm recalibration pass: draws no epoch makes.
RECALIBRATION_EPOCH = 1_000_000
# A joint threshold-and-filter choice scoring this much less (matched F1) on a validation
# image left out of it than on the images it was made on is warned about.
HELD_OUT_WARNING = 0.1
HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "lr",
    "val_f1",
    "val_threshold",
    "val_f1_at_05",
    "seconds",
]


class TrainingError(ProtosegError):
    """Training cannot go on (e.g. the loss became NaN); the message names the model and epoch."""


def settings_from_config(train_cfg: dict) -> dict:
    """Config ``train`` completed with the schema's defaults and checked; ``losses`` (one
    model per loss) and ``watershed`` (instance models only) left out."""
    settings = complete_section("train", train_cfg)
    settings.pop("losses", None)
    settings.pop("watershed", None)
    if not float(settings["lr_min"]) <= float(settings["lr_max"]):
        raise ConfigError(
            "train.lr_max",
            f"need lr_min <= lr_max, got {settings['lr_min']} and {settings['lr_max']}",
        )
    check_threshold_setting(settings["threshold"])
    # The object-level keys and augment.noise stay out of the settings (and the fingerprint
    # and model.pt) at their defaults, so models trained without them are what they were.
    for key, default in (("threshold_objective", "pixel"), ("object_filter", "off"), ("ema", None)):
        if settings.get(key, default) == default:
            settings.pop(key, None)
    if not settings.get("augment", {}).get("noise"):
        settings["augment"] = {k: v for k, v in settings["augment"].items() if k != "noise"}
    if isinstance(settings.get("object_filter"), dict):
        object_rules.ObjectFilter.from_dict(settings["object_filter"], "train.object_filter")
    return settings


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------- augmentation (resize geometry)
def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    flip: bool,
    rotate90: bool,
):
    """Random flips and quarter turns, drawn per sample from ``generator``, applied alike to
    image and mask (the resize geometry's whole images; patches are augmented by the sampler).

    Quarter turns of non-square images would change their shape, so those get half turns only.
    """
    if not (flip or rotate90):
        return images, masks
    count = images.shape[0]
    draws = torch.randint(
        0, 4, (count, 3), generator=generator
    )  # always drawn: same RNG use whatever is on
    square = images.shape[-1] == images.shape[-2]
    out_images, out_masks = [], []
    for index in range(count):
        image, mask = images[index], masks[index]
        if flip and draws[index, 0] % 2:
            image, mask = image.flip(-1), mask.flip(-1)
        if flip and draws[index, 1] % 2:
            image, mask = image.flip(-2), mask.flip(-2)
        if rotate90:
            turns = int(draws[index, 2]) if square else 2 * (int(draws[index, 2]) % 2)
            if turns:
                image, mask = (
                    torch.rot90(image, turns, (-2, -1)),
                    torch.rot90(mask, turns, (-2, -1)),
                )
        out_images.append(image)
        out_masks.append(mask)
    return torch.stack(out_images), torch.stack(out_masks)


@torch.no_grad()
def recalibrate_batch_norm(model, loader, device, precision: str = "fp32") -> int:
    """Recompute every BatchNorm layer's running mean and variance over ``loader`` with the final weights.

    During training the running statistics are moving averages over weights that kept
    changing (fast, near the top of the cyclic learning rate), so in eval mode they can
    miss what the final network computes; with two modalities of very different
    brightness in one batch (the ``all`` data set) that cost the demo 10-60 points of F1.
    One pass over training images (no gradients, no augmentation, fixed order) sets
    them to the exact averages for the final weights. Returns the number of layers reset.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the pass
    model.train()
    dtype = autocast_dtype(precision)
    for images, _ in loader:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(_to_input(images.to(device), precision))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()
    return len(norms)


def _to_input(images: torch.Tensor, precision: str) -> torch.Tensor:
    if not uses_channels_last(precision):
        return images
    return images.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- checkpoints
def checkpoint_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / CHECKPOINT_DIR


def checkpoint_path(model_dir: str | Path, epoch: int) -> Path:
    return checkpoint_dir(model_dir) / f"epoch-{epoch:03d}.pt"


def latest_checkpoint(model_dir: str | Path) -> Path | None:
    found = sorted(checkpoint_dir(model_dir).glob("epoch-*.pt"))
    return found[-1] if found else None


def load_newest_checkpoint(model_dir: str | Path, device) -> tuple[Path, dict] | None:
    """The newest checkpoint that can be read, with its contents. One that cannot (a run
    killed while the disk filled, a truncated copy) is renamed ``*.pt.unreadable`` with a
    warning naming it, and the next older one is tried."""
    for path in sorted(checkpoint_dir(model_dir).glob("epoch-*.pt"), reverse=True):
        try:
            # Our own file: it holds RNG tuples, which weights_only refuses.
            return path, torch.load(path, map_location=device, weights_only=False)
        except Exception as error:  # torch raises many types for damaged files
            aside = path.with_name(path.name + ".unreadable")
            path.replace(aside)
            warnings.warn(
                f"{path}: unreadable checkpoint ({type(error).__name__}: {str(error)[:120]}); "
                f"moved to {aside.name}, trying the one before",
                stacklevel=2,
            )
    return None


def _prune_checkpoints(model_dir: Path, keep: int) -> None:
    found = sorted(checkpoint_dir(model_dir).glob("epoch-*.pt"))
    for old in found[: max(len(found) - max(keep, 1), 0)]:
        old.unlink()


def _dataset_stamp(dataset_dir: str | Path) -> list:
    """Name, size and modification time of the manifest and every shard: a rebuilt data set
    (new masks, say) gets a new stamp, so old checkpoints are not resumed on new data."""
    folder = Path(dataset_dir)
    files = [folder / datasets.MANIFEST_NAME, *sorted((folder / datasets.SHARD_DIR).glob("*.npy"))]
    return [
        (path.name, path.stat().st_size, path.stat().st_mtime_ns)
        for path in files
        if path.is_file()
    ]


# Settings a checkpoint may differ in and still be resumed. Where and how fast a run goes:
# compiled or eager, the weights, checkpoints and model.pt are the same module's. And what
# is decided after the last epoch (Trainer.finish: the kept epoch, batch-norm statistics,
# threshold, watershed, object filter): a finished run whose decisions change is finished
# again from its last checkpoint in seconds, as a straight run with them would end.
NOT_IN_FINGERPRINT = (
    "device",
    "workers",
    "keep_checkpoints",
    "compile",
    "keep_best",
    "recalibrate_bn",
    "threshold",
    "threshold_objective",
    "object_filter",
    "watershed",
)


def _fingerprint(architecture: dict, settings: dict, loss: str, info: dict, stamp: list) -> str:
    """What a checkpoint must match to be resumed: same model, recipe, loss and data."""
    recipe = {k: v for k, v in settings.items() if k not in NOT_IN_FINGERPRINT}
    return json.dumps(
        {
            "architecture": architecture,
            "train": recipe,
            "loss": loss,
            "dataset": info,
            "files": stamp,
        },
        sort_keys=True,
        default=str,
    )


# ---------------------------------------------------------------- outputs
def plot_curve(history: pd.DataFrame, title: str = ""):
    """Training loss, validation F1 (where present) and learning rate against epoch."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2))
    loss_axis, lr_axis = figure.subplots(1, 2)
    loss_axis.plot(history["epoch"], history["train_loss"], marker=".", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    if "val_f1" in history and history["val_f1"].notna().any():
        f1_axis = loss_axis.twinx()
        scored = history[history["val_f1"].notna()]
        f1_axis.plot(
            scored["epoch"], scored["val_f1"], marker=".", color="tab:orange", label="validation F1"
        )
        f1_axis.set_ylabel("validation F1 (best threshold)")
        f1_axis.set_ylim(0, 1)
        f1_axis.legend(loc="upper right")
    loss_axis.legend(loc="upper left")
    lr_axis.plot(history["epoch"], history["lr"], marker=".", color="tab:green")
    lr_axis.set_xlabel("epoch")
    lr_axis.set_ylabel("learning rate (epoch mean)")
    lr_axis.set_yscale("log")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


# Batches each worker keeps ready on CUDA (DataLoader's default is 2).
CUDA_PREFETCH = 4
# Worker processes of train.workers: auto on CUDA: one per core left, at most this many.
MAX_AUTO_WORKERS = 8


def loader_workers(setting, device: torch.device) -> int:
    """DataLoader worker processes for ``train.workers``: a number as given; ``auto``: none
    on a CPU or MPS (batches are read in the training process, as fast on a few cores and
    the same numbers), on CUDA one per CPU core this process may use beside the training
    loop, at most :data:`MAX_AUTO_WORKERS`."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_AUTO_WORKERS, (cores or 2) - 1))


def make_loader(
    data,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    workers: int,
    device: torch.device,
):
    """Batches of ``data``. On CUDA: pinned memory (asynchronous copies), and workers that
    stay alive between epochs (unless ``data`` changes each epoch through ``set_epoch``,
    which live workers would not see) and keep :data:`CUDA_PREFETCH` batches ready each.
    On a CPU: as it always was (the CPU results stay bitwise the same)."""
    cuda = device.type == "cuda"
    extra = {}
    if cuda and workers:
        extra["prefetch_factor"] = CUDA_PREFETCH
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=bool(cuda and workers and not hasattr(data, "set_epoch")),
        worker_init_fn=_one_thread_per_worker if workers else None,
        **extra,
    )


def _one_thread_per_worker(_worker_id: int) -> None:
    """Workers cut patches with numpy and OpenCV; one thread each keeps ``workers`` processes
    from multiplying the training process's threads on the same cores."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def cpu_copy(value):
    """``value`` (a state dict: nested dicts and lists of tensors and numbers) with every
    tensor copied to the CPU, so that it can be written while training changes the original."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: cpu_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [cpu_copy(item) for item in value]
    return value


class CompiledForward:
    """``torch.compile(model)`` for the training steps, falling back to the eager module,
    with a warning in the log, when compiling fails (torch compiles on the first call and
    again on a new input shape, e.g. a smaller last batch). The module itself is not
    wrapped, so its state_dict, checkpoints and model.pt are those of an eager run."""

    def __init__(self, model: torch.nn.Module, name: str = "model"):
        self.model, self.name, self.failed = model, name, False
        # Static shapes: the smaller last batch gets a graph of its own, not slower dynamic ones.
        self.compiled = torch.compile(model, dynamic=False)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.model(inputs)
        try:
            return self.compiled(inputs)
        except Exception as error:  # torch raises many types from its compilers
            self.failed = True
            log.warning(
                "%s: torch.compile failed (%s: %s); training goes on in eager mode "
                "(set train.compile: false to skip compiling)",
                self.name,
                type(error).__name__,
                str(error).strip().splitlines()[0][:200] if str(error).strip() else "",
            )
            return self.model(inputs)


# ---------------------------------------------------------------- the trainer
class Trainer:
    """One model's training: set up in ``__init__``, then :meth:`run` (resume, epochs,
    validation, checkpoints, the final model and its threshold)."""

    def __init__(
        self,
        dataset_dir: str | Path,
        model_dir: str | Path,
        *,
        model_cfg: dict,
        train_cfg: dict,
        loss: str,
        name: str | None = None,
        progress: bool = True,
        inference: dict | None = None,
    ):
        self.dataset_dir, self.model_dir = Path(dataset_dir), Path(model_dir)
        self.name = name or self.model_dir.name
        self.loss_name, self.model_cfg, self.progress = loss, dict(model_cfg), progress
        self._read_settings(train_cfg, model_cfg, inference)
        self.loss_fn = get_loss(loss)
        self._open_data(dataset_dir)
        self.extra_loss = InstanceOutputLoss(self.instances) if self.instances != "none" else None
        self.architecture = architecture_from_config(model_cfg, self.record.channels)
        self.fingerprint = _fingerprint(
            self.architecture, self.settings, loss, self.info, _dataset_stamp(dataset_dir)
        )
        self.seed = int(self.settings["seed"])
        seed_everything(self.seed)
        self._build_network(model_cfg)
        decay = self.settings.get("ema")
        self.ema = WeightAverage(self.model, decay) if decay else None
        self._validation_cache: list | None = None
        self._build_loader()
        self.epochs = int(self.settings["epochs"])
        self.optimizer, self.scheduler = self._optimiser()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.history: list[dict] = []
        self.best: dict | None = None  # epoch, val_f1, weights of the best validated epoch
        # The background checkpoint writer (off the CPU) and its error, if it failed.
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None

    def _read_settings(self, train_cfg: dict, model_cfg: dict, inference: dict | None) -> None:
        """Training settings, instance mode, device and precision, validation's window."""
        # The sliding window of validation: evaluation's, so the threshold fits it.
        inference = complete_section("evaluate", inference)
        self.window = {"tile": inference["tile"], "overlap": float(inference["overlap"])}
        # Validation runs the network as evaluation does: batch norm folded or not.
        self.fold_batch_norm = bool(inference["fold_batch_norm"])
        # The decisions after the last epoch see evaluation's outputs: with evaluate.tta the
        # mean over the 8 flips and turns (each epoch's validation does not: 8x its cost).
        self.final_tta = bool(inference["tta"])
        # The resolution evaluation scores at: where the watershed settings are chosen.
        self.resolution = inference["resolution"]
        self.settings = settings = settings_from_config(train_cfg)
        self.instances = instance_outputs.check_mode(
            complete_section("model", model_cfg)["instances"]
        )
        if self.instances != "none":
            # Only here: a binary model's settings (and its fingerprint) stay as they were.
            settings["watershed"] = complete_section("train", train_cfg)["watershed"]
            instance_outputs.check_setting(settings["watershed"], self.instances)
        self.device = torch.device(claim_gpu(resolve_device(settings["device"], "train.device")))
        self.precision = resolve_precision(settings["precision"], self.device.type)
        self.autocast = autocast_dtype(self.precision)
        self.compile = resolve_compile(settings["compile"], self.device.type)
        self.workers = loader_workers(settings["workers"], self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # Fixed input sizes: let cuDNN pick the fastest convolutions (GPU runs are not
            # bitwise reproducible anyway; the CPU path is).
            torch.backends.cudnn.benchmark = True

    def _open_data(self, dataset_dir) -> None:
        """The data set's record and its train and validation splits, checked."""
        self.info = datasets.read_info(dataset_dir)
        self.record = datasets.DatasetRecord.from_dict(
            self.info, Path(dataset_dir) / datasets.INFO_NAME
        )
        self.train_split = datasets.open_split(dataset_dir, "train")
        self.validation_split = datasets.open_split(dataset_dir, "validation")
        if len(self.train_split) == 0:
            raise ConfigError("split.test", f"{dataset_dir}: the train split is empty")
        has_validation = len(self.validation_split) > 0
        check_threshold_setting(self.settings["threshold"], has_validation)
        self.validating = has_validation
        # Why nothing is chosen on validation images, when it is not.
        self.unvalidated = None if has_validation else "no validation split"
        manifest = self.validation_split.manifest
        if has_validation and "cells" in manifest and int(manifest["cells"].sum()) == 0:
            # Every score there is 0: the best epoch and threshold would be arbitrary.
            self.validating, self.unvalidated = False, "no cells in the validation split"
            log.warning(
                "%s: the validation split (%d images) holds no cell, so nothing is chosen on "
                "it: the last epoch is kept, the threshold is 0.5 unless train.threshold sets "
                "one, and every object is kept (give split.validation states with cells)",
                self.name,
                len(self.validation_split),
            )
        if self.instances != "none" and not self.record.has_instances:
            raise InputError(
                self.dataset_dir / datasets.INFO_NAME,
                f"model.instances is '{self.instances}' but this data set stores no instance "
                "labels (built for a binary model); rebuild it with model.instances set",
            )

    def _build_network(self, model_cfg: dict) -> None:
        self.model = build_model(model_cfg, self.record.channels).to(self.device)
        if uses_channels_last(self.precision):
            self.model = self.model.to(memory_format=torch.channels_last)
        # torch.compile wraps the network for the training steps only; weights, checkpoints
        # and inference use the plain module (its state_dict has no wrapper prefix).
        self.forward = CompiledForward(self.model, self.name) if self.compile else self.model

    def _build_loader(self) -> None:
        """Random patches (patches geometry) or the shuffled stored samples (resize)."""
        self.shuffle_generator = torch.Generator().manual_seed(self.seed)
        self.augment_generator = torch.Generator().manual_seed(self.seed + 1)
        batch_size, workers = int(self.settings["batch_size"]), self.workers
        self.augment = self.settings["augment"]
        if self.record.geometry == "patches":
            self.sampler = self._patch_sampler(Augmentation.from_config(self.augment))
            self.loader = make_loader(self.sampler, batch_size, False, None, workers, self.device)
        else:
            self.sampler = None
            self.loader = make_loader(
                datasets.TorchSplit(self.train_split, self.instances),
                batch_size,
                True,
                self.shuffle_generator,
                workers,
                self.device,
            )
        self.steps_per_epoch = len(self.loader)

    def _patch_sampler(
        self, augmentation: Augmentation, foreground_share=None, targets: bool = True
    ) -> PatchSampler:
        batch_size = int(self.settings["batch_size"])
        samples = self.settings["samples_per_epoch"] or DEFAULT_PATCH_BATCHES * batch_size
        return PatchSampler(
            self.train_split,
            self.record.patch_size,
            samples_per_epoch=int(samples),
            batch_size=batch_size,
            foreground_share=float(
                self.settings["foreground_share"] if foreground_share is None else foreground_share
            ),
            augmentation=augmentation,
            seed=self.seed,
            instances=self.instances if targets else "none",
        )

    def _optimiser(self):
        settings, steps = self.settings, self.steps_per_epoch
        lr_min, lr_max = float(settings["lr_min"]), float(settings["lr_max"])
        if settings["schedule"] == "cosine":
            optimizer = torch.optim.Adam(self.model.parameters(), lr=lr_max)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, self.epochs * steps), eta_min=lr_min
            )
            return optimizer, scheduler
        optimizer = torch.optim.Adam(self.model.parameters(), lr=lr_min)
        scheduler = torch.optim.lr_scheduler.CyclicLR(
            optimizer,
            base_lr=lr_min,
            max_lr=lr_max,
            step_size_up=max(1, round(float(settings["lr_half_cycle_epochs"]) * steps)),
            mode="triangular",
            cycle_momentum=False,  # Adam has no momentum term to cycle
        )
        return optimizer, scheduler

    # ------------------------------------------------------------ resuming
    def resume(self) -> int:
        """Load the newest readable checkpoint of these settings; the first epoch to run."""
        found = load_newest_checkpoint(self.model_dir, self.device)
        if found is None:
            return 1
        path, state = found
        if state.get("fingerprint") != self.fingerprint:
            warnings.warn(
                f"{path}: written with other settings or data; training {self.name} from scratch",
                stacklevel=2,
            )
            for old in checkpoint_dir(self.model_dir).glob("epoch-*.pt"):
                old.unlink()
            return 1
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.augment_generator.set_state(state["augment_generator"])
        self.history = state["history"]
        self.best = state.get("best")
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        log.info("%s: resuming from %s (epoch %d done)", self.name, path, state["epoch"])
        return int(state["epoch"]) + 1

    def save_checkpoint(self, epoch: int) -> None:
        """Everything :meth:`resume` needs. Off the CPU the state is first copied to the CPU
        (the only moment the GPU waits) and written by a background thread while the next
        epoch runs; :meth:`wait_for_checkpoint` waits for it. On the CPU: written here."""
        state = {
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "history": list(self.history),
            "best": self.best,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        self.wait_for_checkpoint()
        if self.device.type == "cpu":
            self._write_checkpoint(epoch, state)
            return
        for part in ("model", "optimizer", "scaler", "ema"):
            if part in state:
                state[part] = cpu_copy(state[part])
        self._writer = threading.Thread(
            target=self._write_checkpoint, args=(epoch, state), name=f"checkpoint-{epoch}"
        )
        self._writer.start()

    def _write_checkpoint(self, epoch: int, state: dict) -> None:
        try:
            with atomic_path(checkpoint_path(self.model_dir, epoch)) as tmp:
                torch.save(state, tmp)
            _prune_checkpoints(self.model_dir, int(self.settings["keep_checkpoints"]))
        except BaseException as error:
            if self.device.type == "cpu":
                raise
            self._writer_error = error  # raised in the training thread by wait_for_checkpoint

    def wait_for_checkpoint(self) -> None:
        """Wait until the checkpoint being written in the background is on disk; its
        error, if writing it failed."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()
        error, self._writer_error = self._writer_error, None
        if error is not None:
            raise error

    # ------------------------------------------------------------ one epoch
    def train_step(self, images: torch.Tensor, masks: torch.Tensor, epoch: int) -> torch.Tensor:
        """One optimisation step on a batch already on the device (and augmented): forward
        under autocast, loss, backward, the optimiser, the moving average and the schedule.
        Returns the batch's loss."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            self.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            logits = self.forward(_to_input(images, self.precision))
        if self.extra_loss is None:
            batch_loss = self.loss_fn(logits, masks)  # float32: the losses cast first
        else:
            batch_loss = self.loss_fn(logits[:, :1], masks[:, :1]) + self.extra_loss(
                logits[:, 1:], masks
            )
        if not torch.isfinite(batch_loss):
            good = latest_checkpoint(self.model_dir)
            raise TrainingError(
                f"model {self.name}: the loss became {batch_loss.item()} in epoch {epoch}; "
                f"last good checkpoint: {good if good else 'none (failed in the first epoch)'}. "
                "Lower train.lr_max or check the data set for bad values."
            )
        self.scaler.scale(batch_loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        with warnings.catch_warnings():
            # Under fp16 the scaler skips steps with overflowing gradients; the schedule goes on.
            warnings.filterwarnings(
                "ignore", message="Detected call of `lr_scheduler.step\\(\\)` before"
            )
            self.scheduler.step()
        return batch_loss

    def train_epoch(self, epoch: int) -> dict:
        started = time.perf_counter()
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        total, count, lrs = 0.0, 0, []
        bar = tqdm(
            self.loader,
            desc=f"{self.name} epoch {epoch}/{self.epochs}",
            unit="batch",
            disable=not self.progress,
            leave=False,
        )
        self.model.train()
        for images, masks in bar:
            # Augment after the transfer: on a GPU the flips run there, and the pinned batch
            # copies asynchronously (augmenting first would copy unpinned tensors on the CPU).
            images = images.to(self.device, non_blocking=True)
            masks = masks.to(self.device, non_blocking=True)
            if self.sampler is None:
                images, masks = augment_batch(
                    images,
                    masks,
                    self.augment_generator,
                    bool(self.augment["flip"]),
                    bool(self.augment["rotate90"]),
                )
            lrs.append(self.optimizer.param_groups[0]["lr"])
            batch_loss = self.train_step(images, masks, epoch)
            total += batch_loss.item() * images.shape[0]
            count += images.shape[0]
            bar.set_postfix(loss=f"{total / count:.4f}")
        row = {
            "epoch": epoch,
            "train_loss": total / count,
            "lr": float(np.mean(lrs)),
            "val_f1": math.nan,
            "val_threshold": math.nan,
            "val_f1_at_05": math.nan,
        }
        if self.validating and (
            epoch % int(self.settings["validate_every"]) == 0 or epoch == self.epochs
        ):
            row.update(self.validate())
            if self.best is None or row["val_f1"] > self.best["val_f1"]:
                weights = self.current_weights()
                self.best = {"epoch": epoch, "val_f1": row["val_f1"], "model": weights}
        row["seconds"] = time.perf_counter() - started
        return row

    def segmenter(self, **settings) -> Segmenter:
        """The network as evaluation will use it: the same sliding window and precision;
        ``settings`` (threshold, own, ...) as :class:`Segmenter` takes them."""
        return Segmenter(
            self.model,
            self.record,
            name=self.name,
            device=str(self.device),
            precision=self.precision,
            tile=self.window["tile"],
            overlap=self.window["overlap"],
            fold_batch_norm=self.fold_batch_norm,
            batch_size=int(self.settings["batch_size"]),
            **settings,
        )

    def current_weights(self) -> dict:
        """A CPU copy of the weights validation scores: the moving average with ``ema``."""
        state = self.ema.weights(self.model) if self.ema is not None else self.model.state_dict()
        return {k: v.detach().clone().cpu() for k, v in state.items()}

    def validate(self) -> dict:
        """Pooled validation F1 at the best threshold of the grid, and at 0.5 (of the moving
        average of the weights with ``ema``)."""
        if self.ema is not None:
            with self.ema.applied(self.model):
                counts = threshold_counts(self.segmenter(), self.validation_split)
        else:
            counts = threshold_counts(self.segmenter(), self.validation_split)
        self.model.train()
        threshold, f1 = counts.best()
        return {
            "val_f1": f1,
            "val_threshold": threshold,
            "val_f1_at_05": metrics.f1(*counts.counts(0.5)),
        }

    # ------------------------------------------------------------ the whole run
    def run(self, on_epoch_end: Callable[[int], None] | None = None) -> pd.DataFrame:
        start_epoch = self.resume()
        log.info(
            "%s: %s geometry, %d train / %d validation samples, %d parameters, device %s, "
            "precision %s%s, %s, %d loader workers, %d torch threads, %d steps of batch %d "
            "per epoch",
            self.name,
            self.record.geometry,
            len(self.train_split),
            len(self.validation_split),
            count_parameters(self.model),
            self.device,
            self.precision,
            " (channels_last)" if uses_channels_last(self.precision) else "",
            "compiled (torch.compile)" if self.compile else "eager (not compiled)",
            self.workers,
            torch.get_num_threads(),
            self.steps_per_epoch,
            int(self.settings["batch_size"]),
        )
        for epoch in range(start_epoch, self.epochs + 1):
            row = self.train_epoch(epoch)
            self.history.append(row)
            log.info(
                "%s epoch %d/%d: %s",
                self.name,
                epoch,
                self.epochs,
                ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"),
            )
            self.save_checkpoint(epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
        self.wait_for_checkpoint()
        return self.finish()

    def finish(self) -> pd.DataFrame:
        """The final weights (best validated epoch, or the last), batch-norm statistics,
        the threshold, and the outputs."""
        chosen_epoch = self.epochs
        if self.settings["keep_best"] and self.best is not None:
            self.model.load_state_dict(self.best["model"])
            chosen_epoch = int(self.best["epoch"])
            log.info(
                "%s: keeping the weights of epoch %d (best validation F1 %.4f)",
                self.name,
                chosen_epoch,
                self.best["val_f1"],
            )
        elif self.ema is not None:
            self.model.load_state_dict(self.ema.weights(self.model))
            log.info("%s: keeping the moving average of the weights (ema)", self.name)
        if self.settings["recalibrate_bn"]:
            layers = recalibrate_batch_norm(
                self.model, self._recalibration_loader(), self.device, self.precision
            )
            log.info(
                "%s: batch-norm statistics of %d layers recomputed over training images",
                self.name,
                layers,
            )
        if self.chooses_threshold_and_filter_together():
            threshold, object_filter = self.choose_threshold_and_filter()
            watershed = None
        else:
            threshold = self.choose_threshold()
            watershed = self.choose_watershed(threshold["value"])
            object_filter = self.choose_object_filter(threshold["value"], watershed)
        table = pd.DataFrame(self.history, columns=HISTORY_COLUMNS)
        meta = {
            "name": self.name,
            "loss": self.loss_name,
            "epochs": self.epochs,
            "epoch_kept": chosen_epoch,
            "train": self.settings,
            "model": self.model_cfg,
            "dataset": self.info,
            "device": self.device.type,
            "precision": self.precision,
            "channels_last": uses_channels_last(self.precision),
            "compiled": bool(self.compile and not getattr(self.forward, "failed", False)),
            "threshold": threshold,
            "final_train_loss": float(table["train_loss"].iloc[-1]),
        }
        if watershed is not None:
            meta["instances"] = watershed
        if object_filter is not None:
            meta["object_filter"] = object_filter
        save_model(self.model_dir / "model.pt", self.model, meta)
        write_csv(self.model_dir / "history.csv", table)
        save_figure(self.model_dir / "curve.png", plot_curve(table, title=self.name))
        return table

    def _recalibration_loader(self):
        batch_size, workers = int(self.settings["batch_size"]), self.workers
        if self.sampler is None:
            data = datasets.TorchSplit(self.train_split)
        else:
            # Unbiased patches (no cell oversampling, no augmentation), drawn with a fixed seed.
            data = self._patch_sampler(Augmentation(), foreground_share=0.0, targets=False)
            data.set_epoch(RECALIBRATION_EPOCH)
        return make_loader(data, batch_size, False, None, workers, self.device)

    def choose_threshold(self) -> dict:
        """The threshold evaluation and prediction will use, and where it came from."""
        setting = self.settings["threshold"]
        if isinstance(setting, Number) and not isinstance(setting, bool):
            return {"value": float(setting), "source": "config"}
        if not self.validating:
            log.warning(
                "%s: %s, so the threshold is not chosen on data: 0.5 is used "
                "(set split.validation to choose it on validation images with cells)",
                self.name,
                self.unvalidated,
            )
            return {"value": 0.5, "source": f"default ({self.unvalidated})"}
        if self.settings.get("threshold_objective", "pixel") == "instances":
            return self._instance_threshold()
        counts = threshold_counts(self.segmenter(tta=self.final_tta), self.validation_split)
        value, f1 = counts.best()
        log.info(
            "%s: threshold %.2f chosen on %d validation images (pooled F1 %.4f there)",
            self.name,
            value,
            len(self.validation_split),
            f1,
        )
        if value in (metrics.THRESHOLD_GRID[0], metrics.THRESHOLD_GRID[-1]):
            log.warning(
                "%s: the chosen threshold %.2f is at the end of the searched range %.2f..%.2f: "
                "the network is %s-confident about cells (oversampled, Dice-trained networks "
                "over-call them); consider fewer forced patches (train.foreground_share)",
                self.name,
                value,
                metrics.THRESHOLD_GRID[0],
                metrics.THRESHOLD_GRID[-1],
                "over" if value > 0.5 else "under",
            )
        return {"value": value, "source": "validation", "validation_f1": f1}

    def choose_watershed(self, threshold: float) -> dict | None:
        """The instance post-processing stored in ``model.pt`` (None for a binary model):
        fixed settings from ``train.watershed``, else the best mean mSA over the validation
        images at evaluation's resolution (:func:`protoseg.instances.choose_settings`), else
        the defaults with a warning. Never chosen on test images."""
        mode = self.instances
        if mode == "none":
            return None
        setting = self.settings["watershed"]
        if not isinstance(setting, str):
            return {
                "mode": mode,
                "settings": instance_outputs.check_settings(mode, setting),
                "source": "config",
            }
        if not self.validating:
            log.warning(
                "%s: %s, so the watershed settings are not chosen on data: "
                "the defaults %s are used (set split.validation to choose them there)",
                self.name,
                self.unvalidated,
                instance_outputs.DEFAULTS[mode],
            )
            return {
                "mode": mode,
                "settings": instance_outputs.check_settings(mode, {}),
                "source": f"default ({self.unvalidated})",
            }
        chosen = instance_outputs.choose_settings(mode, threshold, self.validation_images())
        log.info(
            "%s: watershed settings %s chosen on %d validation images (mean mSA %.4f, SA50 %.4f)",
            self.name,
            chosen["settings"],
            chosen["images"],
            chosen["msa"],
            chosen["sa50"],
        )
        return {
            "mode": mode,
            "settings": chosen["settings"],
            "source": "validation",
            "validation_msa": chosen["msa"],
            "validation_sa50": chosen["sa50"],
        }

    def validation_images(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(outputs (K, H, W), true cells) of every validation image at evaluation's
        resolution, of the final weights (computed once, after they are set)."""
        if self._validation_cache is None:
            truth = TruthReader(self.validation_split, self.resolution, "labels")
            segmenter, images = self.segmenter(tta=self.final_tta), []
            for index in range(len(self.validation_split)):
                outputs = segmenter.sample_outputs(self.validation_split, index)
                _, labels = truth(index)
                images.append((segmenter.at_size(outputs, labels.shape), labels))
            self._validation_cache = images
        return self._validation_cache

    def _instance_threshold(self) -> dict:
        """The threshold at the centre of the plateau of pooled matched F1 at IoU 0.5 on
        the validation images (:func:`protoseg.objects.choose_threshold`); 0.5 with a
        warning when they hold no cell."""
        segmenter = self.segmenter()
        chosen = object_rules.choose_threshold(
            self.validation_images(), lambda outputs, t: segmenter.cells(outputs, t, False)
        )
        if chosen["n_true"] == 0:
            log.warning(
                "%s: the validation split holds no cell, so the threshold cannot be chosen for "
                "matched F1 there: 0.5 is used (give split.validation images with cells)",
                self.name,
            )
            return {"value": 0.5, "source": "default (no cells in the validation split)"}
        log.info(
            "%s: threshold %.4f chosen on %d validation images for matched F1 at IoU 0.5 "
            "(%.4f there; %.4f at 0.5)",
            self.name,
            chosen["value"],
            chosen["images"],
            chosen["matched_f1"],
            chosen["matched_f1_at_05"],
        )
        return self._flag_grid_edge(
            {
                "value": chosen["value"],
                "source": "validation",
                "objective": "instances",
                "validation_matched_f1": chosen["matched_f1"],
                "validation_matched_f1_at_05": chosen["matched_f1_at_05"],
            }
        )

    def _flag_grid_edge(self, threshold: dict) -> dict:
        """``threshold`` with ``at_grid_edge`` and a warning when validation chose an end of
        the logit grid (seen on real images: a network certain of debris, or of the
        background, chooses 0.9975, and such a choice transfers badly)."""
        edge = object_rules.grid_edge(threshold["value"])
        if edge is None:
            return threshold
        log.warning(
            "%s: the threshold chosen on validation for matched F1 (%.4f) is the %s of the "
            "grid %.4f..%.4f: the network is nearly certain of %s it calls cell there, and "
            "the best may lie beyond the grid. Such a threshold often does not transfer to "
            "other images; look at the predictions figure before trusting the model "
            "(docs/objects.md).",
            self.name,
            threshold["value"],
            edge,
            min(object_rules.LOGIT_GRID),
            max(object_rules.LOGIT_GRID),
            "everything" if edge == "highest" else "nothing",
        )
        return threshold | {"at_grid_edge": edge}

    def chooses_threshold_and_filter_together(self) -> bool:
        """A binary network whose threshold (instance objective) and object filter are both
        chosen on validation images: they are chosen as a pair."""
        return (
            self.validating
            and self.instances == "none"
            and isinstance(self.settings["threshold"], str)
            and self.settings.get("threshold_objective", "pixel") == "instances"
            and self.settings.get("object_filter", "off") == "auto"
        )

    def choose_threshold_and_filter(self) -> tuple[dict, dict]:
        """Threshold and object filter chosen together on the validation images for pooled
        matched F1 at IoU 0.5 (:func:`protoseg.objects.choose_threshold_and_filter`); with
        no cell there, the fallbacks of :meth:`choose_threshold` and
        :meth:`choose_object_filter`."""
        segmenter = self.segmenter()
        tables = object_rules.threshold_tables(
            self.validation_images(), lambda outputs, t: segmenter.cells(outputs, t, False)
        )
        chosen = object_rules.joint_choice(tables)
        if chosen["n_true"] == 0:
            threshold = self.choose_threshold()
            return threshold, self.choose_object_filter(threshold["value"], None)
        rule = chosen["filter"]
        log.info(
            "%s: threshold %.4f and object filter %s chosen together on %d validation images "
            "for matched F1 at IoU 0.5 (%.4f there; %.4f without the filter; %.4f at 0.5 with "
            "its best filter)",
            self.name,
            chosen["value"],
            rule.describe(),
            chosen["images"],
            chosen["matched_f1"],
            chosen["matched_f1_unfiltered"],
            chosen["matched_f1_at_05"],
        )
        threshold = self._flag_grid_edge(
            {
                "value": chosen["value"],
                "source": "validation",
                "objective": "instances",
                "with_object_filter": True,
                "validation_matched_f1": chosen["matched_f1"],
                "validation_matched_f1_at_05": chosen["matched_f1_at_05"],
            }
        )
        if len(tables) > 1:
            threshold["validation_matched_f1_held_out"] = self._held_out(tables, chosen)
        stored = replace(rule, source="validation", validation_matched_f1=chosen["matched_f1"])
        return threshold, stored.to_dict()

    def _held_out(self, tables: list, chosen: dict) -> float:
        """The joint choice's matched F1 with each validation image scored by the choice
        made on the others (:func:`protoseg.objects.held_out_score`), logged, and a warning
        when it falls more than :data:`HELD_OUT_WARNING` below the score on the images the
        choice was made on: then the choice rests on which images validation holds."""
        held_out = object_rules.held_out_score(tables)["matched_f1"]
        log.info(
            "%s: the same choice made without each validation image scores %.4f on it "
            "(pooled matched F1; %.4f on the images it was made on)",
            self.name,
            held_out,
            chosen["matched_f1"],
        )
        if held_out < chosen["matched_f1"] - HELD_OUT_WARNING:
            log.warning(
                "%s: the threshold and object filter chosen on the validation images score "
                "%.3f matched F1 there but %.3f on a validation image left out of the choice: "
                "they may not transfer to new images (more, or more varied, validation images "
                "help; docs/objects.md)",
                self.name,
                chosen["matched_f1"],
                held_out,
            )
        return held_out

    def choose_object_filter(self, threshold: float, watershed: dict | None) -> dict | None:
        """The object filter stored in ``model.pt`` (None when ``train.object_filter`` is
        off): fixed values, or the filter of the best pooled matched F1 at IoU 0.5 on the
        validation images (:func:`protoseg.objects.choose_filter`). Without a validation
        split, or with one that holds no cell, every object is kept, with a warning."""
        setting = self.settings.get("object_filter", "off")
        if setting == "off":
            return None
        if isinstance(setting, dict):
            return object_rules.ObjectFilter.from_dict(setting, "train.object_filter").to_dict()
        if not self.validating:
            log.warning(
                "%s: %s, so the object filter is not chosen on data: every "
                "object is kept (set split.validation to choose it there)",
                self.name,
                self.unvalidated,
            )
            return object_rules.ObjectFilter(source=f"default ({self.unvalidated})").to_dict()
        segmenter = self.segmenter(threshold=threshold, own=watershed)
        chosen = object_rules.choose_filter(
            (segmenter.cells(outputs, filtered=False), outputs[0], labels)
            for outputs, labels in self.validation_images()
        )
        if chosen["n_true"] == 0:
            log.warning(
                "%s: the validation split holds no cell, so the object filter cannot be chosen "
                "there: every object is kept (give split.validation images with cells)",
                self.name,
            )
            return object_rules.ObjectFilter(
                source="default (no cells in the validation split)"
            ).to_dict()
        rule = chosen["filter"]
        log.info(
            "%s: object filter %s chosen on %d validation images (matched F1 %.4f there, "
            "%.4f without it)",
            self.name,
            rule.describe(),
            chosen["images"],
            chosen["matched_f1"],
            chosen["matched_f1_unfiltered"],
        )
        return replace(
            rule, source="validation", validation_matched_f1=chosen["matched_f1"]
        ).to_dict()


def train_model(
    dataset_dir: str | Path,
    model_dir: str | Path,
    *,
    model_cfg: dict,
    train_cfg: dict,
    loss: str,
    name: str | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    inference: dict | None = None,
) -> pd.DataFrame:
    """Train one U-Net on ``dataset_dir``'s train split; write outputs to ``model_dir``.

    Returns the history table. ``on_epoch_end(epoch)`` runs after each epoch's checkpoint
    (tests use it to simulate an interruption). ``inference``: ``tile`` and ``overlap`` of
    the sliding window that validation uses (evaluation's; default the training tile, 0.5).
    """
    trainer = Trainer(
        dataset_dir,
        model_dir,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        loss=loss,
        name=name,
        progress=progress,
        inference=inference,
    )
    return trainer.run(on_epoch_end)
