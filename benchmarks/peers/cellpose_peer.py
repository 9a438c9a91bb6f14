"""Cellpose as a peer: its version-3 CNN trained from scratch on a protoseg data set's
training images, within the wall time protoseg's own training took, chosen on the
validation split and scored by protoseg's metrics on the test split.

    PYTHONPATH=/work/peers-site python benchmarks/peers/cellpose_peer.py \
        DATASET_DIR OUT.json --budget-seconds S [--diam-mean 30] [--threads 2]

``DATASET_DIR``: a data set protoseg built (``snakemake all_dataset``, e.g.
``RUN/results/datasets/brightfield``); its ``manifest.csv`` gives every image's split,
raw image and instance mask (relative to ``RUN``). Each image is prepared as protoseg
prepares it (``dataset.json``'s preprocessing: grey, per-image percentiles) and handed to
cellpose without cellpose's own normalisation, so both methods see the same pixels.

Training (:func:`train`): ``cellpose.train.train_seg`` with the recipe of cellpose's own
``--train`` command line (SGD, learning rate 0.2, momentum 0.9, weight decay 1e-5, batches
of 8 crops of 224 px, every image rescaled so its cells are ``--diam-mean`` px across), the
validation images as its test set (its loss report only). One epoch is one batch, and the
number of epochs is the budget over the seconds per epoch of a short throwaway calibration
run, so the kept model's training ends within ``--budget-seconds`` (``--epochs`` sets the
number instead). Cellpose's flow targets are computed once before the clock starts, as
protoseg's data set holds its targets before its training starts.

Evaluation: the network runs once per validation and test image, at the cell diameter of
the training images of the same size (:func:`camera_diameters`; no test mask is read before
scoring). Cellpose's two mask settings, ``cellprob_threshold`` and ``flow_threshold``, are
chosen on the validation images for pooled matched F1 at IoU 0.5 (:data:`CELLPROB_GRID`,
:data:`FLOW_GRID`); the test images are then scored with them at their own resolution
against their own masks by :mod:`protoseg.metrics`, with the keys of
``benchmarks/realdata_ablation.py`` so both tabulate together.

Writes ``OUT.json``: ``setup`` (versions, epochs, seconds, diameters, the thresholds and the
validation grid that chose them), ``validation`` and ``test`` (pixel F1 pooled, SA50 pooled
and mean per image, matched F1 pooled, mSA mean, objects predicted / true per image).
``benchmarks/peers/README.md`` says how to install cellpose beside protoseg and why these
choices.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_scoring import image_scores, load_split, pooled  # noqa: E402

# Cellpose's training recipe from scratch: the defaults of ``python -m cellpose --train``
# in 3.1.1 (the Python function's own defaults, AdamW at 0.005, are its fine-tuning ones).
LEARNING_RATE = 0.2
WEIGHT_DECAY = 1e-5
BATCH_SIZE = 8
# Cellpose's mask settings tried on the validation images; its defaults (0.0, 0.4) come
# first, so they are kept on a tie. A flow threshold of 0 switches the flow check off.
CELLPROB_GRID = (0.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0)
FLOW_GRID = (0.4, 0.2, 0.6, 0.8, 1.0, 0.0)
# Cellpose's own defaults at evaluation: objects under 15 px dropped, none over 40 % of the
# image; grey input as its channels [0, 0] (the cell channel, no nucleus channel).
MIN_SIZE = 15
MAX_SIZE_FRACTION = 0.4
CHANNELS = [0, 0]
# No cellpose normalisation: the images come normalised as protoseg normalises them. A
# dict, not False: cellpose sets a module-wide default from a bare bool.
NO_NORMALISATION = {"normalize": False}


# ---------------------------------------------------------------- data
def camera_diameters(train_images: list[dict]) -> dict[tuple[int, int], float]:
    """Cellpose's cell diameter per image size of the training images: the mean over
    images of ``utils.diameters`` (each image's median cell), as cellpose's ``diam_labels``
    but per size, because each size is one camera and the cells' size in pixels differs
    between cameras (aiSEGcell: 7-10 px nuclei at 1024 px, 16-23 px at 2048-2304 px)."""
    from cellpose import utils

    by_size: dict[tuple[int, int], list[float]] = {}
    for item in train_images:
        diameter = utils.diameters(item["labels"])[0]
        if diameter > 0:  # an empty field has no diameter
            by_size.setdefault(item["image"].shape, []).append(float(diameter))
    return {size: float(np.mean(values)) for size, values in by_size.items()}


def diameter_for(shape: tuple[int, int], diameters: dict) -> tuple[float, str]:
    """The training diameter of images of ``shape``, or of the nearest training size by
    height where no training image has that size, and which size gave it."""
    size = min(diameters, key=lambda s: (abs(s[0] - shape[0]), abs(s[1] - shape[1])))
    return diameters[size], f"{size[0]}x{size[1]}"


# ---------------------------------------------------------------- training
def new_model(diam_mean: float):
    """A cellpose-3 CNN with random weights (no pretrained model: nothing is downloaded)."""
    import torch
    from cellpose import models

    return models.CellposeModel(
        gpu=False,
        pretrained_model=None,
        model_type=None,
        diam_mean=diam_mean,
        device=torch.device("cpu"),
    )


def train(model, train_flows, validation_flows, epochs: int, save_path: Path, name: str):
    """``cellpose.train.train_seg`` for ``epochs`` epochs of one batch each, and its seconds.

    ``nimg_per_epoch`` = one batch: the epoch count is then the step count on every data set
    (cellpose's epoch is one pass over the images, 5 batches on BABY but 1 on aiSEGcell), so
    the budget buys a known number of steps and cellpose's learning-rate schedule (10 epochs
    of warm-up, halvings over the last 50 or 100 epochs) spans the steps actually run.
    ``min_train_masks=1``: cellpose drops images with fewer cells (default 5, which would drop
    every BABY field of 2-4 cells); the empty fields are gone already (:func:`main`).
    """
    from cellpose import train as cellpose_train

    start = time.perf_counter()
    cellpose_train.train_seg(
        model.net,
        train_data=[item["image"] for item in train_flows],
        train_labels=[item["flows"] for item in train_flows],
        test_data=[item["image"] for item in validation_flows],
        test_labels=[item["flows"] for item in validation_flows],
        channels=CHANNELS,
        normalize=NO_NORMALISATION,
        n_epochs=epochs,
        nimg_per_epoch=BATCH_SIZE,
        batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        SGD=True,
        rescale=True,
        min_train_masks=1,
        save_path=str(save_path),
        model_name=name,
    )
    return time.perf_counter() - start


def with_flows(images: list[dict]) -> list[dict]:
    """The images with cellpose's training targets (labels, cell probability, flows)."""
    import torch
    from cellpose import dynamics

    flows = dynamics.labels_to_flows(
        [item["labels"].astype(np.int32) for item in images], device=torch.device("cpu")
    )
    return [item | {"flows": flow} for item, flow in zip(images, flows, strict=True)]


# ---------------------------------------------------------------- evaluation
def network_outputs(model, images: list[dict], diameters: dict) -> list[dict]:
    """Cellpose's flows and cell probability of every image at its own size, run once
    (``compute_masks=False``): masks for every threshold pair are made from them."""
    outputs = []
    for item in images:
        diameter, source = diameter_for(item["image"].shape, diameters)
        _, flows, _ = model.eval(
            item["image"],
            channels=CHANNELS,
            normalize=NO_NORMALISATION,
            diameter=diameter,
            compute_masks=False,
        )
        # Cellpose's eval: flows resized back to the image (resample=True), and as many
        # dynamics steps as 200 at the network's scale.
        rescale = float(model.diam_mean) / diameter
        outputs.append(
            {
                "dP": flows[1],
                "cellprob": flows[2],
                "niter": 200.0 / rescale,
                "labels": item["labels"],
                "diameter": diameter,
                "diameter_from": source,
            }
        )
    return outputs


def cells_by_threshold(output: dict, cellprob_thresholds, flow_thresholds) -> dict:
    """Cellpose's masks of one image for every (cellprob, flow) threshold pair.

    The same steps as ``CellposeModel.eval`` (``dynamics.resize_and_compute_masks``), with
    the dynamics run once per cellprob threshold: the flow threshold only removes masks
    afterwards (``dynamics.remove_bad_flow_masks``), so it is applied to a copy.
    """
    import torch
    from cellpose import dynamics, utils

    cpu = torch.device("cpu")
    cells = {}
    for cellprob_threshold in cellprob_thresholds:
        unchecked = dynamics.compute_masks(
            output["dP"],
            output["cellprob"],
            niter=output["niter"],
            cellprob_threshold=cellprob_threshold,
            flow_threshold=0.0,
            max_size_fraction=MAX_SIZE_FRACTION,
            device=cpu,
        )
        for flow_threshold in flow_thresholds:
            masks = unchecked.copy()
            if flow_threshold > 0 and masks.max() > 0:
                masks = dynamics.remove_bad_flow_masks(
                    masks, output["dP"], threshold=flow_threshold, device=cpu
                )
            masks = utils.fill_holes_and_remove_small_masks(masks.copy(), min_size=MIN_SIZE)
            cells[(cellprob_threshold, flow_threshold)] = masks
    return cells


def choose_thresholds(validation: list[dict]) -> tuple[tuple[float, float], list[dict]]:
    """The (cellprob, flow) pair of the best pooled matched F1 on the validation images
    (the first of the grid on a tie: cellpose's defaults), and every pair's scores."""
    rows: dict[tuple[float, float], list[dict]] = {}
    for output in validation:
        for pair, cells in cells_by_threshold(output, CELLPROB_GRID, FLOW_GRID).items():
            rows.setdefault(pair, []).append(image_scores(cells, output["labels"]))
    grid = [
        {"cellprob_threshold": pair[0], "flow_threshold": pair[1], "scores": pooled(found)}
        for pair, found in rows.items()
    ]
    best = max(grid, key=lambda g: g["scores"]["matched_f1_pooled"])
    return (best["cellprob_threshold"], best["flow_threshold"]), grid


def test_scores(outputs: list[dict], pair: tuple[float, float]) -> dict:
    rows = []
    for output in outputs:
        cells = cells_by_threshold(output, [pair[0]], [pair[1]])[pair]
        rows.append(image_scores(cells, output["labels"]))
    return pooled(rows)


# ---------------------------------------------------------------- main
def limit_threads(threads: int) -> None:
    """Every library on ``threads`` cores, as protoseg's training was: torch's threads,
    OpenCV's (cellpose's augmentation and resizing) and numba's (set before import)."""
    os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("out", type=Path)
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument(
        "--budget-seconds", type=float, help="wall time of the kept model's training"
    )
    length.add_argument("--epochs", type=int, help="epochs (batches) instead of a budget")
    parser.add_argument(
        "--diam-mean",
        type=float,
        default=30.0,
        help="cell diameter (px) cellpose rescales images to: 30 for cells (its cyto "
        "models), 17 for nuclei (its nuclei model)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--calibration-epochs", type=int, default=5, help="epochs of the timing run"
    )
    parser.add_argument("--work-dir", type=Path, help="where cellpose saves its weights")
    parser.add_argument(
        "--max-images", type=int, help="smoke tests only: the first N images of each split"
    )
    args = parser.parse_args()
    limit_threads(args.threads)

    import cellpose
    import torch

    # Cellpose's training report (its losses every 10 epochs); its other messages are quiet.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("cellpose.train").setLevel(logging.INFO)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dataset_dir = args.dataset_dir.resolve()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="cellpose-peer-"))
    work_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    splits = {s: load_split(dataset_dir, s, args.max_images) for s in ("train", "validation")}
    # Fields without cells go (cellpose would drop them too, with a warning): an image is
    # rescaled by its cells' diameter in training, and an empty one has none.
    with_cells = [item for item in splits["train"] if item["labels"].any()]
    diameters = camera_diameters(with_cells)
    train_flows, validation_flows = with_flows(with_cells), with_flows(splits["validation"])
    prepare_seconds = time.perf_counter() - start
    print(
        f"{len(train_flows)} training, {len(validation_flows)} validation images "
        f"prepared in {prepare_seconds:.0f} s; diameters by size: "
        + ", ".join(f"{h}x{w}: {d:.1f} px" for (h, w), d in sorted(diameters.items())),
        flush=True,
    )

    calibration = None
    if args.epochs is not None:
        epochs = args.epochs
    else:
        # Seconds per epoch from a short run of a throwaway network (kept apart from the
        # budget and reported); it includes the run's fixed costs, so it errs on the
        # side of fewer epochs.
        seconds = train(
            new_model(args.diam_mean),
            train_flows,
            validation_flows,
            args.calibration_epochs,
            work_dir,
            "calibration",
        )
        per_epoch = seconds / args.calibration_epochs
        epochs = max(1, int(args.budget_seconds // per_epoch))
        calibration = {"epochs": args.calibration_epochs, "seconds": seconds}
        print(
            f"calibration: {per_epoch:.2f} s per epoch -> {epochs} epochs in "
            f"{args.budget_seconds:.0f} s",
            flush=True,
        )
    torch.manual_seed(args.seed)
    model = new_model(args.diam_mean)
    training_seconds = train(model, train_flows, validation_flows, epochs, work_dir, "cellpose")
    print(f"training: {epochs} epochs in {training_seconds:.0f} s", flush=True)

    start = time.perf_counter()
    validation = network_outputs(model, splits["validation"], diameters)
    pair, grid = choose_thresholds(validation)
    chosen = next(g for g in grid if (g["cellprob_threshold"], g["flow_threshold"]) == pair)
    test_images = load_split(dataset_dir, "test", args.max_images)
    test = network_outputs(model, test_images, diameters)
    scores = test_scores(test, pair)
    evaluation_seconds = time.perf_counter() - start

    results = {
        "setup": {
            "method": "cellpose (CNN of version 3, trained from scratch)",
            "cellpose": cellpose.version,
            "torch": torch.__version__,
            "dataset": str(dataset_dir),
            "machine": platform.processor() or platform.machine(),
            "threads": args.threads,
            "seed": args.seed,
            "images": {
                "train": len(train_flows),
                "train_without_cells_left_out": len(splits["train"]) - len(train_flows),
                "validation": len(validation),
                "test": len(test),
                "max_images": args.max_images,
            },
            "diam_mean": args.diam_mean,
            "diameters_by_size": {f"{h}x{w}": d for (h, w), d in sorted(diameters.items())},
            "diameter_of_test_images": [
                {
                    "image": item["row"]["image"],
                    "diameter": out["diameter"],
                    "from": out["diameter_from"],
                }
                for item, out in zip(test_images, test, strict=True)
            ],
            "optimizer": {
                "name": "SGD",
                "learning_rate": LEARNING_RATE,
                "momentum": 0.9,
                "weight_decay": WEIGHT_DECAY,
                "batch_size": BATCH_SIZE,
                "crop": 224,
            },
            "budget_seconds": args.budget_seconds,
            "epochs": epochs,
            "training_seconds": training_seconds,
            "calibration": calibration,
            "prepare_seconds": prepare_seconds,
            "evaluation_seconds": evaluation_seconds,
            "cellprob_threshold": pair[0],
            "flow_threshold": pair[1],
            "chosen_on": "validation: pooled matched F1 at IoU 0.5",
            "grid": [
                {
                    "cellprob_threshold": g["cellprob_threshold"],
                    "flow_threshold": g["flow_threshold"],
                    "matched_f1_pooled": g["scores"]["matched_f1_pooled"],
                }
                for g in grid
            ],
        },
        "validation": chosen["scores"],
        "test": scores,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(
        f"cellpose {cellpose.version} on {dataset_dir.name} ({dataset_dir.parents[2].name}): "
        f"{epochs} epochs in {training_seconds:.0f} s; cellprob {pair[0]:g}, flow {pair[1]:g} "
        f"(validation matched F1 {chosen['scores']['matched_f1_pooled']:.3f}); test pixel F1 "
        f"{scores['pixel_f1']:.3f}, SA50 pooled {scores['sa50_pooled']:.3f}, matched F1 "
        f"{scores['matched_f1_pooled']:.3f}, mSA {scores['msa_mean']:.3f}, objects "
        f"{sum(scores['n_pred'])}/{sum(scores['n_true'])}",
        flush=True,
    )


if __name__ == "__main__":
    main()
