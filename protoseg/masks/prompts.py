"""Prompts for the ``sam-prompted`` mask method: reading, checking, combining results.

The prompts file is a CSV with one row per prompt (docs/masks.md):

    state,z,object,kind,x,y,positive,x0,y0,x1,y1
    day1t1xy1,18,1,point,120,85,1,,,,
    day1t1xy1,18,1,point,150,60,0,,,,
    day1t1xy1,18,2,box,,,,30,40,90,110

``object`` groups the prompts of one cell on one plane (the study's annotator workflow:
positive points on the cell, negative points on the background, then commit). Points use
``x``, ``y`` and ``positive`` (1 on the cell, 0 on background); boxes use ``x0, y0, x1, y1``
(pixel columns and rows, corners included). An object takes at most one box and any
number of points. Coordinates are pixels of the full image, x = column, y = row.

napari's point-layer CSV export (columns ``axis-0`` = row, ``axis-1`` = column and the
micro-sam annotator's ``label`` = positive/negative) is accepted as well once ``state``,
``z`` and ``object`` columns have been added to it; ``kind`` then defaults to point.

The ``sam-prompted`` method (:class:`SamPromptedMethod`) reads the file named by
``masks.prompted.prompts`` (its input, so editing it reruns the masks), checks every
prompt against the states and planes before any work and against the image sizes before
any plane is segmented, and segments each object with SAM. A plane without prompts gets
an empty mask and a warning. Nothing here needs torch: SAM itself is called from
:mod:`protoseg.masks.sam`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from protoseg.errors import ConfigError, InputError
from protoseg.masks import register_method, sam

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("state", "z", "object")
POINT_COLUMNS = ("x", "y", "positive")
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
KINDS = ("point", "box")
# The CSV's first data row is line 2 (line 1 is the header).
FIRST_DATA_LINE = 2


@dataclass(frozen=True)
class ObjectPrompts:
    """The prompts of one object on one plane, in micro-sam's (row, column) order."""

    object_id: str
    points: np.ndarray  # (n, 2) float: row, column
    labels: np.ndarray  # (n,) int: 1 positive, 0 negative
    box: np.ndarray | None  # (4,) float: row0, col0, row1, col1
    lines: tuple[int, ...]  # CSV lines these prompts came from, for error messages


def _lines(rows: pd.DataFrame) -> str:
    lines = rows["line"].tolist()
    shown = ", ".join(str(line) for line in lines[:5])
    return (
        f"line {shown}" if len(lines) == 1 else f"lines {shown}{' ...' if len(lines) > 5 else ''}"
    )


def _from_napari_points(table: pd.DataFrame) -> pd.DataFrame:
    """Map napari's point-layer columns onto ours (axis-0 = row, axis-1 = column)."""
    renames = {"axis-0": "y", "axis-1": "x"}
    table = table.rename(
        columns={old: new for old, new in renames.items() if new not in table.columns}
    )
    if "label" in table.columns and "positive" not in table.columns:
        label = table["label"].astype(str).str.strip().str.lower()
        table = table.assign(positive=label.map({"positive": 1, "negative": 0, "1": 1, "0": 0}))
    if "kind" not in table.columns:
        table = table.assign(kind="point")
    return table


