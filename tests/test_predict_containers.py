"""Prediction from microscope containers and into OME-Zarr: files the tests write themselves
(OME-TIFF with tifffile, OME-Zarr with ome-zarr; two channels, three planes, a pixel size),
predicted with the fixed 'bright is cell' network of test_predict and compared with the
same planes saved as single TIFFs; the OME-Zarr output read back with ome-zarr's reader."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.draw import disk

from protoseg import predict
from protoseg.errors import ConfigError, InputError, OutputError
from tests.test_predict import context_model, make_model

PLANES, HEIGHT, WIDTH = 3, 48, 64
CHANNELS = ("BF", "GFP")
PIXEL_UM = 0.65
DATA_CFG = {"channels": {"BF": "brightfield", "GFP": "fluorescent"}}
DARK, BRIGHT = 1000, 50000  # uint16: below and above the network's 0.3 of the dtype's range


def discs(centres, radius=7) -> np.ndarray:
    plane = np.full((HEIGHT, WIDTH), DARK, np.uint16)
    for centre in centres:
        plane[disk(centre, radius, shape=plane.shape)] = BRIGHT
    return plane


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    """Z x C x Y x X: bright-field planes of 1, 2 and 3 cells; the GFP channel one large
    cell on every plane, so that segmenting the wrong channel shows."""
    bf = [discs([(12, 12), (30, 45), (35, 15)][: z + 1]) for z in range(PLANES)]
    gfp = [discs([(24, 32)], radius=15)] * PLANES
    return np.stack([np.stack(pair) for pair in zip(bf, gfp, strict=True)])


def write_ome_tiff(path, data, pixel=PIXEL_UM, axes="ZCYX"):
    metadata = {"axes": axes, "Channel": {"Name": list(CHANNELS)}}
    if pixel is not None:
        metadata |= {"PhysicalSizeX": pixel, "PhysicalSizeY": pixel}
        metadata |= {"PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return path


def write_ome_zarr(path, data, pixel=PIXEL_UM):
    import zarr
    from ome_zarr.writer import write_image

    window = {"start": DARK, "end": BRIGHT, "min": 0, "max": 65535}
    channels = [
        {"label": name, "color": "FFFFFF", "window": window, "active": True} for name in CHANNELS
    ]
    write_image(
        data.transpose(1, 0, 2, 3),  # NGFF order: c, z, y, x
        zarr.open_group(str(path), mode="w"),
        axes="czyx",
        scale={"y": pixel, "x": pixel},
        axes_units={"y": "micrometer", "x": "micrometer"},
        scale_factors=[],
        omero={"channels": channels},
    )
    return path


WRITERS = {
    "ome-tiff": ("stack.ome.tif", write_ome_tiff),
    "ome-zarr": ("stack.ome.zarr", write_ome_zarr),
}


@pytest.fixture(params=sorted(WRITERS))
def container(request, tmp_path, stack):
    name, writer = WRITERS[request.param]
    (tmp_path / "in").mkdir()
    return writer(tmp_path / "in" / name, stack)


def grey_model():
    return make_model(in_channels=1, colour="grey", scale=1.0)  # trained on brightfield


def read_zarr(path):
    """The image, the labels images and their metadata of an OME-Zarr, through ome-zarr's
    reader (the one napari-ome-zarr uses)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(str(path)))())
    image = next(node for node in nodes if node.load(Multiscales) and not node.load(Label))
    labels = {node.metadata["name"]: node for node in nodes if node.load(Label)}
    return image, labels


