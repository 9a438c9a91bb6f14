"""Snakemake script: raw images -> results/catalogue.csv."""

from protoseg.catalogue import build_catalogue
from protoseg.io import write_csv
from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

params = snakemake.params
catalogue = build_catalogue(
    snakemake.input.images,
    params.raw_dir,
    params.data,
    mask_pairs=params.mask_pairs,
    workers=snakemake.threads,
    cache=params.cache,
)
write_csv(snakemake.output[0], catalogue)
log.info("catalogued %d images of %d states", len(catalogue), catalogue["state"].nunique())
