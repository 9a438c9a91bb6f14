"""The import mask method: annotator TIFFs and binary masks, checked and relabelled."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import tifffile

from protoseg.config import section_defaults
from protoseg.errors import ConfigError, InputError
from protoseg.masks import imported, make_plane_mask, make_state_masks

SHAPE = (40, 60)


def labelled():
    """Two touching cells with non-consecutive ids, as annotator commits often are."""
    mask = np.zeros(SHAPE, np.uint32)
    mask[5:20, 5:20] = 7
    mask[5:20, 20:30] = 300
    return mask


def test_instance_labels_are_renumbered_keeping_every_cell(tmp_path):
    path = tmp_path / "z18.tif"
    tifffile.imwrite(path, labelled())
    mask = imported.load_imported_mask(path, SHAPE + (3,))
    assert mask.dtype == np.uint16 and mask.shape == SHAPE
    assert sorted(np.unique(mask)) == [0, 1, 2]
    # The two touching cells stay two cells (labels are not re-derived from connectivity).
    assert len(np.unique(mask[5:20, 5:30])) == 2


@pytest.mark.parametrize("value", [1, 255])
def test_binary_mask_becomes_connected_components(tmp_path, value):
    binary = np.zeros(SHAPE, np.uint8)
    binary[2:8, 2:8] = value
    binary[20:30, 30:50] = value
    path = tmp_path / "gt.png"
    cv2.imwrite(str(path), binary)
    mask = imported.load_imported_mask(path, SHAPE)
    assert mask.dtype == np.uint16
    assert mask.max() == 2
    assert (mask > 0).sum() == (binary > 0).sum()


def test_grey_mask_stored_as_rgb_is_accepted(tmp_path):
    binary = np.zeros(SHAPE, np.uint8)
    binary[2:8, 2:8] = 255
    path = tmp_path / "gt.png"
    cv2.imwrite(str(path), np.dstack([binary] * 3))
    assert imported.load_imported_mask(path, SHAPE).max() == 1


def test_wrong_shape_names_the_file(tmp_path):
    path = tmp_path / "z18.tif"
    tifffile.imwrite(path, np.zeros((30, 60), np.uint16))
    with pytest.raises(InputError, match="mask is 30 x 60 .* but its image is 40 x 60") as error:
        imported.load_imported_mask(path, SHAPE)
    assert error.value.path == str(path)


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros(SHAPE, np.float32), "dtype float32; expected integer labels"),
        (np.full(SHAPE, -1, np.int16), "negative labels"),
        (np.zeros((2, *SHAPE), np.uint16), "expected one 2D label plane"),
    ],
)
def test_wrong_dtype_or_layout_names_the_file(tmp_path, array, problem):
    path = tmp_path / "z18.tif"
    tifffile.imwrite(path, array, photometric="minisblack")
    with pytest.raises(InputError, match=problem) as error:
        imported.load_imported_mask(path, SHAPE)
    assert error.value.path == str(path)


def test_colour_mask_is_refused(tmp_path):
    path = tmp_path / "z18.png"
    colour = np.zeros((*SHAPE, 3), np.uint8)
    colour[..., 0] = 9
    cv2.imwrite(str(path), colour)
    with pytest.raises(InputError, match="colour image"):
        imported.load_imported_mask(path, SHAPE)


def test_template_maps_states_and_planes_to_files(tmp_path):
    assert (
        imported.import_path(tmp_path, "{state}/z{z}.tif", "day1t1xy1", 18)
        == tmp_path / "day1t1xy1" / "z18.tif"
    )
    assert (
        imported.import_path(tmp_path, "gt/{state}.png", "img_p1", 1)
        == tmp_path / "gt" / "img_p1.png"
    )
    with pytest.raises(ConfigError, match="masks.import.template"):
        imported.import_path(tmp_path, "{sample}.tif", "s", 1)
    with pytest.raises(ConfigError, match="masks.import.dir"):
        imported.import_path(None, "{state}/z{z}.tif", "s", 1)


def import_config(tmp_path, template="{state}/z{z}.tif"):
    return section_defaults(
        "masks",
        method="import",
        modality="fluorescent",
        **{"import": {"dir": str(tmp_path / "committed"), "template": template}},
    )


def write_state(tmp_path, planes, masks, shape=SHAPE):
    images = []
    for z, mask in zip(planes, masks, strict=True):
        image = tmp_path / "raw" / f"z{z}.tif"
        image.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(image, np.zeros((*shape, 3), np.uint8))
        images.append(image)
        committed = tmp_path / "committed" / "s1" / f"z{z}.tif"
        committed.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(committed, mask)
    return images


def test_state_masks_written_for_every_plane(tmp_path, caplog):
    planes = [12, 18]
    images = write_state(tmp_path, planes, [labelled(), np.zeros(SHAPE, np.uint16)])
    outputs = [tmp_path / "out" / f"z{z}.tif" for z in planes]
    with caplog.at_level(logging.WARNING):
        make_state_masks(
            images,
            outputs,
            method="import",
            masks_cfg=import_config(tmp_path),
            state="s1",
            planes=planes,
        )
    first, second = (tifffile.imread(path) for path in outputs)
    assert first.dtype == np.uint16 and first.max() == 2
    # An empty plane is kept (all zero) with a warning, not an error.
    assert second.dtype == np.uint16 and not second.any()
    assert "s1 z18: the import mask has no cells" in caplog.text


def test_bad_plane_leaves_no_output(tmp_path):
    planes = [12, 18]
    images = write_state(tmp_path, planes, [labelled(), np.zeros((10, 10), np.uint16)])
    outputs = [tmp_path / "out" / f"z{z}.tif" for z in planes]
    with pytest.raises(InputError, match="z18.tif"):
        make_state_masks(
            images,
            outputs,
            method="import",
            masks_cfg=import_config(tmp_path),
            state="s1",
            planes=planes,
        )
    assert not any(path.exists() for path in outputs)


def test_missing_import_file_is_found_before_work(tmp_path):
    planes = [12, 18]
    images = write_state(tmp_path, planes, [labelled(), labelled()])
    (tmp_path / "committed" / "s1" / "z18.tif").unlink()
    with pytest.raises(InputError, match="imported mask of s1 z18 not found"):
        make_state_masks(
            images,
            [tmp_path / "a.tif", tmp_path / "b.tif"],
            method="import",
            masks_cfg=import_config(tmp_path),
            state="s1",
            planes=planes,
        )


def test_plane_mask_with_custom_template(tmp_path):
    (tmp_path / "committed" / "gt").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "committed" / "gt" / "s1.tif", labelled())
    mask = make_plane_mask(
        np.zeros(SHAPE, np.uint8),
        method="import",
        masks_cfg=import_config(tmp_path, "gt/{state}.tif"),
        state="s1",
        z=1,
    )
    assert mask.max() == 2


def test_method_inputs_name_the_files_each_method_reads(tmp_path):
    from protoseg.masks import method_inputs

    masks_cfg = import_config(tmp_path)
    assert method_inputs(masks_cfg, "s1", [12, 18]) == [
        str(tmp_path / "committed" / "s1" / "z12.tif"),
        str(tmp_path / "committed" / "s1" / "z18.tif"),
    ]
    prompted = section_defaults(
        "masks", method="sam-prompted", modality="fluorescent", prompted={"prompts": "p.csv"}
    )
    assert method_inputs(prompted, "s1", [12]) == ["p.csv"]
    classical = section_defaults("masks", method="classical", modality="fluorescent")
    assert method_inputs(classical, "s1", [12]) == []


def test_template_can_find_truth_beside_the_image(tmp_path):
    from protoseg.masks.imported import import_path

    image = tmp_path / "fig1" / "nucleus" / "240417YZ15_p0026_t00001_z001.png"
    path = import_path(".", "{image_dir}/../gt/{stem}.png", "s", 1, image)
    assert (
        path.resolve() == (tmp_path / "fig1" / "gt" / "240417YZ15_p0026_t00001_z001.png").resolve()
    )