# ---------------------------------------------------------------- containers in
def test_container_planes_give_the_labels_of_the_same_planes_as_single_tiffs(
    container, stack, tmp_path
):
    summary = predict.predict_files(
        grey_model(), [container], tmp_path / "out", data_cfg=DATA_CFG, progress=False
    )
    labels = tifffile.imread(predict.output_paths(tmp_path / "out", "stack")["labels"])
    assert labels.shape == (PLANES, HEIGHT, WIDTH)
    # The bright-field channel, not GFP's one large cell on every plane.
    assert [int(page.max()) for page in labels] == [1, 2, 3]
    assert summary["channel"].tolist() == ["BF"] * PLANES
    assert summary["plane"].tolist() == [1, 2, 3] and summary["time"].tolist() == [0] * PLANES
    (tmp_path / "single").mkdir()
    for z in range(PLANES):
        tifffile.imwrite(tmp_path / "single" / f"z{z}.tif", stack[z, 0])
    predict.predict_files(grey_model(), [tmp_path / "single"], tmp_path / "ref", progress=False)
    for z in range(PLANES):
        single = tifffile.imread(predict.output_paths(tmp_path / "ref", f"z{z}")["labels"])
        np.testing.assert_array_equal(labels[z], single)


def test_a_context_model_sees_a_containers_planes_as_a_multi_page_stack(container, stack, tmp_path):
    from_container = context_model(1)
    predict.predict_files(
        from_container, [container], tmp_path / "a", data_cfg=DATA_CFG, progress=False
    )
    tifffile.imwrite(tmp_path / "pages.tif", stack[:, 0], photometric="minisblack")
    from_pages = context_model(1)
    predict.predict_files(from_pages, [tmp_path / "pages.tif"], tmp_path / "b", progress=False)
    assert len(from_container.network.corners) >= PLANES  # every tile of every plane
    assert from_container.network.corners == from_pages.network.corners
    np.testing.assert_array_equal(
        tifffile.imread(predict.output_paths(tmp_path / "a", "stack")["labels"]),
        tifffile.imread(predict.output_paths(tmp_path / "b", "pages")["labels"]),
    )


def test_a_single_channel_file_needs_no_channel_mapping(stack, tmp_path):
    path = tmp_path / "bf.ome.tif"
    tifffile.imwrite(
        path, stack[:, 0], ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": PIXEL_UM}
    )
    summary = predict.predict_files(grey_model(), [path], tmp_path / "out", progress=False)
    assert summary["cells"].tolist() == [1, 2, 3]
    # The workflow's data.channels names the training images' channels: one the file does
    # not have leaves its only channel to the model, one of another modality does not.
    unknown = {"channels": {"1": "brightfield", "DAPI": "fluorescent"}}
    summary = predict.predict_files(
        grey_model(), [path], tmp_path / "out2", data_cfg=unknown, progress=False
    )
    assert summary["cells"].tolist() == [1, 2, 3]
    with pytest.raises(InputError, match=r"bf\.ome\.tif.*one channel.*maps to fluorescent"):
        predict.predict_files(
            grey_model(),
            [path],
            tmp_path / "out3",
            data_cfg={"channels": {"0": "fluorescent"}},
            progress=False,
        )


def test_scenes_and_time_points_each_get_their_outputs(stack, tmp_path):
    path = tmp_path / "lapse.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        for scene in range(2):  # two stage positions, two time points each
            frames = np.stack([stack[:, :, :, ::-1] if scene else stack, stack[::-1]])
            tif.write(frames, metadata={"axes": "TZCYX", "Channel": {"Name": list(CHANNELS)}})
    summary = predict.predict_files(
        grey_model(), [path], tmp_path / "out", data_cfg=DATA_CFG, progress=False
    )
    for scene in range(2):
        for time in range(2):
            labels = tifffile.imread(
                predict.output_paths(tmp_path / "out", f"lapse_s{scene}_t{time}")["labels"]
            )
            assert [int(page.max()) for page in labels] == ([1, 2, 3] if time == 0 else [3, 2, 1])
    assert len(summary) == 2 * 2 * PLANES
    assert summary.groupby(["scene", "time"]).size().tolist() == [PLANES] * 4


