"""The mask-method registry: the built-in methods, a new method, unknown names, the schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from protoseg.config import SCHEMA
from protoseg.errors import ConfigError, InputError
from protoseg.masks import (
    METHODS,
    MaskMethod,
    get_method,
    make_state_masks,
    method_inputs,
    method_names,
    register_method,
)

REPO = Path(__file__).resolve().parents[1]


def test_registry_has_the_four_methods_and_which_run_sam():
    assert method_names() == ["classical", "import", "sam-auto", "sam-prompted"]
    assert {name: get_method(name).uses_sam for name in method_names()} == {
        "classical": False,
        "import": False,
        "sam-auto": True,
        "sam-prompted": True,
    }
    assert all(get_method(name).name == name for name in method_names())


def test_schema_method_enum_is_the_registry():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert sorted(schema["properties"]["masks"]["properties"]["method"]["enum"]) == method_names()


def test_unknown_method_names_the_key_and_the_known_methods():
    with pytest.raises(ConfigError) as error:
        get_method("watershed")
    assert error.value.key == "masks.method"
    message = str(error.value)
    assert "unknown method 'watershed'" in message
    assert all(name in message for name in method_names())


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="'classical' is registered twice"):

        @register_method("classical")
        class Another(MaskMethod):
            pass

    assert get_method("classical").__name__ == "ClassicalMethod"


class FakeMethod(MaskMethod):
    """Labels a 2 x 2 corner with the plane number; reads one text file per plane."""

    calls: list = []

    def inputs(self, state, planes, image_paths):
        return [f"{self.masks_cfg['fake']['dir']}/{state}/z{z}.txt" for z in planes]

    def check(self, state, planes, states, image_paths):
        self.calls.append(("check", state, list(planes), list(states)))
        if self.masks_cfg["fake"]["refuse"]:
            raise InputError(image_paths[0], "refused before any work")

    def check_images(self, state, planes, images):
        self.calls.append(("check_images", [image.shape for image in images]))

    def segment(self, image, state, z, image_path):
        self.calls.append(("segment", z, Path(image_path).name))
        labels = np.zeros(image.shape[:2], np.int32)
        labels[:2, :2] = z
        return labels


def write_images(tmp_path, planes):
    paths = []
    for z in planes:
        path = tmp_path / "raw" / f"z{z}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, np.zeros((6, 8, 3), np.uint8))
        paths.append(path)
    return paths


def test_a_registered_method_is_used_by_name_then_unregistered(tmp_path):
    planes = [12, 18]
    images = write_images(tmp_path, planes)
    outputs = [tmp_path / "out" / f"z{z}.tif" for z in planes]
    masks_cfg = {"method": "fake", "modality": "fluorescent", "fake": {"dir": "d", "refuse": False}}
    register_method("fake")(FakeMethod)
    try:
        assert get_method("fake") is FakeMethod and "fake" in method_names()
        assert method_inputs(masks_cfg, "s1", planes) == ["d/s1/z12.txt", "d/s1/z18.txt"]

        FakeMethod.calls = []
        masks = make_state_masks(
            images,
            outputs,
            method="fake",
            masks_cfg=masks_cfg,
            state="s1",
            planes=planes,
            states=["s1"],
        )
        assert FakeMethod.calls == [
            ("check", "s1", planes, ["s1"]),
            ("check_images", [(6, 8, 3), (6, 8, 3)]),
            ("segment", 12, "z12.tif"),
            ("segment", 18, "z18.tif"),
        ]
        for z, mask, output in zip(planes, masks, outputs, strict=True):
            written = tifffile.imread(output)
            assert written.dtype == np.uint16 and written[0, 0] == z and written.sum() == 4 * z
            np.testing.assert_array_equal(mask, written)

        FakeMethod.calls = []
        refused = [tmp_path / "refused" / f"z{z}.tif" for z in planes]
        with pytest.raises(InputError, match="refused before any work"):
            make_state_masks(
                images,
                refused,
                method="fake",
                masks_cfg={**masks_cfg, "fake": {"dir": "d", "refuse": True}},
                state="s1",
                planes=planes,
                states=["s1"],
            )
        assert [call[0] for call in FakeMethod.calls] == ["check"]
        assert not any(path.exists() for path in refused)
    finally:
        METHODS.pop("fake")
    assert "fake" not in method_names()
    with pytest.raises(ConfigError, match="masks.method"):
        get_method("fake")


def test_bad_classical_setting_stops_before_any_image_is_read(tmp_path):
    from protoseg.config import section_defaults

    masks_cfg = section_defaults("masks", method="classical", modality="fluorescent")
    masks_cfg["classical"].update(min_area=100, max_area=10)  # the schema cannot compare keys
    with pytest.raises(ConfigError, match="masks.classical.max_area"):
        make_state_masks(
            [tmp_path / "absent.tif"],
            [tmp_path / "out.tif"],
            method="classical",
            masks_cfg=masks_cfg,
            state="s1",
            planes=[12],
        )


def test_the_registry_imports_neither_torch_nor_micro_sam():
    """The workflow asks the registry at parse time (inputs, env, threads): it must stay cheap."""
    code = (
        "import sys\n"
        "from protoseg.masks import get_method, method_names\n"
        "assert get_method('sam-prompted').uses_sam and len(method_names()) >= 4\n"
        "print(sorted(name for name in ('torch', 'micro_sam') if name in sys.modules))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True
    )
    assert result.stdout.strip() == "[]"
