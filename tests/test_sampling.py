"""The patch sampler: cells in every batch, determinism, padding."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg.dataset import build_dataset, open_split
from protoseg.sampling import PatchSampler
from protoseg.transforms import Augmentation


def sparse_set(folder, shape=(64, 80), cells_per_image=1, small=None):
    """Images with one or a few tiny cells: 0.1-1 % foreground, as on real slides."""
    rows = []
    for xy in (1, 2, 3, 10):
        state = f"s{xy}"
        size = small if (small and xy == 2) else shape
        mask = np.zeros(size, np.uint16)
        rng = np.random.default_rng(xy)
        for cell in range(cells_per_image):
            y, x = rng.integers(2, size[0] - 4), rng.integers(2, size[1] - 4)
            mask[y : y + 3, x : x + 3] = cell + 1
        tifffile.imwrite(folder / f"{state}-mask.tif", mask)
        image = (mask > 0).astype(np.uint8) * 200 + 20
        tifffile.imwrite(folder / f"{state}.tif", image)
        rows.append(
            {
                "path": str(folder / f"{state}.tif"),
                "state": state,
                "modality": "bf",
                "z": 1,
                "xy": xy,
                "channel": 1,
            }
        )
    pd.DataFrame(rows).to_csv(folder / "catalogue.csv", index=False)
    build_dataset(
        folder / "catalogue.csv",
        folder / "ds",
        variant="bf",
        modalities=["bf"],
        split_cfg={"key": "xy", "test": [10], "validation": []},
        dataset_cfg={"geometry": "patches", "scale": 1.0, "patch_size": [16, 16], "colour": "grey"},
        mask_path=str(folder / "{state}-mask.tif"),
        context_planes=0,
        progress=False,
    )
    return open_split(folder / "ds", "train")


def test_every_batch_has_its_share_of_patches_with_cells(tmp_path):
    split = sparse_set(tmp_path)
    sampler = PatchSampler(
        split, (16, 16), samples_per_epoch=120, batch_size=6, foreground_share=0.33, seed=0
    )
    assert sampler.forced_per_batch == 2
    with_cells = np.array([sampler.draw(i)[1].any() for i in range(120)])
    forced = np.array([sampler.forced(i) for i in range(120)])
    # the forced items (the last 2 of each batch of 6) always hold a cell ...
    assert with_cells[forced].all()
    assert forced.reshape(-1, 6).sum(axis=1).tolist() == [2] * 20
    # ... while random patches of a 0.2 % foreground image rarely do
    assert with_cells[~forced].mean() < 0.5


def test_no_oversampling_gives_the_foreground_share_of_the_images(tmp_path):
    split = sparse_set(tmp_path)
    sampler = PatchSampler(
        split, (16, 16), samples_per_epoch=60, batch_size=6, foreground_share=0.0, seed=0
    )
    assert not any(sampler.forced(i) for i in range(60))


def test_draws_depend_only_on_seed_epoch_and_index(tmp_path):
    split = sparse_set(tmp_path)
    make = lambda: PatchSampler(  # noqa: E731
        split,
        (16, 16),
        samples_per_epoch=8,
        batch_size=4,
        foreground_share=0.5,
        augmentation=Augmentation(flip=True, rotate90=True, scale=0.3, gamma=0.3),
        seed=5,
    )
    first, second = make(), make()
    second.draw(3)  # drawing in another order changes nothing
    assert np.array_equal(first.draw(2)[0], second.draw(2)[0])
    first.set_epoch(1)
    assert not np.array_equal(first.draw(2)[0], second.draw(2)[0])


def test_images_smaller_than_the_patch_are_mirrored_out_to_it(tmp_path):
    split = sparse_set(tmp_path, small=(9, 11))
    sampler = PatchSampler(
        split, (16, 16), samples_per_epoch=40, batch_size=4, foreground_share=0.5, seed=1
    )
    for index in range(40):
        image, mask, labels = sampler.draw(index)
        assert image.shape == (1, 16, 16) and mask.shape == (16, 16) and labels.shape == (16, 16)
        # image and mask stay aligned after padding: cell pixels are the bright ones
        assert np.array_equal(image[0] > 0.5, mask > 0)


def test_torch_items_are_float_tensors(tmp_path):
    split = sparse_set(tmp_path)
    sampler = PatchSampler(split, (16, 16), samples_per_epoch=4, batch_size=4, foreground_share=1.0)
    image, mask = sampler[0]
    assert tuple(image.shape) == (1, 16, 16) and tuple(mask.shape) == (1, 16, 16)
    assert str(image.dtype) == "torch.float32" and mask.max() == 1


def test_foreground_share_outside_0_1_names_the_key(tmp_path):
    split = sparse_set(tmp_path)
    from protoseg.errors import ConfigError

    with pytest.raises(ConfigError, match="foreground_share"):
        PatchSampler(split, (16, 16), samples_per_epoch=4, batch_size=4, foreground_share=1.5)
