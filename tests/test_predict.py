"""Prediction on new images: inputs, training scale, tiling, instances, outputs, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from skimage.draw import disk

from protoseg import predict
from protoseg.errors import ConfigError, InputError
from protoseg.io import read_image
from protoseg.segmenter import Segmenter, binary_instances

torch.set_num_threads(1)


class BrightIsCell(torch.nn.Module):
    """A fixed 'model': logit = 40 x (mean of the channels - 0.3), so bright pixels are cell.

    It records the shape of every batch it sees, to check scale and tiling.
    """

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(40.0 / in_channels)
            self.conv.bias.fill_(-12.0)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return self.conv(x)


def record_meta(
    geometry="patches",
    train_size=(32, 32),
    scale=0.5,
    colour="rgb",
    threshold=None,
    context_planes=0,
):
    """Model meta as the training stage writes it: the data set record (+ a threshold)."""
    from protoseg.dataset import DatasetRecord
    from protoseg.transforms import Preprocessing

    size = tuple(train_size) if geometry == "resize" else None
    prep = Preprocessing(
        geometry, colour, "dtype", (1.0, 99.8), size, None if size else scale, tuple(train_size)
    )
    record = DatasetRecord(
        variant="bf",
        modalities=("brightfield",),
        preprocessing=prep,
        patch_size=None if size else tuple(train_size),
        mask_source="state",
        split={"key": "xy", "test": [10], "validation": []},
        samples={"train": 1, "validation": 0, "test": 1},
        shard_size=1,
        has_instances=size is None,
        context_planes=context_planes,
    )
    meta = {"dataset": record.to_dict()}
    if threshold is not None:
        meta["threshold"] = {"value": threshold, "source": "validation"}
    return meta


def make_model(train_size=(32, 32), scale=0.5, in_channels=3, colour="rgb", **kwargs):
    meta = record_meta("patches", train_size, scale, colour, **kwargs)
    return Segmenter.from_meta(BrightIsCell(in_channels).eval(), meta, name="bright")


def disc_image(
    shape=(64, 80), centres=((20, 20), (40, 55)), radius=10
) -> tuple[np.ndarray, np.ndarray]:
    """A dark RGB image with bright discs, and the discs' true mask."""
    truth = np.zeros(shape, bool)
    for centre in centres:
        truth[disk(centre, radius, shape=shape)] = True
    image = np.zeros((*shape, 3), np.uint8)
    image[truth] = (40, 60, 250)  # bright blue, like the fluorescent outlines
    return image, truth


# ---------------------------------------------------------------- inputs
def test_folders_expand_to_their_images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.tif", "a.png", ".hidden.tif", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    single = tmp_path / "c.TIFF"
    single.write_bytes(b"x")
    files = predict.image_files([folder, single])
    assert [path.name for path in files] == ["a.png", "b.tif", "c.TIFF"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: [d / "missing.tif"], "no such file"),
        (lambda d: [(d / "x.txt").write_text("x") and d / "x.txt"], "not an image"),
        (lambda d: [(d / "empty").mkdir() or d / "empty"], "no image files"),
        (
            lambda d: [
                (d / "a.tif").write_bytes(b"x") and d / "a.tif",
                (d / "a.png").write_bytes(b"x") and d / "a.png",
            ],
            "same name",
        ),
    ],
)
def test_bad_inputs_are_named(tmp_path, setup, message):
    with pytest.raises(InputError, match=message):
        predict.image_files(setup(tmp_path))


