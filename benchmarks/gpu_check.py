"""The GPU check of issue 22: one command, under 8 minutes on one H100/H200, offline.

    PYTHONPATH=. python benchmarks/gpu_check.py                  # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_check.py --smoke          # CPU, tiny sizes, seconds

What it measures (docs/benchmarks/gpu.md), written to ``docs/benchmarks/gpu_check.json`` and
``gpu_check.md`` (``--smoke``: ``gpu_check-smoke.*`` under ``--out``):

1. **Steps.** One training step (forward, BCE, backward, Adam; a GradScaler under fp16) of
   the study's U-Net (depth 4, 64 channels) at 512 x 512, batch 16, on tensors already on
   the device: fp32, fp16 + GradScaler, bf16, bf16 + channels_last, and that + torch.compile;
   MONAI's BasicUNet at the same parameter count beside it (where monai imports). Model
   FLOPs of forward + backward from ``torch.utils.flop_counter.FlopCounterMode``; MFU
   against ``--peak-flops`` (default 989e12, an H100/H200's dense bf16). The row the
   pipeline's defaults pick (``precision: auto``, ``compile: auto``) is marked.
2. **A real epoch.** ``protoseg.train.train_model`` with the study's configuration (and the
   pipeline's defaults for device, precision, compile, workers) for 2 epochs over a
   synthetic data set of ``--epoch-images`` (2030) samples of 512 x 512 in memory-mapped
   shards, made by ``protoseg.dataset.build_dataset`` and scaled up; the second epoch
   (compilation done, the first checkpoint written meanwhile) against the compute-only
   rate of step 1's default row.
3. **aiSEGcell.** Where ``--aisegcell`` (default ``/work/shared/data/aisegcell``) exists and
   snakemake imports: its data set built by the workflow (``all_dataset``), then one model
   (first variant, first loss) trained by ``train_model`` and scored by ``evaluate_model``
   on the GPU, with the seconds of each.

Packages it needs and the machine lacks (jsonschema, monai, snakemake, python-elf, ...)
are installed first from ``--wheels`` (default ``.whl/``) with ``pip --no-index``; a part
whose packages are missing is skipped and says so in the results.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks"
# import name -> distribution in the wheel folder
NEEDED = {"jsonschema": "jsonschema", "tifffile": "tifffile", "skimage": "scikit-image"}
OPTIONAL = {"monai": "monai", "snakemake": "snakemake", "elf": "python-elf"}
STUDY = {
    "size": 512,
    "batch": 16,
    "depth": 4,
    "channels": 64,
    "monai": (64, 128, 256, 512, 1024, 64),
}
SMOKE = {"size": 32, "batch": 2, "depth": 2, "channels": 4, "monai": (4, 4, 8, 16, 32, 4)}
# name, autocast precision, channels_last, compile
PROTOSEG_CASES = [
    ("fp32", "fp32", False, False),
    ("fp16 + GradScaler", "fp16", True, False),
    ("bf16", "bf16", False, False),
    ("bf16 + channels_last", "bf16", True, False),
    ("bf16 + channels_last + compile", "bf16", True, True),
]
MONAI_CASES = [c for c in PROTOSEG_CASES if not c[3]]


def ensure_packages(wheels: Path) -> dict:
    """Install what does not import from ``wheels`` (offline); the import name -> whether
    it imports now."""
    found = {}
    for module, dist in {**NEEDED, **OPTIONAL}.items():
        try:
            importlib.import_module(module)
            found[module] = True
            continue
        except ImportError:
            pass
        if wheels.is_dir():
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                 "--find-links", str(wheels), dist],
                check=False,
            )  # fmt: skip
            importlib.invalidate_caches()
        try:
            importlib.import_module(module)
            found[module] = True
        except ImportError:
            found[module] = False
            print(f"{module}: not installed and not in {wheels}; its part is skipped", flush=True)
    return found


def build_network(kind: str, sizes: dict):
    if kind == "protoseg":
        from protoseg.model import UNet

        return UNet(
            in_channels=3, out_channels=1, depth=sizes["depth"],
            base_channels=sizes["channels"], batch_norm=True,
        )  # fmt: skip
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=sizes["monai"])


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(model, images, masks) -> float:
    """Model FLOPs of one forward + backward (fp32, counted, not timed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), masks)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def time_case(kind, case, sizes, device, warmup: int, steps: int) -> dict:
    """Images per second of ``steps`` training steps after ``warmup`` (compilation there)."""
    import torch

    from protoseg.device import autocast_dtype

    name, precision, channels_last, compiled = case
    torch.manual_seed(0)
    model = build_network(kind, sizes).to(device).train()
    batch, size = sizes["batch"], sizes["size"]
    images = torch.rand(batch, 3, size, size, device=device)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    flops = step_flops(model, images, masks) / batch
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model, dynamic=False) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = autocast_dtype(precision)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = forward(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), masks)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    ips = batch * steps / (time.perf_counter() - started)
    return {
        "network": kind, "case": name, "precision": precision, "channels_last": channels_last,
        "compile": compiled, "images_per_s": ips, "gflop_per_image": flops / 1e9,
        "warmup_seconds": warm_seconds,
    }  # fmt: skip


