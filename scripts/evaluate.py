"""Snakemake script: a trained model + its dataset's test split -> per-image metrics."""

from pathlib import Path

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

import torch  # noqa: E402 - after the log is set up

from protoseg.evaluate import evaluate_model, pooled_scores  # noqa: E402
from protoseg.io import save_npz, write_csv  # noqa: E402

torch.set_num_threads(max(1, snakemake.threads))
params = snakemake.params
per_image, overlay = evaluate_model(
    snakemake.input.model,
    Path(snakemake.input.manifest).parent,
    threshold=params.threshold,
    resolution=params.resolution,
    instances=params.instances,
    tile=params.tile,
    overlap=params.overlap,
    device=params.device,
    batch_size=params.batch_size,
    precision=params.precision,
    overlay_state=params.overlay_state,
    tta=params.tta,
    fold_batch_norm=params.fold_batch_norm,
)
write_csv(snakemake.output.per_image, per_image)
save_npz(snakemake.output.overlay, **overlay)
scores = pooled_scores(per_image)
log.info(
    "%d test images, pixels pooled: accuracy %.3f, F1 %.3f, IoU %.3f",
    len(per_image),
    *scores.values(),
)
