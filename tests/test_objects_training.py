"""Object-level decisions in training, the model file, evaluation and the tables (issue 19)."""

import numpy as np
import pytest
import torch

from protoseg import objects
from protoseg.dataset import open_split
from protoseg.evaluate import TruthReader, evaluate_model
from protoseg.model import load_model
from protoseg.segmenter import Segmenter
from protoseg.tables import describe_provenance, provenance
from protoseg.train import Trainer, train_model
from tests.test_train import MODEL_CFG, TRAIN_CFG, make_discs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_discs(tmp_path_factory.mktemp("objects"))


def test_training_chooses_the_filter_and_threshold_on_validation_and_stores_them(
    dataset_dir, tmp_path
):
    train_cfg = {**TRAIN_CFG, "object_filter": "auto", "threshold_objective": "instances"}
    train_model(
        dataset_dir, tmp_path / "m", model_cfg=MODEL_CFG, train_cfg=train_cfg, loss="bce",
        progress=False,
    )  # fmt: skip
    model, meta = load_model(tmp_path / "m" / "model.pt")
    threshold = meta["threshold"]
    assert threshold["objective"] == "instances" and threshold["source"] == "validation"
    assert threshold["with_object_filter"]  # chosen together with the filter
    assert threshold["value"] in objects.LOGIT_GRID
    stored = meta["object_filter"]
    assert stored["source"] == "validation" and set(objects.FILTER_KEYS) <= set(stored)
    # The stored filter is the best of the grid on the validation images, for this model.
    validation = open_split(dataset_dir, "validation")
    segmenter = Segmenter(model, validation.record, threshold=threshold["value"])
    truth = TruthReader(validation, "original", "labels")
    images = []
    for index in range(len(validation)):
        outputs = segmenter.sample_outputs(validation, index)
        labels = truth(index)[1]
        scaled = segmenter.at_size(outputs, labels.shape)
        images.append((segmenter.cells(scaled), scaled[0], labels))
    chosen = objects.choose_filter(images)
    assert objects.ObjectFilter.from_dict(stored) == objects.ObjectFilter(
        chosen["filter"].min_area,
        chosen["filter"].min_mean_probability,
        chosen["filter"].min_solidity,
        source="validation",
        validation_matched_f1=chosen["matched_f1"],
    )
    # How the choice transfers: each validation image scored by the choice made on the
    # other, recorded beside the score on the images it was made on.
    tables = objects.threshold_tables(
        [(segmenter.at_size(segmenter.sample_outputs(validation, i), truth(i)[1].shape), truth(i)[1])
         for i in range(len(validation))],
        lambda outputs, t: segmenter.cells(outputs, t, False),
    )  # fmt: skip
    assert len(tables) == 2 and threshold["validation_matched_f1_held_out"] == pytest.approx(
        objects.held_out_score(tables)["matched_f1"]
    )
    # Read back by the segmenter of the file.
    loaded, _ = Segmenter.from_file(tmp_path / "m" / "model.pt", "evaluate", device="cpu")
    expected = objects.ObjectFilter.from_dict(stored)
    assert loaded.object_filter == (expected if expected.active else None)


def test_with_evaluations_tta_the_final_decisions_are_made_on_tta_outputs(
    dataset_dir, tmp_path, monkeypatch
):
    seen = []
    real = Trainer.segmenter

    def spy(self, **settings):
        seen.append(bool(settings.get("tta", False)))
        return real(self, **settings)

    monkeypatch.setattr(Trainer, "segmenter", spy)
    train_cfg = {**TRAIN_CFG, "object_filter": "auto", "threshold_objective": "instances"}
    train_model(
        dataset_dir, tmp_path / "m", model_cfg=MODEL_CFG, train_cfg=train_cfg, loss="bce",
        progress=False, inference={"tta": True},
    )  # fmt: skip
    assert seen[0] is False and True in seen  # epochs validate without, decisions with TTA
    model, meta = load_model(tmp_path / "m" / "model.pt")
    validation = open_split(dataset_dir, "validation")
    segmenter = Segmenter(model, validation.record, tta=True)
    truth = TruthReader(validation, "original", "labels")
    images = []
    for index in range(len(validation)):
        labels = truth(index)[1]
        outputs = segmenter.sample_outputs(validation, index)
        images.append((segmenter.at_size(outputs, labels.shape), labels))
    chosen = objects.choose_threshold_and_filter(
        images, lambda outputs, t: segmenter.cells(outputs, t, False)
    )
    assert chosen["value"] == meta["threshold"]["value"]
    assert np.isclose(chosen["matched_f1"], meta["threshold"]["validation_matched_f1"])


