"""The catalogue's checks of issue 23: blank images warned, imported masks checked when the
catalogue pairs them with their images (before any mask job)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg.catalogue import check_mask_pairs, describe_images, warn_blank
from protoseg.errors import InputError


def records(tmp_path, images):
    rows = []
    for index, image in enumerate(images):
        path = tmp_path / f"img{index}.tif"
        tifffile.imwrite(path, image)
        rows.append({"path": str(path), "state": "s1", "z": index})
    return pd.DataFrame(rows)


def test_blank_images_are_named_in_one_warning(tmp_path, caplog):
    table = records(tmp_path, [np.zeros((6, 8), np.uint8), np.full((6, 8), 3, np.uint8)])
    with caplog.at_level("WARNING", logger="protoseg.catalogue"):
        described = describe_images(table, progress=False)
    assert list(described["height"]) == [6, 6]  # blank images pass
    assert [r.getMessage() for r in caplog.records] == [
        f"1 blank image(s), every pixel 0: {tmp_path / 'img0.tif'}; their masks will hold no "
        "cell (an empty plane, or a failed acquisition?)"
    ]


def test_many_blank_images_are_counted(caplog):
    with caplog.at_level("WARNING", logger="protoseg.catalogue"):
        warn_blank([f"a{i}.tif" for i in range(8)], shown=2)
    assert (
        caplog.records[0]
        .getMessage()
        .startswith("8 blank image(s), every pixel 0: a0.tif, a1.tif and 6 more;")
    )


def catalogue_of(tmp_path):
    table = records(tmp_path, [np.full((6, 8), 5, np.uint8)])
    return describe_images(table, progress=False), table["path"][0]


@pytest.mark.parametrize(
    ("mask", "problem"),
    [
        (
            np.dstack([np.eye(6, 8), np.zeros((6, 8)), np.ones((6, 8))]).astype(np.uint8),
            "mask is a colour image of shape (6, 8, 3)",
        ),
        (np.eye(6, 8, dtype=np.float32), "mask has dtype float32; expected integer labels"),
        (np.eye(5, 8, dtype=np.uint8), "mask is 5 x 8 (rows x columns) but its image is 6 x 8"),
    ],
)
def test_imported_masks_are_checked_against_their_images(tmp_path, mask, problem):
    catalogue, image = catalogue_of(tmp_path)
    mask_path = tmp_path / "mask.tif"
    tifffile.imwrite(mask_path, mask)
    with pytest.raises(InputError) as error:
        check_mask_pairs(catalogue, [(image, str(mask_path))])
    assert str(error.value).startswith(f"{mask_path}: {problem}")


def test_good_imported_masks_pass(tmp_path):
    catalogue, image = catalogue_of(tmp_path)
    tifffile.imwrite(tmp_path / "mask.tif", np.eye(6, 8, dtype=np.uint16))
    check_mask_pairs(catalogue, [(image, str(tmp_path / "mask.tif"))])
