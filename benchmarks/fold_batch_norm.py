"""What folding batch norm into the convolutions (protoseg.model.fold_batch_norm: a
Segmenter's ``fold_batch_norm``, ``evaluate.fold_batch_norm`` and ``predict.fold_batch_norm``
in the config) changes for a trained model: the time of evaluation's outputs, the outputs
themselves, and the shipped decision (threshold and object filter chosen together on the
validation split) with its test scores, beside the network run as stored.

    python benchmarks/fold_batch_norm.py CONFIG DATASET_DIR MODEL.pt OUT.json [--rounds 3] [--tta] [--float32]

The times are of the sliding window over every validation and test image without TTA, the
two networks alternating within each round (the cores are shared); the decision is made on
the outputs the config's ``evaluate.tta`` asks for (``--tta`` forces it on). Results:
``docs/benchmarks/fold_batch_norm.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata_ablation import split_outputs  # noqa: E402
from seed_ensemble import decided  # noqa: E402

from protoseg import objects as object_rules  # noqa: E402
from protoseg.config import complete_section  # noqa: E402
from protoseg.segmenter import Segmenter  # noqa: E402

SPLITS = ("validation", "test")


def variant(segmenter: Segmenter, name: str, **settings) -> Segmenter:
    """``segmenter`` with ``settings``: folded (``folded``), with the network as the model
    file stores it (``stored``, batch norm unfolded: what protoseg ran before), or that in
    float32 (``float32``, the reference both are measured against)."""
    if name == "float32":
        settings["precision"] = "fp32"
    return segmenter.with_settings(fold_batch_norm=name == "folded", **settings)


def timed_outputs(segmenter: Segmenter, dataset_dir: Path, resolution: str) -> float:
    start = time.perf_counter()
    for split in SPLITS:
        split_outputs(segmenter, dataset_dir, split, resolution)
    return time.perf_counter() - start


def differences(outputs: list, reference: list) -> dict:
    """How far foreground probabilities lie from the reference's, and how many pixels
    fall on the other side of 0.5."""
    pairs = list(zip(outputs, reference, strict=True))
    deltas = np.concatenate([np.abs(a[0][0] - b[0][0]).ravel() for a, b in pairs])
    flipped = sum(int(((a[0][0] > 0.5) != (b[0][0] > 0.5)).sum()) for a, b in pairs)
    return {
        "max_abs_probability": float(deltas.max()),
        "mean_abs_probability": float(deltas.mean()),
        "p99_abs_probability": float(np.quantile(deltas, 0.99)),
        "pixels_across_0.5": flipped,
        "pixels": int(deltas.size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tta", action="store_true", help="decide on TTA outputs")
    parser.add_argument(
        "--float32", action="store_true", help="also the float32 outputs, as the reference"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.config, args.dataset_dir, args.model, args.out = (
        path.resolve() for path in (args.config, args.dataset_dir, args.model, args.out)
    )
    # The manifest names the masks relative to where snakemake ran: RUN/results/datasets/X.
    os.chdir(args.dataset_dir.parents[2])
    evaluate_cfg = complete_section("evaluate", yaml.safe_load(args.config.read_text())["evaluate"])
    resolution, tta = evaluate_cfg["resolution"], bool(args.tta or evaluate_cfg["tta"])
    segmenter, meta = Segmenter.from_file(
        args.model, "evaluate", **{**evaluate_cfg, "device": "cpu", "tta": False}
    )
    # Without the stored filter: the decision chooses its own, as training does.
    segmenter = segmenter.with_settings(object_filter=object_rules.ObjectFilter())
    names = ("folded", "stored") + (("float32",) if args.float32 else ())
    timed = ("folded", "stored")
    segmenters = {name: variant(segmenter, name) for name in timed}

    seconds = {name: [] for name in segmenters}
    for round_index in range(args.rounds):
        order = list(segmenters) if round_index % 2 == 0 else list(segmenters)[::-1]
        for name in order:
            seconds[name].append(timed_outputs(segmenters[name], args.dataset_dir, resolution))
        print(
            f"round {round_index + 1}: "
            + ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()),
            flush=True,
        )

    outputs, decisions = {}, {}
    for name in names:
        each = variant(segmenter, name, tta=tta)
        outputs[name] = {
            split: split_outputs(each, args.dataset_dir, split, resolution) for split in SPLITS
        }
        decisions[name] = decided(each, outputs[name]["validation"], outputs[name]["test"])
    for name, row in decisions.items():
        print(
            f"{name}: threshold {row['threshold']:.4f}, validation matched F1 "
            f"{row['validation']['matched_f1_pooled']:.4f}, test pixel F1 "
            f"{row['test']['pixel_f1']:.4f}, SA50 pooled {row['test']['sa50_pooled']:.4f}"
        )
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "model": str(args.model),
        "epoch_kept": meta.get("epoch_kept"),
        "precision": segmenter.precision,
        "tta_for_decision": tta,
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "torch": torch.__version__,
        "seconds": seconds,
        "median_seconds": medians,
        "speedup": medians["stored"] / medians["folded"],
        # Of the folded network from the stored one, and of each from float32.
        "differences": {
            split: differences(outputs["folded"][split], outputs["stored"][split])
            for split in SPLITS
        },
        "from_float32": {
            name: {
                split: differences(outputs[name][split], outputs["float32"][split])
                for split in SPLITS
            }
            for name in timed
            if "float32" in outputs
        },
        "decisions": decisions,
    }
    print(f"speedup {result['speedup']:.3f}x; differences {result['differences']}")
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
