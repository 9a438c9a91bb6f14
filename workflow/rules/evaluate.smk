# Step 5: each trained model scored on its dataset's test split, image by image.
# The kept predictions of one test state feed the overlay figures (tables.smk).
METRICS_DIR = f"{RESULTS}/metrics/{{variant}}-{{loss}}"
METRICS_PER_IMAGE = f"{METRICS_DIR}/per_image.csv"
METRICS_OVERLAY = f"{METRICS_DIR}/overlay.npz"


rule evaluate:
    input:
        model=MODEL,
        manifest=DATASET_MANIFEST,
        info=DATASET_INFO,
        shards=DATASET_SHARDS,
    output:
        per_image=METRICS_PER_IMAGE,
        overlay=METRICS_OVERLAY,
    log:
        log_path("evaluate", "{variant}-{loss}"),
    benchmark:
        benchmark_path("evaluate", "{variant}-{loss}")
    # torch for the model, elf (micro-sam's evaluation) for the instance scores.
    conda:
        f"{ENVS}/sam.yaml"
    # torch's intra-op threads; Snakemake lowers this to --cores where that is less.
    threads: 2
    resources:
        # One shard of test images (shard_size x 3 x 512 x 512 float32 = 200 MB at 64) and
        # the model; the study's size needs about 2 GB.
        mem_mb=4000,
        runtime=60,
    params:
        # null: the model's own threshold (chosen on validation images in training).
        threshold=config["evaluate"]["threshold"],
        resolution=config["evaluate"]["resolution"],
        overlay_state=config["evaluate"]["overlay_state"],
        device=config["evaluate"]["device"],
        precision=config["evaluate"]["precision"],
        batch_size=config["evaluate"]["batch_size"],
        tile=config["evaluate"]["tile"],
        overlap=config["evaluate"]["overlap"],
        instances=config["evaluate"]["instances"],
        tta=config["evaluate"]["tta"],
        fold_batch_norm=config["evaluate"]["fold_batch_norm"],
    script:
        f"{SCRIPTS}/evaluate.py"


stage_targets(
    "evaluate",
    expand(METRICS_PER_IMAGE, variant=VARIANTS, loss=LOSSES),
    expand(METRICS_OVERLAY, variant=VARIANTS, loss=LOSSES),
)


# `snakemake all_evaluate`: every model scored image by image on its test split.
rule all_evaluate:
    input:
        STAGE_TARGETS["evaluate"],
    localrule: True
