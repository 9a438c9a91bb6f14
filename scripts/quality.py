"""Snakemake script: masks and truth of every state -> results/masks/quality.{csv,md}."""

from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

from protoseg.quality import write_quality  # noqa: E402 - after the log is set up

write_quality(
    list(snakemake.params.pairs),
    snakemake.output.csv,
    snakemake.output.md,
    classical=dict(snakemake.params.classical),
)
