"""Chaos: the tiny demo killed with kill -9 at 20 seeded moments over every stage, resumed
each time as the docs tell a user, must end with the same bytes as an uninterrupted run; and
the same with the disk filling up at a random moment.

Minutes long, so it runs only when asked (the nightly-style target in the README):

    PROTOSEG_TEST_CHAOS=1 python -m pytest tests/test_chaos.py -m chaos -s

``PROTOSEG_CHAOS_SEED`` (default 23) and ``PROTOSEG_CHAOS_KILLS`` (default 20) vary it. Each
run prints its record (kills by stage, resumes, differences), which docs/chaos.md keeps.
"""

from __future__ import annotations

import base64
import filecmp
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from protoseg.locks import lock_files
from tests.workflow_helpers import (
    SNAKEMAKE_ENV,
    snakemake_command,
    tiny_config,
    write_project,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.skipif(
        os.environ.get("PROTOSEG_TEST_CHAOS") != "1",
        reason="minutes long: set PROTOSEG_TEST_CHAOS=1 (the nightly-style target, README)",
    ),
]

SEED = int(os.environ.get("PROTOSEG_CHAOS_SEED", "23"))
KILLS = int(os.environ.get("PROTOSEG_CHAOS_KILLS", "20"))
# The stages of the tiny demo in the order they run, and how many of the kills each gets
# (more where there is more to interrupt: several jobs, checkpoints); scaled to KILLS.
STAGE_WEIGHTS = {
    "demo": 1,
    "catalogue": 1,
    "masks": 2,
    "merge": 2,
    "quality": 1,
    "dataset": 2,
    "train": 5,
    "evaluate": 2,
    "tables": 1,
    "figures": 2,
    "warnings": 1,
}
# Outputs that must come out byte-identical (the list), and the rest, compared too.
MUST_MATCH = ("results/tables/", "results/masks/", "results/datasets/", "model.pt")
# Never compared: what records a run rather than its results.
RUN_RECORDS = ("logs/", "benchmarks/", ".snakemake/", "results/warnings.")
ENV = SNAKEMAKE_ENV


def snakemake(workdir: Path, *args: str) -> list[str]:
    """A user's plain `snakemake` (with its lock) in ``workdir``."""
    return snakemake_command(workdir, "--cores", "2", *args)


def run(workdir: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        snakemake(workdir, *args), env=ENV, capture_output=True, text=True, timeout=timeout
    )


def project(workdir: Path) -> Path:
    write_project(workdir, tiny_config())
    return workdir


def kill_plan(rng: random.Random, kills: int) -> list[str]:
    """The target stage of every kill, in pipeline order, spread over all stages."""
    total = sum(STAGE_WEIGHTS.values())
    plan = []
    for stage, weight in STAGE_WEIGHTS.items():
        plan += [stage] * max(1, round(weight * kills / total))
    while len(plan) > kills:
        plan.remove(rng.choice([s for s, n in Counter(plan).items() if n > 1]))
    while len(plan) < kills:
        plan.insert(plan.index("train"), "train")
    return plan


def stage_durations(workdir: Path) -> dict[str, float]:
    """Longest job of each stage in seconds, from a finished run's benchmarks."""
    durations = {}
    for stage in STAGE_WEIGHTS:
        seconds = []
        for path in (workdir / "benchmarks" / "out" / stage).glob("*.tsv"):
            lines = path.read_text().splitlines()
            if len(lines) > 1:
                seconds.append(float(lines[1].split("\t")[0]))
        durations[stage] = max(seconds, default=1.0)
    return durations


def running_outputs(workdir: Path, since: float = 0) -> list[str]:
    """Outputs Snakemake marked incomplete (jobs running) since ``since`` (a killed run's
    markers stay until their jobs run again)."""
    folder = workdir / ".snakemake" / "incomplete"
    found = []
    for path in folder.rglob("*") if folder.is_dir() else []:
        if path.is_file() and path.stat().st_mtime >= since:
            encoded = "".join(path.relative_to(folder).parts)
            try:
                found.append(base64.urlsafe_b64decode(encoded + "==").decode())
            except (ValueError, UnicodeDecodeError):
                found.append(encoded)
    return sorted(found)


def stage_of(output: str) -> str:
    for part, stage in (
        ("resources/demo", "demo"),
        ("catalogue.csv", "catalogue"),
        ("masks/planes", "masks"),
        ("masks/quality", "quality"),
        ("masks/", "merge"),
        ("qc/", "merge"),
        ("datasets/", "dataset"),
        ("models/", "train"),
        ("metrics/", "evaluate"),
        ("tables/", "tables"),
        ("figures/", "figures"),
        ("warnings.", "warnings"),
    ):
        if part in output:
            return stage
    return "other"


