"""The markdown table of ``benchmarks/realdata_ablation.py``'s results: mean and spread over
the seeds of every training row and decision row.

    python benchmarks/realdata_table.py docs/benchmarks/realdata_ablation-aisegcell.json
    python benchmarks/realdata_table.py --fields '_tp[0-9]+$' docs/benchmarks/realdata_ablation-baby.json

Columns: the validation score that made the choice (pooled matched F1 at IoU 0.5, and
pooled pixel F1), then the test scores (pixel F1 pooled over the images, SA50 pooled from
object counts, mean per-image SA50, objects predicted / true), each as ``mean ± sd (n)``
over the seeds (sample standard deviation), and the threshold chosen on validation (range
over the seeds). *val. held out*: a joint choice's validation matched F1 with each
validation image scored by the choice made on the others (``-`` where a run lacks it). ``--fields REGEX``: test scores by field instead, a field being a test
state with REGEX removed (BABY: the time points of one trap), for the records that hold
per-image counts. ``--summary``: one row per choice (each training row with the shipped
decision, each decision row of the shipped training), the table of ``docs/realdata.md``.
``--curves``: how much each training row's validation swings (:func:`curve_table`).
``--agreement``: how well the validation split ranks the choices by their test scores
(:func:`agreement`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from protoseg import metrics


def spread(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def held_out(runs: list[dict]) -> str:
    """The validation matched F1 of a joint choice scored held out (each validation image
    with the choice made on the others), where every run has it."""
    if not all("validation_held_out" in run for run in runs):
        return "-"
    return spread([run["validation_held_out"]["matched_f1"] for run in runs])


def runs_by_row(results: dict) -> dict[tuple[str, str], list[dict]]:
    """Every seed's decision record, by (training row, decision row), in file order."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for record in results["records"]:
        for decision in record["decisions"]:
            rows.setdefault((record["training"], decision["decision"]), []).append(
                decision | {"seed": record["seed"]}
            )
    return rows


