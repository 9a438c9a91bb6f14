"""Snakemake script: one trained model + a folder of new images (or one batch of them,
predict.images_per_job) -> labels and overlays, and their summary table."""

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

import torch  # noqa: E402 - after the log is set up

from protoseg.batching import predict_batch  # noqa: E402
from protoseg.device import resolve_device, resolve_precision  # noqa: E402
from protoseg.io import write_csv  # noqa: E402
from protoseg.predict import load_prediction_model, predict_files  # noqa: E402

torch.set_num_threads(max(1, snakemake.threads))
params = snakemake.params
device = resolve_device(params.device, key="predict.device")
precision = resolve_precision(params.precision, device, key="predict.precision")
model = load_prediction_model(snakemake.input.model, device=device)
settings = dict(
    tile=tuple(params.tile) if params.tile else None,
    overlap=params.overlap,
    threshold=params.threshold,
    instances=params.instances,
    min_distance=params.min_distance,
    min_area=params.min_area,
    device=device,
    precision=precision,
    format=params.format,
    data_cfg=dict(params.data),
)
images = list(snakemake.input.images)
if params.scratch is None:  # every image in this job: predict_files writes the summary
    summary = predict_files(model, images, params.out_dir, **settings)
else:  # one batch: its part of the summary, which the predict rule joins
    summary = predict_batch(model, images, params.out_dir, params.scratch, **settings)
    write_csv(snakemake.output.summary, summary)
log.info(
    "%s: %d images, %d cells in all", snakemake.input.model, len(summary), summary["cells"].sum()
)
