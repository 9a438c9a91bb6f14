"""Jobs of several states (masks/merge.states_per_job) and batches of new images
(predict.images_per_job): the same outputs as one job per state, bad sizes refused at start."""

import copy
import filecmp
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg.batching import gather_summaries, plan_batches
from protoseg.config import validate
from protoseg.errors import ConfigError
from protoseg.predict import PredictInput
from tests.workflow_helpers import run_snakemake, tiny_config, write_project


# ---------------------------------------------------------------- parse time
@pytest.mark.parametrize("key", ["masks", "merge"])
@pytest.mark.parametrize("value", [0, -3, 2.5, "ten", True])
def test_a_bad_states_per_job_names_the_key(key, value):
    config = tiny_config()
    config[key]["states_per_job"] = value
    with pytest.raises(ConfigError, match=rf"{key}\.states_per_job"):
        validate(config)


@pytest.mark.parametrize("value", [0, 1.5, "all"])
def test_a_bad_images_per_job_names_the_key(value):
    config = tiny_config()
    config["predict"]["images_per_job"] = value
    with pytest.raises(ConfigError, match=r"predict\.images_per_job"):
        validate(config)


def test_batch_sizes_default_to_one_job_per_state_and_per_model():
    config = validate(tiny_config())
    assert config["masks"]["states_per_job"] == 1
    assert config["merge"]["states_per_job"] == 1
    assert config["predict"]["images_per_job"] is None


def test_a_bad_batch_size_stops_the_dry_run_naming_the_key(tmp_path):
    config = tiny_config()
    config["masks"]["states_per_job"] = 0
    write_project(tmp_path, config)
    result = run_snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "masks.states_per_job" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def planned_jobs(workdir) -> dict[str, int]:
    result = run_snakemake(workdir, "-n", "all_merge")
    counts = {}
    lines = (result.stdout + result.stderr).splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("job ")) + 2
    for line in lines[start:]:
        if not line.strip() or line.startswith("total"):
            break
        name, count = line.split()
        counts[name] = int(count)
    return counts


def test_batches_plan_one_job_per_batch(tmp_path):
    config = tiny_config()  # 3 states
    config["masks"]["states_per_job"] = 2
    config["merge"]["states_per_job"] = 5
    write_project(tmp_path, config)
    jobs = planned_jobs(tmp_path)
    assert jobs.get("masks_batch0") == jobs.get("masks_batch1") == 1
    assert jobs.get("merge_batch0") == 1
    assert "masks" not in jobs and "merge" not in jobs


# ---------------------------------------------------------------- predict batches
def plane(name, window=()):
    from pathlib import Path

    return PredictInput(
        Path(name), stack=False, window=tuple(Path(w) for w in window) or (Path(name),)
    )


def test_single_plane_images_are_packed_in_order():
    plan = [plane(f"i{n}.tif") for n in range(5)]
    assert plan_batches(plan, 2) == [["i0.tif", "i1.tif"], ["i2.tif", "i3.tif"], ["i4.tif"]]
    assert plan_batches(plan, 10) == [[f"i{n}.tif" for n in range(5)]]


def test_the_planes_of_one_focal_window_stay_in_one_batch():
    stack = ["z1.tif", "z2.tif", "z3.tif"]
    plan = [
        plane("a.tif"),
        plane("z1.tif", ["z1.tif", "z1.tif", "z2.tif"]),
        plane("z2.tif", stack),
        plane("z3.tif", ["z2.tif", "z3.tif", "z3.tif"]),
        plane("b.tif"),
    ]
    assert plan_batches(plan, 2) == [["a.tif"], stack, ["b.tif"]]


def test_scenes_of_one_container_stay_in_one_batch():
    from pathlib import Path

    scenes = [PredictInput(Path("c.czi"), stack=True, container="czi", scene=s) for s in (0, 1)]
    assert plan_batches([plane("a.tif"), *scenes], 1) == [["a.tif"], ["c.czi"]]


def test_summaries_are_joined_in_the_order_of_the_images(tmp_path):
    pd.DataFrame({"image": ["b", "d"], "cells": [2, 4]}).to_csv(tmp_path / "0.csv", index=False)
    pd.DataFrame({"image": ["a", "c"], "cells": [1, 3]}).to_csv(tmp_path / "1.csv", index=False)
    joined = gather_summaries(
        [tmp_path / "0.csv", tmp_path / "1.csv"], list("abcd"), tmp_path / "s.csv"
    )
    assert joined["image"].tolist() == list("abcd")
    assert pd.read_csv(tmp_path / "s.csv")["cells"].tolist() == [1, 2, 3, 4]


# ---------------------------------------------------------------- the same outputs
def compare_trees(first, second):
    """Every file under `first` is under `second` with the same bytes (.npz: the same
    arrays; a zip entry carries its write time)."""
    files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    assert files
    for relative in files:
        a, b = first / relative, second / relative
        assert b.is_file(), f"{relative} missing"
        if relative.suffix == ".npz":
            with np.load(a) as left, np.load(b) as right:
                assert sorted(left.files) == sorted(right.files)
                for name in left.files:
                    np.testing.assert_array_equal(left[name], right[name], err_msg=str(relative))
        else:
            assert filecmp.cmp(a, b, shallow=False), f"{relative} differs"
    return files


@pytest.mark.slow
def test_batched_masks_and_merge_write_the_same_files(tiny_demo, tmp_path):
    """The session's tiny demo run (one job per state) against the same config with two
    states per masks and merge job."""
    single, config = tiny_demo
    batched = tmp_path / "batched"
    config = copy.deepcopy(config)
    config["masks"]["states_per_job"] = 2
    config["merge"]["states_per_job"] = 2
    write_project(batched, config)
    run_snakemake(batched, "all_merge")
    # Every file the batched run made is the one-job-per-state run's (which made more: it
    # ran on to the tables); the demo images are generated the same way twice.
    compare_trees(batched / "resources", single / "resources")
    files = compare_trees(batched / "results" / "masks", single / "results" / "masks")
    compare_trees(batched / "results" / "qc", single / "results" / "qc")
    assert len([f for f in files if f.parts[0] == "planes"]) == 3 * 3
    assert (batched / "logs" / "masks" / "batch0.log").is_file()


@pytest.mark.slow
def test_predictions_in_batches_are_the_same_files(tiny_demo, tmp_path):
    """A trained model of the session's tiny demo run (copied, so that run stays as it
    is) predicts five new images in one job, then in jobs of two."""
    new_images = tmp_path / "new"
    new_images.mkdir()
    rng = np.random.default_rng(0)
    for number in range(5):
        tifffile.imwrite(
            new_images / f"new{number}.tif", rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
        )
    shared, config = tiny_demo
    config = copy.deepcopy(config)
    config["predict"]["input_dir"] = str(new_images)
    out = "results/predictions/brightfield-bce"
    runs = {}
    for name, per_job in (("single", None), ("batched", 2)):
        workdir = tmp_path / name
        shutil.copytree(shared, workdir, symlinks=True)  # mtimes kept: nothing retrains
        config["predict"]["images_per_job"] = per_job
        write_project(workdir, config)
        runs[name] = run_snakemake(workdir, f"{out}/predictions.csv")
    assert "predict_batch2" in runs["batched"].stdout + runs["batched"].stderr
    assert "train" not in runs["batched"].stdout.split("Job stats:")[-1].split("total")[0]
    batched = tmp_path / "batched"
    single_files = compare_trees(tmp_path / "single" / out, batched / out)
    assert len([f for f in single_files if f.name.endswith("_labels.tif")]) == 5
    assert not (batched / out / "batches" / "predict_batch0.tmp").exists()
