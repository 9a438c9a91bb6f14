"""Training a U-Net on a built data set, resumable and reproducible.

The study's recipe: Adam, batch size, epochs, a triangular cyclic learning rate between
``lr_min`` and ``lr_max`` (stepped every batch, ``lr_half_cycle_epochs`` epochs from the
lower to the upper bound), one loss from :mod:`protoseg.losses`. Added here: a seed for
every random source (python, numpy, torch, the shuffling and augmentation generators),
mixed precision on CUDA (``torch.autocast`` float16 + ``GradScaler``), light augmentation
(flips, 90 degree rotations), validation metrics when a validation split exists, and a
checkpoint after every epoch.

Outputs in ``model_dir``: ``model.pt`` (see :mod:`protoseg.model`), ``history.csv`` (one
row per epoch), ``curve.png`` and ``checkpoints/epoch-NNN.pt`` (model, optimiser,
scheduler, scaler, every RNG state, history). After the last epoch the batch-norm
statistics are recomputed over the training images (``recalibrate_bn``, see
:func:`recalibrate_batch_norm`). A run that finds a checkpoint written with
the same settings resumes after its epoch; on the CPU the result is bitwise the same as a
run that was never interrupted. A non-finite loss stops training with
:class:`TrainingError`; the checkpoints of the good epochs stay.

Batches stream from the data set's memory-mapped shards (``protoseg.dataset``), so memory
does not grow with the data set.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from protoseg import dataset as datasets
from protoseg.device import resolve_device
from protoseg.errors import ConfigError, ProtosegError
from protoseg.io import atomic_path, save_figure, write_csv
from protoseg.losses import get_loss
from protoseg.model import architecture_from_config, build_model, count_parameters, save_model

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
DEFAULTS = {
    "epochs": 50,
    "batch_size": 16,
    "lr_min": 1e-4,
    "lr_max": 1e-2,
    "lr_half_cycle_epochs": 4,
    "seed": 0,
    "device": "auto",
    "amp": True,
    "workers": 0,
    "keep_checkpoints": 2,
    "recalibrate_bn": True,
    "augment": {"flip": False, "rotate90": False},
}
HISTORY_COLUMNS = ["epoch", "train_loss", "lr", "val_loss", "val_f1", "val_iou", "seconds"]


class TrainingError(ProtosegError):
    """Training cannot go on (e.g. the loss became NaN); the message names the model and epoch."""


def settings_from_config(train_cfg: dict) -> dict:
    """Config ``train`` with defaults filled in and checked (``losses`` left out)."""
    settings = {
        key: train_cfg.get(key, value) for key, value in DEFAULTS.items() if key != "augment"
    }
    settings["augment"] = {**DEFAULTS["augment"], **(train_cfg.get("augment") or {})}
    for key in ("epochs", "batch_size"):
        if int(settings[key]) < 1:
            raise ConfigError(f"train.{key}", f"must be at least 1, got {settings[key]}")
    if not 0 < float(settings["lr_min"]) <= float(settings["lr_max"]):
        raise ConfigError(
            "train.lr_max",
            f"need 0 < lr_min <= lr_max, got {settings['lr_min']} and {settings['lr_max']}",
        )
    if float(settings["lr_half_cycle_epochs"]) <= 0:
        raise ConfigError("train.lr_half_cycle_epochs", "must be positive")
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


# ---------------------------------------------------------------- augmentation
def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    flip: bool,
    rotate90: bool,
):
    """Random flips and quarter turns, drawn per sample from ``generator``, applied alike to image and mask.

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


# ---------------------------------------------------------------- evaluation during training
@torch.no_grad()
def evaluate(model, loader, loss_fn, device, use_amp: bool, threshold: float = 0.5) -> dict:
    """Mean loss and pixel F1 / IoU pooled over all pixels of ``loader`` (threshold on the probability)."""
    model.eval()
    total_loss, batches = 0.0, 0
    tp = fp = fn = 0
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(images)
        total_loss += float(loss_fn(logits, masks))
        batches += 1
        predicted = torch.sigmoid(logits.float()) > threshold
        truth = masks > 0.5
        tp += int((predicted & truth).sum())
        fp += int((predicted & ~truth).sum())
        fn += int((~predicted & truth).sum())
    model.train()
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    iou = tp / (tp + fp + fn) if (tp + fp + fn) else 1.0
    return {"val_loss": total_loss / max(batches, 1), "val_f1": f1, "val_iou": iou}


