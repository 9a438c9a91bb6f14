"""A network that separates instances: targets, losses, the seeded watershed, its settings
(chosen on validation images only), the model file and the bad inputs around them."""

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from protoseg import instances, metrics
from protoseg import train as training
from protoseg.dataset import build_dataset, open_split
from protoseg.errors import ConfigError, InputError
from protoseg.losses import InstanceOutputLoss
from protoseg.model import CHECKPOINT_FORMAT, UNet, load_model, read_checkpoint, save_model
from protoseg.train import train_model

torch.set_num_threads(1)


def touching_discs(height=40, width=60, radius=10, gap=0):
    """Two discs of ``radius`` side by side that touch (centres 2 * radius + gap apart)."""
    yy, xx = np.mgrid[:height, :width]
    centre_y, left = height // 2, width // 2 - radius - (gap + 1) // 2
    right = left + 2 * radius + gap
    labels = np.zeros((height, width), np.uint32)
    labels[(yy - centre_y) ** 2 + (xx - left) ** 2 <= radius**2] = 1
    second = (yy - centre_y) ** 2 + (xx - right) ** 2 <= radius**2
    labels[second & (labels == 0)] = 2
    return labels, (centre_y, left), (centre_y, right)


def perfect_outputs(labels, mode):
    """What a perfect network would output for ``labels``: its training targets."""
    return instances.with_targets(labels > 0, labels, mode)


