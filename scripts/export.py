"""Snakemake script: a trained model -> its bioimage.io package, tested offline."""

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

import torch  # noqa: E402 - after the log is set up

from protoseg.export import export_model  # noqa: E402

torch.set_num_threads(max(1, snakemake.threads))
params = snakemake.params
folder = export_model(
    snakemake.input.model,
    snakemake.output.package,
    authors=list(params.authors),
    cite=[(entry["text"], entry["reference"]) for entry in params.cite],
    license=params.license,
    test=params.test,
)
log.info("%s: bioimage.io package in %s", snakemake.input.model, folder)
