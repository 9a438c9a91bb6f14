"""Snakemake script: one trained model + a folder of new images -> labels and overlays."""

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

import torch  # noqa: E402 - after the log is set up

from protoseg.predict import predict_model_files  # noqa: E402

torch.set_num_threads(max(1, snakemake.threads))
params = snakemake.params
summary = predict_model_files(
    snakemake.input.model,
    list(snakemake.input.images),
    params.out_dir,
    data_cfg=dict(params.data),
    tile=list(params.tile) if params.tile else None,
    overlap=params.overlap,
    threshold=params.threshold,
    instances=params.instances,
    min_distance=params.min_distance,
    min_area=params.min_area,
    device=params.device,
    precision=params.precision,
    format=params.format,
)
log.info(
    "%s: %d images, %d cells in all", snakemake.input.model, len(summary), summary["cells"].sum()
)
