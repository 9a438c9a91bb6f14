# Each trained model as a bioimage.io package, for ilastik, deepImageJ, QuPath and
# bioimageio.core (docs/export.md). Off in `rule all` unless export.enabled is true;
# `snakemake all_export` writes every package either way. Each package passes bioimage.io's
# own test (offline) before it is put in place.
EXPORT = config["export"]
EXPORT_DIR = f"{RESULTS}/export/{{variant}}-{{loss}}"
# Focal-context variants are left out: their input is a window of planes stacked as
# channels, which no bioimage.io consumer assembles (protoseg export refuses them, saying so).
EXPORTABLE = [
    variant
    for variant, settings in config["dataset"]["variants"].items()
    if not settings.get("context_planes")
]
EXPORT_PACKAGES = expand(EXPORT_DIR, variant=EXPORTABLE, loss=LOSSES)
if EXPORT["enabled"] and len(EXPORTABLE) < len(VARIANTS):
    print(
        "protoseg: export.enabled: no bioimage.io package of the focal-context variant(s) "
        + ", ".join(sorted(set(VARIANTS) - set(EXPORTABLE)))
        + " (a package's input is one image; docs/export.md)",
        file=sys.stderr,
    )


rule export:
    input:
        model=MODEL,
    output:
        package=directory(EXPORT_DIR),
    log:
        log_path("export", "{variant}-{loss}"),
    benchmark:
        benchmark_path("export", "{variant}-{loss}")
    # torch and bioimageio.core (its test and TorchScript converter).
    conda:
        f"{ENVS}/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        authors=EXPORT["authors"],
        license=EXPORT["license"],
        cite=EXPORT["cite"],
        test=EXPORT["test"],
    script:
        f"{SCRIPTS}/export.py"


stage_targets("export", EXPORT_PACKAGES if EXPORT["enabled"] else [])


# `snakemake all_export`: a package of every trained model, whatever export.enabled says.
rule all_export:
    input:
        EXPORT_PACKAGES,
    localrule: True
