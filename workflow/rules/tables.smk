# Results: the study's Tables 1-2 layout per dataset variant, beside the study's numbers.
# Every model, in the order of expand(..., variant=VARIANTS, loss=LOSSES).
MODELS = [(variant, loss) for variant in VARIANTS for loss in LOSSES]
VARIANT_MODALITIES = {
    name: list(variant["modalities"])
    for name, variant in config["dataset"]["variants"].items()
}
TABLES_DIR = f"{RESULTS}/tables"
TABLES_SUMMARY = f"{TABLES_DIR}/summary.csv"


rule tables:
    input:
        per_image=expand(METRICS_PER_IMAGE, variant=VARIANTS, loss=LOSSES),
    output:
        summary=TABLES_SUMMARY,
        csv=[
            report(
                f"{TABLES_DIR}/{variant}.csv",
                caption="../report/tables.rst",
                category="Results",
                subcategory="Tables",
                labels={"variant": variant, "table": "pixel scores"},
            )
            for variant in VARIANTS
        ],
        instances=[
            report(
                f"{TABLES_DIR}/{variant}_instances.csv",
                caption="../report/tables.rst",
                category="Results",
                subcategory="Tables",
                labels={"variant": variant, "table": "instance scores"},
            )
            for variant in VARIANTS
        ],
        md=[f"{TABLES_DIR}/{variant}.md" for variant in VARIANTS],
        tex=[f"{TABLES_DIR}/{variant}.tex" for variant in VARIANTS],
    log:
        log_path("tables", "tables"),
    benchmark:
        benchmark_path("tables", "tables")
    conda:
        f"{ENVS}/io.yaml"
    params:
        models=MODELS,
        variants=VARIANTS,
        losses=LOSSES,
        planes=PLANES,
        modalities=VARIANT_MODALITIES,
    script:
        f"{SCRIPTS}/tables.py"


stage_targets(
    "tables",
    TABLES_SUMMARY,
    [
        f"{TABLES_DIR}/{variant}.{suffix}"
        for variant in VARIANTS
        for suffix in ("csv", "md", "tex")
    ],
    [f"{TABLES_DIR}/{variant}_instances.csv" for variant in VARIANTS],
)


# `snakemake all_tables`: the per-z tables of every variant.
rule all_tables:
    input:
        STAGE_TARGETS["tables"],
    localrule: True
