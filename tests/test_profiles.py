"""Snakemake profiles: valid options, documented entries, resources for real rules."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.workflow_helpers import REPO

PROFILES = {name: REPO / "profiles" / name / "config.yaml" for name in ("default", "slurm")}


def snakemake_options() -> set[str]:
    from snakemake.cli import get_argument_parser

    return {option for action in get_argument_parser()._actions for option in action.option_strings}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_key_is_a_snakemake_option(name):
    options = snakemake_options()
    for key in yaml.safe_load(PROFILES[name].read_text()):
        assert f"--{key}" in options, f"profiles/{name}: '{key}' is not a snakemake option"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_entry_is_commented(name):
    lines = PROFILES[name].read_text().splitlines()
    for index, line in enumerate(lines):
        if not re.match(r"^\s*[\w-]+:", line):
            continue
        before = next((previous for previous in reversed(lines[:index]) if previous.strip()), "")
        indent = len(line) - len(line.lstrip())
        # Commented itself, right above, or a plain value sharing the comment above its
        # siblings (e.g. mem_mb and runtime under one comment).
        siblings = [previous for previous in lines[max(0, index - 3) : index] if previous.strip()]
        shared = any(
            previous.lstrip().startswith("#") and len(previous) - len(previous.lstrip()) == indent
            for previous in siblings
        )
        assert "#" in line or before.lstrip().startswith("#") or shared, (
            f"profiles/{name} line {index + 1}: {line!r}"
        )


def rule_names() -> set[str]:
    names = set()
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        text = path.read_text()
        names |= set(re.findall(r"^\s*rule\s+(\w+)\s*:", text, flags=re.MULTILINE))
        # per-state stages define their rule in a loop (a rule per batch of states)
        names |= set(re.findall(r"state_jobs\(\s*\"(\w+)\"", text))
    return names


def test_slurm_profile_targets_existing_rules_and_asks_gpus_for_sam_and_training():
    profile = yaml.safe_load(PROFILES["slurm"].read_text())
    assert profile["executor"] == "slurm"
    per_rule = profile["set-resources"]
    unknown = set(per_rule) - rule_names()
    assert not unknown, (
        f"profiles/slurm sets resources for rules that do not exist: {sorted(unknown)}"
    )
    for rule in ("masks", "train"):
        resources = per_rule[rule]
        assert (resources.get("gpu") == 1) != ("gpu" in str(resources.get("gres", ""))), rule
        assert resources["mem_mb"] >= 16000 and resources["runtime"] >= 60
    defaults = profile["default-resources"]
    assert {"slurm_partition", "mem_mb", "runtime"} <= set(defaults)
    # A default cpus_per_task would override every rule's threads.
    assert "cpus_per_task" not in defaults


def test_default_profile_runs_locally_without_conda_by_default():
    profile = yaml.safe_load(PROFILES["default"].read_text())
    assert profile["cores"] == "all"
    assert "executor" not in profile and "software-deployment-method" not in profile
