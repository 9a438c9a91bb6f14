# Step 1: one instance mask per plane of the `masks.modality` images, one job per state
# (the SAM model is loaded once per state, not once per plane). Method: masks.method.
from protoseg.masks import get_method, method_inputs

MASKS = config["masks"]
PLANE_MASK = f"{RESULTS}/masks/planes/{{state}}/z{{z}}.tif"
USES_SAM = get_method(MASKS["method"]).uses_sam


rule masks:
    input:
        catalogue=CATALOGUE,  # the catalogue's checks (shapes, completeness) come first
        images=lambda wildcards: source_files(
            state_images(wildcards.state, MASKS["modality"])
        ),
        # the prompts CSV (sam-prompted) or the state's mask files (import)
        method_inputs=lambda wildcards: method_inputs(
            MASKS,
            wildcards.state,
            PLANES,
            state_images(wildcards.state, MASKS["modality"]),
        ),
    output:
        expand(PLANE_MASK, z=PLANES, allow_missing=True),
    log:
        log_path("masks"),
    benchmark:
        benchmark_path("masks")
    conda:
        f"{ENVS}/sam.yaml" if USES_SAM else f"{ENVS}/io.yaml"
    threads: 4 if USES_SAM else 1
    resources:
        # SAM: vit_h weights alone take 2.5 GB, plus activations and the images.
        mem_mb=16000 if USES_SAM else 4000,
        runtime=240 if USES_SAM else 30,
    params:
        # each plane's image: its file, or its address in a microscope container
        images=lambda wildcards: state_images(wildcards.state, MASKS["modality"]),
        masks=MASKS,
        planes=PLANES,
        states=STATES,
    script:
        f"{SCRIPTS}/masks.py"


stage_targets("masks", expand(PLANE_MASK, state=STATES, z=PLANES))


# `snakemake all_masks`: one instance mask per plane of every state.
rule all_masks:
    input:
        STAGE_TARGETS["masks"],
    localrule: True
