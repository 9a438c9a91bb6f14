"""Seed spread of single-plane and focal-context models: per-plane test scores over seeds.

    cd WORKDIR && python /path/to/benchmarks/context_seeds.py config/config.yaml \\
        brightfield,brightfield_z1,brightfield_z2 bce 0,1,2 /tmp/seeds

Trains each variant's model (its data set in ``results/datasets/{variant}``, built by a run
of the workflow in WORKDIR; the config's model, training and evaluation settings) once per
seed into ``OUT/{variant}-{loss}-s{seed}``, scores it on the test split as the evaluate
stage does, and prints per plane the pooled pixel F1 and the SA50 (from object counts
pooled over the plane's images) as mean, minimum and maximum over the seeds, then a table
of every model (``OUT/seeds.csv``). Nothing is chosen here: the spread says how far one
seed's difference between two variants can be trusted.
"""

from __future__ import annotations

import pathlib
import sys

import pandas as pd
import torch
import yaml

from protoseg import tables
from protoseg.evaluate import evaluate_model
from protoseg.train import train_model


def main(config_path, variants, loss, seeds, out) -> None:
    torch.set_num_threads(1)
    config = yaml.safe_load(pathlib.Path(config_path).read_text())
    planes = [int(z) for z in config["data"]["planes"]]
    out = pathlib.Path(out)
    rows = []
    for variant in variants.split(","):
        dataset = f"results/datasets/{variant}"
        for seed in (int(value) for value in seeds.split(",")):
            model_dir = out / f"{variant}-{loss}-s{seed}"
            if not (model_dir / "model.pt").is_file():
                train_model(
                    dataset,
                    model_dir,
                    model_cfg=config["model"],
                    train_cfg={**config["train"], "seed": seed},
                    loss=loss,
                    progress=False,
                    inference={
                        key: config["evaluate"][key] for key in ("tile", "overlap", "resolution")
                    },
                )
            evaluation = config["evaluate"]
            per_image, _ = evaluate_model(
                model_dir / "model.pt",
                dataset,
                threshold=evaluation["threshold"],
                resolution=evaluation["resolution"],
                instances=evaluation["instances"],
                tile=evaluation["tile"],
                overlap=evaluation["overlap"],
                device="cpu",
                precision=evaluation["precision"],
            )
            summary = tables.summary({(variant, loss): per_image}, planes)
            pooled = summary[summary["reduction"] == "micro"]
            for row in pooled.itertuples(index=False):
                rows.append(
                    {"variant": variant, "seed": seed, "z": row.z, "f1": row.f1, "sa50": row.sa50}
                )
            print(f"{variant} seed {seed}: overall F1 {pooled.iloc[-1].f1:.3f}", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "seeds.csv", index=False)
    order = [f"z{z}" for z in planes] + ["overall"]
    for metric in ("f1", "sa50"):
        spread = table.groupby(["variant", "z"])[metric].agg(["mean", "min", "max"])
        text = spread.apply(
            lambda row: f"{row['mean']:.3f} ({row['min']:.3f}-{row['max']:.3f})", axis=1
        )
        print(f"\n{metric}: mean (min-max) over seeds")
        print(text.unstack("z")[order].to_string())


if __name__ == "__main__":
    main(*sys.argv[1:])
