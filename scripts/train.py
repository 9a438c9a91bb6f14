"""Snakemake script: one variant's dataset -> a trained U-Net (model.pt, history.csv, curve.png)."""

from pathlib import Path

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

import torch  # noqa: E402 - after the log is set up

from protoseg.train import train_model  # noqa: E402

torch.set_num_threads(max(1, snakemake.threads))
model_dir = Path(snakemake.output.model).parent
for output in (snakemake.output.history, snakemake.output.curve):
    assert Path(output).parent == model_dir, "all training outputs go to one model folder"
history = train_model(
    Path(snakemake.input.manifest).parent,
    model_dir,
    model_cfg=dict(snakemake.params.model),
    train_cfg=dict(snakemake.params.train),
    loss=snakemake.wildcards.loss,
    inference=dict(snakemake.params.inference),
    name=f"{snakemake.wildcards.variant}-{snakemake.wildcards.loss}",
)
log.info("final epoch: %s", history.iloc[-1].to_dict())
