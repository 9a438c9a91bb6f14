"""Bad input stops the real workflow with a clear message and no partial outputs."""

import numpy as np
import pytest
import tifffile
import yaml

from protoseg.catalogue import study_file_name
from tests.workflow_helpers import run_snakemake, tiny_config, write_project

pytestmark = pytest.mark.slow


def folder_config(raw_dir):
    config = tiny_config()
    config["data"]["source"] = "folder"
    config["data"]["raw_dir"] = str(raw_dir)
    config["data"]["planes"] = [12, 14]
    config["quality"]["truth_dir"] = None
    return config


def write_images(raw_dir, states=((1, 1, 1), (1, 1, 10))):
    raw_dir.mkdir(parents=True, exist_ok=True)
    for day, time, xy in states:
        for channel in (1, 2):
            for z in (12, 14):
                tifffile.imwrite(
                    raw_dir / study_file_name(day, time, channel, xy, z),
                    np.zeros((24, 32, 3), np.uint8),
                )


def test_catalogue_of_a_folder(tmp_path):
    write_images(tmp_path / "raw")
    write_project(tmp_path, folder_config(tmp_path / "raw"))
    run_snakemake(tmp_path, "results/catalogue.csv")
    lines = (tmp_path / "results" / "catalogue.csv").read_text().splitlines()
    assert len(lines) == 1 + 8
    assert lines[0].startswith(
        "path,day,time,channel,modality,xy,z,state,height,width,channels,dtype"
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["masks"].update({"metod": "classical"}), "metod"),
        (lambda c: c["train"].update({"epochs": "many"}), "epochs"),
        (lambda c: c["masks"].update({"method": "magic"}), "magic"),
    ],
    ids=["unknown-key", "wrong-type", "unknown-method"],
)
def test_bad_config_is_refused_at_start(tmp_path, edit, message):
    config = tiny_config()
    edit(config)
    write_project(tmp_path, config)
    result = run_snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


def test_bad_file_name_stops_the_run_before_any_job(tmp_path):
    write_images(tmp_path / "raw")
    (tmp_path / "raw" / "day1t1c1xy1-z12.tif").write_bytes(b"")
    write_project(tmp_path, folder_config(tmp_path / "raw"))
    result = run_snakemake(tmp_path, "results/catalogue.csv", check=False)
    assert result.returncode != 0
    assert "day1t1c1xy1-z12.tif: name does not match data.pattern" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


def test_truncated_tiff_leaves_no_catalogue(tmp_path):
    write_images(tmp_path / "raw")
    victim = tmp_path / "raw" / "day1t1c2xy10z14.tif"
    victim.write_bytes(victim.read_bytes()[:100])
    write_project(tmp_path, folder_config(tmp_path / "raw"))
    result = run_snakemake(tmp_path, "results/catalogue.csv", check=False)
    assert result.returncode != 0
    log = (tmp_path / "logs" / "catalogue" / "catalogue.log").read_text()
    assert "day1t1c2xy10z14.tif: unreadable or truncated TIFF" in log
    assert not (tmp_path / "results" / "catalogue.csv").exists()


def test_a_configfile_replaces_the_demo_config_instead_of_merging(tmp_path):
    # Channels named differently from the demo's "1"/"2": merged key by key, the demo's
    # channels would be added and every state would lack "channel 1".
    raw = tmp_path / "raw"
    for channel in ("bf", "fl"):
        (raw / channel).mkdir(parents=True)
        for position in ("01", "02"):  # s02 is the test split, s01 trains
            tifffile.imwrite(raw / channel / f"s{position}_z1.tif", np.zeros((24, 32), np.uint8))
    write_project(tmp_path, tiny_config())
    other = folder_config(raw)
    other["data"].update(
        {
            "pattern": r"^(?P<channel>bf|fl)/s(?P<xy>\d+)_z(?P<z>\d+)\.tif$",
            "state_format": "s{xy}",
            "channels": {"bf": "brightfield", "fl": "fluorescent"},
            "planes": [1],
        }
    )
    other["split"]["test"] = [2]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    result = run_snakemake(
        tmp_path, "results/catalogue.csv", "--configfile", str(tmp_path / "other.yaml")
    )
    assert result.returncode == 0
    assert (tmp_path / "results" / "catalogue.csv").read_text().count("\n") == 1 + 4


def test_focal_context_without_a_stack_is_refused_at_start(tmp_path):
    config = tiny_config()
    config["data"]["planes"] = [18]
    config["dataset"]["variants"]["brightfield"]["context_planes"] = 1
    write_project(tmp_path, config)
    result = run_snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "dataset.variants.brightfield.context_planes" in output and "one plane" in output


def test_a_stack_to_predict_without_a_plane_is_refused_at_start(tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    for z in (12, 24):  # z18 of data.planes 12, 18, 24 missing
        tifffile.imwrite(new / study_file_name(9, 1, 1, 5, z), np.zeros((24, 32, 3), np.uint8))
    config = tiny_config()
    config["dataset"]["variants"]["brightfield"]["context_planes"] = 1
    config["predict"]["input_dir"] = str(new)
    write_project(tmp_path, config)
    result = run_snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "no input is plane z18 of state day9t1xy5" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()
