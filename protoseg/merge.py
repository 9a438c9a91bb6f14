"""Merge a state's plane masks: cell tracks, one state mask, per-z masks, instance tables.

A state is one field of view photographed at several focal planes; each plane has its own
instance mask (uint16, 0 = background). Merging (see docs/merge.md):

1. **Tracking.** Instances of two different planes are the same cell when their IoU is at
   least ``same_cell_iou``. Every pair of planes is compared (not only neighbours, so a cell
   missed on one plane still links across the gap); candidate pairs are joined greedily,
   highest IoU first, into tracks (union-find), never putting two instances of one plane
   into one track.
2. **State mask** (the study's rule). A track's footprint (``merge.footprint``) is its
   medoid instance (the one that overlaps its other instances most: a cell seen blurred and
   swollen at one plane does not grow the footprint), its largest instance (the plane where
   the cell looks widest; the study's reading, ``config/paper.yaml``), or the union of its
   instances. Larger footprints are painted first and a smaller one only takes what is
   still free, so where a larger cell covers a smaller one the larger is kept; a smaller cell covered over more than ``drop_covered`` of its footprint
   is dropped entirely, otherwise it keeps its uncovered part.
3. **Per-z masks** (the study's future work). Each plane gets its own segmentation, relabelled
   with the track ids: a cell appears on a plane only where it was segmented there, with one
   id across all planes and the state mask.
4. **Instance table** (``.npz``): every cell's id, bounding box, planes present, area per
   plane and its own cropped masks, so one cell can be inspected or corrected alone.

Cell ids are 1..n in reading order (top to bottom, then left to right) of the footprints'
centres, so they do not depend on the order the planes were segmented in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from protoseg.config import complete_section
from protoseg.errors import ConfigError, InputError
from protoseg.io import save_npz

log = logging.getLogger(__name__)

# How a cell's instances on several planes become its one shape in the state mask:
# medoid: the most typical instance (highest mean IoU with the cell's other instances), so
#   one plane where the cell was merged with a neighbour does not decide its shape;
# largest: the widest instance; union: every pixel any plane gave it.
FOOTPRINTS = ("medoid", "largest", "union")
TRACK_COLUMNS = ["cell", "plane", "label", "area"]


@dataclass
class Merged:
    """Everything merging one state produces."""

    tracks: pd.DataFrame  # one row per (cell, plane): cell, plane, label, area
    state_mask: np.ndarray  # uint16
    per_z: list[np.ndarray]  # uint16, one per plane


def check_planes(
    planes: Sequence[np.ndarray], names: Sequence[str] | None = None
) -> list[np.ndarray]:
    """Check plane masks are 2D integer label images of one shape; return them as arrays.

    ``names`` (paths or plane names, one per plane) are used in error messages.
    """
    names = list(names) if names is not None else [f"plane {index}" for index in range(len(planes))]
    if len(names) != len(planes):
        raise ValueError(f"{len(planes)} planes but {len(names)} names")
    if not planes:
        raise InputError("(no planes)", "a state needs at least one plane mask to merge")
    arrays = [np.asarray(plane) for plane in planes]
    for name, plane in zip(names, arrays, strict=True):
        if plane.ndim != 2:
            raise InputError(name, f"a mask must be a 2D label image, got shape {plane.shape}")
        if not (np.issubdtype(plane.dtype, np.integer) or plane.dtype == bool):
            raise InputError(name, f"a mask must hold integer labels, got dtype {plane.dtype}")
        if plane.shape != arrays[0].shape:
            raise InputError(
                name, f"mask shape {plane.shape} differs from {names[0]}'s {arrays[0].shape}"
            )
        if plane.size and plane.min() < 0:
            raise InputError(name, "mask labels must not be negative")
    return arrays


def _instances(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (> 0) present in a plane and their areas."""
    labels, areas = np.unique(plane[plane > 0], return_counts=True)
    return labels.astype(np.int64), areas.astype(np.int64)


