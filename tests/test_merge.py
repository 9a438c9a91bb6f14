"""Merging a state's plane masks: tracks, state mask, per-z masks, instance tables, files."""

import logging

import numpy as np
import pytest
import tifffile

from protoseg.config import section_defaults
from protoseg.errors import ConfigError, InputError
from protoseg.merge import (
    cell_mask,
    load_instances,
    merge,
    merge_state,
    merge_state_files,
    per_z_masks,
    save_instances,
    track_cells,
)

# The schema's footprint and drop_covered (same_cell_iou given per test).
DEFAULT_RULES = {key: section_defaults("merge")[key] for key in ("footprint", "drop_covered")}


def box(shape, r0, c0, r1, c1, label, into=None):
    mask = np.zeros(shape, np.uint16) if into is None else into
    mask[r0:r1, c0:c1] = label
    return mask


SHAPE = (40, 40)


def test_same_cell_on_several_planes_gets_one_id():
    # One cell seen on three planes with different labels and slightly different outlines.
    planes = [box(SHAPE, 5, 5, 15, 15, 3), box(SHAPE, 5, 5, 16, 16, 1), box(SHAPE, 6, 6, 15, 15, 9)]
    merged = merge(planes, 0.5, **DEFAULT_RULES)
    assert merged.tracks["cell"].nunique() == 1
    assert set(np.unique(merged.state_mask)) == {0, 1}
    assert all(set(np.unique(mask)) == {0, 1} for mask in merged.per_z)


def test_threshold_decides_whether_instances_are_one_cell():
    # IoU of these two squares: 64 / (100 + 100 - 64) = 0.47.
    planes = [box(SHAPE, 0, 0, 10, 10, 1), box(SHAPE, 2, 2, 12, 12, 1)]
    assert track_cells(planes, 0.45)["cell"].nunique() == 1
    assert track_cells(planes, 0.5)["cell"].nunique() == 2


def test_larger_cell_wins_the_overlap():
    large = box(SHAPE, 5, 5, 25, 25, 1)  # 400 px, on plane 0
    small = box(SHAPE, 20, 20, 30, 30, 1)  # 100 px, on plane 1; 25 px under the large one
    state = merge_state([large, small], 0.5, footprint="medoid", drop_covered=0.5)
    ids = np.unique(state[state > 0])
    assert len(ids) == 2
    large_id = state[10, 10]
    assert (state[20:25, 20:25] == large_id).all()  # the overlap belongs to the larger cell
    small_id = state[28, 28]
    assert small_id != large_id and (state == small_id).sum() == 75


def test_mostly_covered_small_cell_is_dropped():
    large = box(SHAPE, 5, 5, 25, 25, 1)
    small = box(SHAPE, 12, 12, 27, 27, 1)  # 225 px, 169 under the large cell (75 %)
    assert (
        len(np.unique(merge_state([large, small], 0.9, footprint="medoid", drop_covered=0.5))) == 2
    )  # 0 + large
    assert (
        len(np.unique(merge_state([large, small], 0.9, footprint="medoid", drop_covered=0.9))) == 3
    )


def test_medoid_footprint_ignores_one_bad_plane():
    good = [box(SHAPE, 5, 5, 15, 15, 1), box(SHAPE, 5, 5, 15, 16, 1), box(SHAPE, 5, 5, 16, 15, 1)]
    bad = box(SHAPE, 5, 5, 15, 22, 1)  # merged with a neighbour on this plane: much wider
    planes = [*good, bad]
    medoid = merge_state(planes, 0.5, footprint="medoid", drop_covered=0.5)
    largest = merge_state(planes, 0.5, footprint="largest", drop_covered=0.5)
    union = merge_state(planes, 0.5, footprint="union", drop_covered=0.5)
    assert (medoid > 0).sum() in (100, 110)
    assert (largest > 0).sum() == 170
    assert (union > 0).sum() == 10 * 17 + 10  # rows 5-14 x cols 5-21, plus row 15 x cols 5-14


