"""config/baby.yaml: real bright-field z-stacks (BABY, Pietsch et al. eLife 2023, MIT).

The data stay in ../shared/data/baby (never copied into the repository); the tests that read
them are skipped where that folder is absent.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from protoseg import catalogue
from protoseg.config import SCHEMA
from protoseg.config import validate as validate_config
from tests.test_paper_config import leaf_keys
from tests.workflow_helpers import REPO, demo_config, run_snakemake, write_project

BABY = REPO / "config" / "baby.yaml"
DATA = (REPO / ".." / "shared" / "data" / "baby").resolve()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present")


def baby() -> dict:
    return yaml.safe_load(BABY.read_text())


def test_config_validates_and_sets_every_key():
    config = baby()
    validate_config(config)
    validate(config, str(SCHEMA))
    missing = leaf_keys(demo_config()) - leaf_keys(config)
    assert not missing, f"config/baby.yaml lacks {sorted(missing)}"


@needs_data
def test_catalogue_has_every_field_with_5_planes_and_its_mask():
    config = baby()
    records = catalogue.records_from_config(config["data"], DATA)
    # 12 evolve + 6 prime95b fields with masks; the single-plane mmsCMOS ones are left out.
    assert records["state"].nunique() == 18
    assert len(records) == 18 * 5 and sorted(records["z"].unique()) == [1, 2, 3, 4, 5]
    for state in records["state"].unique():
        assert (DATA / "masks" / f"{state}.tif").is_file()


@needs_data
def test_the_real_fields_as_ome_tiff_stacks_give_the_same_catalogue(tmp_path):
    """Each real field's 5 planes packed into one OME-TIFF z-stack (as a microscope would
    write it): the catalogue, pixels included, equals that of the per-plane files."""
    import numpy as np
    import tifffile

    from protoseg.io import read_image

    config = baby()
    planes = catalogue.build_catalogue(
        sorted(set(catalogue.records_from_config(config["data"], DATA)["file"])),
        DATA,
        config["data"],
        progress=False,
    )
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    for state, group in planes.groupby("state"):
        data = np.stack([read_image(path) for path in group.sort_values("z")["path"]])
        tifffile.imwrite(
            stacks / f"{state}.ome.tif",
            data[:, None],
            ome=True,
            metadata={"axes": "ZCYX", "Channel": {"Name": ["BF"]}},
        )
    stack_data = {
        **config["data"],
        "pattern": r"^(?P<stem>(?P<trap>(?:evolve|prime95b)_test[A-Z])(?:_tp(?P<time>\d+))?)\.ome\.tif$",
        "channels": {"BF": "brightfield"},
    }
    records = catalogue.records_from_config(stack_data, stacks)
    from_stacks = catalogue.build_catalogue(
        sorted(set(records["file"])), stacks, stack_data, progress=False
    )
    columns = ["state", "trap", "time", "modality", "z", "height", "width", "channels", "dtype"]
    pd.testing.assert_frame_equal(
        from_stacks[columns].reset_index(drop=True), planes[columns].reset_index(drop=True)
    )
    for plane, stacked in zip(planes["path"], from_stacks["path"], strict=True):
        np.testing.assert_array_equal(read_image(stacked), read_image(plane))


@needs_data
def test_split_keeps_the_time_points_of_a_trap_together():
    config = baby()
    records = catalogue.records_from_config(config["data"], DATA)
    splits = {
        name: set(catalogue.states_in_split(records, config["split"], name))
        for name in ("train", "validation", "test")
    }
    assert not (splits["train"] & splits["test"] or splits["validation"] & splits["test"])
    trap_of = records.groupby("state")["trap"].first()
    for name, states in splits.items():
        others = set().union(*(s for n, s in splits.items() if n != name))
        assert not set(trap_of[list(states)]) & set(trap_of[list(others)]), name
    assert {f"evolve_testG_tp{t}" for t in range(1, 6)} <= splits["test"]


@pytest.mark.slow
@needs_data
def test_tiny_run_scores_each_plane_of_the_test_field(tmp_path):
    config = copy.deepcopy(baby())
    config["data"]["raw_dir"] = str(DATA)
    keep = r"planes/(evolve_testA|evolve_testE|evolve_testG_tp1)_"
    config["data"]["ignore"] = [*config["data"]["ignore"], rf"^(?!{keep})"]
    config["split"]["test"] = ["evolve_testG"]
    config["model"].update({"depth": 2, "base_channels": 4})
    config["train"].update({"epochs": 1, "samples_per_epoch": 8, "validate_every": 1})
    write_project(tmp_path, config)
    run_snakemake(tmp_path)
    per_image = pd.read_csv(
        tmp_path / "results" / "metrics" / "brightfield-bce+dice" / "per_image.csv"
    )
    assert sorted(per_image["z"]) == [1, 2, 3, 4, 5]
    assert set(per_image["state"]) == {"evolve_testG_tp1"}
    assert (per_image[["tp", "fp", "fn", "tn"]].sum(axis=1) == 81 * 81).all()
    table = pd.read_csv(tmp_path / "results" / "tables" / "brightfield.csv")
    assert {"z1", "z5", "overall"} <= set(table["z"])