# ---------------------------------------------------------------- OME-Zarr out
def test_ome_zarr_output_holds_the_tiff_labels_at_the_files_pixel_size(container, stack, tmp_path):
    import zarr

    predict.predict_files(
        grey_model(), [container], tmp_path / "tif", data_cfg=DATA_CFG, progress=False
    )
    summary = predict.predict_files(
        grey_model(),
        [container],
        tmp_path / "zarr",
        data_cfg=DATA_CFG,
        format="ome-zarr",
        progress=False,
    )
    paths = predict.output_paths(tmp_path / "zarr", "stack", "ome-zarr")
    assert sorted(paths) == ["overlay", "zarr"] and paths["overlay"].is_file()
    assert not list((tmp_path / "zarr").glob("*.tif"))  # the OME-Zarr replaces the TIFFs
    assert summary["zarr_path"].tolist() == [str(paths["zarr"])] * PLANES
    table = pd.read_csv(tmp_path / "zarr" / predict.SUMMARY_NAME)
    assert table["pixel_size_um"].tolist() == [PIXEL_UM] * PLANES

    tiffs = predict.output_paths(tmp_path / "tif", "stack")
    image, labels = read_zarr(paths["zarr"])
    assert sorted(labels) == ["cells", "mask"]
    np.testing.assert_array_equal(
        np.asarray(labels["cells"].data[0]), tifffile.imread(tiffs["labels"])
    )
    np.testing.assert_array_equal(
        np.asarray(labels["mask"].data[0]), tifffile.imread(tiffs["binary"])
    )
    np.testing.assert_array_equal(np.asarray(image.data[0]), stack[:, 0])  # the BF planes
    for node in (image, labels["cells"], labels["mask"]):
        axes = {axis["name"]: axis for axis in node.metadata["axes"]}
        assert [axis["name"] for axis in node.metadata["axes"]] == ["z", "y", "x"]
        assert axes["y"]["unit"] == axes["x"]["unit"] == "micrometer"
        (transforms,) = node.metadata["coordinateTransformations"]
        scale = next(t["scale"] for t in transforms if t["type"] == "scale")
        assert scale == pytest.approx([1.0, PIXEL_UM, PIXEL_UM])
    # Plain zarr sees the same arrays, and the labels point to their image.
    group = zarr.open_group(str(paths["zarr"]), mode="r")
    assert group["labels"].attrs["ome"]["labels"] == ["cells", "mask"]
    cells = group["labels/cells"]
    assert cells.attrs["ome"]["image-label"]["source"]["image"] == "../../"
    level = cells.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
    assert cells[level].dtype == np.uint16 and int(cells[level][:].max()) == 3


def test_ome_zarr_takes_the_configured_pixel_size_or_stays_in_pixels(tmp_path, caplog):
    plane = discs([(20, 20)]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "field.tif", plane)  # an ordinary TIFF: no pixel size
    predict.predict_files(
        grey_model(),
        [tmp_path / "field.tif"],
        tmp_path / "sized",
        data_cfg={"pixel_size": 0.3},
        format="ome-zarr",
        progress=False,
    )
    image, labels = read_zarr(tmp_path / "sized" / "field.ome.zarr")
    assert [axis.get("unit") for axis in image.metadata["axes"]] == ["micrometer"] * 2
    scale = image.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == pytest.approx([0.3, 0.3]) and int(labels["cells"].data[0].max()) == 1
    with caplog.at_level(logging.WARNING, logger="protoseg.predict"):
        predict.predict_files(
            grey_model(),
            [tmp_path / "field.tif"],
            tmp_path / "bare",
            format="ome-zarr",
            progress=False,
        )
    assert "field.tif: no pixel size" in caplog.text and "in pixels" in caplog.text
    image, _ = read_zarr(tmp_path / "bare" / "field.ome.zarr")
    assert all("unit" not in axis for axis in image.metadata["axes"])
    assert image.metadata["coordinateTransformations"][0][0]["scale"] == [1.0, 1.0]
    with pytest.raises(ConfigError, match=r"data\.pixel_size.*positive"):
        predict.predict_files(
            grey_model(),
            [tmp_path / "field.tif"],
            tmp_path / "zero",
            data_cfg={"pixel_size": 0},
            format="ome-zarr",
            progress=False,
        )