def expected_outputs(reference: Path) -> dict[str, list[str]]:
    """The uninterrupted run's outputs, by the stage that writes them."""
    by_stage: dict[str, list[str]] = {stage: [] for stage in STAGE_WEIGHTS}
    for name in result_files(reference):
        by_stage.setdefault(stage_of(name), []).append(name)
    return by_stage


def pending_stage(target: str, workdir: Path, expected: dict[str, list[str]]) -> str | None:
    """``target``, or the first later stage with outputs still to make (None: all made)."""
    order = list(STAGE_WEIGHTS)
    for stage in order[order.index(target) :]:
        if not all((workdir / name).exists() for name in expected[stage]):
            return stage
    return None


def kill_during(workdir: Path, stage: str, delay: float, timeout: float = 600) -> dict:
    """Start `snakemake`, wait for a job of ``stage`` to start, then ``delay`` seconds,
    then kill -9 Snakemake and every process of its session. Returns what was hit."""
    started = time.time()
    process = subprocess.Popen(
        snakemake(workdir),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    record = {"target": stage, "delay": round(delay, 2), "hit": [], "finished_first": False}
    try:
        deadline = time.monotonic() + timeout
        # A job of the stage has started: Snakemake marked its outputs incomplete.
        while process.poll() is None and time.monotonic() < deadline:
            if stage in {stage_of(output) for output in running_outputs(workdir, started)}:
                break
            time.sleep(0.02)
        end = time.monotonic() + delay
        while process.poll() is None and time.monotonic() < end:
            time.sleep(0.02)
        if process.poll() is None:
            record["hit"] = running_outputs(workdir, started)
            os.killpg(process.pid, signal.SIGKILL)
        else:
            record["finished_first"] = True
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    record["stages"] = sorted({stage_of(output) for output in record["hit"]})
    return record


def unlock_as_the_docs_say(workdir: Path) -> bool:
    """A plain start after the kill: blocked by the stale lock, whose one line names the
    command that clears it; that command is run. Returns whether there was a lock."""
    if not lock_files(workdir):
        return False
    blocked = run(workdir, "--dry-run")
    line = next(
        (text for text in blocked.stderr.splitlines() if text.startswith("protoseg: stale lock")),
        None,
    )
    assert line is not None, blocked.stderr[-3000:]
    command = line.split("`")[1]
    assert command.startswith("snakemake ") and command.endswith("--unlock")
    unlocked = subprocess.run(
        [sys.executable, "-m", *command.split()],
        cwd=workdir,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unlocked.returncode == 0, unlocked.stderr[-3000:]
    assert not lock_files(workdir)
    return True


def result_files(workdir: Path) -> set[str]:
    return {
        str(path.relative_to(workdir))
        for path in workdir.rglob("*")
        if path.is_file()
        and not str(path.relative_to(workdir)).startswith(RUN_RECORDS)
        and not path.name.startswith(".")
        and path.parent != workdir / "config"
    }


def stray_temporaries(workdir: Path) -> list[str]:
    return sorted(
        str(path.relative_to(workdir))
        for folder in ("results", "resources")
        for path in (workdir / folder).rglob(".*")
        if ".tmp" in path.name
    )


def unreadable_checkpoints(workdir: Path) -> list[str]:
    import torch

    bad = []
    for path in sorted((workdir / "results" / "models").rglob("*.pt")):
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - any failure to read is the finding
            bad.append(f"{path.relative_to(workdir)}: {type(error).__name__}")
    return bad


def timing_only(first: Path, second: Path) -> bool:
    """Whether two training records differ only in what records a run, not its results:
    the wall-clock seconds per epoch (the history's ``seconds``, also inside each
    checkpoint) and a checkpoint's stamp of the data set's file times."""
    import pandas as pd

    if first.name == "history.csv":
        a, b = (pd.read_csv(path).drop(columns="seconds") for path in (first, second))
        return a.equals(b)
    if first.suffix != ".pt":
        return False
    return checkpoint_differences(first, second) == []


def differences(a, b, where: str = "") -> list[str]:
    """Where two loaded checkpoints differ (key paths)."""
    import torch

    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [d for key in a for d in differences(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{where}[{i}]")
        ]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return [] if np.array_equal(a, b, equal_nan=a.dtype.kind == "f") else [where]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [where]


def checkpoint_differences(first: Path, second: Path) -> list[str]:
    import torch

    a, b = (torch.load(path, map_location="cpu", weights_only=False) for path in (first, second))
    for record in (a, b):
        for row in record.get("history", []):
            row.pop("seconds", None)
        if "fingerprint" in record:
            # The data set's files by name, size and mtime: a rebuilt data set's stamp differs.
            fingerprint = json.loads(record["fingerprint"])
            fingerprint["files"] = [entry[:2] for entry in fingerprint.get("files", [])]
            record["fingerprint"] = fingerprint
    return differences(a, b)


def compare(reference: Path, workdir: Path) -> dict:
    """Files of one run only, and files whose bytes differ, split into the issue's
    must-match outputs and the rest."""
    ours, theirs = result_files(workdir), result_files(reference)
    differ = [
        name
        for name in sorted(ours & theirs)
        if not filecmp.cmp(reference / name, workdir / name, shallow=False)
    ]
    other = [name for name in differ if not any(m in name for m in MUST_MATCH)]
    timing = [name for name in other if timing_only(reference / name, workdir / name)]
    return {
        "missing": sorted(theirs - ours),
        "extra": sorted(ours - theirs),
        "differ_must": [name for name in differ if any(m in name for m in MUST_MATCH)],
        "differ_timing_only": timing,
        "differ_other": [name for name in other if name not in timing],
        "checkpoint_keys": sorted(
            {
                key
                for name in other
                if name.endswith(".pt") and name not in timing
                for key in checkpoint_differences(reference / name, workdir / name)
            }
        ),
        "compared": len(ours & theirs),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny demo."""
    workdir = project(tmp_path_factory.mktemp("reference"))
    result = run(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_kill_9_anywhere_then_resume_gives_the_same_bytes(reference, tmp_path):
    rng = random.Random(SEED)
    durations = stage_durations(reference)
    workdir = project(tmp_path / "chaos")
    expected = expected_outputs(reference)
    records = []
    for planned in kill_plan(rng, KILLS):
        delay = rng.uniform(0, 1)
        stage = pending_stage(planned, workdir, expected)
        if stage is None:
            records.append({"target": planned, "finished_first": True, "hit": [], "stages": []})
            continue
        # A moment within the stage's job (its reference duration), after it started.
        record = kill_during(workdir, stage, delay * durations[stage])
        record["planned"] = planned
        record["unlocked"] = unlock_as_the_docs_say(workdir)
        records.append(record)
    final = run(workdir)
    assert final.returncode == 0, final.stderr[-4000:]
    outcome = compare(reference, workdir)
    kills = [r for r in records if not r["finished_first"]]
    print("\nchaos: seed", SEED, "kills", len(kills), "of", len(records))
    print("chaos: kills by target stage", dict(Counter(r["target"] for r in kills)))
    print(
        "chaos: kills by stage hit",
        dict(Counter(s for r in kills for s in r["stages"] or ["none"])),
    )
    print("chaos: resumes after unlock", sum(r.get("unlocked", False) for r in records))
    for record in records:
        print("chaos:", record)
    print("chaos: outcome", {key: value for key, value in outcome.items()})
    assert stray_temporaries(workdir) == []
    assert unreadable_checkpoints(workdir) == []
    assert outcome["missing"] == [] and outcome["extra"] == []
    assert outcome["differ_must"] == [] and outcome["differ_other"] == []


SMALL_FS = "chaos-fs"


def mount_small_filesystem(folder: Path, megabytes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot mount a small tmpfs here (root and mount needed): {error}")


def folder_megabytes(workdir: Path) -> float:
    return sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file()) / 2**20


def test_disk_full_at_a_random_moment_names_the_file_then_resumes(reference, tmp_path):
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("a small filesystem needs root and mount")
    rng = random.Random(SEED)
    size = max(2, int(folder_megabytes(reference) * rng.uniform(0.3, 0.9)))
    folder = tmp_path / SMALL_FS
    mount_small_filesystem(folder, size)
    try:
        workdir = project(folder / "run")
        full = run(workdir)
        output = full.stdout + full.stderr
        print(f"\nchaos: disk of {size} MiB, run exit {full.returncode}")
        print("chaos:", [line for line in output.splitlines() if "disk is full" in line][:3])
        assert full.returncode != 0
        assert "the disk is full" in output
        assert stray_temporaries(workdir) == []
        subprocess.run(["mount", "-o", "remount,size=2g", str(folder)], check=True)
        if lock_files(workdir):
            unlock_as_the_docs_say(workdir)
        resumed = run(workdir)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        outcome = compare(reference, workdir)
        print("chaos: disk-full outcome", outcome)
        assert stray_temporaries(workdir) == []
        assert unreadable_checkpoints(workdir) == []
        assert outcome["missing"] == [] and outcome["differ_must"] == []
        assert outcome["differ_other"] == []
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
