"""Per-image evaluation of a model on batches of a test split."""

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.draw import disk

from protoseg import evaluate, metrics
from protoseg.config import section_defaults
from protoseg.segmenter import Segmenter

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


# ---------------------------------------------------------------- a built dataset and a saved model
def _touching_cells(height=40, width=48):
    labels = np.zeros((height, width), np.uint16)
    labels[disk((20, 14), 9, shape=labels.shape)] = 1
    labels[disk((20, 31), 9, shape=labels.shape)] = 2  # touches cell 1
    return labels


def test_instances_at_mask_keeps_touching_cells_apart():
    from protoseg.transforms import binary_mask

    labels = _touching_cells()
    binary = binary_mask(labels, (20, 24))
    instances = evaluate.instances_at_mask(labels, binary)
    assert instances.shape == (20, 24)
    assert set(np.unique(instances)) == {0, 1, 2}
    np.testing.assert_array_equal(instances > 0, binary > 0)
    assert metrics.instances_from_binary(binary).max() == 1  # components would merge them


@pytest.fixture
def built(tmp_path):
    """A tiny brightfield dataset (xy1 train, xy10 test, planes 12 and 18) and an untrained U-Net."""
    return build_set(tmp_path)


def build_set(tmp_path, context_planes=0):
    """:func:`built`'s data set; ``context_planes`` > 0 also saves ``context.pt``, a U-Net
    that takes the focal windows."""
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
        context_planes=context_planes,
        progress=False,
    )
    torch.manual_seed(0)
    save_model(tmp_path / "model.pt", build_model({"depth": 2, "base_channels": 4}, in_channels=3))
    save_model(tmp_path / "grey.pt", build_model({"depth": 2, "base_channels": 4}, in_channels=1))
    if context_planes:
        channels = 3 * (2 * context_planes + 1)
        save_model(
            tmp_path / "context.pt",
            build_model({"depth": 2, "base_channels": 4}, in_channels=channels),
        )
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
    # scored at the original 40 x 48 resolution, against the original masks
    assert (per_image[["tp", "fp", "fn", "tn"]].sum(axis=1) == 40 * 48).all()
    assert set(per_image["resolution"]) == {"original"} and set(per_image["geometry"]) == {"resize"}
    # the model records no threshold: 0.5, said so
    assert set(per_image["threshold"]) == {0.5} and set(per_image["threshold_source"]) == {
        "default"
    }
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


def test_a_context_model_is_scored_per_plane_and_its_overlay_shows_the_plane_itself(tmp_path):
    from protoseg.errors import InputError
    from protoseg.io import read_image
    from protoseg.transforms import display_rgb, prepare_image

    built = build_set(tmp_path, context_planes=1)
    per_image, overlay = evaluate.evaluate_model(
        built / "context.pt", built / "dataset", device="cpu"
    )
    assert sorted(per_image["z"]) == [12, 18] and set(per_image["context_planes"]) == {1}
    assert (per_image[["tp", "fp", "fn", "tn"]].sum(axis=1) == 40 * 48).all()
    from protoseg.dataset import read_record

    prep = read_record(built / "dataset").preprocessing
    for z in (12, 18):
        # z18's window is z12, z18, z18: its first channels are z12's, not the plane's own.
        raw = read_image(built / "raw" / f"day1t1c1xy10z{z}.tif")
        shown = overlay["images"][list(overlay["z"]).index(z)]
        np.testing.assert_array_equal(
            shown, display_rgb(prepare_image(raw, prep), channels_first=True)
        )
    with pytest.raises(InputError, match="model takes 3 channel.*has 9"):
        evaluate.evaluate_model(built / "model.pt", built / "dataset", device="cpu")


def test_scores_at_the_original_resolution_use_the_original_masks(tmp_path):
    """A model that outputs its input: the data set's image is the truth mask itself, so at
    the training resolution the prediction is perfect, and at the original resolution the
    score counts what the resize and its way back lose."""
    from protoseg.dataset import build_dataset, open_split
    from protoseg.io import write_tiff

    records = []
    for xy in (1, 10):
        labels = np.zeros((60, 90), np.uint16)
        labels[disk((30, 30), 9, shape=labels.shape)] = 1
        labels[disk((30, 62), 4, shape=labels.shape)] = 2
        write_tiff(tmp_path / f"s{xy}.tif", labels)  # the mask of state s{xy}
        path = tmp_path / f"image{xy}.tif"
        write_tiff(path, ((labels > 0) * 255).astype(np.uint8))
        records.append(
            {"path": str(path), "state": f"s{xy}", "modality": "bf", "z": 1, "xy": xy, "channel": 1}
        )
    build_dataset(
        pd.DataFrame(records),
        tmp_path / "ds",
        variant="bf",
        modalities=["bf"],
        split_cfg={"key": "xy", "test": [10]},
        dataset_cfg={"size": [20, 30], "colour": "grey"},
        mask_path=str(tmp_path / "{state}.tif"),
        context_planes=0,
        progress=False,
    )
    split = open_split(tmp_path / "ds", "test")
    # The evaluate section as the schema completes it, on this CPU in float32.
    window = section_defaults("evaluate", device="cpu", precision="fp32")
    segmenter = Segmenter(
        ThresholdModel(),
        split.record,
        threshold=0.5,
        tile=window["tile"],
        overlap=window["overlap"],
        batch_size=window["batch_size"],
    )
    scoring = {"instances": window["instances"], "overlay_state": window["overlay_state"]}
    training, _ = evaluate.evaluate_split(
        segmenter, split, resolution="training", progress=False, **scoring
    )
    original, _ = evaluate.evaluate_split(
        segmenter, split, resolution="original", progress=False, **scoring
    )
    assert int(training[["tp", "fp", "fn", "tn"]].sum(axis=1).iloc[0]) == 20 * 30
    assert int(original[["tp", "fp", "fn", "tn"]].sum(axis=1).iloc[0]) == 60 * 90
    assert training["f1"].iloc[0] == pytest.approx(1.0)
    assert 0.6 < original["f1"].iloc[0] < 1.0  # the 3x resize loses the cells' edges
    assert int(original["n_true"].iloc[0]) == 2


def test_model_threshold_prefers_the_config_then_the_model():
    from protoseg.segmenter import stored_threshold

    stored = {"threshold": {"value": 0.83, "source": "validation"}}
    assert stored_threshold(stored, None) == (0.83, "validation")
    assert stored_threshold(stored, 0.4) == (0.4, "config")
    assert stored_threshold({}, None) == (0.5, "default")
