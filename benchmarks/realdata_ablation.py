"""Where the pipeline loses ground on a real set: the choices between the network and the
score, each on several seeds, chosen on the validation split and scored on the test split.

    python benchmarks/realdata_ablation.py CONFIG DATASET_DIR WORK_DIR OUT.json \
        [--seeds 0 1 2] [--trainings shipped ema ...] [--tta] [--threads 2] [--redecide]

``DATASET_DIR``: the data set the pipeline built for CONFIG's first variant (``snakemake
all_dataset``, e.g. ``results/datasets/brightfield``). For every seed and every *training*
row (CONFIG's ``train`` and ``model`` sections with the row's changes; :data:`TRAININGS`),
one model is trained with :func:`protoseg.train.train_model` (the first loss of
``train.losses``) into ``WORK_DIR``, as the train rule would train it; a row that changes
only what is decided after the last epoch (``last_epoch``) is finished again from the
shipped row's checkpoints instead (the same network). The network's outputs on every
validation and test image are computed once for each inference setting (:data:`INFERENCE`:
the shipped window, uniform instead of Gaussian blending, tiles of the training patch's
size, and with ``--tta`` test-time augmentation), and every *decision* row
(:data:`DECISIONS`: the threshold's objective, the object filter, the inference setting) is
chosen on the validation outputs alone and then scored on the test outputs, at each image's
own resolution, by protoseg's own functions (:class:`protoseg.segmenter.Segmenter`,
:mod:`protoseg.objects`, :mod:`protoseg.metrics`). No test score chooses anything. A joint
choice (threshold and filter together) is also scored held out: each validation image with
the choice made on the others (:func:`protoseg.objects.held_out_score`), since the score on
the images a choice was made on favours the larger grid whether or not it transfers. Models
already trained in ``WORK_DIR`` are reused, so a run that was stopped goes on where it was;
``--redecide`` makes their decision rows again.

Writes ``OUT.json``: one record per seed, training row and decision row, with the
validation score that chose it and the test scores (pixel F1 pooled, SA50 pooled and mean
per image, matched F1, objects predicted / true), the seconds each training took, and the
validation pixel F1 of every validated epoch (``validation_curve``).
``docs/realdata.md`` tabulates them (mean and spread over the seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from protoseg import metrics
from protoseg import objects as object_rules
from protoseg.config import complete_section, validate
from protoseg.dataset import open_split
from protoseg.evaluate import TruthReader
from protoseg.segmenter import Segmenter
from protoseg.train import NOT_IN_FINGERPRINT, checkpoint_dir, train_model

# The standalone recipe of ../shared/REALDATA-NOTES.md as far as it differs in training
# (no zoom, no gamma, batch-norm statistics as trained); its decision row: threshold 0.5.
PLAIN_RECIPE = {"augment": {"scale": 0.0, "gamma": 0.0}, "recalibrate_bn": False}
# Training rows: changes to the config's train section (nested augment keys merged).
TRAININGS = {
    "shipped": {},
    "ema": {"ema": 0.999},
    "ema_0.99": {"ema": 0.99},
    "last_epoch": {"keep_best": False},
    "no_bn_recalibration": {"recalibrate_bn": False},
    "no_oversampling": {"foreground_share": 0.0},
    "no_zoom": {"augment": {"scale": 0.0}},
    "no_intensity_jitter": {"augment": {"brightness": 0.0, "contrast": 0.0, "gamma": 0.0}},
    "noise": {"augment": {"noise": 0.1}},
    "plain_recipe": PLAIN_RECIPE,
    # The shipped training (the plain recipe) with no foreground oversampling: whether the
    # two gains measured one at a time add up.
    "plain_recipe_no_oversampling": {**PLAIN_RECIPE, "foreground_share": 0.0},
    # The shipped training with Gaussian noise, which won on test but not on validation
    # when added to the former training.
    "plain_recipe_noise": {**PLAIN_RECIPE, "augment": {**PLAIN_RECIPE["augment"], "noise": 0.1}},
    # The shipped training cut to 32 epochs (the cosine schedule over 32): every seed of it
    # kept an epoch <= 32, and the 36-epoch train job took 20.2 min against an aim of 20.
    "plain_recipe_32_epochs": {**PLAIN_RECIPE, "epochs": 32},
}
# Inference settings the decision rows are made on (Segmenter settings): the shipped
# window, test-time augmentation, tiles averaged without Gaussian weights, and tiles the
# size of the training patch instead of evaluate.tile.
INFERENCE = {
    "": {},
    "tta": {"tta": True},
    "uniform_blending": {"blending": "uniform"},
    "patch_tile": {"tile": "patch"},
}
# Decision rows, from one network's outputs: (name, threshold objective, object filter,
# inference setting of INFERENCE). The filter: None (none), "pixels" (the library's grid:
# areas in pixels, mean probability, solidity) or "relative" (that grid with areas relative
# to each image's typical object, objects.RELATIVE_AREA_GRID, too).
# fmt: off
DECISIONS = (
    ("threshold 0.5", "fixed", None, ""),
    ("threshold for pixel F1 (shipped)", "pixel", None, ""),
    ("threshold for matched F1 (plateau)", "instances", None, ""),
    ("matched-F1 threshold + object filter", "instances", "pixels", ""),
    ("threshold and object filter chosen together", "joint", "pixels", ""),
    ("threshold and object filter together, relative area", "joint", "relative", ""),
    ("threshold and object filter together, uniform blending", "joint", "pixels", "uniform_blending"),
    ("threshold and object filter together, tile = training patch", "joint", "pixels", "patch_tile"),
    ("pixel-F1 threshold + TTA", "pixel", None, "tta"),
    ("matched-F1 threshold + object filter + TTA", "instances", "pixels", "tta"),
    ("threshold and object filter together + TTA", "joint", "pixels", "tta"),
    ("threshold and object filter together + TTA, relative area", "joint", "relative", "tta"),
)
# fmt: on
FILTER_GRIDS = {
    "pixels": object_rules.filter_grid(),
    "relative": object_rules.filter_grid(object_rules.RELATIVE_AREA_GRID),
}


def wanted_decisions(tta: bool) -> list[tuple]:
    """The rows of :data:`DECISIONS` a run makes: those with TTA (8x the outputs) on request."""
    return [d for d in DECISIONS if tta or d[3] != "tta"]


def merged(section: dict, changes: dict) -> dict:
    out = copy.deepcopy(section)
    for key, value in changes.items():
        if isinstance(value, dict):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def train_row(
    config: dict, dataset_dir: Path, model_dir: Path, seed: int, changes: dict, base_dir=None
):
    """The model of one training row and seed (trained unless already there), the seconds
    its training took (None when it was there), and the run it was finished from.

    A row that changes only what is decided after the last epoch (the kept epoch, ...:
    :data:`protoseg.train.NOT_IN_FINGERPRINT`) starts from the checkpoints of ``base_dir``
    (the shipped row of the same seed) and is only finished again, as train_model finishes
    a run whose decisions changed: the same network, not one more training."""
    model_path = model_dir / "model.pt"
    if model_path.exists():
        return model_path, None, None
    finished_from = None
    if (
        base_dir is not None
        and set(changes) <= set(NOT_IN_FINGERPRINT)
        and checkpoint_dir(base_dir).is_dir()
    ):
        shutil.copytree(checkpoint_dir(base_dir), checkpoint_dir(model_dir), dirs_exist_ok=True)
        finished_from = base_dir.name
    train_cfg = merged(config["train"], changes) | {"seed": int(seed)}
    start = time.perf_counter()
    epochs_run = []
    train_model(
        dataset_dir,
        model_dir,
        model_cfg=config["model"],
        train_cfg=train_cfg,
        loss=config["train"]["losses"][0],
        name=f"{model_dir.name}",
        progress=False,
        inference={
            "tile": config["evaluate"]["tile"],
            "overlap": config["evaluate"]["overlap"],
            "resolution": config["evaluate"]["resolution"],
        },
        on_epoch_end=epochs_run.append,
    )
    if epochs_run:  # checkpoints of other settings (older code): trained from scratch
        finished_from = None
    return model_path, time.perf_counter() - start, finished_from


def validation_curve(model_dir: Path) -> list[list[float]] | None:
    """(epoch, validation pixel F1) of every validated epoch of a run, from its
    ``history.csv`` (None when the run left none): how much validation swings."""
    history = model_dir / "history.csv"
    if not history.exists():
        return None
    table = pd.read_csv(history).dropna(subset=["val_f1"])
    return [
        [int(epoch), float(f1)] for epoch, f1 in zip(table["epoch"], table["val_f1"], strict=True)
    ]


def split_outputs(segmenter: Segmenter, dataset_dir: Path, split_name: str, resolution: str):
    """(outputs at the truth's size, binary truth, true cells) of every image of a split."""
    split = open_split(dataset_dir, split_name)
    truth = TruthReader(split, resolution, "labels")
    images = []
    for index in range(len(split)):
        binary, labels = truth(index)
        outputs = segmenter.sample_outputs(split, index)
        if resolution == "original":
            outputs = segmenter.at_size(outputs, binary.shape)
        true_cells = metrics.instances_from_binary(binary) if labels is None else labels
        images.append((outputs, binary, true_cells))
    return images


def split_states(dataset_dir: Path, split_name: str) -> list[str]:
    """The state of every image of a split, in the order of :func:`split_outputs`."""
    return open_split(dataset_dir, split_name).manifest["state"].astype(str).tolist()


def pixel_threshold(images) -> tuple[float, float]:
    counts = metrics.ThresholdCounts()
    for outputs, binary, _ in images:
        counts.add(outputs[0], binary)
    return counts.best()


def choose(
    segmenter: Segmenter, validation, objective: str, filters: str | None, tables=None
) -> dict:
    """Threshold (and object filter of :data:`FILTER_GRIDS` ``filters``) chosen on the
    validation images; ``tables``: their :func:`protoseg.objects.threshold_tables` (for a
    joint choice). A joint choice also says how it transfers: ``held_out``, the validation
    images each scored with the choice made on the others
    (:func:`protoseg.objects.held_out_score`)."""
    if objective == "fixed":
        threshold = 0.5
    elif objective == "pixel":
        threshold = pixel_threshold(validation)[0]
    elif objective == "instances":
        threshold = object_rules.choose_threshold(
            [(outputs, cells) for outputs, _, cells in validation],
            lambda outputs, t: segmenter.cells(outputs, t, False),
        )["value"]
    rule, held_out = None, None
    if objective == "joint":
        chosen = object_rules.joint_choice(tables, filters=FILTER_GRIDS[filters])
        threshold, rule = chosen["value"], chosen["filter"]
        held_out = object_rules.held_out_score(tables, filters=FILTER_GRIDS[filters])
    elif filters:
        chosen = object_rules.choose_filter(
            (
                (segmenter.cells(outputs, threshold, False), outputs[0], cells)
                for outputs, _, cells in validation
            ),
            FILTER_GRIDS[filters],
        )
        rule = chosen["filter"]
    decided = segmenter.with_settings(threshold=threshold, object_filter=rule)
    return {"segmenter": decided, "threshold": threshold, "filter": rule, "held_out": held_out}


def joint_tables(segmenter: Segmenter, validation) -> list:
    """The :func:`protoseg.objects.threshold_tables` of the validation images, which a
    joint choice is made from."""
    return object_rules.threshold_tables(
        [(outputs, cells) for outputs, _, cells in validation],
        lambda outputs, t: segmenter.cells(outputs, t, False),
    )


def scored_choice(chosen: dict, validation, test) -> dict:
    """A :func:`choose` result as recorded: the threshold and filter, their scores on both
    splits, and (for a joint choice) the held-out validation score."""
    row = {
        "threshold": chosen["threshold"],
        "object_filter": chosen["filter"].describe() if chosen["filter"] else None,
        "validation": scores(chosen["segmenter"], validation),
        "test": scores(chosen["segmenter"], test),
    }
    if chosen["held_out"]:
        row["validation_held_out"] = {
            "matched_f1": chosen["held_out"]["matched_f1"],
            "choices": [
                {"threshold": t, "object_filter": f.describe()}
                for t, f in chosen["held_out"]["choices"]
            ],
        }
    return row


def scores(segmenter: Segmenter, images) -> dict:
    """Pooled pixel F1, pooled and per-image SA50 and matched F1, object counts."""
    counts = np.zeros(4, np.int64)
    rows, pixel_counts = [], []
    for outputs, binary, true_cells in images:
        image_counts = [
            int(c) for c in metrics.confusion(outputs[0] > segmenter.threshold, binary > 0)
        ]
        counts += np.array(image_counts)
        pixel_counts.append(image_counts)
        rows.append(metrics.instance_scores(segmenter.cells(outputs), true_cells))
    pooled = metrics.pooled_instance_scores(
        [r["n_true"] for r in rows], [r["n_pred"] for r in rows], [r["tp50"] for r in rows]
    )
    return {
        "pixel_f1": metrics.f1(*(int(c) for c in counts)),
        "sa50_pooled": pooled["sa50"],
        "matched_f1_pooled": pooled["matched_f1"],
        "sa50_mean": float(np.mean([r["sa50"] for r in rows])),
        "msa_mean": float(np.mean([r["msa"] for r in rows])),
        "n_pred": [int(r["n_pred"]) for r in rows],
        "n_true": [int(r["n_true"]) for r in rows],
        # Per image, for scores of a part of the split (e.g. one field): tp, fp, fn, tn.
        "pixel_counts": pixel_counts,
        "sa50": [float(r["sa50"]) for r in rows],
    }


def inference_settings(segmenter: Segmenter, name: str) -> dict:
    """The Segmenter settings of one of :data:`INFERENCE` (``tile: patch``: the training
    patch, which the data set records as the window)."""
    settings = dict(INFERENCE[name])
    if settings.get("tile") == "patch":
        settings["tile"] = segmenter.preprocessing.tile
    return settings


def decision_rows(
    model_path: Path, config: dict, dataset_dir: Path, tta: bool, skip=frozenset()
) -> list[dict]:
    """The rows of :func:`wanted_decisions` but those in ``skip``."""
    evaluate_cfg = complete_section("evaluate", config["evaluate"])
    segmenter, _ = Segmenter.from_file(
        model_path, "evaluate", **{**evaluate_cfg, "device": "cpu", "tta": False}
    )
    # Without the filter the model file stores: each row chooses its own, or none.
    segmenter = segmenter.with_settings(object_filter=object_rules.ObjectFilter())
    resolution = evaluate_cfg["resolution"]
    outputs = {}
    rows = []
    for name, objective, filters, inference in wanted_decisions(tta):
        if name in skip:
            continue
        if inference not in outputs:
            start = time.perf_counter()
            chosen_segmenter = segmenter.with_settings(**inference_settings(segmenter, inference))
            outputs[inference] = {
                split: split_outputs(chosen_segmenter, dataset_dir, split, resolution)
                for split in ("validation", "test")
            }
            seconds = time.perf_counter() - start
            print(f"  outputs ({inference or 'shipped'}): {seconds:.0f} s", flush=True)
        validation, test = outputs[inference]["validation"], outputs[inference]["test"]
        if objective == "joint" and "tables" not in outputs[inference]:
            # Every image measured at every threshold once, for all joint rows.
            outputs[inference]["tables"] = joint_tables(segmenter, validation)
        chosen = choose(segmenter, validation, objective, filters, outputs[inference].get("tables"))
        row = {"decision": name, **scored_choice(chosen, validation, test)}
        print(
            f"  {name}: threshold {row['threshold']:.4f}, validation matched F1 "
            f"{row['validation']['matched_f1_pooled']:.3f}"
            + (
                f" (held out {row['validation_held_out']['matched_f1']:.3f})"
                if "validation_held_out" in row
                else ""
            )
            + f", test pixel F1 "
            f"{row['test']['pixel_f1']:.3f}, SA50 pooled {row['test']['sa50_pooled']:.3f}, "
            f"objects {sum(row['test']['n_pred'])}/{sum(row['test']['n_true'])}",
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trainings", nargs="+", default=["shipped"], choices=list(TRAININGS))
    parser.add_argument("--tta", action="store_true", help="also the rows with TTA (8x)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--redecide",
        action="store_true",
        help="make every decision row again for the models already trained (after a change "
        "in how decisions are made or scored); trainings are kept",
    )
    parser.add_argument(
        "--label",
        default="",
        help="prefix of the training rows' names: what differs in DATASET_DIR's build "
        "(e.g. another normalisation), so that rows of several data sets share one file",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.dataset_dir, args.work_dir, args.out = (
        Path(p).resolve() for p in (args.dataset_dir, args.work_dir, args.out)
    )
    config_text = Path(args.config).read_text()
    # The manifest names the masks relative to where snakemake ran: RUN/results/datasets/X.
    os.chdir(args.dataset_dir.parents[2])
    config = validate(yaml.safe_load(config_text))
    results = json.loads(args.out.read_text()) if args.out.exists() else {"records": []}
    done = {(r["training"], r["seed"]) for r in results["records"]}
    prefix = f"{args.label}/" if args.label else ""
    results["setup"] = {
        "config": args.config,
        "dataset": str(args.dataset_dir),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    for training in args.trainings:
        for seed in args.seeds:
            name = prefix + training
            model_dir = args.work_dir / f"{name.replace('/', '-')}-seed{seed}"
            if (name, seed) in done:
                # Decision rows added since: computed for the model already trained.
                record = next(
                    r for r in results["records"] if (r["training"], r["seed"]) == (name, seed)
                )
                if args.redecide:
                    record["decisions"] = [
                        row
                        for row in record["decisions"]
                        if row["decision"] not in {d[0] for d in wanted_decisions(args.tta)}
                    ]
                have = {row["decision"] for row in record["decisions"]}
                wanted = {d[0] for d in wanted_decisions(args.tta)}
                if record.get("validation_curve") is None:  # records written before it
                    record["validation_curve"] = validation_curve(model_dir)
                if wanted <= have:
                    args.out.write_text(json.dumps(results, indent=1))
                    continue
                print(f"{name}, seed {seed}: decisions {sorted(wanted - have)}", flush=True)
                record["decisions"] += decision_rows(
                    model_dir / "model.pt", config, args.dataset_dir, args.tta, have
                )
                record.setdefault("test_states", split_states(args.dataset_dir, "test"))
            else:
                print(f"{name}, seed {seed}", flush=True)
                model_path, seconds, finished_from = train_row(
                    config,
                    args.dataset_dir,
                    model_dir,
                    seed,
                    TRAININGS[training],
                    base_dir=args.work_dir / f"{(prefix + 'shipped').replace('/', '-')}-seed{seed}",
                )
                meta = torch.load(model_path, map_location="cpu", weights_only=False)["meta"]
                results["records"].append(
                    {
                        "training": name,
                        "dataset": str(args.dataset_dir),
                        "seed": seed,
                        "changes": TRAININGS[training],
                        "training_seconds": seconds,
                        "finished_from": finished_from,
                        "epoch_kept": meta.get("epoch_kept"),
                        "validation_curve": validation_curve(model_dir),
                        "test_states": split_states(args.dataset_dir, "test"),
                        "decisions": decision_rows(model_path, config, args.dataset_dir, args.tta),
                    }
                )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
