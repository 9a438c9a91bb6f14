"""Per-image evaluation of a model on batches of a test split."""

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.draw import disk

from protoseg import evaluate, metrics

torch.set_num_threads(1)


class ThresholdModel(torch.nn.Module):
    """Logits that put a pixel in the cell class exactly when channel 0 exceeds 0.5."""

    def forward(self, images):
        return 50.0 * (images[:, :1] - 0.5)


def _sample(rng, size=32):
    """An image whose bright disks are the prediction and a mask of slightly shifted disks."""
    image = np.zeros((3, size, size), np.float32)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(2):
        y, x = rng.integers(8, size - 8, size=2)
        image[0][disk((y, x), 5, shape=(size, size))] = 1.0
        mask[disk((y + 1, x), 5, shape=(size, size))] = 1
    return image, mask


def _batches(states, planes, per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    samples = [(state, z, *_sample(rng)) for state in states for z in planes]
    for start in range(0, len(samples), per_batch):
        chunk = samples[start : start + per_batch]
        rows = pd.DataFrame(
            {
                "source": [f"{s}z{z}.tif" for s, z, _, _ in chunk],
                "state": [s for s, *_ in chunk],
                "z": [z for _, z, _, _ in chunk],
                "modality": "brightfield",
            }
        )
        yield {
            "images": np.stack([c[2] for c in chunk]),
            "masks": np.stack([c[3] for c in chunk]),
            "rows": rows,
        }


def test_score_image_matches_metrics():
    probability = np.zeros((8, 8), np.float32)
    probability[2:6, 2:6] = 0.9
    mask = np.zeros((8, 8), np.uint8)
    mask[3:7, 2:6] = 1
    row = evaluate.score_image(probability, mask, threshold=0.5)
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (12, 4, 4, 44)
    assert row["f1"] == pytest.approx(24 / 32)
    assert row["iou"] == pytest.approx(12 / 20)
    assert row["n_true"] == row["n_pred"] == row["tp50"] == 1  # IoU 0.6 >= 0.5
    assert row["sa50"] == 1.0
    # A higher threshold removes the prediction.
    assert evaluate.score_image(probability, mask, threshold=0.95)["tp"] == 0


def test_score_image_uses_given_instances():
    probability = np.zeros((8, 12), np.float32)
    probability[2:6, 1:11] = 0.9  # one wide object
    instances = np.zeros((8, 12), np.uint16)
    instances[2:6, 1:4] = 1
    instances[2:6, 4:7] = 2
    instances[2:6, 7:11] = 3  # three touching cells: one component of the binary mask
    from_components = evaluate.score_image(probability, instances > 0, 0.5)
    from_instances = evaluate.score_image(probability, instances > 0, 0.5, instances=instances)
    assert from_components["sa50"] == 1.0
    assert from_instances["n_true"] == 3 and from_instances["sa50"] == 0.0


def test_evaluate_batches_streams_and_keeps_the_overlay_state():
    states, planes = ["day1t1xy10", "day1t2xy10"], [12, 18, 24]
    per_image, overlay = evaluate.evaluate_batches(
        ThresholdModel(),
        _batches(states, planes),
        threshold=0.5,
        batch_size=2,
        overlay_state="day1t2xy10",
        total=6,
    )
    assert len(per_image) == 6
    assert list(per_image.columns[:4]) == ["source", "state", "z", "modality"]
    assert set(evaluate.METRIC_COLUMNS) <= set(per_image.columns)
    # Each row's scores are those of its own image.
    first = next(_batches(states, planes))
    expected = metrics.confusion(first["images"][0, 0] > 0.5, first["masks"][0])
    assert tuple(per_image.loc[0, ["tp", "fp", "fn", "tn"]]) == tuple(int(v) for v in expected)
    assert per_image["f1"].between(0, 1).all() and per_image["f1"].nunique() > 1
    assert list(overlay["z"]) == planes
    assert overlay["images"].shape == (3, 32, 32, 3) and overlay["images"].dtype == np.uint8
    assert overlay["probabilities"].shape == (3, 32, 32)
    assert str(overlay["state"]) == "day1t2xy10"
    pooled = evaluate.pooled_scores(per_image)
    assert 0 < pooled["f1"] < 1


def test_evaluate_batches_without_images_raises():
    with pytest.raises(ValueError, match="no test images"):
        evaluate.evaluate_batches(ThresholdModel(), [])


# ---------------------------------------------------------------- a built dataset and a saved model
def _touching_cells(height=40, width=48):
    labels = np.zeros((height, width), np.uint16)
    labels[disk((20, 14), 9, shape=labels.shape)] = 1
    labels[disk((20, 31), 9, shape=labels.shape)] = 2  # touches cell 1
    return labels


def test_instances_at_mask_keeps_touching_cells_apart():
    from protoseg.dataset import prepare_mask

    labels = _touching_cells()
    binary = prepare_mask(labels, (20, 24))
    instances = evaluate.instances_at_mask(labels, binary)
    assert instances.shape == (20, 24)
    assert set(np.unique(instances)) == {0, 1, 2}
    np.testing.assert_array_equal(instances > 0, binary > 0)
    assert metrics.instances_from_binary(binary).max() == 1  # components would merge them


@pytest.fixture
def built(tmp_path):
    """A tiny brightfield dataset (xy1 train, xy10 test, planes 12 and 18) and an untrained U-Net."""
    from protoseg.dataset import build_dataset
    from protoseg.io import write_tiff
    from protoseg.model import build_model, save_model

    rng = np.random.default_rng(0)
    records = []
    for xy in (1, 10):
        state = f"day1t1xy{xy}"
        write_tiff(tmp_path / "masks" / f"{state}.tif", _touching_cells())
        for z in (12, 18):
            path = tmp_path / "raw" / f"day1t1c1xy{xy}z{z}.tif"
            write_tiff(path, (rng.random((40, 48, 3)) * 255).astype(np.uint8))
            records.append(
                {
                    "path": str(path),
                    "state": state,
                    "modality": "brightfield",
                    "z": z,
                    "channel": 1,
                    "xy": xy,
                }
            )
    build_dataset(
        pd.DataFrame(records),
        tmp_path / "dataset",
        variant="brightfield",
        modalities=["brightfield"],
        split_cfg={"key": "xy", "test": [10]},
        dataset_cfg={"size": [32, 32], "colour": "rgb", "shard_size": 3},
        mask_path=str(tmp_path / "masks" / "{state}.tif"),
        progress=False,
    )
    torch.manual_seed(0)
    save_model(tmp_path / "model.pt", build_model({"depth": 2, "base_channels": 4}, in_channels=3))
    save_model(tmp_path / "grey.pt", build_model({"depth": 2, "base_channels": 4}, in_channels=1))
    return tmp_path


def test_evaluate_model_scores_the_test_split(built):
    per_image, overlay = evaluate.evaluate_model(
        built / "model.pt", built / "dataset", device="cpu"
    )
    assert len(per_image) == 2
    assert set(per_image["state"]) == {"day1t1xy10"} and sorted(per_image["z"]) == [12, 18]
    assert {"image", "modality", *evaluate.METRIC_COLUMNS} <= set(per_image.columns)
    assert per_image[["accuracy", "f1", "iou", "sa50", "msa"]].stack().between(0, 1).all()
    assert (per_image["n_true"] == 2).all()  # the label masks keep the touching cells apart
    assert (per_image[["tp", "fp", "fn", "tn"]].sum(axis=1) == 32 * 32).all()
    assert str(overlay["state"]) == "day1t1xy10" and list(overlay["z"]) == [12, 18]
    components, _ = evaluate.evaluate_model(
        built / "model.pt", built / "dataset", device="cpu", instances="components"
    )
    assert (components["n_true"] == 1).all()
    np.testing.assert_allclose(components["f1"], per_image["f1"])


def test_evaluate_model_refuses_bad_input(built):
    from protoseg.errors import ConfigError, InputError

    with pytest.raises(InputError, match="model takes 1 channel"):
        evaluate.evaluate_model(built / "grey.pt", built / "dataset", device="cpu")
    with pytest.raises(ConfigError, match="overlay_state"):
        evaluate.evaluate_model(
            built / "model.pt", built / "dataset", device="cpu", overlay_state="day1t1xy1"
        )
    with pytest.raises(ConfigError, match="evaluate.instances"):
        evaluate.evaluate_model(
            built / "model.pt", built / "dataset", device="cpu", instances="cells"
        )
