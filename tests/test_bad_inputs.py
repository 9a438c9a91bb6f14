"""The bad-input corpus: each case runs the real Snakefile on tiny data and must stop (or
pass) as the table says, with a message naming the file or key, leaving no output.

A row: the case, what it does to a good project, the target (``-n`` for what is known
when the workflow is parsed, the catalogue for what is known once the images are open),
the expected exit status, and words the message must hold. Cases run two at a time in one
module fixture (each is a separate Snakemake process; a case runs only when selected).

Also here: a run killed with ``kill -9`` during mask generation is resumed after
``snakemake --unlock`` (the README's troubleshooting section), leaving complete outputs.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg.catalogue import study_file_name
from tests.workflow_helpers import (
    REPO,
    run_snakemake,
    snakemake_command,
    tiny_config,
    write_project,
)

pytestmark = pytest.mark.slow

SHAPE = (24, 32, 3)
STATES = ((1, 1, 1), (1, 1, 10))
PLANES = (12, 14)
VICTIM = study_file_name(1, 1, 2, 10, 14)  # a fluorescent plane of the test state
PARSE = "-n"
CATALOGUE = "results/catalogue.csv"


# ---------------------------------------------------------------- the good project
def folder_config(raw_dir: Path) -> dict:
    config = tiny_config()
    config["data"].update({"source": "folder", "raw_dir": str(raw_dir), "planes": list(PLANES)})
    config["quality"]["truth_dir"] = None
    return config


def write_images(raw_dir: Path, image=None) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    for day, time_point, xy in STATES:
        for channel in (1, 2):
            for z in PLANES:
                tifffile.imwrite(
                    raw_dir / study_file_name(day, time_point, channel, xy, z),
                    np.full(SHAPE, 40 * channel, np.uint8) if image is None else image,
                )


# ---------------------------------------------------------------- edits that break it
def edit(path: str, value):
    """A config edit: set the dotted key ``path`` to ``value``."""

    def apply(config, raw):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value

    return apply


def replace_victim(array, name=VICTIM, **kwargs):
    def apply(config, raw):
        tifffile.imwrite(raw / name, array, **kwargs)

    return apply


def every_image(array, **kwargs):
    def apply(config, raw):
        for path in raw.glob("*.tif"):
            tifffile.imwrite(path, array, **kwargs)

    return apply


def truncate_victim(config, raw):
    data = (raw / VICTIM).read_bytes()
    (raw / VICTIM).write_bytes(data[:100])


def add_file(name: str):
    def apply(config, raw):
        (raw / name).write_bytes((raw / VICTIM).read_bytes())

    return apply


def remove_victim(config, raw):
    (raw / VICTIM).unlink()


def nan_plane():
    plane = np.full(SHAPE[:2], 0.5, np.float32)
    plane[3, 4] = np.nan
    return plane


@dataclass
class Case:
    name: str
    breaks: list
    target: str
    words: list[str]
    exit: int = 1
    folder: bool = True  # images in a folder, else the demo config (nothing on disk)
    extra: list[str] = field(default_factory=list)


CASES = [
    # -- config, known when the workflow is parsed: `snakemake -n` fails
    Case("unknown-key", [edit("masks.metod", "classical")], PARSE, ["metod"], folder=False),
    Case("wrong-type", [edit("train.epochs", "many")], PARSE, ["epochs"], folder=False),
    # Allowed values are enums of the schema: a typo stops the run before the first job.
    Case(
        "unknown-method",
        [edit("masks.method", "magic")],
        PARSE,
        ["masks.method", "magic", "sam-auto"],
        folder=False,
    ),
    Case(
        "unknown-geometry",
        [edit("dataset.geometry", "tiles")],
        PARSE,
        ["dataset.geometry", "tiles", "patches"],
        folder=False,
    ),
    Case(
        "threshold-tuning-without-validation",
        [edit("train.threshold", "validation")],
        PARSE,
        ["train.threshold", "split.validation"],
        folder=False,
    ),
    Case(
        "absurd-cell-diameter",
        [edit("dataset.geometry", "patches"), edit("dataset.cell_diameter", 0.001)],
        PARSE,
        ["dataset.cell_diameter", "outside"],
        folder=False,
    ),
    Case(
        "lr-min-above-max",
        [edit("train.lr_min", 0.1), edit("train.lr_max", 0.01)],
        PARSE,
        ["train.lr_min", "0.1", "0.01"],
        folder=False,
    ),
    Case(
        "watershed-setting-out-of-range",
        [
            edit("model.instances", "distances"),
            edit("train.watershed", {"center_threshold": 1.5}),
        ],
        PARSE,
        ["train.watershed.center_threshold", "(0, 1)", "1.5"],
        folder=False,
    ),
    Case(
        "unknown-loss",
        [edit("train.losses", ["bce", "msee"])],
        PARSE,
        ["train.losses", "msee", "bce+dice"],
        folder=False,
    ),
    Case(
        "split-value-matches-nothing",
        [edit("split.test", [11])],
        PARSE,
        ["split.test", "11", "matches no image"],
    ),
    Case("unknown-split-key", [edit("split.key", "position")], PARSE, ["split.key", "position"]),
    Case(
        "variant-with-unknown-modality",
        [edit("dataset.variants", {"x": {"modalities": ["brightfield", "dapi"]}})],
        PARSE,
        ["dataset.variants.x.modalities", "dapi"],
        folder=False,
    ),
    Case(
        "masks-modality-names-no-channel",
        [edit("masks.modality", "fluo")],
        PARSE,
        ["masks.modality", "fluo"],
    ),
    # -- file names, known when the workflow is parsed
    Case(
        "bad-file-name",
        [add_file("day1t1c1xy1-z12.tif")],
        PARSE,
        ["day1t1c1xy1-z12.tif", "does not match data.pattern"],
    ),
    Case(
        "unknown-channel",
        [add_file("day1t1c3xy1z12.tif")],
        PARSE,
        ["day1t1c3xy1z12.tif", "channel '3' is not in data.channels"],
    ),
    Case(
        "plane-not-configured",
        [add_file("day1t1c1xy1z16.tif")],
        PARSE,
        ["day1t1c1xy1z16.tif", "z16 is not in data.planes"],
    ),
    Case(
        "duplicate-image",
        [add_file(VICTIM.replace(".tif", ".tiff"))],
        PARSE,
        ["same state (day1t1xy10)", "z14"],
    ),
    Case("missing-plane", [remove_victim], PARSE, ["day1t1xy10", "channel 2", "z14"]),
    Case(
        "raw-dir-missing",
        [edit("data.raw_dir", "no/such/folder")],
        PARSE,
        ["no/such/folder", "data.raw_dir folder not found"],
    ),
    Case(
        "bad-pattern",
        [edit("data.pattern", "day(?P<day>")],
        PARSE,
        ["data.pattern", "not a valid regular expression"],
    ),
    # -- pixels, known once the catalogue opens each image
    Case("truncated-tiff", [truncate_victim], CATALOGUE, [VICTIM, "unreadable or truncated"]),
    Case(
        "z-stack-everywhere",
        [every_image(np.zeros((5, 24, 32), np.uint8), metadata={"axes": "ZYX"})],
        CATALOGUE,
        ["day1t1c1xy1z12.tif", "stack of 5 planes", "axes ZYX", "read the file as a stack"],
    ),
    Case(
        "one-z-stack",
        [replace_victim(np.zeros((5, 24, 32), np.uint8))],
        CATALOGUE,
        [VICTIM, "stack of 5 planes of 24 x 32", "axes QYX"],
    ),
    Case(
        "4d-stack",
        [replace_victim(np.zeros((2, 5, 24, 32), np.uint8))],
        CATALOGUE,
        [VICTIM, "stack of 10 planes", "axes QQYX", "2x5x24x32"],
    ),
    Case(
        "two-channels",
        [
            replace_victim(
                np.zeros((24, 32, 2), np.uint8), photometric="minisblack", planarconfig="contig"
            )
        ],
        CATALOGUE,
        [VICTIM, "2 channels", "RGB (3) or RGBA (4)"],
    ),
    Case(
        "two-channels-as-pages",  # tifffile writes H x W x 2 as H pages of W x 2
        [replace_victim(np.zeros((24, 32, 2), np.uint8))],
        CATALOGUE,
        [VICTIM, "2 channels", "axes QYX"],
    ),
    Case(
        "channels-first",
        [
            replace_victim(
                np.zeros((3, 24, 32), np.uint8), photometric="rgb", planarconfig="separate"
            )
        ],
        CATALOGUE,
        [VICTIM, "channels-first"],
    ),
    Case(
        "float-0-255",
        [every_image(np.full(SHAPE[:2], 200.0, np.float32))],
        CATALOGUE,
        ["float pixels", "outside [0, 1]", "200"],
    ),
    Case("nan-plane", [replace_victim(nan_plane())], CATALOGUE, [VICTIM, "NaN", "row 3, column 4"]),
    Case(
        "signed-integers",
        [replace_victim(np.full(SHAPE[:2], -3, np.int16))],
        CATALOGUE,
        [VICTIM, "signed integer", "int16"],
    ),
    Case(
        "mixed-shapes",
        [replace_victim(np.zeros((25, 32, 3), np.uint8))],
        CATALOGUE,
        [VICTIM, "shape 25x32 differs", "state day1t1xy10"],
    ),
    # -- what is accepted: float in [0, 1], a single plane stored as 1 x H x W, H x W x 1
    Case(
        "accepted-float-and-single-page-stacks",
        [
            every_image(np.full(SHAPE[:2], 0.25, np.float32)),
            replace_victim(np.zeros((1, 24, 32), np.uint16)),
            replace_victim(np.zeros((24, 32, 1), np.uint8), name=VICTIM.replace("z14", "z12")),
        ],
        CATALOGUE,
        [],
        exit=0,
    ),
]
BY_NAME = {case.name: case for case in CASES}
assert len(BY_NAME) == len(CASES)


@dataclass
class Outcome:
    returncode: int
    output: str  # stdout, stderr and the catalogue's log
    workdir: Path


def run_case(case: Case, workdir: Path) -> Outcome:
    raw = workdir / "raw"
    if case.folder:
        write_images(raw)
        config = folder_config(raw)
    else:
        config = tiny_config()
    for change in case.breaks:
        change(config, raw)
    write_project(workdir, config)
    result = run_snakemake(workdir, case.target, *case.extra, check=False)
    log = workdir / "logs" / "catalogue" / "catalogue.log"
    output = result.stdout + result.stderr + (log.read_text() if log.is_file() else "")
    return Outcome(result.returncode, output, workdir)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """Run every selected case, one Snakemake process per core (at least two at a time)."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is sys.modules[__name__]
        and hasattr(item, "callspec")
        and "name" in item.callspec.params
    ]
    with ThreadPoolExecutor(max_workers=max(2, min(6, os.cpu_count() or 2))) as pool:
        futures = {
            name: pool.submit(run_case, BY_NAME[name], tmp_path_factory.mktemp(name))
            for name in dict.fromkeys(selected)
        }
    return {name: future.result() for name, future in futures.items()}


