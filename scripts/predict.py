"""Snakemake script: one trained model + a folder of new images (or one batch of them,
predict.images_per_job) -> labels and overlays, and their summary table."""

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

import torch  # noqa: E402 - after the log is set up

from protoseg.batching import predict_batch  # noqa: E402
from protoseg.io import write_csv  # noqa: E402
from protoseg.predict import predict_files  # noqa: E402
from protoseg.segmenter import Segmenter  # noqa: E402

torch.set_num_threads(max(1, snakemake.threads))
params = snakemake.params
segmenter, _ = Segmenter.from_file(
    snakemake.input.model, "predict", device=params.device, precision=params.precision
)
settings = dict(
    tile=list(params.tile) if params.tile else None,
    overlap=params.overlap,
    threshold=params.threshold,
    instances=params.instances,
    min_distance=params.min_distance,
    min_area=params.min_area,
    tta=params.tta,
    fold_batch_norm=params.fold_batch_norm,
    format=params.format,
    data_cfg=dict(params.data),
)
images = list(snakemake.input.images)
if params.scratch is None:  # every image in this job: predict_files writes the summary
    summary = predict_files(segmenter, images, params.out_dir, **settings)
else:  # one batch: its part of the summary, which the predict rule joins
    summary = predict_batch(segmenter, images, params.out_dir, params.scratch, **settings)
    write_csv(snakemake.output.summary, summary)
log.info(
    "%s: %d images, %d cells in all", snakemake.input.model, len(summary), summary["cells"].sum()
)
