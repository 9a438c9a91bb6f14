"""End to end: the real Snakefile on a tiny generated data set, from raw TIFFs to the tables."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg.model import load_model
from tests.workflow_helpers import run_snakemake, tiny_config, write_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    config = tiny_config()
    # A focal-context variant beside the single-plane ones (docs/focal-context.md).
    config["dataset"]["variants"]["brightfield_z1"] = {
        "modalities": ["brightfield"],
        "context_planes": 1,
    }
    write_project(workdir, config)
    run_snakemake(workdir)
    return workdir, config


def test_catalogue_lists_every_image(finished_run):
    workdir, config = finished_run
    catalogue = pd.read_csv(workdir / "results" / "catalogue.csv")
    n_states = (
        len(config["demo"]["days"]) * len(config["demo"]["times"]) * len(config["demo"]["xy"])
    )
    assert len(catalogue) == n_states * len(config["data"]["planes"]) * 2
    assert set(catalogue["modality"]) == {"brightfield", "fluorescent"}
    assert (catalogue["height"] == config["demo"]["height"]).all()


def test_masks_are_instance_labels_per_plane_and_state(finished_run):
    workdir, config = finished_run
    for z in config["data"]["planes"]:
        plane = tifffile.imread(
            workdir / "results" / "masks" / "planes" / "day1t1xy1" / f"z{z}.tif"
        )
        assert plane.dtype == np.uint16
        assert plane.shape == (config["demo"]["height"], config["demo"]["width"])
    state = tifffile.imread(workdir / "results" / "masks" / "states" / "day1t1xy1.tif")
    assert state.max() >= 2  # several cells found
    assert (workdir / "results" / "qc" / "day1t1xy1.png").stat().st_size > 1000


def test_mask_quality_is_scored_against_the_demo_truth(finished_run):
    workdir, _ = finished_run
    quality = pd.read_csv(workdir / "results" / "masks" / "quality.csv")
    assert len(quality) > 0
    numeric = quality.select_dtypes("number")
    assert ((numeric >= 0) & (numeric <= 1)).all().all() or "n_true" in quality.columns


def test_every_model_is_trained_and_evaluated(finished_run):
    workdir, config = finished_run
    for variant in config["dataset"]["variants"]:
        for loss in config["train"]["losses"]:
            model_dir = workdir / "results" / "models" / f"{variant}-{loss}"
            assert (model_dir / "model.pt").stat().st_size > 0
            history = pd.read_csv(model_dir / "history.csv")
            assert len(history) == config["train"]["epochs"]
            per_image = pd.read_csv(
                workdir / "results" / "metrics" / f"{variant}-{loss}" / "per_image.csv"
            )
            # Only test-split images (xy10) are evaluated.
            assert len(per_image) > 0
            assert per_image["state"].str.endswith("xy10").all()


def test_tables_have_the_study_layout(finished_run):
    workdir, config = finished_run
    planes = [f"z{z}" for z in config["data"]["planes"]]
    for variant in config["dataset"]["variants"]:
        table = pd.read_csv(workdir / "results" / "tables" / f"{variant}.csv")
        pooled = table[table["reduction"] == "micro"]
        assert pooled["z"].tolist() == planes + ["overall"]
        score_columns = [
            f"{loss}_{metric}"
            for loss in config["train"]["losses"]
            for metric in ("accuracy", "f1", "iou")
        ]
        values = pooled[score_columns].to_numpy(dtype=float)
        assert np.isfinite(values).all()
        assert ((values >= 0) & (values <= 1)).all()
        assert len(np.unique(values.round(6))) > 1, "every score equal: the models learned nothing"
        if variant not in ("brightfield", "all"):  # the study has no table of it
            assert not any(column.startswith("study_") for column in table.columns)
            continue
        # The study's numbers stand beside the planes it has (z12, z18, z24 here); its
        # overall row covers seven planes, so it is left out of a three-plane run.
        study_f1 = pooled.set_index("z")["study_bce_f1"]
        expected_f1 = {
            "brightfield": {"z12": 0.65, "z18": 0.72},
            "all": {"z12": 0.68, "z18": 0.74},
        }[variant]
        for plane, value in expected_f1.items():
            assert study_f1[plane] == pytest.approx(value)
        assert np.isnan(study_f1["overall"])
        diff = pooled.set_index("z")
        assert (diff["diff_bce_f1"] - (diff["bce_f1"] - diff["study_bce_f1"])).abs().max() < 1e-9
        for suffix in ("md", "tex"):
            text = (workdir / "results" / "tables" / f"{variant}.{suffix}").read_text()
            assert "overall" in text and "z18" in text


def test_the_context_model_sees_three_planes_and_is_plotted_beside_the_single_plane_one(
    finished_run,
):
    workdir, config = finished_run
    manifest = pd.read_csv(workdir / "results" / "datasets" / "brightfield_z1" / "manifest.csv")
    # data.planes 12, 18, 24: z12 repeats itself at the stack's end.
    windows = manifest.groupby("z")["context_z"].first().to_dict()
    assert windows == {12: "12;12;18", 18: "12;18;24", 24: "18;24;24"}
    _, meta = load_model(workdir / "results" / "models" / "brightfield_z1-bce" / "model.pt")
    assert meta["dataset"]["context_planes"] == 1 and meta["dataset"]["channels"] == 9
    per_image = pd.read_csv(
        workdir / "results" / "metrics" / "brightfield_z1-bce" / "per_image.csv"
    )
    single = pd.read_csv(workdir / "results" / "metrics" / "brightfield-bce" / "per_image.csv")
    # The same test images, plane by plane, as the single-plane model's.
    assert sorted(zip(per_image["state"], per_image["z"], strict=True)) == sorted(
        zip(single["state"], single["z"], strict=True)
    )
    assert "focal context: 1" in (workdir / "results" / "tables" / "brightfield_z1.md").read_text()
    figure = workdir / "results" / "figures" / "context_vs_z.png"
    assert figure.stat().st_size > 10_000


def test_rerun_has_nothing_to_do(finished_run):
    workdir, _ = finished_run
    result = run_snakemake(workdir, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_report_renders_in_a_browser(finished_run, tmp_path):
    workdir, _ = finished_run
    run_snakemake(workdir, "--report", "results/report.html")
    report = workdir / "results" / "report.html"
    html = report.read_text(errors="replace")
    for label in ("metrics_vs_z", "context_vs_z", "catalogue"):
        assert label in html
    from tests.report_check import find_chromium, screenshot

    if find_chromium() is None:
        pytest.skip("no Chromium installed (Debian package `chromium`); the HTML checks above ran")
    png = screenshot(report, tmp_path / "report.png")
    import cv2

    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 500
    assert image.std() > 10  # a rendered page, not a blank one


def test_a_second_identical_run_gives_byte_identical_models_and_tables(finished_run):
    workdir, config = finished_run
    outputs = sorted(
        [*(workdir / "results" / "models").glob("*/model.pt")]
        + [*(workdir / "results" / "tables").glob("*.csv")]
        + [*(workdir / "results" / "tables").glob("*.md")]
    )
    before = {path: path.read_bytes() for path in outputs}
    run_snakemake(workdir, "--forcerun", "train")
    changed = [
        str(path.relative_to(workdir)) for path in outputs if path.read_bytes() != before[path]
    ]
    assert not changed
    assert len(outputs) >= 2 * len(config["dataset"]["variants"]) + 1
