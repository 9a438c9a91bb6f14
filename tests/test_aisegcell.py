"""config/aisegcell.yaml: real bright-field images named by another lab (aiSEGcell, CC-BY-4.0).

The data stay in ../shared/data/aisegcell (never copied into the repository); the tests that
read them are skipped where that folder is absent.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from skimage.measure import label as connected_components
from snakemake.utils import validate

from protoseg.catalogue import records_from_config, states_in_split
from protoseg.config import SCHEMA
from protoseg.config import validate as validate_config
from protoseg.io import read_image
from protoseg.masks.imported import import_path
from protoseg.model import load_model
from protoseg.objects import ObjectFilter
from tests.test_paper_config import leaf_keys
from tests.workflow_helpers import REPO, demo_config, run_snakemake, write_project

AISEGCELL = REPO / "config" / "aisegcell.yaml"
DATA = (REPO / ".." / "shared" / "data" / "aisegcell").resolve()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present")

# Three states for the end-to-end run: different sizes and colour storage in one set.
TRAIN_STATE = "200925SK30_p30_t1"  # fig1, 2048 x 2044, stored RGB with R = G = B
VALIDATION_STATE = "200313SK20_p1_t74"  # fig1, 1024 x 1024
TEST_STATE = "240418YZ16_p16_t1"  # suppl_fig3, 1024 x 1024 grey


def aisegcell() -> dict:
    return yaml.safe_load(AISEGCELL.read_text())


def test_config_validates_against_the_schema():
    config = aisegcell()
    validate_config(config)
    validate(config, str(SCHEMA))  # as the Snakefile does


def test_config_sets_every_key_the_demo_config_has():
    missing = leaf_keys(demo_config()) - leaf_keys(aisegcell())
    assert not missing, f"config/aisegcell.yaml lacks {sorted(missing)}"


def test_every_key_is_commented():
    lines = AISEGCELL.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w]*):", line)
        if not match or match.group(2) == "modalities":
            continue
        before = [previous for previous in lines[:index] if previous.strip()]
        commented = "#" in line or (before and before[-1].lstrip().startswith("#"))
        # a key right after a commented sibling (min_area / max_area pairs)
        sibling_commented = any(
            re.match(rf"^{match.group(1)}\S", previous) and "#" in previous
            for previous in lines[max(0, index - 6) : index]
        )
        assert commented or sibling_commented, f"line {index + 1} has no comment: {line!r}"


def test_config_asks_for_what_the_issue_asks():
    config = aisegcell()
    assert config["data"]["source"] == "folder"
    assert config["data"]["raw_dir"] == "../shared/data/aisegcell"
    assert config["masks"]["method"] == "import" and config["quality"]["compare_classical"]
    assert config["split"]["key"] == "experiment"
    assert {name: v["modalities"] for name, v in config["dataset"]["variants"].items()} == {
        "brightfield": ["brightfield"],
    }
    # The nuclei's own scale: patches at native resolution, per-image normalisation.
    dataset = config["dataset"]
    assert dataset["geometry"] == "patches" and dataset["scale"] == 1.0
    assert dataset["normalise"] == "percentile"
    # Sparse nuclei: Dice in the loss, cells in every batch, threshold from validation.
    assert "bce+dice" in config["train"]["losses"] and "bce" in config["train"]["losses"]
    assert config["train"]["foreground_share"] > 0
    assert config["train"]["threshold"] == "validation"
    # Threshold and object filter chosen together for objects (docs/realdata.md).
    assert config["train"]["threshold_objective"] == "instances"
    assert config["train"]["object_filter"] == "auto"
    # Test-time augmentation won on validation (docs/realdata.md): evaluation, training's
    # final decisions and predict use it alike.
    assert config["evaluate"]["tta"] and config["predict"]["tta"]
    # The plain recipe won on validation (docs/realdata.md): no zoom, no gamma jitter,
    # batch-norm statistics as trained.
    augment = config["train"]["augment"]
    assert augment["scale"] == 0 and augment["gamma"] == 0 and augment["contrast"] > 0
    assert config["train"]["recalibrate_bn"] is False
    assert (
        config["evaluate"]["threshold"] is None and config["evaluate"]["resolution"] == "original"
    )


@needs_data
def test_catalogue_of_the_real_folder_has_18_states_with_their_truth():
    data = aisegcell()["data"]
    records = records_from_config(data, DATA)
    assert records["state"].nunique() == 18
    assert len(records) == 36
    assert set(records["modality"]) == {"brightfield", "nucleus"}
    masks = aisegcell()["masks"]
    nucleus = records[records["modality"] == "nucleus"]
    for state, path in zip(nucleus["state"], nucleus["path"], strict=True):
        truth = import_path(masks["import"]["dir"], masks["import"]["template"], state, 1, path)
        assert truth.is_file(), truth


@needs_data
def test_split_holds_out_whole_experiments():
    config = aisegcell()
    records = records_from_config(config["data"], DATA)
    test = states_in_split(records, config["split"], "test")
    validation = states_in_split(records, config["split"], "validation")
    train = states_in_split(records, config["split"], "train")
    assert len(test) == 6 and len(validation) == 4 and len(train) == 8
    experiments = records.groupby("state")["experiment"].first()
    groups = [set(experiments[states]) for states in (test, validation, train)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])


def tiny_aisegcell() -> dict:
    """Three states (train 2048 x 2044 RGB-stored, validation and test 1024 x 1024 grey) in
    the config's patches geometry at a quarter of the scale, 32 px patches, 1 epoch, one
    loss (each model's train and evaluate jobs start torch anew: seconds each)."""
    config = copy.deepcopy(aisegcell())
    config["data"]["raw_dir"] = str(DATA)
    keep = (
        r"(fig1/(brightfield|nucleus)/(200925SK30_p0030|200313SK20_p0001)"
        r"|suppl_fig3/(brightfield|nucleus)/240418YZ16_p0016)"
    )
    config["data"]["ignore"] = [*config["data"]["ignore"], rf"^(?!{keep})"]
    config["split"].update({"test": ["240418YZ16"], "validation": ["200313SK20"]})
    config["dataset"].update({"scale": 0.25, "patch_size": [32, 32]})
    config["model"].update({"depth": 2, "base_channels": 4})
    config["train"].update(
        {
            "epochs": 1,
            "batch_size": 2,
            "samples_per_epoch": 4,
            "validate_every": 1,
            "losses": ["bce"],
        }
    )
    config["evaluate"].update({"tile": [64, 64]})
    return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    if not DATA.is_dir():
        pytest.skip(f"{DATA} not present")
    workdir = tmp_path_factory.mktemp("aisegcell")
    # As config/config.yaml of the working directory: read alone, not merged into the demo's.
    write_project(workdir, tiny_aisegcell())
    run_snakemake(workdir)
    return workdir


@pytest.mark.slow
def test_tiny_run_catalogues_images_of_different_sizes(finished_run):
    catalogue = pd.read_csv(finished_run / "results" / "catalogue.csv")
    assert sorted(catalogue["state"].unique()) == sorted(
        [TRAIN_STATE, VALIDATION_STATE, TEST_STATE]
    )
    sizes = catalogue.groupby("state")[["height", "width"]].first()
    assert tuple(sizes.loc[TRAIN_STATE]) == (2048, 2044)
    assert tuple(sizes.loc[TEST_STATE]) == (1024, 1024)
    assert set(catalogue.groupby("state")["channels"].first()) == {1, 3}


@pytest.mark.slow
def test_tiny_run_imports_the_gt_as_instances(finished_run):
    mask = tifffile.imread(finished_run / "results" / "masks" / "planes" / TEST_STATE / "z1.tif")
    truth = read_image(DATA / "suppl_fig3" / "gt" / "240418YZ16_p0016_t00001_z001.png")
    assert mask.dtype == np.uint16 and mask.shape == truth.shape
    assert mask.max() == connected_components(truth > 0, connectivity=1).max()
    assert np.array_equal(mask > 0, truth > 0)


@pytest.mark.slow
def test_tiny_run_scores_the_classical_method_against_the_gt(finished_run):
    quality = pd.read_csv(finished_run / "results" / "masks" / "quality.csv")
    classical = quality[quality["method"] == "classical"]
    assert sorted(classical["state"]) == sorted([TRAIN_STATE, VALIDATION_STATE, TEST_STATE])
    assert classical["sa50"].between(0, 1).all()
    # The imported gt scored against itself: a check that the truth path is the gt.
    imported = quality[quality["method"] == "import"]
    assert np.allclose(imported[imported["kind"] == "plane"]["sa50"], 1.0)
    assert "classical" in (finished_run / "results" / "masks" / "quality.md").read_text()


@pytest.mark.slow
def test_tiny_run_evaluates_every_model_on_the_held_out_experiment(finished_run):
    per_image = pd.read_csv(
        finished_run / "results" / "metrics" / "brightfield-bce" / "per_image.csv"
    )
    assert set(per_image["state"]) == {TEST_STATE}
    # Scored at the image's own 1024 x 1024, against its own gt, whatever the training scale.
    assert int(per_image[["tp", "fp", "fn", "tn"]].sum(axis=1).iloc[0]) == 1024 * 1024
    assert set(per_image["geometry"]) == {"patches"} and set(per_image["resolution"]) == {
        "original"
    }
    # The threshold was chosen on the validation experiment, never on the test image.
    assert set(per_image["threshold_source"]) == {"validation"}
    _, meta = load_model(finished_run / "results" / "models" / "brightfield-bce" / "model.pt")
    assert meta["threshold"]["with_object_filter"] and "object_filter" in meta
    # The scores say the filter they were made with (a filter of all zeros keeps all).
    assert ("object_filter" in per_image) == ObjectFilter.from_dict(meta["object_filter"]).active
    table = pd.read_csv(finished_run / "results" / "tables" / "brightfield_instances.csv")
    assert len(table) > 0
    markdown = (finished_run / "results" / "tables" / "brightfield.md").read_text()
    assert "patches geometry" in markdown and "(validation)" in markdown
    manifest = pd.read_csv(finished_run / "results" / "datasets" / "brightfield" / "manifest.csv")
    assert set(manifest.loc[manifest["state"] == TRAIN_STATE, "stored_height"]) == {512}
