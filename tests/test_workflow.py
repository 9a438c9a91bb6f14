"""End to end: the real Snakefile on a tiny generated data set, from raw TIFFs to the tables."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg.model import load_model
from tests.workflow_helpers import run_snakemake

pytestmark = pytest.mark.slow


GOLDEN = Path(__file__).parent / "golden" / "tiny-demo"


@pytest.fixture(scope="module")
def finished_run(tiny_demo):
    """The session's tiny demo run (conftest.tiny_demo)."""
    return tiny_demo


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


# ---------------------------------------------------------------- unchanged numbers
def golden_files() -> list[Path]:
    return sorted(path for path in GOLDEN.rglob("*") if path.is_file() and path.name != "README.md")


def test_the_demo_tables_are_those_the_code_before_the_segmenter_made(finished_run):
    """Tables, per-image scores and mask quality of the study-protocol models, byte for
    byte, against the files main made before the refactor of issue 20 (tests/golden/
    tiny-demo/README.md says which commit and machine)."""
    from protoseg.device import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("the golden files were made with bfloat16 training (AVX-512 BF16 CPU)")
    workdir, _ = finished_run
    files = golden_files()
    assert len(files) >= 14
    differing = [
        str(path.relative_to(GOLDEN))
        for path in files
        if (workdir / "results" / path.relative_to(GOLDEN)).read_bytes() != path.read_bytes()
    ]
    assert differing == []


# ---------------------------------------------------------------- predict and export rules
@pytest.mark.slow
def test_predict_rule_segments_a_folder_with_a_trained_model(finished_run, tmp_path):
    from skimage.draw import disk

    from protoseg import predict
    from protoseg.io import read_image

    workdir, config = finished_run
    new_images = tmp_path / "new"
    new_images.mkdir()
    image = np.full((90, 120, 3), 200, np.uint8)
    for centre in ((30, 30), (60, 80)):
        image[disk(centre, 14, shape=image.shape[:2])] = (40, 120, 40)
    tifffile.imwrite(new_images / "field_a.tif", image)
    tifffile.imwrite(new_images / "field_b.tif", image[:60, :70])
    settings = f"predict={{input_dir: {new_images}, instances: watershed}}"
    target = "results/predictions/brightfield-bce/predictions.csv"
    run_snakemake(workdir, target, "--config", settings)
    out = workdir / "results" / "predictions" / "brightfield-bce"
    summary = pd.read_csv(out / predict.SUMMARY_NAME)
    assert sorted(summary["image"].map(lambda p: p.rsplit("/", 1)[-1])) == [
        "field_a.tif",
        "field_b.tif",
    ]
    assert set(summary["instances"]) == {"watershed"}
    for stem, shape in (("field_a", (90, 120)), ("field_b", (60, 70))):
        paths = predict.output_paths(out, stem)
        assert tifffile.imread(paths["labels"]).shape == shape
        assert read_image(paths["overlay"]).shape == (*shape, 3)
    # Every model gets a predict job: the dry run of rule all lists the ones not yet run.
    models = len(config["dataset"]["variants"]) * len(config["train"]["losses"])
    dry = run_snakemake(workdir, "-n", "--config", settings).stdout
    assert re.search(rf"^predict\s+{models - 1}\s*$", dry, flags=re.MULTILINE), dry[-2000:]


def test_all_export_writes_a_tested_package_of_every_single_plane_model(finished_run):
    """`snakemake all_export` with no flags: the study's resize models (whose images were
    resized) become bioimage.io packages that passed bioimage.io's own test; the
    focal-context model, which no package can express, is left out."""
    import yaml

    from protoseg import export

    workdir, config = finished_run
    run_snakemake(workdir, "all_export")
    exported = sorted(path.name for path in (workdir / "results" / "export").iterdir())
    assert exported == sorted(
        f"{variant}-{loss}"
        for variant, settings in config["dataset"]["variants"].items()
        if not settings.get("context_planes")
        for loss in config["train"]["losses"]
    )
    package = workdir / "results" / "export" / "brightfield-bce"
    rdf = yaml.safe_load(export.description_file(package).read_text())
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] == "ResizingUNet"
    assert rdf["inputs"][0]["data"]["type"] == "uint8"  # from model.pt: no --input-dtype
    test_images = sorted((workdir / "resources" / "demo" / "raw").glob("*c1xy10z*.tif"))[:3]
    rows = export.compare_with_protoseg(
        package, workdir / "results" / "models" / "brightfield-bce" / "model.pt", test_images
    )
    assert len(rows) == 3
    assert all(row["pixels_differing"] < 0.01 for row in rows), rows
