"""Whether averaging the networks of several training seeds (nnU-Net's ensembling of its
folds) beats each network alone: the outputs of every model on every validation and test
image, their mean, and the shipped decision (threshold and object filter chosen together on
validation) made on each network alone and on the mean, scored on test.

    python benchmarks/seed_ensemble.py CONFIG DATASET_DIR OUT.json MODEL.pt [MODEL.pt ...] [--tta]

CONFIG: the configuration the models were trained with (its evaluate section); the models:
e.g. the three seeds of one row of ``benchmarks/realdata_ablation.py``. Every choice is made
on the validation split; the test split only scores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata_ablation import (  # noqa: E402
    FILTER_GRIDS,
    choose,
    joint_tables,
    scored_choice,
    split_outputs,
)

from protoseg import objects as object_rules  # noqa: E402
from protoseg.config import complete_section  # noqa: E402
from protoseg.segmenter import Segmenter  # noqa: E402


def decided(segmenter: Segmenter, validation, test) -> dict:
    """The shipped decision made on ``validation``, scored on both splits."""
    chosen = choose(segmenter, validation, "joint", "pixels", joint_tables(segmenter, validation))
    return scored_choice(chosen, validation, test)


def mean_outputs(per_model: list[list[tuple]]) -> list[tuple]:
    """Each image's outputs averaged over the models (truth as the first model's)."""
    return [
        (np.mean([images[i][0] for images in per_model], axis=0), *per_model[0][i][1:])
        for i in range(len(per_model[0]))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--tta", action="store_true", help="outputs with test-time augmentation")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.config, args.dataset_dir, args.out = (
        path.resolve() for path in (args.config, args.dataset_dir, args.out)
    )
    args.models = [model.resolve() for model in args.models]
    # The manifest names the masks relative to where snakemake ran: RUN/results/datasets/X.
    os.chdir(args.dataset_dir.parents[2])
    config = yaml.safe_load(args.config.read_text())
    evaluate_cfg = complete_section("evaluate", config["evaluate"])
    settings = {**evaluate_cfg, "device": "cpu", "tta": args.tta}
    outputs, singles = {"validation": [], "test": []}, []
    for model in args.models:
        segmenter, _ = Segmenter.from_file(model, "evaluate", **settings)
        # Without the filter the model file stores: the decision chooses its own.
        segmenter = segmenter.with_settings(object_filter=object_rules.ObjectFilter())
        start = time.perf_counter()
        for split in outputs:
            outputs[split].append(
                split_outputs(segmenter, args.dataset_dir, split, evaluate_cfg["resolution"])
            )
        print(f"{model}: outputs {time.perf_counter() - start:.0f} s", flush=True)
        singles.append(decided(segmenter, outputs["validation"][-1], outputs["test"][-1]))
    # Every segmenter finds cells the same way (the same settings): the last one serves.
    ensemble = decided(
        segmenter, mean_outputs(outputs["validation"]), mean_outputs(outputs["test"])
    )
    rows = [("single", row) for row in singles] + [("ensemble", ensemble)]
    for name, row in rows:
        print(
            f"{name}: threshold {row['threshold']:.4f}, validation matched F1 "
            f"{row['validation']['matched_f1_pooled']:.3f} (held out "
            f"{row['validation_held_out']['matched_f1']:.3f}), test pixel F1 "
            f"{row['test']['pixel_f1']:.3f}, SA50 pooled {row['test']['sa50_pooled']:.3f}, "
            f"objects {sum(row['test']['n_pred'])}/{sum(row['test']['n_true'])}"
        )
    args.out.write_text(
        json.dumps(
            {
                "models": [str(m) for m in args.models],
                "tta": args.tta,
                "filter_grid": len(FILTER_GRIDS["pixels"]),
                "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
                "torch": torch.__version__,
                "single": singles,
                "ensemble": ensemble,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
