# Figures: scores versus focal plane of every model, focal-context models beside
# single-plane ones, and prediction overlays per plane of one test state.
FIGURES_DIR = f"{RESULTS}/figures"
METRICS_VS_Z = f"{FIGURES_DIR}/metrics_vs_z.png"
PREDICTION_OVERLAYS = [
    f"{FIGURES_DIR}/predictions_{variant}-{loss}.png" for variant, loss in MODELS
]
# Focal-context models beside single-plane ones (docs/focal-context.md): only when a
# variant has context_planes > 0.
VARIANT_CONTEXT = {
    name: variant["context_planes"]
    for name, variant in config["dataset"]["variants"].items()
}
CONTEXT_VS_Z = (
    [f"{FIGURES_DIR}/context_vs_z.png"] if any(VARIANT_CONTEXT.values()) else []
)


rule figures:
    input:
        summary=TABLES_SUMMARY,
        overlays=expand(METRICS_OVERLAY, variant=VARIANTS, loss=LOSSES),
    output:
        metrics_vs_z=report(
            METRICS_VS_Z,
            caption="../report/metrics_vs_z.rst",
            category="Results",
            subcategory="Figures",
        ),
        overlays=[
            report(
                path,
                caption="../report/predictions.rst",
                category="Results",
                subcategory="Prediction overlays",
                labels={"model": f"{variant}-{loss}"},
            )
            for path, (variant, loss) in zip(PREDICTION_OVERLAYS, MODELS)
        ],
        context=[
            report(
                path,
                caption="../report/context_vs_z.rst",
                category="Results",
                subcategory="Figures",
            )
            for path in CONTEXT_VS_Z
        ],
    log:
        log_path("figures", "figures"),
    benchmark:
        benchmark_path("figures", "figures")
    conda:
        f"{ENVS}/io.yaml"
    params:
        models=MODELS,
        variants=VARIANTS,
        losses=LOSSES,
        planes=PLANES,
        modalities=VARIANT_MODALITIES,
        context=VARIANT_CONTEXT,
    script:
        f"{SCRIPTS}/figures.py"


stage_targets("figures", METRICS_VS_Z, PREDICTION_OVERLAYS, CONTEXT_VS_Z)


# `snakemake all_figures`: scores versus z and the prediction overlays.
rule all_figures:
    input:
        STAGE_TARGETS["figures"],
    localrule: True
