"""Snakemake script: the synthetic demo set (raw images, truth masks, montage)."""

from protoseg.demo import generate_demo
from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])

generate_demo(
    snakemake.params.demo,
    snakemake.params.planes,
    snakemake.params.out_dir,
    channels=snakemake.params.channels,
    state_format=snakemake.params.state_format,
)
log.info("demo set written to %s", snakemake.params.out_dir)
