"""Cost of test-time augmentation (``evaluate.tta`` / ``predict.tta``) in one run.

    python benchmarks/tta_cost.py config/config.yaml [ROUNDS] [OUT.json]

Builds the config's U-Net (random weights: the cost does not depend on them) for 3-channel
input, and runs one demo-sized input (``dataset.size``, the training scale of the demo: one
tile) and one 4 x 4 tiles input through :meth:`protoseg.segmenter.Segmenter.outputs`, with
and without TTA, alternating ``ROUNDS`` times (default 5) on one thread, so that other load
on a shared machine hits both alike. Prints and writes the median process CPU time and wall
time of each and their ratio (8 would be exactly eight passes).
"""

from __future__ import annotations

import json
import pathlib
import platform
import sys
import time
import types

import numpy as np
import torch
import yaml

from protoseg.config import validate
from protoseg.model import build_model
from protoseg.segmenter import Segmenter


def timed(segmenter: Segmenter, image: np.ndarray) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    segmenter.outputs(image)
    return time.process_time() - cpu, time.perf_counter() - wall


def main(config_path: str, rounds: int = 5, out: str | None = None) -> dict:
    torch.set_num_threads(1)
    config = validate(yaml.safe_load(pathlib.Path(config_path).read_text()))
    size = tuple(int(v) for v in config["dataset"]["size"])
    network = build_model(config["model"], 3).eval()
    record = types.SimpleNamespace(preprocessing=types.SimpleNamespace(tile=size))
    plain = Segmenter(network, record, tile=size, overlap=0.5, device="cpu", precision="fp32")
    augmented = plain.with_settings(tta=True)
    rng = np.random.default_rng(0)
    inputs = {
        f"{size[0]}x{size[1]} (one tile)": rng.normal(size=(3, *size)).astype(np.float32),
        f"{4 * size[0]}x{4 * size[1]} (tiled)": rng.normal(size=(3, 4 * size[0], 4 * size[1])),
    }
    results = {}
    for name, image in inputs.items():
        image = image.astype(np.float32)
        timed(plain, image), timed(augmented, image)  # warm-up
        times = {"plain": [], "tta": []}
        for _ in range(int(rounds)):
            times["plain"].append(timed(plain, image))
            times["tta"].append(timed(augmented, image))
        medians = {key: np.median(np.array(value), axis=0) for key, value in times.items()}
        results[name] = {
            "plain_cpu_s": float(medians["plain"][0]),
            "tta_cpu_s": float(medians["tta"][0]),
            "plain_wall_s": float(medians["plain"][1]),
            "tta_wall_s": float(medians["tta"][1]),
            "ratio_cpu": float(medians["tta"][0] / medians["plain"][0]),
            "ratio_wall": float(medians["tta"][1] / medians["plain"][1]),
        }
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[name].items()))
    report = {
        "config": config_path,
        "model": config["model"],
        "rounds": int(rounds),
        "threads": 1,
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    if out:
        pathlib.Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(*sys.argv[1:2], *(int(v) for v in sys.argv[2:3]), *sys.argv[3:4])
