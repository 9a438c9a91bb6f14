# Step 3: one dataset per variant (dataset.variants): images resized and scaled, masks
# resized and binarised, split by the catalogue column split.key (never by random image),
# written as memory-mappable shards plus a manifest (protoseg.dataset). A focal-context
# variant's samples hold their neighbouring planes too (docs/focal-context.md).
from protoseg.dataset import preprocessing_from_config

DATASET = config["dataset"]
DATASET_DIR = f"{RESULTS}/datasets/{{variant}}"
DATASET_MANIFEST = f"{DATASET_DIR}/manifest.csv"
# Geometry, scale (or cell diameters), patch and normalisation checked at parse time: a
# zero, negative or absurd scale stops the run naming the key, before any job.
preprocessing_from_config(DATASET)
DATASET_MASK = STATE_MASK if DATASET["mask_source"] == "state" else PER_Z_MASK
DATASET_INFO = f"{DATASET_DIR}/dataset.json"
DATASET_SHARDS = f"{DATASET_DIR}/shards"
# Every mask of the chosen mask_source: the dataset pairs each image with one.
DATASET_MASKS = (
    expand(STATE_MASK, state=STATES)
    if DATASET_MASK == STATE_MASK
    else expand(PER_Z_MASK, state=STATES, z=PLANES)
)


rule dataset:
    input:
        catalogue=CATALOGUE,
        masks=DATASET_MASKS,
    output:
        manifest=DATASET_MANIFEST,
        info=DATASET_INFO,
        shards=directory(DATASET_SHARDS),
    log:
        log_path("dataset", "{variant}"),
    benchmark:
        benchmark_path("dataset", "{variant}")
    conda:
        f"{ENVS}/io.yaml"
    resources:
        # One shard in memory (shard_size x 3 x 512 x 512 float32 = 200 MB at 64) plus one
        # full-size image; see docs/benchmarks/dataset.md.
        mem_mb=2000,
        runtime=60,
    params:
        modalities=lambda wildcards: DATASET["variants"][wildcards.variant][
            "modalities"
        ],
        # Focal context: each sample also holds this many neighbouring planes on each side.
        context_planes=lambda wildcards: DATASET["variants"][wildcards.variant][
            "context_planes"
        ],
        split=config["split"],
        dataset=DATASET,
        # A network with instance outputs trains on instance labels: stored in any geometry.
        instances=config["model"]["instances"] != "none",
        # filled in per image by protoseg.dataset: {state} and {z}
        mask_template=lambda wildcards: DATASET_MASK,
    script:
        f"{SCRIPTS}/dataset.py"


stage_targets("dataset", expand(DATASET_MANIFEST, variant=VARIANTS))


# `snakemake all_dataset`: one data set per variant.
rule all_dataset:
    input:
        STAGE_TARGETS["dataset"],
    localrule: True
