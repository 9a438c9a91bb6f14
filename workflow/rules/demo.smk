# The synthetic demo set (data.source: demo): raw images in the study's naming, the true
# per-state and per-plane masks, a table of every drawn object and a montage to look at.
# Nothing unless the condition below holds (existing images: nothing to generate).
stage_targets("demo")

if config["data"]["source"] == "demo":

    DEMO_DIR = config["demo"]["out_dir"]
    DEMO_MONTAGE = f"{DEMO_DIR}/montage.png"
    # About 35 bytes per pixel and plane (measured: 1.5 GB at 2048 x 2880 x 7 planes).
    DEMO_MEM_MB = 300 + int(
        40e-6 * config["demo"]["height"] * config["demo"]["width"] * len(PLANES)
    )

    rule demo:
        output:
            images=RECORDS["path"].tolist(),
            state_truth=expand(f"{TRUTH_DIR}/states/{{state}}.tif", state=STATES),
            plane_truth=expand(
                f"{TRUTH_DIR}/planes/{{state}}/z{{z}}.tif", state=STATES, z=PLANES
            ),
            cells=f"{TRUTH_DIR}/cells.csv",
            montage=report(
                DEMO_MONTAGE,
                caption="../report/demo.rst",
                category="Data",
            ),
        log:
            log_path("demo", "demo"),
        benchmark:
            benchmark_path("demo", "demo")
        conda:
            f"{ENVS}/io.yaml"
        resources:
            mem_mb=DEMO_MEM_MB,
            runtime=60,
        params:
            demo=config["demo"],
            planes=PLANES,
            # demo.out_dir, taken from an output so it follows the files (no shared-FS lint).
            out_dir=lambda wildcards, output: str(Path(output.montage).parent),
            channels=config["data"]["channels"],
            # A function, so Snakemake leaves the format's braces alone.
            state_format=lambda wildcards: config["data"]["state_format"],
        script:
            f"{SCRIPTS}/demo.py"

    stage_targets("demo", DEMO_MONTAGE)


# `snakemake all_demo`: the synthetic set and its montage.
rule all_demo:
    input:
        STAGE_TARGETS["demo"],
    localrule: True
