"""The `protoseg` command: predict with a real saved U-Net, config loading, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
import yaml

from protoseg.cli import main
from protoseg.config import load_config
from protoseg.errors import ConfigError, InputError
from protoseg.model import build_model, save_model
from protoseg.predict import SUMMARY_NAME, output_paths
from tests.workflow_helpers import REPO

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny untrained U-Net saved as the training stage saves one (meta with dataset info)."""
    torch.manual_seed(0)
    model = build_model({"depth": 2, "base_channels": 4, "batch_norm": True}, in_channels=3)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    from tests.test_predict import record_meta

    meta = {"name": "all-bce", "loss": "bce", **record_meta("resize", (32, 32))}
    save_model(path, model, meta)
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(folder / "field1.tif", rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    tifffile.imwrite(folder / "field2.tif", rng.integers(0, 65535, (70, 30), dtype=np.uint16))
    return folder


def test_console_command_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "protoseg.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "predict" in result.stdout and "annotate" in result.stdout


def test_predict_with_a_saved_model_writes_every_output(model_path, images, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(
        [
            "predict",
            str(model_path),
            str(images),
            "--out",
            str(out),
            "--overlap",
            "0.5",
            "--instances",
            "watershed",
        ]
    )
    assert status == 0
    assert "2 image(s)" in capsys.readouterr().out
    for stem, shape in (("field1", (40, 56)), ("field2", (70, 30))):
        paths = output_paths(out, stem)
        labels = tifffile.imread(paths["labels"])
        binary = tifffile.imread(paths["binary"])
        assert labels.shape == shape and labels.dtype == np.uint16
        assert binary.shape == shape and ((labels > 0) == (binary > 0)).all()
        assert paths["overlay"].is_file()
    assert len((out / SUMMARY_NAME).read_text().splitlines()) == 3


def test_predict_threshold_changes_the_mask(model_path, images, tmp_path):
    fractions = []
    for threshold in ("0.2", "0.8"):
        out = tmp_path / threshold
        assert (
            main(
                [
                    "predict",
                    str(model_path),
                    str(images / "field1.tif"),
                    "-o",
                    str(out),
                    "-q",
                    "--threshold",
                    threshold,
                ]
            )
            == 0
        )
        fractions.append(tifffile.imread(output_paths(out, "field1")["binary"]).mean())
    assert fractions[0] >= fractions[1]


def test_predict_folds_batch_norm_when_told(model_path, images, tmp_path, monkeypatch):
    from protoseg import model as model_module

    fold, folded = model_module.fold_batch_norm, []

    def recording_fold(network):
        folded.append(network)
        return fold(network)

    monkeypatch.setattr(model_module, "fold_batch_norm", recording_fold)
    masks, folds = [], []
    for extra in ([], ["--fold-batch-norm"]):
        out = tmp_path / f"out{len(extra)}"
        command = ["predict", str(model_path), str(images / "field1.tif"), "-o", str(out), "-q"]
        assert main([*command, "--precision", "fp32", *extra]) == 0
        masks.append(tifffile.imread(output_paths(out, "field1")["binary"]))
        folds.append(len(folded))
    assert folds[0] == 0 and folds[1] >= 1  # the schema's default is off
    np.testing.assert_array_equal(masks[0], masks[1])  # in float32 the same function


def test_predict_errors_name_the_file_and_exit_2(model_path, images, tmp_path, capsys):
    assert (
        main(["predict", str(tmp_path / "missing.pt"), str(images), "-o", str(tmp_path / "o1")])
        == 2
    )
    assert "missing.pt" in capsys.readouterr().err
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_text("nonsense")
    assert main(["predict", str(not_a_model), str(images), "-o", str(tmp_path / "o2")]) == 2
    assert "model.pt" in capsys.readouterr().err
    tifffile.imwrite(
        images / "field3.tif",
        np.zeros((30, 30, 2), np.uint8),
        photometric="minisblack",
        planarconfig="contig",
    )
    assert main(["predict", str(model_path), str(images), "-o", str(tmp_path / "o3")]) == 2
    assert "field3.tif" in capsys.readouterr().err and not (tmp_path / "o3").exists()


def test_predict_with_a_context_model_reads_plane_names_from_the_config(tmp_path, capsys):
    """A focal-context model takes per-plane files named by --config's data.pattern."""
    from tests.test_predict import record_meta, write_planes

    torch.manual_seed(0)
    model = build_model({"depth": 2, "base_channels": 4}, in_channels=3)  # grey, 3 planes
    path = tmp_path / "bf_z1.pt"
    meta = record_meta("patches", (32, 32), 1.0, "grey", context_planes=1)
    save_model(path, model, {"name": "bf_z1-bce", "loss": "bce", **meta})
    write_planes(tmp_path / "in", {12: 51, 14: 102, 16: 153}, shape=(24, 40))
    config = tmp_path / "planes.yaml"
    config.write_text(yaml.safe_dump({"data": {"planes": [12, 14, 16]}}))
    command = ["predict", str(path), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-q"]
    assert main(command) == 2  # without the config the files are single images
    assert "single image" in capsys.readouterr().err
    assert main([*command, "--config", str(REPO / "config" / "config.yaml"), str(config)]) == 0
    summary = (tmp_path / "out" / SUMMARY_NAME).read_text().splitlines()
    assert len(summary) == 4 and "plane" in summary[0].split(",")
    labels = tifffile.imread(output_paths(tmp_path / "out", "day1t1c1xy5z14")["labels"])
    assert labels.shape == (24, 40)


@pytest.mark.parametrize(
    "option",
    [
        ["--tile", "0"],
        ["--tile", "a"],
        ["--threshold", "1.5"],
        ["--instances", "blobs"],
        ["--overlap", "8"],
        ["--precision", "fp8"],
    ],
)
def test_bad_options_are_usage_errors(model_path, images, tmp_path, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(model_path), str(images), "-o", str(tmp_path / "o"), *option])
    assert exit_info.value.code == 2


def test_tile_accepts_one_size_or_two(model_path, images, tmp_path):
    for tile in ("16", "16x24"):
        assert (
            main(
                [
                    "predict",
                    str(model_path),
                    str(images / "field1.tif"),
                    "-o",
                    str(tmp_path / tile),
                    "-q",
                    "--tile",
                    tile,
                    "--overlap",
                    "0.25",
                ]
            )
            == 0
        )


def test_config_files_stack_and_are_validated(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"masks": {"sam": {"model_type": "vit_h"}}}))
    config = load_config([REPO / "config" / "config.yaml", override])
    assert config["masks"]["sam"]["model_type"] == "vit_h"
    assert config["masks"]["method"] == "classical"  # the rest kept from the first file
    override.write_text(yaml.safe_dump({"masks": {"sam": {"model": "vit_h"}}}))
    with pytest.raises(ConfigError, match="masks.sam"):
        load_config([REPO / "config" / "config.yaml", override])
    with pytest.raises(InputError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
    override.write_text("- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_config([override])
