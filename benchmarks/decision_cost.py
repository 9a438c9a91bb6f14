"""What the end of a training costs: the threshold and object filter chosen together on the
validation images (``train.threshold_objective: instances`` with ``object_filter: auto``).

    python benchmarks/decision_cost.py MODEL.pt DATASET_DIR [--tta] [--rounds 3] [--out OUT.json]

Run where the data set's masks are found (the folder ``snakemake`` ran in). Computes the
network's outputs on every validation image once (with ``--tta``: the 8 flips and quarter
turns, as the train job does when ``evaluate.tta`` is on), then times, ``ROUNDS`` times on
one thread, the parts of :meth:`protoseg.train.Trainer.choose_threshold_and_filter` that
follow: the objects of every image at every threshold of the logit grid
(:func:`protoseg.objects.threshold_tables`: labelling, measuring, matching), the joint choice
and the held-out score. Prints the median process CPU time of each and the choice, so that
two versions of protoseg can be compared on one machine in one session by running this
script under each (``PYTHONPATH=old/checkout``): their choices must be the same.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata_ablation import split_outputs  # noqa: E402

from protoseg import objects as object_rules  # noqa: E402
from protoseg.segmenter import Segmenter  # noqa: E402


def cpu_seconds(action, *args):
    start = time.process_time()
    result = action(*args)
    return time.process_time() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    segmenter, _ = Segmenter.from_file(args.model, "evaluate", device="cpu", tta=args.tta)
    segmenter = segmenter.with_settings(object_filter=object_rules.ObjectFilter())
    # The outputs as the ablation computes them: at each image's own size, with its cells.
    output_seconds, validation = cpu_seconds(
        split_outputs, segmenter, args.dataset_dir, "validation", "original"
    )
    images = [(outputs, true_cells) for outputs, _, true_cells in validation]

    def cells(out, threshold):
        return segmenter.cells(out, threshold, False)

    times = {"threshold_tables": [], "joint_choice": [], "held_out_score": []}
    for _ in range(args.rounds):
        seconds, tables = cpu_seconds(object_rules.threshold_tables, images, cells)
        times["threshold_tables"].append(seconds)
        seconds, chosen = cpu_seconds(object_rules.joint_choice, tables)
        times["joint_choice"].append(seconds)
        seconds, held_out = cpu_seconds(object_rules.held_out_score, tables)
        times["held_out_score"].append(seconds)
    result = {
        "model": str(args.model),
        "validation_images": len(images),
        "pixels": int(sum(labels.size for _, labels in images)),
        "objects_measured": int(sum(len(t["label"]) for image in tables for t, _ in image)),
        "tta": args.tta,
        "outputs_cpu_s": round(output_seconds, 2),
        **{f"{name}_cpu_s": round(float(np.median(v)), 3) for name, v in times.items()},
        "threshold": chosen["value"],
        "filter": chosen["filter"].describe(),
        "matched_f1": chosen["matched_f1"],
        "matched_f1_held_out": held_out["matched_f1"],
        "rounds": args.rounds,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