def test_colour_images_keep_their_samples_as_the_channel_axis(tmp_path):
    rgb = np.zeros((32, 40, 3), np.uint8)
    rgb[disk((16, 20), 8, shape=(32, 40))] = (40, 60, 250)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    predict.predict_files(
        make_model(scale=1.0),
        [tmp_path / "rgb.tif"],
        tmp_path / "out",
        format="ome-zarr",
        progress=False,
    )
    image, labels = read_zarr(tmp_path / "out" / "rgb.ome.zarr")
    assert [axis["name"] for axis in image.metadata["axes"]] == ["c", "y", "x"]
    np.testing.assert_array_equal(np.asarray(image.data[0]), rgb.transpose(2, 0, 1))
    assert labels["cells"].data[0].shape == (32, 40)


# ---------------------------------------------------------------- bad input
def test_a_channel_name_the_file_lacks_names_the_file_and_its_channels(container, tmp_path):
    with pytest.raises(InputError, match=r"stack\.ome\.(tif|zarr).*no channel 'DAPI'.*'BF', 'GFP'"):
        predict.predict_files(
            grey_model(),
            [container],
            tmp_path / "out",
            data_cfg={"channels": {"DAPI": "brightfield"}},
            progress=False,
        )
    with pytest.raises(InputError, match=r"has 2 channels \('BF', 'GFP'\).*data\.channels"):
        predict.predict_files(grey_model(), [container], tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match=r"data\.channels.*brightfield"):
        predict.predict_files(
            grey_model(),
            [container],
            tmp_path / "out",
            data_cfg={"channels": {"GFP": "fluorescent"}},
            progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_no_half_written_ome_zarr(stack, tmp_path, monkeypatch):
    import ome_zarr.writer

    container = write_ome_tiff(tmp_path / "stack.ome.tif", stack)
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="out"):
        predict.predict_files(
            grey_model(), [container], blocker, data_cfg=DATA_CFG, format="ome-zarr", progress=False
        )
    assert blocker.read_text() == "not a folder"

    def fail(*args, **kwargs):  # the image is written, then the labels fail
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ome_zarr.writer, "write_labels", fail)
    with pytest.raises(OutputError, match=r"stack\.ome\.zarr.*disk is full"):
        predict.predict_files(
            grey_model(),
            [container],
            tmp_path / "new",
            data_cfg=DATA_CFG,
            format="ome-zarr",
            progress=False,
        )
    assert [path.name for path in (tmp_path / "new").iterdir()] == []


def test_an_ome_zarr_output_may_not_replace_its_input(stack, tmp_path):
    container = write_ome_zarr(tmp_path / "stack.ome.zarr", stack)
    with pytest.raises(InputError, match=r"stack\.ome\.zarr.*overwritten by its output"):
        predict.predict_files(
            grey_model(),
            [container],
            tmp_path,
            data_cfg=DATA_CFG,
            format="ome-zarr",
            progress=False,
        )
    assert (container / "zarr.json").is_file()


def test_folders_list_containers_and_outputs_drop_the_formats_ending(stack, tmp_path):
    write_ome_zarr(tmp_path / "b.ome.zarr", stack)
    write_ome_tiff(tmp_path / "a.ome.tif", stack)
    (tmp_path / "notes.txt").write_text("x")
    files = predict.image_files([tmp_path])
    assert [path.name for path in files] == ["a.ome.tif", "b.ome.zarr"]
    assert [item.stem for item in predict.plan_inputs(files, 0, None)] == ["a", "b"]
    tifffile.imwrite(tmp_path / "a.tif", stack[0, 0])
    with pytest.raises(InputError, match="same name"):
        predict.image_files([tmp_path])