# ---------------------------------------------------------------- scale
def test_resize_geometry_resizes_each_image_to_the_training_size(tmp_path):
    meta = record_meta("resize", (32, 32))
    model = Segmenter.from_meta(BrightIsCell().eval(), meta)
    assert model.preprocessing.geometry == "resize" and model.in_channels == 3
    for name, shape in (("small.tif", (48, 40)), ("large.tif", (128, 96))):
        image, _ = disc_image(shape=shape, centres=((shape[0] // 2, shape[1] // 2),), radius=12)
        tifffile.imwrite(tmp_path / name, image)
    predict.predict_files(model, [tmp_path], tmp_path / "out", progress=False)
    # As the dataset stage did: every image, whatever its size, becomes one 32 x 32 input.
    assert model.network.seen == [(1, 3, 32, 32), (1, 3, 32, 32)]


def test_model_meta_without_geometry_is_refused():
    with pytest.raises(InputError, match="old.pt.*no training geometry"):
        Segmenter.from_meta(BrightIsCell(), {"dataset": {"size": [8, 8]}}, name="old.pt")


def test_model_sees_the_image_at_training_scale_in_training_sized_tiles(tmp_path):
    model = make_model(train_size=(32, 32), scale=0.5)
    image, _ = disc_image(shape=(64, 64))
    tifffile.imwrite(tmp_path / "one.tif", image)
    predict.predict_files(
        model, [tmp_path / "one.tif"], tmp_path / "out", overlap=0.25, progress=False
    )
    # 64 x 64 at scale 0.5 is 32 x 32: exactly one training-sized tile.
    assert model.network.seen == [(1, 3, 32, 32)]

    model.network.seen.clear()
    image, _ = disc_image(shape=(128, 96))
    tifffile.imwrite(tmp_path / "two.tif", image)
    predict.predict_files(
        model, [tmp_path / "two.tif"], tmp_path / "out", overlap=0.25, progress=False
    )
    # 128 x 96 -> 64 x 48: tiles of 32 sharing at least a quarter -> 3 rows x 2 columns.
    tiles = sum(shape[0] for shape in model.network.seen)
    assert tiles == 6 and all(shape[2:] == (32, 32) for shape in model.network.seen)


def test_the_models_threshold_is_used_unless_overridden(tmp_path):
    image, _ = disc_image(shape=(64, 80))
    tifffile.imwrite(tmp_path / "cells.tif", image)
    strict = make_model(scale=1.0, threshold=0.9999)  # above every disc pixel's probability
    assert predict.predict_files(strict, [tmp_path / "cells.tif"], tmp_path / "a", progress=False)[
        "cells"
    ].tolist() == [0]
    summary = predict.predict_files(
        strict, [tmp_path / "cells.tif"], tmp_path / "b", threshold=0.5, progress=False
    )
    assert summary["cells"].tolist() == [2] and summary["threshold"].tolist() == [0.5]


def test_tile_option_overrides_training_size(tmp_path):
    model = make_model(train_size=(32, 32), scale=1.0)
    image, _ = disc_image(shape=(48, 48))
    tifffile.imwrite(tmp_path / "img.tif", image)
    predict.predict_files(
        model, [tmp_path / "img.tif"], tmp_path / "out", tile=(48, 48), overlap=0, progress=False
    )
    assert model.network.seen == [(1, 3, 48, 48)]


# ---------------------------------------------------------------- outputs
def test_outputs_per_image_match_the_cells(tmp_path):
    model = make_model(scale=0.5)
    image, truth = disc_image(shape=(64, 80))
    tifffile.imwrite(tmp_path / "cells.tif", image)
    summary = predict.predict_files(
        model, [tmp_path / "cells.tif"], tmp_path / "out", progress=False
    )
    paths = predict.output_paths(tmp_path / "out", "cells")
    binary = tifffile.imread(paths["binary"])
    labels = tifffile.imread(paths["labels"])
    overlay = read_image(paths["overlay"])
    assert (
        binary.shape == truth.shape
        and binary.dtype == np.uint8
        and set(np.unique(binary)) <= {0, 1}
    )
    # Predicted at half scale and resized back: close to the true discs, not pixel-exact.
    dice = 2 * (binary.astype(bool) & truth).sum() / (binary.sum() + truth.sum())
    assert dice > 0.9
    assert (
        labels.dtype == np.uint16 and labels.max() == 2 and sorted(np.unique(labels)) == [0, 1, 2]
    )
    assert overlay.shape == (*truth.shape, 3) and overlay.dtype == np.uint8
    assert (overlay == predict.OUTLINE_COLOUR).all(axis=2).sum() > 0
    table = pd.read_csv(tmp_path / "out" / predict.SUMMARY_NAME)
    assert table.equals(summary.astype(table.dtypes.to_dict())) or len(table) == 1
    assert (
        table.loc[0, "cells"] == 2 and table.loc[0, "height"] == 64 and table.loc[0, "width"] == 80
    )


def test_grey_and_png_inputs_work_with_a_grey_model(tmp_path):
    import cv2

    model = make_model(in_channels=1, colour="grey", scale=1.0)
    image, truth = disc_image(shape=(32, 32), centres=((16, 16),))
    cv2.imwrite(str(tmp_path / "grey.png"), image.max(axis=2))
    predict.predict_files(model, [tmp_path], tmp_path / "out", progress=False)
    labels = tifffile.imread(predict.output_paths(tmp_path / "out", "grey")["labels"])
    assert labels.max() == 1 and model.network.seen[0][1] == 1


# ---------------------------------------------------------------- errors
def test_channel_mismatch_stops_before_anything_is_written(tmp_path):
    model = make_model(scale=1.0)
    good, _ = disc_image(shape=(32, 32))
    tifffile.imwrite(tmp_path / "a_good.tif", good)
    tifffile.imwrite(
        tmp_path / "b_two_channels.tif",
        np.zeros((32, 32, 2), np.uint8),
        photometric="minisblack",
        planarconfig="contig",
    )
    with pytest.raises(InputError, match="b_two_channels.tif.*2 channels"):
        predict.predict_files(model, [tmp_path], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_five_channel_stack_is_refused(tmp_path):
    model = make_model(scale=1.0)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(InputError, match="stack.tif"):
        predict.predict_files(model, [tmp_path / "stack.tif"], tmp_path / "out", progress=False)


def test_bad_threshold_and_instance_method(tmp_path):
    model = make_model()
    # Checked against the schema's predict section, naming the key, before any image is read.
    with pytest.raises(ConfigError, match=r"predict\.threshold"):
        predict.predict_files(model, [tmp_path], tmp_path / "out", threshold=1.5)
    with pytest.raises(ConfigError, match=r"predict\.instances.*mask-rcnn"):
        predict.predict_files(model, [tmp_path], tmp_path / "out", instances="mask-rcnn")


# ---------------------------------------------------------------- instances
def two_touching_discs(shape=(60, 90)):
    binary = np.zeros(shape, bool)
    binary[disk((30, 30), 16, shape=shape)] = True
    binary[disk((30, 58), 16, shape=shape)] = True  # overlaps the first: one component
    return binary


def test_connected_components_keep_touching_cells_together():
    labels = binary_instances(two_touching_discs(), "cc")
    assert labels.dtype == np.uint16 and labels.max() == 1


def test_watershed_splits_touching_cells_at_the_neck():
    binary = two_touching_discs()
    labels = binary_instances(binary, "watershed", min_distance=10)
    assert labels.max() == 2
    assert ((labels > 0) == binary).all()  # every cell pixel kept, nothing added
    assert labels[30, 25] != labels[30, 63]  # the two centres are in different cells


def test_watershed_keeps_tiny_objects_and_min_area_drops_them():
    binary = two_touching_discs()
    binary[2:4, 2:4] = True  # a 4-pixel speck
    assert binary_instances(binary, "watershed", min_distance=10).max() == 3
    assert binary_instances(binary, "cc", min_area=10).max() == 1
    assert binary_instances(np.zeros((8, 8), bool), "watershed").max() == 0


@pytest.mark.parametrize("method", ["cc", "watershed"])
def test_instance_labels_are_numbered_from_one_without_gaps(method):
    """The object filter and the scores count labels 1..N: no number may be skipped."""
    rng = np.random.default_rng(0)
    binary = rng.random((80, 80)) > 0.6
    binary[10:40, 10:40] = True
    labels = binary_instances(binary, method, min_distance=5, min_area=3)
    assert labels.max() > 10
    assert np.unique(labels).tolist() == list(range(int(labels.max()) + 1))


def test_more_objects_than_uint16_holds_are_counted_not_refused():
    """A weak network at a low threshold on a large image calls noise cells: 90,000 specks
    come back as uint32 labels (a threshold search scores them), the usual case as uint16."""
    specks = np.zeros((600, 600), bool)
    specks[::2, ::2] = True
    labels = binary_instances(specks, "cc")
    assert labels.dtype == np.uint32 and labels.max() == 90_000
    assert binary_instances(two_touching_discs(), "cc").dtype == np.uint16


def test_overlap_is_a_share_of_the_tile(tmp_path):
    with pytest.raises(ConfigError, match=r"predict\.overlap.*32"):
        predict.predict_files(make_model(), [tmp_path], tmp_path / "out", overlap=32)


# ---------------------------------------------------------------- focal-context models
class CornerRecorder(BrightIsCell):
    """BrightIsCell that also records the top-left pixel of every channel of every input."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels)
        self.corners: list[list[float]] = []

    def forward(self, x):
        self.corners += x[:, :, 0, 0].tolist()
        return super().forward(x)


def context_model(context_planes=1, colour="grey"):
    channels = (1 if colour == "grey" else 3) * (2 * context_planes + 1)
    meta = record_meta("patches", (32, 32), 1.0, colour, context_planes=context_planes)
    return Segmenter.from_meta(CornerRecorder(channels).eval(), meta, name="bf_z1.pt")


def stack_data_cfg(planes=(12, 14, 16)):
    """The demo config's data section (the study's names) with a stack of ``planes``."""
    from protoseg.config import complete_section
    from tests.workflow_helpers import demo_config

    data = complete_section("data", demo_config()["data"])
    data["planes"] = list(planes)
    return data


def write_planes(folder, values, xy=5, channel=1, shape=(32, 32)):
    """Per-plane files in the study's naming, each plane one grey value."""
    folder.mkdir(parents=True, exist_ok=True)
    for z, value in values.items():
        tifffile.imwrite(
            folder / f"day1t1c{channel}xy{xy}z{z}.tif", np.full(shape, value, np.uint8)
        )


def test_context_model_counts_its_input_channels():
    model = context_model(1, colour="rgb")
    assert model.context_planes == 1 and model.in_channels == 9
    meta = record_meta("patches", (32, 32), 1.0, "rgb", context_planes=1)
    from protoseg.model import build_model

    single_plane = build_model({"depth": 1, "base_channels": 2}, in_channels=3)
    with pytest.raises(InputError, match="x.pt.*network takes 3 channel.*data set had 9"):
        Segmenter.from_meta(single_plane, meta, name="x.pt")
    context = build_model({"depth": 1, "base_channels": 2}, in_channels=9)
    assert Segmenter.from_meta(context, meta).in_channels == 9


def test_context_model_sees_each_named_plane_with_its_neighbours(tmp_path):
    model = context_model(1)
    write_planes(tmp_path / "in", {12: 51, 14: 102, 16: 153})
    summary = predict.predict_files(
        model, [tmp_path / "in"], tmp_path / "out", data_cfg=stack_data_cfg(), progress=False
    )
    # z12 with z12 again (the stack's end) and z14; z14 with z12 and z16; z16 with z14, z16.
    expected = [[0.2, 0.2, 0.4], [0.2, 0.4, 0.6], [0.4, 0.6, 0.6]]
    np.testing.assert_allclose(model.network.corners, expected, atol=1e-6)
    assert summary["plane"].tolist() == [12, 14, 16]
    for z in (12, 14, 16):
        labels = tifffile.imread(
            predict.output_paths(tmp_path / "out", f"day1t1c1xy5z{z}")["labels"]
        )
        assert labels.shape == (32, 32)


def test_context_model_names_the_missing_plane_of_a_stack(tmp_path):
    write_planes(tmp_path / "in", {12: 51, 16: 153})
    with pytest.raises(
        InputError, match="state day1t1xy5.*no input is plane z14 of state day1t1xy5"
    ):
        predict.predict_files(
            context_model(1),
            [tmp_path / "in"],
            tmp_path / "out",
            data_cfg=stack_data_cfg(),
            progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_context_model_refuses_a_single_image(tmp_path):
    image, _ = disc_image(shape=(32, 32))
    tifffile.imwrite(tmp_path / "field.tif", image)
    with pytest.raises(InputError, match="field.tif: is a single image.*focal-context model"):
        predict.predict_files(
            context_model(1, "rgb"),
            [tmp_path / "field.tif"],
            tmp_path / "out",
            data_cfg=stack_data_cfg(),
            progress=False,
        )
    # Named planes without the config that names them are single images too.
    write_planes(tmp_path / "in", {12: 51, 14: 102, 16: 153})
    with pytest.raises(InputError, match="single image.*--config"):
        predict.predict_files(
            context_model(1), [tmp_path / "in"], tmp_path / "out2", progress=False
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_context_model_predicts_every_page_of_a_multi_page_stack(tmp_path):
    model = context_model(1)
    stack = np.stack([np.full((32, 32), value, np.uint8) for value in (51, 102, 153, 204)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    summary = predict.predict_files(
        model, [tmp_path / "stack.tif"], tmp_path / "out", progress=False
    )
    expected = [[0.2, 0.2, 0.4], [0.2, 0.4, 0.6], [0.4, 0.6, 0.8], [0.6, 0.8, 0.8]]
    np.testing.assert_allclose(model.network.corners, expected, atol=1e-6)
    paths = predict.output_paths(tmp_path / "out", "stack")
    binary = tifffile.imread(paths["binary"])
    assert binary.shape == (4, 32, 32) and tifffile.imread(paths["labels"]).shape == (4, 32, 32)
    # BrightIsCell: cell where the plane's mean over its window is above 0.3.
    assert binary[:, 0, 0].tolist() == [0, 1, 1, 1]
    assert read_image(paths["overlay"]).shape == (32, 4 * 32 + 3 * 4, 3)
    assert (
        summary["plane"].tolist() == [1, 2, 3, 4]
        and (summary["image"] == str(tmp_path / "stack.tif")).all()
    )
    # The outputs are stacks of pages too, not the colour samples of one image.
    with tifffile.TiffFile(paths["labels"]) as stored:
        assert len(stored.pages) == 4 and stored.series[0].axes[0] != "S"
    # Three planes written without photometric are one image's colour samples to tifffile.
    (tmp_path / "rgb").mkdir()
    tifffile.imwrite(
        tmp_path / "rgb" / "three.tif", stack[:3], photometric="rgb", planarconfig="separate"
    )
    with pytest.raises(InputError, match="three.tif.*colour samples.*minisblack"):
        predict.predict_files(model, [tmp_path / "rgb"], tmp_path / "out3", progress=False)
