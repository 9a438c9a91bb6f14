"""Snakemake script: every model's per-image metrics -> the study-layout tables per variant."""

from protoseg import tables
from protoseg.io import write_csv, write_text
from protoseg.logs import log_to_file

snakemake = globals()["snakemake"]  # injected by Snakemake; named here for linters
log = log_to_file(snakemake.log[0])
params = snakemake.params

per_image = {
    tuple(model): tables.read_per_image(path)
    for model, path in zip(params.models, snakemake.input.per_image, strict=True)
}
summary = tables.summary(per_image, params.planes)
write_csv(snakemake.output.summary, summary)
for index, variant in enumerate(params.variants):
    result = tables.variant_tables(
        summary, variant, params.losses, params.planes, params.modalities[variant]
    )
    write_csv(snakemake.output.csv[index], tables.flat_csv(result))
    write_csv(snakemake.output.instances[index], tables.flat_instances_csv(result))
    write_text(snakemake.output.md[index], tables.to_markdown(variant, result))
    write_text(snakemake.output.tex[index], tables.to_latex(variant, result))
    log.info(
        "variant %s: table written%s",
        variant,
        "" if result["study"] is None else " beside the study's",
    )
