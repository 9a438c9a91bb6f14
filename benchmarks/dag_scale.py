"""How planning the workflow grows with the study: `snakemake -n` and the catalogue job on
tiny TIFF trees of N states.

    python benchmarks/dag_scale.py                          # N = 100, 1000, 3000, 10000
    python benchmarks/dag_scale.py --states 100 1000 --batch 25 --skip-catalogue

Each tree holds N states in the study's naming (``day1t1c1xy10z12.tif``: 7 planes x 2
channels of 32 x 32 uint8 pixels, hard links to a few template files so that 140,000
images take no disk space), read with ``data.source: folder`` and ``quality.truth_dir:
null``, the rest of the demo config unchanged. For each N, in a fresh process each:

1. ``snakemake -n --cores 2`` (the whole run planned): wall seconds, peak resident
   memory, the number of jobs planned; without batching and with
   ``masks/merge.states_per_job`` = ``--batch``;
2. ``snakemake results/catalogue.csv --cores 2``: the catalogue job itself (every file
   opened and checked), wall seconds and peak memory.

The growth exponent is the slope of log(wall) against log(N) between neighbouring N (1
is linear, 2 quadratic). Writes docs/benchmarks/dag_scale.{json,png} (``--out``) and prints
the table of docs/benchmarks/dag_scale.md.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[1]
PLANES = [12, 14, 16, 18, 20, 22, 24]
CHANNELS = [1, 2]
# ext4 allows 65,000 links to one file; stay below it.
LINKS_PER_TEMPLATE = 60_000


def state_fields(index: int) -> tuple[int, int, int]:
    """(day, time, xy) of the index-th state: 100 positions, 100 time points per day."""
    return index // 10_000 + 1, (index // 100) % 100 + 1, index % 100 + 1


def write_tree(raw_dir: Path, n_states: int) -> int:
    """N states of 7 planes x 2 channels, hard links to templates; returns the file count."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, rng.integers(1, 255, (32, 32), dtype=np.uint8))
    templates = raw_dir.parent / "templates"
    templates.mkdir(exist_ok=True)
    count = 0
    template = None
    for index in range(n_states):
        day, time_point, xy = state_fields(index)
        for channel in CHANNELS:
            for z in PLANES:
                if count % LINKS_PER_TEMPLATE == 0:
                    template = templates / f"t{count // LINKS_PER_TEMPLATE}.tif"
                    template.write_bytes(buffer.getvalue())
                os.link(template, raw_dir / f"day{day}t{time_point}c{channel}xy{xy}z{z}.tif")
                count += 1
    return count


