"""Snakemake script: the WARNING lines of every job log -> results/warnings.{csv,md}."""

from protoseg.io import write_csv, write_text
from protoseg.logs import collect_warnings, log_to_file, warnings_markdown

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

table = collect_warnings(snakemake.params.log_dir, exclude=tuple(snakemake.params.exclude))
write_csv(snakemake.output.csv, table)
write_text(snakemake.output.md, warnings_markdown(table))
log.info("%d warnings in %s", len(table), snakemake.params.log_dir)
