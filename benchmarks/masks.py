"""Time per plane of every mask method, and the speed-up from cached SAM embeddings.

    python benchmarks/masks.py                 # writes docs/benchmarks/masks.md
    python benchmarks/masks.py --threads 2 --limit 300 --out /tmp/masks.md

Images: one synthetic fluorescent plane (protoseg.demo, the demo's generator) at the
demo size (256 x 360) and at the study's full size (2048 x 2880, cells scaled 8x).
No SAM weights can be downloaded here, so SAM runs use randomly initialised models of
the real architectures (vit_t = MobileSAM, vit_b; built like tests/conftest.py). Encoder
and decoder cost do not depend on the weights; AMG's post-processing does (random
weights keep few masks), so AMG times are lower bounds for trained models.

A case whose estimate (from the encoder and AMG times measured first) exceeds --limit
seconds is skipped and reported with its estimate instead.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import build_random_vit_t  # noqa: E402 - the tests' random-model builder

from protoseg import synth  # noqa: E402
from protoseg.config import section_defaults  # noqa: E402
from protoseg.masks import make_plane_mask, sam  # noqa: E402

DEMO_SHAPE = (256, 360)
FULL_SHAPE = (2048, 2880)
FULL_TILE, FULL_HALO = [1024, 1024], [128, 128]
PLANE = 18
DEMO_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def synthetic_plane(shape, scale):
    """A fluorescent plane and its truth, from the demo generator (cells scaled by ``scale``)."""
    demo_cfg = {**DEMO_CONFIG["demo"], "height": shape[0], "width": shape[1]}
    demo_cfg["cell_radius"] = [r * scale for r in demo_cfg["cell_radius"]]
    params = synth.params_from_config(demo_cfg)
    sample = synth.make_state(np.random.default_rng(7), shape[0], shape[1], [PLANE], params)
    return sample.fluorescent[0], sample.plane_truths[0]


def prompts_csv(path, truth):
    """One positive point at each true cell's centre: the study's annotator workflow."""
    from skimage.measure import regionprops

    rows = ["state,z,object,kind,x,y,positive,x0,y0,x1,y1"]
    for region in regionprops(truth):
        y, x = region.coords[len(region.coords) // 2]  # a pixel inside the cell
        rows.append(f"bench,{PLANE},{region.label},point,{x},{y},1,,,,")
    path.write_text("\n".join(rows) + "\n")
    return len(rows) - 1


def random_checkpoints(folder):
    """Random vit_t (with and without an AIS decoder) and vit_b checkpoints."""
    import torch
    from micro_sam.instance_segmentation import get_unetr
    from segment_anything import sam_model_registry

    paths = {}
    vit_t = build_random_vit_t()
    paths["vit_t"] = folder / "vit_t.pt"
    torch.save(vit_t.state_dict(), paths["vit_t"])
    unetr = get_unetr(vit_t.image_encoder, decoder_state=None, device="cpu")
    decoder = {k: v for k, v in unetr.state_dict().items() if not k.startswith("encoder")}
    paths["vit_t_ais"] = folder / "vit_t_ais.pt"
    torch.save({"model_state": vit_t.state_dict(), "decoder_state": decoder}, paths["vit_t_ais"])
    torch.manual_seed(0)
    paths["vit_b"] = folder / "vit_b.pt"
    torch.save(sam_model_registry["vit_b"]().state_dict(), paths["vit_b"])
    return paths


class Bench:
    def __init__(self, limit_s, workdir):
        self.limit_s = limit_s
        self.workdir = workdir
        self.rows = []

    def config(self, method, model="vit_t", checkpoint=None, cache="cache", **sam_keys):
        keys = {
            "model_type": model[:5],
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "device": "cpu",
            "embeddings_dir": None if cache is None else str(self.workdir / cache),
        }
        keys.update(sam_keys)
        return section_defaults(
            "masks",
            method=method,
            modality="fluorescent",
            sam=keys,
            classical=DEMO_CONFIG["masks"]["classical"],
            prompted={"prompts": str(self.workdir / "prompts.csv")},
        )

    def run(self, case, size, image, masks_cfg, note="", estimate_s=None, state="bench"):
        """Time one plane; skip when the estimate is over the limit. Returns seconds or None."""
        if estimate_s is not None and estimate_s > self.limit_s:
            self.rows.append(
                (
                    case,
                    size,
                    None,
                    f"skipped: estimated {estimate_s:.0f} s > {self.limit_s:.0f} s limit. {note}",
                )
            )
            print(f"{case:45s} {size:10s} skipped (estimate {estimate_s:.0f} s)", flush=True)
            return None
        start = time.perf_counter()
        mask = make_plane_mask(
            image, method=masks_cfg["method"], masks_cfg=masks_cfg, state=state, z=PLANE
        )
        seconds = time.perf_counter() - start
        self.rows.append((case, size, seconds, f"{int(mask.max())} objects. {note}".strip()))
        print(f"{case:45s} {size:10s} {seconds:8.2f} s  ({int(mask.max())} objects)", flush=True)
        return seconds


def encoder_seconds(checkpoint, model, image, tile_shape=None, halo=None):
    """One uncached embedding computation (the model already loaded)."""
    sam_keys = {
        "model_type": model[:5],
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "tile_shape": tile_shape,
        "halo": halo,
        "embeddings_dir": None,
    }
    settings = sam.settings_from_config(
        section_defaults("masks", method="sam-auto", modality="fluorescent", sam=sam_keys)["sam"]
    )
    predictor, _ = sam.load_predictor(settings)
    start = time.perf_counter()
    sam.compute_embeddings(predictor, image, None, settings)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--limit", type=float, default=300, help="skip cases estimated to take longer (s)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "masks.md")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    began = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="protoseg-bench-masks-"))
    bench = Bench(args.limit, workdir)

    demo_image, demo_truth = synthetic_plane(DEMO_SHAPE, 1)
    full_image, full_truth = synthetic_plane(FULL_SHAPE, 8)
    demo, full = "256x360", "2048x2880"
    checkpoints = random_checkpoints(workdir)

    # classical: no network.
    classical = bench.config("classical", checkpoint=None, cache=None)
    bench.run("classical", demo, demo_image, classical)

    # Areas scale with the square of the 8x larger cells.
    def scale(key, value):
        if value is None or isinstance(value, str):
            return value
        if key.endswith("_area"):
            return value * 64
        return value * 8 if key.endswith("sigma") or key == "split_depth" else value

    scaled = {key: scale(key, value) for key, value in classical["classical"].items()}
    full_classical = {**classical, "classical": {**classical["classical"], **scaled}}
    bench.run(
        "classical",
        full,
        full_image,
        full_classical,
        note="lengths (sigma, split_depth) x8 and areas x64, as the cells",
    )

    # Encoder cost alone, per model and image size (SAM resizes to 1024 on the long side).
    enc = {}
    for model in ("vit_t", "vit_b"):
        enc[model, demo] = encoder_seconds(checkpoints[model], model, demo_image)
        bench.rows.append((f"embeddings only, {model}", demo, enc[model, demo], "one encoder pass"))
        print(f"embeddings {model} {demo}: {enc[model, demo]:.2f} s", flush=True)
    enc["vit_t", full] = encoder_seconds(checkpoints["vit_t"], "vit_t", full_image)
    bench.rows.append(("embeddings only, vit_t", full, enc["vit_t", full], "one encoder pass"))
    n_tiles = int(np.ceil(FULL_SHAPE[0] / FULL_TILE[0]) * np.ceil(FULL_SHAPE[1] / FULL_TILE[1]))
    tiled_note = f"tiles {FULL_TILE}, halo {FULL_HALO}: {n_tiles} encoder passes"
    if enc["vit_t", demo] * n_tiles * 1.3 <= args.limit:
        enc["vit_t tiled", full] = encoder_seconds(
            checkpoints["vit_t"], "vit_t", full_image, FULL_TILE, FULL_HALO
        )
        bench.rows.append(
            ("embeddings only, vit_t, tiled", full, enc["vit_t tiled", full], tiled_note)
        )
    vit_b_tiled = enc["vit_b", demo] * n_tiles * 1.3
    if vit_b_tiled <= args.limit:
        enc["vit_b tiled", full] = encoder_seconds(
            checkpoints["vit_b"], "vit_b", full_image, FULL_TILE, FULL_HALO
        )
        bench.rows.append(
            ("embeddings only, vit_b, tiled", full, enc["vit_b tiled", full], tiled_note)
        )
    else:
        bench.rows.append(
            (
                "embeddings only, vit_b, tiled",
                full,
                None,
                f"skipped: estimated {vit_b_tiled:.0f} s. {tiled_note}",
            )
        )

    # sam-prompted: one positive point per true cell, first run (computes embeddings),
    # then again with the embeddings cached.
    n_demo = prompts_csv(workdir / "prompts.csv", demo_truth)
    prompted = bench.config("sam-prompted", checkpoint=checkpoints["vit_t"])
    first = bench.run(
        "sam-prompted vit_t, first run", demo, demo_image, prompted, note=f"{n_demo} point prompts"
    )
    cached = bench.run(
        "sam-prompted vit_t, embeddings cached",
        demo,
        demo_image,
        prompted,
        note=f"{n_demo} point prompts",
    )
    speedups = [("sam-prompted vit_t", demo, first, cached)]
    prompted_b = bench.config("sam-prompted", model="vit_b", checkpoint=checkpoints["vit_b"])
    bench.run(
        "sam-prompted vit_b, first run",
        demo,
        demo_image,
        prompted_b,
        note=f"{n_demo} point prompts",
    )
    n_full = prompts_csv(workdir / "prompts.csv", full_truth)
    first = bench.run(
        "sam-prompted vit_t, first run", full, full_image, prompted, note=f"{n_full} point prompts"
    )
    cached = bench.run(
        "sam-prompted vit_t, embeddings cached",
        full,
        full_image,
        prompted,
        note=f"{n_full} point prompts",
    )
    speedups.append(("sam-prompted vit_t", full, first, cached))

    # sam-auto AMG: cost grows with the point grid; measured at 8 and 16 points per side,
    # the default 32 estimated from them (4x the points of 16).
    amg = {}
    for points in (8, 16):
        cfg = bench.config(
            "sam-auto",
            checkpoint=checkpoints["vit_t"],
            cache=f"amg{points}",
            points_per_side=points,
        )
        amg[points] = bench.run(
            f"sam-auto AMG vit_t, {points} points/side, first", demo, demo_image, cfg
        )
        again = bench.run(
            f"sam-auto AMG vit_t, {points} points/side, cached", demo, demo_image, cfg
        )
        speedups.append((f"sam-auto AMG vit_t {points} points/side", demo, amg[points], again))
    per_point = max(amg[16] - amg[8], 0.0) / (16**2 - 8**2)
    amg32_demo = amg[16] + per_point * (32**2 - 16**2)
    cfg = bench.config(
        "sam-auto", checkpoint=checkpoints["vit_t"], cache="amg32", points_per_side=32
    )
    bench.run(
        "sam-auto AMG vit_t, 32 points/side (default)", demo, demo_image, cfg, estimate_s=amg32_demo
    )
    cfg = bench.config(
        "sam-auto", checkpoint=checkpoints["vit_t"], cache="amg16", points_per_side=16
    )
    bench.run(
        "sam-auto AMG vit_t, 16 points/side",
        full,
        full_image,
        cfg,
        estimate_s=amg[16] * 2,
        note="untiled: SAM sees a 1024-pixel downscale",
    )
    tiled = bench.config(
        "sam-auto",
        checkpoint=checkpoints["vit_t"],
        cache="amg16tiled",
        points_per_side=16,
        tile_shape=FULL_TILE,
        halo=FULL_HALO,
    )
    bench.run(
        "sam-auto AMG vit_t, 16 points/side, tiled",
        full,
        full_image,
        tiled,
        estimate_s=amg[16] * n_tiles * 1.3,
        note=tiled_note,
    )
    cfg = bench.config(
        "sam-auto", model="vit_b", checkpoint=checkpoints["vit_b"], cache="amgb", points_per_side=16
    )
    bench.run(
        "sam-auto AMG vit_b, 16 points/side",
        demo,
        demo_image,
        cfg,
        estimate_s=amg[16] - enc["vit_t", demo] + enc["vit_b", demo],
    )

    # sam-auto AIS (random decoder).
    ais = bench.config("sam-auto", checkpoint=checkpoints["vit_t_ais"], cache="ais", mode="ais")
    first = bench.run("sam-auto AIS vit_t, first run", demo, demo_image, ais)
    cached = bench.run("sam-auto AIS vit_t, embeddings cached", demo, demo_image, ais)
    speedups.append(("sam-auto AIS vit_t", demo, first, cached))
    bench.run(
        "sam-auto AIS vit_t, first run",
        full,
        full_image,
        ais,
        estimate_s=first * 3,
        note="untiled: decoder output resized to the full image",
    )

    load = (load_at_start, os.getloadavg()[0])
    write_report(args.out, bench.rows, speedups, args.threads, time.perf_counter() - began, load)
    print(f"wrote {args.out} after {time.perf_counter() - began:.0f} s")


def _seconds(value):
    return "-" if value is None else f"{value:.2f}"


def write_report(path, rows, speedups, threads, total_s, load):
    import micro_sam
    import torch

    from protoseg.io import write_text

    lines = [
        "# Mask methods: time per plane",
        "",
        "Written by `python benchmarks/masks.py` (do not edit by hand); "
        f"{datetime.date.today().isoformat()}, total {total_s / 60:.1f} min.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with "
        f"other jobs, torch {torch.__version__} on the CPU with {threads} threads, micro-sam {micro_sam.__version__}. "
        "Wall-clock seconds of one `make_plane_mask` call each (model already loaded), one run per case. "
        f"The machine is shared: its 1-minute load average was {load[0]:.1f} at the start and "
        f"{load[1]:.1f} at the end, so on {os.cpu_count()} cores this run got roughly "
        f"{min(1.0, os.cpu_count() / max(load[0], load[1], 1.0)):.0%} of the CPU time an idle machine would give: "
        "compare the cases with each other, and expect an idle machine to be faster.",
        "",
        "SAM models are randomly initialised (no weights can be downloaded here): encoder and decoder "
        "cost is that of the real architectures, but AMG's post-processing depends on how many masks "
        "pass its quality filters, few with random weights, so AMG times are lower bounds. "
        "vit_h (the study's model, 632 M parameters) was not run: its encoder costs several times "
        "vit_b's per pass.",
        "",
        "| case | image | s / plane | notes |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {case} | {size} | {_seconds(seconds)} | {note} |" for case, size, seconds, note in rows
    ]
    lines += [
        "",
        "## Embedding reuse",
        "",
        "Second run of the same plane with the image embeddings read from the on-disk cache "
        "(`masks.sam.embeddings_dir`), against the first run that computes them.",
        "",
        "| method | image | first (s) | cached (s) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for name, size, first, cached in speedups:
        ratio = "-" if not first or not cached else f"{first / cached:.1f}x"
        lines.append(f"| {name} | {size} | {_seconds(first)} | {_seconds(cached)} | {ratio} |")
    write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