def test_the_command_writes_ome_zarr(stack, tmp_path):
    import torch

    from protoseg.cli import main
    from protoseg.model import build_model, save_model
    from tests.test_predict import record_meta

    torch.manual_seed(0)
    network = build_model({"depth": 1, "base_channels": 2}, in_channels=1)
    save_model(tmp_path / "model.pt", network, record_meta("patches", (32, 32), 1.0, "grey"))
    path = tmp_path / "bf.ome.tif"
    tifffile.imwrite(
        path,
        stack[:, 0],
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": PIXEL_UM, "PhysicalSizeY": PIXEL_UM},
    )
    command = ["predict", str(tmp_path / "model.pt"), str(path), "-o", str(tmp_path / "out"), "-q"]
    assert main([*command, "--format", "ome-zarr", "--device", "cpu"]) == 0
    image, labels = read_zarr(tmp_path / "out" / "bf.ome.zarr")
    assert image.metadata["coordinateTransformations"][0][0]["scale"] == pytest.approx(
        [1.0, PIXEL_UM, PIXEL_UM]
    )
    assert labels["cells"].data[0].shape == (PLANES, HEIGHT, WIDTH)
    assert not (tmp_path / "out" / "bf_labels.tif").exists()
    assert main([*command, "--device", "cpu"]) == 0  # the schema's default: TIFFs
    assert (tmp_path / "out" / "bf_labels.tif").is_file()


# ---------------------------------------------------------------- the workflow rule
@pytest.mark.slow
def test_predict_rule_writes_ome_zarr_per_scene_and_time_point(stack, tmp_path):
    from tests.workflow_helpers import run_snakemake, tiny_config, write_project

    new_images = tmp_path / "new"
    new_images.mkdir()
    tifffile.imwrite(
        new_images / "lapse.ome.tif",
        np.stack([stack[:, 0], stack[::-1, 0]]),  # two time points of three planes, one channel
        ome=True,
        metadata={"axes": "TZYX", "PhysicalSizeX": PIXEL_UM, "PhysicalSizeY": PIXEL_UM},
    )
    tifffile.imwrite(new_images / "field.tif", stack[0, 0])
    config = tiny_config()
    config["predict"].update({"input_dir": str(new_images), "format": "ome-zarr"})
    workdir = tmp_path / "work"
    write_project(workdir, config)
    run_snakemake(workdir, "results/predictions/brightfield-bce/predictions.csv")
    out = workdir / "results" / "predictions" / "brightfield-bce"
    for stem, shape, scale in (
        ("lapse_t0", (PLANES, HEIGHT, WIDTH), [1.0, PIXEL_UM, PIXEL_UM]),
        ("lapse_t1", (PLANES, HEIGHT, WIDTH), [1.0, PIXEL_UM, PIXEL_UM]),
        ("field", (HEIGHT, WIDTH), [1.0, 1.0]),  # an ordinary TIFF states no pixel size
    ):
        paths = predict.output_paths(out, stem, "ome-zarr")
        image, labels = read_zarr(paths["zarr"])
        assert labels["cells"].data[0].shape == shape and paths["overlay"].is_file()
        assert image.metadata["coordinateTransformations"][0][0]["scale"] == pytest.approx(scale)
    summary = pd.read_csv(out / predict.SUMMARY_NAME)
    assert len(summary) == 2 * PLANES + 1 and not list(out.glob("*.tif"))


# ---------------------------------------------------------------- models in micrometres
def micrometre_model(pixel_size: float):
    """The bright-is-cell network recorded as working at ``pixel_size`` um per pixel
    (dataset.cell_diameter_um / target_diameter)."""
    from dataclasses import replace

    from protoseg.segmenter import Segmenter

    model = make_model(in_channels=1, colour="grey", scale=1.0)
    prep = replace(model.preprocessing, scale=None, pixel_size=pixel_size)
    return Segmenter(model.network, replace(model.record, preprocessing=prep), name=model.name)


