"""benchmarks/gpu_check.py's smoke mode on the CPU, so that the GPU check does not rot
between the sessions that have a GPU."""

import json
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_part_and_writes_its_results(tmp_path):
    module = runpy.run_path(str(REPO / "benchmarks" / "gpu_check.py"))
    results = module["main"](
        ["--smoke", "--out", str(tmp_path), "--wheels", str(tmp_path / "none")]
    )
    written = json.loads((tmp_path / "gpu_check-smoke.json").read_text())
    assert written["smoke"] and written["default_case"] == results["default_case"]
    protoseg_rows = [row for row in written["steps"] if row["network"] == "protoseg"]
    assert {"fp32", "bf16", "bf16 + channels_last"} <= {row["case"] for row in protoseg_rows}
    assert all(row["images_per_s"] > 0 and row["gflop_per_image"] > 0 for row in protoseg_rows)
    epoch = written["epoch"]
    assert epoch["images"] == 8 and epoch["epoch_seconds"] > 0
    assert "| protoseg | fp32 |" in (tmp_path / "gpu_check-smoke.md").read_text()
