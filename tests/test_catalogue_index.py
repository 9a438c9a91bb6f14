"""The image index the workflow's input functions use, and the catalogue job's header
cache and parallel reading."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg import catalogue
from protoseg.errors import InputError

PLANES = [12, 14]


def records(rows):
    return pd.DataFrame(rows, columns=["path", "state", "channel", "modality", "z", "file"])


def study_rows(states=("s1", "s2")):
    return [
        {
            "path": f"/raw/{state}c{channel}z{z}.tif",
            "state": state,
            "channel": channel,
            "modality": modality,
            "z": z,
            "file": f"/raw/{state}c{channel}z{z}.tif",
        }
        for state in states
        for channel, modality in (("1", "brightfield"), ("2", "fluorescent"))
        for z in PLANES
    ]


def test_index_finds_each_image_by_state_modality_and_plane():
    index = catalogue.index_records(records(study_rows()), PLANES)
    assert len(index) == 8
    assert index.path("s2", "fluorescent", 14) == "/raw/s2c2z14.tif"
    assert index.path("s2", "fluorescent", "14") == "/raw/s2c2z14.tif"
    assert index.state_paths("s1", "brightfield") == ["/raw/s1c1z12.tif", "/raw/s1c1z14.tif"]


def test_index_paths_follow_the_configured_plane_order():
    index = catalogue.index_records(records(study_rows()), [14, 12])
    assert index.state_paths("s1", "brightfield") == ["/raw/s1c1z14.tif", "/raw/s1c1z12.tif"]


def test_index_agrees_with_lookup_on_every_image():
    table = records(study_rows(states=("a", "b", "c")))
    index = catalogue.index_records(table, PLANES)
    for row in table.itertuples():
        expected = catalogue.lookup(table, state=row.state, modality=row.modality, z=row.z)
        assert index.path(row.state, row.modality, row.z) == expected


def test_a_missing_image_is_an_error_naming_the_state():
    index = catalogue.index_records(records(study_rows()), PLANES)
    with pytest.raises(InputError, match=r"s3: expected one image of modality brightfield at z12"):
        index.path("s3", "brightfield", 12)


def test_files_of_a_container_are_listed_once():
    rows = [
        {
            "path": f"/raw/s1.ome.tif::{channel}:{z}",
            "state": "s1",
            "channel": channel,
            "modality": modality,
            "z": z,
            "file": "/raw/s1.ome.tif",
        }
        for channel, modality in (("1", "brightfield"), ("2", "fluorescent"))
        for z in PLANES
    ]
    index = catalogue.index_records(records(rows), PLANES)
    assert index.files_of(["s1"], ["brightfield", "fluorescent"]) == ["/raw/s1.ome.tif"]
    assert index.source_files(index.state_paths("s1", "fluorescent")) == ["/raw/s1.ome.tif"]


def test_files_of_several_states_are_sorted_and_unique():
    index = catalogue.index_records(records(study_rows()), PLANES)
    files = index.files_of(["s2", "s1"], ["fluorescent"])
    assert files == sorted(files) and len(files) == 4


def test_duplicate_state_channel_and_plane_names_both_files():
    rows = study_rows()
    rows.append({**rows[0], "path": "/other/s1c1z12.tif", "file": "/other/s1c1z12.tif"})
    with pytest.raises(InputError) as error:
        catalogue.index_records(records(rows), PLANES)
    message = str(error.value)
    assert "/other/s1c1z12.tif" in message and "/raw/s1c1z12.tif" in message
    assert "state (s1), channel (1) and plane (z12)" in message


def test_two_channels_of_one_modality_name_both_files():
    rows = study_rows()
    rows.append({**rows[0], "path": "/raw/s1c3z12.tif", "channel": "3", "file": "/raw/x"})
    with pytest.raises(InputError, match=r"channels 1 and 3.*s1c1z12\.tif"):
        catalogue.index_records(records(rows), PLANES)


def test_duplicates_in_a_folder_are_refused_before_the_index(tmp_path):
    # The names' own check (parse time) still names both files.
    data_cfg = {
        "pattern": r"(?P<dup>[ab]/)?day(?P<day>\d+)t(?P<time>\d+)c(?P<channel>\d+)xy(?P<xy>\d+)z(?P<z>\d+)\.tif$",
        "state_format": catalogue.STUDY_STATE_FORMAT,
        "channels": {"1": "brightfield"},
        "planes": [12],
        "ignore": [],
    }
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "day1t1c1xy1z12.tif").write_bytes(b"")
    with pytest.raises(InputError, match=r"day1t1c1xy1z12\.tif.*as .*day1t1c1xy1z12\.tif"):
        catalogue.scan_folder(tmp_path, data_cfg)


# ---------------------------------------------------------------- header cache, workers
def write_planes(folder: Path, count: int) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for number in range(count):
        path = folder / f"p{number}.tif"
        tifffile.imwrite(path, rng.integers(1, 255, (8 + number % 3, 10), dtype=np.uint8))
        paths.append(str(path))
    return pd.DataFrame({"path": paths, "state": [f"s{n}" for n in range(count)]})


def test_cached_images_are_not_opened_again(tmp_path, monkeypatch):
    table = write_planes(tmp_path / "raw", 4)
    cache = tmp_path / "cache.csv"
    first = catalogue.describe_images(table, progress=False, cache=cache)
    opened = []
    real = catalogue.read_image_axes  # what reads a file's pixels
    monkeypatch.setattr(catalogue, "read_image_axes", lambda p: opened.append(p) or real(p))
    again = catalogue.describe_images(table, progress=False, cache=cache)
    assert opened == []
    pd.testing.assert_frame_equal(first, again)
    # A changed file (size or mtime) is opened again, and only that one.
    tifffile.imwrite(table["path"][2], np.full((20, 30), 7, np.uint8))
    changed = catalogue.describe_images(table, progress=False, cache=cache)
    assert opened == [table["path"][2]]
    assert changed.loc[2, "height"] == 20


def test_a_cache_of_other_checks_is_not_trusted(tmp_path, monkeypatch):
    table = write_planes(tmp_path / "raw", 2)
    cache = tmp_path / "cache.csv"
    catalogue.describe_images(table, progress=False, cache=cache)
    monkeypatch.setattr(catalogue, "_checks_version", lambda: "other")
    opened = []
    real = catalogue.read_image_axes  # what reads a file's pixels
    monkeypatch.setattr(catalogue, "read_image_axes", lambda p: opened.append(p) or real(p))
    catalogue.describe_images(table, progress=False, cache=cache)
    assert len(opened) == 2


def test_workers_give_the_serial_table(tmp_path, monkeypatch):
    table = write_planes(tmp_path / "raw", 12)
    monkeypatch.setattr(catalogue, "PARALLEL_FROM", 2)
    serial = catalogue.describe_images(table, progress=False)
    parallel = catalogue.describe_images(table, progress=False, workers=2)
    pd.testing.assert_frame_equal(serial, parallel)


def test_a_bad_file_in_a_worker_names_it_and_the_good_ones_are_cached(tmp_path, monkeypatch):
    table = write_planes(tmp_path / "raw", 6)
    Path(table["path"][4]).write_bytes(b"not a tiff")
    monkeypatch.setattr(catalogue, "PARALLEL_FROM", 2)
    cache = tmp_path / "cache.csv"
    with pytest.raises(InputError, match=r"p4\.tif"):
        catalogue.describe_images(table, progress=False, workers=2, cache=cache)
    assert set(pd.read_csv(cache)["path"]) == set(table["path"][:4])


# ---------------------------------------------------------------- records cached at parse time
DATA_CFG = {
    "source": "folder",
    "pattern": catalogue.STUDY_PATTERN,
    "ignore": [],
    "sample_sheet": None,
    "state_format": catalogue.STUDY_STATE_FORMAT,
    "channels": {"1": "brightfield", "2": "fluorescent"},
    "planes": [12, 14],
}


def touch_states(folder, xys):
    folder.mkdir(parents=True, exist_ok=True)
    for xy in xys:
        for channel in (1, 2):
            for z in (12, 14):
                (folder / catalogue.study_file_name(1, 1, channel, xy, z)).write_bytes(b"")


def test_records_are_read_back_while_the_names_are_unchanged(tmp_path, monkeypatch):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    touch_states(raw, [1, 2])
    first = catalogue.cached_records(DATA_CFG, raw, cache)
    pd.testing.assert_frame_equal(first, catalogue.records_from_config(DATA_CFG, raw))
    parsed = []
    real = catalogue.records_from_config
    monkeypatch.setattr(catalogue, "records_from_config", lambda *a: parsed.append(a) or real(*a))
    pd.testing.assert_frame_equal(catalogue.cached_records(DATA_CFG, raw, cache), first)
    assert parsed == []
    touch_states(raw, [3])  # a new state: parsed anew
    assert catalogue.cached_records(DATA_CFG, raw, cache)["state"].nunique() == 3
    assert len(parsed) == 1
    assert len(list(cache.glob("records-*.pkl"))) == 1
    # another config (here the planes) is another key
    with pytest.raises(InputError, match="not in data.planes"):
        catalogue.cached_records({**DATA_CFG, "planes": [12]}, raw, cache)


def test_a_bad_name_is_refused_every_time(tmp_path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    touch_states(raw, [1])
    (raw / "day1t1c1xy1_z12.tif").write_bytes(b"")
    for _ in range(2):
        with pytest.raises(InputError, match="does not match data.pattern"):
            catalogue.cached_records(DATA_CFG, raw, cache)
