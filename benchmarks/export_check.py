"""Export every model of finished protoseg runs and compare each package with protoseg.

    python benchmarks/export_check.py RUN_DIR [RUN_DIR ...] [--out docs/benchmarks/export_check]

For each run folder (a project where `snakemake` trained models: `results/models/*/model.pt`),
each model is exported with no flags (`protoseg.export.export_model`, which runs
bioimage.io's own test offline before it writes the package) and its package is run by
bioimageio.core on three of the run's test images; the cells (foreground above the model's
threshold) are compared with protoseg's own (`protoseg.export.compare_with_protoseg`).
A model the format cannot express is reported with the reason it was refused.
Writes `{out}.md` and `{out}.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from protoseg.errors import InputError
from protoseg.export import compare_with_protoseg, export_model


def test_images(run: Path, model_dir: Path, count: int = 3) -> list[Path]:
    """The first test images of the model's data set (whole images, as the run read them)."""
    variant = model_dir.name.rsplit("-", 1)[0]
    manifest = pd.read_csv(run / "results" / "datasets" / variant / "manifest.csv")
    images = manifest.loc[manifest["split"] == "test", "image"].drop_duplicates().head(count)
    return [path if Path(path).is_absolute() else run / path for path in images]


def check_run(run: Path, scratch: Path) -> list[dict]:
    rows = []
    for model in sorted((run / "results" / "models").glob("*/model.pt")):
        row = {"run": run.name, "model": model.parent.name}
        started = time.perf_counter()
        package = scratch / run.name / model.parent.name
        try:
            export_model(model, package)
        except InputError as error:
            rows.append(row | {"exported": False, "reason": error.problem})
            continue
        compared = compare_with_protoseg(package, model, test_images(run, model.parent))
        rows.append(
            row
            | {
                "exported": True,
                "bioimageio_test": "passed",
                "export_seconds": round(time.perf_counter() - started, 1),
                "images": len(compared),
                "sizes": sorted({f"{c['height']}x{c['width']}" for c in compared}),
                "pixels_differing_max": max(c["pixels_differing"] for c in compared),
                "probability_difference_max": max(
                    c["max_probability_difference"] for c in compared
                ),
            }
        )
        print(rows[-1], flush=True)
    return rows


def render(rows: list[dict]) -> str:
    lines = [
        "# Every model of finished runs exported, tested and compared with protoseg",
        "",
        "Made by `python benchmarks/export_check.py RUN_DIR ...` (each model exported with no",
        "flags; bioimage.io's own test passed offline before each package was written; the",
        "package run by bioimageio.core on 3 test images of its run, its cells against",
        "protoseg's own). Raw numbers: export_check.json.",
        "",
        "| run | model | exported | bioimage.io test | images | share of pixels differing (max) | largest probability difference |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        if not row["exported"]:
            lines.append(f"| {row['run']} | {row['model']} | refused: {row['reason']} | | | | |")
            continue
        lines.append(
            f"| {row['run']} | {row['model']} | yes | passed | {row['images']} "
            f"({', '.join(row['sizes'])}) | {row['pixels_differing_max']:.4%} | "
            f"{row['probability_difference_max']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/export_check"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/protoseg-export-check"))
    args = parser.parse_args(argv)
    rows = [row for run in args.runs for row in check_run(run.resolve(), args.scratch)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(rows))
    print(render(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
