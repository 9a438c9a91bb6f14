"""protoseg.config: the schema is the one home of every default, and typos stop at the start."""

import pytest
import yaml

from protoseg.config import SCHEMA, complete_section, load_config, section_defaults, validate
from protoseg.errors import ConfigError
from protoseg.losses import loss_names
from protoseg.masks import method_names
from protoseg.train import settings_from_config
from tests.workflow_helpers import REPO

SCHEMA_DOC = yaml.safe_load(SCHEMA.read_text())


def optional_keys_without_default(schema: dict, path: str = "") -> list[str]:
    """Keys a config may leave out that the schema gives no default (the fixed-name
    properties of every object; free-form maps such as data.channels are the user's, and a
    section with required keys of its own, such as demo, is given whole or not at all)."""
    missing = []
    required = set(schema.get("required", []))
    for name, sub in schema.get("properties", {}).items():
        key = f"{path}{name}"
        if name not in required and "default" not in sub and not sub.get("required"):
            missing.append(key)
        missing += optional_keys_without_default(sub, key + ".")
    return missing


def test_every_optional_key_has_its_default_in_the_schema():
    assert optional_keys_without_default(SCHEMA_DOC) == []


def test_a_section_left_out_gets_the_schema_defaults():
    train = section_defaults("train")
    schema_train = SCHEMA_DOC["properties"]["train"]["properties"]
    for key in ("lr_half_cycle_epochs", "schedule", "keep_best", "foreground_share"):
        assert train[key] == schema_train[key]["default"]
    assert train["augment"]["flip"] is schema_train["augment"]["properties"]["flip"]["default"]
    # The trainer holds no defaults of its own: what it uses is the schema's.
    settings = settings_from_config({})
    assert settings["lr_half_cycle_epochs"] == train["lr_half_cycle_epochs"]
    # augment.noise at its default (0) is left out, so models trained before it are unchanged.
    assert train["augment"]["noise"] == 0
    assert settings["augment"] == {k: v for k, v in train["augment"].items() if k != "noise"}
    assert settings_from_config({"augment": {"noise": 0.1}})["augment"]["noise"] == 0.1


def test_defaults_are_copies_and_given_keys_win():
    first = section_defaults("dataset", geometry="patches")
    first["patch_size"].append(9)
    assert section_defaults("dataset", geometry="patches")["patch_size"] == [256, 256]
    # The study's geometry resizes every image to one size, so it has no default size.
    with pytest.raises(ConfigError, match="dataset.size"):
        section_defaults("dataset")
    assert complete_section("merge", {"footprint": "largest"})["footprint"] == "largest"


def test_the_workflow_config_is_completed_in_place():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    del config["merge"]
    del config["train"]["augment"]
    validate(config)
    assert config["merge"]["footprint"] == "medoid"
    assert config["train"]["augment"]["rotate90"] is False


@pytest.mark.parametrize(
    ("section", "values", "key", "words"),
    [
        ("train", {"losses": ["bce", "msee"]}, "train.losses", ["msee", "bce+dice"]),
        ("masks", {"method": "magic"}, "masks.method", ["magic", "sam-auto"]),
        ("dataset", {"geometry": "tiles"}, "dataset.geometry", ["tiles", "patches"]),
        ("train", {"device": "tpu"}, "train.device", ["tpu", "cuda"]),
        ("evaluate", {"precision": "fp8"}, "evaluate.precision", ["fp8", "bf16"]),
    ],
)
def test_unknown_values_name_the_key_and_the_allowed_ones(section, values, key, words):
    with pytest.raises(ConfigError, match=f"config key '{key}'") as caught:
        complete_section(section, values)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("section", ["evaluate", "predict"])
def test_a_fold_batch_norm_that_is_not_a_boolean_names_its_key(section):
    with pytest.raises(ConfigError, match=f"config key '{section}.fold_batch_norm'"):
        complete_section(section, {"fold_batch_norm": "yes"})
    assert complete_section(section, {})["fold_batch_norm"] is False  # the numbers as before


def test_schema_enums_match_the_registries():
    properties = SCHEMA_DOC["properties"]
    assert sorted(properties["train"]["properties"]["losses"]["items"]["enum"]) == sorted(
        loss_names()
    )
    assert sorted(properties["masks"]["properties"]["method"]["enum"]) == sorted(method_names())


def test_every_shipped_config_validates(tmp_path):
    for name in ("config", "paper", "aisegcell", "baby"):
        config = load_config([REPO / "config" / f"{name}.yaml"])
        assert config["train"]["losses"]
