"""The ``protoseg`` command: check a config, predict with a trained model, open the annotator.

    protoseg check config/config.yaml my-data.yaml
    protoseg predict results/models/all-bce/model.pt new_images/ --out segmented/
    protoseg predict results/models/brightfield_z1-bce/model.pt stacks/ -o out/ -c config/config.yaml
    protoseg annotate day1t1xy10 --config config/config.yaml [--plan]

The pipeline itself runs through Snakemake (``snakemake --cores all``); these commands
are for using its results by hand. Errors about inputs or config print one line naming
the file or key and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from protoseg.config import load_config, section_defaults
from protoseg.errors import InputError, ProtosegError


# ---------------------------------------------------------------- predict
def _tile(text: str) -> tuple[int, int]:
    parts = [int(part) for part in text.lower().replace("x", ",").split(",") if part.strip()]
    if len(parts) == 1 and parts[0] > 0:
        return (parts[0], parts[0])
    if len(parts) == 2 and min(parts) > 0:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"expected N or HxW with positive sizes, got '{text}'")


# The predict options' defaults: the config schema's, as the predict rule gets them.
PREDICT_DEFAULTS = section_defaults("predict")
PREDICT_OPTIONS = (
    "overlap",
    "instances",
    "min_distance",
    "min_area",
    "tta",
    "fold_batch_norm",
    "device",
    "precision",
    "format",
)


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1), got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value


def run_predict(args: argparse.Namespace) -> int:
    from protoseg.predict import predict_model_files

    if not Path(args.model).is_file():
        raise InputError(args.model, "model file not found")
    # Options left out take the predict section's defaults from the schema.
    settings = {**PREDICT_DEFAULTS, **{k: v for k, v in vars(args).items() if v is not None}}
    # How per-plane files of focal stacks are named (what a focal-context model needs),
    # which channel of a container the model takes, and the pixel size of files without one.
    data_cfg = load_config(args.config)["data"] if args.config else None
    summary = predict_model_files(
        args.model,
        args.inputs,
        args.out,
        data_cfg=data_cfg,
        progress=not args.quiet,
        names={"device": "--device", "precision": "--precision"},
        tile=args.tile,
        threshold=args.threshold,
        **{key: settings[key] for key in PREDICT_OPTIONS},
    )
    if not args.quiet:
        print(
            f"{len(summary)} image(s), {int(summary['cells'].sum())} cells; outputs in {args.out}"
        )
    return 0


# ---------------------------------------------------------------- export
def run_export(args: argparse.Namespace) -> int:
    from protoseg.export import export_model

    if not Path(args.model).is_file():
        raise InputError(args.model, "model file not found")
    options = {"license": args.license} if args.license else {}
    folder = export_model(
        args.model,
        args.out,
        image=args.image,
        input_dtype=args.input_dtype,
        name=args.name,
        authors=args.author or (),
        cite=[tuple(entry) for entry in args.cite or ()],
        test=not args.no_test,
        **options,
    )
    if not args.quiet:
        tested = "not tested (--no-test)" if args.no_test else "passed bioimage.io's test"
        print(f"bioimage.io package of {args.model} in {folder}: {tested}")
    return 0


# ---------------------------------------------------------------- annotate
def run_annotate(args: argparse.Namespace) -> int:
    from protoseg import annotate

    config = load_config(args.config)
    plan = annotate.annotator_plan(config, args.state, args.planes)
    if args.plan:
        for task in plan:
            print(f"{task.image}\t{task.embedding}\t{task.commit}")
        return 0
    annotate.open_annotator(config, args.state, args.planes, redo=args.redo)
    saved = [task.commit for task in plan if task.commit.is_file()]
    print(
        f"{len(saved)} of {len(plan)} plane(s) of {args.state} saved under {plan[0].commit.parent}"
    )
    return 0


# ---------------------------------------------------------------- check
def run_check(args: argparse.Namespace) -> int:
    from protoseg.check import check_configs

    return check_configs(args.configs)


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protoseg",
        description="protoseg: check a config, predict with a trained model, export it, "
        "open the annotator.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_check_command(commands)
    add_predict_command(commands)
    add_export_command(commands)
    add_annotate_command(commands)
    return parser


def add_check_command(commands) -> None:
    check = commands.add_parser(
        "check",
        help="say whether a config is ready to run, and what is wrong",
        description="Read config files as Snakemake does (later ones over earlier ones) and "
        "say in plain lines what is wrong and what was found: YAML syntax (file, line, "
        "column, cause), schema errors by key, the data folder and pattern (images, states, "
        "planes, channels, what is missing), pixel sizes, SAM weights, the splits, a stale "
        "lock. Exit status 0 when the run can start.",
    )
    check.add_argument(
        "configs",
        metavar="CONFIG",
        nargs="*",
        help="config file(s), later ones overriding earlier ones (default: config/config.yaml)",
    )
    check.set_defaults(run=run_check)


def add_predict_command(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="segment new images with a trained model",
        description="Segment images of any size with a trained model (docs/predict.md). Writes "
        "NAME_binary.tif, NAME_labels.tif (or NAME.ome.zarr with --format ome-zarr) and "
        "NAME_overlay.png per image, and predictions.csv.",
    )
    predict.add_argument(
        "model", metavar="MODEL", help="a model.pt from results/models/{variant}-{loss}/"
    )
    predict.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="+",
        help="image files (TIFF, PNG, ...; microscope containers: OME-TIFF, OME-Zarr, ND2, "
        "CZI, LIF) or folders of them",
    )
    predict.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    add_predict_window_options(predict)
    add_predict_run_options(predict)
    predict.set_defaults(run=run_predict)


def add_predict_window_options(predict) -> None:
    """How ``protoseg predict`` cuts, thresholds and splits the prediction into cells."""
    predict.add_argument(
        "--tile",
        type=_tile,
        default=None,
        metavar="N|HxW",
        help="tile size at the training scale (default: the model's training size or patch)",
    )
    predict.add_argument(
        "--overlap",
        type=_share,
        metavar="F",
        help="share of a tile its neighbour covers too; overlaps are blended "
        f"(default: {PREDICT_DEFAULTS['overlap']})",
    )
    predict.add_argument(
        "--threshold",
        type=_probability,
        default=None,
        metavar="T",
        help="probability above which a pixel is cell (default: the model's, chosen on "
        "validation images in training)",
    )
    predict.add_argument(
        "--instances",
        choices=["auto", "model", "cc", "watershed"],
        help="cells: the model's own instances where it has instance outputs, else "
        f"connected components (auto); default: {PREDICT_DEFAULTS['instances']}; model (its own, an error for a binary model); "
        "cc (connected components of the binary mask); watershed (a distance watershed "
        "of the binary mask that splits touching cells)",
    )
    predict.add_argument(
        "--min-distance",
        type=int,
        metavar="N",
        help="watershed: least distance between two cell centres, in pixels "
        f"(default: {PREDICT_DEFAULTS['min_distance']})",
    )
    predict.add_argument(
        "--min-area",
        type=int,
        metavar="N",
        help="drop objects smaller than this many pixels "
        f"(default: {PREDICT_DEFAULTS['min_area']}; 0 keeps all)",
    )
    predict.add_argument(
        "--tta",
        action="store_true",
        default=None,
        help="test-time augmentation: average the outputs over the 8 flips and quarter "
        "turns (8x the time)",
    )
    predict.add_argument(
        "--fold-batch-norm",
        action="store_true",
        default=None,
        help="run the network with batch norm folded into the convolutions (1.2x faster in "
        "bfloat16, rounded differently: docs/benchmarks/fold_batch_norm.md)",
    )


def add_predict_run_options(predict) -> None:
    """Where and in what precision ``protoseg predict`` runs, what it writes, its config."""
    predict.add_argument(
        "--device",
        choices=["auto", "cuda", "mps", "cpu"],
        help=f"torch device (default: {PREDICT_DEFAULTS['device']}; auto = cuda, mps or cpu)",
    )
    predict.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help=f"autocast precision (default: {PREDICT_DEFAULTS['precision']}; auto = bf16 on "
        "CPUs with native bf16, fp16 on CUDA)",
    )
    predict.add_argument(
        "--format",
        choices=["tiff", "ome-zarr"],
        help="outputs per image: binary and label TIFFs, or one OME-Zarr with the image and "
        "its cells and mask as labels, scaled in micrometres "
        f"(default: {PREDICT_DEFAULTS['format']})",
    )
    predict.add_argument(
        "--config",
        "-c",
        nargs="+",
        default=None,
        metavar="FILE",
        help="config file(s) whose data.pattern, data.channels and data.planes name the "
        "per-plane files of focal stacks, for a focal-context model (context_planes > 0; "
        "without it such a model takes multi-page TIFFs and containers only); "
        "data.channels also says which channel of a container the model takes, and "
        "data.pixel_size the pixel size of files that state none",
    )
    predict.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")


def add_export_command(commands) -> None:
    export = commands.add_parser(
        "export",
        help="write a trained model as a bioimage.io model package",
        description="Write a model.pt as a bioimage.io model package (docs/export.md) for "
        "ilastik, deepImageJ, QuPath, napari and bioimageio.core: description, TorchScript and "
        "state-dict weights, protoseg's normalisation as preprocessing, test input and output, "
        "cover, README, citations. The package is tested with bioimageio.core (offline) "
        "before it is written. Models the format cannot express are refused, saying why.",
    )
    export.add_argument("model", metavar="MODEL", help="a model.pt from results/models/")
    export.add_argument(
        "--out", "-o", required=True, metavar="DIR", help="the package folder to write"
    )
    export.add_argument(
        "--image",
        metavar="IMAGE",
        default=None,
        help="an image like the training images: the test input and cover (its centre, up to "
        "a tile), and its dtype the input dtype of a dtype-normalised model (default: a "
        "synthetic bright-field plane of protoseg's demo)",
    )
    export.add_argument(
        "--input-dtype",
        choices=["uint8", "uint16", "float32"],
        default=None,
        help="dtype of the training images, for a model normalised by the dtype's maximum "
        "(default: the --image's dtype)",
    )
    export.add_argument("--name", default=None, help="the model's name in the package")
    export.add_argument(
        "--author", action="append", metavar="NAME", help="an author (repeat for more)"
    )
    export.add_argument(
        "--cite",
        nargs=2,
        action="append",
        metavar=("TEXT", "DOI_OR_URL"),
        help="one more citation, e.g. the training data (repeat for more); the study and the "
        "U-Net are always cited",
    )
    export.add_argument(
        "--license", default=None, help="SPDX licence of the weights (default: CC-BY-4.0)"
    )
    export.add_argument(
        "--no-test", action="store_true", help="skip bioimage.io's test of the package"
    )
    export.add_argument("--quiet", "-q", action="store_true", help="no summary line")
    export.set_defaults(run=run_export)


def add_annotate_command(commands) -> None:
    annotate = commands.add_parser(
        "annotate",
        help="open micro-sam's napari annotator on a state's planes",
        description="Open micro-sam's annotator on one state's planes (docs/annotate.md); each "
        "plane is saved where masks.method 'import' reads it. Needs: pip install 'protoseg[annotator]'.",
    )
    annotate.add_argument("state", metavar="STATE", help="a state name, e.g. day1t1xy10")
    annotate.add_argument(
        "--config",
        "-c",
        nargs="+",
        default=["config/config.yaml"],
        metavar="FILE",
        help="config file(s), later ones overriding earlier ones (default: config/config.yaml)",
    )
    annotate.add_argument(
        "--planes",
        "-z",
        nargs="+",
        type=int,
        default=None,
        metavar="Z",
        help="only these planes (default: all of data.planes)",
    )
    annotate.add_argument(
        "--redo", action="store_true", help="also open planes already saved, loaded for correction"
    )
    annotate.add_argument(
        "--plan",
        action="store_true",
        help="print image, embedding and commit path per plane and exit (no napari needed)",
    )
    annotate.set_defaults(run=run_annotate)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``protoseg`` console command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except ProtosegError as error:
        print(f"protoseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
