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
    params:
        data=config["data"],
        raw_dir=lambda wildcards: RAW_DIR,
        mask_pairs=MASK_PAIRS,
    script:
        f"{SCRIPTS}/catalogue.py"


stage_targets("catalogue", CATALOGUE)


# `snakemake all_catalogue`: every image opened and checked.
rule all_catalogue:
    input:
        STAGE_TARGETS["catalogue"],
    localrule: True
