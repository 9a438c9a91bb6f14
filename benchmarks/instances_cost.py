"""Cost of instance outputs (``model.instances``) against the binary model.

    cd WORKDIR && python /path/to/benchmarks/instances_cost.py config/config.yaml \\
        results/datasets/brightfield "/tmp/runs/demo_{mode}/results/models" brightfield-bce 5

Trains one epoch of each mode in turn (``none``, ``boundaries``, ``distances``; same data
set, which must store instance labels, same settings), ``ROUNDS`` times, in one process on
one thread, so that other load on a shared machine hits every mode alike; prints the median
process CPU time and wall time per epoch. Then, unless the models pattern is ``-``, runs up
to 8 test images through each mode's trained model (``{mode}`` in the pattern) and prints
the time of the network (sliding window, all outputs) and of the cells (connected
components, or the seeded watershed with the model's stored settings) per image. Run it
from the working directory of the runs: the manifest's mask paths are relative to it. An
optional sixth argument sets ``train.samples_per_epoch`` (patches geometry).
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np
import torch
import yaml

from protoseg.dataset import open_split
from protoseg.evaluate import TruthReader
from protoseg.instances import MODES
from protoseg.metrics import instances_from_binary
from protoseg.segmenter import Segmenter
from protoseg.train import Trainer


def main(config_path, dataset_dir, pattern, model_name, rounds, samples=None) -> None:
    torch.set_num_threads(1)
    config = yaml.safe_load(pathlib.Path(config_path).read_text())
    trainers = {}
    for mode in MODES:
        train_cfg = {**config["train"], "device": "cpu", "workers": 0}
        if samples:
            train_cfg["samples_per_epoch"] = int(samples)
        trainers[mode] = Trainer(
            dataset_dir,
            f"/tmp/instances_cost_{mode}",
            model_cfg={**config["model"], "instances": mode},
            train_cfg=train_cfg,
            loss=config["train"]["losses"][0],
            progress=False,
        )
        trainers[mode].validating = False  # the epoch alone
    times = {mode: [] for mode in MODES}
    for epoch in range(1, int(rounds) + 1):
        for mode in MODES:
            cpu, wall = time.process_time(), time.perf_counter()
            trainers[mode].train_epoch(epoch)
            times[mode].append((time.process_time() - cpu, time.perf_counter() - wall))
    for mode in MODES:
        cpu, wall = np.median(np.array(times[mode]), axis=0)
        steps = trainers[mode].steps_per_epoch
        print(f"train {mode}: epoch CPU {cpu:.2f} s, wall {wall:.2f} s ({steps} steps)")
    if pattern == "-":
        return
    split = open_split(dataset_dir, "test")
    truth = TruthReader(split, "original", "labels")
    models = {}
    for mode in MODES:
        path = pathlib.Path(pattern.format(mode=mode)) / model_name / "model.pt"
        segmenter, meta = Segmenter.from_file(
            path,
            "evaluate",
            tile=config["evaluate"]["tile"],
            overlap=config["evaluate"]["overlap"],
            device="cpu",
            batch_size=8,
        )
        models[mode] = segmenter.with_settings(precision=meta["precision"])
    totals = {mode: np.zeros(4) for mode in MODES}
    count = min(len(split), 8)
    for index in range(count):
        binary, _ = truth(index)
        for mode in MODES:
            segmenter = models[mode]
            c0, w0 = time.process_time(), time.perf_counter()
            outputs = segmenter.at_size(segmenter.sample_outputs(split, index), binary.shape)
            c1, w1 = time.process_time(), time.perf_counter()
            if segmenter.own_step is None:
                instances_from_binary(outputs[0] > segmenter.threshold)
            else:
                segmenter.cells(outputs)
            c2, w2 = time.process_time(), time.perf_counter()
            totals[mode] += (c1 - c0, w1 - w0, c2 - c1, w2 - w1)
    for mode in MODES:
        network, network_wall, cells, cells_wall = totals[mode] / count
        print(
            f"infer {mode}: network CPU {network:.3f} s (wall {network_wall:.3f}), "
            f"cells CPU {cells:.3f} s (wall {cells_wall:.3f}) per image ({count} images)"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
