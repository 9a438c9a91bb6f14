import copy

import pandas as pd
import pytest

from protoseg import config_checks
from protoseg.errors import ConfigError
from protoseg.losses import loss_names
from tests.workflow_helpers import demo_config

RECORDS = pd.DataFrame(
    {
        "path": [f"day1t1c1xy{xy}z12.tif" for xy in (1, 2, 10)],
        "day": [1, 1, 1],
        "time": [1, 1, 1],
        "channel": ["1", "1", "1"],
        "modality": ["brightfield"] * 3,
        "xy": [1, 2, 10],
        "z": [12, 12, 12],
        "state": ["day1t1xy1", "day1t1xy2", "day1t1xy10"],
    }
)


def edited(edit):
    config = copy.deepcopy(demo_config())
    edit(config)
    return config


def test_the_shipped_configs_pass():
    config_checks.check_config(demo_config())
    config_checks.check_split(demo_config()["split"], RECORDS)


@pytest.mark.parametrize(
    ("edit", "key", "words"),
    [
        (lambda c: c["masks"].update(modality="fluo"), "masks.modality", ["'fluo'", "fluorescent"]),
        (
            lambda c: c["dataset"]["variants"]["all"].update(modalities=["brightfield", "dapi"]),
            "dataset.variants.all.modalities",
            ["'dapi'"],
        ),
        (lambda c: c["train"].update(losses=["bce", "msee"]), "train.losses", ["'msee'", "mse"]),
        (lambda c: c["train"].update(lr_min=0.1, lr_max=0.01), "train.lr_min", ["0.1", "0.01"]),
        # A bound left out takes the schema's default (lr_max 1e-2).
        (lambda c: (c["train"].pop("lr_max"), c["train"].update(lr_min=0.5)), "train.lr_min", []),
        (
            lambda c: (
                c["model"].update(instances="distances"),
                c["train"].update(watershed={"center_threshold": 1.2}),
            ),
            "train.watershed.center_threshold",
            ["(0, 1)", "1.2"],
        ),
        (
            lambda c: (
                c["model"].update(instances="boundaries"),
                c["train"].update(watershed={"boundary_threshold": 0.5}),
            ),
            "train.watershed",
            ["boundary_threshold", "seed_threshold"],
        ),
        (
            lambda c: (
                c["data"].update(planes=[18]),
                c["dataset"]["variants"]["brightfield"].update(context_planes=1),
            ),
            "dataset.variants.brightfield.context_planes",
            ["one plane", "z18"],
        ),
        (
            lambda c: c["dataset"]["variants"]["all"].update(context_planes=4),
            "dataset.variants.all.context_planes",
            ["maximum"],
        ),
    ],
    ids=[
        "masks-modality",
        "variant-modality",
        "loss",
        "lr-order",
        "lr-default",
        "watershed-range",
        "watershed-mode",
        "context-without-stack",
        "context-too-wide",
    ],
)
def test_config_errors_name_the_key(edit, key, words):
    with pytest.raises(ConfigError, match=f"config key '{key}'") as caught:
        config_checks.check_config(edited(edit))
    for word in words:
        assert word in str(caught.value)


def test_context_defaults_to_single_planes_and_a_window_wider_than_the_stack_warns():
    config = edited(lambda c: c["dataset"]["variants"]["all"].pop("context_planes"))
    config_checks.check_config(config)  # left out: 0, the study's single planes
    wide = edited(
        lambda c: (
            c["data"].update(planes=[12, 14, 16]),
            c["dataset"]["variants"]["brightfield"].update(context_planes=2),
        )
    )
    with pytest.warns(UserWarning, match="dataset.variants.brightfield.context_planes.*5 planes"):
        config_checks.check_config(wide)


def test_every_registered_loss_is_accepted():
    # Not a fixed list: a loss registered later (say bce+dice) passes without editing the check.
    config_checks.check_config(edited(lambda c: c["train"].update(losses=loss_names())))


@pytest.mark.parametrize(
    ("split", "key", "words"),
    [
        ({"key": "position", "test": [10]}, "split.key", ["'position'", "xy"]),
        ({"key": "xy", "test": [11]}, "split.test", ["11", "1, 2, 10"]),
        ({"key": "xy", "test": [10], "validation": [3]}, "split.validation", ["3"]),
        ({"key": "xy", "test": [10], "validation": [10]}, "split.validation", ["also"]),
        ({"key": "xy", "test": [1, 2, 10]}, "split.test", ["training"]),
    ],
    ids=[
        "unknown-key",
        "test-matches-nothing",
        "validation-matches-nothing",
        "overlap",
        "no-train",
    ],
)
def test_split_errors_name_the_key(split, key, words):
    with pytest.raises(ConfigError, match=f"config key '{key}'") as caught:
        config_checks.check_split(split, RECORDS)
    for word in words:
        assert word in str(caught.value)


def test_split_values_compare_as_numbers_and_catalogue_columns_wait():
    config_checks.check_split({"key": "xy", "test": ["010"], "validation": [2]}, RECORDS)
    config_checks.check_split({"key": "height", "test": [128]}, RECORDS)  # known later


def test_a_cell_diameter_in_micrometres_needs_every_images_pixel_size():
    import numpy as np
    import pandas as pd

    from protoseg.errors import InputError

    records = pd.DataFrame({"path": ["a.ome.tif::x", "b.tif"], "pixel_size": [0.5, np.nan]})
    dataset = {"geometry": "patches", "cell_diameter_um": 12.0, "target_diameter": 24}
    with pytest.raises(InputError, match=r"b\.tif: states no pixel size and data\.pixel_size"):
        config_checks.check_pixel_sizes(dataset, records)
    records["pixel_size"] = [0.5, 0.6]
    config_checks.check_pixel_sizes(dataset, records)  # 0.5 um per pixel: factors 1 and 1.2
    records["pixel_size"] = [0.5, 600.0]  # a size in nanometres, say
    with pytest.raises(InputError, match=r"b\.tif: pixel size 600 um gives a rescale factor"):
        config_checks.check_pixel_sizes(dataset, records)
    with pytest.raises(ConfigError, match=r"dataset\.cell_diameter_um.*patches geometry"):
        config_checks.check_pixel_sizes({**dataset, "geometry": "resize", "size": [8, 8]}, records)
    # Without a diameter in micrometres, pixel sizes are not needed.
    records["pixel_size"] = np.nan
    config_checks.check_pixel_sizes({"geometry": "patches"}, records)
