"""nnU-Net v2 as a peer: its 2D configuration, one fold, trained from scratch on a protoseg
data set's training images with protoseg's validation images as the fold's validation
cases, and scored by protoseg's metrics on the test split.

    python benchmarks/peers/nnunet_peer.py prepare DATASET_DIR WORK_DIR
    PYTHONPATH=/work/peers-nnunet python benchmarks/peers/nnunet_peer.py \
        run WORK_DIR OUT.json [--device cuda] [--epochs 1000]

Two steps, so that the second can run on a GPU machine that has neither the images nor
protoseg's data set. ``prepare`` (:func:`prepare`) needs protoseg only: it writes
``DATASET_DIR``'s images (a data set protoseg built with ``snakemake all_dataset``) as an
nnU-Net raw data set under ``WORK_DIR/raw`` (:func:`write_raw_dataset`): each image as it
is stored, in grey (aiSEGcell's RGB-stored images have three equal channels), since nnU-Net
normalises its input itself (z-score per image: it configures itself, that is the point of
it); masks binary (nnU-Net segments classes, not instances). Training and validation images
both go to ``imagesTr``, the test images to ``imagesTs``; ``WORK_DIR/splits_final.json``
makes fold 0 exactly protoseg's split (:func:`fold_of`), so nnU-Net's validation sees only
protoseg's validation images; ``WORK_DIR/truth`` holds the instance masks of the validation
and test images, for scoring alone (nnU-Net never reads them).

``run`` needs nnU-Net and :mod:`protoseg.metrics`: ``nnUNetv2_plan_and_preprocess -c 2d``,
the split put in place, ``nnUNetv2_train DATASET 2d 0`` and nnU-Net's predictor, called
through their Python functions. What nnU-Net decides stays nnU-Net's: its planner (patch,
batch, network), preprocessing, training (SGD with Nesterov momentum, poly learning-rate
decay, its augmentation, deep supervision, 250 iterations per epoch), and prediction
(sliding window with Gaussian weights, half-tile steps, mirroring as test-time
augmentation, the final checkpoint, argmax). Cells are the connected components of its
foreground, as for protoseg's foreground-only models. Only the number of epochs differs from
``nnUNetv2_train`` when ``--epochs`` is set, as nnU-Net's own ``nnUNetTrainer_Xepochs``
variants do (its 1000 epochs take hours even on a GPU).

Writes ``OUT.json``: ``setup`` (versions, device, nnU-Net's plans: patch size, batch size,
stages; epochs, iterations, seconds of planning, training and prediction), ``validation``
and ``test`` (the keys of ``benchmarks/realdata_ablation.py``). nnU-Net is installed for the
benchmark only (``benchmarks/peers/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_scoring import image_scores, load_split, pooled  # noqa: E402

from protoseg import metrics  # noqa: E402

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID:03d}_protoseg"
FOLD = 0
CONFIGURATION = "2d"
# Case names carry the split and a running number (nnU-Net's case names are file stems);
# ``cases.json`` maps each to its image.
SPLIT_PREFIX = {"train": "tr", "validation": "va", "test": "ts"}


# ---------------------------------------------------------------- prepare (protoseg)
def case_name(split: str, index: int) -> str:
    return f"{SPLIT_PREFIX[split]}{index:04d}"


def stored_grey(image: np.ndarray, source: object) -> np.ndarray:
    """An image as stored, in one grey channel of its own dtype (exact for RGB images with
    three equal channels, as aiSEGcell's)."""
    from protoseg.transforms import convert_colour

    return np.asarray(convert_colour(image, "grey", source))[..., 0]


def write_raw_dataset(work_dir: Path, splits: dict[str, list[dict]]) -> dict[str, dict]:
    """nnU-Net's raw layout of the images of every split under ``work_dir/raw``
    (``DatasetNNN_name/imagesTr``, ``labelsTr``, ``imagesTs``, ``dataset.json``), the
    instance masks of the validation and test images under ``work_dir/truth``, and each
    case's split and image (also written as ``cases.json``).

    Images are PNGs of the stored pixels in grey (8 or 16 bit), one channel (``_0000``),
    read by nnU-Net's 2D reader (``NaturalImage2DIO``); labels are 0/1 PNGs."""
    import cv2

    dataset_dir = work_dir / "raw" / DATASET_NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (dataset_dir / sub).mkdir(parents=True, exist_ok=True)
    (work_dir / "truth").mkdir(exist_ok=True)
    cases = {}
    for split, images in splits.items():
        for index, item in enumerate(images):
            case = case_name(split, index)
            folder = "imagesTs" if split == "test" else "imagesTr"
            grey = stored_grey(item["raw"], item["row"]["image"])
            if grey.dtype not in (np.uint8, np.uint16):
                raise SystemExit(f"{item['row']['image']}: {grey.dtype} is not 8 or 16 bit")
            cv2.imwrite(str(dataset_dir / folder / f"{case}_0000.png"), grey)
            if split != "test":
                foreground = (item["labels"] > 0).astype(np.uint8)
                cv2.imwrite(str(dataset_dir / "labelsTr" / f"{case}.png"), foreground)
            if split != "train":
                tifffile.imwrite(
                    work_dir / "truth" / f"{case}.tif", item["labels"], compression="zlib"
                )
            cases[case] = {"split": split, "image": str(item["row"]["image"])}
    dataset_json = {
        # Any name but CT / noNorm / rescale_to_0_1 / rgb_to_0_1: z-score per image.
        "channel_names": {"0": "brightfield"},
        "labels": {"background": 0, "cell": 1},
        "numTraining": sum(v["split"] != "test" for v in cases.values()),
        "file_ending": ".png",
        "overwrite_image_reader_writer": "NaturalImage2DIO",
    }
    (dataset_dir / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    (work_dir / "cases.json").write_text(json.dumps(cases, indent=1))
    return cases


def fold_of(cases: dict[str, dict]) -> dict:
    """The one fold of ``splits_final.json``: protoseg's training images train, its
    validation images validate (nnU-Net would otherwise make 5 random folds)."""
    return {
        "train": sorted(c for c, v in cases.items() if v["split"] == "train"),
        "val": sorted(c for c, v in cases.items() if v["split"] == "validation"),
    }


def prepare(dataset_dir: Path, work_dir: Path, max_images: int | None) -> dict:
    if work_dir.exists():
        raise SystemExit(f"{work_dir} exists: prepare writes a new folder")
    splits = {s: load_split(dataset_dir, s, max_images) for s in SPLIT_PREFIX}
    cases = write_raw_dataset(work_dir, splits)
    fold = fold_of(cases)
    (work_dir / "splits_final.json").write_text(json.dumps([fold], indent=1))
    (work_dir / "source.json").write_text(
        json.dumps({"dataset": str(dataset_dir), "max_images": max_images}, indent=1)
    )
    return fold


# ---------------------------------------------------------------- run (nnU-Net)
def nnunet_folders(work_dir: Path) -> dict[str, Path]:
    """nnU-Net's three folders under ``work_dir``; nnU-Net reads them from the environment
    when it is imported, so this runs first."""
    folders = {name: work_dir / name for name in ("raw", "preprocessed", "results")}
    for key, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[f"nnUNet_{key}"] = str(folder)
    return folders


def plan_and_preprocess(processes: int) -> None:
    """``nnUNetv2_plan_and_preprocess -d ID -c 2d``, as its entry point calls it."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    extract_fingerprints([DATASET_ID], num_processes=processes, check_dataset_integrity=True)
    plans_identifier = plan_experiments([DATASET_ID])
    preprocess([DATASET_ID], plans_identifier, (CONFIGURATION,), (processes,))


def train(device: str, epochs: int | None, iterations: int | None):
    """``nnUNetv2_train ID 2d 0`` with ``epochs`` (and, for smoke tests, ``iterations`` per
    epoch) set as nnU-Net's ``nnUNetTrainer_Xepochs`` variants set them; the trainer and
    the seconds its training took."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(
        str(DATASET_ID), CONFIGURATION, FOLD, "nnUNetTrainer", device=torch.device(device)
    )
    if epochs is not None:
        trainer.num_epochs = epochs
    if iterations is not None:
        trainer.num_iterations_per_epoch = iterations
        trainer.num_val_iterations_per_epoch = max(1, iterations // 5)
    start = time.perf_counter()
    trainer.run_training()
    return trainer, time.perf_counter() - start


def predictor_for(results_dir: Path, device: str):
    """nnU-Net's predictor of the trained fold with its defaults (Gaussian blending, half
    tile steps, mirroring) and its final checkpoint."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device(device), allow_tqdm=False)
    model_dir = results_dir / DATASET_NAME / f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
    predictor.initialize_from_trained_model_folder(
        str(model_dir), use_folds=(FOLD,), checkpoint_name="checkpoint_final.pth"
    )
    return predictor


def predicted_cells(predictor, image_path: Path) -> np.ndarray:
    """nnU-Net's segmentation of one image file (read by its own 2D reader), as cells:
    the connected components of its foreground."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    image, properties = NaturalImage2DIO().read_images([str(image_path)])
    segmentation = predictor.predict_single_npy_array(image, properties, None, None, False)
    return metrics.instances_from_binary(np.asarray(segmentation)[0] == 1)


def split_scores(predictor, work_dir: Path, cases: dict, split: str) -> dict:
    folder = work_dir / "raw" / DATASET_NAME / ("imagesTs" if split == "test" else "imagesTr")
    rows = []
    for case in sorted(c for c, v in cases.items() if v["split"] == split):
        cells = predicted_cells(predictor, folder / f"{case}_0000.png")
        truth = tifffile.imread(work_dir / "truth" / f"{case}.tif")
        if cells.shape != truth.shape:
            raise SystemExit(f"nnU-Net returned {cells.shape} for {cases[case]['image']}")
        rows.append(image_scores(cells, truth))
    return pooled(rows)


def run(args) -> None:
    work_dir = args.work_dir.resolve()
    cases = json.loads((work_dir / "cases.json").read_text())
    folders = nnunet_folders(work_dir)
    start = time.perf_counter()
    plan_and_preprocess(args.processes)
    # nnU-Net's own place for the split, written once its preprocessed folder exists.
    shutil.copy(
        work_dir / "splits_final.json",
        folders["preprocessed"] / DATASET_NAME / "splits_final.json",
    )
    prepare_seconds = time.perf_counter() - start
    print(f"planned and preprocessed in {prepare_seconds:.0f} s", flush=True)

    import torch

    if args.augmentation_processes is not None:
        # Set only now: nnU-Net's planner also sets torch's threads from it, and 0 fails there.
        os.environ["nnUNet_n_proc_DA"] = str(args.augmentation_processes)
    trainer, training_seconds = train(args.device, args.epochs, args.iterations)
    plans = trainer.configuration_manager
    print(f"training: {trainer.num_epochs} epochs in {training_seconds:.0f} s", flush=True)

    start = time.perf_counter()
    predictor = predictor_for(folders["results"], args.device)
    validation = split_scores(predictor, work_dir, cases, "validation")
    test = split_scores(predictor, work_dir, cases, "test")
    prediction_seconds = time.perf_counter() - start

    from importlib.metadata import version

    source = json.loads((work_dir / "source.json").read_text())
    results = {
        "setup": {
            "method": "nnU-Net v2, 2d, fold 0 = protoseg's split, trained from scratch",
            "nnunetv2": version("nnunetv2"),
            "torch": torch.__version__,
            "dataset": source["dataset"],
            "device": args.device,
            "device_name": (
                torch.cuda.get_device_name() if args.device.startswith("cuda") else None
            ),
            "machine": platform.processor() or platform.machine(),
            "images": {
                split: sum(v["split"] == split for v in cases.values()) for split in SPLIT_PREFIX
            }
            | {"max_images": source["max_images"]},
            "plans": {
                "patch_size": list(plans.patch_size),
                "batch_size": plans.batch_size,
                "stages": len(plans.network_arch_init_kwargs.get("features_per_stage", [])),
            },
            "epochs": trainer.num_epochs,
            "iterations_per_epoch": trainer.num_iterations_per_epoch,
            "prepare_seconds": prepare_seconds,
            "training_seconds": training_seconds,
            "prediction_seconds": prediction_seconds,
            "decision": "argmax of nnU-Net's final checkpoint, connected components",
            "cases": cases,
        },
        "validation": validation,
        "test": test,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(
        f"nnU-Net on {Path(source['dataset']).name}: {trainer.num_epochs} epochs in "
        f"{training_seconds:.0f} s on {args.device}; validation matched F1 "
        f"{validation['matched_f1_pooled']:.3f}; test pixel F1 {test['pixel_f1']:.3f}, SA50 "
        f"pooled {test['sa50_pooled']:.3f}, matched F1 {test['matched_f1_pooled']:.3f}, "
        f"objects {sum(test['n_pred'])}/{sum(test['n_true'])}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    first = steps.add_parser("prepare", help="nnU-Net's raw data set from a protoseg data set")
    first.add_argument("dataset_dir", type=Path)
    first.add_argument("work_dir", type=Path, help="a new folder")
    first.add_argument(
        "--max-images", type=int, help="smoke tests only: the first N images of each split"
    )
    second = steps.add_parser("run", help="plan, train, predict and score (nnU-Net)")
    second.add_argument("work_dir", type=Path, help="the folder prepare wrote")
    second.add_argument("out", type=Path)
    second.add_argument("--device", default="cuda", help="cuda (nnU-Net's default) or cpu")
    second.add_argument("--epochs", type=int, help="epochs of 250 iterations (default 1000)")
    second.add_argument(
        "--iterations", type=int, help="smoke tests only: iterations per epoch (default 250)"
    )
    second.add_argument("--processes", type=int, default=2, help="preprocessing processes")
    second.add_argument(
        "--augmentation-processes",
        type=int,
        help="nnU-Net's data augmentation workers (nnUNet_n_proc_DA; 0: in the training "
        "process); default nnU-Net's own",
    )
    args = parser.parse_args()
    if args.step == "prepare":
        fold = prepare(args.dataset_dir.resolve(), args.work_dir, args.max_images)
        print(
            f"{args.work_dir}: {len(fold['train'])} training and {len(fold['val'])} "
            "validation cases in fold 0",
            flush=True,
        )
    else:
        run(args)


if __name__ == "__main__":
    main()
