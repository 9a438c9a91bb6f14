"""`protoseg check CONFIG...`: what it says about good and broken configs, and its exit status."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import yaml

from protoseg import check, cli
from protoseg.catalogue import study_file_name
from protoseg.locks import LOCK_DIR
from tests.workflow_helpers import REPO

DEMO = REPO / "config" / "config.yaml"


def write(path, text):
    path.write_text(text)
    return path


def levels(report, level):
    return [text for found, text in report.lines if found == level]


def test_the_demo_config_can_start_and_is_described(tmp_path, capsys):
    assert cli.main(["check", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "ok: data: 112 images (112 files) of 8 states, 7 planes (z12, z14" in out
    assert "2 channels (1 (brightfield), 2 (fluorescent))" in out
    assert "ok: masks: classical of the fluorescent images (no SAM weights needed)" in out
    assert "ok: split test: 2 state(s): day1t1xy10, day1t2xy10" in out
    assert "ok: split train: 6 state(s)" in out
    assert "ok: pixel size: none stated" in out
    assert out.rstrip().endswith(
        "protoseg check: the run can start "
        "(pixels are checked by the catalogue job: snakemake all_catalogue)"
    )


def test_yaml_syntax_error_names_file_line_column_and_cause(tmp_path, capsys):
    bad = write(tmp_path / "bad.yaml", "train:\n  losses: [bce, mse\n  epochs: 3\n")
    assert cli.main(["check", str(DEMO), str(bad)]) == 1
    out = capsys.readouterr().out
    assert (
        f"error: {bad}:3:9: YAML syntax: expected ',' or ']', but got ':' "
        "(the '[' at line 2, column 11 is not closed)"
    ) in out
    assert "1 error(s): the run would stop" in out


def test_a_tab_is_named_as_the_cause(tmp_path):
    tab = write(tmp_path / "tab.yaml", "train:\n\tepochs: 3\n")
    [error] = levels(check.check([tab]), "error")
    assert error.startswith(f"{tab}:2:1: YAML syntax: found character '\\t'")
    assert "never tabs" in error


def test_every_schema_error_is_listed_by_key(tmp_path):
    override = write(tmp_path / "o.yaml", "train:\n  epochs: many\n  lossses: [bce]\n")
    errors = levels(check.check([DEMO, override]), "error")
    assert errors == [
        "config key 'train': Additional properties are not allowed ('lossses' was unexpected)",
        "config key 'train.epochs': 'many' is not of type 'integer'",
    ]


def test_later_files_override_earlier_ones(tmp_path):
    override = write(tmp_path / "o.yaml", "split:\n  test: [1]\n")
    report = check.check([DEMO, override])
    assert "split test: 2 state(s): day1t1xy1, day1t2xy1" in levels(report, "ok")


def test_missing_config_file_and_non_mapping(tmp_path):
    listed = write(tmp_path / "list.yaml", "- a\n- b\n")
    errors = levels(check.check([tmp_path / "nope.yaml", listed]), "error")
    assert errors == [
        f"{tmp_path / 'nope.yaml'}: config file not found",
        f"{listed}: a config file holds a mapping of keys, not a list",
    ]


def folder_project(tmp_path, planes=(12, 18), xys=(1, 2, 10), skip=()):
    raw = tmp_path / "raw"
    raw.mkdir()
    for xy in xys:
        for channel in (1, 2):
            for z in planes:
                name = study_file_name(1, 1, channel, xy, z)
                if name not in skip:
                    tifffile.imwrite(raw / name, np.full((8, 8), 9, np.uint8))
    config = {"data": {"source": "folder", "raw_dir": str(raw), "planes": list(planes)}}
    config["quality"] = {"truth_dir": None}
    return write(tmp_path / "data.yaml", yaml.safe_dump(config))


def test_data_folder_counts_and_what_is_missing(tmp_path):
    data = folder_project(tmp_path, skip=("day1t1c2xy2z18.tif",))
    report = check.check([DEMO, data])
    assert levels(report, "error") == [
        "data: state day1t1xy2 has no image of channel 2 (fluorescent) at plane(s) z18"
    ]
    assert any(
        line.startswith(f"data: {tmp_path / 'raw'}, names read by pattern ")
        for line in levels(report, "ok")
    )


def test_data_folder_complete(tmp_path):
    report = check.check([DEMO, folder_project(tmp_path)])
    assert report.errors == 0, report.text()
    assert (
        "data: 12 images (12 files) of 3 states, 2 planes (z12, z18), 2 channels" in report.text()
    )
    assert "split test: 1 state(s): day1t1xy10" in report.text()


def test_missing_raw_folder(tmp_path):
    override = write(tmp_path / "o.yaml", f"data:\n  source: folder\n  raw_dir: {tmp_path}/none\n")
    assert levels(check.check([DEMO, override]), "error") == [
        f"data: {tmp_path}/none: data.raw_dir folder not found"
    ]


def test_sam_weights_missing_with_downloads_off(tmp_path, monkeypatch):
    pytest.importorskip("micro_sam")
    monkeypatch.setenv("MICROSAM_CACHEDIR", str(tmp_path / "cache"))
    override = write(tmp_path / "o.yaml", "masks:\n  method: sam-auto\n")
    [error] = levels(check.check([DEMO, override]), "error")
    assert error.startswith(
        "config key 'masks.sam.checkpoint': the weights of 'vit_b_lm' are not on this machine"
    )


def test_sam_checkpoint_present(tmp_path):
    weights = write(tmp_path / "sam_vit_h.pth", "weights")
    override = write(
        tmp_path / "o.yaml", f"masks:\n  method: sam-auto\n  sam:\n    checkpoint: {weights}\n"
    )
    report = check.check([DEMO, override])
    assert f"masks: sam-auto, SAM weights {weights} found" in levels(report, "ok")


def test_a_stale_lock_is_reported(tmp_path):
    (tmp_path / LOCK_DIR).mkdir(parents=True)
    (tmp_path / LOCK_DIR / "0.input.lock").write_text("x\n")
    report = check.check([DEMO], workdir=tmp_path)
    [warning] = levels(report, "warning")
    assert warning.startswith("stale lock in ") and "`snakemake --unlock`" in warning
    assert report.errors == 0
