"""benchmarks/realdata_ablation.py on a tiny data set: every decision is made on the
validation split, and its test scores are those evaluation gives at the same settings."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from protoseg import metrics, objects
from protoseg.evaluate import evaluate_model, pooled_scores
from tests.test_train import make_discs

REPO = Path(__file__).resolve().parents[1]


def test_the_ablation_chooses_on_validation_and_scores_as_evaluation_does(tmp_path):
    # As the pipeline lays it out: RUN/results/datasets/NAME (the script runs in RUN).
    (tmp_path / "run" / "results" / "datasets").mkdir(parents=True)
    dataset_dir = make_discs(tmp_path / "run" / "results" / "datasets")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    # A stored filter that drops every object: rows without a filter must not use it.
    config["train"] |= {
        "epochs": 2, "losses": ["bce"], "device": "cpu", "precision": "fp32",
        "object_filter": {"min_area": 1000},
    }  # fmt: skip
    config["evaluate"]["precision"] = "fp32"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "ablation.json"
    command = [
        sys.executable, str(REPO / "benchmarks" / "realdata_ablation.py"), str(config_path),
        str(dataset_dir), str(tmp_path / "models"), str(out), "--seeds", "0", "--threads", "1",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    (record,) = json.loads(out.read_text())["records"]
    assert record["training"] == "shipped" and record["seed"] == 0
    # Every validated epoch's score, as the run's history holds it.
    history = (tmp_path / "models" / "shipped-seed0" / "history.csv").read_text().splitlines()
    assert [epoch for epoch, _ in record["validation_curve"]] == [
        int(line.split(",")[0]) for line in history[1:] if line.split(",")[3]
    ]
    rows = {row["decision"]: row for row in record["decisions"]}
    assert list(rows) == [
        "threshold 0.5",
        "threshold for pixel F1 (shipped)",
        "threshold for matched F1 (plateau)",
        "matched-F1 threshold + object filter",
        "threshold and object filter chosen together",
        "threshold and object filter together, relative area",
        "threshold and object filter together, uniform blending",
        "threshold and object filter together, tile = training patch",
    ]  # no TTA rows without --tta
    assert rows["threshold 0.5"]["threshold"] == 0.5
    assert rows["threshold for pixel F1 (shipped)"]["threshold"] in metrics.THRESHOLD_GRID
    assert rows["threshold for matched F1 (plateau)"]["threshold"] in objects.LOGIT_GRID
    # The test scores of a row without a filter are evaluation's at the row's threshold,
    # of the model without its stored filter.
    model = tmp_path / "models" / "shipped-seed0" / "model.pt"
    unfiltered = tmp_path / "unfiltered.pt"
    stored = torch.load(model, map_location="cpu", weights_only=False)
    assert stored["meta"]["object_filter"]["min_area"] == 1000
    del stored["meta"]["object_filter"]
    torch.save(stored, unfiltered)
    unfiltered_rows = [row for row in rows.values() if row["object_filter"] is None]
    assert sum(sum(row["test"]["n_pred"]) for row in unfiltered_rows) > 0
    for row in unfiltered_rows:
        per_image, _ = evaluate_model(
            unfiltered, dataset_dir, threshold=row["threshold"], device="cpu", precision="fp32"
        )
        assert np.isclose(row["test"]["pixel_f1"], pooled_scores(per_image)["f1"])
        assert row["test"]["n_pred"] == per_image["n_pred"].tolist()
        assert np.isclose(row["test"]["sa50_mean"], per_image["sa50"].mean())
    # Rows added later (here those with TTA) come for the model already trained.
    trained = model.stat().st_mtime_ns
    subprocess.run([*command, "--tta"], check=True, capture_output=True, text=True)
    (record,) = json.loads(out.read_text())["records"]
    assert len(record["decisions"]) == 12 and model.stat().st_mtime_ns == trained
    assert [row["decision"] for row in record["decisions"][-2:]] == [
        "threshold and object filter together + TTA",
        "threshold and object filter together + TTA, relative area",
    ]
    # Joint choices are also scored on each validation image with the choice made on the
    # others; the other rows have nothing held out.
    for row in record["decisions"]:
        held_out = row.get("validation_held_out")
        assert (held_out is not None) == ("together" in row["decision"]), row["decision"]
        if held_out:
            assert 0 <= held_out["matched_f1"] <= 1 and len(held_out["choices"]) == 2
    # --redecide makes every row again from the same model: the same rows, the same scores.
    before = {row["decision"]: row for row in record["decisions"]}
    subprocess.run([*command, "--tta", "--redecide"], check=True, capture_output=True)
    (again,) = json.loads(out.read_text())["records"]
    assert model.stat().st_mtime_ns == trained
    assert {row["decision"]: row for row in again["decisions"]} == before
    # benchmarks/seed_ensemble.py: each network alone gets the ablation's shipped decision;
    # the mean of two copies of one network is that network, so the same decision again.
    # Paths relative to where it is called, as a user types them.
    ensemble_out = tmp_path / "ensemble.json"
    ensemble_command = [
        sys.executable, str(REPO / "benchmarks" / "seed_ensemble.py"), "config.yaml",
        str(dataset_dir.relative_to(tmp_path)), "ensemble.json",
        str(model.relative_to(tmp_path)), str(model), "--threads", "1",
    ]  # fmt: skip
    subprocess.run(ensemble_command, check=True, capture_output=True, text=True, cwd=tmp_path)
    ensemble = json.loads(ensemble_out.read_text())
    shipped = before["threshold and object filter chosen together"]
    for row in [*ensemble["single"], ensemble["ensemble"]]:
        assert row["threshold"] == shipped["threshold"]
        assert row["object_filter"] == shipped["object_filter"]
        assert row["validation"] == shipped["validation"] and row["test"] == shipped["test"]
        assert (
            row["validation_held_out"]["matched_f1"]
            == (shipped["validation_held_out"]["matched_f1"])
        )
    # benchmarks/fold_batch_norm.py: in float32 the folded network is the stored one to
    # rounding, so the same decision and scores, and a time for each round of both.
    fold_out = tmp_path / "fold.json"
    fold_command = [
        sys.executable, str(REPO / "benchmarks" / "fold_batch_norm.py"), str(config_path),
        str(dataset_dir), str(model), str(fold_out), "--rounds", "2", "--threads", "1",
        "--float32",
    ]  # fmt: skip
    subprocess.run(fold_command, check=True, capture_output=True, text=True)
    fold = json.loads(fold_out.read_text())
    assert all(len(times) == 2 and min(times) > 0 for times in fold["seconds"].values())
    assert fold["precision"] == "fp32" and not fold["tta_for_decision"]
    assert 0 < fold["differences"]["test"]["max_abs_probability"] < 1e-4
    # The float32 reference of a float32 config is the stored network run the same way.
    assert fold["from_float32"]["stored"]["test"]["max_abs_probability"] == 0
    assert fold["from_float32"]["folded"] == {
        split: fold["differences"][split] for split in ("validation", "test")
    }
    folded, stored = fold["decisions"]["folded"], fold["decisions"]["stored"]
    assert folded["threshold"] == stored["threshold"] == shipped["threshold"]
    assert folded["test"]["pixel_f1"] == pytest.approx(stored["test"]["pixel_f1"], abs=1e-3)
    # The last epoch is the shipped network's, finished again from its checkpoints.
    subprocess.run([*command, "--trainings", "last_epoch"], check=True, capture_output=True)
    _, last = json.loads(out.read_text())["records"]
    assert last["training"] == "last_epoch" and last["finished_from"] == "shipped-seed0"
    assert last["epoch_kept"] == config["train"]["epochs"]
    shipped_history = (tmp_path / "models" / "shipped-seed0" / "history.csv").read_text()
    assert (tmp_path / "models" / "last_epoch-seed0" / "history.csv").read_text() == (
        shipped_history
    )


def test_the_summary_has_one_row_per_choice_with_the_shipped_row_first():
    table = runpy.run_path(str(REPO / "benchmarks" / "realdata_table.py"))

    def decision(name, validation, pixel_f1):
        scores = {"pixel_f1": pixel_f1, "sa50_pooled": 0.1, "n_pred": [2], "n_true": [4]}
        return {
            "decision": name,
            "threshold": 0.5,
            "validation": {"matched_f1_pooled": validation, "pixel_f1": 0.0},
            "test": scores,
        }

    joint, fixed = table["SHIPPED_DECISION"], "threshold 0.5"
    records = [
        {"training": "no_zoom", "seed": 0, "decisions": [decision(joint, 0.3, 0.2) | {"validation_held_out": {"matched_f1": 0.25}}]},
        {"training": "shipped", "seed": 0, "decisions": [decision(fixed, 0.1, 0.6), decision(joint, 0.5, 0.4)]},
        {"training": "shipped", "seed": 1, "decisions": [decision(fixed, 0.2, 0.7), decision(joint, 0.7, 0.5)]},
    ]  # fmt: skip
    lines = table["summary_table"]({"records": records}).splitlines()[2:]
    assert lines[0].startswith("| **shipped**") and "| 2 | 0.600 ± 0.141 | +0.000 | - |" in lines[0]
    assert lines[1].startswith("| no_zoom | 1 | 0.300 | -0.300 | 0.250 | 0.200 |")
    assert lines[2].startswith("| threshold 0.5 | 2 | 0.150 ± 0.071 | -0.450 | - | 0.650 ± 0.071 |")
    adopted = table["summary_table"]({"records": records}, adopted=fixed).splitlines()[2:]
    assert adopted[0].startswith("| **reference** (") and adopted[1] == lines[1]
    assert adopted[2].startswith("| **threshold 0.5: adopted, shipped** | 2 |")
    assert len(lines) == 3 and all(
        line.endswith("| 0.500x |") or "0.500 ± 0.000x" in line for line in lines
    )
    # Another training row adopted with one of its decisions: second, marked; the shipped
    # training's row of that decision stays a plain row.
    records.append({"training": "no_zoom", "seed": 1, "decisions": [decision(fixed, 0.9, 0.3)]})
    other = table["summary_table"](
        {"records": records}, adopted=fixed, adopted_training="no_zoom"
    ).splitlines()[2:]
    assert other[1].startswith(
        "| **no_zoom, threshold 0.5: adopted, shipped** | 1 | 0.900 | +0.300 |"
    )
    assert other[2] == lines[1] and other[3] == lines[2] and len(other) == 4
    alone = table["summary_table"]({"records": records}, adopted_training="no_zoom")
    assert alone.splitlines()[3].startswith("| **no_zoom: adopted, shipped** | 1 | 0.300 |")
    assert "vs reference" in alone and "**reference**" in alone


def test_the_curve_table_measures_how_validation_swings():
    table = runpy.run_path(str(REPO / "benchmarks" / "realdata_table.py"))
    swinging = [[4, 0.8], [8, 0.9], [12, 0.5], [16, 0.9], [20, 0.6]]  # late: 0.5, 0.9, 0.6
    steady = [[4, 0.2], [8, 0.6], [12, 0.7], [16, 0.7], [20, 0.7]]
    late_sd, fall = table["curve_swing"](swinging)
    assert np.isclose(late_sd, np.std([0.5, 0.9, 0.6])) and np.isclose(fall, 0.4)
    assert np.allclose(table["curve_swing"](steady), (0.0, 0.0))
    records = [
        {"training": "shipped", "seed": 0, "epoch_kept": 8, "validation_curve": swinging},
        {"training": "ema", "seed": 0, "epoch_kept": 20, "validation_curve": steady},
        {"training": "no_zoom", "seed": 0, "epoch_kept": 20},  # written before curves
    ]
    lines = table["curve_table"]({"records": records}).splitlines()[2:]
    assert lines == [
        f"| shipped | 1 | {late_sd:.3f} | 0.400 | 0.600 | 8 |",
        "| ema | 1 | 0.000 | 0.000 | 0.700 | 20 |",
    ]


def test_the_agreement_table_ranks_the_joint_choices_by_validation_against_test():
    table = runpy.run_path(str(REPO / "benchmarks" / "realdata_table.py"))

    def record(training, validation, held_out, pixel_f1, sa50):
        joint = {
            "decision": table["SHIPPED_DECISION"],
            "threshold": 0.5,
            "validation": {"matched_f1_pooled": validation, "pixel_f1": 0.0},
            "validation_held_out": {"matched_f1": held_out},
            "test": {"pixel_f1": pixel_f1, "sa50_pooled": sa50},
        }
        fixed = {k: v for k, v in joint.items() if k != "validation_held_out"}
        fixed |= {"decision": "threshold 0.5", "test": {"pixel_f1": 0.99, "sa50_pooled": 0.99}}
        return {"training": training, "seed": 0, "decisions": [fixed, joint]}

    # Validation ranks a > b > c; test pixel F1 agrees, test SA50 reverses it. The held-out
    # score ranks b first. The fixed-threshold rows are no choice and stay out.
    records = [
        record("a", 0.9, 0.5, 0.7, 0.1),
        record("b", 0.8, 0.6, 0.6, 0.2),
        record("c", 0.7, 0.4, 0.5, 0.3),
    ]
    lines = table["agreement"]({"records": records}).splitlines()
    assert lines[0].startswith("| validation score (3 choices) |")
    assert lines[2] == "| matched F1: rank correlation | +1.00 | -1.00 |"
    assert lines[3] == "| held out: rank correlation | +0.50 | -0.50 |"
    joint = table["SHIPPED_DECISION"]
    assert (
        lines[4]
        == f"| matched F1: its first choice on test | 0.700 (a/{joint}) | 0.100 (a/{joint}) |"
    )
    assert (
        lines[5]
        == f"| held out: its first choice on test | 0.600 (b/{joint}) | 0.200 (b/{joint}) |"
    )
    assert lines[6] == f"| the best choice on test | 0.700 (a/{joint}) | 0.300 (c/{joint}) |"
