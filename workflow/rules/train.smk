# Step 4: one U-Net per dataset variant and loss (train.losses). Checkpoints are written
# every epoch under MODEL_DIR/checkpoints and are not outputs, so Snakemake keeps them when
# a job fails: rerunning the job resumes from the newest one (protoseg.train).
from protoseg.config_checks import check_threshold_setting

MODEL_DIR = f"{RESULTS}/models/{{variant}}-{{loss}}"
MODEL = f"{MODEL_DIR}/model.pt"
# GPUs a training job takes (the rule's `gpu` resource): none when train.device is cpu or mps.
TRAIN_GPUS = 0 if config["train"]["device"] in ("cpu", "mps") else 1

# train.threshold "validation" without a validation split stops the run here, not in a job.
# (Watershed settings out of range stop it in protoseg.config_checks.)
check_threshold_setting(
    config["train"]["threshold"], has_validation=bool(get_split_states("validation"))
)


rule train:
    input:
        manifest=DATASET_MANIFEST,
        info=DATASET_INFO,
        shards=DATASET_SHARDS,
    output:
        model=MODEL,
        history=report(
            f"{MODEL_DIR}/history.csv",
            caption="../report/training.rst",
            category="Training",
            subcategory="{variant}-{loss}",
            labels={"model": "{variant}-{loss}", "figure": "history"},
        ),
        curve=report(
            f"{MODEL_DIR}/curve.png",
            caption="../report/training.rst",
            category="Training",
            subcategory="{variant}-{loss}",
            labels={"model": "{variant}-{loss}", "figure": "loss curve"},
        ),
    log:
        log_path("train", "{variant}-{loss}"),
    benchmark:
        benchmark_path("train", "{variant}-{loss}")
    # torch, and torch-em for the instance targets and losses of model.instances.
    conda:
        f"{ENVS}/sam.yaml"
    # torch's intra-op threads; Snakemake lowers this to --cores where that is less.
    threads: 4
    resources:
        # Demo: < 1 GB. The study's 512 x 512, batch 16, depth-4 U-Net: about 6 GB on a
        # CPU node (activations); on a GPU the same in GPU memory with AMP.
        mem_mb=8000,
        runtime=240,
        # One GPU per training job unless train.device keeps it off GPUs: with
        # `--resources gpu=N` at most N train jobs run at once, each on a GPU of its own
        # (protoseg.device.claim_gpu); without it the resource limits nothing.
        gpu=TRAIN_GPUS,
    params:
        model=config["model"],
        train=config["train"],
        # Validation in training sees images through evaluation's sliding window.
        inference={
            "tile": config["evaluate"]["tile"],
            "overlap": config["evaluate"]["overlap"],
            # Watershed settings are chosen at the resolution evaluation scores at.
            "resolution": config["evaluate"]["resolution"],
            # Threshold, filter and watershed are chosen on the outputs evaluation scores.
            "tta": config["evaluate"]["tta"],
            # Validation runs the network as evaluation does.
            "fold_batch_norm": config["evaluate"]["fold_batch_norm"],
        },
    script:
        f"{SCRIPTS}/train.py"


stage_targets("train", expand(MODEL, variant=VARIANTS, loss=LOSSES))


# `snakemake all_train`: one model per variant and loss.
rule all_train:
    input:
        STAGE_TARGETS["train"],
    localrule: True
