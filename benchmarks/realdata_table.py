"""The markdown table of ``benchmarks/realdata_ablation.py``'s results: mean and spread over
the seeds of every training row and decision row.

    python benchmarks/realdata_table.py docs/benchmarks/realdata_ablation-aisegcell.json

Columns: the validation score that made the choice (pooled matched F1 at IoU 0.5, and
pooled pixel F1), then the test scores (pixel F1 pooled over the images, SA50 pooled from
object counts, mean per-image SA50, objects predicted / true), each as ``mean ± sd (n)``
over the seeds (sample standard deviation), and the threshold chosen on validation (range
over the seeds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def spread(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def table(results: dict) -> str:
    rows: dict[tuple[str, str], list[dict]] = {}
    for record in results["records"]:
        for decision in record["decisions"]:
            rows.setdefault((record["training"], decision["decision"]), []).append(
                decision | {"seed": record["seed"]}
            )
    lines = [
        "| training | decision | seeds | threshold | val. matched F1 | val. pixel F1 | "
        "test pixel F1 | test SA50 (pooled) | test SA50 (mean) | objects pred. / true |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (training, decision), runs in rows.items():
        thresholds = [run["threshold"] for run in runs]
        ratio = [sum(run["test"]["n_pred"]) / max(1, sum(run["test"]["n_true"])) for run in runs]
        lines.append(
            f"| {training} | {decision} | {len(runs)} | "
            f"{min(thresholds):.3g}-{max(thresholds):.3g} | "
            f"{spread([r['validation']['matched_f1_pooled'] for r in runs])} | "
            f"{spread([r['validation']['pixel_f1'] for r in runs])} | "
            f"{spread([r['test']['pixel_f1'] for r in runs])} | "
            f"{spread([r['test']['sa50_pooled'] for r in runs])} | "
            f"{spread([r['test']['sa50_mean'] for r in runs])} | "
            f"{spread(ratio)}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"### {path}\n")
        print(table(json.loads(Path(path).read_text())))
        print()
