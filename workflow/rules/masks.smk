# Step 1: one instance mask per plane of the `masks.modality` images, one job per state
# (the SAM model is loaded once per state, not once per plane), or per batch of
# masks.states_per_job states (large studies). Method: masks.method.
from protoseg.masks import get_method

MASKS = config["masks"]
PLANE_MASK = f"{RESULTS}/masks/planes/{{state}}/z{{z}}.tif"
USES_SAM = get_method(MASKS["method"]).uses_sam


for masks_rule, masks_states in state_jobs("masks", MASKS["states_per_job"]):
    share_rule_settings("masks", masks_rule)

    rule:
        name:
            masks_rule
        input:
            # the catalogue's checks (shapes, completeness) come first
            catalogue=CATALOGUE_CHECKED,
            images=for_job(
                masks_states,
                lambda states: INDEX.files_of(states, [MASKS["modality"]]),
            ),
            method_inputs=for_job(
                masks_states, lambda states: mask_method_inputs(MASKS, states)
            ),
        output:
            # state by state, each in plane order
            job_outputs(PLANE_MASK, masks_states, z=PLANES),
        log:
            log_path("masks", job_name(masks_rule, "masks")),
        benchmark:
            benchmark_path("masks", job_name(masks_rule, "masks"))
        conda:
            f"{ENVS}/sam.yaml" if USES_SAM else f"{ENVS}/io.yaml"
        threads: 4 if USES_SAM else 1
        resources:
            # SAM: vit_h weights alone take 2.5 GB, plus activations and the images.
            mem_mb=16000 if USES_SAM else 4000,
            runtime=(240 if USES_SAM else 30) * len(masks_states or [None]),
        params:
            **batch_params(masks_states),
            # each plane's image: its file, or its address in a container (a batch:
            # a list per state)
            images=state_or_batch(
                masks_states,
                lambda states: state_image_lists(states, [MASKS["modality"]]),
            ),
            masks=MASKS,
            planes=PLANES,
            # a function: Snakemake would fill wildcards into each item of a list, per job
            states=lambda wildcards: STATES,
        script:
            f"{SCRIPTS}/masks.py"


stage_targets("masks", expand(PLANE_MASK, state=STATES, z=PLANES))


# `snakemake all_masks`: one instance mask per plane of every state.
rule all_masks:
    input:
        STAGE_TARGETS["masks"],
    localrule: True
