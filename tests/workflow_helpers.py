"""Run the real Snakefile on tiny configs in a temporary working directory."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def tiny_config() -> dict:
    """The demo config shrunk to seconds: 3 states, 3 planes, small images, 6 epochs."""
    config = copy.deepcopy(demo_config())
    config["data"]["planes"] = [12, 18, 24]
    config["demo"].update({"days": [1], "times": [1], "xy": [1, 2, 10], "height": 96, "width": 128})
    config["demo"]["cells"] = [4, 6]
    config["demo"]["cell_radius"] = [9, 16]
    config["dataset"]["size"] = [48, 64]
    config["dataset"]["shard_size"] = 8
    config["model"].update({"depth": 2, "base_channels": 4})
    config["train"].update({"epochs": 6, "batch_size": 4})
    return config


def tiny_demo_config() -> dict:
    """The tiny config with a focal-context variant beside the single-plane ones
    (docs/focal-context.md): the one demo run the end-to-end tests share."""
    config = tiny_config()
    config["dataset"]["variants"]["brightfield_z1"] = {
        "modalities": ["brightfield"],
        "context_planes": 1,
    }
    return config


def write_project(workdir: Path, config: dict) -> Path:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    path = workdir / "config" / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# One torch thread per job: jobs run side by side on the test machine's cores.
SNAKEMAKE_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """The real Snakefile run in ``workdir`` (with Snakemake's lock unless ``args`` say
    ``--nolock``)."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = snakemake_command(workdir, "--cores", "2", "--nolock", *args)
    env = SNAKEMAKE_ENV
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result
