import os

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from protoseg import train as training
from protoseg.dataset import build_dataset
from protoseg.losses import BCELoss
from protoseg.model import load_model
from protoseg.train import TrainingError, augment_batch, train_model

torch.set_num_threads(1)

MODEL_CFG = {"depth": 2, "base_channels": 2, "batch_norm": True}
TRAIN_CFG = {
    "epochs": 3,
    "batch_size": 4,
    "lr_min": 1e-3,
    "lr_max": 1e-2,
    "lr_half_cycle_epochs": 1,
    "seed": 3,
    "device": "cpu",
    # fp32: the bitwise-resume tests; bf16 has a test of its own.
    "precision": "fp32",
    "augment": {"flip": True, "rotate90": True},
}


def assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def make_discs(folder, validation=(5,), dataset_cfg=None, empty=()):
    """6 states x 2 planes of 24 x 24 bright-field images with a bright disc as the cell
    (none in the masks of the positions in ``empty``)."""
    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[:24, :24]
    for xy in (1, 2, 3, 4, 5, 10):
        state = f"day1t1xy{xy}"
        centre = rng.integers(7, 17, 2)
        disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 36
        tifffile.imwrite(folder / f"{state}.tif", (disc * (xy not in empty)).astype(np.uint16))
        for z in (12, 14):
            image = np.clip(
                60 + 120 * disc[..., None] + rng.normal(0, 10, (24, 24, 3)), 0, 255
            ).astype(np.uint8)
            path = folder / f"day1t1c1xy{xy}z{z}.tif"
            tifffile.imwrite(path, image)
            rows.append(
                {
                    "path": str(path),
                    "channel": 1,
                    "modality": "brightfield",
                    "xy": xy,
                    "z": z,
                    "state": state,
                }
            )
    build_dataset(
        pd.DataFrame(rows),
        folder / "ds",
        variant="bf",
        modalities=["brightfield"],
        split_cfg={"key": "xy", "test": [10], "validation": list(validation)},
        dataset_cfg=dataset_cfg or {"size": [16, 16], "colour": "rgb", "shard_size": 4},
        mask_path=str(folder / "{state}.tif"),
        context_planes=0,
        progress=False,
    )
    return folder / "ds"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_discs(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def no_validation_dir(tmp_path_factory):
    return make_discs(tmp_path_factory.mktemp("train_noval"), validation=())


def test_tiny_training_run_writes_every_output(dataset_dir, tmp_path):
    history = train_model(
        dataset_dir,
        tmp_path / "m",
        model_cfg=MODEL_CFG,
        train_cfg=TRAIN_CFG,
        loss="bce",
        progress=False,
    )
    for name in ("model.pt", "history.csv", "curve.png"):
        assert (tmp_path / "m" / name).stat().st_size > 0
    table = pd.read_csv(tmp_path / "m" / "history.csv")
    assert list(table["epoch"]) == [1, 2, 3] and len(history) == 3
    assert (
        table[["train_loss", "lr", "val_f1", "val_threshold", "val_f1_at_05"]].notna().all().all()
    )
    assert table["lr"].between(TRAIN_CFG["lr_min"], TRAIN_CFG["lr_max"]).all()
    assert table["lr"].nunique() > 1  # the cyclic schedule moves
    assert sorted(p.name for p in (tmp_path / "m" / "checkpoints").iterdir()) == [
        "epoch-002.pt",
        "epoch-003.pt",
    ]
    model, meta = load_model(tmp_path / "m" / "model.pt")
    assert meta["loss"] == "bce" and meta["epochs"] == 3 and meta["dataset"]["channels"] == 3
    assert model.architecture["depth"] == 2


def test_interrupted_run_resumes_to_the_same_weights(dataset_dir, tmp_path):
    train_model(
        dataset_dir,
        tmp_path / "straight",
        model_cfg=MODEL_CFG,
        train_cfg=TRAIN_CFG,
        loss="mse",
        progress=False,
    )

    def crash_after_two(epoch):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train_model(
            dataset_dir,
            tmp_path / "resumed",
            model_cfg=MODEL_CFG,
            train_cfg=TRAIN_CFG,
            loss="mse",
            progress=False,
            on_epoch_end=crash_after_two,
        )
    assert not (tmp_path / "resumed" / "model.pt").exists()
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    epochs_run = []
    train_model(
        dataset_dir,
        tmp_path / "resumed",
        model_cfg=MODEL_CFG,
        train_cfg=TRAIN_CFG,
        loss="mse",
        progress=False,
        on_epoch_end=epochs_run.append,
    )
    assert epochs_run == [3]
    straight, _ = load_model(tmp_path / "straight" / "model.pt")
    resumed, _ = load_model(tmp_path / "resumed" / "model.pt")
    assert_same_weights(straight, resumed)
    losses = [
        pd.read_csv(tmp_path / run / "history.csv")["train_loss"] for run in ("straight", "resumed")
    ]
    assert losses[0].equals(losses[1])


def test_changed_settings_do_not_resume(dataset_dir, tmp_path):
    train_model(
        dataset_dir,
        tmp_path / "m",
        model_cfg=MODEL_CFG,
        train_cfg={**TRAIN_CFG, "epochs": 1},
        loss="bce",
        progress=False,
    )
    epochs_run = []
    with pytest.warns(UserWarning, match="other settings"):
        train_model(
            dataset_dir,
            tmp_path / "m",
            model_cfg=MODEL_CFG,
            train_cfg={**TRAIN_CFG, "epochs": 1, "lr_max": 5e-2},
            loss="bce",
            progress=False,
            on_epoch_end=epochs_run.append,
        )
    assert epochs_run == [1]


def test_changed_decisions_finish_a_finished_run_again_without_training(dataset_dir, tmp_path):
    """The kept epoch and the threshold are decided after the last epoch: changing them
    reruns the decisions from the last checkpoint, as a straight run with them would end."""
    best = {**TRAIN_CFG, "keep_best": True, "validate_every": 1}
    last = {**best, "keep_best": False, "threshold": 0.3}
    train_model(
        dataset_dir,
        tmp_path / "m",
        model_cfg=MODEL_CFG,
        train_cfg=best,
        loss="bce",
        progress=False,
    )
    epochs_run = []
    train_model(
        dataset_dir,
        tmp_path / "m",
        model_cfg=MODEL_CFG,
        train_cfg=last,
        loss="bce",
        progress=False,
        on_epoch_end=epochs_run.append,
    )
    assert epochs_run == []
    train_model(
        dataset_dir,
        tmp_path / "straight",
        model_cfg=MODEL_CFG,
        train_cfg=last,
        loss="bce",
        progress=False,
    )
    refinished, meta = load_model(tmp_path / "m" / "model.pt")
    straight, straight_meta = load_model(tmp_path / "straight" / "model.pt")
    assert meta["epoch_kept"] == straight_meta["epoch_kept"] == 3
    assert meta["threshold"]["value"] == straight_meta["threshold"]["value"] == 0.3
    assert_same_weights(straight, refinished)


def test_nan_loss_stops_with_model_and_epoch_and_keeps_last_checkpoint(
    dataset_dir, tmp_path, monkeypatch
):
    class NanInSecondEpoch(BCELoss):
        calls = 0

        def forward(self, output, target):
            NanInSecondEpoch.calls += 1
            loss = super().forward(output, target)
            return (
                loss * float("nan") if NanInSecondEpoch.calls > 2 else loss
            )  # 8 samples / batch 4 = 2 steps an epoch

    monkeypatch.setattr(training, "get_loss", lambda name: NanInSecondEpoch())
    with pytest.raises(
        TrainingError, match=r"model bf-bce: the loss became nan in epoch 2.*epoch-001\.pt"
    ):
        train_model(
            dataset_dir,
            tmp_path / "bf-bce",
            model_cfg=MODEL_CFG,
            train_cfg=TRAIN_CFG,
            loss="bce",
            progress=False,
        )
    assert (tmp_path / "bf-bce" / "checkpoints" / "epoch-001.pt").is_file()
    assert not (tmp_path / "bf-bce" / "model.pt").exists()


def test_augmentation_moves_image_and_mask_together():
    images = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    masks = images.clone()
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(10):
        out_images, out_masks = augment_batch(images, masks, generator, flip=True, rotate90=True)
        assert out_images.shape == images.shape  # non-square: half turns only
        assert torch.equal(out_images, out_masks)
        seen.add(tuple(out_images[0, 0, 0].tolist()))
    assert len(seen) > 1
    same_images, _ = augment_batch(images, masks, generator, flip=False, rotate90=False)
    assert torch.equal(same_images, images)


def test_rebuilt_dataset_is_not_resumed(dataset_dir, tmp_path):
    train_model(
        dataset_dir,
        tmp_path / "m",
        model_cfg=MODEL_CFG,
        train_cfg={**TRAIN_CFG, "epochs": 1},
        loss="bce",
        progress=False,
    )
    manifest = dataset_dir / "manifest.csv"
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as if rebuilt
    epochs_run = []
    with pytest.warns(UserWarning, match="other settings or data"):
        train_model(
            dataset_dir,
            tmp_path / "m",
            model_cfg=MODEL_CFG,
            train_cfg={**TRAIN_CFG, "epochs": 1},
            loss="bce",
            progress=False,
            on_epoch_end=epochs_run.append,
        )
    assert epochs_run == [1]


def test_batch_norm_recalibration_sets_population_statistics():
    norm = torch.nn.BatchNorm2d(2)
    model = torch.nn.Sequential(norm)
    batches = [torch.randn(4, 2, 3, 3) + shift for shift in (0.0, 10.0)]
    for batch in batches:  # drifted moving averages, as after training
        model.train()(batch * 3)
    loader = [(batch, None) for batch in batches]
    assert training.recalibrate_batch_norm(model, loader, torch.device("cpu"), "fp32") == 1
    expected = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(norm.running_mean, expected, atol=1e-5)
    assert norm.momentum == 0.1 and not model.training


# ---------------------------------------------------------------- threshold, best epoch, files
def test_threshold_is_chosen_on_validation_images_only(dataset_dir, tmp_path, monkeypatch):
    from protoseg.dataset import open_split
    from protoseg.evaluate import threshold_counts
    from protoseg.segmenter import Segmenter

    splits_seen = []

    def recording(segmenter, split):
        splits_seen.append(split.split)
        return threshold_counts(segmenter, split)

    monkeypatch.setattr(training, "threshold_counts", recording)
    train_model(
        dataset_dir,
        tmp_path / "m",
        model_cfg=MODEL_CFG,
        train_cfg=TRAIN_CFG,
        loss="bce",
        progress=False,
    )
    assert splits_seen and set(splits_seen) == {"validation"}
    model, meta = load_model(tmp_path / "m" / "model.pt")
    assert meta["threshold"]["source"] == "validation"
    # The stored threshold is the best of the grid on the validation images, for this model.
    validation = open_split(dataset_dir, "validation")
    counts = threshold_counts(Segmenter(model, validation.record, overlap=0.5), validation)
    assert meta["threshold"]["value"] == counts.best()[0]


def test_without_validation_the_threshold_is_0_5_and_says_so(no_validation_dir, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="protoseg.train"):
        history = train_model(
            no_validation_dir,
            tmp_path / "m",
            model_cfg=MODEL_CFG,
            train_cfg={**TRAIN_CFG, "epochs": 1},
            loss="bce",
            progress=False,
        )
    assert "no validation split" in caplog.text
    _, meta = load_model(tmp_path / "m" / "model.pt")
    assert meta["threshold"] == {"value": 0.5, "source": "default (no validation split)"}
    assert history["val_f1"].isna().all()


def test_threshold_settings(no_validation_dir, tmp_path):
    from protoseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.threshold.*no image"):
        train_model(
            no_validation_dir,
            tmp_path / "a",
            model_cfg=MODEL_CFG,
            train_cfg={**TRAIN_CFG, "threshold": "validation"},
            loss="bce",
            progress=False,
        )
    with pytest.raises(ConfigError, match=r"train\.threshold"):
        training.settings_from_config({**TRAIN_CFG, "threshold": 1.2})
    train_model(
        no_validation_dir,
        tmp_path / "b",
        model_cfg=MODEL_CFG,
        train_cfg={**TRAIN_CFG, "epochs": 1, "threshold": 0.3},
        loss="bce",
        progress=False,
    )
    _, meta = load_model(tmp_path / "b" / "model.pt")
    assert meta["threshold"] == {"value": 0.3, "source": "config"}


def test_keep_best_keeps_the_best_validated_epoch(dataset_dir, tmp_path):
    config = {**TRAIN_CFG, "epochs": 4, "recalibrate_bn": False}
    history = train_model(
        dataset_dir,
        tmp_path / "best",
        model_cfg=MODEL_CFG,
        train_cfg=config,
        loss="bce",
        progress=False,
    )
    _, meta = load_model(tmp_path / "best" / "model.pt")
    assert meta["epoch_kept"] == int(history.loc[history["val_f1"].idxmax(), "epoch"])
    train_model(
        dataset_dir,
        tmp_path / "last",
        model_cfg=MODEL_CFG,
        train_cfg={**config, "keep_best": False},
        loss="bce",
        progress=False,
    )
    _, last_meta = load_model(tmp_path / "last" / "model.pt")
    assert last_meta["epoch_kept"] == 4


def test_unreadable_checkpoint_is_moved_aside_and_training_resumes(dataset_dir, tmp_path):
    def crash_after_two(epoch):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train_model(
            dataset_dir,
            tmp_path / "m",
            model_cfg=MODEL_CFG,
            train_cfg={**TRAIN_CFG, "keep_checkpoints": 3},
            loss="bce",
            progress=False,
            on_epoch_end=crash_after_two,
        )
    newest = tmp_path / "m" / "checkpoints" / "epoch-002.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    epochs_run = []
    with pytest.warns(UserWarning, match=r"epoch-002\.pt: unreadable checkpoint"):
        train_model(
            dataset_dir,
            tmp_path / "m",
            model_cfg=MODEL_CFG,
            train_cfg={**TRAIN_CFG, "keep_checkpoints": 3},
            loss="bce",
            progress=False,
            on_epoch_end=epochs_run.append,
        )
    assert epochs_run == [2, 3]  # resumed after epoch 1, the newest good one
    assert (tmp_path / "m" / "checkpoints" / "epoch-002.pt.unreadable").is_file()


def test_identical_runs_write_byte_identical_models(dataset_dir, tmp_path):
    for run in ("a", "b"):
        train_model(
            dataset_dir,
            tmp_path / run / "m",
            model_cfg=MODEL_CFG,
            train_cfg={**TRAIN_CFG, "epochs": 1},
            loss="bce",
            progress=False,
        )
    first, second = ((tmp_path / run / "m" / "model.pt").read_bytes() for run in ("a", "b"))
    assert first == second


def test_patches_geometry_trains_on_sampled_patches_with_a_cosine_schedule(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    patches = make_discs(
        folder,
        dataset_cfg={
            "geometry": "patches",
            "scale": 1.0,
            "patch_size": [16, 16],
            "colour": "grey",
            "normalise": "percentile",
        },
    )
    config = {
        **TRAIN_CFG,
        "schedule": "cosine",
        "samples_per_epoch": 8,
        "foreground_share": 0.5,
        "augment": {"flip": True, "rotate90": True, "scale": 0.2, "brightness": 0.1, "gamma": 0.2},
    }
    history = train_model(
        patches,
        tmp_path / "m",
        model_cfg=MODEL_CFG,
        train_cfg=config,
        loss="bce+dice",
        progress=False,
    )
    assert len(history) == 3 and history["lr"].is_monotonic_decreasing
    model, meta = load_model(tmp_path / "m" / "model.pt")
    assert meta["dataset"]["geometry"] == "patches" and model.architecture["in_channels"] == 1
    assert meta["train"]["samples_per_epoch"] == 8 and meta["threshold"]["source"] == "validation"


@pytest.mark.skipif(
    not __import__("protoseg.device", fromlist=["x"]).cpu_has_native_bf16(),
    reason="this CPU has no native bfloat16",
)
def test_bf16_training_records_its_precision_and_learns(dataset_dir, tmp_path):
    history = train_model(
        dataset_dir,
        tmp_path / "m",
        model_cfg=MODEL_CFG,
        train_cfg={**TRAIN_CFG, "precision": "auto", "epochs": 4},
        loss="bce",
        progress=False,
    )
    _, meta = load_model(tmp_path / "m" / "model.pt")
    assert meta["precision"] == "bf16"
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
