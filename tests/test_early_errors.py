"""Issue 23's cases, each stopped (or warned about) at the earliest step that can know it,
through the real Snakefile."""

from __future__ import annotations

import json
import socket

import numpy as np
import tifffile

from protoseg.catalogue import study_file_name
from protoseg.locks import LOCK_DIR, OWNER_FILE
from tests.workflow_helpers import run_snakemake, tiny_config, write_project

STATES = ((1, 1, 1), (1, 1, 10))
PLANES = (12, 18)
SHAPE = (24, 32)


def folder_project(tmp_path, **masks):
    raw = tmp_path / "raw"
    raw.mkdir()
    for day, time_point, xy in STATES:
        for channel in (1, 2):
            for z in PLANES:
                name = study_file_name(day, time_point, channel, xy, z)
                tifffile.imwrite(raw / name, np.full(SHAPE, 40 * channel, np.uint8))
    config = tiny_config()
    config["data"].update({"source": "folder", "raw_dir": str(raw), "planes": list(PLANES)})
    config["split"]["test"] = [10]
    config["quality"]["truth_dir"] = None
    config["masks"].update(masks)
    write_project(tmp_path, config)
    return config


def test_sam_weights_missing_with_downloads_off_stop_the_dry_run(tmp_path, monkeypatch):
    config = tiny_config()
    config["masks"]["method"] = "sam-auto"
    write_project(tmp_path, config)
    monkeypatch.setenv("MICROSAM_CACHEDIR", str(tmp_path / "empty-cache"))
    result = run_snakemake(tmp_path, "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key 'masks.sam.checkpoint': the weights of '" in output
    assert "are not on this machine" in output and "downloads are off" in output
    assert not (tmp_path / "logs").exists()  # no job ran, not even the demo


def test_an_rgb_imported_mask_stops_the_catalogue_job(tmp_path):
    masks_dir = tmp_path / "masks"
    folder_project(tmp_path, method="import", **{"import": {"dir": str(masks_dir)}})
    for state in ("day1t1xy1", "day1t1xy10"):
        for z in PLANES:
            (masks_dir / state).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(masks_dir / state / f"z{z}.tif", np.eye(*SHAPE, dtype=np.uint8))
    colour = np.dstack([np.eye(*SHAPE), np.zeros(SHAPE), np.ones(SHAPE)]).astype(np.uint8)
    tifffile.imwrite(masks_dir / "day1t1xy10" / "z18.tif", colour)
    result = run_snakemake(tmp_path, "results/masks/planes/day1t1xy1/z12.tif", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error in rule catalogue" in output
    assert f"{masks_dir}/day1t1xy10/z18.tif: mask is a colour image of shape (24, 32, 3)" in output
    assert not (tmp_path / "logs" / "masks").exists()  # stopped before any mask job


def test_a_stale_lock_is_named_with_its_command_and_a_dry_run_still_works(tmp_path):
    write_project(tmp_path, tiny_config())
    locks = tmp_path / LOCK_DIR
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text(f"{tmp_path}/results/catalogue.csv\n")
    owner = {"pid": 999999, "host": socket.gethostname(), "started": 0}
    (locks / OWNER_FILE).write_text(json.dumps(owner))
    result = run_snakemake(tmp_path, "-n", check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("protoseg: stale lock")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Snakemake run 999999" in lines[0] and "--unlock`" in lines[0]
    assert (locks / "0.output.lock").exists()  # protoseg never removes a lock itself
