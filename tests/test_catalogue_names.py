import pandas as pd
import pytest

from protoseg import catalogue
from protoseg.errors import ConfigError, InputError

DATA_CFG = {
    "source": "folder",
    "raw_dir": "unused",
    "pattern": catalogue.STUDY_PATTERN,
    "ignore": [r"(^|/)\.", r"\.txt$"],
    "sample_sheet": None,
    "state_format": catalogue.STUDY_STATE_FORMAT,
    "channels": {"1": "brightfield", "2": "fluorescent"},
    "planes": [12, 14],
}


def touch_study_set(folder, states=((1, 1, 10), (1, 2, 3)), planes=(12, 14), channels=(1, 2)):
    folder.mkdir(parents=True, exist_ok=True)
    for day, time, xy in states:
        for channel in channels:
            for z in planes:
                (folder / catalogue.study_file_name(day, time, channel, xy, z)).write_bytes(b"")
    return folder


def test_parse_value_treats_zero_padded_digits_as_numbers():
    assert catalogue.parse_value("010") == 10
    assert catalogue.parse_value("abc") == "abc"


def test_study_name_parses_into_fields(tmp_path):
    records = catalogue.parse_paths(
        [tmp_path / "day1t1c1xy10z15.tif"], tmp_path, {**DATA_CFG, "planes": [15]}
    )
    row = records.iloc[0]
    assert (row["day"], row["time"], row["channel"], row["xy"], row["z"]) == (1, 1, "1", 10, 15)
    assert row["modality"] == "brightfield"
    assert row["state"] == "day1t1xy10"


def test_scan_folder_skips_ignored_files_and_orders_records(tmp_path):
    folder = touch_study_set(tmp_path / "raw")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"")
    records = catalogue.scan_folder(folder, DATA_CFG)
    assert len(records) == 2 * 2 * 2
    assert sorted(records["state"].unique()) == ["day1t1xy10", "day1t2xy3"]
    assert set(records["modality"]) == {"brightfield", "fluorescent"}


def test_bad_name_is_an_error_naming_the_file(tmp_path):
    folder = touch_study_set(tmp_path / "raw")
    (folder / "day1t1c1xy10_z12.tif").write_bytes(b"")
    with pytest.raises(
        InputError, match=r"day1t1c1xy10_z12\.tif: name does not match data\.pattern"
    ):
        catalogue.scan_folder(folder, DATA_CFG)


def test_unknown_channel_and_unconfigured_plane_are_errors(tmp_path):
    folder = touch_study_set(tmp_path / "raw")
    (folder / "day1t1c3xy10z12.tif").write_bytes(b"")
    with pytest.raises(InputError, match=r"c3xy10z12\.tif: channel '3' is not in data\.channels"):
        catalogue.scan_folder(folder, DATA_CFG)
    (folder / "day1t1c3xy10z12.tif").unlink()
    (folder / "day1t1c1xy10z13.tif").write_bytes(b"")
    with pytest.raises(InputError, match=r"z13\.tif: focal plane z13 is not in data\.planes"):
        catalogue.scan_folder(folder, DATA_CFG)


def test_two_files_for_one_state_channel_plane_are_an_error(tmp_path):
    folder = touch_study_set(tmp_path / "raw")
    (folder / "day1t1c1xy010z12.tif").write_bytes(b"")  # xy010 == xy10
    with pytest.raises(
        InputError, match=r"same state \(day1t1xy10\), channel \(1\) and plane \(z12\)"
    ):
        catalogue.scan_folder(folder, DATA_CFG)


def test_missing_plane_or_channel_is_reported_with_the_state(tmp_path):
    folder = touch_study_set(tmp_path / "raw")
    (folder / "day1t2c2xy3z14.tif").unlink()
    with pytest.raises(
        InputError,
        match=r"state day1t2xy3 has no image of channel 2 \(fluorescent\) at plane\(s\) z14",
    ):
        catalogue.records_from_config(DATA_CFG, folder)
    for path in folder.glob("*c2*"):
        path.unlink()
    with pytest.raises(
        InputError, match=r"no image of channel 2 \(fluorescent\) at plane\(s\) z12, z14"
    ):
        catalogue.records_from_config(DATA_CFG, folder)


def test_empty_or_missing_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no images found"):
        catalogue.scan_folder(tmp_path / "empty", DATA_CFG)
    with pytest.raises(InputError, match=r"nowhere: data\.raw_dir folder not found"):
        catalogue.scan_folder(tmp_path / "nowhere", DATA_CFG)


def test_pattern_without_required_groups_is_a_config_error():
    with pytest.raises(ConfigError, match=r"config key 'data\.pattern'.*\['z'\]"):
        catalogue.compile_pattern(
            r"^day(?P<day>\d+)t(?P<time>\d+)c(?P<channel>\d+)xy(?P<xy>\d+)",
            catalogue.STUDY_STATE_FORMAT,
        )
    with pytest.raises(ConfigError, match=r"not a valid regular expression"):
        catalogue.compile_pattern(r"^(?P<z>", catalogue.STUDY_STATE_FORMAT)


