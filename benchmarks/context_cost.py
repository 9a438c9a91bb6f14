"""Cost of focal-context models (``dataset.variants.*.context_planes``) against single-plane ones.

    cd WORKDIR && python /path/to/benchmarks/context_cost.py config/config.yaml \\
        brightfield,brightfield_z1,brightfield_z2 bce 5

Trains one epoch of each variant's model in turn (its own data set in
``results/datasets/{variant}``, the config's model and training settings), ``ROUNDS`` times,
in one process on one thread, so that other load on a shared machine hits every variant
alike; prints the median process CPU time and wall time per epoch. Then runs up to 8 test
samples through each trained model (``results/models/{variant}-{loss}/model.pt``, the
sliding window of evaluation) and prints the network's time per image, and the time to
prepare one raw image (read, scale, resize), which a focal window pays once per plane when
its planes come in order (the data set build and ``protoseg predict`` keep the window's
prepared images) and 2k + 1 times without. Run it from the working directory of the runs.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np
import torch
import yaml

from protoseg.dataset import open_split, read_record
from protoseg.io import read_image
from protoseg.segmenter import Segmenter
from protoseg.train import Trainer
from protoseg.transforms import prepare_image


def main(config_path, variants, loss, rounds) -> None:
    torch.set_num_threads(1)
    config = yaml.safe_load(pathlib.Path(config_path).read_text())
    variants = variants.split(",")
    trainers = {}
    for variant in variants:
        trainers[variant] = Trainer(
            f"results/datasets/{variant}",
            f"/tmp/context_cost_{variant}",
            model_cfg=config["model"],
            train_cfg={**config["train"], "device": "cpu", "workers": 0},
            loss=loss,
            progress=False,
        )
        trainers[variant].validating = False  # the epoch alone
    times = {variant: [] for variant in variants}
    for epoch in range(1, int(rounds) + 1):
        for variant in variants:
            cpu, wall = time.process_time(), time.perf_counter()
            trainers[variant].train_epoch(epoch)
            times[variant].append((time.process_time() - cpu, time.perf_counter() - wall))
    for variant in variants:
        cpu, wall = np.median(np.array(times[variant]), axis=0)
        trainer = trainers[variant]
        print(
            f"train {variant} (context {trainer.record.context_planes}, "
            f"{trainer.record.channels} input channels): epoch CPU {cpu:.3f} s, wall {wall:.3f} s "
            f"({trainer.steps_per_epoch} steps)"
        )
    models, splits = {}, {}
    for variant in variants:
        models[variant] = Segmenter.from_file(
            f"results/models/{variant}-{loss}/model.pt",
            "evaluate",
            tile=config["evaluate"]["tile"],
            overlap=config["evaluate"]["overlap"],
            device="cpu",
            batch_size=8,
        )
        splits[variant] = open_split(f"results/datasets/{variant}", "test")
    count = min(len(splits[variants[0]]), 8)
    network = {variant: [] for variant in variants}
    for index in range(count):
        for variant in variants:
            segmenter, meta = models[variant]
            segmenter = segmenter.with_settings(precision=meta["precision"])
            c0, w0 = time.process_time(), time.perf_counter()
            segmenter.sample_outputs(splits[variant], index)
            network[variant].append((time.process_time() - c0, time.perf_counter() - w0))
    prep = read_record(f"results/datasets/{variants[0]}").preprocessing
    raw_files = list(splits[variants[0]].manifest["image"][:count])
    prepare = []
    for path in raw_files:
        c0, w0 = time.process_time(), time.perf_counter()
        prepare_image(read_image(path), prep, path)
        prepare.append((time.process_time() - c0, time.perf_counter() - w0))
    for variant in variants:
        cpu, wall = np.median(np.array(network[variant]), axis=0)
        print(f"infer {variant}: network CPU {cpu:.4f} s (wall {wall:.4f}) per image ({count})")
    cpu, wall = np.median(np.array(prepare), axis=0)
    print(f"prepare one raw image: CPU {cpu:.4f} s (wall {wall:.4f})")


if __name__ == "__main__":
    main(*sys.argv[1:])
