# Apply every trained model to a folder of new images (config predict.input_dir): per
# image a binary mask, instance labels and an overlay, in results/predictions/{variant}-{loss}/.
# The images are listed when the workflow is parsed, so a bad folder (empty, clashing
# names) stops the run before any job starts. See docs/predict.md.
from protoseg.predict import image_files as predict_image_files
from protoseg.predict import output_paths as predict_output_paths
from protoseg.predict import plan_inputs as predict_plan_inputs

PREDICT = config["predict"]

# Nothing unless the condition below holds (no predict.input_dir).
stage_targets("predict")

if PREDICT["input_dir"]:

    PREDICT_IMAGES = [str(path) for path in predict_image_files([PREDICT["input_dir"]])]
    # Focal-context models take stacks: a per-plane file whose neighbouring planes are not
    # among the images stops the run here, naming the state and plane (names, TIFF headers
    # and containers' metadata only; files data.pattern does not name must be multi-page
    # stacks, checked in the job). A container gives one output per scene and time point.
    PREDICT_CONTEXT = max(
        variant["context_planes"] for variant in config["dataset"]["variants"].values()
    )
    PREDICT_PLAN = predict_plan_inputs(
        [Path(path) for path in PREDICT_IMAGES],
        PREDICT_CONTEXT,
        config["data"],
        f"a model with dataset.variants.*.context_planes {PREDICT_CONTEXT}",
    )
    PREDICT_STEMS = list(dict.fromkeys(item.stem for item in PREDICT_PLAN))
    PREDICT_DIR = f"{RESULTS}/predictions/{{variant}}-{{loss}}"
    PREDICT_SUMMARY = f"{PREDICT_DIR}/predictions.csv"

    # Per image: NAME_binary.tif and NAME_labels.tif, or the folder NAME.ome.zarr
    # (predict.format), and NAME_overlay.png ({variant}-{loss} kept).
    PREDICT_PATHS = [
        predict_output_paths(PREDICT_DIR, stem, PREDICT["format"])
        for stem in PREDICT_STEMS
    ]
    PREDICT_MASKS = [
        directory(str(path)) if kind == "zarr" else str(path)
        for paths in PREDICT_PATHS
        for kind, path in paths.items()
        if kind != "overlay"
    ]
    PREDICT_OVERLAYS = [str(paths["overlay"]) for paths in PREDICT_PATHS]

    rule predict:
        input:
            model=MODEL,
            images=PREDICT_IMAGES,
        output:
            masks=PREDICT_MASKS,
            overlays=[
                report(
                    path,
                    caption="../report/predict.rst",
                    category="Predictions on new images",
                    subcategory="{variant}-{loss}",
                )
                for path in PREDICT_OVERLAYS
            ],
            summary=PREDICT_SUMMARY,
        log:
            log_path("predict", "{variant}-{loss}"),
        benchmark:
            benchmark_path("predict", "{variant}-{loss}")
        # torch, and torch-em for the watershed of a model's instance outputs.
        conda:
            f"{ENVS}/sam.yaml"
        # torch's intra-op threads; Snakemake lowers this to --cores where that is less.
        threads: 2
        resources:
            mem_mb=8000,
            runtime=120,
        params:
            out_dir=lambda wildcards, output: str(Path(output.summary).parent),
            tile=PREDICT["tile"],
            overlap=PREDICT["overlap"],
            # null: the model's own threshold (chosen on validation images in training).
            threshold=PREDICT["threshold"],
            instances=PREDICT["instances"],
            min_distance=PREDICT["min_distance"],
            min_area=PREDICT["min_area"],
            device=PREDICT["device"],
            precision=PREDICT["precision"],
            format=PREDICT["format"],
            # How per-plane files of focal stacks are named (focal-context models).
            data=config["data"],
        script:
            f"{SCRIPTS}/predict.py"

    stage_targets("predict", expand(PREDICT_SUMMARY, variant=VARIANTS, loss=LOSSES))


# `snakemake all_predict`: every model applied to predict.input_dir.
rule all_predict:
    input:
        STAGE_TARGETS["predict"],
    localrule: True