@torch.no_grad()
def recalibrate_batch_norm(model, loader, device, use_amp: bool) -> int:
    """Recompute every BatchNorm layer's running mean and variance over ``loader`` with the final weights.

    During training the running statistics are moving averages over weights that kept
    changing (fast, near the top of the cyclic learning rate), so in eval mode they can
    miss what the final network computes; with two modalities of very different
    brightness in one batch (the ``all`` data set) that cost the demo 10-60 points of F1.
    One pass over the training images (no gradients, no augmentation, fixed order) sets
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
    for images, _ in loader:
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            model(images.to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()
    return len(norms)


# ---------------------------------------------------------------- checkpoints
def checkpoint_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / CHECKPOINT_DIR


def checkpoint_path(model_dir: str | Path, epoch: int) -> Path:
    return checkpoint_dir(model_dir) / f"epoch-{epoch:03d}.pt"


def latest_checkpoint(model_dir: str | Path) -> Path | None:
    found = sorted(checkpoint_dir(model_dir).glob("epoch-*.pt"))
    return found[-1] if found else None


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


def _fingerprint(architecture: dict, settings: dict, loss: str, info: dict, stamp: list) -> str:
    """What a checkpoint must match to be resumed: same model, recipe, loss and data."""
    recipe = {
        k: v for k, v in settings.items() if k not in ("device", "workers", "keep_checkpoints")
    }
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
    """Loss (train, and validation where present) and learning rate against epoch."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2))
    loss_axis, lr_axis = figure.subplots(1, 2)
    loss_axis.plot(history["epoch"], history["train_loss"], marker=".", label="train")
    if "val_loss" in history and history["val_loss"].notna().any():
        loss_axis.plot(history["epoch"], history["val_loss"], marker=".", label="validation")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    lr_axis.plot(history["epoch"], history["lr"], marker=".", color="tab:green")
    lr_axis.set_xlabel("epoch")
    lr_axis.set_ylabel("learning rate (epoch mean)")
    lr_axis.set_yscale("log")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- training
