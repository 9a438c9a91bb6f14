"""config/paper.yaml: the study's settings, valid, complete, and a workflow that plans."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml
from snakemake.utils import validate

from protoseg.config import SCHEMA
from protoseg.config import validate as validate_config
from protoseg.demo import generate_demo
from tests.workflow_helpers import REPO, demo_config, run_snakemake, write_project

PAPER = REPO / "config" / "paper.yaml"


def paper() -> dict:
    return yaml.safe_load(PAPER.read_text())


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("channels", "variants"):
            keys |= leaf_keys(value, path + ".")
        else:
            keys.add(path)
    return keys


def test_paper_config_validates_against_the_schema():
    config = paper()
    validate_config(config)
    validate(config, str(SCHEMA))  # as the Snakefile does


def test_paper_config_sets_every_key_the_demo_config_has():
    # A --configfile replaces the demo config whole, so a key missing here would fall
    # back to a code default nobody chose for the study: set them all explicitly.
    missing = leaf_keys(demo_config()) - leaf_keys(paper())
    assert not missing, f"config/paper.yaml lacks {sorted(missing)}"


def test_paper_config_holds_the_study_settings():
    config = paper()
    assert config["data"]["source"] == "folder"
    assert config["data"]["planes"] == [12, 14, 16, 18, 20, 22, 24]
    assert config["data"]["channels"] == {"1": "brightfield", "2": "fluorescent"}
    assert config["masks"]["method"] in ("sam-auto", "sam-prompted")
    assert config["masks"]["sam"]["model_type"] == "vit_h"
    assert config["masks"]["modality"] == "fluorescent"
    assert config["split"]["key"] == "xy" and config["split"]["test"] == [10]
    assert config["dataset"]["size"] == [512, 512]
    assert config["dataset"]["mask_source"] == "state"
    assert {name: v["modalities"] for name, v in config["dataset"]["variants"].items()} == {
        "brightfield": ["brightfield"],
        "all": ["brightfield", "fluorescent"],
    }
    assert config["model"]["depth"] == 4 and config["model"]["base_channels"] == 64
    train = config["train"]
    assert sorted(train["losses"]) == ["bce", "mse"]
    assert (train["epochs"], train["batch_size"]) == (50, 16)
    assert (train["lr_min"], train["lr_max"]) == (1e-4, 1e-2)


def test_every_key_is_commented():
    # Each key line is preceded by a comment line, or carries one, or sits in a block
    # whose parent is commented (list items, mapping entries of channels/variants).
    lines = PAPER.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w]*):", line)
        if not match or match.group(2) in ("modalities",):
            continue
        before = [previous for previous in lines[:index] if previous.strip()]
        commented = "#" in line or (before and before[-1].lstrip().startswith("#"))
        sibling_commented = any(
            re.match(rf"^{match.group(1)}\S", previous) and "#" in previous
            for previous in lines[max(0, index - 6) : index]
        )
        assert commented or sibling_commented, (
            f"config/paper.yaml line {index + 1} has no comment: {line!r}"
        )


@pytest.fixture(scope="module")
def full_size_set(tmp_path_factory):
    """Two full-size (2048 x 2880) states in the study's naming: xy1 (train) and xy10 (test).

    protoseg.demo draws one state (about 15 s here); its files are copied under the second
    state's names, since a dry run looks at names only.
    """
    root = tmp_path_factory.mktemp("fullsize")
    demo = {
        "seed": 1,
        "days": [1],
        "times": [1],
        "xy": [10],
        "height": 2048,
        "width": 2880,
        "cells": [2, 3],
        "cell_radius": [112, 240],
        "dead_cells": [0, 1],
        "debris": [0, 1],
        "overlaps": [0, 0],
    }
    generate_demo(demo, paper()["data"]["planes"], root)
    raw = root / "raw"
    for path in sorted(raw.glob("day1t1c*xy10z*.tif")):
        shutil.copyfile(path, raw / path.name.replace("xy10", "xy1"))
    return raw


@pytest.mark.slow
def test_dry_run_of_the_paper_config_on_a_full_size_set(full_size_set, tmp_path):
    import tifffile

    assert tifffile.imread(next(full_size_set.glob("*.tif"))).shape[:2] == (2048, 2880)
    workdir = tmp_path / "work"
    write_project(workdir, demo_config())  # the checkout's config/config.yaml ...
    config = paper()
    config["data"]["raw_dir"] = str(full_size_set)  # ... with the placeholder filled in
    paper_path = tmp_path / "paper.yaml"
    paper_path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(workdir, "-n", "--configfile", str(paper_path))
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", result.stdout, flags=re.MULTILINE))
    assert jobs.get("catalogue") == "1"
    assert jobs.get("masks") == "2"  # one job per state, with vit_h (sam-auto)
    assert "demo" not in jobs  # the study's own images, not the synthetic set
    # Four models: {brightfield, all} x {bce, mse}, each trained and evaluated once.
    assert jobs.get("train") == "4" and jobs.get("evaluate") == "4"