def test_other_lab_naming_with_channel_from_folder(tmp_path):
    cfg = {
        **DATA_CFG,
        "pattern": r"^(?P<channel>brightfield|nucleus)/(?P<experiment>\d{6}[A-Z]+\d+)_p(?P<xy>\d+)_t(?P<time>\d+)_z(?P<z>\d+)\.png$",
        "ignore": [r"^gt/"],
        "state_format": "{experiment}_p{xy}_t{time}",
        "channels": {"brightfield": "brightfield", "nucleus": "fluorescent"},
        "planes": [1],
    }
    for folder in ("brightfield", "nucleus", "gt"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "240417YZ15_p0026_t00001_z001.png").write_bytes(b"")
    records = catalogue.records_from_config(cfg, tmp_path)
    assert records["state"].unique().tolist() == ["240417YZ15_p26_t1"]
    assert sorted(records["modality"]) == ["brightfield", "fluorescent"]


def test_sample_sheet_reads_paths_and_fields(tmp_path):
    folder = touch_study_set(tmp_path / "raw", states=((2, 1, 5),))
    rows = [
        {
            "path": catalogue.study_file_name(2, 1, c, 5, z),
            "day": 2,
            "time": 1,
            "xy": 5,
            "channel": c,
            "z": z,
        }
        for c in (1, 2)
        for z in (12, 14)
    ]
    sheet = tmp_path / "sheet.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    records = catalogue.records_from_config({**DATA_CFG, "sample_sheet": str(sheet)}, folder)
    assert records["state"].unique().tolist() == ["day2t1xy5"]
    assert len(records) == 4


def test_sample_sheet_errors_name_the_sheet(tmp_path):
    sheet = tmp_path / "sheet.csv"
    pd.DataFrame([{"path": "a.tif", "channel": 1}]).to_csv(sheet, index=False)
    with pytest.raises(
        InputError, match=r"sheet\.csv: missing column\(s\) \['z', 'day', 'time', 'xy'\]"
    ):
        catalogue.read_sample_sheet(sheet, DATA_CFG, tmp_path)
    pd.DataFrame(
        [{"path": "gone.tif", "channel": 1, "z": 12, "day": 1, "time": 1, "xy": 1}]
    ).to_csv(sheet, index=False)
    with pytest.raises(InputError, match=r"sheet\.csv: line 2: image .*gone\.tif not found"):
        catalogue.read_sample_sheet(sheet, DATA_CFG, tmp_path)


def test_split_by_key_keeps_states_apart(tmp_path):
    folder = touch_study_set(
        tmp_path / "raw", states=((1, 1, 10), (1, 2, 10), (1, 1, 3), (1, 1, 4))
    )
    records = catalogue.scan_folder(folder, DATA_CFG)
    split = {"key": "xy", "test": ["10"], "validation": [4]}
    test = catalogue.states_in_split(records, split, "test")
    validation = catalogue.states_in_split(records, split, "validation")
    train = catalogue.states_in_split(records, split, "train")
    assert test == ["day1t1xy10", "day1t2xy10"]
    assert validation == ["day1t1xy4"]
    assert train == ["day1t1xy3"]
    with pytest.raises(ConfigError, match=r"'split\.key': 'position' is not a column"):
        catalogue.states_in_split(records, {"key": "position", "test": [1]}, "test")


def test_demo_records_follow_the_study_naming():
    demo = {"days": [1], "times": [1, 2], "xy": [1, 10]}
    records = catalogue.demo_records(demo, DATA_CFG, "raw")
    assert len(records) == 1 * 2 * 2 * 2 * 2
    assert "raw/day1t2c2xy10z14.tif" in records["path"].tolist()
    assert (
        catalogue.lookup(records, state="day1t2xy10", modality="fluorescent", z=14)
        == "raw/day1t2c2xy10z14.tif"
    )


def test_match_names_of_new_images_tries_parent_folders_and_returns_the_rest():
    baby = {
        **DATA_CFG,
        "pattern": r"^planes/(?P<stem>evolve_test[A-Z])_c(?P<channel>\d)z(?P<z>\d)\.tif$",
        "state_format": "{stem}",
        "channels": {"1": "brightfield"},
        "planes": [1, 2, 3],
    }
    paths = [
        "/data/baby/planes/evolve_testA_c1z2.tif",  # the pattern needs its folder
        "/data/baby/planes/evolve_testA_c1z1.tif",
        "/elsewhere/stack.tif",
    ]
    records, unmatched = catalogue.match_names(paths, baby)
    assert records[["state", "z", "modality"]].values.tolist() == [
        ["evolve_testA", 1, "brightfield"],
        ["evolve_testA", 2, "brightfield"],
    ]
    assert [str(path) for path in unmatched] == ["/elsewhere/stack.tif"]
    with pytest.raises(InputError, match="z7 is not in data.planes"):
        catalogue.match_names(["/x/planes/evolve_testB_c1z7.tif"], baby)
    assert catalogue.match_names(["/x/a.tif"], baby)[0].empty
