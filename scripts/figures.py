"""Snakemake script: result summary and kept predictions -> metric-vs-z plots and overlays."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from protoseg import figures
from protoseg.io import save_figure
from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])
params = snakemake.params

summary = pd.read_csv(snakemake.input.summary)
figure = figures.metrics_vs_z(
    summary, params.planes, params.variants, params.losses, params.modalities
)
save_figure(snakemake.output.metrics_vs_z, figure)
plt.close(figure)

for target in snakemake.output.context:  # only when a variant has a focal context
    figure = figures.context_vs_z(
        summary, params.planes, params.variants, params.losses, params.modalities, params.context
    )
    save_figure(target, figure)
    plt.close(figure)

for (variant, loss), source, target in zip(
    params.models, snakemake.input.overlays, snakemake.output.overlays, strict=True
):
    with np.load(source) as stored:
        overlay = {key: stored[key] for key in stored.files}
    title = f"model {variant}-{loss}: test state {overlay['state']}"
    figure = figures.prediction_overlays(overlay, float(overlay["threshold"]), title)
    save_figure(target, figure)
    plt.close(figure)
    log.info("overlay of %s written to %s", title, target)
