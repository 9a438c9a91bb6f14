"""End to end: the demo in the patches geometry (native scale, patch sampler, sliding window,
threshold from a validation position), from raw TIFFs to the tables and a prediction, with a
focal-context model beside the single-plane one."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg.model import load_model
from tests.workflow_helpers import run_snakemake, tiny_config, write_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("patches")
    config = tiny_config()
    config["split"]["validation"] = [2]
    config["dataset"].update(
        {"geometry": "patches", "scale": 0.5, "patch_size": [32, 32], "normalise": "percentile"}
    )
    config["dataset"]["variants"] = {
        "brightfield": {"modalities": ["brightfield"]},
        "brightfield_z1": {"modalities": ["brightfield"], "context_planes": 1},
    }
    config["train"].update(
        {
            "losses": ["bce+dice"],
            "samples_per_epoch": 16,
            "threshold": "validation",
            "augment": {"flip": True, "rotate90": True, "scale": 0.2, "gamma": 0.2},
        }
    )
    new_images = workdir / "new"
    new_images.mkdir(parents=True)
    config["predict"]["input_dir"] = str(new_images)
    write_project(workdir, config)
    # A new stack of another size than the demo's, one file per plane named as the raw images
    # are: predict rescales and tiles each plane; the context model takes its neighbours too.
    rng = np.random.default_rng(0)
    for z in config["data"]["planes"]:
        tifffile.imwrite(
            new_images / f"day9t1c1xy5z{z}.tif",
            rng.integers(0, 255, (150, 110, 3), dtype=np.uint8),
        )
    run_snakemake(workdir)
    return workdir, config


def test_dataset_is_stored_at_half_scale_with_instances(finished_run):
    workdir, config = finished_run
    manifest = pd.read_csv(workdir / "results" / "datasets" / "brightfield" / "manifest.csv")
    assert set(manifest["stored_height"]) == {config["demo"]["height"] // 2}
    assert set(manifest["split"]) == {"train", "validation", "test"}
    assert manifest.groupby("shard").size().max() == 1


def test_model_records_geometry_and_a_validation_threshold(finished_run):
    workdir, _ = finished_run
    _, meta = load_model(workdir / "results" / "models" / "brightfield-bce+dice" / "model.pt")
    assert meta["dataset"]["geometry"] == "patches" and meta["dataset"]["scale"] == 0.5
    assert meta["threshold"]["source"] == "validation" and 0 < meta["threshold"]["value"] < 1
    history = pd.read_csv(workdir / "results" / "models" / "brightfield-bce+dice" / "history.csv")
    assert history["val_f1"].notna().all()


def test_scores_are_at_the_original_resolution_and_the_table_says_how(finished_run):
    workdir, config = finished_run
    per_image = pd.read_csv(
        workdir / "results" / "metrics" / "brightfield-bce+dice" / "per_image.csv"
    )
    pixels = config["demo"]["height"] * config["demo"]["width"]
    assert (per_image[["tp", "fp", "fn", "tn"]].sum(axis=1) == pixels).all()
    table = (workdir / "results" / "tables" / "brightfield.md").read_text()
    assert "patches geometry" in table and "original resolution" in table
    assert "(validation)" in table


def test_prediction_of_a_new_image_keeps_its_size(finished_run):
    workdir, config = finished_run
    for variant in ("brightfield", "brightfield_z1"):
        out = workdir / "results" / "predictions" / f"{variant}-bce+dice"
        assert tifffile.imread(out / "day9t1c1xy5z18_labels.tif").shape == (150, 110)
        summary = pd.read_csv(out / "predictions.csv")
        _, meta = load_model(workdir / "results" / "models" / f"{variant}-bce+dice" / "model.pt")
        assert summary["threshold"].iloc[0] == pytest.approx(meta["threshold"]["value"])
    # The context model's summary says which plane each row is.
    assert summary["plane"].tolist() == config["data"]["planes"]


def test_the_context_model_trains_on_patches_of_three_planes(finished_run):
    workdir, _ = finished_run
    _, meta = load_model(workdir / "results" / "models" / "brightfield_z1-bce+dice" / "model.pt")
    assert meta["dataset"]["context_planes"] == 1 and meta["dataset"]["channels"] == 9
    assert meta["dataset"]["geometry"] == "patches"
    per_image = pd.read_csv(
        workdir / "results" / "metrics" / "brightfield_z1-bce+dice" / "per_image.csv"
    )
    assert sorted(per_image["z"].unique()) == [12, 18, 24]
    assert (workdir / "results" / "figures" / "context_vs_z.png").is_file()
