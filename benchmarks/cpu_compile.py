"""Whether ``torch.compile`` pays on a CPU: a real data set's training steps, eager and compiled.

    python benchmarks/cpu_compile.py CONFIG DATASET_DIR [--steps 24] [--rounds 3] [--out OUT.json]

Builds two :class:`protoseg.train.Trainer` objects from CONFIG's ``model`` and ``train``
sections (the first loss of ``train.losses``), one with ``train.compile: false`` and one
with ``true``, as the train rule would build them on this machine (device, precision,
channels_last), and runs the same ``--steps`` batches of DATASET_DIR's training patches
through each with :meth:`protoseg.train.Trainer.train_step`, the step training takes. It
times the compiled network's first step (when torch compiles it, with an empty compile
cache), then ``--rounds`` rounds of both, alternating, so that a busy machine slows both
alike. Prints and writes seconds per step and their ratio.

``train.compile: auto`` compiles on CUDA only; this measures the reason on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from protoseg.config import validate
from protoseg.train import Trainer


def make_trainer(config: dict, dataset_dir: Path, model_dir: Path, compiled: bool) -> Trainer:
    train_cfg = {**config["train"], "compile": compiled}
    return Trainer(
        dataset_dir,
        model_dir,
        model_cfg=config["model"],
        train_cfg=train_cfg,
        loss=config["train"]["losses"][0],
        progress=False,
        inference=config["evaluate"],
    )


def run_steps(trainer: Trainer, batches: list) -> float:
    """Seconds per training step over ``batches``."""
    trainer.model.train()
    started = time.perf_counter()
    for images, masks in batches:
        trainer.train_step(images.to(trainer.device), masks.to(trainer.device), epoch=1)
    return (time.perf_counter() - started) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = validate(yaml.safe_load(args.config.read_text()))

    with tempfile.TemporaryDirectory() as work:
        # A cold compilation, as a first training on a machine gets (torch caches compiled
        # code between runs, so the second compiles faster).
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(work) / "inductor")
        eager = make_trainer(config, args.dataset_dir, Path(work) / "eager", False)
        compiled = make_trainer(config, args.dataset_dir, Path(work) / "compiled", True)
        if eager.sampler is not None:
            eager.sampler.set_epoch(1)
        batches = []
        for batch in eager.loader:
            batches.append(batch)
            if len(batches) == args.steps + 1:
                break
        started = time.perf_counter()
        run_steps(compiled, batches[:1])  # torch compiles here
        first_step = time.perf_counter() - started
        run_steps(eager, batches[:1])  # oneDNN's first-call setup, outside the timing
        times = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            times["eager"].append(run_steps(eager, batches[1:]))
            times["compiled"].append(run_steps(compiled, batches[1:]))
        fell_back = compiled.forward.failed

    eager_s, compiled_s = float(np.median(times["eager"])), float(np.median(times["compiled"]))
    steps_per_train = eager.epochs * eager.steps_per_epoch
    result = {
        "config": str(args.config),
        "dataset": str(args.dataset_dir),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "device": str(eager.device),
        "precision": eager.precision,
        "batch_size": int(eager.settings["batch_size"]),
        "steps_timed": args.steps,
        "rounds": args.rounds,
        "compiled_fell_back_to_eager": fell_back,
        "compiled_first_step_s": round(first_step, 1),
        "eager_s_per_step": round(eager_s, 4),
        "compiled_s_per_step": round(compiled_s, 4),
        "eager_rounds": [round(t, 4) for t in times["eager"]],
        "compiled_rounds": [round(t, 4) for t in times["compiled"]],
        "speedup": round(eager_s / compiled_s, 3),
        "steps_per_training": steps_per_train,
        # What compiling would change in one training: the steps' time saved, less the
        # compilation (its first step, less an eager step).
        "training_seconds_saved": round(
            steps_per_train * (eager_s - compiled_s) - (first_step - eager_s), 0
        ),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
