"""Snakemake script: raw images -> results/catalogue.csv."""

from protoseg.catalogue import build_catalogue
from protoseg.io import write_csv
from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

catalogue = build_catalogue(
    snakemake.input.images,
    snakemake.params.raw_dir,
    snakemake.params.data,
    workers=snakemake.threads,
    cache=snakemake.params.cache,
)
write_csv(snakemake.output[0], catalogue)
log.info("catalogued %d images of %d states", len(catalogue), catalogue["state"].nunique())