def _pair_ious(a: np.ndarray, b: np.ndarray) -> pd.DataFrame:
    """IoU of every overlapping (label in a, label in b) pair: columns label_a, label_b, iou."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return pd.DataFrame({"label_a": [], "label_b": [], "iou": []})
    pairs, intersection = np.unique(
        np.stack([a[both].astype(np.int64), b[both].astype(np.int64)]), axis=1, return_counts=True
    )
    area_a = np.bincount(a.ravel().astype(np.int64))
    area_b = np.bincount(b.ravel().astype(np.int64))
    union = area_a[pairs[0]] + area_b[pairs[1]] - intersection
    return pd.DataFrame({"label_a": pairs[0], "label_b": pairs[1], "iou": intersection / union})


def track_cells(planes: Sequence[np.ndarray], same_cell_iou: float) -> pd.DataFrame:
    """Group the instances of all planes into cells (tracks).

    Returns one row per instance: ``cell`` (track id, 1..n in reading order of the track's
    largest instance), ``plane`` (index into ``planes``), ``label`` (its label there) and
    ``area`` (pixels). A cell has at most one instance per plane.
    """
    if not 0.0 <= same_cell_iou <= 1.0:
        raise ConfigError("merge.same_cell_iou", f"must be in [0, 1], got {same_cell_iou}")
    planes = check_planes(planes)
    nodes = []  # (plane, label, area)
    for index, plane in enumerate(planes):
        labels, areas = _instances(plane)
        nodes.extend(
            (index, int(label), int(area)) for label, area in zip(labels, areas, strict=True)
        )
    if not nodes:
        return pd.DataFrame({column: pd.Series(dtype="int64") for column in TRACK_COLUMNS})
    node_of = {(plane, label): k for k, (plane, label, _) in enumerate(nodes)}

    candidates = []  # (iou, node_a, node_b)
    for i in range(len(planes)):
        for j in range(i + 1, len(planes)):
            pairs = _pair_ious(planes[i], planes[j])
            pairs = pairs[pairs["iou"] >= same_cell_iou]
            candidates.extend(
                (iou, node_of[(i, int(la))], node_of[(j, int(lb))])
                for la, lb, iou in pairs.itertuples(index=False)
            )
    # Highest IoU first; ties broken by node order so the result never depends on sorting luck.
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))

    parent = list(range(len(nodes)))
    planes_in = [{nodes[k][0]} for k in range(len(nodes))]

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for _, a, b in candidates:
        ra, rb = root(a), root(b)
        if ra == rb or planes_in[ra] & planes_in[rb]:
            continue  # already one cell, or joining would give a plane two instances of it
        parent[rb] = ra
        planes_in[ra] |= planes_in[rb]

    table = pd.DataFrame(nodes, columns=["plane", "label", "area"])
    table["root"] = [root(k) for k in range(len(nodes))]
    table = _number_cells(table, planes)
    return table[TRACK_COLUMNS].sort_values(["cell", "plane"], ignore_index=True)


def _number_cells(table: pd.DataFrame, planes: Sequence[np.ndarray]) -> pd.DataFrame:
    """Give tracks ids 1..n in reading order of their largest instance's centre."""
    largest = table.sort_values(["area", "plane"], ascending=[False, True]).drop_duplicates("root")
    centres = []
    for row in largest.itertuples(index=False):
        rows, cols = np.nonzero(planes[row.plane] == row.label)
        centres.append((rows.mean(), cols.mean(), row.root))
    order = sorted(centres)
    if len(order) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(order)} cells do not fit in uint16 labels")
    cell_of_root = {root: cell for cell, (_, _, root) in enumerate(order, start=1)}
    table = table.assign(cell=table["root"].map(cell_of_root).astype("int64"))
    return table


