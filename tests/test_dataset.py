import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg.dataset import (
    MANIFEST_COLUMNS,
    build_dataset,
    dataset_scale,
    extra_shard_file,
    open_split,
    preprocessing_from_config,
    read_record,
    shard_files,
    torch_dataset,
)
from protoseg.errors import ConfigError, InputError

SIZE = [8, 12]
SPLIT = {"key": "xy", "test": [10], "validation": []}
DATASET_CFG = {"size": SIZE, "colour": "rgb", "mask_source": "state", "shard_size": 3}


def make_set(folder, xys=(1, 2, 10), planes=(12, 14), shape=(16, 20), empty_state=None):
    """Tiny catalogue + state masks: each state's mask is a box at a state-specific place."""
    rows = []
    (folder / "raw").mkdir(exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for xy in xys:
        state = f"day1t1xy{xy}"
        mask = np.zeros(shape, np.uint16)
        if state != empty_state:
            mask[2 : 2 + xy % 5 + 4, 3:12] = 7
        tifffile.imwrite(folder / "masks" / f"{state}.tif", mask)
        for channel, modality in ((1, "brightfield"), (2, "fluorescent")):
            for z in planes:
                path = folder / "raw" / f"day1t1c{channel}xy{xy}z{z}.tif"
                image = np.full((*shape, 3), 10 * channel + z + xy, np.uint8)
                tifffile.imwrite(path, image)
                rows.append(
                    {
                        "path": str(path),
                        "day": 1,
                        "time": 1,
                        "channel": channel,
                        "modality": modality,
                        "xy": xy,
                        "z": z,
                        "state": state,
                    }
                )
    catalogue = pd.DataFrame(rows)
    catalogue.to_csv(folder / "catalogue.csv", index=False)
    return folder / "catalogue.csv", str(folder / "masks" / "{state}.tif")


def build(
    tmp_path,
    modalities=("brightfield", "fluorescent"),
    split=SPLIT,
    dataset_cfg=DATASET_CFG,
    context_planes=0,
    **kwargs,
):
    catalogue, masks = make_set(tmp_path, **kwargs)
    return build_dataset(
        catalogue,
        tmp_path / "ds",
        variant="all",
        modalities=list(modalities),
        split_cfg=split,
        dataset_cfg=dataset_cfg,
        mask_path=masks,
        context_planes=context_planes,
        progress=False,
    )


def test_split_by_key_keeps_each_state_in_one_split(tmp_path):
    manifest = build(
        tmp_path, xys=(1, 2, 3, 10), split={"key": "xy", "test": [10], "validation": [3]}
    )
    assert set(manifest.loc[manifest["split"] == "test", "xy"]) == {10}
    assert set(manifest.loc[manifest["split"] == "validation", "xy"]) == {3}
    assert manifest.groupby("state")["split"].nunique().max() == 1
    # every image is one sample: 4 states x 2 planes x 2 modalities
    assert len(manifest) == 16
    assert len(open_split(tmp_path / "ds", "train")) == 8


def test_manifest_columns_and_rows_point_at_the_right_sample(tmp_path):
    manifest = build(tmp_path)
    for column in MANIFEST_COLUMNS + ["xy"]:
        assert column in manifest.columns
    assert list(manifest["sample"]) == list(range(len(manifest)))
    on_disk = pd.read_csv(tmp_path / "ds" / "manifest.csv")
    assert list(on_disk.columns) == list(manifest.columns)
    test = open_split(tmp_path / "ds", "test")
    for index in range(len(test)):
        sample = test[index]
        # the raw image was constant 10 * channel + z + xy: the sample must carry that value
        expected = (10 * sample.row["channel"] + sample.row["z"] + sample.row["xy"]) / 255
        assert np.allclose(sample.image, expected, atol=1e-6)
        assert sample.image.shape == (3, *SIZE) and sample.image.dtype == np.float32
        assert sample.mask.shape == tuple(SIZE) and sample.mask.dtype == np.uint8


def test_shards_hold_at_most_shard_size_samples(tmp_path):
    manifest = build(tmp_path, xys=(1, 2, 3, 10))
    assert manifest.groupby("shard").size().max() <= DATASET_CFG["shard_size"]
    for shard, group in manifest.groupby("shard"):
        images, masks = (
            np.load(path, mmap_mode="r") for path in shard_files(tmp_path / "ds", shard)
        )
        assert len(images) == len(masks) == len(group)
        assert sorted(group["row"]) == list(range(len(group)))


def test_split_leaving_train_or_test_empty_names_split_test(tmp_path):
    with pytest.raises(ConfigError, match=r"split\.test.*train split is empty"):
        build(tmp_path, xys=(10,), split={"key": "xy", "test": [10]})
    other = tmp_path / "other"
    other.mkdir()
    with (
        pytest.raises(ConfigError, match=r"split\.test.*test split is empty"),
        pytest.warns(UserWarning, match="match no image"),
    ):
        build(other, xys=(1, 2), split={"key": "xy", "test": [99]})


def test_unknown_modality_names_the_variant(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.variants\.all.*phase"):
        build(tmp_path, modalities=("brightfield", "phase"))


def test_state_without_mask_is_an_input_error_and_nothing_is_written(tmp_path):
    catalogue, masks = make_set(tmp_path)
    (tmp_path / "masks" / "day1t1xy2.tif").unlink()
    with pytest.raises(InputError, match=r"day1t1xy2\.tif.*day1t1xy2 have no mask"):
        build_dataset(
            catalogue,
            tmp_path / "ds",
            variant="all",
            modalities=["brightfield"],
            split_cfg=SPLIT,
            dataset_cfg=DATASET_CFG,
            mask_path=masks,
            context_planes=0,
            progress=False,
        )
    assert not (tmp_path / "ds" / "manifest.csv").exists()


def test_empty_mask_warns_and_is_kept(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = build(tmp_path, empty_state="day1t1xy1")
    assert any("empty mask" in str(w.message) for w in caught)
    assert (manifest["state"] == "day1t1xy1").sum() == 4
    train = open_split(tmp_path / "ds", "train")
    index = int(np.flatnonzero(train.manifest["state"] == "day1t1xy1")[0])
    assert train[index].mask.sum() == 0


def test_per_z_mask_source_pairs_each_plane_with_its_own_mask(tmp_path):
    catalogue, _ = make_set(tmp_path)
    for state in ("day1t1xy1", "day1t1xy2", "day1t1xy10"):
        for z in (12, 14):
            mask = np.zeros((16, 20), np.uint16)
            mask[: z - 8, :] = 1  # z12 -> 4 rows, z14 -> 6 rows
            path = tmp_path / "per_z" / state / f"z{z}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, mask)
    build_dataset(
        catalogue,
        tmp_path / "ds",
        variant="bf",
        modalities=["brightfield"],
        split_cfg=SPLIT,
        dataset_cfg={**DATASET_CFG, "mask_source": "per_z"},
        mask_path=str(tmp_path / "per_z" / "{state}" / "z{z}.tif"),
        context_planes=0,
        progress=False,
    )
    test = open_split(tmp_path / "ds", "test")
    by_z = {test[i].row["z"]: test[i].mask.sum() for i in range(len(test))}
    assert by_z[14] > by_z[12] > 0
    assert test[0].row["mask"].endswith("z12.tif")


def test_torch_dataset_gives_float_tensors(tmp_path):
    build(tmp_path)
    data = torch_dataset(tmp_path / "ds", "train")
    image, mask = data[0]
    assert tuple(image.shape) == (3, *SIZE) and tuple(mask.shape) == (1, *SIZE)
    assert str(image.dtype) == "torch.float32" and str(mask.dtype) == "torch.float32"


# ---------------------------------------------------------------- patches geometry
PATCHES_CFG = {
    "geometry": "patches",
    "scale": 0.5,
    "patch_size": [16, 16],
    "colour": "grey",
    "normalise": "percentile",
    "percentiles": [1.0, 99.8],
    "mask_source": "state",
}


def test_patches_geometry_stores_each_image_rescaled_with_instances_and_cells(tmp_path):
    manifest = build(tmp_path, modalities=("brightfield",), dataset_cfg=PATCHES_CFG)
    # one sample per shard, at half the raw 16 x 20 size
    assert manifest.groupby("shard").size().max() == 1
    assert set(manifest["stored_height"]) == {8} and set(manifest["stored_width"]) == {10}
    assert set(manifest["height"]) == {16} and set(manifest["width"]) == {20}
    record = read_record(tmp_path / "ds")
    assert record.geometry == "patches" and record.preprocessing.scale == 0.5
    assert record.patch_size == (16, 16) and record.has_instances
    assert record.source_sizes == ((16, 20),)
    train = open_split(tmp_path / "ds", "train")
    for index in range(len(train)):
        image, mask = train.arrays(index)
        assert image.shape == (1, 8, 10)
        labels = train.instances(index)
        # the instance labels cover exactly the binary mask's cells (the raw id 7 kept)
        assert set(np.unique(labels)) <= {0, 7}
        cells = train.foreground(index)
        assert len(cells) == int(mask.sum()) and mask[tuple(cells.T)].all()
    shard = manifest["shard"].iloc[0]
    assert extra_shard_file(tmp_path / "ds", shard, "instances").is_file()


def test_patches_scale_from_cell_diameter_and_absurd_values_name_the_key():
    assert dataset_scale(None, 60, 30) == 0.5
    assert dataset_scale(2.0, None, 30) == 2.0
    assert dataset_scale(None, None, 30) == 1.0
    with pytest.raises(ConfigError, match=r"dataset\.cell_diameter.*outside"):
        dataset_scale(None, 0.5, 30)
    with pytest.raises(ConfigError, match=r"dataset\.scale.*outside"):
        dataset_scale(1000, None, 30)
    with pytest.raises(ConfigError, match=r"dataset\.cell_diameter.*positive"):
        dataset_scale(None, -3, 30)
    with pytest.raises(ConfigError, match="not both"):
        dataset_scale(1.0, 10, 30)


def test_no_cell_in_any_training_image_is_an_error_and_nothing_is_written(tmp_path):
    catalogue, masks = make_set(tmp_path)
    for xy in (1, 2):
        tifffile.imwrite(tmp_path / "masks" / f"day1t1xy{xy}.tif", np.zeros((16, 20), np.uint16))
    with pytest.raises(InputError, match="no cell in any training image"):
        build_dataset(
            catalogue,
            tmp_path / "ds",
            variant="all",
            modalities=["brightfield"],
            split_cfg=SPLIT,
            dataset_cfg=PATCHES_CFG,
            mask_path=masks,
            context_planes=0,
            progress=False,
        )
    assert not (tmp_path / "ds" / "manifest.csv").exists()


def test_images_smaller_than_the_patch_are_logged(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="protoseg.dataset"):
        build(tmp_path, modalities=("brightfield",), dataset_cfg=PATCHES_CFG)
    assert "smaller than the [16, 16] patch" in caplog.text and "pads" in caplog.text


# ---------------------------------------------------------------- focal context
def raw_value(channel, z, xy):
    """The grey value make_set gives every pixel of an image, scaled as the data set scales it."""
    return (10 * channel + z + xy) / 255


def test_context_samples_hold_their_neighbouring_planes_as_channels_in_order(tmp_path):
    manifest = build(tmp_path, planes=(12, 14, 16), context_planes=1)
    record = read_record(tmp_path / "ds")
    assert record.context_planes == 1 and record.channels == 9 and record.plane_channels == 3
    train = open_split(tmp_path / "ds", "train")
    checked = set()
    for index in range(len(train)):
        row = train.manifest.iloc[index]
        image, _ = train.arrays(index)
        assert image.shape == (9, *SIZE)
        channel = 1 if row["modality"] == "brightfield" else 2
        # z12's window is z12 (repeated: the stack's end), z12, z14; z14's z12, z14, z16.
        window = {12: [12, 12, 14], 14: [12, 14, 16], 16: [14, 16, 16]}[int(row["z"])]
        assert row["context_z"] == ";".join(map(str, window))
        # Same state and channel (never the other modality), planes in window order.
        expected = np.repeat([raw_value(channel, z, int(row["xy"])) for z in window], 3)
        np.testing.assert_allclose(image[:, 0, 0], expected, atol=1e-6)
        assert row["context"].split(";")[1] == row["image"]
        checked.add((row["modality"], int(row["z"])))
    assert len(checked) == 6
    # The mask stays the sample's own state mask, the sizes the image's own.
    assert set(manifest["height"]) == {16} and manifest["mask"].str.endswith(".tif").all()


def test_context_samples_pair_with_their_own_planes_per_z_mask(tmp_path):
    catalogue, _ = make_set(tmp_path, planes=(12, 14, 16))
    for state in ("day1t1xy1", "day1t1xy2", "day1t1xy10"):
        for z in (12, 14, 16):
            mask = np.zeros((16, 20), np.uint16)
            mask[: z - 10, :] = 1  # z12 -> 2 rows, z14 -> 4, z16 -> 6
            path = tmp_path / "per_z" / state / f"z{z}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, mask)
    build_dataset(
        catalogue,
        tmp_path / "ds",
        variant="bf_z2",
        modalities=["brightfield"],
        split_cfg=SPLIT,
        dataset_cfg={**DATASET_CFG, "mask_source": "per_z"},
        mask_path=str(tmp_path / "per_z" / "{state}" / "z{z}.tif"),
        context_planes=2,
        progress=False,
    )
    test = open_split(tmp_path / "ds", "test")
    assert read_record(tmp_path / "ds").channels == 15
    for index in range(len(test)):
        sample = test[index]
        z = int(sample.row["z"])
        assert sample.row["mask"].endswith(f"z{z}.tif")
        # The mask is plane z's (its rows), not a neighbour's.
        height = SIZE[0] * (z - 10) / 16
        assert abs(sample.mask[:, 0].sum() - height) <= 1
        np.testing.assert_allclose(sample.image[6, 0, 0], raw_value(1, z, 10), atol=1e-6)


def test_context_in_the_patches_geometry_stacks_grey_planes(tmp_path):
    build(tmp_path, modalities=("brightfield",), dataset_cfg=PATCHES_CFG, context_planes=1)
    train = open_split(tmp_path / "ds", "train")
    image, mask, labels = train.region(0, 0, 0, 4, 4)
    assert image.shape == (3, 4, 4) and read_record(tmp_path / "ds").channels == 3


def test_a_plane_missing_from_a_state_names_the_state_and_the_plane(tmp_path):
    catalogue, masks = make_set(tmp_path, planes=(12, 14, 16))
    table = pd.read_csv(catalogue)
    gone = (table["state"] == "day1t1xy2") & (table["z"] == 14) & (table["channel"] == 1)
    table[~gone].to_csv(catalogue, index=False)
    with pytest.raises(InputError, match="state day1t1xy2 has no brightfield image at plane z14"):
        build_dataset(
            catalogue,
            tmp_path / "ds",
            variant="bf_z1",
            modalities=["brightfield"],
            split_cfg=SPLIT,
            dataset_cfg=DATASET_CFG,
            mask_path=masks,
            context_planes=1,
            progress=False,
        )
    assert not (tmp_path / "ds" / "manifest.csv").exists()


def test_a_cell_diameter_in_micrometres_rescales_each_image_by_its_pixel_size(tmp_path):
    """Positions photographed at 0.5 and 1 um per pixel: a 10 um cell is 20 and 10 px wide
    in them; with cell_diameter_um 10 and target_diameter 10 (1 um per pixel at the
    training scale) the first is halved and the second kept."""
    catalogue_path, masks = make_set(tmp_path)
    catalogue = pd.read_csv(catalogue_path)
    catalogue["pixel_size"] = np.where(catalogue["xy"] == 2, 1.0, 0.5)
    catalogue["dtype"] = "uint8"
    cfg = {**PATCHES_CFG, "scale": None, "cell_diameter_um": 10, "target_diameter": 10}

    def build_bright_field(folder):
        return build_dataset(
            catalogue,
            folder,
            variant="bf",
            modalities=["brightfield"],
            split_cfg=SPLIT,
            dataset_cfg=cfg,
            mask_path=masks,
            context_planes=0,
            progress=False,
        )

    manifest = build_bright_field(tmp_path / "ds")
    stored = manifest.groupby("state")[["stored_height", "stored_width"]].first()
    assert stored.loc["day1t1xy1"].tolist() == [8, 10]  # 0.5 um: halved
    assert stored.loc["day1t1xy2"].tolist() == [16, 20]  # 1 um: kept
    record = read_record(tmp_path / "ds")
    assert record.preprocessing.pixel_size == 1.0 and record.preprocessing.scale is None
    assert record.cell_diameter_um == 10 and record.target_diameter == 10
    assert record.source_pixel_sizes == (0.5, 1.0) and record.source_dtypes == ("uint8",)
    # An image of unknown pixel size cannot be placed: named, nothing half-built.
    catalogue.loc[catalogue["xy"] == 10, "pixel_size"] = np.nan
    with pytest.raises(InputError, match=r"day1t1c1xy10z12\.tif: no pixel size known"):
        build_bright_field(tmp_path / "ds2")
    assert not (tmp_path / "ds2" / "manifest.csv").exists()
    with pytest.raises(ConfigError, match="not several"):
        preprocessing_from_config({**cfg, "scale": 0.5})
