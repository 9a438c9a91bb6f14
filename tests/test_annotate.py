"""The annotator entry: which images, embeddings and commit paths, without a display."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from protoseg import annotate
from protoseg.cli import main
from protoseg.errors import ConfigError, InputError
from protoseg.masks.imported import import_path
from protoseg.masks.sam import embedding_path, settings_from_config
from tests.workflow_helpers import demo_config

STATE = "day1t1xy10"


@pytest.fixture
def config(tmp_path):
    """The demo config with its folders in tmp and an import folder set."""
    config = copy.deepcopy(demo_config())
    config["demo"]["out_dir"] = str(tmp_path / "demo")
    config["masks"]["sam"]["embeddings_dir"] = str(tmp_path / "embeddings")
    config["masks"]["import"]["dir"] = str(tmp_path / "annotations")
    return config


def write_raw_images(config: dict) -> None:
    """Tiny stand-ins for the demo's raw images (the plan only needs them to exist)."""
    for record in annotate.raw_records(config).itertuples():
        Path(record.path).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(record.path, np.full((8, 8, 3), record.z, np.uint8))


def test_plan_has_every_plane_of_the_state_in_order(config):
    plan = annotate.annotator_plan(config, STATE)
    assert [int(task.commit.stem[1:]) for task in plan] == sorted(config["data"]["planes"])
    fluorescent_channel = next(
        key for key, name in config["data"]["channels"].items() if name == "fluorescent"
    )
    for task in plan:
        z = int(task.commit.stem[1:])
        assert task.image.name == f"day1t1c{fluorescent_channel}xy10z{z}.tif"


def test_plan_paths_are_those_the_masks_stage_uses(config):
    # The commit path is where the import method reads, the embedding path is where the
    # SAM methods cache: both computed by the masks stage's own functions.
    settings = settings_from_config(config["masks"]["sam"])
    for task in annotate.annotator_plan(config, STATE):
        z = int(task.commit.stem[1:])
        assert task.commit == import_path(
            config["masks"]["import"]["dir"], "{state}/z{z}.tif", STATE, z
        )
        assert task.embedding == embedding_path(
            config["masks"]["sam"]["embeddings_dir"], settings, STATE, z
        )


def test_plan_follows_a_custom_import_template(config):
    config["masks"]["import"]["template"] = "{state}-z{z}.tif"
    plan = annotate.annotator_plan(config, STATE, planes=[18])
    assert plan[0].commit == Path(config["masks"]["import"]["dir"]) / f"{STATE}-z18.tif"


def test_plan_subset_of_planes(config):
    plan = annotate.annotator_plan(config, STATE, planes=[20, 14])
    assert [task.commit.stem for task in plan] == ["z14", "z20"]


def test_plan_refuses_unknown_state_plane_and_unset_import_dir(config):
    with pytest.raises(InputError, match="day9t9xy9.*no such state"):
        annotate.annotator_plan(config, "day9t9xy9")
    with pytest.raises(ConfigError, match=r"data\.planes.*\[13\]"):
        annotate.annotator_plan(config, STATE, planes=[13])
    config["masks"]["import"]["dir"] = None
    with pytest.raises(ConfigError, match=r"masks\.import\.dir"):
        annotate.annotator_plan(config, STATE)


def test_staged_names_make_micro_sam_save_where_the_plan_says(config, tmp_path):
    write_raw_images(config)
    plan = annotate.annotator_plan(config, STATE)
    staged = annotate.stage_images(plan, tmp_path / "staging")
    arguments = annotate.annotator_arguments(config, plan, staged)
    # micro-sam's image-series annotator saves each image's mask as
    # output_folder/{stem}.tif and its embeddings as embedding_path/{stem}.zarr.
    for task, image in zip(plan, arguments["images"], strict=True):
        stem = Path(image).stem
        assert Path(arguments["output_folder"]) / f"{stem}.tif" == task.commit
        assert Path(arguments["embedding_path"]) / f"{stem}.zarr" == task.embedding
        # The staged file shows the plane's own image.
        assert tifffile.imread(image)[0, 0, 0] == int(task.commit.stem[1:])


def test_staging_again_replaces_old_links(config, tmp_path):
    write_raw_images(config)
    plan = annotate.annotator_plan(config, STATE, planes=[12])
    annotate.stage_images(plan, tmp_path / "staging")
    staged = annotate.stage_images(plan, tmp_path / "staging")
    assert len(list((tmp_path / "staging").iterdir())) == 1 and staged[0].exists()