def _footprints(
    planes: Sequence[np.ndarray], tracks: pd.DataFrame, footprint: str
) -> dict[int, np.ndarray]:
    """Boolean footprint of every cell (see :data:`FOOTPRINTS`)."""
    if footprint not in FOOTPRINTS:
        raise ConfigError(
            "merge.footprint", f"unknown footprint '{footprint}' (use one of {list(FOOTPRINTS)})"
        )
    result = {}
    for cell, rows in tracks.groupby("cell", sort=True):
        # Larger first, so ties (two instances, or equal typicality) go to the larger.
        rows = rows.sort_values(["area", "plane"], ascending=[False, True])
        instances = [planes[row.plane] == row.label for row in rows.itertuples(index=False)]
        if footprint == "union":
            result[int(cell)] = np.logical_or.reduce(instances)
        elif footprint == "largest" or len(instances) < 3:
            result[int(cell)] = instances[0]
        else:
            result[int(cell)] = instances[_medoid(instances)]
    return result


def _medoid(instances: list[np.ndarray]) -> int:
    """Index of the instance with the highest mean IoU with the others (first on ties)."""
    rows, cols = np.nonzero(np.logical_or.reduce(instances))
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    flat = np.stack([instance[box].ravel() for instance in instances]).astype(np.float32)
    intersection = flat @ flat.T
    areas = np.diag(intersection)
    iou = intersection / (areas[:, None] + areas[None, :] - intersection)
    return int(np.argmax(iou.sum(axis=1)))


def state_mask(
    planes: Sequence[np.ndarray],
    tracks: pd.DataFrame,
    *,
    footprint: str,
    drop_covered: float,
) -> np.ndarray:
    """One uint16 mask for the state: larger cells over smaller ones (the study's rule).

    A cell covered by larger cells over more than ``drop_covered`` (0..1) of its footprint
    is dropped; otherwise it keeps its uncovered part.
    """
    if not 0.0 <= drop_covered <= 1.0:
        raise ConfigError("merge.drop_covered", f"must be in [0, 1], got {drop_covered}")
    planes = check_planes(planes)
    mask = np.zeros(planes[0].shape, dtype=np.uint16)
    if tracks.empty:
        return mask
    shapes = _footprints(planes, tracks, footprint)
    # Larger first: each later (smaller) cell only takes what is still free, so ties in
    # area cannot let a smaller cell overwrite a larger one.
    for cell in sorted(shapes, key=lambda c: (-int(shapes[c].sum()), c)):
        shape = shapes[cell]
        free = shape & (mask == 0)
        area = int(shape.sum())
        if area == 0 or 1.0 - free.sum() / area > drop_covered:
            continue
        mask[free] = cell
    return mask


def per_z_masks(planes: Sequence[np.ndarray], tracks: pd.DataFrame) -> list[np.ndarray]:
    """Each plane's own segmentation relabelled with the cell ids (uint16 masks).

    A cell appears on a plane only where it was segmented there.
    """
    planes = check_planes(planes)
    result = []
    for index, plane in enumerate(planes):
        rows = tracks[tracks["plane"] == index]
        lookup = np.zeros(int(plane.max()) + 1 if plane.size else 1, dtype=np.uint16)
        lookup[rows["label"].to_numpy(dtype=np.int64)] = rows["cell"].to_numpy(dtype=np.uint16)
        result.append(lookup[plane.astype(np.int64)])
    return result


def merge_state(
    planes: Sequence[np.ndarray],
    same_cell_iou: float,
    *,
    footprint: str,
    drop_covered: float,
) -> np.ndarray:
    """The state mask of one state's plane masks (uint16); see :func:`merge`."""
    planes = check_planes(planes)
    return state_mask(
        planes, track_cells(planes, same_cell_iou), footprint=footprint, drop_covered=drop_covered
    )


