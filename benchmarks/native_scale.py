"""The native-scale learning stage, measured: sliding-window inference, patch sampling against
the training step, and the memory of building a ``patches`` data set of the study's size.

    python benchmarks/native_scale.py                 # everything (about 15 min on 2 cores)
    python benchmarks/native_scale.py --skip-build    # inference and sampling only
    python benchmarks/native_scale.py --skip-inference --build-counts 28 140 2030

1. **Sliding window**: seconds per megapixel of :func:`protoseg.inference.sliding_window`
   over a 2048 x 2880 image (the study's microscope), protoseg's U-Net of depth 4 / 16
   channels (1.9 M parameters, config/aisegcell.yaml's), tiles of 256 and 512, fp32 and bf16,
   beside MONAI's ``sliding_window_inference`` (Gaussian mode) on the same network and tiles
   where MONAI is installed (``pip install monai``; it is not a protoseg dependency).
2. **Sampling against training**: patches per second that :class:`protoseg.sampling.PatchSampler`
   cuts and augments, against patches per second one training step consumes; and the share
   of draws torch_em's ``MinForegroundSampler`` would reject on the same sparse images.
3. **Dataset build**: peak resident memory of building a ``patches`` data set from 2030
   full-size (2048 x 2880) RGB images, each build in a fresh process, for several numbers of
   images: memory stays flat in the number of images (one image in memory at a time).

Every figure comes from one run on one machine, with the machine, threads and torch version
written beside it; the machine is shared and noisy, so compare ratios within one run.
Writes docs/benchmarks/native_scale.md and .json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset_memory import study_catalogue, write_inputs  # noqa: E402

from protoseg.device import cpu_has_native_bf16  # noqa: E402
from protoseg.inference import gaussian_weights, sliding_window  # noqa: E402
from protoseg.model import build_model  # noqa: E402

MODEL = {"depth": 4, "base_channels": 16, "batch_norm": True, "upsample": "transpose"}


def timed(function, repeats: int = 1) -> float:
    function()  # warm up (oneDNN picks kernels on first use)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


# ---------------------------------------------------------------- 1. sliding window
def monai_window(model, image, tile, overlap, precision):
    from monai.inferers import sliding_window_inference

    dtype = torch.bfloat16 if precision == "bf16" else None
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        logits = sliding_window_inference(
            torch.from_numpy(image[None]),
            roi_size=tile,
            sw_batch_size=4,
            predictor=model,
            overlap=overlap,
            mode="gaussian",
            sigma_scale=0.125,
        )
    return torch.sigmoid(logits.float())[0, 0].numpy()


def bench_sliding_window(height: int, width: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(MODEL, in_channels=1).eval()
    image = np.random.default_rng(0).random((1, height, width), dtype=np.float32)
    megapixels = height * width / 1e6
    precisions = ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    try:
        import monai  # noqa: F401

        has_monai = True
    except ImportError:
        has_monai = False
    rows = []
    for tile, overlap in (((256, 256), 0.5), ((512, 512), 0.25)):
        for precision in precisions:
            seconds = timed(
                partial(
                    sliding_window, model, image, tile, overlap, batch_size=4, precision=precision
                )
            )
            rows.append(
                {
                    "library": "protoseg",
                    "tile": f"{tile[0]}",
                    "overlap": overlap,
                    "precision": precision,
                    "seconds": seconds,
                    "seconds_per_megapixel": seconds / megapixels,
                }
            )
            if has_monai:
                if precision != "fp32":
                    model = model.to(memory_format=torch.channels_last)
                seconds = timed(partial(monai_window, model, image, tile, overlap, precision))
                rows.append(
                    {
                        "library": "MONAI sliding_window_inference",
                        "tile": f"{tile[0]}",
                        "overlap": overlap,
                        "precision": precision,
                        "seconds": seconds,
                        "seconds_per_megapixel": seconds / megapixels,
                    }
                )
    return rows


# ---------------------------------------------------------------- 2. sampling vs training
def sparse_dataset(folder: Path, images: int = 6, size: int = 1024) -> Path:
    """Images with 40 nuclei of 8-12 px each: about 0.4 % foreground, like aiSEGcell."""
    import tifffile

    from protoseg.dataset import build_dataset

    rng = np.random.default_rng(1)
    rows = []
    yy, xx = np.mgrid[:size, :size]
    for index in range(images):
        labels = np.zeros((size, size), np.uint16)
        for label in range(1, 41):
            cy, cx, radius = *rng.integers(20, size - 20, 2), rng.integers(4, 7)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = label
        image = (
            (rng.normal(120, 10, (size, size)) + 60 * (labels > 0)).clip(0, 255).astype(np.uint8)
        )
        tifffile.imwrite(folder / f"mask{index}.tif", labels)
        tifffile.imwrite(folder / f"image{index}.tif", image)
        rows.append(
            {
                "path": str(folder / f"image{index}.tif"),
                "state": str(index),
                "modality": "bf",
                "z": 1,
                "xy": index,
                "channel": 1,
            }
        )
    pd.DataFrame(rows).to_csv(folder / "catalogue.csv", index=False)
    build_dataset(
        folder / "catalogue.csv",
        folder / "ds",
        variant="bf",
        modalities=["bf"],
        split_cfg={"key": "xy", "test": [0]},
        dataset_cfg={
            "geometry": "patches",
            "scale": 1.0,
            "patch_size": [256, 256],
            "colour": "grey",
            "normalise": "percentile",
        },
        mask_path=str(folder / "mask{state}.tif"),
        context_planes=0,
        progress=False,
    )
    return folder / "ds"


def bench_sampling(folder: Path) -> dict:
    from protoseg.dataset import open_split
    from protoseg.losses import get_loss
    from protoseg.sampling import PatchSampler
    from protoseg.transforms import Augmentation

    split = open_split(sparse_dataset(folder), "train")
    augmentation = Augmentation(True, True, 0.5, 0.1, 0.2, 0.3)
    sampler = PatchSampler(
        split,
        (256, 256),
        samples_per_epoch=256,
        batch_size=8,
        foreground_share=0.33,
        augmentation=augmentation,
    )
    start = time.perf_counter()
    draws = [sampler.draw(index) for index in range(128)]
    sampling = 128 / (time.perf_counter() - start)
    random_with_cells = np.mean(
        [draw[1].any() for i, draw in enumerate(draws) if not sampler.forced(i)]
    )

    # torch_em's rejection sampler: the share of uniformly placed patches it would accept
    # at min_fraction 0.01 (its usual setting), on these images.
    from torch_em.data.sampler import MinForegroundSampler

    torch_em_sampler = MinForegroundSampler(min_fraction=0.01, p_reject=1.0)
    accepted = np.mean(
        [
            bool(torch_em_sampler(None, draw[1]))
            for i, draw in enumerate(draws)
            if not sampler.forced(i)
        ]
    )

    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    torch.manual_seed(0)
    model = build_model(MODEL, in_channels=1)
    loss = get_loss("bce+dice")
    optimizer = torch.optim.Adam(model.parameters())
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    images = torch.from_numpy(np.stack([d[0] for d in draws[:8]]))
    masks = torch.from_numpy(np.stack([d[1] for d in draws[:8]])[:, None].astype(np.float32))

    def step():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(
                images.contiguous(memory_format=torch.channels_last)
                if precision == "bf16"
                else images
            )
        value = loss(out, masks)
        value.backward()
        optimizer.step()

    step_seconds = timed(step, repeats=4)
    return {
        "sampler_patches_per_second": sampling,
        "training_patches_per_second": 8 / step_seconds,
        "training_precision": precision,
        "sampling_share_of_step_time": (8 / sampling) / step_seconds,
        "random_patches_with_cells": float(random_with_cells),
        "torch_em_min_foreground_acceptance": float(accepted),
    }


# ---------------------------------------------------------------- 3. building the data set
CHILD = """
import resource, sys, time, json, tracemalloc
from protoseg.dataset import build_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
tracemalloc.start()
start = time.perf_counter()
build_dataset(sys.argv[1], sys.argv[2], variant="all", modalities=["brightfield", "fluorescent"],
    split_cfg={"key": "xy", "test": [10]}, mask_path=sys.argv[3], context_planes=0,
    progress=False,
    dataset_cfg={"geometry": "patches", "scale": float(sys.argv[4]), "patch_size": [256, 256],
                 "colour": "rgb", "normalise": "percentile"})