def write_config(workdir: Path, raw_dir: Path, batch: int) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["data"]["source"] = "folder"
    config["data"]["raw_dir"] = str(raw_dir)
    config["quality"]["truth_dir"] = None
    config["masks"]["states_per_job"] = batch
    config["merge"]["states_per_job"] = batch
    path = workdir / f"config-{batch}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def timed(command: list[str], cwd: Path) -> dict:
    """Wall seconds and peak resident memory (MB) of one command, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "peak_kb=%M cpu_s=%U+%S", *command],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    peak = int(re.findall(r"peak_kb=(\d+)", result.stderr)[-1])
    user, system = re.findall(r"cpu_s=([\d.]+)\+([\d.]+)", result.stderr)[-1]
    jobs = re.findall(r"^total\s+(\d+)", result.stdout + result.stderr, flags=re.M)
    return {
        "wall_s": round(wall, 2),
        # CPU seconds: on a shared machine the wall time also holds other users' load
        "cpu_s": round(float(user) + float(system), 2),
        "peak_mb": round(peak / 1024),
        "jobs": int(jobs[-1]) if jobs else None,
    }


def snakemake(workdir: Path, config: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        "2",
        "--nolock",
        *args,
    ]


def measure(n_states: int, batch: int, catalogue: bool, root: Path) -> dict:
    workdir = root / f"n{n_states}"
    raw_dir = workdir / "raw"
    start = time.perf_counter()
    images = write_tree(raw_dir, n_states)
    row = {"states": n_states, "images": images, "tree_s": round(time.perf_counter() - start, 1)}
    for per_job in sorted({1, batch}):
        config = write_config(workdir, raw_dir, per_job)
        planned = timed(
            snakemake(
                workdir,
                config,
                "-n",
            ),
            workdir,
        )
        key = "plan" if per_job == 1 else "plan_batched"
        row[key] = planned
        print(f"N={n_states} states_per_job={per_job}: {planned}", flush=True)
    if batch != 1:
        # What a cluster job pays before its work: the workflow parsed, its one job planned.
        first = "masks_batch" + "0" * len(str(math.ceil(n_states / batch) - 1))
        job = ["--target-jobs", f"{first}:", "--allowed-rules", first]
        # (its input, the catalogue, is there by then)
        (workdir / "results").mkdir(exist_ok=True)
        made = [workdir / "results" / name for name in ("catalogue.csv", "catalogue.checked")]
        for path in made:
            path.write_text("made earlier\n")
        row["job_parse"] = timed(snakemake(workdir, config, "-n", *job), workdir)
        for path in made:
            path.unlink()
        print(f"N={n_states} one batch job's parse: {row['job_parse']}", flush=True)
    if catalogue:
        config = write_config(workdir, raw_dir, 1)
        row["catalogue"] = timed(snakemake(workdir, config, "results/catalogue.csv"), workdir)
        print(f"N={n_states} catalogue job: {row['catalogue']}", flush=True)
    shutil.rmtree(workdir)
    return row


def exponents(rows: list[dict], key: str) -> list[tuple[int, int, float]]:
    """Slopes of log(wall) against log(N) between neighbouring rows."""
    found = []
    for low, high in zip(rows, rows[1:], strict=False):
        if key in low and key in high:
            slope = math.log(high[key]["wall_s"] / low[key]["wall_s"]) / math.log(
                high["states"] / low["states"]
            )
            found.append((low["states"], high["states"], round(slope, 2)))
    return found


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    states = [row["states"] for row in rows]
    for key, label in (
        ("plan", "snakemake -n (a job per state)"),
        ("plan_batched", "snakemake -n (batched)"),
        ("catalogue", "catalogue job"),
    ):
        if all(key in row for row in rows):
            axis.loglog(states, [row[key]["wall_s"] for row in rows], "o-", label=label)
    reference = np.array(states, dtype=float)
    base = rows[0]["plan"]["wall_s"]
    axis.loglog(reference, base * reference / reference[0], "k:", label="linear (slope 1)")
    axis.set_xlabel("states (14 images each)")
    axis.set_ylabel("wall seconds")
    axis.legend(fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def table(rows: list[dict], batch: int) -> str:
    lines = [
        f"| states (images) | jobs | `snakemake -n` wall (CPU) | peak | jobs, {batch} states "
        "per job | wall (CPU) | peak | one job's parse | catalogue job wall (CPU) | peak |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        plan = row["plan"]
        batched = row.get("plan_batched", {})
        cat = row.get("catalogue", {})
        job = row.get("job_parse", {})
        lines.append(
            f"| {row['states']:,} ({row['images']:,}) | {plan['jobs']:,} "
            f"| {plan['wall_s']} s ({plan['cpu_s']}) | {plan['peak_mb']} MB "
            f"| {batched.get('jobs', '-')} | {batched.get('wall_s', '-')} s "
            f"({batched.get('cpu_s', '-')}) | {batched.get('peak_mb', '-')} MB "
            f"| {job.get('wall_s', '-')} s | {cat.get('wall_s', '-')} s ({cat.get('cpu_s', '-')}) "
            f"| {cat.get('peak_mb', '-')} MB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, nargs="+", default=[100, 1000, 3000, 10000])
    parser.add_argument("--batch", type=int, default=25, help="states per job when batched")
    parser.add_argument("--skip-catalogue", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--tmp", type=Path, default=None, help="where the trees go")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="dag_scale-") as root:
        for n_states in args.states:
            rows.append(measure(n_states, args.batch, not args.skip_catalogue, Path(root)))
    result = {
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "batch": args.batch,
        "rows": rows,
        "exponents": {key: exponents(rows, key) for key in ("plan", "plan_batched", "catalogue")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dag_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / "dag_scale.png")
    print(table(rows, args.batch))
    print(json.dumps(result["exponents"]))


if __name__ == "__main__":
    main()
