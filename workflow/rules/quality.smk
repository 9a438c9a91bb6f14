# Mask quality against truth masks, where there are any (quality.truth_dir; the demo
# generator writes its own): every plane mask, per-z mask and state mask of every state
# scored (SA50, mSA, precision, recall, pixel IoU) -> one CSV row per image, a summary table.
QUALITY_CSV = f"{RESULTS}/masks/quality.csv"
QUALITY_MD = f"{RESULTS}/masks/quality.md"

# Nothing unless the condition below holds (no truth masks to score against).
stage_targets("quality")

if TRUTH_DIR:
    from protoseg.quality import build_pairs

    QUALITY_METHOD = config["masks"]["method"]
    COMPARE_CLASSICAL = (
        QUALITY_METHOD != "classical" and config["quality"]["compare_classical"]
    )
    QUALITY_PAIRS = build_pairs(
        STATES,
        PLANES,
        method=QUALITY_METHOD,
        plane_mask=PLANE_MASK,
        per_z_mask=PER_Z_MASK,
        state_mask=STATE_MASK,
        truth_plane=f"{TRUTH_DIR}/planes/{{state}}/z{{z}}.tif",
        truth_state=f"{TRUTH_DIR}/states/{{state}}.tif",
        classical_images=(
            {
                (state, z): raw_image(state, config["masks"]["modality"], z)
                for state in STATES
                for z in PLANES
            }
            if COMPARE_CLASSICAL
            else None
        ),
    )

    rule quality:
        input:
            source_files(
                pair[key]
                for pair in QUALITY_PAIRS
                for key in ("prediction", "truth", "image")
                if key in pair
            ),
        output:
            csv=QUALITY_CSV,
            md=report(
                QUALITY_MD,
                caption="../report/quality.rst",
                category="Masks",
                subcategory="Quality",
            ),
        log:
            log_path("quality", "quality"),
        benchmark:
            benchmark_path("quality", "quality")
        conda:
            # elf's evaluation functions (micro-sam's mSA / SA50) come with the SAM stack.
            f"{ENVS}/sam.yaml"
        params:
            pairs=QUALITY_PAIRS,
            classical=config["masks"]["classical"],
        script:
            f"{SCRIPTS}/quality.py"

    stage_targets("quality", QUALITY_CSV, QUALITY_MD)


# `snakemake all_quality`: masks scored against the truth masks, where there are any.
rule all_quality:
    input:
        STAGE_TARGETS["quality"],
    localrule: True