print(json.dumps({"seconds": time.perf_counter() - start, "rss_before_build_mb": before,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "python_allocations_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20}))
"""


def bench_build(folder: Path, counts: list[int], scale: float) -> list[dict]:
    paths, mask = write_inputs(folder, distinct=4, height=2048, width=2880)
    rows = []
    for count in counts:
        catalogue = study_catalogue(paths, count)
        catalogue_path = folder / f"catalogue{count}.csv"
        catalogue.to_csv(catalogue_path, index=False)
        out = folder / f"ds{count}"
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(catalogue_path), str(out), str(mask), str(scale)],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise RuntimeError(f"build of {count} images failed:\n{result.stderr[-2000:]}")
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        disk = sum(path.stat().st_size for path in (out / "shards").glob("*.npy"))
        rows.append({"images": count, "scale": scale, **measured, "disk_mb": disk / 2**20})
        subprocess.run(["rm", "-rf", str(out)], check=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-inference", action="store_true", help="build only")
    parser.add_argument("--build-counts", type=int, nargs="+", default=[28, 140, 2030])
    parser.add_argument("--build-scale", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/native_scale.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "native_bf16": cpu_has_native_bf16(),
        "date": time.strftime("%Y-%m-%d"),
    }
    previous = args.out.with_suffix(".json")
    # A part skipped keeps its numbers of the last run (each part says its own date).
    results = json.loads(previous.read_text()) if previous.is_file() else {}
    results["machine"] = machine
    if not args.skip_build:
        # First, while this process is small: a child's peak RSS starts from its parent's.
        with tempfile.TemporaryDirectory(dir=os.environ.get("PROTOSEG_BENCH_TMP")) as folder:
            print("dataset build ...", flush=True)
            results["build"] = bench_build(Path(folder), args.build_counts, args.build_scale)
    if not args.skip_inference:
        print("sliding window ...", flush=True)
        results["sliding_window"] = bench_sliding_window(2048, 2880)
        with tempfile.TemporaryDirectory() as folder:
            print("sampling ...", flush=True)
            results["sampling"] = bench_sampling(Path(folder))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(args.out, results)
    print(args.out.read_text())


def write_report(path: Path, results: dict) -> None:
    machine = results["machine"]
    window = pd.DataFrame(results["sliding_window"])
    lines = [
        "# Native-scale learning stage: measured",
        "",
        f"One run of `python benchmarks/native_scale.py` on {machine['date']}: CPU "
        f"{machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}, native "
        f"bfloat16: {machine['native_bf16']}. A shared, noisy machine: compare ratios.",
        "",
        "## Sliding-window inference (2048 x 2880 image, U-Net depth 4 / 16 channels, 1.9 M parameters)",
        "",
        window.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"Gaussian tile weights: sigma = tile / 8 (nnU-Net); a 256 px tile's corner weighs "
        f"{gaussian_weights((256, 256))[0, 0]:.1e} of its centre.",
    ]
    sampling = results["sampling"]
    lines += [
        "",
        "## Patch sampling against the training step (256 px patches, batch 8)",
        "",
        f"- PatchSampler (cut, mirror-pad, zoom, flips, turns, intensity): "
        f"{sampling['sampler_patches_per_second']:.0f} patches/s",
        f"- one training step ({sampling['training_precision']}, bce+dice): "
        f"{sampling['training_patches_per_second']:.1f} patches/s",
        f"- sampling is {100 * sampling['sampling_share_of_step_time']:.1f} % of the step time, so "
        "patches are cut in the training process (train.workers: 0) at no real cost",
        f"- random (not forced) patches holding any cell on these 0.4 %-foreground images: "
        f"{100 * sampling['random_patches_with_cells']:.0f} %; torch_em's MinForegroundSampler "
        f"(min_fraction 0.01) would accept {100 * sampling['torch_em_min_foreground_acceptance']:.0f} % "
        "of them, i.e. reject the rest and draw again, with no share of cells guaranteed per batch",
    ]
    if "build" in results:
        build = pd.DataFrame(results["build"])
        lines += [
            "",
            "## Building a patches data set from full-size images (2048 x 2880 RGB)",
            "",
            build.to_markdown(index=False, floatfmt=".2f"),
            "",
            "Scale 0.25, RGB, percentile normalisation, each build in a fresh process. The "
            "peak of Python allocations (tracemalloc, which numpy reports to) stays flat in the "
            "number of images, up to the study's 2030: the build holds one image and its "
            "one-sample shard at a time. The peak resident size is no measure here: Linux keeps a "
            "process's high-water mark across exec, so the child starts at its parent's "
            "(rss_before_build_mb) and never exceeds it. The disk grows with the images and the "
            "scale squared (float32 C x H x W per image, plus masks, labels and cell pixels).",
        ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