def test_per_z_masks_hold_a_cell_only_on_its_planes_with_state_ids():
    cell_a = [box(SHAPE, 2, 2, 12, 12, 1), box(SHAPE, 2, 2, 12, 12, 4), np.zeros(SHAPE, np.uint16)]
    planes = [
        box(SHAPE, 25, 25, 35, 35, 2, into=cell_a[0].copy()),
        cell_a[1],
        box(SHAPE, 25, 25, 35, 35, 7),
    ]
    merged = merge(planes, 0.5, **DEFAULT_RULES)
    per_z = merged.per_z
    id_a, id_b = merged.state_mask[5, 5], merged.state_mask[30, 30]
    assert id_a != id_b and id_a > 0 and id_b > 0
    assert per_z[0][5, 5] == id_a and per_z[1][5, 5] == id_a and per_z[2][5, 5] == 0
    assert per_z[0][30, 30] == id_b and per_z[1][30, 30] == 0 and per_z[2][30, 30] == id_b
    # Each plane keeps its own segmentation: same pixels, new ids.
    for plane, mask in zip(planes, per_z, strict=True):
        np.testing.assert_array_equal(plane > 0, mask > 0)
        assert mask.dtype == np.uint16
    # per_z_masks from the tracks alone gives the same.
    for a, b in zip(per_z_masks(planes, merged.tracks), per_z, strict=True):
        np.testing.assert_array_equal(a, b)


def test_two_instances_of_one_plane_never_join_one_cell():
    # A cell on plane 1 overlapping two cells of plane 0 equally: only one can be it.
    plane0 = box(SHAPE, 0, 0, 10, 10, 1, into=box(SHAPE, 0, 10, 10, 20, 2))
    plane1 = box(SHAPE, 0, 0, 10, 20, 1)
    tracks = track_cells([plane0, plane1], 0.3)
    assert tracks.groupby("cell")["plane"].apply(lambda p: p.is_unique).all()
    assert tracks["cell"].nunique() == 2


def test_ids_do_not_depend_on_plane_labels():
    a = [
        box(SHAPE, 2, 2, 12, 12, 1, into=box(SHAPE, 25, 25, 35, 35, 2)),
        box(SHAPE, 2, 2, 12, 12, 1),
    ]
    b = [
        box(SHAPE, 2, 2, 12, 12, 9, into=box(SHAPE, 25, 25, 35, 35, 4)),
        box(SHAPE, 2, 2, 12, 12, 5),
    ]
    np.testing.assert_array_equal(
        merge_state(a, 0.5, **DEFAULT_RULES), merge_state(b, 0.5, **DEFAULT_RULES)
    )
    # Reading order: the top-left cell is 1.
    assert merge_state(a, 0.5, **DEFAULT_RULES)[5, 5] == 1


def test_empty_planes_warn_and_give_empty_masks(caplog):
    planes = [np.zeros(SHAPE, np.uint16)] * 3
    with caplog.at_level(logging.WARNING, logger="protoseg.merge"):
        merged = merge(planes, 0.5, **DEFAULT_RULES, names=["z12.tif", "z14.tif", "z16.tif"])
    assert "z12.tif: mask has no cells" in caplog.text and "state mask is empty" in caplog.text
    assert merged.state_mask.dtype == np.uint16 and not merged.state_mask.any()
    assert merged.tracks.empty and len(merged.per_z) == 3


def test_one_empty_plane_among_others():
    planes = [box(SHAPE, 2, 2, 12, 12, 1), np.zeros(SHAPE, np.uint16)]
    merged = merge(planes, 0.5, **DEFAULT_RULES)
    assert merged.state_mask.max() == 1 and not merged.per_z[1].any()


def test_mismatched_shapes_name_the_file():
    planes = [np.zeros((10, 10), np.uint16), np.zeros((10, 12), np.uint16)]
    with pytest.raises(InputError, match=r"z14\.tif: mask shape \(10, 12\) differs from z12\.tif"):
        merge(planes, 0.5, **DEFAULT_RULES, names=["z12.tif", "z14.tif"])


def test_non_label_masks_are_refused():
    with pytest.raises(InputError, match="integer labels"):
        merge([np.zeros((5, 5), np.float32)], 0.5, **DEFAULT_RULES)
    with pytest.raises(InputError, match="2D label image"):
        merge([np.zeros((5, 5, 3), np.uint16)], 0.5, **DEFAULT_RULES)


