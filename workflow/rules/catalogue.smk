CATALOGUE = f"{RESULTS}/catalogue.csv"


rule catalogue:
    input:
        images=source_files(RECORDS["path"]),
    output:
        CATALOGUE,
    log:
        log_path("catalogue", "catalogue"),
    benchmark:
        benchmark_path("catalogue", "catalogue")
    conda:
        f"{ENVS}/io.yaml"
    params:
        data=config["data"],
        raw_dir=lambda wildcards: RAW_DIR,
    script:
        f"{SCRIPTS}/catalogue.py"


stage_targets("catalogue", CATALOGUE)


# `snakemake all_catalogue`: every image opened and checked.
rule all_catalogue:
    input:
        STAGE_TARGETS["catalogue"],
    localrule: True
