import numpy as np
import pytest
import tifffile

from protoseg import naming
from protoseg.catalogue import build_catalogue
from protoseg.errors import InputError

DATA_CFG = {
    "pattern": naming.STUDY_PATTERN,
    "ignore": [],
    "state_format": naming.STUDY_STATE_FORMAT,
    "channels": {"1": "brightfield", "2": "fluorescent"},
    "planes": [12, 14],
}


def write_state(folder, xy, shape=(20, 30, 3)):
    paths = []
    for channel in (1, 2):
        for z in (12, 14):
            path = folder / naming.study_file_name(1, 1, channel, xy, z)
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