def test_a_micrometre_model_sees_two_magnifications_at_one_scale(stack, tmp_path):
    """The same cells photographed at 0.65 um and (binned 2 x 2) at 1.3 um per pixel reach
    the network at one size, and give the same cells back at each file's own size."""
    fine = stack[:, :1]  # Z x 1 x Y x X: bright-field only
    coarse = fine.reshape(PLANES, 1, HEIGHT // 2, 2, WIDTH // 2, 2).mean(axis=(3, 5))
    (tmp_path / "in").mkdir()
    fine_path = tmp_path / "in" / "fine.ome.tif"
    coarse_path = tmp_path / "in" / "coarse.ome.tif"
    tifffile.imwrite(
        fine_path,
        fine,
        ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": PIXEL_UM, "PhysicalSizeY": PIXEL_UM},
    )
    tifffile.imwrite(
        coarse_path,
        coarse.astype(np.uint16),
        ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 2 * PIXEL_UM, "PhysicalSizeY": 2 * PIXEL_UM},
    )
    model = micrometre_model(2 * PIXEL_UM)  # works at the coarse file's pixel size
    summary = predict.predict_files(
        model, [fine_path, coarse_path], tmp_path / "out", progress=False
    )
    # Both are prepared at the coarse size (fine rescaled by 0.5, coarse by 1).
    from protoseg.transforms import prepare_image

    prep = model.preprocessing
    assert prepare_image(fine[0, 0], prep, "fine", PIXEL_UM).shape[1:] == (HEIGHT // 2, WIDTH // 2)
    assert prepare_image(coarse[0, 0], prep, "coarse", 2 * PIXEL_UM).shape[1:] == (
        HEIGHT // 2,
        WIDTH // 2,
    )
    rows = summary.set_index(["image", "plane"])
    for z in range(1, PLANES + 1):
        assert (
            rows.loc[(str(fine_path), z), "cells"] == rows.loc[(str(coarse_path), z), "cells"] == z
        )
    assert set(summary["pixel_size_um"].round(3)) == {round(PIXEL_UM, 3), round(2 * PIXEL_UM, 3)}


def test_a_micrometre_model_refuses_an_image_without_a_pixel_size(tmp_path):
    (tmp_path / "in").mkdir()
    image = tmp_path / "in" / "plain.tif"
    tifffile.imwrite(image, discs([(20, 20)]))
    model = micrometre_model(PIXEL_UM)
    with pytest.raises(
        InputError, match=r"plain\.tif: states no pixel size and data\.pixel_size is not set"
    ):
        predict.predict_files(model, [image], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # With the microscope's pixel size in the config, it is predicted at the model's scale.
    summary = predict.predict_files(
        model, [image], tmp_path / "out", data_cfg={"pixel_size": PIXEL_UM / 2}, progress=False
    )
    assert summary["cells"].tolist() == [1]
    assert summary["pixel_size_um"].tolist() == [PIXEL_UM / 2]


def test_a_stacks_plane_spacing_becomes_the_ome_zarr_z_scale(stack, tmp_path):
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "spaced.ome.tif"
    metadata = {"axes": "ZCYX", "Channel": {"Name": list(CHANNELS)}}
    metadata |= {"PhysicalSizeX": PIXEL_UM, "PhysicalSizeY": PIXEL_UM}
    metadata |= {"PhysicalSizeZ": 2000.0, "PhysicalSizeZUnit": "nm"}  # 2 um, another unit
    tifffile.imwrite(path, stack, ome=True, metadata=metadata)
    predict.predict_files(
        grey_model(), [path], tmp_path / "out", data_cfg=DATA_CFG, format="ome-zarr", progress=False
    )
    image, labels = read_zarr(predict.output_paths(tmp_path / "out", "spaced", "ome-zarr")["zarr"])
    for node in (image, labels["cells"]):
        axes = {axis["name"]: axis.get("unit") for axis in node.metadata["axes"]}
        assert axes == {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
        (transforms,) = node.metadata["coordinateTransformations"]
        scale = next(t["scale"] for t in transforms if t["type"] == "scale")
        assert scale == pytest.approx([2.0, PIXEL_UM, PIXEL_UM])