def test_a_threshold_at_the_top_of_the_grid_is_flagged_with_a_warning(
    dataset_dir, tmp_path, monkeypatch, caplog
):
    real = objects.joint_choice

    def at_the_top(*args, **kwargs):  # as a network certain of everything it calls cell
        return real(*args, **kwargs) | {"value": objects.LOGIT_GRID[-1]}

    monkeypatch.setattr(objects, "joint_choice", at_the_top)
    train_cfg = {**TRAIN_CFG, "object_filter": "auto", "threshold_objective": "instances"}
    with caplog.at_level("WARNING", logger="protoseg.train"):
        train_model(
            dataset_dir, tmp_path / "m", model_cfg=MODEL_CFG, train_cfg=train_cfg, loss="bce",
            progress=False,
        )  # fmt: skip
    assert "is the highest of the grid 0.0025..0.9975" in caplog.text
    _, meta = load_model(tmp_path / "m" / "model.pt")
    assert meta["threshold"]["at_grid_edge"] == "highest"
    assert objects.grid_edge(0.5) is None and objects.grid_edge(objects.LOGIT_GRID[0]) == "lowest"


def test_a_choice_that_does_not_hold_on_a_left_out_validation_image_is_warned_about(
    dataset_dir, tmp_path, monkeypatch, caplog
):
    real = objects.held_out_score
    train_cfg = {**TRAIN_CFG, "object_filter": "auto", "threshold_objective": "instances"}
    for name, drop in (("holds", 0.05), ("fails", 0.2)):

        def held_out(tables, *args, drop=drop, **kwargs):
            in_sample = objects.joint_choice(tables)["matched_f1"]
            return real(tables, *args, **kwargs) | {"matched_f1": in_sample - drop}

        monkeypatch.setattr(objects, "held_out_score", held_out)
        caplog.clear()
        with caplog.at_level("WARNING", logger="protoseg.train"):
            train_model(
                dataset_dir, tmp_path / name, model_cfg=MODEL_CFG, train_cfg=train_cfg,
                loss="bce", progress=False,
            )  # fmt: skip
        threshold = load_model(tmp_path / name / "model.pt")[1]["threshold"]
        gap = threshold["validation_matched_f1"] - threshold["validation_matched_f1_held_out"]
        assert gap == pytest.approx(drop)
        warned = "on a validation image left out of the choice" in caplog.text
        assert warned == (name == "fails")


def test_ema_weights_are_validated_and_saved_and_evaluate_reports_the_filter(dataset_dir, tmp_path):
    train_cfg = {
        **TRAIN_CFG,
        "ema": 0.9,
        "keep_best": False,
        "recalibrate_bn": False,
        "object_filter": {"min_area": 3, "min_mean_probability": 0.2},
        "threshold": 0.4,
    }
    trainer = Trainer(
        dataset_dir, tmp_path / "m", model_cfg=MODEL_CFG, train_cfg=train_cfg, loss="bce",
        progress=False,
    )  # fmt: skip
    raw = {}

    def keep_raw(epoch):
        if epoch == trainer.epochs:
            raw.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    trainer.run(keep_raw)
    model, meta = load_model(tmp_path / "m" / "model.pt")
    saved = model.state_dict()
    average = trainer.ema.weights(trainer.model)
    weights = [k for k, v in saved.items() if v.is_floating_point()]
    assert all(torch.allclose(saved[k], average[k].cpu()) for k in weights)
    assert any(not torch.allclose(saved[k], raw[k]) for k in weights)
    checkpoint = torch.load(
        sorted((tmp_path / "m" / "checkpoints").glob("*.pt"))[-1], weights_only=False
    )
    assert checkpoint["ema"]["decay"] == 0.9 and checkpoint["ema"]["steps"] > 0
    assert meta["train"]["ema"] == 0.9
    assert meta["object_filter"]["source"] == "config"

    per_image, _ = evaluate_model(tmp_path / "m" / "model.pt", dataset_dir, device="cpu")
    assert per_image["object_filter"].str.contains("area >= 3 px").all()
    assert (per_image["n_pred"] <= per_image["n_pred_unfiltered"]).all()
    # The threshold is not 0.5: the scores at 0.5 stand beside the chosen threshold's.
    assert per_image[["f1_at_05", "matched_f1_at_05"]].notna().all().all()
    text = describe_provenance(provenance(per_image))
    assert "object filter: area >= 3 px" in text and "at 0.5" in text


