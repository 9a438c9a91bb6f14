# Mask quality against truth masks, where there are any (quality.truth_dir; the demo
# generator writes its own): every plane mask, per-z mask and state mask of every state
# scored (SA50, mSA, precision, recall, pixel IoU) -> one CSV row per image, a summary table.
if TRUTH_DIR:
    TRUTH_STATE = f"{TRUTH_DIR}/states/{{state}}.tif"
    TRUTH_PLANE = f"{TRUTH_DIR}/planes/{{state}}/z{{z}}.tif"
    COMPARE_CLASSICAL = (config.get("quality") or {}).get(
        "compare_classical", False
    ) and (config["masks"]["method"] != "classical")

    def quality_pairs():
        """What is scored against what: one dict per (state, kind, plane)."""
        method = config["masks"]["method"]
        pairs = []
        for state in STATES:
            for z in PLANES:
                truth = TRUTH_PLANE.format(state=state, z=z)
                pairs.append(dict(state=state, method=method, kind="plane", z=z,
                                  prediction=PLANE_MASK.format(state=state, z=z), truth=truth))
                pairs.append(dict(state=state, method=method, kind="per_z", z=z,
                                  prediction=PER_Z_MASK.format(state=state, z=z), truth=truth))
                if COMPARE_CLASSICAL:
                    image = raw_image(state, config["masks"]["modality"], z)
                    pairs.append(dict(state=state, method="classical", kind="plane", z=z,
                                      image=image, truth=truth))
            pairs.append(dict(state=state, method=method, kind="state", z=None,
                              prediction=STATE_MASK.format(state=state),
                              truth=TRUTH_STATE.format(state=state)))
        return pairs

    QUALITY_PAIRS = quality_pairs()

    rule quality:
        input:
            sorted(
                {p[key] for p in QUALITY_PAIRS for key in ("prediction", "truth", "image") if key in p}
            ),
        output:
            csv=QUALITY_CSV,
            md=report(
                QUALITY_MD,
                caption="../report/quality.rst",
                category="Masks",
                subcategory="Quality",
            ),
        params:
            pairs=QUALITY_PAIRS,
            classical=config["masks"].get("classical") or {},
        log:
            log_path("quality", "quality"),
        benchmark:
            benchmark_path("quality", "quality")
        conda:
            # elf's evaluation functions (micro-sam's mSA / SA50) come with the SAM stack.
            f"{ENVS}/sam.yaml"
        script:
            f"{SCRIPTS}/quality.py"

    register_targets(QUALITY_CSV, QUALITY_MD)