def step_table(args, sizes, device, have_monai: bool) -> list[dict]:
    import torch

    cases = [("protoseg", c) for c in PROTOSEG_CASES]
    cases += [("monai", c) for c in MONAI_CASES] if have_monai else []
    rows = []
    for kind, case in cases:
        if device.type == "cpu" and (case[1] == "fp16" or (case[3] and not args.compile_on_cpu)):
            continue  # no fp16 on a CPU; compiling there takes minutes
        try:
            row = time_case(kind, case, sizes, device, args.warmup, args.steps)
        except Exception as error:  # one failing case must not lose the others
            row = {
                "network": kind,
                "case": case[0],
                "error": f"{type(error).__name__}: {error}"[:300],
            }
        if "images_per_s" in row:
            row["mfu"] = row["images_per_s"] * row["gflop_per_image"] * 1e9 / args.peak_flops
        print(row, flush=True)
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def default_case(device) -> str:
    """The step-table row the pipeline's defaults pick on ``device``."""
    from protoseg.device import resolve_compile, resolve_precision, uses_channels_last

    precision = resolve_precision("auto", device.type)
    name = "fp32" if precision == "fp32" else (
        "fp16 + GradScaler" if precision == "fp16" else
        "bf16 + channels_last" if uses_channels_last(precision) else "bf16"
    )  # fmt: skip
    return name + (" + compile" if resolve_compile("auto", device.type) else "")


def scaled_dataset(folder: Path, samples: int, size: int) -> Path:
    """A data set of ``samples`` train samples of ``size`` x ``size``: 7 images built by
    :func:`protoseg.dataset.build_dataset` (its format, whatever it is), their shards then
    tiled up to ``samples`` rows."""
    import numpy as np
    import pandas as pd
    import tifffile

    from protoseg import dataset as datasets

    rng = np.random.default_rng(0)
    rows, raw = [], folder / "raw"
    raw.mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    for xy in (1, 2):
        disc = (yy - size / 2) ** 2 + (xx - size / 3) ** 2 < (size / 5) ** 2
        tifffile.imwrite(raw / f"s{xy}.tif", disc.astype(np.uint16))
        for z in range(12, 26, 2):
            image = (60 + 120 * disc[..., None] + rng.normal(0, 10, (size, size, 3))).clip(0, 255)
            path = raw / f"c1xy{xy}z{z}.tif"
            tifffile.imwrite(path, image.astype(np.uint8))
            rows.append({"path": str(path), "channel": 1, "modality": "brightfield", "xy": xy,
                         "z": z, "state": f"s{xy}"})  # fmt: skip
    out = folder / "ds"
    datasets.build_dataset(
        pd.DataFrame(rows), out, variant="bf", modalities=["brightfield"],
        split_cfg={"key": "xy", "test": [2], "validation": []},
        dataset_cfg={"size": [size, size], "colour": "rgb", "shard_size": 64},
        mask_path=str(raw / "{state}.tif"), context_planes=0, progress=False,
    )  # fmt: skip
    manifest = pd.read_csv(out / datasets.MANIFEST_NAME)
    seed = manifest[manifest["split"] == "train"].reset_index(drop=True)
    shard = str(seed["shard"].iloc[0])
    image_file, mask_file = datasets.shard_files(out, shard)
    images, masks = np.load(image_file), np.load(mask_file)
    shard_size, new_rows = 64, []
    for index, start in enumerate(range(0, samples, shard_size)):
        count = min(shard_size, samples - start)
        name = f"scaled-{index:05d}"
        files = datasets.shard_files(out, name)
        for source, target in zip((images, masks), files, strict=True):
            array = np.lib.format.open_memmap(
                target, mode="w+", dtype=source.dtype, shape=(count, *source.shape[1:])
            )
            for row in range(count):
                array[row] = source[(start + row) % len(source)]
            array.flush()
            del array
        for row in range(count):
            entry = seed.iloc[(start + row) % len(seed)].to_dict()
            new_rows.append({**entry, "sample": start + row, "shard": name, "row": row})
    others = manifest[manifest["split"] != "train"]
    pd.concat([pd.DataFrame(new_rows), others]).to_csv(out / datasets.MANIFEST_NAME, index=False)
    info = json.loads((out / datasets.INFO_NAME).read_text())
    info["samples"]["train"] = samples
    (out / datasets.INFO_NAME).write_text(json.dumps(info))
    return out


