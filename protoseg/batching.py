"""Prediction over a large folder in batches (``predict.images_per_job``): which input
files go to one job, one batch's prediction, and the summaries of all batches as one table.

A batch is predicted exactly as the whole folder would be (:func:`protoseg.predict.predict_files`
on the batch's files), into a scratch folder whose outputs are then moved to their final
names, so every image's outputs are the same files, byte for byte, whatever the batch size.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from protoseg.errors import ConfigError
from protoseg.io import write_csv
from protoseg.predict import PredictInput, predict_files


def plan_batches(plan: Sequence[PredictInput], images_per_job: int) -> list[list[str]]:
    """The input files of each job, in input order: about ``images_per_job`` files each.

    Files that must be predicted together stay in one batch: the planes of a focal-context
    stack (each plane's window), the scenes of one container. Batches follow the order of
    ``plan``; a group of files larger than ``images_per_job`` is one batch of its own.
    """
    if (
        isinstance(images_per_job, bool)
        or not isinstance(images_per_job, int)
        or images_per_job < 1
    ):
        raise ConfigError(
            "predict.images_per_job", f"must be a whole number >= 1, not {images_per_job!r}"
        )
    parent: dict[str, str] = {}

    def root(path: str) -> str:
        while parent.setdefault(path, path) != path:
            parent[path] = parent[parent[path]]
            path = parent[path]
        return path

    order: dict[str, None] = {}  # the input files, in plan order
    for item in plan:
        path = str(item.path)
        order.setdefault(path)
        for other in item.window:
            parent[root(str(other))] = root(path)
    groups: dict[str, list[str]] = {}
    for path in order:
        groups.setdefault(root(path), []).append(path)
    batches: list[list[str]] = []
    for group in groups.values():
        if not batches or len(batches[-1]) + len(group) > images_per_job and batches[-1]:
            batches.append([])
        batches[-1].extend(group)
    return [batch for batch in batches if batch]


def predict_batch(
    model, files: Sequence[str | Path], out_dir: str | Path, scratch: str | Path, **settings
) -> pd.DataFrame:
    """Predict ``files`` into ``scratch``, move each output to its name in ``out_dir``;
    returns the summary with the final paths. ``settings``: as
    :func:`protoseg.predict.predict_files`."""
    scratch = Path(scratch)
    if scratch.exists():
        shutil.rmtree(scratch)  # left by a killed job
    summary = predict_files(model, list(files), scratch, **settings)
    moved: dict[str, str] = {}
    kinds = [column for column in summary.columns if column.endswith("_path")]
    for column in kinds:
        for source in summary[column].dropna().unique():
            target = Path(out_dir) / Path(source).relative_to(scratch)
            os.replace(source, target)
            moved[str(source)] = str(target)
        summary[column] = summary[column].map(lambda path: moved.get(path, path))
    shutil.rmtree(scratch)
    return summary


def gather_summaries(
    batches: Sequence[str | Path], images: Sequence[str], out: str | Path
) -> pd.DataFrame:
    """One summary from the batches' summaries, its rows in the order of ``images``
    (the order :func:`protoseg.predict.predict_files` gives the folder in one job)."""
    summary = pd.concat([pd.read_csv(path) for path in batches], ignore_index=True)
    rank = {str(image): number for number, image in enumerate(images)}
    summary = summary.iloc[summary["image"].map(rank).argsort(kind="stable")]
    write_csv(out, summary)
    return summary