# ---------------------------------------------------------------- targets
def test_boundary_target_marks_where_two_cells_touch():
    labels, (cy, left), (_, right) = touching_discs()
    target = instances.targets(labels, "boundaries")
    assert target.shape == (1, *labels.shape) and target.dtype == np.float32
    contact = (cy, (left + right) // 2)
    assert labels[contact] > 0 and target[0][contact] == 1  # between the two cells
    assert target[0][cy, left] == 0 and target[0][cy, right] == 0  # cell centres
    assert target[0][0, 0] == 0  # far background
    # Both sides of the contact line: a pixel of each cell.
    row = target[0][cy]
    touching = np.flatnonzero(row[left:right]) + left
    assert {int(labels[cy, x]) for x in touching} == {1, 2}


def test_distance_targets_peak_at_each_centre():
    labels, (cy, left), (_, right) = touching_discs()
    centre, boundary = instances.targets(labels, "distances")
    for x in (left, right):
        # Inverted, normalised distances: 0 at a cell's centre, rising to 1 at its edge.
        assert centre[cy, x] == pytest.approx(0, abs=1e-6)
        assert boundary[cy, x] == pytest.approx(0, abs=0.1)
        inside = labels == labels[cy, x]
        assert centre[inside].max() == pytest.approx(1, abs=1e-3)
        # Closeness to the centre (1 - distance) peaks there and falls off outwards.
        closeness = 1 - centre[cy, x - 9 : x + 1]
        assert np.all(np.diff(closeness) > 0)
    assert centre[0, 0] == 1 and boundary[0, 0] == 1  # outside every cell


def test_full_target_puts_the_foreground_first():
    labels, _, _ = touching_discs()
    full = instances.with_targets(labels > 0, labels, "distances")
    assert full.shape == (3, *labels.shape)
    np.testing.assert_array_equal(full[0], (labels > 0).astype(np.float32))
    assert instances.with_targets(labels > 0, labels, "none").shape == (1, *labels.shape)


# ---------------------------------------------------------------- the watershed
@pytest.mark.parametrize("mode", ["boundaries", "distances"])
def test_watershed_separates_touching_discs_that_components_merge(mode):
    labels, _, _ = touching_discs()
    outputs = perfect_outputs(labels, mode)
    assert metrics.instances_from_binary(outputs[0] > 0.5).max() == 1  # cc: one object
    cells = instances.segment(outputs, mode, 0.5, instances.DEFAULTS[mode])
    assert cells.dtype == np.uint32 and cells.max() == 2
    scores = metrics.instance_scores(cells, labels)
    assert scores["sa50"] == 1.0 and scores["msa"] > 0.7


@pytest.mark.parametrize("mode", ["boundaries", "distances"])
def test_foreground_without_a_seed_stays_one_cell(mode):
    labels, _, _ = touching_discs()
    outputs = perfect_outputs(labels, mode)
    outputs[1:] = 1.0  # boundaries everywhere / centres nowhere: no seed at all
    cells = instances.segment(outputs, mode, 0.5, {"min_size": 0})
    np.testing.assert_array_equal(cells > 0, labels > 0)
    assert cells.max() == 1  # what connected components give


def test_min_size_drops_small_objects():
    labels, _, _ = touching_discs(radius=3)
    outputs = perfect_outputs(labels, "boundaries")
    assert instances.segment(outputs, "boundaries", 0.5, {"min_size": 0}).max() == 2
    assert instances.segment(outputs, "boundaries", 0.5, {"min_size": 200}).max() == 0


def test_settings_are_chosen_where_the_validation_truth_says():
    labels, _, _ = touching_discs()
    outputs = perfect_outputs(labels, "distances")
    # A seed-free network output: boundary distances high everywhere but at the centres.
    chosen = instances.choose_settings("distances", 0.5, [(outputs, labels)])
    assert chosen["sa50"] == 1.0 and chosen["images"] == 1
    assert chosen["settings"]["min_size"] in instances.MIN_SIZE_GRID
    # Truth with one big cell where the network sees two: the size filter is of no use,
    # and the best that any setting reaches is the merged object being missed.
    merged = (labels > 0).astype(np.uint32)
    worse = instances.choose_settings("distances", 0.5, [(outputs, merged)])
    assert worse["sa50"] < chosen["sa50"]


def test_grid_scores_agree_with_the_evaluation_scores():
    rng = np.random.default_rng(0)
    truth, _, _ = touching_discs(60, 80, radius=12)
    truth[5:12, 5:12] = 3
    for shift in range(4):
        segmentation = np.roll(truth, shift * 3, axis=1).astype(np.int64)
        segmentation[rng.random(truth.shape) < 0.02] = 9  # speckle: small false objects
        segmentation[50:58, 60:70] = 7
        fast = instances.size_filtered_scores(segmentation, truth, (0, 2, 40, 100000))
        for row, min_size in enumerate((0, 2, 40, 100000)):
            filtered = instances._size_filter(segmentation, min_size)
            slow = metrics.instance_scores(filtered, truth)
            assert fast[row] == pytest.approx((slow["msa"], slow["sa50"]))


@pytest.mark.parametrize(
    ("mode", "settings", "key"),
    [
        ("boundaries", {"seed_threshold": 1.5}, "train.watershed.seed_threshold"),
        ("distances", {"center_threshold": 0}, "train.watershed.center_threshold"),
        ("distances", {"min_size": -1}, "train.watershed.min_size"),
        ("distances", {"min_size": 2.5}, "train.watershed.min_size"),
        ("distances", {"smoothing": 50}, "train.watershed.smoothing"),
        ("boundaries", {"center_threshold": 0.5}, "train.watershed"),
    ],
)
def test_watershed_settings_out_of_range_name_the_key(mode, settings, key):
    with pytest.raises(ConfigError) as error:
        instances.check_setting(settings, mode)
    assert error.value.key == key


def test_unknown_modes_and_setting_words_are_refused():
    with pytest.raises(ConfigError, match="model.instances"):
        instances.check_mode("cellpose")
    with pytest.raises(ConfigError, match="train.watershed"):
        instances.check_setting("validation", "distances")
    instances.check_setting("auto", "distances")  # the default passes


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("mode", ["boundaries", "distances"])
def test_instance_loss_is_lowest_for_the_targets(mode):
    labels, _, _ = touching_discs()
    target = torch.from_numpy(perfect_outputs(labels, mode))[None]
    extra = target[:, 1:]
    perfect = torch.logit(extra.clamp(1e-4, 1 - 1e-4))
    loss = InstanceOutputLoss(mode)
    assert loss(perfect, target) < 0.05
    assert loss(-perfect, target) > 5 * loss(perfect, target)


# ---------------------------------------------------------------- model files
def test_instance_models_get_a_format_older_readers_refuse(tmp_path):
    binary, three = UNet(3, 1, depth=1, base_channels=2), UNet(3, 3, depth=1, base_channels=2)
    save_model(tmp_path / "binary.pt", binary, {})
    meta = {"instances": {"mode": "distances", "settings": {}, "source": "default"}}
    save_model(tmp_path / "three.pt", three, meta)
    # protoseg before instance outputs accepted exactly this format and read channel 0.
    assert read_checkpoint(tmp_path / "binary.pt")["format"] == CHECKPOINT_FORMAT
    assert read_checkpoint(tmp_path / "three.pt")["format"] != CHECKPOINT_FORMAT
    model, stored = load_model(tmp_path / "three.pt")
    assert model.architecture["out_channels"] == 3
    assert stored["instances"]["mode"] == "distances"


def test_instance_model_without_its_post_processing_is_refused(tmp_path):
    three = UNet(3, 3, depth=1, base_channels=2)
    save_model(tmp_path / "bare.pt", three, {})
    with pytest.raises(InputError, match="records no instance mode"):
        load_model(tmp_path / "bare.pt")
    save_model(tmp_path / "wrong.pt", three, {"instances": {"mode": "boundaries"}})
    with pytest.raises(InputError, match="2 output|3 output"):
        load_model(tmp_path / "wrong.pt")
    bad = {"instances": {"mode": "distances", "settings": {"center_threshold": 2.0}}}
    save_model(tmp_path / "range.pt", three, bad)
    with pytest.raises(InputError, match="center_threshold"):
        load_model(tmp_path / "range.pt")


# ---------------------------------------------------------------- data and training
def make_pairs(folder, binary_masks=False, validation=(5,), dataset_cfg=None):
    """6 states of 48 x 64 images, each with two touching bright discs (one instance each)."""
    rng = np.random.default_rng(1)
    rows = []
    for xy in (1, 2, 3, 4, 5, 10):
        state = f"day1t1xy{xy}"
        labels, _, _ = touching_discs(48, 64, radius=int(rng.integers(8, 12)))
        labels = np.roll(labels, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
        if binary_masks:  # and a third, separate cell in the corner
            labels[2:8, 2:8] = 3
        mask = (labels > 0).astype(np.uint8) * 255 if binary_masks else labels.astype(np.uint16)
        tifffile.imwrite(folder / f"{state}.tif", mask)
        edges = np.zeros_like(labels, bool)
        edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edges[1:, :] |= labels[1:, :] != labels[:-1, :]
        image = 60 + 140 * (labels > 0) - 100 * edges
        image = np.clip(image[..., None] + rng.normal(0, 8, (*labels.shape, 3)), 0, 255)
        path = folder / f"day1t1c1xy{xy}z12.tif"
        tifffile.imwrite(path, image.astype(np.uint8))
        rows.append(
            {
                "path": str(path),
                "channel": 1,
                "modality": "brightfield",
                "xy": xy,
                "z": 12,
                "state": state,
            }
        )
    build_dataset(
        pd.DataFrame(rows),
        folder / "ds",
        variant="bf",
        modalities=["brightfield"],
        split_cfg={"key": "xy", "test": [10], "validation": list(validation)},
        dataset_cfg=dataset_cfg or {"size": [48, 64], "colour": "rgb", "shard_size": 4},
        mask_path=str(folder / "{state}.tif"),
        context_planes=0,
        instances=True,
        progress=False,
    )
    return folder / "ds"


def test_resize_dataset_for_instances_stores_labels_aligned_to_the_mask(tmp_path):
    split = open_split(make_pairs(tmp_path), "train")
    assert split.record.has_instances
    image, mask = split.arrays(0)
    labels = split.instances(0)
    np.testing.assert_array_equal(labels > 0, mask > 0)
    assert len(np.unique(labels[labels > 0])) == 2


def test_patches_carry_targets_made_after_augmentation(tmp_path):
    from protoseg.sampling import PatchSampler
    from protoseg.transforms import Augmentation

    patches = {"geometry": "patches", "scale": 1.0, "patch_size": [32, 32], "colour": "rgb"}
    directory = make_pairs(tmp_path, dataset_cfg=patches)
    sampler = PatchSampler(
        open_split(directory, "train"),
        (32, 32),
        samples_per_epoch=4,
        batch_size=2,
        foreground_share=1.0,
        augmentation=Augmentation(flip=True, rotate90=True, scale=0.3),
        seed=1,
        instances="distances",
    )
    for index in range(4):
        image, target = sampler[index]
        _, mask, labels = sampler.draw(index)
        assert image.shape == (3, 32, 32) and target.shape == (3, 32, 32)
        np.testing.assert_array_equal(target[0].numpy(), mask)
        np.testing.assert_array_equal(target[1:].numpy(), instances.targets(labels, "distances"))
    train_model(
        directory,
        tmp_path / "m",
        model_cfg={"depth": 1, "base_channels": 2, "instances": "boundaries"},
        train_cfg={**TRAIN_CFG, "epochs": 1, "samples_per_epoch": 4},
        loss="bce+dice",
        progress=False,
    )
    _, meta = load_model(tmp_path / "m" / "model.pt")
    assert meta["instances"]["mode"] == "boundaries"


def test_binary_masks_are_labelled_by_components_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="carry no instance labels.*connected components"):
        directory = make_pairs(tmp_path, binary_masks=True)
    labels = open_split(directory, "train").instances(0)
    # The corner cell is its own; the two discs touch along a line, so connected
    # components keep them one object.
    assert len(np.unique(labels[labels > 0])) == 2


def test_binary_dataset_refused_for_an_instance_model(tmp_path):
    from tests.test_train import make_discs

    directory = make_discs(tmp_path)
    with pytest.raises(InputError, match="stores no instance labels"):
        training.Trainer(
            directory,
            tmp_path / "m",
            model_cfg={"depth": 1, "base_channels": 2, "instances": "distances"},
            train_cfg={"epochs": 1, "batch_size": 2, "device": "cpu"},
            loss="bce",
            progress=False,
        )


TRAIN_CFG = {
    "epochs": 2,
    "batch_size": 2,
    "lr_min": 1e-3,
    "lr_max": 1e-2,
    "lr_half_cycle_epochs": 1,
    "seed": 0,
    "device": "cpu",
    "precision": "fp32",
}


def test_watershed_settings_are_chosen_on_validation_images_only(tmp_path, monkeypatch):
    directory = make_pairs(tmp_path)
    seen = []
    original = training.Segmenter.sample_outputs

    def recording(segmenter, split, index):
        seen.append(split.split)
        return original(segmenter, split, index)

    monkeypatch.setattr(training.Segmenter, "sample_outputs", recording)
    train_model(
        directory,
        tmp_path / "m",
        model_cfg={"depth": 2, "base_channels": 4, "instances": "boundaries"},
        train_cfg=TRAIN_CFG,
        loss="bce",
        progress=False,
    )
    assert seen and set(seen) == {"validation"}
    model, meta = load_model(tmp_path / "m" / "model.pt")
    assert model.architecture["out_channels"] == 2
    stored = meta["instances"]
    assert stored["mode"] == "boundaries" and stored["source"] == "validation"
    # The stored settings are the grid's best on the validation images for this model.
    from protoseg.evaluate import TruthReader
    from protoseg.inference import to_original_size
    from protoseg.segmenter import Segmenter

    validation = open_split(directory, "validation")
    truth = TruthReader(validation, "original", "labels")
    segmenter = Segmenter(model, validation.record, overlap=0.5, batch_size=2)
    pairs = []
    for index in range(len(validation)):
        outputs = segmenter.sample_outputs(validation, index)
        labels = truth(index)[1]
        pairs.append((to_original_size(outputs, *labels.shape), labels))
    expected = instances.choose_settings("boundaries", meta["threshold"]["value"], pairs)
    assert stored["settings"] == expected["settings"]


def test_fixed_watershed_settings_come_from_the_config(tmp_path):
    directory = make_pairs(tmp_path, validation=())
    settings = {"center_threshold": 0.4, "boundary_threshold": 0.6, "min_size": 10}
    train_model(
        directory,
        tmp_path / "m",
        model_cfg={"depth": 1, "base_channels": 2, "instances": "distances"},
        train_cfg={**TRAIN_CFG, "epochs": 1, "threshold": 0.5, "watershed": settings},
        loss="bce",
        progress=False,
    )
    _, meta = load_model(tmp_path / "m" / "model.pt")
    assert meta["instances"]["source"] == "config"
    assert meta["instances"]["settings"] == instances.check_settings("distances", settings)


# ---------------------------------------------------------------- evaluation and prediction
@pytest.fixture(scope="module")
def distance_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("instances")
    directory = make_pairs(folder)
    train_model(
        directory,
        folder / "m",
        model_cfg={"depth": 2, "base_channels": 4, "instances": "distances"},
        train_cfg={**TRAIN_CFG, "epochs": 3},
        loss="bce",
        progress=False,
    )
    return directory, folder / "m" / "model.pt"


def test_evaluation_scores_the_networks_cells_beside_the_components(distance_model):
    from protoseg.evaluate import WATERSHED_COLUMNS, evaluate_model
    from protoseg.tables import instance_summary, summary, variant_tables

    directory, model_path = distance_model
    per_image, overlay = evaluate_model(model_path, directory, device="cpu", precision="fp32")
    assert set(WATERSHED_COLUMNS) <= set(per_image.columns)
    assert (per_image["instance_mode"] == "distances").all()
    assert per_image["ws_sa50"].between(0, 1).all() and per_image["ws_n_pred"].ge(0).all()
    # The overlay keeps the network's cells at the training scale, one colour each.
    assert overlay["instances"].shape == overlay["masks"].shape
    from protoseg.figures import prediction_overlays

    figure = prediction_overlays(overlay, float(overlay["threshold"]), "distances")
    assert "cells" in figure.axes[0].get_title()
    table = instance_summary(per_image, [12])
    assert {"ws_sa50", "ws_msa", "ws_matched_f1"} <= set(table.columns)
    tables = variant_tables(summary({("bf", "bce"): per_image}, [12]), "bf", ["bce"], [12])
    assert ("bce", "ws_msa") in tables["instances"]["imagewise"].columns
    assert ("bce", "ws_msa") not in tables["instances"]["micro"].columns
    assert ("bce", "sa50") in tables["instances"]["micro"].columns


def test_binary_models_tables_have_no_watershed_columns():
    from protoseg.tables import instance_summary

    per_image = pd.DataFrame(
        {
            "z": [12],
            **dict.fromkeys(["tp", "fp", "fn", "tn"], [1]),
            "n_true": [2],
            "n_pred": [1],
            "tp50": [1],
            "sa50": [0.5],
            "msa": [0.4],
            "matched_f1": [0.6],
        }
    )
    assert not any(column.startswith("ws_") for column in instance_summary(per_image, [12]))


def test_predict_writes_the_models_own_instances(distance_model, tmp_path):
    from protoseg.predict import predict_files
    from protoseg.segmenter import Segmenter

    directory, model_path = distance_model
    model, _ = Segmenter.from_file(model_path)
    assert model.own["mode"] == "distances"
    image_path = open_split(directory, "test").manifest["image"].iloc[0]
    summary = predict_files(model, [image_path], tmp_path / "out", progress=False)
    assert summary["instances"].iloc[0] == "distances"
    labels = tifffile.imread(summary["labels_path"].iloc[0])
    binary = tifffile.imread(summary["binary_path"].iloc[0])
    assert labels.dtype == np.uint16 and labels.shape == binary.shape
    assert not np.any(labels[binary == 0])  # cells lie within the foreground
    cc = predict_files(model, [image_path], tmp_path / "cc", instances="cc", progress=False)
    assert cc["instances"].iloc[0] == "cc"


def test_predict_model_instances_need_a_model_that_has_them(tmp_path):
    from protoseg.predict import predict_files
    from protoseg.segmenter import Segmenter
    from protoseg.transforms import Preprocessing

    network = UNet(3, 1, depth=1, base_channels=2)
    prep = Preprocessing("resize", "rgb", "dtype", (1.0, 99.8), (16, 16), None, (16, 16))
    record = {
        "variant": "bf",
        "modalities": ["brightfield"],
        "preprocessing": prep.to_dict(),
        "patch_size": None,
        "mask_source": "state",
        "split": {},
        "samples": {},
        "shard_size": 1,
        "has_instances": False,
    }
    model = Segmenter.from_meta(network, {"dataset": record}, name="binary.pt")
    assert model.own is None
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(InputError, match="instance outputs"):
        predict_files(model, [image], tmp_path / "out", instances="model", progress=False)
    summary = predict_files(model, [image], tmp_path / "auto", progress=False)
    assert summary["instances"].iloc[0] == "cc"  # auto: a binary model's cells are components
