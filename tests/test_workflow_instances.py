"""End to end: the demo with a network that separates instances (model.instances:
distances), from raw TIFFs to the tables, the overlays and a prediction's instance labels."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg.model import load_model
from tests.workflow_helpers import run_snakemake, tiny_config, write_project

pytestmark = pytest.mark.slow

MODEL = "brightfield-bce"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("instances")
    config = tiny_config()
    config["split"]["validation"] = [2]
    config["dataset"]["variants"] = {"brightfield": {"modalities": ["brightfield"]}}
    config["model"]["instances"] = "distances"
    config["train"]["losses"] = ["bce"]
    # The demo fixes the study's 0.5; here the threshold is chosen on the validation position.
    config["train"]["threshold"] = "validation"
    new_images = workdir / "new"
    new_images.mkdir(parents=True)
    config["predict"]["input_dir"] = str(new_images)
    write_project(workdir, config)
    rng = np.random.default_rng(0)
    tifffile.imwrite(new_images / "field.tif", rng.integers(0, 255, (120, 90, 3), dtype=np.uint8))
    run_snakemake(workdir)
    return workdir, config


def test_dataset_stores_instance_labels_for_the_resize_geometry(finished_run):
    workdir, _ = finished_run
    shards = workdir / "results" / "datasets" / "brightfield" / "shards"
    assert sorted(shards.glob("*-instances.npy"))


def test_model_has_instance_outputs_and_validation_settings(finished_run):
    workdir, _ = finished_run
    model, meta = load_model(workdir / "results" / "models" / MODEL / "model.pt")
    assert model.architecture["out_channels"] == 3
    assert meta["instances"]["mode"] == "distances"
    assert meta["instances"]["source"] == "validation"
    assert meta["threshold"]["source"] == "validation"


def test_per_image_scores_and_tables_have_both_kinds_of_instances(finished_run):
    workdir, config = finished_run
    per_image = pd.read_csv(workdir / "results" / "metrics" / MODEL / "per_image.csv")
    for column in ("sa50", "msa", "ws_sa50", "ws_msa", "ws_matched_f1"):
        assert per_image[column].between(0, 1).all(), column
    assert set(per_image["z"]) == set(config["data"]["planes"])
    instances = pd.read_csv(workdir / "results" / "tables" / "brightfield_instances.csv")
    assert {"bce_ws_sa50", "bce_ws_msa", "bce_sa50"} <= set(instances.columns)
    table = (workdir / "results" / "tables" / "brightfield.md").read_text()
    assert "SA50 ws" in table and "instance outputs: distances" in table


def test_prediction_writes_the_networks_instances(finished_run):
    workdir, _ = finished_run
    out = workdir / "results" / "predictions" / MODEL
    summary = pd.read_csv(out / "predictions.csv")
    assert summary["instances"].iloc[0] == "distances"
    assert tifffile.imread(out / "field_labels.tif").shape == (120, 90)