def real_epoch(args, sizes, compute_ips: float | None) -> dict:
    """Two epochs of train_model; the second's rate against the compute-only one."""
    from protoseg.train import train_model

    work = Path(tempfile.mkdtemp(prefix="protoseg-gpu-check-"))
    try:
        started = time.perf_counter()
        data = scaled_dataset(work, args.epoch_images, sizes["size"])
        build_seconds = time.perf_counter() - started
        train_cfg = {
            "epochs": 2,
            "batch_size": sizes["batch"],
            "augment": {"flip": True, "rotate90": True},
        }
        started = time.perf_counter()
        history = train_model(
            data, work / "model", model_cfg={"depth": sizes["depth"],
            "base_channels": sizes["channels"], "batch_norm": True},
            train_cfg=train_cfg, loss="bce", progress=False,
        )  # fmt: skip
        total = time.perf_counter() - started
        seconds = float(history["seconds"].iloc[-1])
        rate = args.epoch_images / seconds
        return {
            "images": args.epoch_images, "size": sizes["size"], "batch": sizes["batch"],
            "dataset_build_seconds": build_seconds, "first_epoch_seconds": float(history["seconds"].iloc[0]),
            "epoch_seconds": seconds, "images_per_s": rate, "run_seconds": total,
            "compute_only_images_per_s": compute_ips,
            "share_of_compute_only": rate / compute_ips if compute_ips else None,
        }  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def aisegcell_run(args) -> dict:
    """The workflow builds aiSEGcell's data set; one model trained and scored here."""
    from protoseg.config import load_config
    from protoseg.evaluate import evaluate_model
    from protoseg.train import train_model

    config_file = REPO / "config" / "aisegcell.yaml"
    command = [sys.executable, "-m", "snakemake", "--configfile", str(config_file), "-c",
               str(args.cores), "all_dataset"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    dataset_seconds = time.perf_counter() - started
    config = load_config([config_file])
    variant = sorted((REPO / "results" / "datasets").glob("*/manifest.csv"))[0].parent
    loss = config["train"]["losses"][0]
    model_dir = Path(tempfile.mkdtemp(prefix="protoseg-aisegcell-")) / f"{variant.name}-{loss}"
    started = time.perf_counter()
    history = train_model(variant, model_dir, model_cfg=config["model"], train_cfg=config["train"],
                          loss=loss, progress=False, inference=config["evaluate"])  # fmt: skip
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    table, summary = evaluate_model(model_dir / "model.pt", variant, **config["evaluate"])
    return {
        "model": f"{variant.name}-{loss}", "dataset_seconds": dataset_seconds,
        "train_seconds": train_seconds, "evaluate_seconds": time.perf_counter() - started,
        "epochs": len(history), "test_images": len(table),
        "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
    }  # fmt: skip


def describe(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.machine()} CPU, torch {torch.__version__}"


def render(results: dict) -> str:
    lines = [f"# GPU check ({results['hardware']}, {results['date']})", "",
             f"Step of {results['sizes']}; MFU against {results['peak_flops']:.3g} FLOP/s. "
             f"Pipeline default: **{results['default_case']}**.", "",
             "| network | precision and layout | images/s | GFLOP/image | MFU |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for row in results["steps"]:
        if "error" in row:
            lines.append(f"| {row['network']} | {row['case']} | failed: {row['error']} | | |")
            continue
        mark = (
            " (default)"
            if row["network"] == "protoseg" and row["case"] == results["default_case"]
            else ""
        )
        lines.append(
            f"| {row['network']} | {row['case']}{mark} | {row['images_per_s']:.1f} | "
            f"{row['gflop_per_image']:.1f} | {100 * row['mfu']:.1f} % |"
        )
    lines += ["", "## Real epoch", "", "```", json.dumps(results.get("epoch"), indent=1), "```"]
    lines += [
        "",
        "## aiSEGcell",
        "",
        "```",
        json.dumps(results.get("aisegcell"), indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 step: a CPU test")
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl")
    parser.add_argument("--peak-flops", type=float, default=989e12)
    parser.add_argument("--epoch-images", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--aisegcell", type=Path, default=Path("/work/shared/data/aisegcell"))
    parser.add_argument("--cores", type=int, default=16)
    parser.add_argument("--compile-on-cpu", action="store_true")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else STUDY
    args.epoch_images = args.epoch_images or (8 if args.smoke else 2030)
    args.steps = args.steps or (1 if args.smoke else 30)
    args.warmup = args.warmup or (1 if args.smoke else 5)
    have = ensure_packages(args.wheels)
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results = {"hardware": describe(device), "date": time.strftime("%Y-%m-%d"),
               "sizes": sizes, "peak_flops": args.peak_flops, "packages": have,
               "default_case": default_case(device), "smoke": args.smoke}  # fmt: skip
    results["steps"] = step_table(args, sizes, device, have["monai"])
    default = [
        r
        for r in results["steps"]
        if r["network"] == "protoseg" and r["case"] == results["default_case"]
    ]
    compute_ips = default[0].get("images_per_s") if default else None
    results["epoch"] = real_epoch(args, sizes, compute_ips)
    print(results["epoch"], flush=True)
    if args.smoke or not args.aisegcell.is_dir() or not have["snakemake"]:
        results["aisegcell"] = "skipped (smoke, no data folder or no snakemake)"
    else:
        try:
            results["aisegcell"] = aisegcell_run(args)
        except Exception as error:
            results["aisegcell"] = f"failed: {type(error).__name__}: {error}"[:500]
    print(results["aisegcell"], flush=True)
    stem = "gpu_check-smoke" if args.smoke else "gpu_check"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / f"{stem}.md").write_text(render(results))
    return results


if __name__ == "__main__":
    main()
