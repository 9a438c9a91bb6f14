"""Conda environments: every rule names one, and their pins agree with requirements.lock."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def normalise(name: str) -> str:
    """Package names compare as pip does (PEP 503): case and -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = PIN.match(line)
            assert match, f"requirements.lock: not an exact pin: {line!r}"
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def pip_section(env: dict) -> list[str]:
    for entry in env.get("dependencies", []):
        if isinstance(entry, dict) and "pip" in entry:
            return [str(item) for item in entry["pip"]]
    return []


def test_there_are_the_three_envs_the_rules_use():
    assert {path.stem for path in ENVS} >= {"io", "sam", "torch"}


@pytest.mark.parametrize("env_path", ENVS, ids=lambda path: path.name)
def test_env_pins_agree_with_the_lock(env_path):
    env = yaml.safe_load(env_path.read_text())
    pinned = lock()
    conda = [entry for entry in env["dependencies"] if isinstance(entry, str)]
    assert "python=3.11" in conda, f"{env_path.name}: python must be 3.11 like the install"
    pips = pip_section(env)
    assert pips, f"{env_path.name}: no pip section"
    for requirement in pips:
        match = PIN.match(requirement)
        assert match, f"{env_path.name}: '{requirement}' is not an exact 'name==version' pin"
        name, version = normalise(match.group(1)), match.group(2)
        assert name in pinned, f"{env_path.name}: {name} is not in requirements.lock"
        assert version == pinned[name], (
            f"{env_path.name}: {name}=={version}, but the lock has {pinned[name]}"
        )


@pytest.mark.parametrize(
    "script", sorted((REPO / "envs").glob("*.post-deploy.sh")), ids=lambda path: path.name
)
def test_post_deploy_pins_agree_with_the_lock(script):
    pinned = lock()
    for name, version in re.findall(
        r"\b([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s'\"]*)", script.read_text()
    ):
        assert pinned.get(normalise(name)) == version, (
            f"{script.name}: {name}=={version} disagrees with the lock"
        )
    # protoseg itself goes into every env, from the checkout snakemake runs in.
    assert "pip install --no-deps -e ." in script.read_text()


def test_every_env_has_its_post_deploy_script():
    for env in ENVS:
        assert env.with_name(env.stem + ".post-deploy.sh").is_file(), (
            f"{env.name} has no post-deploy script"
        )


def test_torch_and_micro_sam_pins_are_where_the_rules_need_them():
    pins = {
        path.stem: {
            normalise(p.split("==")[0]) for p in pip_section(yaml.safe_load(path.read_text()))
        }
        for path in ENVS
    }
    assert {"torch", "torchvision"} <= pins["torch"] and {"torch", "torchvision"} <= pins["sam"]
    assert "torch" not in pins["io"]
    assert "micro-sam" in {
        normalise(n)
        for n in re.findall(r"(\S+)==", (REPO / "envs" / "sam.post-deploy.sh").read_text())
    }


# ---------------------------------------------------------------- rules
def rule_blocks(text: str) -> dict[str, str]:
    """Rule name -> its text, for `rule NAME:` blocks (at any indentation)."""
    starts = list(re.finditer(r"^(\s*)(?:rule|checkpoint)\s+(\w+)\s*:", text, flags=re.MULTILINE))
    blocks = {}
    for index, start in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        blocks[start.group(2)] = text[start.end() : end]
    return blocks


def runs_something(block: str) -> bool:
    """A rule with a script, shell or run block (the all_<stage> target rules only gather)."""
    return bool(re.search(r"^\s*(script|shell|run|wrapper|notebook):", block, flags=re.MULTILINE))


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda path: path.name)
def test_every_rule_in_the_rule_files_names_an_existing_env(rule_file):
    blocks = rule_blocks(rule_file.read_text())
    stage = rule_file.stem
    if stage != "common":
        # Each stage's rule file ends with its target rule, which runs nothing itself.
        assert f"all_{stage}" in blocks and not runs_something(blocks[f"all_{stage}"])
    for name, block in blocks.items():
        if not runs_something(block):
            continue
        for directive in ("log", "benchmark"):
            assert re.search(rf"^\s*{directive}:", block, flags=re.MULTILINE), (
                f"{rule_file.name}: rule {name} has no {directive}: directive"
            )
        conda = re.search(
            r"^\s*conda:\s*\n(.*?)(?=^\s*\w+:\s*$|\Z)", block, flags=re.MULTILINE | re.DOTALL
        )
        assert conda, f"{rule_file.name}: rule {name} has no conda: directive"
        envs = re.findall(r"\{ENVS\}/(\w+)\.yaml", conda.group(1))
        assert envs, f"{rule_file.name}: rule {name}'s conda: does not name an envs/*.yaml"
        for env in envs:
            assert (REPO / "envs" / f"{env}.yaml").is_file(), (
                f"{rule_file.name}: rule {name} names missing envs/{env}.yaml"
            )


def parsed_rules(workdir: Path, configfiles: list[Path]):
    """The rules of the real Snakefile as Snakemake itself parses them."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=configfiles),
            snakefile=REPO / "Snakefile",
            workdir=workdir,
        )
        return [
            (rule.name, rule.conda_env, Path(rule.snakefile).parent)
            for rule in workflow._workflow.rules
        ]


def test_every_parsed_rule_has_an_env_including_predict(tmp_path):
    # predict.input_dir switches the predict rule on; the demo config covers the rest.
    images = tmp_path / "new_images"
    images.mkdir()
    tifffile.imwrite(images / "field1.tif", np.zeros((8, 8, 3), np.uint8))
    extra = tmp_path / "predict.yaml"
    extra.write_text(yaml.safe_dump({"predict": {"input_dir": str(images)}}))
    rules = parsed_rules(tmp_path / "work", [REPO / "config" / "config.yaml", extra])
    names = {name for name, _, _ in rules}
    assert {"catalogue", "predict", "all_predict"} <= names
    for name, env, rule_dir in rules:
        if name == "all" or name.startswith("all_"):  # targets: they run nothing
            continue
        assert env, f"rule {name} names no conda env"
        assert (rule_dir / str(env)).resolve().parent == (REPO / "envs").resolve(), (
            f"rule {name}: {env}"
        )
        assert (rule_dir / str(env)).resolve().is_file(), f"rule {name}: {env} does not exist"