@pytest.mark.parametrize(
    "kwargs, key",
    [(dict(same_cell_iou=1.5), "merge.same_cell_iou"), (dict(footprint="mean"), "merge.footprint")],
)
def test_bad_settings_name_the_key(kwargs, key):
    args = dict(same_cell_iou=0.5, **DEFAULT_RULES) | kwargs
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        merge_state([box(SHAPE, 2, 2, 12, 12, 1)], args.pop("same_cell_iou"), **args)


def test_instance_table_round_trip(tmp_path):
    planes = [
        box(SHAPE, 2, 2, 12, 12, 1, into=box(SHAPE, 25, 25, 35, 35, 2)),
        box(SHAPE, 3, 3, 13, 13, 8),
        box(SHAPE, 25, 25, 36, 36, 5),
    ]
    merged = merge(planes, 0.5, **DEFAULT_RULES)
    path = tmp_path / "state.npz"
    save_instances(path, merged, [12, 14, 16], state="day1t1xy1")
    table = load_instances(path)
    assert str(table["state"]) == "day1t1xy1"
    np.testing.assert_array_equal(table["z"], [12, 14, 16])
    np.testing.assert_array_equal(table["ids"], [1, 2])
    np.testing.assert_array_equal(table["present"], [[True, True, False], [True, False, True]])
    np.testing.assert_array_equal(table["area"], [[100, 100, 0], [100, 0, 121]])
    np.testing.assert_array_equal(table["bbox"][0], [2, 2, 13, 13])
    assert table["masks"][1].shape == (3, 11, 11)
    # Every cell's crop rebuilds its pixels on every plane.
    for cell in table["ids"]:
        for index, mask in enumerate(merged.per_z):
            np.testing.assert_array_equal(cell_mask(table, cell, index), mask == cell)
    np.testing.assert_array_equal(
        table["state_area"], [(merged.state_mask == c).sum() for c in (1, 2)]
    )


def test_empty_instance_table_round_trip(tmp_path):
    merged = merge([np.zeros(SHAPE, np.uint16)], 0.5, **DEFAULT_RULES)
    save_instances(tmp_path / "empty.npz", merged, [18])
    table = load_instances(tmp_path / "empty.npz")
    assert table["ids"].size == 0 and table["present"].shape == (0, 1) and table["masks"] == {}


def test_merge_state_files(tmp_path):
    z = [12, 14]
    plane_paths = [tmp_path / f"planes/z{v}.tif" for v in z]
    plane_paths[0].parent.mkdir(parents=True)
    tifffile.imwrite(plane_paths[0], box(SHAPE, 2, 2, 12, 12, 1))
    tifffile.imwrite(plane_paths[1], box(SHAPE, 2, 2, 12, 12, 3))
    images = {"fluorescent": [], "brightfield": []}
    for modality in images:
        for v in z:
            path = tmp_path / f"{modality}_z{v}.tif"
            tifffile.imwrite(path, np.full(SHAPE + (3,), 50 + v, np.uint8))
            images[modality].append(path)
    out = tmp_path / "out"
    merge_state_files(
        plane_paths,
        z,
        state_path=out / "state.tif",
        per_z_paths=[out / f"per_z/z{v}.tif" for v in z],
        instances_path=out / "instances.npz",
        qc_path=out / "qc.png",
        images=images,
        merge_cfg={"same_cell_iou": 0.5, "qc_panel_width": 40},
        state="day1t1xy1",
    )
    state = tifffile.imread(out / "state.tif")
    assert state.dtype == np.uint16 and set(np.unique(state)) == {0, 1}
    assert all((out / f"per_z/z{v}.tif").is_file() for v in z)
    assert (out / "instances.npz").is_file() and (out / "qc.png").is_file()


def test_merge_state_files_writes_nothing_on_bad_input(tmp_path):
    plane_paths = [tmp_path / "z12.tif", tmp_path / "z14.tif"]
    tifffile.imwrite(plane_paths[0], np.zeros((10, 10), np.uint16))
    tifffile.imwrite(plane_paths[1], np.zeros((10, 11), np.uint16))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="z14.tif"):
        merge_state_files(
            plane_paths,
            [12, 14],
            state_path=out / "state.tif",
            per_z_paths=[out / "a.tif", out / "b.tif"],
            instances_path=out / "i.npz",
        )
    assert not out.exists() or not any(out.iterdir())
