rule catalogue:
    input:
        images=RECORDS["path"].tolist(),
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


register_targets(CATALOGUE)