def merge(
    planes: Sequence[np.ndarray],
    same_cell_iou: float,
    *,
    footprint: str,
    drop_covered: float,
    names: Sequence[str] | None = None,
) -> Merged:
    """Track cells through a state's planes; return tracks, state mask and per-z masks.

    Empty planes (no cells) are valid: they log a warning and give empty masks.
    """
    planes = check_planes(planes, names)
    names = list(names) if names is not None else [f"plane {index}" for index in range(len(planes))]
    for name, plane in zip(names, planes, strict=True):
        if not plane.any():
            log.warning("%s: mask has no cells", name)
    tracks = track_cells(planes, same_cell_iou)
    merged = Merged(
        tracks=tracks,
        state_mask=state_mask(planes, tracks, footprint=footprint, drop_covered=drop_covered),
        per_z=per_z_masks(planes, tracks),
    )
    if not merged.state_mask.any():
        log.warning("state mask is empty: no cell on any plane")
    return merged


# ---------------------------------------------------------------- instance tables


def instance_arrays(merged: Merged, z: Sequence[int]) -> dict[str, np.ndarray]:
    """The arrays of a state's instance table (keys documented in docs/merge.md).

    ``ids`` (n,) uint16 cell ids; ``z`` (p,) plane z values; ``shape`` (2,) image shape;
    ``bbox`` (n, 4) min_row, min_col, max_row, max_col (exclusive) of the cell over all
    its planes; ``present`` (n, p) bool; ``area`` (n, p) pixels per plane (0 = absent);
    ``state_area`` (n,) pixels in the state mask (0 = dropped, covered by a larger cell);
    ``mask_<id>`` (p, h, w) bool: the cell's own mask on every plane, cropped to its bbox.
    """
    per_z = merged.per_z
    z = [int(value) for value in z]
    if len(z) != len(per_z):
        raise ValueError(f"{len(per_z)} planes but {len(z)} z values")
    cells = np.sort(merged.tracks["cell"].unique()).astype(np.uint16)
    n, p = len(cells), len(per_z)
    shape = merged.state_mask.shape
    arrays: dict[str, np.ndarray] = {
        "ids": cells,
        "z": np.asarray(z, dtype=np.int64),
        "shape": np.asarray(shape, dtype=np.int64),
        "bbox": np.zeros((n, 4), dtype=np.int64),
        "present": np.zeros((n, p), dtype=bool),
        "area": np.zeros((n, p), dtype=np.int64),
        "state_area": np.zeros(n, dtype=np.int64),
    }
    if n == 0:
        return arrays
    stack = np.stack(per_z)
    state_areas = np.bincount(merged.state_mask.ravel(), minlength=int(cells.max()) + 1)
    boxes = _bounding_boxes(per_z, int(cells.max()))
    for k, cell in enumerate(cells):
        r0, c0, r1, c1 = boxes[int(cell)]
        arrays["bbox"][k] = (r0, c0, r1, c1)
        crop = stack[:, r0:r1, c0:c1] == cell
        arrays[f"mask_{int(cell)}"] = crop
        arrays["area"][k] = crop.sum(axis=(1, 2))
        arrays["present"][k] = arrays["area"][k] > 0
        arrays["state_area"][k] = state_areas[int(cell)]
    return arrays


def _bounding_boxes(
    masks: Sequence[np.ndarray], max_label: int
) -> dict[int, tuple[int, int, int, int]]:
    """Box (min_row, min_col, max_row, max_col; exclusive) of each label over all masks."""
    boxes: dict[int, tuple[int, int, int, int]] = {}
    for mask in masks:
        for index, found in enumerate(ndi.find_objects(mask, max_label=max_label)):
            if found is None:
                continue
            box = (found[0].start, found[1].start, found[0].stop, found[1].stop)
            old = boxes.get(index + 1)
            if old is not None:
                box = (
                    min(old[0], box[0]),
                    min(old[1], box[1]),
                    max(old[2], box[2]),
                    max(old[3], box[3]),
                )
            boxes[index + 1] = box
    return boxes


def save_instances(path: str | Path, merged: Merged, z: Sequence[int], state: str = "") -> None:
    """Write a state's instance table as ``.npz`` (atomically); see :func:`instance_arrays`."""
    arrays = instance_arrays(merged, z)
    arrays["state"] = np.asarray(state)
    save_npz(path, **arrays)


