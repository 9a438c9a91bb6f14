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
    "amp": True,
    "augment": {"flip": True, "rotate90": True},
}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """6 states x 2 planes of 16 x 16 bright-field images with a bright disc as the cell."""
    folder = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[:24, :24]
    for xy in (1, 2, 3, 4, 5, 10):
        state = f"day1t1xy{xy}"
        centre = rng.integers(7, 17, 2)
        disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 36
        tifffile.imwrite(folder / f"{state}.tif", disc.astype(np.uint16))
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
        split_cfg={"key": "xy", "test": [10], "validation": [5]},
        dataset_cfg={"size": [16, 16], "colour": "rgb", "shard_size": 4},
        mask_path=str(folder / "{state}.tif"),
        progress=False,
    )
    return folder / "ds"


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
    assert table[["train_loss", "lr", "val_loss", "val_f1", "val_iou"]].notna().all().all()
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
    for (key, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
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
    assert training.recalibrate_batch_norm(model, loader, torch.device("cpu"), use_amp=False) == 1
    expected = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(norm.running_mean, expected, atol=1e-5)
    assert norm.momentum == 0.1 and not model.training