def read_prompts(path: str | Path) -> pd.DataFrame:
    """Read and check a prompts CSV; one row per prompt plus its CSV ``line``.

    Raises :class:`InputError` naming the file and line for a missing column, an unknown
    kind, a missing or non-numeric coordinate, a ``positive`` other than 0/1, or a box
    whose corners are not ordered.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "prompts file not found (config masks.prompted.prompts)")
    try:
        table = pd.read_csv(path, dtype={"state": str, "object": str, "kind": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(path, f"not a readable CSV ({error})") from error
    table.columns = [str(column).strip() for column in table.columns]
    table = _from_napari_points(table)
    missing = [column for column in (*REQUIRED_COLUMNS, "kind") if column not in table.columns]
    if missing:
        raise InputError(
            path,
            f"missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)} + kind and coordinates (docs/masks.md)",
        )
    if table.empty:
        raise InputError(path, "no prompts in the file")
    table = table.assign(line=np.arange(len(table)) + FIRST_DATA_LINE)
    for column in (*POINT_COLUMNS, *BOX_COLUMNS):
        if column not in table.columns:
            table[column] = np.nan
    table = table.assign(
        kind=table["kind"].astype(str).str.strip().str.lower(),
        state=table["state"].astype(str).str.strip(),
        object=table["object"].astype(str).str.strip(),
    )

    z = pd.to_numeric(table["z"], errors="coerce")
    bad = table[z.isna() | (z != z.round())]
    if len(bad):
        raise InputError(
            path, f"{_lines(bad)}: z must be a whole number (a plane), got {bad['z'].iloc[0]!r}"
        )
    table["z"] = z.astype(int)

    bad = table[~table["kind"].isin(KINDS)]
    if len(bad):
        raise InputError(
            path, f"{_lines(bad)}: unknown kind {bad['kind'].iloc[0]!r}; use one of {list(KINDS)}"
        )

    numbers = table[[*POINT_COLUMNS, *BOX_COLUMNS]].apply(pd.to_numeric, errors="coerce")
    for kind, columns in (("point", POINT_COLUMNS), ("box", BOX_COLUMNS)):
        bad = table[(table["kind"] == kind) & numbers[list(columns)].isna().any(axis=1)]
        if len(bad):
            raise InputError(path, f"{_lines(bad)}: a {kind} needs numbers in {list(columns)}")
    table = table.assign(**{column: numbers[column].astype(float) for column in numbers.columns})

    points = table["kind"] == "point"
    bad = table[points & ~table["positive"].isin([0, 1])]
    if len(bad):
        raise InputError(path, f"{_lines(bad)}: positive must be 1 (on the cell) or 0 (background)")
    boxes = table["kind"] == "box"
    bad = table[boxes & ((table["x1"] < table["x0"]) | (table["y1"] < table["y0"]))]
    if len(bad):
        raise InputError(path, f"{_lines(bad)}: a box needs x0 <= x1 and y0 <= y1")
    return table


def check_prompts(
    prompts: pd.DataFrame,
    path: str | Path,
    *,
    planes: list[int],
    states: list[str] | None = None,
) -> None:
    """Check that every prompt names a known state and plane and every object can be segmented.

    An object needs a box or at least one positive point (negative points alone describe
    background, not a cell) and takes at most one box. ``states=None`` skips the state
    check (used when the full state list is not known).
    """
    if states is not None:
        bad = prompts[~prompts["state"].isin([str(state) for state in states])]
        if len(bad):
            raise InputError(
                path,
                f"{_lines(bad)}: state '{bad['state'].iloc[0]}' does not exist; known states: {', '.join(map(str, states))}",
            )
    bad = prompts[~prompts["z"].isin([int(z) for z in planes])]
    if len(bad):
        raise InputError(
            path,
            f"{_lines(bad)}: plane z{bad['z'].iloc[0]} does not exist; planes: {', '.join(f'z{z}' for z in planes)}",
        )
    for (state, z, object_id), rows in prompts.groupby(["state", "z", "object"], sort=False):
        n_boxes = int((rows["kind"] == "box").sum())
        n_positive = int(((rows["kind"] == "point") & (rows["positive"] == 1)).sum())
        if n_boxes > 1:
            raise InputError(
                path,
                f"{_lines(rows)}: object {object_id} of {state} z{z} has {n_boxes} boxes; one box per object",
            )
        if n_boxes == 0 and n_positive == 0:
            raise InputError(
                path,
                f"{_lines(rows)}: object {object_id} of {state} z{z} has only negative points; "
                "add a positive point on the cell or a box",
            )


def check_inside(prompts: pd.DataFrame, path: str | Path, shape: tuple[int, int]) -> None:
    """Check that every point and box lies inside an image of ``shape`` (rows, columns)."""
    height, width = shape[:2]
    xs = pd.concat([prompts["x"], prompts["x0"], prompts["x1"]], axis=1)
    ys = pd.concat([prompts["y"], prompts["y0"], prompts["y1"]], axis=1)
    outside = ((xs < 0) | (xs > width - 1)).any(axis=1) | ((ys < 0) | (ys > height - 1)).any(axis=1)
    bad = prompts[outside]
    if len(bad):
        raise InputError(
            path,
            f"{_lines(bad)}: prompt lies outside the {width} x {height} (width x height) image",
        )


def plane_objects(prompts: pd.DataFrame, state: str, z: int) -> list[ObjectPrompts]:
    """The objects prompted on one plane, in the order they first appear in the file."""
    rows = prompts[(prompts["state"] == str(state)) & (prompts["z"] == int(z))]
    objects = []
    for object_id, group in rows.groupby("object", sort=False):
        points = group[group["kind"] == "point"]
        boxes = group[group["kind"] == "box"]
        box = None
        if len(boxes):
            first = boxes.iloc[0]
            box = np.array([first["y0"], first["x0"], first["y1"], first["x1"]], dtype=float)
        objects.append(
            ObjectPrompts(
                object_id=str(object_id),
                points=points[["y", "x"]].to_numpy(dtype=float).reshape(-1, 2),
                labels=points["positive"].to_numpy(dtype=int),
                box=box,
                lines=tuple(int(line) for line in group["line"]),
            )
        )
    return objects


def combine_object_masks(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """One uint16 label image from one binary mask per object.

    Object ``i`` (0-based, in the given order) gets label ``i + 1`` where it is drawn.
    Larger objects are drawn first so that a small cell that SAM also covered with a
    larger neighbour's mask stays visible. Objects with empty masks leave no label; labels
    are then renumbered 1..n in object order, so the result has no gaps.
    """
    labels = np.zeros(shape[:2], dtype=np.uint16)
    if len(masks) >= np.iinfo(np.uint16).max:
        raise ValueError(f"too many objects for uint16 labels: {len(masks)}")
    areas = [int(np.count_nonzero(mask)) for mask in masks]
    for index in sorted(range(len(masks)), key=lambda i: -areas[i]):
        labels[np.asarray(masks[index], dtype=bool)] = index + 1
    present = np.unique(labels[labels > 0])
    lookup = np.zeros(len(masks) + 1, dtype=np.uint16)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.uint16)
    return lookup[labels]


# ---------------------------------------------------------------- SAM, one object at a time
def segment_object(predictor, prompts: ObjectPrompts, image_embeddings) -> np.ndarray:
    """Binary mask of one prompted object (micro-sam's prompt-based segmentation)."""
    from micro_sam import prompt_based_segmentation as pbs

    has_points = len(prompts.points) > 0
    if prompts.box is not None and has_points:
        mask = pbs.segment_from_box_and_points(
            predictor,
            prompts.box,
            prompts.points,
            prompts.labels,
            image_embeddings=image_embeddings,
        )
    elif prompts.box is not None:
        mask = pbs.segment_from_box(predictor, prompts.box, image_embeddings=image_embeddings)
    else:
        mask = pbs.segment_from_points(
            predictor, prompts.points, prompts.labels, image_embeddings=image_embeddings
        )
    return np.asarray(mask).squeeze().astype(bool)


def segment_prompted(
    image: np.ndarray,
    objects: list[ObjectPrompts],
    settings: sam.SamSettings,
    embeddings: Path | None = None,
) -> np.ndarray:
    """One plane's prompted objects, each segmented by SAM, combined into uint16 labels."""
    predictor, _ = sam.load_predictor(settings)
    image_embeddings = sam.compute_embeddings(predictor, np.asarray(image), embeddings, settings)
    masks = []
    for prompts in objects:
        mask = segment_object(predictor, prompts, image_embeddings)
        if not mask.any():
            log.warning(
                "object %s (CSV lines %s): SAM returned an empty mask",
                prompts.object_id,
                list(prompts.lines),
            )
        masks.append(mask)
    return combine_object_masks(masks, image.shape[:2])


@register_method("sam-prompted")
class SamPromptedMethod(sam.SamMethod):
    """Each prompted object of a plane segmented by SAM (:func:`segment_prompted`)."""

    @property
    def prompts_path(self) -> Path:
        path = self.masks_cfg["prompted"]["prompts"]
        if not path:
            raise ConfigError(
                "masks.prompted.prompts",
                "must name a prompts CSV when masks.method is 'sam-prompted' (docs/masks.md)",
            )
        return Path(path)

    @functools.cached_property
    def prompts(self) -> pd.DataFrame:
        return read_prompts(self.prompts_path)

    def plane_prompts(self, state: str, z: int) -> pd.DataFrame:
        return self.prompts[(self.prompts["state"] == str(state)) & (self.prompts["z"] == int(z))]

    def inputs(
        self, state: str, planes: Sequence[int], image_paths: Sequence[str | Path | None]
    ) -> list[str]:
        path = self.masks_cfg["prompted"]["prompts"]
        return [str(path)] if path else []  # unset: check() names the key

    def check(
        self,
        state: str,
        planes: Sequence[int],
        states: Sequence[str] | None,
        image_paths: Sequence[str | Path | None],
    ) -> None:
        super().check(state, planes, states, image_paths)
        check_prompts(
            self.prompts,
            self.prompts_path,
            planes=list(planes),
            states=None if states is None else list(states),
        )

    def check_images(self, state: str, planes: Sequence[int], images: Sequence[np.ndarray]) -> None:
        for z, image in zip(planes, images, strict=True):
            check_inside(self.plane_prompts(state, z), self.prompts_path, image.shape[:2])

    def segment(
        self, image: np.ndarray, state: str, z: int, image_path: str | Path | None
    ) -> np.ndarray:
        objects = plane_objects(self.prompts, state, z)
        if not objects:
            log.warning("%s z%s: no prompts in %s for this plane", state, z, self.prompts_path)
            return np.zeros(image.shape[:2], dtype=np.uint16)
        check_inside(self.plane_prompts(state, z), self.prompts_path, image.shape[:2])
        return segment_prompted(image, objects, self.settings, self.embeddings(state, z))
