"""Snakemake script: the summaries of a model's predict batches -> predictions.csv."""

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

from protoseg.batching import gather_summaries  # noqa: E402 - after the log is set up

summary = gather_summaries(
    list(snakemake.input), list(snakemake.params.images), snakemake.output[0]
)
log.info("%s: %d rows from %d batches", snakemake.output[0], len(summary), len(snakemake.input))
