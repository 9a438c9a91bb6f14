from protoseg.masks import method_inputs

CATALOGUE = f"{RESULTS}/catalogue.csv"


def imported_mask_pairs():
    """(image, imported mask) of every plane the masks are made of, with masks.method
    `import`: the catalogue checks each mask against its image before any mask job."""
    masks_cfg = config["masks"]
    if masks_cfg["method"] != "import":
        return []
    pairs = []
    for state in STATES:
        images = state_images(state, masks_cfg["modality"])
        pairs += zip(images, method_inputs(masks_cfg, state, PLANES, images))
    return pairs


MASK_PAIRS = imported_mask_pairs()


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