def results_files(workdir: Path) -> list[str]:
    results = workdir / "results"
    return (
        sorted(str(p.relative_to(workdir)) for p in results.rglob("*")) if results.exists() else []
    )


@pytest.mark.parametrize("name", list(BY_NAME))
def test_bad_input(outcomes, name):
    case, outcome = BY_NAME[name], outcomes[name]
    assert outcome.returncode == case.exit, outcome.output[-3000:]
    for word in case.words:
        assert word in outcome.output, f"{word!r} not in:\n{outcome.output[-3000:]}"
    if case.exit == 0:
        catalogue = pd.read_csv(outcome.workdir / CATALOGUE)
        assert len(catalogue) == len(STATES) * 2 * len(PLANES)
        assert set(catalogue["channels"]) == {1}
        return
    # Nothing half-written: a parse-time error starts no job; a failed catalogue job
    # leaves neither the catalogue nor a temporary file.
    assert results_files(outcome.workdir) == []
    if case.target == PARSE:
        assert not (outcome.workdir / "logs").exists()
    else:
        assert "Error in rule catalogue" in outcome.output


def test_the_corpus_names_every_case_of_issue_13():
    """The issue's cases, each at the earliest step that can know it."""
    parse = {c.name for c in CASES if c.target == PARSE}
    catalogue = {c.name for c in CASES if c.target == CATALOGUE}
    assert {
        "lr-min-above-max",
        "unknown-loss",
        "unknown-method",
        "unknown-geometry",
        "split-value-matches-nothing",
        "unknown-split-key",
        "variant-with-unknown-modality",
        "masks-modality-names-no-channel",
    } <= parse
    assert {
        "z-stack-everywhere",
        "4d-stack",
        "float-0-255",
        "nan-plane",
        "signed-integers",
        "two-channels",
    } <= catalogue


