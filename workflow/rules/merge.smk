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


rule merge:
    input:
        planes=expand(PLANE_MASK, z=PLANES, allow_missing=True),
        images=lambda wildcards: source_files(
            path for m in QC_MODALITIES for path in state_images(wildcards.state, m)
        ),
    output:
        state=STATE_MASK,
        per_z=expand(PER_Z_MASK, z=PLANES, allow_missing=True),
        instances=INSTANCES,
        qc=report(
            QC_OVERLAY,
            caption="../report/qc.rst",
            category="Masks",
            subcategory="QC",
        ),
    log:
        log_path("merge"),
    benchmark:
        benchmark_path("merge")
    conda:
        f"{ENVS}/io.yaml"
    resources:
        # Full-size stacks: 7 planes x 2 modalities of 2048 x 2880 RGB plus masks.
        mem_mb=4000,
        runtime=30,
    params:
        # modality by modality, each in plane order (files, or planes of a container)
        images=lambda wildcards: [
            path for m in QC_MODALITIES for path in state_images(wildcards.state, m)
        ],
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
