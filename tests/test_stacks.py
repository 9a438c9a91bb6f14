"""Microscope containers through bioio: files the tests write themselves (OME-TIFF with
tifffile, OME-Zarr with ome-zarr, CZI with pylibCZIrw), read back plane by plane and
against the same planes saved as single TIFFs; bad containers, channels, planes and pixel
sizes name the file. ND2 and LIF have no writer in Python (nd2 and liffile only read), so
only their corrupt-file errors are tested."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from protoseg.errors import ConfigError, InputError
from protoseg.io import read_image, write_tiff
from protoseg.stacks import PLUGINS, Stack, pixel_size_um, require_planes, resolve_format

PLANES, CHANNELS, HEIGHT, WIDTH = 3, 2, 40, 56
NAMES = ("BF", "GFP")
PIXEL_UM = 0.65


@pytest.fixture(scope="module")
def stack_data() -> np.ndarray:
    """Z x C x Y x X uint16, every plane different."""
    return np.random.default_rng(0).integers(0, 4000, (PLANES, CHANNELS, HEIGHT, WIDTH), np.uint16)


def write_ome_tiff(path, data, pixel=PIXEL_UM, unit="µm", names=NAMES):
    metadata = {"axes": "ZCYX", "Channel": {"Name": list(names)}}
    if pixel is not None:
        metadata |= {
            "PhysicalSizeX": pixel,
            "PhysicalSizeY": pixel,
            "PhysicalSizeXUnit": unit,
            "PhysicalSizeYUnit": unit,
        }
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return path


def write_ome_zarr(path, data, pixel=PIXEL_UM, units=True, chunks=None):
    import zarr
    from ome_zarr.writer import write_image

    omero = {
        "channels": [
            {
                "label": name,
                "color": "FFFFFF",
                "window": {"start": 0, "end": 4000, "min": 0, "max": 65535},
                "active": True,
            }
            for name in NAMES
        ]
    }
    write_image(
        data.transpose(1, 0, 2, 3),  # NGFF order: c, z, y, x
        zarr.open_group(str(path), mode="w"),
        axes="czyx",
        scale={"c": 1.0, "z": 2.0, "y": pixel, "x": pixel},
        axes_units={axis: "micrometer" for axis in "zyx"} if units else None,
        scale_factors=[],
        storage_options={"chunks": chunks or (1, 1, data.shape[2], data.shape[3])},
        omero=omero,
    )
    return path


def write_czi(path, data, pixel=PIXEL_UM):
    from pylibCZIrw import czi as pyczi

    with pyczi.create_czi(str(path)) as document:
        for z in range(data.shape[0]):
            for c in range(data.shape[1]):
                document.write(data=data[z, c][..., None], plane={"Z": z, "C": c, "T": 0})
        # pylibCZIrw takes metres here, whatever its docstring says (CZI stores metres).
        document.write_metadata(
            document_name=path.stem,
            channel_names=dict(enumerate(NAMES)),
            scale_x=pixel * 1e-6,
            scale_y=pixel * 1e-6,
            scale_z=2e-6,
        )
    return path


WRITERS = {
    "ome-tiff": ("stack.ome.tif", write_ome_tiff),
    "ome-zarr": ("stack.ome.zarr", write_ome_zarr),
    "czi": ("stack.czi", write_czi),
}


@pytest.fixture(scope="module", params=sorted(WRITERS))
def container(request, tmp_path_factory, stack_data):
    name, writer = WRITERS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, writer(folder / name, stack_data)


# ---------------------------------------------------------------- reading
def test_each_format_reports_its_axes_channels_and_pixel_size(container):
    data_format, path = container
    assert resolve_format(path) == data_format
    with Stack(path) as stack:
        assert len(stack.scenes) == 1
        info = stack.info()
    assert (info.format, info.reader) == (data_format, PLUGINS[data_format][0])
    assert (info.times, info.planes, info.channels) == (1, PLANES, NAMES)
    assert (info.height, info.width, info.samples, info.dtype) == (HEIGHT, WIDTH, 1, "uint16")
    assert info.pixel_size == pytest.approx(PIXEL_UM)
    # 2 um between planes where the writer states it (the OME-TIFF here states none).
    if data_format == "ome-tiff":
        assert info.plane_spacing is None
    else:
        assert info.plane_spacing == pytest.approx(2.0)


def test_each_plane_equals_the_same_plane_saved_as_a_single_tiff(container, stack_data, tmp_path):
    _, path = container
    with Stack(path) as stack:
        for z in range(PLANES):
            for c, name in enumerate(NAMES):
                single = tmp_path / f"z{z}c{c}.tif"
                write_tiff(single, stack_data[z, c])
                by_index = stack.read_plane(z=z, channel=c)
                assert by_index.dtype == np.uint16
                np.testing.assert_array_equal(by_index, read_image(single))
                np.testing.assert_array_equal(stack.read_plane(z=z, channel=name), by_index)


def test_a_plane_is_read_without_reading_the_others(tmp_path, stack_data):
    """One plane per chunk: a damaged chunk spoils its own plane only."""
    path = write_ome_zarr(tmp_path / "lazy.ome.zarr", stack_data)
    chunks = [p for p in path.rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunks) == PLANES * CHANNELS
    # zarr v3 names a chunk c/{channel}/{z}/{y}/{x}
    damaged = next(p for p in chunks if p.relative_to(path).parts[-5:] == ("c", "0", "0", "0", "0"))
    damaged.write_bytes(b"not a compressed chunk")
    with Stack(path) as stack:
        np.testing.assert_array_equal(stack.read_plane(z=2, channel=1), stack_data[2, 1])
        with pytest.raises(InputError, match=r"lazy\.ome\.zarr: could not read plane z=0, c=0"):
            stack.read_plane(z=0, channel=0)


def test_scenes_and_time_points_are_addressed(tmp_path):
    data = np.arange(2 * 3 * 2 * 8 * 8, dtype=np.uint16).reshape(2, 3, 2, 8, 8)
    path = tmp_path / "multi.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(data, metadata={"axes": "TZCYX", "Channel": {"Name": ["a", "b"]}})
        writer.write(data[:1, :1] + 7, metadata={"axes": "TZCYX", "PhysicalSizeX": 0.25})
    with Stack(path) as stack:
        assert len(stack.scenes) == 2
        first, second = stack.info(0), stack.info(stack.scenes[1])
        assert (first.times, first.planes, first.channels) == (2, 3, ("a", "b"))
        assert (second.times, second.planes, second.scene) == (1, 1, 1)
        assert first.pixel_size is None and second.pixel_size == pytest.approx(0.25)
        np.testing.assert_array_equal(stack.read_plane(z=2, channel="b", t=1), data[1, 2, 1])
        np.testing.assert_array_equal(stack.read_plane(scene=1, channel=1), data[0, 0, 1] + 7)
        with pytest.raises(InputError, match="has 2 scene"):
            stack.info(2)
        with pytest.raises(InputError, match="has no scene 'Image:9'"):
            stack.info("Image:9")
        with pytest.raises(InputError, match="time point"):
            stack.read_plane(t=2)


def test_rgb_planes_keep_their_samples(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (2, 16, 20, 3), np.uint8)
    path = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="rgb", metadata={"axes": "ZYXS"})
    with Stack(path) as stack:
        assert (stack.info().planes, stack.info().samples) == (2, 3)
        np.testing.assert_array_equal(stack.read_plane(z=1), data[1])


# ---------------------------------------------------------------- pixel sizes
def test_pixel_sizes_are_converted_to_micrometres(tmp_path, stack_data):
    path = write_ome_tiff(tmp_path / "nm.ome.tif", stack_data, pixel=650.0, unit="nm")
    with Stack(path) as stack:
        assert stack.info().pixel_size == pytest.approx(0.65)


def test_a_file_without_a_pixel_size_has_none(tmp_path, stack_data):
    ome = write_ome_tiff(tmp_path / "none.ome.tif", stack_data, pixel=None)
    unitless = write_ome_zarr(tmp_path / "unitless.ome.zarr", stack_data, units=False)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, stack_data[:, 0], photometric="minisblack")  # no resolution unit
    for path in (ome, unitless, plain):
        with Stack(path) as stack:
            assert stack.info().pixel_size is None, path


def test_an_imagej_tiff_states_its_pixel_size(tmp_path, stack_data):
    path = tmp_path / "hyperstack.tif"
    tifffile.imwrite(
        path,
        stack_data,
        imagej=True,
        resolution=(1 / PIXEL_UM, 1 / PIXEL_UM),
        metadata={"axes": "ZCYX", "unit": "um"},
    )
    assert resolve_format(path) == "tiff"
    with Stack(path) as stack:
        info = stack.info()
        assert (info.planes, len(info.channels)) == (PLANES, CHANNELS)
        assert info.pixel_size == pytest.approx(PIXEL_UM)
        np.testing.assert_array_equal(stack.read_plane(z=1, channel=1), stack_data[1, 1])


@pytest.mark.parametrize("data_format", ["ome-tiff", "ome-zarr", "czi"])
def test_a_pixel_size_of_zero_is_refused(tmp_path, stack_data, data_format):
    name, writer = WRITERS[data_format]
    path = writer(tmp_path / name, stack_data, pixel=0.0)
    with pytest.raises(InputError, match="pixel size of (zero|0)") as caught:
        with Stack(path) as stack:
            stack.info()
    assert str(path) in str(caught.value)


def test_pixels_that_are_not_square_are_refused(tmp_path, stack_data):
    path = tmp_path / "oblong.ome.tif"
    tifffile.imwrite(
        path,
        stack_data,
        ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.7},
    )
    with Stack(path) as stack:
        info = stack.info()
    assert (info.pixel_size_y, info.pixel_size_x) == (pytest.approx(0.7), pytest.approx(0.5))
    with pytest.raises(InputError, match="not square"):
        _ = info.pixel_size


def test_pixel_size_falls_back_to_the_config_or_says_what_is_missing(tmp_path, stack_data):
    with Stack(write_ome_tiff(tmp_path / "with.ome.tif", stack_data)) as stack:
        stated = stack.info()
    with Stack(write_ome_tiff(tmp_path / "without.ome.tif", stack_data, pixel=None)) as stack:
        unstated = stack.info()
    assert pixel_size_um(stated, configured=0.3) == pytest.approx(PIXEL_UM)  # the file's wins
    assert pixel_size_um(unstated, configured=0.3) == pytest.approx(0.3)
    assert pixel_size_um(unstated) is None
    with pytest.raises(
        InputError, match=r"without\.ome\.tif: states no pixel size.*data\.pixel_size"
    ):
        pixel_size_um(unstated, needed=True, key="data.pixel_size")
    with pytest.raises(ConfigError, match="data.pixel_size"):
        pixel_size_um(unstated, configured=0.0, key="data.pixel_size")


# ---------------------------------------------------------------- bad input
def test_a_channel_the_file_lacks_is_named(tmp_path, stack_data):
    with Stack(write_ome_tiff(tmp_path / "s.ome.tif", stack_data)) as stack:
        assert stack.channel_index("GFP") == 1
        with pytest.raises(
            InputError, match=r"s\.ome\.tif: has no channel named 'DAPI'.*'BF', 'GFP'"
        ):
            stack.read_plane(channel="DAPI")
        with pytest.raises(InputError, match="has 2 channel"):
            stack.read_plane(channel=2)


def test_a_plane_beyond_the_stack_is_named(tmp_path, stack_data):
    with Stack(write_ome_tiff(tmp_path / "s.ome.tif", stack_data)) as stack:
        with pytest.raises(InputError, match=r"s\.ome\.tif: has 3 plane \(Z\) index\(es\) 0\.\.2"):
            stack.read_plane(z=3)
        info = stack.info()
    require_planes(info, [12, 14, 16])
    with pytest.raises(InputError, match=r"holds 3 focal plane.*data\.planes asks for 7"):
        require_planes(info, [12, 14, 16, 18, 20, 22, 24])


@pytest.mark.parametrize(
    "name, reader",
    [
        ("bad.czi", "bioio-czi"),
        ("bad.nd2", "bioio-nd2"),
        ("bad.lif", "bioio-lif"),
        ("bad.ome.tif", "bioio-ome-tiff"),
    ],
)
def test_a_corrupt_container_names_the_file_and_the_reader(tmp_path, name, reader):
    path = tmp_path / name
    path.write_bytes(b"\x00garbage, not a microscope file" * 50)
    with pytest.raises(InputError) as caught:
        Stack(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a readable") and f"reader {reader}" in message


def test_a_truncated_ome_tiff_names_the_file_and_the_reader(tmp_path, stack_data):
    whole = write_ome_tiff(tmp_path / "whole.ome.tif", stack_data).read_bytes()
    path = tmp_path / "cut.ome.tif"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        InputError, match=r"cut\.ome\.tif: not a readable OME-TIFF file \(reader bioio-ome-tiff"
    ):
        with Stack(path) as stack:
            stack.read_plane(z=2, channel=1)


# ---------------------------------------------------------------- which reader
def test_auto_keeps_single_plane_images_for_protoseg_io(tmp_path, stack_data):
    single = tmp_path / "plane.tif"
    tifffile.imwrite(single, stack_data[0, 0])
    pages = tmp_path / "pages.tif"
    tifffile.imwrite(pages, stack_data[:, 0], photometric="minisblack")
    ome = tmp_path / "ome_inside.tif"  # OME-XML without .ome in its name
    write_ome_tiff(ome, stack_data)
    png = tmp_path / "plane.png"
    png.write_bytes(b"")  # decided by its name alone
    assert resolve_format(single) is None and resolve_format(png) is None
    assert resolve_format(pages) == "tiff" and resolve_format(ome) == "ome-tiff"
    assert resolve_format(single, "ome-tiff") == "ome-tiff"  # a named format is taken as said
    with pytest.raises(InputError, match="single plane"):
        Stack(single)


def test_unknown_formats_and_files_are_named(tmp_path):
    with pytest.raises(InputError, match="unknown image format 'ims'"):
        resolve_format(tmp_path / "a.ims", "ims")
    with pytest.raises(InputError, match=r"a\.ims: not an image file"):
        resolve_format(tmp_path / "a.ims")
    with pytest.raises(InputError, match="file not found"):
        Stack(tmp_path / "missing.czi")
