"""The image catalogue: one row per raw image, checked before any work is done.

Builds on :mod:`protoseg.naming` (which only reads names) by opening every file:
unreadable or truncated images, and images of one state with different shapes,
stop the run here with a message naming the file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from protoseg import naming
from protoseg.errors import InputError
from protoseg.io import image_header

STANDARD_COLUMNS = [
    "path",
    "day",
    "time",
    "channel",
    "modality",
    "xy",
    "z",
    "state",
    "height",
    "width",
    "channels",
    "dtype",
]


def describe_images(records: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """Add height, width, channels and dtype read from each file's header."""
    shapes = []
    for path in tqdm(records["path"], desc="catalogue", unit="image", disable=not progress):
        shape, dtype = image_header(path)
        if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4):
            raise InputError(
                path, f"channels-first image of shape {shape}; store colour as the last axis"
            )
        height, width = shape[:2]
        shapes.append(
            {
                "height": height,
                "width": width,
                "channels": shape[2] if len(shape) == 3 else 1,
                "dtype": dtype,
            }
        )
    return pd.concat([records.reset_index(drop=True), pd.DataFrame(shapes)], axis=1)


def check_shapes(catalogue: pd.DataFrame) -> None:
    """All images of a state (both channels, all planes) must share height and width."""
    for state, group in catalogue.groupby("state", sort=True):
        sizes = group[["height", "width"]].drop_duplicates()
        if len(sizes) > 1:
            reference = group.iloc[0]
            odd = group[
                (group["height"] != reference["height"]) | (group["width"] != reference["width"])
            ].iloc[0]
            raise InputError(
                odd["path"],
                f"shape {odd['height']}x{odd['width']} differs from the other images of state {state} "
                f"({reference['height']}x{reference['width']}, e.g. {reference['path']})",
            )


def build_catalogue(
    paths: list[str | Path], raw_dir: str | Path, data_cfg: dict, progress: bool = True
) -> pd.DataFrame:
    """Parse, open and check every image; return the catalogue table."""
    if not paths:
        raise InputError(raw_dir, "no images found (check data.raw_dir and data.pattern)")
    if data_cfg.get("sample_sheet"):
        # The sheet, not the names, says what each file is.
        records = naming.read_sample_sheet(data_cfg["sample_sheet"], data_cfg, raw_dir)
        records = records[records["path"].isin([str(path) for path in paths])].reset_index(
            drop=True
        )
    else:
        records = naming.parse_paths(paths, raw_dir, data_cfg)
    naming.check_complete(records, data_cfg, data_cfg.get("sample_sheet") or raw_dir)
    catalogue = describe_images(records, progress=progress)
    check_shapes(catalogue)
    ordered = [c for c in STANDARD_COLUMNS if c in catalogue.columns]
    return catalogue[ordered + [c for c in catalogue.columns if c not in ordered]]
