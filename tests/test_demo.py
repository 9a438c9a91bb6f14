"""The synthetic demo set: seeded, named as the study's, and its truth matches what is drawn."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import tifffile
from skimage.segmentation import find_boundaries

from protoseg import demo
from protoseg.catalogue import STUDY_STATE_FORMAT, demo_records
from protoseg.errors import ConfigError
from protoseg.io import read_image

PLANES = [12, 14, 16, 18, 20, 22, 24]
HEIGHT, WIDTH = 128, 160


def tiny_demo_cfg(**changes) -> dict:
    cfg = {
        "seed": 3,
        "days": [1],
        "times": [1],
        "xy": [1, 10],
        "height": 64,
        "width": 80,
        "cells": [3, 4],
        "cell_radius": [8, 13],
        "dead_cells": [1, 1],
        "debris": [2, 3],
        "out_dir": "unused",
    }
    cfg.update(changes)
    return cfg


def files_of(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def sample() -> demo.StateSample:
    """A crowded state: overlapping pairs, dead cells and debris."""
    params = replace(
        demo.params_from_config({}),
        cells=(7, 8),
        cell_radius=(9, 15),
        dead_cells=(2, 2),
        debris=(4, 5),
        overlaps=(2, 2),
    )
    return demo.make_state(demo.state_rng(11, 1, 1, 1), HEIGHT, WIDTH, PLANES, params)


def footprint_mask(blob: demo.Blob, shape=(HEIGHT, WIDTH)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    where, inside = blob.footprint(*shape)
    mask[where] = inside
    return mask


def fully_inside(blob: demo.Blob, margin: float = 0, shape=(HEIGHT, WIDTH)) -> bool:
    reach = blob.extent + margin
    return (
        reach <= blob.centre_y <= shape[0] - 1 - reach
        and reach <= blob.centre_x <= shape[1] - 1 - reach
    )


def isolated(blob: demo.Blob, blobs: list[demo.Blob], gap: float) -> bool:
    return all(
        math.hypot(o.centre_y - blob.centre_y, o.centre_x - blob.centre_x)
        > blob.extent + o.extent + gap
        for o in blobs
        if o is not blob
    )


# ---------------------------------------------------------------- files and seeds
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    demo.generate_demo(tiny_demo_cfg(), [12, 18], tmp_path / "a")
    demo.generate_demo(tiny_demo_cfg(), [12, 18], tmp_path / "b")
    demo.generate_demo(tiny_demo_cfg(seed=4), [12, 18], tmp_path / "c")
    first, again, other = (files_of(tmp_path / name) for name in "abc")
    assert first == again
    assert first.keys() == other.keys()
    raw = [name for name in first if name.startswith("raw/")]
    assert all(first[name] != other[name] for name in raw)


def test_a_state_does_not_depend_on_the_others(tmp_path):
    demo.generate_demo(tiny_demo_cfg(xy=[1, 10]), [12, 18], tmp_path / "both")
    demo.generate_demo(tiny_demo_cfg(xy=[10]), [12, 18], tmp_path / "one")
    one = files_of(tmp_path / "one")
    both = files_of(tmp_path / "both")
    for name, content in one.items():
        if name.startswith(("raw/", "truth/states/", "truth/planes/")):
            assert both[name] == content, name


def test_files_are_named_and_shaped_as_the_workflow_expects(tmp_path):
    cfg = tiny_demo_cfg(times=[1, 2])
    planes = [12, 18, 24]
    data_cfg = {
        "channels": {"1": "brightfield", "2": "fluorescent"},
        "planes": planes,
        "state_format": STUDY_STATE_FORMAT,
    }
    demo.generate_demo(cfg, planes, tmp_path)
    records = demo_records(cfg, data_cfg, tmp_path / "raw")
    written = sorted(str(p) for p in (tmp_path / "raw").iterdir())
    assert written == sorted(records["path"])
    for path in records["path"]:
        image = tifffile.imread(path)
        assert image.shape == (64, 80, 3)
        assert image.dtype == np.uint8
    for state in records["state"].unique():
        state_path, plane_paths = demo.truth_paths(tmp_path, state, planes)
        masks = [tifffile.imread(p) for p in [state_path, *plane_paths]]
        assert all(m.shape == (64, 80) and m.dtype == np.uint16 for m in masks)
    montage = read_image(tmp_path / "montage.png")
    assert montage.ndim == 3 and montage.shape[0] > 100
    cells = (tmp_path / "truth" / "cells.csv").read_text().splitlines()
    assert cells[0].startswith("state,label,kind,")


def test_channels_and_state_names_follow_the_data_config(tmp_path):
    channels = {"5": "fluorescent", "7": "brightfield"}
    demo.generate_demo(
        tiny_demo_cfg(xy=[2]),
        [12],
        tmp_path,
        channels=channels,
        state_format="pos{xy}d{day}t{time}",
    )
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "day1t1c5xy2z12.tif",
        "day1t1c7xy2z12.tif",
    ]
    assert (
        tifffile.imread(tmp_path / "raw" / "day1t1c5xy2z12.tif").mean() < 40
    )  # fluorescent is dark
    assert (tmp_path / "truth" / "states" / "pos2d1t1.tif").is_file()


@pytest.mark.parametrize(
    ("cfg", "channels", "key"),
    [
        (tiny_demo_cfg(cell_radius=[12, 8]), None, "demo.cell_radius"),
        (tiny_demo_cfg(cell_radius=[8, 40]), None, "demo.cell_radius"),
        (tiny_demo_cfg(cells=[2]), None, "demo.cells"),
        (tiny_demo_cfg(presence_range=-1), None, "demo.presence_range"),
        (tiny_demo_cfg(), {"1": "brightfield", "2": "other"}, "data.channels"),
    ],
    ids=[
        "radius-min-above-max",
        "radius-too-large",
        "cells-not-a-pair",
        "negative-presence",
        "no-fluorescent-channel",
    ],
)
def test_bad_demo_config_names_the_key_and_writes_nothing(tmp_path, cfg, channels, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        demo.generate_demo(cfg, [12], tmp_path, channels=channels)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- appearance
def test_brightfield_is_light_and_fluorescent_dark_with_blue_outlines(sample):
    near_anything = np.zeros((HEIGHT, WIDTH), bool)
    for blob in sample.blobs:
        near_anything |= (
            cv2.dilate(footprint_mask(blob).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        )
    background = ~near_anything
    assert background.mean() > 0.05
    assert sample.brightfield[:, background].mean() > 150
    assert sample.fluorescent[:, background].mean() < 25
    # Cells are green-tinted in bright-field (chloroplasts) and blue in fluorescence.
    cells = sample.state_truth > 0
    sharpest = PLANES.index(18)
    bf_cells = sample.brightfield[sharpest][cells].astype(float).mean(0)
    assert bf_cells[1] > bf_cells[0] and bf_cells[1] > bf_cells[2]
    fl_ring = (
        sample.fluorescent[sharpest][find_boundaries(sample.state_truth)].astype(float).mean(0)
    )
    assert fl_ring[2] > 2 * fl_ring[0] and fl_ring[2] > fl_ring[1] and fl_ring[2] > 40


def test_dead_cells_and_debris_show_in_brightfield_only():
    params = replace(
        demo.params_from_config({}),
        cells=(2, 2),
        cell_radius=(10, 14),
        dead_cells=(3, 3),
        debris=(5, 5),
        overlaps=(0, 0),
    )
    sample = demo.make_state(demo.state_rng(2, 1, 1, 1), HEIGHT, WIDTH, PLANES, params)
    others = [
        b
        for b in sample.blobs
        if b.kind in ("dead", "debris") and isolated(b, sample.cells, gap=12)
    ]
    assert {b.kind for b in others} == {"dead", "debris"}
    for blob in others:
        mask = footprint_mask(blob)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(
            bool
        ) & ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        plane = int(np.argmin([abs(z - blob.depth) for z in PLANES]))
        bf = sample.brightfield[plane].astype(float).mean(-1)
        fl = sample.fluorescent[plane].astype(float).mean(-1)
        assert bf[mask].mean() < bf[ring].mean() - 15, blob.kind  # visibly dark in bright-field
        assert abs(fl[mask].mean() - fl[ring].mean()) < 3, blob.kind  # nothing in fluorescence
        assert not sample.state_truth[mask].any()
        assert not sample.plane_truths[:, mask].any()


# ---------------------------------------------------------------- truth
def test_each_truth_instance_is_its_cells_outline(sample):
    assert set(np.unique(sample.state_truth)) - {0} == {c.label for c in sample.cells}
    checked = 0
    for cell in sample.cells:
        full = footprint_mask(cell)
        if not fully_inside(cell):
            continue
        ellipse_area = math.pi * cell.a * cell.b
        assert abs(full.sum() - ellipse_area) < 0.1 * ellipse_area
        covering = [o for o in sample.cells if o is not cell and (footprint_mask(o) & full).any()]
        if not covering:
            assert np.array_equal(sample.state_truth == cell.label, full)
            checked += 1
    assert checked >= 2


def test_larger_cell_wins_an_overlap(sample):
    pairs = 0
    for cell in sample.cells:
        for other in sample.cells:
            overlap = footprint_mask(cell) & footprint_mask(other)
            if (
                cell is other
                or not overlap.any()
                or footprint_mask(cell).sum() <= footprint_mask(other).sum()
            ):
                continue
            pairs += 1
            assert abs(cell.depth - other.depth) >= 2  # they lie at different depths
            assert (sample.state_truth[overlap] == cell.label).all()
            assert (
                (sample.state_truth == other.label).sum()
                == (footprint_mask(other) & ~overlap).sum()
                > 0
            )
    assert pairs >= 1


def test_fluorescent_ring_lies_on_the_truth_boundary(sample):
    boundary_distance = cv2.distanceTransform(
        (~find_boundaries(sample.state_truth, mode="inner")).astype(np.uint8), cv2.DIST_L2, 5
    )
    checked = 0
    for cell in sample.cells:
        if not (fully_inside(cell, 3) and isolated(cell, sample.blobs, gap=6)):
            continue
        plane = int(np.argmin([abs(z - cell.depth) for z in PLANES]))
        region = cv2.dilate(
            footprint_mask(cell).astype(np.uint8), np.ones((7, 7), np.uint8)
        ).astype(bool)
        blue = sample.fluorescent[plane][..., 2].astype(float)
        perimeter = find_boundaries(sample.state_truth == cell.label, mode="inner").sum()
        brightest = np.argsort(np.where(region, blue, -1), axis=None)[-perimeter:]
        assert np.median(boundary_distance.flat[brightest]) <= 1.0
        assert np.quantile(boundary_distance.flat[brightest], 0.9) <= 2.0
        checked += 1
    assert checked >= 1


def test_plane_truth_holds_present_cells_within_the_state_truth(sample):
    state_fg = sample.state_truth > 0
    area = {c.label: footprint_mask(c).sum() for c in sample.cells}
    plane_fgs = sample.plane_truths > 0
    assert np.array_equal(plane_fgs.any(axis=0), state_fg)  # the state mask is the planes' union
    for index, z in enumerate(PLANES):
        plane = sample.plane_truths[index]
        assert not plane_fgs[index][~state_fg].any()  # a subset of the state's foreground
        present = {
            c.label for c in sample.cells if abs(z - c.depth) <= sample.params.presence_range
        }
        assert set(np.unique(plane)) - {0} <= present
        for cell in sample.cells:
            if cell.label in present and isolated(cell, sample.cells, gap=0):
                assert np.array_equal(plane == cell.label, footprint_mask(cell))
        # Where plane and state disagree, the state's pixel went to a larger cell absent here.
        for label_plane, label_state in set(
            zip(plane[plane > 0], sample.state_truth[plane > 0], strict=True)
        ):
            if label_plane != label_state:
                assert area[label_state] >= area[label_plane] and label_state not in present
    # Depths spread over the stack, so no plane holds every cell.
    assert all(not np.array_equal(plane, sample.state_truth) for plane in sample.plane_truths)


# ---------------------------------------------------------------- focus
def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian after light smoothing (pixel noise alone scores low)."""
    grey = cv2.GaussianBlur(crop.astype(np.float32).mean(-1), (0, 0), 1.0)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def test_blur_grows_with_distance_from_the_cells_depth():
    params = replace(
        demo.params_from_config({}),
        cells=(3, 4),
        cell_radius=(10, 16),
        dead_cells=(0, 0),
        debris=(0, 0),
        overlaps=(0, 0),
    )
    measured = 0
    for seed in range(1, 5):
        sample = demo.make_state(demo.state_rng(seed, 1, 1, 1), HEIGHT, WIDTH, PLANES, params)
        for cell in sample.cells:
            if not (fully_inside(cell, 3) and isolated(cell, sample.blobs, gap=15)):
                continue
            reach = int(cell.extent + 3)
            y, x = int(cell.centre_y), int(cell.centre_x)
            distance = [abs(z - cell.depth) for z in PLANES]
            for stack in (sample.brightfield, sample.fluorescent):
                scores = [
                    sharpness(stack[i, y - reach : y + reach + 1, x - reach : x + reach + 1])
                    for i in range(len(PLANES))
                ]
                nearest = [i for i, d in enumerate(distance) if d < min(distance) + 0.25]
                assert int(np.argmax(scores)) in nearest, (cell.depth, scores)
                for i in range(len(PLANES)):
                    for j in range(len(PLANES)):
                        if distance[i] < distance[j] - 1:  # a plane nearer the depth is sharper
                            assert scores[i] > scores[j], (cell.depth, PLANES[i], PLANES[j], scores)
            measured += 1
    assert measured >= 4


def test_most_cells_are_sharp_near_z18_to_z20_and_blurred_at_z12():
    sample = demo.make_state(
        demo.state_rng(5, 1, 1, 2), 256, 360, PLANES, demo.params_from_config({})
    )
    depths = np.array([c.depth for c in sample.cells])
    nearest = np.array([PLANES[int(np.argmin([abs(z - d) for z in PLANES]))] for d in depths])
    assert np.isin(nearest, [16, 18, 20, 22]).mean() >= 0.6
    per_plane = [
        np.median(
            [
                sharpness(
                    sample.brightfield[
                        i,
                        int(c.centre_y) - 8 : int(c.centre_y) + 9,
                        int(c.centre_x) - 8 : int(c.centre_x) + 9,
                    ]
                )
                for c in sample.cells
                if 8 <= c.centre_y < 248 and 8 <= c.centre_x < 352
            ]
        )
        for i in range(len(PLANES))
    ]
    assert per_plane[PLANES.index(12)] < min(
        per_plane[PLANES.index(18)], per_plane[PLANES.index(20)]
    )
    assert int(np.argmax(per_plane)) in (
        PLANES.index(16),
        PLANES.index(18),
        PLANES.index(20),
        PLANES.index(22),
    )
