# Apply every trained model to a folder of new images (config predict.input_dir): per
# image a binary mask, instance labels and an overlay, in results/predictions/{variant}-{loss}/.
# The images are listed when the workflow is parsed, so a bad folder (empty, clashing
# names) stops the run before any job starts. See docs/predict.md.
from protoseg.predict import image_files as predict_image_files
from protoseg.predict import output_paths as predict_output_paths
from protoseg.predict import plan_inputs as predict_plan_inputs
from protoseg.batching import plan_batches

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
    PREDICT_DIR = f"{RESULTS}/predictions/{{variant}}-{{loss}}"
    PREDICT_SUMMARY = f"{PREDICT_DIR}/predictions.csv"

    # One job per model (predict.images_per_job null), or one per batch of that many
    # images, each writing its own images' outputs and a part of the summary, which the
    # `predict` rule then joins (docs/large-studies.md).
    if PREDICT["images_per_job"] is None:
        PREDICT_JOBS = [("predict", PREDICT_IMAGES, PREDICT_SUMMARY)]
    else:
        PREDICT_BATCHES = plan_batches(PREDICT_PLAN, PREDICT["images_per_job"])
        PREDICT_JOBS = [
            (f"predict_batch{n}", batch, f"{PREDICT_DIR}/batches/{n}.csv")
            for n, batch in enumerate(PREDICT_BATCHES)
        ]

    for predict_rule, predict_files_of_job, predict_table in PREDICT_JOBS:
        share_rule_settings("predict", predict_rule)
        predict_chosen = set(predict_files_of_job)
        # Per image: NAME_binary.tif and NAME_labels.tif, or the folder NAME.ome.zarr
        # (predict.format), and NAME_overlay.png ({variant}-{loss} kept).
        predict_paths = [
            predict_output_paths(PREDICT_DIR, stem, PREDICT["format"])
            for stem in dict.fromkeys(
                item.stem for item in PREDICT_PLAN if str(item.path) in predict_chosen
            )
        ]
        predict_masks = [
            directory(str(path)) if kind == "zarr" else str(path)
            for per_image in predict_paths
            for kind, path in per_image.items()
            if kind != "overlay"
        ]
        predict_overlays = [str(per_image["overlay"]) for per_image in predict_paths]

        rule:
            name:
                predict_rule
            input:
                model=MODEL,
                images=predict_files_of_job,
            output:
                masks=predict_masks,
                overlays=[
                    report(
                        path,
                        caption="../report/predict.rst",
                        category="Predictions on new images",
                        subcategory="{variant}-{loss}",
                    )
                    for path in predict_overlays
                ],
                summary=predict_table,
            log:
                log_path(
                    "predict", job_name(predict_rule, "predict", "{variant}-{loss}")
                ),
            benchmark:
                benchmark_path(
                    "predict", job_name(predict_rule, "predict", "{variant}-{loss}")
                )
            # torch, and torch-em for the watershed of a model's instance outputs.
            conda:
                f"{ENVS}/sam.yaml"
            # torch's intra-op threads; Snakemake lowers this to --cores where that is less.
            threads: 2
            resources:
                mem_mb=8000,
                runtime=120,
            params:
                out_dir=lambda wildcards: expand(PREDICT_DIR, **wildcards)[0],
                # batches: predicted in a scratch folder, then moved to out_dir
                scratch=lambda wildcards, batch_rule=predict_rule: (
                    None
                    if batch_rule == "predict"
                    else expand(
                        f"{PREDICT_DIR}/batches/{batch_rule}.tmp", **wildcards
                    )[0]
                ),
                tile=PREDICT["tile"],
                overlap=PREDICT["overlap"],
                # null: the model's own threshold (chosen on validation images in training).
                threshold=PREDICT["threshold"],
                instances=PREDICT["instances"],
                min_distance=PREDICT["min_distance"],
                min_area=PREDICT["min_area"],
                tta=PREDICT["tta"],
                fold_batch_norm=PREDICT["fold_batch_norm"],
                device=PREDICT["device"],
                precision=PREDICT["precision"],
                format=PREDICT["format"],
                # How per-plane files of focal stacks are named (focal-context models).
                data=config["data"],
            script:
                f"{SCRIPTS}/predict.py"

    if PREDICT["images_per_job"] is not None:

        # The batches' summaries as one table, rows in the order of the images.
        rule predict:
            input:
                [table for _, _, table in PREDICT_JOBS],
            output:
                PREDICT_SUMMARY,
            log:
                log_path("predict", "{variant}-{loss}"),
            benchmark:
                benchmark_path("predict", "{variant}-{loss}")
            localrule: True
            conda:
                f"{ENVS}/io.yaml"
            params:
                images=PREDICT_IMAGES,
            script:
                f"{SCRIPTS}/predict_summary.py"

    stage_targets("predict", expand(PREDICT_SUMMARY, variant=VARIANTS, loss=LOSSES))


# `snakemake all_predict`: every model applied to predict.input_dir.
rule all_predict:
    input:
        STAGE_TARGETS["predict"],
    localrule: True