def test_validation_folds_batch_norm_as_evaluation_is_told(dataset_dir, tmp_path):
    def trainer(**inference):
        return Trainer(
            dataset_dir, tmp_path / "m", model_cfg=MODEL_CFG, train_cfg=TRAIN_CFG, loss="bce",
            progress=False, inference=inference,
        )  # fmt: skip

    assert MODEL_CFG["batch_norm"]
    folded = trainer(fold_batch_norm=True).segmenter()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.network.modules())
    as_trained = trainer()  # the schema's default for evaluate.fold_batch_norm: off
    assert as_trained.segmenter().network is as_trained.model


def test_a_validation_split_without_cells_falls_back_with_a_warning(dataset_dir, tmp_path, caplog):
    train_cfg = {
        **TRAIN_CFG,
        "epochs": 1,
        "object_filter": "auto",
        "threshold_objective": "instances",
    }
    trainer = Trainer(
        dataset_dir, tmp_path / "m", model_cfg=MODEL_CFG, train_cfg=train_cfg, loss="bce",
        progress=False,
    )  # fmt: skip
    outputs = np.full((1, 24, 24), 0.9, np.float32)
    trainer._validation_cache = [(outputs, np.zeros((24, 24), np.int32))]
    with caplog.at_level("WARNING", logger="protoseg.train"):
        threshold = trainer.choose_threshold()
        stored = trainer.choose_object_filter(threshold["value"], None)
    assert threshold == {"value": 0.5, "source": "default (no cells in the validation split)"}
    assert stored["source"] == "default (no cells in the validation split)"
    assert not objects.ObjectFilter.from_dict(stored).active
    assert caplog.text.count("the validation split holds no cell") == 2


def test_a_validation_split_of_empty_masks_is_said_at_build_and_chooses_nothing(tmp_path, caplog):
    with pytest.warns(UserWarning, match=r"the validation split \(2 image\(s\) of state\(s\) "
                      r"day1t1xy5\) holds no cell"):  # fmt: skip
        dataset_dir = make_discs(tmp_path, validation=(5,), empty=(5,))
    train_cfg = {
        **TRAIN_CFG,
        "epochs": 3,
        "validate_every": 1,
        "keep_best": True,
        "object_filter": "auto",
        "threshold_objective": "instances",
    }
    with caplog.at_level("WARNING", logger="protoseg.train"):
        history = train_model(
            dataset_dir, tmp_path / "m", model_cfg=MODEL_CFG, train_cfg=train_cfg, loss="bce",
            progress=False,
        )  # fmt: skip
    _, meta = load_model(tmp_path / "m" / "model.pt")
    reason = "default (no cells in the validation split)"
    assert meta["threshold"] == {"value": 0.5, "source": reason}
    assert meta["epoch_kept"] == 3 and history["val_f1"].isna().all()
    assert meta["object_filter"]["source"] == reason
    assert not objects.ObjectFilter.from_dict(meta["object_filter"]).active
    assert "the validation split (2 images) holds no cell, so nothing is chosen" in caplog.text


def test_the_default_settings_write_no_object_keys(dataset_dir, tmp_path):
    train_model(
        dataset_dir, tmp_path / "m", model_cfg=MODEL_CFG, train_cfg={**TRAIN_CFG, "epochs": 1},
        loss="bce", progress=False,
    )  # fmt: skip
    _, meta = load_model(tmp_path / "m" / "model.pt")
    assert "object_filter" not in meta and "objective" not in meta["threshold"]
    assert not {"ema", "object_filter", "threshold_objective"} & set(meta["train"])


def test_tta_reaches_the_segmenter_from_evaluate_and_predict_settings(dataset_dir, tmp_path):
    from protoseg.predict import with_predict_settings

    train_model(
        dataset_dir, tmp_path / "m", model_cfg=MODEL_CFG, train_cfg={**TRAIN_CFG, "epochs": 1},
        loss="bce", progress=False,
    )  # fmt: skip
    path = tmp_path / "m" / "model.pt"
    plain, _ = Segmenter.from_file(path, "evaluate", device="cpu")
    assert not plain.tta
    assert Segmenter.from_file(path, "evaluate", device="cpu", tta=True)[0].tta
    assert with_predict_settings(plain, {"tta": True})[0].tta
    per_image, _ = evaluate_model(path, dataset_dir, device="cpu", tta=True)
    plain_scores, _ = evaluate_model(path, dataset_dir, device="cpu")
    assert len(per_image) == len(plain_scores) and "object_filter" not in per_image
