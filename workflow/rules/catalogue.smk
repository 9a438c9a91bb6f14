from protoseg.masks.imported import mask_pairs

CATALOGUE = f"{RESULTS}/catalogue.csv"
# (image, imported mask) of every plane masks are made of, with masks.method `import`: the
# catalogue checks each mask against its image, before any mask job.
MASK_PAIRS = [
    pair
    for state in STATES
    for pair in mask_pairs(
        config["masks"], state, PLANES, state_images(state, config["masks"]["modality"])
    )
]


rule catalogue:
    input:
        images=source_files(RECORDS["path"]),
        masks=[mask for _, mask in MASK_PAIRS],
    output:
        CATALOGUE,
    log:
        log_path("catalogue", "catalogue"),
    benchmark:
        benchmark_path("catalogue", "catalogue")
    conda:
        f"{ENVS}/io.yaml"
    # Files are opened in this many processes (Snakemake lowers it to --cores).
    threads: 4
    params:
        data=config["data"],
        raw_dir=lambda wildcards: RAW_DIR,
        mask_pairs=MASK_PAIRS,
        # Size and mtime of every file described, with its description: a rerun opens
        # only the files that changed (beside Snakemake's own records, not in results/,
        # which a failed catalogue leaves empty).
        cache=".snakemake/protoseg/catalogue-cache.csv",
    script:
        f"{SCRIPTS}/catalogue.py"


# What per-state jobs wait for instead of the catalogue itself: Snakemake checks a
# dependency against its producer's whole input list, once per consumer, and the
# catalogue's input is every raw file (a job per state x every image grew with the square
# of the study; docs/large-studies.md). Remade whenever the catalogue is.
CATALOGUE_CHECKED = f"{RESULTS}/catalogue.checked"


rule catalogue_checked:
    input:
        CATALOGUE,
    output:
        CATALOGUE_CHECKED,
    log:
        log_path("catalogue", "checked"),
    benchmark:
        benchmark_path("catalogue", "checked")
    localrule: True
    conda:
        f"{ENVS}/io.yaml"
    shell:
        "touch {output} 2> {log}"


stage_targets("catalogue", CATALOGUE)


# `snakemake all_catalogue`: every image opened and checked.
rule all_catalogue:
    input:
        STAGE_TARGETS["catalogue"],
    localrule: True