def test_staging_a_missing_image_names_it(config, tmp_path):
    plan = annotate.annotator_plan(config, STATE, planes=[12])  # no images written
    with pytest.raises(InputError, match="z12.tif.*not found"):
        annotate.stage_images(plan, tmp_path / "staging")


def test_arguments_take_the_masks_stage_sam_settings(config, tmp_path):
    write_raw_images(config)
    sam = config["masks"]["sam"]
    sam.update(
        {
            "model_type": "vit_h",
            "checkpoint": "/weights/vit_h.pth",
            "tile_shape": [512, 512],
            "halo": [64, 64],
            "device": "cpu",
        }
    )
    plan = annotate.annotator_plan(config, STATE)
    staged = annotate.stage_images(plan, tmp_path / "staging")
    arguments = annotate.annotator_arguments(config, plan, staged)
    assert arguments["model_type"] == "vit_h"
    assert arguments["checkpoint_path"] == "/weights/vit_h.pth"
    assert arguments["tile_shape"] == (512, 512) and arguments["halo"] == (64, 64)
    assert arguments["device"] == "cpu"
    assert arguments["skip_segmented"] is True
    assert annotate.annotator_arguments(config, plan, staged, redo=True)["skip_segmented"] is False
    sam["device"] = "auto"
    assert annotate.annotator_arguments(config, plan, staged)["device"] is None  # micro-sam picks


def test_folder_source_reads_the_raw_folder(config, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for channel in (1, 2):
        for z in config["data"]["planes"]:
            tifffile.imwrite(raw / f"day2t3c{channel}xy4z{z}.tif", np.zeros((4, 4, 3), np.uint8))
    config["data"].update({"source": "folder", "raw_dir": str(raw)})
    plan = annotate.annotator_plan(config, "day2t3xy4", planes=[18])
    assert plan[0].image == raw / "day2t3c2xy4z18.tif"


@pytest.fixture
def no_napari(monkeypatch):
    """Make `import napari` fail even where napari is installed."""
    monkeypatch.setitem(sys.modules, "napari", None)


def test_missing_napari_gives_install_hint(no_napari):
    with pytest.raises(annotate.AnnotatorUnavailable, match=r"pip install 'protoseg\[annotator\]'"):
        annotate.load_annotator()


def test_cli_plan_prints_one_line_per_plane(config, tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["annotate", STATE, "--config", str(config_path), "--plan", "-z", "12", "24"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    image, embedding, commit = lines[1].split("\t")
    assert (
        image.endswith("z24.tif")
        and embedding.endswith(f"{STATE}/z24.zarr")
        and commit.endswith(f"{STATE}/z24.tif")
    )


def test_cli_without_napari_fails_cleanly_before_staging(config, tmp_path, capsys, no_napari):
    write_raw_images(config)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["annotate", STATE, "--config", str(config_path)]) == 2
    assert "protoseg[annotator]" in capsys.readouterr().err
    assert not annotate.staging_dir(config, STATE).exists()


def test_cli_reports_bad_state_and_bad_config(config, tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["annotate", "nosuchstate", "--config", str(config_path), "--plan"]) == 2
    assert "nosuchstate" in capsys.readouterr().err
    config["masks"]["sam"]["bogus_key"] = 1
    config_path.write_text(yaml.safe_dump(config))
    assert main(["annotate", STATE, "--config", str(config_path), "--plan"]) == 2
    assert "bogus_key" in capsys.readouterr().err


def test_a_plane_of_a_microscope_container_is_staged_as_its_own_tiff(tmp_path):
    from protoseg.stacks import PlaneAddress

    stack = np.arange(3 * 2 * 8 * 10, dtype=np.uint16).reshape(3, 2, 8, 10)
    path = tmp_path / "field.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "ZCYX"})
    plan = [
        annotate.PlaneTask(
            Path(str(PlaneAddress(str(path), "ome-tiff", 0, 0, z, 1))),
            tmp_path / "emb" / f"z{z}.zarr",
            tmp_path / "masks" / f"z{z}.tif",
        )
        for z in (0, 2)
    ]
    staged = annotate.stage_images(plan, tmp_path / "staging")
    assert [image.name for image in staged] == ["z0.tif", "z2.tif"]
    np.testing.assert_array_equal(tifffile.imread(staged[1]), stack[2, 1])