def table(results: dict) -> str:
    rows = runs_by_row(results)
    lines = [
        "| training | decision | seeds | threshold | val. matched F1 | val. held out | "
        "val. pixel F1 | test pixel F1 | test SA50 (pooled) | test SA50 (mean) | "
        "objects pred. / true |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (training, decision), runs in rows.items():
        thresholds = [run["threshold"] for run in runs]
        ratio = [sum(run["test"]["n_pred"]) / max(1, sum(run["test"]["n_true"])) for run in runs]
        lines.append(
            f"| {training} | {decision} | {len(runs)} | "
            f"{min(thresholds):.3g}-{max(thresholds):.3g} | "
            f"{spread([r['validation']['matched_f1_pooled'] for r in runs])} | "
            f"{held_out(runs)} | "
            f"{spread([r['validation']['pixel_f1'] for r in runs])} | "
            f"{spread([r['test']['pixel_f1'] for r in runs])} | "
            f"{spread([r['test']['sa50_pooled'] for r in runs])} | "
            f"{spread([r['test']['sa50_mean'] for r in runs])} | "
            f"{spread(ratio)}x |"
        )
    return "\n".join(lines)


SHIPPED_DECISION = "threshold and object filter chosen together"


def agreement(results: dict) -> str:
    """How well the validation split ranks the choices by what they score on test, over
    every (training, decision) row whose threshold and filter were chosen together (every
    training row, with and without TTA and the other inference settings): Spearman's rank
    correlation of the seed means, by validation matched F1 and by the held-out score,
    against test pixel F1 and SA50 (pooled); and what the row validation ranks first
    scores on test, beside the best row on test."""
    runs = runs_by_row(results)
    # The joint choices: those with a held-out score on every seed.
    keys = [key for key, rows in runs.items() if all("validation_held_out" in run for run in rows)]

    def means(section: str, score: str) -> np.ndarray:
        """Each row's mean over its seeds of run[section][score]."""
        return np.array([np.mean([run[section][score] for run in runs[key]]) for key in keys])

    lines = [
        f"| validation score ({len(keys)} choices) | test pixel F1 | test SA50 (pooled) |",
        "|---|---:|---:|",
    ]
    tests = {name: means("test", name) for name in ("pixel_f1", "sa50_pooled")}
    scores = {
        "matched F1": means("validation", "matched_f1_pooled"),
        "held out": means("validation_held_out", "matched_f1"),
    }
    for name, validation in scores.items():
        cells = [f"{spearmanr(validation, test).statistic:+.2f}" for test in tests.values()]
        lines.append(f"| {name}: rank correlation | {' | '.join(cells)} |")
    for name, validation in scores.items():
        picked = int(np.argmax(validation))
        cells = [f"{test[picked]:.3f} ({'/'.join(keys[picked])})" for test in tests.values()]
        lines.append(f"| {name}: its first choice on test | {' | '.join(cells)} |")
    best = [f"{test.max():.3f} ({'/'.join(keys[int(np.argmax(test))])})" for test in tests.values()]
    lines.append(f"| the best choice on test | {' | '.join(best)} |")
    return "\n".join(lines)


def summary_table(
    results: dict,
    shipped: str = "shipped",
    adopted: str | None = None,
    adopted_training: str | None = None,
) -> str:
    """One row per choice: every training row with the shipped decision, then every other
    decision row of the shipped training; the first row is the shipped pipeline. Columns as
    :func:`table`, and the difference in validation matched F1 to the shipped row (what
    decides whether a choice is adopted). ``adopted``: a decision row this ablation adopted,
    of the training row ``adopted_training`` (default: the shipped training); it is marked
    as shipped (second, when it is another training's decision), and the first row becomes
    the reference the others are measured against."""
    runs = runs_by_row(results)
    reference = (shipped, SHIPPED_DECISION)
    chosen = (adopted_training or shipped, adopted or SHIPPED_DECISION)
    order = [reference]
    if chosen[0] != shipped and chosen[1] != SHIPPED_DECISION and chosen in runs:
        order.append(chosen)  # a decision row of another training: not listed below
    order += [key for key in runs if key[1] == SHIPPED_DECISION and key[0] != shipped]
    order += [key for key in runs if key[0] == shipped and key[1] != SHIPPED_DECISION]
    base = np.mean([r["validation"]["matched_f1_pooled"] for r in runs[reference]])
    changed = chosen != reference
    lines = [
        f"| choice | seeds | val. matched F1 | vs {'reference' if changed else 'shipped'} | "
        "val. held out | test pixel F1 | "
        "test SA50 (pooled) | objects pred. / true |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for training, decision in order:
        rows = runs[(training, decision)]
        name = training if decision == SHIPPED_DECISION else decision
        if (training, decision) == reference:
            name = f"**{'reference' if changed else 'shipped'}** ({SHIPPED_DECISION})"
        elif (training, decision) == chosen:
            label = ", ".join(part for part in (adopted_training, adopted) if part)
            name = f"**{label}: adopted, shipped**"
        validation = [r["validation"]["matched_f1_pooled"] for r in rows]
        ratio = [sum(r["test"]["n_pred"]) / max(1, sum(r["test"]["n_true"])) for r in rows]
        lines.append(
            f"| {name} | {len(rows)} | {spread(validation)} | "
            f"{np.mean(validation) - base:+.3f} | {held_out(rows)} | "
            f"{spread([r['test']['pixel_f1'] for r in rows])} | "
            f"{spread([r['test']['sa50_pooled'] for r in rows])} | {spread(ratio)}x |"
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


def curve_swing(curve: list[list[float]]) -> tuple[float, float]:
    """The standard deviation of a run's validation pixel F1 over the second half of its
    validations, and the largest fall from one validation to the next over the whole run."""
    scores = np.array([f1 for _, f1 in curve], dtype=float)
    late = scores[len(scores) // 2 :]
    falls = -np.diff(scores)
    return float(late.std()), float(max(0.0, falls.max(initial=0.0)))


def curve_table(results: dict) -> str:
    """Per training row (records with a ``validation_curve``): the swing of validation over
    the seeds (:func:`curve_swing`), the last validation's score and the epochs kept."""
    rows: dict[str, list[dict]] = {}
    for record in results["records"]:
        if record.get("validation_curve"):
            rows.setdefault(record["training"], []).append(record)
    lines = [
        "| training | seeds | val. pixel F1, sd over the second half | largest fall between "
        "validations | last validation | epochs kept |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for training, records in rows.items():
        swings = [curve_swing(record["validation_curve"]) for record in records]
        lines.append(
            f"| {training} | {len(records)} | {spread([s[0] for s in swings])} | "
            f"{spread([s[1] for s in swings])} | "
            f"{spread([record['validation_curve'][-1][1] for record in records])} | "
            f"{', '.join(str(record.get('epoch_kept')) for record in records)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--fields", help="regular expression removed from a state: its field")
    parser.add_argument(
        "--summary", action="store_true", help="one row per choice (the shipped decision)"
    )
    parser.add_argument("--adopted", help="with --summary: the decision row now shipped")
    parser.add_argument(
        "--adopted-training", help="with --summary: the training row now shipped (with --adopted)"
    )
    parser.add_argument(
        "--curves", action="store_true", help="how much each training row's validation swings"
    )
    parser.add_argument(
        "--agreement",
        action="store_true",
        help="how well validation ranks the choices by their test scores",
    )
    args = parser.parse_args()
    for path in args.results:
        results = json.loads(path.read_text())
        print(f"### {path}\n")
        if args.summary:
            print(
                summary_table(results, adopted=args.adopted, adopted_training=args.adopted_training)
            )
        elif args.curves:
            print(curve_table(results))
        elif args.agreement:
            print(agreement(results))
        elif args.fields:
            print(field_table(results, args.fields))
        else:
            print(table(results))
        print()
