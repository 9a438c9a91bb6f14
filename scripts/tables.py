"""Snakemake script: every model's per-image metrics -> the study-layout tables per variant."""

from protoseg import tables
from protoseg.io import write_csv
from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])
params, output = snakemake.params, snakemake.output

per_image = {
    tuple(model): tables.read_per_image(path)
    for model, path in zip(params.models, snakemake.input.per_image, strict=True)
}
summary = tables.summary(per_image, params.planes)
write_csv(output.summary, summary)
for index, variant in enumerate(params.variants):
    result = tables.variant_tables(
        summary, variant, params.losses, params.planes, params.modalities[variant]
    )
    tables.write_variant_tables(
        variant,
        result,
        csv=output.csv[index],
        instances_csv=output.instances[index],
        md=output.md[index],
        tex=output.tex[index],
    )
    compared = (
        "beside the study's" if result["study"] is not None else "(no study table to compare)"
    )
    log.info("variant %s: tables written %s", variant, compared)