# ---------------------------------------------------------------- kill -9, then resume
def wait_for(condition, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"snakemake ended ({process.returncode}) before the kill")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting to kill")
        time.sleep(0.02)


def test_kill_9_during_mask_generation_then_unlock_and_resume(tmp_path):
    config = tiny_config()
    write_project(tmp_path, config)
    states = [f"day1t1xy{xy}" for xy in config["demo"]["xy"]]
    masks = [f"results/masks/planes/{s}/z{z}.tif" for s in states for z in config["data"]["planes"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # One core: the mask jobs run one after another, so the kill lands within them.
    process = subprocess.Popen(
        snakemake_command(tmp_path, "--cores", "1", *masks),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (tmp_path / "logs" / "masks").is_dir(), 120, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole run: Snakemake and its job
        process.wait()
    assert sum((tmp_path / m).exists() for m in masks) < len(masks)

    def run(*args):
        return subprocess.run(
            snakemake_command(tmp_path, "--cores", "2", *args),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    blocked = run(*masks)
    assert blocked.returncode != 0
    assert "--unlock" in blocked.stdout + blocked.stderr  # Snakemake's own advice
    # protoseg's one line: the killed run is gone, and the exact command (issue 23).
    assert "protoseg: stale lock in " in blocked.stderr
    assert f"`snakemake --snakefile {REPO / 'Snakefile'} --directory {tmp_path} --unlock`" in (
        blocked.stderr
    )
    assert run("--unlock").returncode == 0
    resumed = run(*masks)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for mask in masks:
        assert tifffile.imread(tmp_path / mask).shape == (96, 128)
    leftovers = [p for p in (tmp_path / "results").rglob(".*.tmp*")]
    assert leftovers == []


def test_disk_full_during_a_job_names_the_file_and_keeps_nothing(tmp_path):
    """ENOSPC inside the catalogue job (tifffile cannot be filled up here: pandas is)."""
    write_images(tmp_path / "raw")
    write_project(tmp_path, folder_config(tmp_path / "raw"))
    # A sitecustomize that makes every CSV write fail like a full disk, in the job only.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, pandas\n"
        "def full(self, path, *a, **k):\n"
        "    open(path, 'w').write('half')\n"
        f"    raise OSError({errno.ENOSPC}, 'No space left on device')\n"
        "pandas.DataFrame.to_csv = full\n"
    )
    env_path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        snakemake_command(tmp_path, "--cores", "1", "--nolock", CATALOGUE),
        env={**os.environ, "PYTHONPATH": env_path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "results/catalogue.csv: could not write it: the disk is full" in output
    assert results_files(tmp_path) == []


def test_warnings_are_summarised_when_the_run_ends(tmp_path):
    """Blank images pass the catalogue but give empty masks: the console says so at the end."""
    write_images(tmp_path / "raw", image=np.zeros(SHAPE[:2], np.uint8))
    write_project(tmp_path, folder_config(tmp_path / "raw"))
    result = run_snakemake(tmp_path, "results/masks/planes/day1t1xy1/z12.tif")
    output = result.stdout + result.stderr
    # The catalogue names the blank images first (issue 23), then the masks job its empty mask.
    assert "protoseg: 3 warnings in the logs of this run" in output
    assert "[catalogue] 8 blank image(s), every pixel 0: " in output
    assert "[masks] day1t1xy1 z12: the classical mask has no cells" in output
    assert "logs/masks/day1t1xy1.log" in output


def test_kill_9_during_the_dataset_build_then_unlock_and_resume(tmp_path):
    config = tiny_config()
    write_project(tmp_path, config)
    target = "results/datasets/brightfield/manifest.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        snakemake_command(tmp_path, "--cores", "1", target),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (tmp_path / "logs" / "dataset").is_dir(), 180, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Killed inside the build: no manifest, so the data set counts as missing.
    assert not (tmp_path / target).exists()
    for args in (("--unlock",), (target,)):
        result = subprocess.run(
            snakemake_command(tmp_path, "--cores", "2", *args),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    from protoseg.dataset import open_split

    train = open_split(tmp_path / "results" / "datasets" / "brightfield", "train")
    assert len(train) > 0 and train.arrays(0)[0].shape[0] == 3
    assert [p for p in (tmp_path / "results").rglob(".*.tmp*")] == []
