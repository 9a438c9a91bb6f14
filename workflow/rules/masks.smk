# Step 1: one instance mask per plane of the `masks.modality` images, one job per state
# (the SAM model is loaded once per state, not once per plane). Method: masks.method.
from protoseg.masks.imported import DEFAULT_TEMPLATE, import_path

MASKS = config["masks"]
MASK_METHOD = MASKS["method"]
USES_SAM = MASK_METHOD in ("sam-auto", "sam-prompted")


def mask_method_inputs(wildcards):
    """Files the method reads besides the images, so that editing them reruns the masks."""
    if MASK_METHOD == "sam-prompted" and (MASKS.get("prompted") or {}).get("prompts"):
        return [MASKS["prompted"]["prompts"]]
    if MASK_METHOD == "import":
        section = MASKS.get("import") or {}
        template = section.get("template") or DEFAULT_TEMPLATE
        return [
            str(import_path(section.get("dir"), template, wildcards.state, z))
            for z in PLANES
        ]
    return []


rule masks:
    input:
        catalogue=CATALOGUE,  # the catalogue's checks (shapes, completeness) come first
        images=lambda wildcards: state_images(wildcards.state, MASKS["modality"]),
        method_inputs=mask_method_inputs,
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
        # vit_h on a 2048 x 2880 plane peaks near 8 GB on the CPU; classical stays small.
        mem_mb=16000 if USES_SAM else 4000,
        runtime=240 if USES_SAM else 30,
    params:
        masks=MASKS,
        planes=PLANES,
        states=STATES,
    script:
        f"{SCRIPTS}/masks.py"


register_targets(expand(PLANE_MASK, state=STATES, z=PLANES))
