"""Prompts CSV for sam-prompted: reading, checks with file/line errors, combining masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protoseg.errors import InputError
from protoseg.masks import prompts

HEADER = "state,z,object,kind,x,y,positive,x0,y0,x1,y1\n"
GOOD_ROWS = (
    "s1,18,1,point,40,20,1,,,,\n"
    "s1,18,1,point,10,5,0,,,,\n"
    "s1,18,2,box,,,,30,10,60,40\n"
    "s1,12,1,point,5,6,1,,,,\n"
)


def write(tmp_path, text, name="prompts.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_prompts_parses_points_and_boxes(tmp_path):
    table = prompts.read_prompts(write(tmp_path, HEADER + GOOD_ROWS))
    assert list(table["line"]) == [2, 3, 4, 5]
    assert list(table["kind"]) == ["point", "point", "box", "point"]
    assert table["z"].dtype.kind == "i"
    assert table.loc[2, ["x0", "y0", "x1", "y1"]].tolist() == [30, 10, 60, 40]


def test_plane_objects_uses_row_column_order(tmp_path):
    table = prompts.read_prompts(write(tmp_path, HEADER + GOOD_ROWS))
    objects = prompts.plane_objects(table, "s1", 18)
    assert [obj.object_id for obj in objects] == ["1", "2"]
    first, second = objects
    # micro-sam takes points as (row, column) = (y, x) and boxes as (row0, col0, row1, col1).
    np.testing.assert_array_equal(first.points, [[20, 40], [5, 10]])
    np.testing.assert_array_equal(first.labels, [1, 0])
    assert first.box is None and first.lines == (2, 3)
    np.testing.assert_array_equal(second.box, [10, 30, 40, 60])
    assert second.points.shape == (0, 2)
    assert prompts.plane_objects(table, "s1", 14) == []


def test_napari_point_export_columns_are_accepted(tmp_path):
    text = "state,z,object,index,axis-0,axis-1,label\ns1,18,7,0,20.5,40.25,positive\ns1,18,7,1,3,4,negative\n"
    table = prompts.read_prompts(write(tmp_path, text))
    (obj,) = prompts.plane_objects(table, "s1", 18)
    np.testing.assert_allclose(obj.points, [[20.5, 40.25], [3, 4]])
    np.testing.assert_array_equal(obj.labels, [1, 0])


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("s1,18,1,circle,1,2,1,,,,\n", "line 2: unknown kind 'circle'"),
        ("s1,18,1,point,1,2,1,,,,\ns1,18,1,point,abc,2,1,,,,\n", "line 3: a point needs numbers"),
        ("s1,18,1,point,1,2,5,,,,\n", "line 2: positive must be 1"),
        ("s1,18,1,box,,,,50,10,20,40\n", "line 2: a box needs x0 <= x1"),
        ("s1,z18,1,point,1,2,1,,,,\n", "line 2: z must be a whole number"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, rows, expected):
    path = write(tmp_path, HEADER + rows)
    with pytest.raises(InputError, match=expected) as error:
        prompts.read_prompts(path)
    assert error.value.path == str(path)


def test_missing_column_and_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"missing column\(s\) \['object'\]"):
        prompts.read_prompts(write(tmp_path, "state,z,kind,x,y,positive\ns1,18,point,1,2,1\n"))
    with pytest.raises(InputError, match="prompts file not found"):
        prompts.read_prompts(tmp_path / "absent.csv")


def test_prompts_for_unknown_state_or_plane_are_errors(tmp_path):
    path = write(tmp_path, HEADER + GOOD_ROWS + "s9,18,1,point,1,1,1,,,,\n")
    table = prompts.read_prompts(path)
    with pytest.raises(InputError, match="line 6: state 's9' does not exist") as error:
        prompts.check_prompts(table, path, planes=[12, 18], states=["s1", "s2"])
    assert error.value.path == str(path)
    table = prompts.read_prompts(write(tmp_path, HEADER + GOOD_ROWS))
    with pytest.raises(InputError, match="line 5: plane z12 does not exist; planes: z18, z24"):
        prompts.check_prompts(table, path, planes=[18, 24], states=["s1"])
    prompts.check_prompts(table, path, planes=[12, 18], states=["s1"])  # all known: no error


def test_negative_only_object_and_two_boxes_are_errors(tmp_path):
    path = write(tmp_path, HEADER + "s1,18,1,point,1,2,0,,,,\ns1,18,1,point,3,2,0,,,,\n")
    with pytest.raises(InputError, match="lines 2, 3: object 1 of s1 z18 has only negative points"):
        prompts.check_prompts(prompts.read_prompts(path), path, planes=[18])
    path = write(tmp_path, HEADER + "s1,18,4,box,,,,1,1,5,5\ns1,18,4,box,,,,2,2,6,6\n")
    with pytest.raises(InputError, match="object 4 of s1 z18 has 2 boxes"):
        prompts.check_prompts(prompts.read_prompts(path), path, planes=[18])


def test_check_inside(tmp_path):
    path = write(tmp_path, HEADER + "s1,18,1,point,95,2,1,,,,\ns1,18,2,box,,,,0,0,20,64\n")
    table = prompts.read_prompts(path)
    prompts.check_inside(table.iloc[:1], path, (64, 96))
    with pytest.raises(InputError, match="line 3: prompt lies outside the 96 x 64"):
        prompts.check_inside(table, path, (64, 96))


def test_combine_object_masks_one_label_per_object_small_on_top():
    big = np.zeros((20, 20), bool)
    big[2:18, 2:18] = True
    small = np.zeros((20, 20), bool)
    small[5:9, 5:9] = True
    empty = np.zeros((20, 20), bool)
    labels = prompts.combine_object_masks([small, empty, big], (20, 20))
    assert labels.dtype == np.uint16
    # The empty object leaves no label; the rest are numbered 1..n in object order.
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert (labels[small] == 1).all()  # drawn over the big one that covers it
    assert ((labels == 2) == (big & ~small)).all()


def test_read_prompts_keeps_state_names_as_text(tmp_path):
    table = prompts.read_prompts(write(tmp_path, HEADER + "007,18,01,point,1,2,1,,,,\n"))
    assert table["state"].iloc[0] == "007" and table["object"].iloc[0] == "01"
    assert isinstance(table, pd.DataFrame)
