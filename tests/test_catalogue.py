import re

import numpy as np
import pytest
import tifffile

from protoseg.catalogue import (
    STUDY_PATTERN,
    STUDY_STATE_FORMAT,
    build_catalogue,
    describe_image,
    study_file_name,
)
from protoseg.errors import InputError

DATA_CFG = {
    "pattern": STUDY_PATTERN,
    "ignore": [],
    "state_format": STUDY_STATE_FORMAT,
    "channels": {"1": "brightfield", "2": "fluorescent"},
    "planes": [12, 14],
}


def write_state(folder, xy, shape=(20, 30, 3)):
    paths = []
    for channel in (1, 2):
        for z in (12, 14):
            path = folder / study_file_name(1, 1, channel, xy, z)
            tifffile.imwrite(path, np.full(shape, 7 * channel, dtype=np.uint8))
            paths.append(path)
    return paths


def test_catalogue_has_one_row_per_image_with_header_columns(tmp_path):
    paths = write_state(tmp_path, 10) + write_state(tmp_path, 3, shape=(16, 16))
    catalogue = build_catalogue(paths, tmp_path, DATA_CFG, progress=False)
    assert len(catalogue) == 8
    assert list(catalogue.columns[:12]) == [
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
    row = catalogue[catalogue["state"] == "day1t1xy10"].iloc[0]
    assert (row["height"], row["width"], row["channels"], row["dtype"]) == (20, 30, 3, "uint8")
    grey = catalogue[catalogue["state"] == "day1t1xy3"].iloc[0]
    assert (grey["height"], grey["width"], grey["channels"]) == (16, 16, 1)


def test_truncated_tiff_is_named(tmp_path):
    paths = write_state(tmp_path, 10)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"day1t1c1xy10z14\.tif: unreadable or truncated TIFF"):
        build_catalogue(paths, tmp_path, DATA_CFG, progress=False)


def test_not_a_tiff_at_all_is_named(tmp_path):
    paths = write_state(tmp_path, 10)
    paths[0].write_text("hello")
    with pytest.raises(InputError, match=r"day1t1c1xy10z12\.tif: unreadable or truncated TIFF"):
        build_catalogue(paths, tmp_path, DATA_CFG, progress=False)


def test_mixed_shapes_within_a_state_are_an_error(tmp_path):
    paths = write_state(tmp_path, 10)
    tifffile.imwrite(paths[3], np.zeros((21, 30, 3), dtype=np.uint8))
    with pytest.raises(
        InputError,
        match=r"day1t1c2xy10z14\.tif: shape 21x30 differs from the other images of state day1t1xy10",
    ):
        build_catalogue(paths, tmp_path, DATA_CFG, progress=False)


def test_incomplete_state_and_empty_input_are_errors(tmp_path):
    paths = write_state(tmp_path, 10)
    with pytest.raises(InputError, match=r"state day1t1xy10 has no image of channel 2"):
        build_catalogue(paths[:3], tmp_path, DATA_CFG, progress=False)
    with pytest.raises(InputError, match="no images found"):
        build_catalogue([], tmp_path, DATA_CFG, progress=False)


def test_sample_sheet_names_the_images_instead_of_the_pattern(tmp_path):
    import pandas as pd

    folder = tmp_path / "raw"
    folder.mkdir()
    rows = []
    for channel, modality_folder in (("1", "bf"), ("2", "fl")):
        for z in (12, 14):
            path = folder / f"{modality_folder}_plane{z}.tif"  # names the pattern cannot parse
            tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
            rows.append(
                {"path": path.name, "day": 3, "time": 1, "xy": 7, "channel": channel, "z": z}
            )
    sheet = tmp_path / "sheet.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    cfg = {**DATA_CFG, "sample_sheet": str(sheet)}
    paths = [folder / row["path"] for row in rows]
    catalogue = build_catalogue(paths, folder, cfg, progress=False)
    assert catalogue["state"].unique().tolist() == ["day3t1xy7"]
    assert sorted(catalogue["modality"].unique()) == ["brightfield", "fluorescent"]


def nan_at(row, column):
    plane = np.full((8, 10), 0.5, np.float32)
    plane[row, column] = np.nan
    return plane


@pytest.mark.parametrize(
    ("array", "kwargs", "message"),
    [
        (np.zeros((5, 8, 10), np.uint8), {}, r"a stack of 5 planes of 8 x 10 pixels \(axes QYX"),
        (
            np.zeros((5, 8, 10), np.uint16),
            {"metadata": {"axes": "ZYX"}},
            r"stack of 5 planes .*axes ZYX, shape 5x8x10",
        ),
        (np.zeros((2, 5, 8, 10), np.uint8), {}, r"stack of 10 planes .*axes QQYX, shape 2x5x8x10"),
        (np.zeros((4, 8, 10, 3), np.uint8), {}, r"stack of 4 planes .*axes QYXS"),
        (
            np.zeros((8, 10, 2), np.uint8),
            {"photometric": "minisblack", "planarconfig": "contig"},
            r"2 channels \(axes YXS, shape 8x10x2\)",
        ),
        (np.zeros((8, 10, 2), np.uint8), {}, r"If it is one 8 x 10 image with 2 channels"),
        (
            np.zeros((3, 8, 10), np.uint8),
            {"photometric": "rgb", "planarconfig": "separate"},
            r"channels-first colour image \(axes SYX",
        ),
        (np.full((8, 10), -1, np.int16), {}, r"signed integer pixels \(int16, values -1\.\.-1\)"),
        (np.full((8, 10), 255.0, np.float32), {}, r"range from 255 to 255, outside \[0, 1\]"),
        (np.full((8, 10), -0.5, np.float64), {}, r"range from -0\.5 to -0\.5"),
        (nan_at(2, 3), {}, r"1 NaN pixel value\(s\) \(float32\), the first at row 2, column 3"),
        (np.full((8, 10), np.inf, np.float32), {}, r"80 infinite pixel value\(s\)"),
        (np.zeros((8, 10), np.complex64), {}, r"unsupported pixel type complex64"),
    ],
    ids=[
        "stack",
        "z-stack",
        "4d",
        "colour-stack",
        "two-channels",
        "two-channels-as-pages",
        "channels-first",
        "signed",
        "float-0-255",
        "float-negative",
        "nan",
        "inf",
        "complex",
    ],
)
def test_images_the_later_steps_cannot_take_are_refused_naming_the_file(
    tmp_path, array, kwargs, message
):
    path = tmp_path / "day1t1c2xy10z14.tif"
    tifffile.imwrite(path, array, **kwargs)
    with pytest.raises(InputError, match=r"day1t1c2xy10z14\.tif: ") as caught:
        describe_image(path)
    assert re.search(message, str(caught.value)), str(caught.value)


@pytest.mark.parametrize(
    ("array", "channels"),
    [
        (np.zeros((8, 10), np.uint16), 1),
        (np.zeros((1, 8, 10), np.uint8), 1),  # one page of a stack
        (np.zeros((8, 10, 1), np.uint8), 1),
        (np.zeros((8, 10, 4), np.uint8), 4),  # RGBA
        (np.full((8, 10), 1.0005, np.float32), 1),  # rounding above 1 is tolerated
        (np.zeros((8, 10), bool), 1),
    ],
    ids=["uint16", "1xHxW", "HxWx1", "rgba", "float-rounding", "bool"],
)
def test_images_that_are_accepted(tmp_path, array, channels):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, array)
    assert describe_image(path) == {
        "height": 8,
        "width": 10,
        "channels": channels,
        "dtype": str(array.dtype),
    }