def load_instances(path: str | Path) -> dict:
    """Read an instance table: the arrays plus ``masks``, a dict cell id -> (p, h, w) crop."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "instance table not found")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["masks"] = {int(cell): arrays.pop(f"mask_{int(cell)}") for cell in arrays["ids"]}
    return arrays


def cell_mask(instances: dict, cell: int, plane: int | None = None) -> np.ndarray:
    """Full-size boolean mask of one cell from an instance table: on plane index ``plane``,
    or on any plane when ``plane`` is None."""
    index = int(np.flatnonzero(instances["ids"] == cell)[0]) if cell in instances["ids"] else None
    if index is None:
        raise KeyError(f"cell {cell} is not in the instance table")
    r0, c0, r1, c1 = instances["bbox"][index]
    crop = instances["masks"][int(cell)]
    crop = crop.any(axis=0) if plane is None else crop[plane]
    full = np.zeros(tuple(instances["shape"]), dtype=bool)
    full[r0:r1, c0:c1] = crop
    return full


# ---------------------------------------------------------------- files in, files out


def read_plane_masks(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Read a state's plane masks (2D integer label TIFFs of one shape), clear errors."""
    from protoseg.io import read_image  # local: keeps the array API importable alone

    masks = [read_image(path) for path in paths]
    return check_planes(masks, [str(path) for path in paths])


def merge_state_files(
    plane_paths: Sequence[str | Path],
    z: Sequence[int],
    *,
    state_path: str | Path,
    per_z_paths: Sequence[str | Path],
    instances_path: str | Path,
    qc_path: str | Path | None = None,
    images: dict[str, Sequence[str | Path]] | None = None,
    merge_cfg: dict | None = None,
    state: str = "",
) -> Merged:
    """The merge step of one state: plane mask TIFFs in; state mask, per-z masks,
    instance table and (with ``qc_path`` and ``images``) the QC overlay out.

    ``merge_cfg``: the config's ``merge:`` section (same_cell_iou, footprint,
    drop_covered, qc_panel_width). ``images``: modality -> image paths in plane order.
    """
    from protoseg.io import read_image, write_png, write_tiff
    from protoseg.qc import overlay_grid

    cfg = complete_section("merge", merge_cfg)
    z = [int(value) for value in z]
    if len(plane_paths) != len(z) or len(per_z_paths) != len(z):
        raise ValueError(
            f"{len(z)} planes, {len(plane_paths)} plane masks, {len(per_z_paths)} per-z outputs"
        )
    planes = read_plane_masks(plane_paths)
    merged = merge(
        planes,
        cfg["same_cell_iou"],
        footprint=cfg["footprint"],
        drop_covered=cfg["drop_covered"],
        names=[str(path) for path in plane_paths],
    )
    if qc_path is not None:
        stacks = {
            modality: [read_image(path) for path in paths]
            for modality, paths in (images or {}).items()
        }
        for modality, stack in stacks.items():
            for path, image in zip(images[modality], stack, strict=True):
                if image.shape[:2] != merged.state_mask.shape:
                    raise InputError(
                        path,
                        f"image shape {image.shape[:2]} differs from its masks' {merged.state_mask.shape}",
                    )
        grid = overlay_grid(
            stacks,
            planes,
            merged.state_mask,
            z,
            panel_width=cfg["qc_panel_width"],
            title=state,
        )
    # Written last and together, once everything above has worked.
    write_tiff(state_path, merged.state_mask)
    for path, mask in zip(per_z_paths, merged.per_z, strict=True):
        write_tiff(path, mask)
    save_instances(instances_path, merged, z, state=state)
    if qc_path is not None:
        write_png(qc_path, grid)
    cells = merged.tracks["cell"].nunique()
    log.info(
        "%s: %d cells over %d planes, %d in the state mask",
        state,
        cells,
        len(z),
        len(np.unique(merged.state_mask)) - 1,
    )
    return merged
