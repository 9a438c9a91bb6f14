"""Study-layout tables from per-image metrics."""

import numpy as np
import pandas as pd
import pytest

from protoseg import metrics, study, tables

STUDY_PLANES = list(study.PLANES)


def fake_per_image(
    planes, seed=0, states=("day1t1xy10", "day1t2xy10"), modalities=("brightfield",)
) -> pd.DataFrame:
    """Per-image rows as protoseg.evaluate writes them, with random but consistent counts."""
    rng = np.random.default_rng(seed)
    records = []
    for state in states:
        for modality in modalities:
            for z in planes:
                tp, fp, fn = (int(value) for value in rng.integers(0, 400, size=3))
                tn = 1024 - tp - fp - fn
                n_true = int(rng.integers(1, 6))
                n_pred = int(rng.integers(1, 6))
                tp50 = int(rng.integers(0, min(n_true, n_pred) + 1))
                record = {
                    "source": f"{state}_{modality}_z{z}.tif",
                    "state": state,
                    "z": z,
                    "modality": modality,
                }
                record |= {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
                record |= metrics.pixel_scores(tp, fp, fn, tn, reduction="none")
                record |= {"n_true": n_true, "n_pred": n_pred, "tp50": tp50}
                record |= {
                    "sa50": tp50 / (n_true + n_pred - tp50),
                    "msa": rng.random(),
                    "matched_f1": rng.random(),
                }
                records.append(record)
    frame = pd.DataFrame.from_records(records)
    for name in ("accuracy", "f1", "iou"):
        frame[name] = frame[name].astype(float)
    return frame


def build(
    variant="all",
    planes=STUDY_PLANES,
    losses=("bce", "mse"),
    modalities=("brightfield", "fluorescent"),
):
    per_image = {
        (variant, loss): fake_per_image(planes, seed=index) for index, loss in enumerate(losses)
    }
    summary = tables.summary(per_image, planes)
    return (
        per_image,
        summary,
        tables.variant_tables(summary, variant, list(losses), planes, modalities),
    )


def test_layout_rows_columns_and_range():
    _, _, result = build()
    ours = result["ours"]["micro"]
    assert list(ours.index) == [f"z{z}" for z in STUDY_PLANES] + ["overall"]
    assert list(ours.columns) == [
        (loss, name) for loss in ("bce", "mse") for name in ("accuracy", "f1", "iou")
    ]
    values = ours.to_numpy()
    assert np.all((values >= 0) & (values <= 1))
    assert len(np.unique(values)) > 1


def test_micro_rows_pool_pixels_and_imagewise_rows_average_images():
    per_image, summary, result = build()
    rows = per_image[("all", "bce")]
    z12 = rows[rows["z"] == 12]
    pooled = metrics.f1(*(z12[c].sum() for c in ("tp", "fp", "fn", "tn")))
    assert result["ours"]["micro"].loc["z12", ("bce", "f1")] == pytest.approx(pooled)
    assert result["ours"]["imagewise"].loc["z12", ("bce", "f1")] == pytest.approx(z12["f1"].mean())
    overall_mean = result["ours"]["imagewise"].loc["overall", ("bce", "iou")]
    assert overall_mean == pytest.approx(rows["iou"].mean())


def test_study_columns_and_difference():
    _, _, result = build()
    assert result["study_table_number"] == 1
    reference = result["study"]
    assert reference.loc["z20", ("bce", "f1")] == 0.76  # the study's Table 1
    assert reference.loc["overall", ("mse", "iou")] == 0.58
    difference = result["difference"]["micro"]
    expected = result["ours"]["micro"].loc["z14", ("mse", "accuracy")] - 0.69
    assert difference.loc["z14", ("mse", "accuracy")] == pytest.approx(expected)
    csv = tables.flat_csv(result)
    assert {"bce_f1", "study_bce_f1", "diff_bce_f1", "reduction", "z"} <= set(csv.columns)
    assert set(csv["reduction"]) == {"micro", "imagewise"}


def test_brightfield_variant_gets_table_2():
    _, _, result = build(variant="brightfield", modalities=("brightfield",))
    assert result["study_table_number"] == 2
    assert result["study"].loc["z12", ("bce", "iou")] == 0.46


def test_study_omitted_for_unknown_variant_or_other_modalities():
    _, _, result = build(variant="mine")
    assert result["study"] is None and result["difference"] is None
    assert "study_bce_f1" not in tables.flat_csv(result).columns
    assert "no comparison" in tables.to_markdown("mine", result)
    _, _, result = build(variant="all", modalities=("brightfield",))
    assert result["study"] is None


def test_subset_of_planes_keeps_shared_rows_and_drops_study_overall():
    planes = [12, 18, 24]
    _, _, result = build(planes=planes)
    assert list(result["study"].index) == ["z12", "z18", "z24"]
    assert np.isnan(result["difference"]["micro"].loc["overall", ("bce", "f1")])
    assert not np.isnan(result["difference"]["micro"].loc["z18", ("bce", "f1")])


def test_other_losses_are_shown_without_study_columns():
    _, _, result = build(losses=("bce", "dice"))
    assert list(result["study"].columns.get_level_values(0).unique()) == ["bce"]
    assert np.isnan(result["difference"]["micro"].loc["z12", ("dice", "f1")])


def test_instance_table_means_and_pooled_counts():
    per_image, _, result = build()
    rows = per_image[("all", "mse")]
    mean_table = result["instances"]["imagewise"]
    assert mean_table.loc["overall", ("mse", "sa50")] == pytest.approx(rows["sa50"].mean())
    pooled = metrics.pooled_instance_scores(rows["n_true"], rows["n_pred"], rows["tp50"])
    assert result["instances"]["micro"].loc["overall", ("mse", "sa50")] == pytest.approx(
        pooled["sa50"]
    )
    assert ("mse", "msa") not in result["instances"]["micro"].columns


def test_markdown_and_latex_text():
    _, _, result = build()
    markdown = tables.to_markdown("all", result)
    assert "| z | BCE acc | BCE F1 | BCE IoU | MSE acc | MSE F1 | MSE IoU |" in markdown
    assert "Table 1)" in markdown and "Difference" in markdown
    assert markdown.count("| z12 |") == 6  # ours, study, difference, image mean, 2 instance tables
    latex = tables.to_latex("all", result)
    assert latex.count(r"\begin{tabular}") == 1 and r"\bottomrule" in latex
    assert "0.76" in latex  # the study's z20 BCE F1
    assert "–" not in latex  # missing cells use LaTeX's en dash


def test_tables_are_written_as_csv_markdown_and_latex(tmp_path):
    _, _, result = build()
    paths = {name: tmp_path / f"all.{name}" for name in ("csv", "md", "tex")}
    tables.write_variant_tables(
        "all",
        result,
        csv=paths["csv"],
        instances_csv=tmp_path / "all_instances.csv",
        md=paths["md"],
        tex=paths["tex"],
    )
    written = pd.read_csv(paths["csv"])
    micro = written[written["reduction"] == "micro"]
    assert micro["z"].tolist() == [f"z{z}" for z in STUDY_PLANES] + ["overall"]
    assert micro[["bce_f1", "mse_iou"]].stack().between(0, 1).all()
    instances = pd.read_csv(tmp_path / "all_instances.csv")
    assert {"bce_sa50", "mse_matched_f1"} <= set(instances.columns)
    assert paths["md"].read_text().startswith("# Test-split scores")
    assert paths["tex"].read_text().startswith(r"\begin{table}")
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes leave no temporary files


def test_unreadable_or_incomplete_per_image_table_names_the_file(tmp_path):
    from protoseg.errors import InputError

    path = tmp_path / "per_image.csv"
    fake_per_image([12]).drop(columns="tp").to_csv(path, index=False)
    with pytest.raises(InputError, match=r"per_image\.csv.*tp"):
        tables.read_per_image(path)


def test_provenance_says_how_many_neighbouring_planes_a_context_model_saw():
    per_image = {
        ("bf", "bce"): fake_per_image([12, 14]).assign(context_planes=0),
        ("bf_z2", "bce"): fake_per_image([12, 14]).assign(context_planes=2),
    }
    summary = tables.summary(per_image, [12, 14])
    assert summary.groupby("variant")["context_planes"].first().to_dict() == {"bf": 0, "bf_z2": 2}
    lines = {
        variant: tables.describe_provenance(rows.iloc[0])
        for variant, rows in summary.groupby("variant")
    }
    assert "focal context: 2 neighbouring plane(s) on each side" in lines["bf_z2"]
    assert "focal context" not in lines["bf"]


def test_a_test_split_without_cells_says_why_its_f1_is_zero(caplog):
    per_image = fake_per_image(STUDY_PLANES, seed=3)
    per_image[["tp", "fn"]] = 0  # no true foreground pixel in any test image
    with caplog.at_level("WARNING", logger="protoseg.tables"):
        tables.summary({("all", "bce"): per_image}, STUDY_PLANES)
    message = caplog.records[-1].getMessage()
    assert message.startswith("all-bce: the masks of the test split")
    assert "hold no cell" in message and "F1 and IoU are 0 by definition" in message
    assert "day1t1xy10" in message or "state(s)" in message


def test_a_plane_without_cells_is_named(caplog):
    per_image = fake_per_image(STUDY_PLANES, seed=4)
    per_image.loc[per_image["z"] == STUDY_PLANES[0], ["tp", "fn"]] = 0
    with caplog.at_level("WARNING", logger="protoseg.tables"):
        tables.summary({("all", "mse"): per_image}, STUDY_PLANES)
    assert [r.getMessage() for r in caplog.records] == [
        f"all-mse: the test split's masks hold no cell on plane(s) z{STUDY_PLANES[0]}, whose "
        "F1 and IoU are therefore 0"
    ]


def test_masks_with_cells_give_no_warning(caplog):
    with caplog.at_level("WARNING", logger="protoseg.tables"):
        build()
    assert caplog.records == []