def make_loader(
    data,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    workers: int,
    device: torch.device,
):
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


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
) -> pd.DataFrame:
    """Train one U-Net on ``dataset_dir``'s train split; write outputs to ``model_dir``.

    Returns the history table. ``on_epoch_end(epoch)`` runs after each epoch's checkpoint
    (tests use it to simulate an interruption).
    """
    model_dir = Path(model_dir)
    name = name or model_dir.name
    settings = settings_from_config(train_cfg)
    device = torch.device(resolve_device(settings["device"], "train.device"))
    use_amp = bool(settings["amp"]) and device.type == "cuda"
    if device.type == "cuda":
        # Fixed input sizes: let cuDNN pick the fastest convolutions (GPU runs are not
        # bitwise reproducible anyway; the CPU path is).
        torch.backends.cudnn.benchmark = True
    loss_fn = get_loss(loss)

    info = datasets.read_info(dataset_dir)
    train_data = datasets.torch_dataset(dataset_dir, "train")
    validation_data = datasets.torch_dataset(dataset_dir, "validation")
    if len(train_data) == 0:
        raise ConfigError("split.test", f"{dataset_dir}: the train split is empty")
    architecture = architecture_from_config(model_cfg, info["channels"])
    fingerprint = _fingerprint(architecture, settings, loss, info, _dataset_stamp(dataset_dir))

    seed = int(settings["seed"])
    seed_everything(seed)
    model = build_model(model_cfg, info["channels"]).to(device)
    shuffle_generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator().manual_seed(seed + 1)
    loader = make_loader(
        train_data,
        int(settings["batch_size"]),
        True,
        shuffle_generator,
        int(settings["workers"]),
        device,
    )
    validation_loader = (
        make_loader(
            validation_data,
            int(settings["batch_size"]),
            False,
            None,
            int(settings["workers"]),
            device,
        )
        if len(validation_data)
        else None
    )

    optimizer = torch.optim.Adam(model.parameters(), lr=float(settings["lr_min"]))
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer,
        base_lr=float(settings["lr_min"]),
        max_lr=float(settings["lr_max"]),
        step_size_up=max(1, round(float(settings["lr_half_cycle_epochs"]) * steps_per_epoch)),
        mode="triangular",
        cycle_momentum=False,  # Adam has no momentum term to cycle
    )
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    history: list[dict] = []
    start_epoch = 1

    last = latest_checkpoint(model_dir)
    if last is not None:
        state = torch.load(
            last, map_location=device, weights_only=False
        )  # our own file: holds RNG tuples
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            restore_rng_states(state["rng"])
            shuffle_generator.set_state(state["shuffle_generator"])
            augment_generator.set_state(state["augment_generator"])
            history = state["history"]
            start_epoch = int(state["epoch"]) + 1
            log.info("%s: resuming from %s (epoch %d done)", name, last, state["epoch"])
        else:
            warnings.warn(
                f"{last}: written with other settings or data; training {name} from scratch",
                stacklevel=2,
            )
            for old in checkpoint_dir(model_dir).glob("epoch-*.pt"):
                old.unlink()

    log.info(
        "%s: %d train / %d validation samples, %d parameters, device %s%s, %d steps per epoch",
        name,
        len(train_data),
        len(validation_data),
        count_parameters(model),
        device,
        " (AMP)" if use_amp else "",
        steps_per_epoch,
    )
    epochs = int(settings["epochs"])
    augment = settings["augment"]
    model.train()
    for epoch in range(start_epoch, epochs + 1):
        started = time.perf_counter()
        total, count, lrs = 0.0, 0, []
        bar = tqdm(
            loader,
            desc=f"{name} epoch {epoch}/{epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for images, masks in bar:
            # Augment after the transfer: on a GPU the flips run there, and the pinned batch
            # copies asynchronously (augmenting first would copy unpinned tensors on the CPU).
            images, masks = (
                images.to(device, non_blocking=True),
                masks.to(device, non_blocking=True),
            )
            images, masks = augment_batch(
                images, masks, augment_generator, bool(augment["flip"]), bool(augment["rotate90"])
            )
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(images)
            batch_loss = loss_fn(logits, masks)
            if not torch.isfinite(batch_loss):
                good = latest_checkpoint(model_dir)
                raise TrainingError(
                    f"model {name}: the loss became {batch_loss.item()} in epoch {epoch}; "
                    f"last good checkpoint: {good if good else 'none (failed in the first epoch)'}. "
                    "Lower train.lr_max or check the data set for bad values."
                )
            scaler.scale(batch_loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with warnings.catch_warnings():
                # Under AMP the scaler skips steps with overflowing gradients; the schedule goes on regardless.
                warnings.filterwarnings(
                    "ignore", message="Detected call of `lr_scheduler.step\\(\\)` before"
                )
                scheduler.step()
            total += batch_loss.item() * images.shape[0]
            count += images.shape[0]
            bar.set_postfix(loss=f"{total / count:.4f}")
        row = {
            "epoch": epoch,
            "train_loss": total / count,
            "lr": float(np.mean(lrs)),
            "val_loss": math.nan,
            "val_f1": math.nan,
            "val_iou": math.nan,
        }
        if validation_loader is not None:
            row.update(evaluate(model, validation_loader, loss_fn, device, use_amp))
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        log.info(
            "%s epoch %d/%d: %s",
            name,
            epoch,
            epochs,
            ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"),
        )

        state = {
            "fingerprint": fingerprint,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_states(),
            "shuffle_generator": shuffle_generator.get_state(),
            "augment_generator": augment_generator.get_state(),
            "history": history,
        }
        with atomic_path(checkpoint_path(model_dir, epoch)) as tmp:
            torch.save(state, tmp)
        _prune_checkpoints(model_dir, int(settings["keep_checkpoints"]))
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    if settings["recalibrate_bn"]:
        ordered = make_loader(
            train_data, int(settings["batch_size"]), False, None, int(settings["workers"]), device
        )
        layers = recalibrate_batch_norm(model, ordered, device, use_amp)
        log.info(
            "%s: batch-norm statistics of %d layers recomputed over the training images",
            name,
            layers,
        )
    table = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    meta = {
        "name": name,
        "loss": loss,
        "epochs": epochs,
        "train": settings,
        "model": dict(model_cfg),
        "dataset": info,
        "device": str(device),
        "amp": use_amp,
        "final_train_loss": float(table["train_loss"].iloc[-1]),
    }
    save_model(model_dir / "model.pt", model, meta)
    write_csv(model_dir / "history.csv", table)
    save_figure(model_dir / "curve.png", plot_curve(table, title=name))
    return table
