"""The markdown table of ``benchmarks/realdata_ablation.py``'s results: mean and spread over
the seeds of every training row and decision row.

    python benchmarks/realdata_table.py docs/benchmarks/realdata_ablation-aisegcell.json
    python benchmarks/realdata_table.py --fields '_tp[0-9]+$' docs/benchmarks/realdata_ablation-baby.json

Columns: the validation score that made the choice (pooled matched F1 at IoU 0.5, and
pooled pixel F1), then the test scores (pixel F1 pooled over the images, SA50 pooled from
object counts, mean per-image SA50, objects predicted / true), each as ``mean ± sd (n)``
over the seeds (sample standard deviation), and the threshold chosen on validation (range
over the seeds). ``--fields REGEX``: test scores by field instead, a field being a test
state with REGEX removed (BABY: the time points of one trap), for the records that hold
per-image counts.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from protoseg import metrics


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


def field_table(results: dict, pattern: str) -> str:
    rows: dict[tuple[str, str, str], list[dict]] = {}
    for record in results["records"]:
        states = record.get("test_states")
        for decision in record["decisions"]:
            test = decision["test"]
            if states is None or "pixel_counts" not in test:
                continue
            fields = [re.sub(pattern, "", state) for state in states]
            for field in sorted(set(fields)):
                index = [i for i, f in enumerate(fields) if f == field]
                counts = np.sum([test["pixel_counts"][i] for i in index], axis=0)
                n_pred = sum(test["n_pred"][i] for i in index)
                n_true = sum(test["n_true"][i] for i in index)
                rows.setdefault((record["training"], decision["decision"], field), []).append(
                    {
                        "pixel_f1": metrics.f1(*(int(c) for c in counts)),
                        "sa50_mean": float(np.mean([test["sa50"][i] for i in index])),
                        "objects": f"{n_pred}/{n_true}",
                    }
                )
    lines = [
        "| training | decision | field | seeds | test pixel F1 | test SA50 (mean) | objects |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for (training, decision, field), runs in rows.items():
        lines.append(
            f"| {training} | {decision} | {field} | {len(runs)} | "
            f"{spread([r['pixel_f1'] for r in runs])} | "
            f"{spread([r['sa50_mean'] for r in runs])} | "
            f"{', '.join(r['objects'] for r in runs)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--fields", help="regular expression removed from a state: its field")
    args = parser.parse_args()
    for path in args.results:
        results = json.loads(path.read_text())
        print(f"### {path}\n")
        print(field_table(results, args.fields) if args.fields else table(results))
        print()
