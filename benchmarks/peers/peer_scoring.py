"""What every peer benchmark shares: a protoseg data set's images as protoseg prepares
them, and protoseg's own scores with the keys of ``benchmarks/realdata_ablation.py``, so
the peers' rows and protoseg's tabulate together (``docs/peers.md``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protoseg import metrics


def load_split(dataset_dir: Path, split: str, max_images: int | None) -> list[dict]:
    """The images of ``split``: protoseg's prepared input (H x W float32), the image as
    stored (``raw``), the instance labels at the image's own size, and the manifest row."""
    # Imported here: scoring alone (a peer's run on a GPU machine) needs metrics only.
    from protoseg.dataset import read_manifest, read_record
    from protoseg.io import read_image
    from protoseg.transforms import label_image, prepare_image

    record = read_record(dataset_dir)
    if record.context_planes:
        raise SystemExit("the peers take one plane: use a variant without focal context")
    manifest = read_manifest(dataset_dir)
    rows = manifest[manifest["split"] == split]
    if max_images is not None:
        rows = rows.iloc[:max_images]
    # The manifest names masks relative to where snakemake ran: RUN/results/datasets/X.
    run_dir = dataset_dir.parents[2]
    images = []
    for _, row in rows.iterrows():
        raw = read_image(row["image"])
        prepared = prepare_image(raw, record.preprocessing, row["image"])
        if prepared.shape[0] != 1:
            raise SystemExit(f"expected one grey channel, got {prepared.shape[0]}")
        mask_path = run_dir / str(row["mask"])
        labels = label_image(read_image(mask_path), mask_path)
        if labels.shape != prepared.shape[1:]:
            # Scores are made at the image's own size (scale 1 in protoseg's config).
            raise SystemExit(f"{row['image']}: prepared {prepared.shape[1:]}, mask {labels.shape}")
        images.append({"image": prepared[0], "raw": raw, "labels": labels, "row": row.to_dict()})
    return images


def image_scores(cells: np.ndarray, true_labels: np.ndarray) -> dict:
    """protoseg's per-image scores: pixel counts of cells vs truth, and instance scores."""
    counts = metrics.confusion(cells > 0, true_labels > 0)
    return {"counts": [int(c) for c in counts]} | metrics.instance_scores(cells, true_labels)


def pooled(rows: list[dict]) -> dict:
    """The scores of ``benchmarks/realdata_ablation.py`` from per-image rows."""
    counts = np.sum([row["counts"] for row in rows], axis=0)
    instances = metrics.pooled_instance_scores(
        [r["n_true"] for r in rows], [r["n_pred"] for r in rows], [r["tp50"] for r in rows]
    )
    return {
        "pixel_f1": metrics.f1(*(int(c) for c in counts)),
        "sa50_pooled": instances["sa50"],
        "matched_f1_pooled": instances["matched_f1"],
        "sa50_mean": float(np.mean([r["sa50"] for r in rows])),
        "msa_mean": float(np.mean([r["msa"] for r in rows])),
        "n_pred": [int(r["n_pred"]) for r in rows],
        "n_true": [int(r["n_true"]) for r in rows],
    }
