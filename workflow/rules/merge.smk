# Step 2: a state's plane masks -> one state mask (larger cell wins, the study's rule),
# per-z masks (each tracked cell only on its planes, the study's future work), an instance
# table to inspect cells one by one, and a QC overlay of every plane in every modality.
# The mask modality comes first in the overlay, then the others.
STATE_MASK = f"{RESULTS}/masks/states/{{state}}.tif"
PER_Z_MASK = f"{RESULTS}/masks/per_z/{{state}}/z{{z}}.tif"
INSTANCES = f"{RESULTS}/masks/instances/{{state}}.npz"
QC_OVERLAY = f"{RESULTS}/qc/{{state}}.png"
QC_MODALITIES = [config["masks"]["modality"]] + [
    m for m in MODALITIES if m != config["masks"]["modality"]
]


for merge_rule, merge_states in state_jobs("merge", config["merge"]["states_per_job"]):
    share_rule_settings("merge", merge_rule)

    rule:
        name:
            merge_rule
        input:
            planes=job_outputs(PLANE_MASK, merge_states, z=PLANES),
            images=for_job(
                merge_states, lambda states: INDEX.files_of(states, QC_MODALITIES)
            ),
        output:
            state=job_outputs(STATE_MASK, merge_states),
            per_z=job_outputs(PER_Z_MASK, merge_states, z=PLANES),
            instances=job_outputs(INSTANCES, merge_states),
            qc=[
                report(
                    path,
                    caption="../report/qc.rst",
                    category="Masks",
                    subcategory="QC",
                )
                for path in job_outputs(QC_OVERLAY, merge_states)
            ],
        log:
            log_path("merge", job_name(merge_rule, "merge")),
        benchmark:
            benchmark_path("merge", job_name(merge_rule, "merge"))
        conda:
            f"{ENVS}/io.yaml"
        resources:
            # Full-size stacks: 7 planes x 2 modalities of 2048 x 2880 RGB plus masks.
            mem_mb=4000,
            runtime=30 * len(merge_states or [None]),
        params:
            **batch_params(merge_states),
            # modality by modality, each in plane order (files, or planes of a
            # container; a batch: a list per state)
            images=state_or_batch(
                merge_states, lambda states: state_image_lists(states, QC_MODALITIES)
            ),
            merge=config["merge"],
            planes=PLANES,
            modalities=QC_MODALITIES,
        script:
            f"{SCRIPTS}/merge.py"


stage_targets(
    "merge",
    expand(STATE_MASK, state=STATES),
    expand(PER_Z_MASK, state=STATES, z=PLANES),
    expand(INSTANCES, state=STATES),
    expand(QC_OVERLAY, state=STATES),
)


# `snakemake all_merge`: state masks, per-z masks, instance tables and QC overlays.
rule all_merge:
    input:
        STAGE_TARGETS["merge"],
    localrule: True
