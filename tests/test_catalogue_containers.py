"""Microscope containers in the catalogue: a z-stack file per state (OME-TIFF, OME-Zarr,
CZI, written here) gives the same catalogue, plane for plane, as the same planes saved as
single TIFFs; scenes and time points become states; channels are mapped by name or index;
bad stacks name the file and the problem; and the demo runs end to end from OME-TIFF stacks.

ND2 and LIF have no writer in Python (the ``nd2`` and ``liffile`` packages only read), so
their catalogue rows are not tested here; they go through the same bioio path as CZI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from protoseg import catalogue
from protoseg.config import validate
from protoseg.errors import ConfigError, InputError
from protoseg.io import read_image, write_tiff
from protoseg.model import load_model
from protoseg.stacks import FORMATS, PlaneAddress, source_file
from tests.test_stacks import NAMES, PIXEL_UM, write_czi, write_ome_tiff, write_ome_zarr
from tests.workflow_helpers import REPO, run_snakemake, tiny_config, write_project

PLANES = [12, 18, 24]
HEIGHT, WIDTH = 40, 56
SINGLE = {
    "source": "folder",
    "pattern": catalogue.STUDY_PATTERN,
    "state_format": catalogue.STUDY_STATE_FORMAT,
    "channels": {"1": "brightfield", "2": "fluorescent"},
    "planes": PLANES,
}
STACK_SUFFIX = {"ome-tiff": ".ome.tif", "ome-zarr": ".ome.zarr", "czi": ".czi"}
WRITERS = {"ome-tiff": write_ome_tiff, "ome-zarr": write_ome_zarr, "czi": write_czi}
# What a catalogue says of each plane, whatever file holds it.
COMPARED = ["state", "day", "time", "xy", "modality", "z", "height", "width", "channels", "dtype"]


def stack_config(data_format: str, **changes) -> dict:
    suffix = STACK_SUFFIX[data_format].replace(".", r"\.")
    return {
        **SINGLE,
        "pattern": rf"^day(?P<day>\d+)t(?P<time>\d+)xy(?P<xy>\d+){suffix}$",
        "channels": {NAMES[0]: "brightfield", NAMES[1]: "fluorescent"},
        **changes,
    }


def stack_data(seed: int, times: int = 0) -> np.ndarray:
    """Z x C x Y x X uint16 (T x Z x C x Y x X with ``times``), every plane different."""
    shape = ((times,) if times else ()) + (len(PLANES), len(NAMES), HEIGHT, WIDTH)
    return np.random.default_rng(seed).integers(0, 4000, shape, np.uint16)


def write_both(folder: Path, data_format: str) -> tuple[Path, Path, dict]:
    """Two states as single TIFFs and as one container each; their data by xy."""
    single, stacks = folder / "single", folder / "stacks"
    single.mkdir(parents=True)
    stacks.mkdir()
    data = {xy: stack_data(xy) for xy in (1, 10)}
    for xy, planes in data.items():
        for z_index, z in enumerate(PLANES):
            for c in range(len(NAMES)):
                name = catalogue.study_file_name(1, 1, c + 1, xy, z)
                write_tiff(single / name, planes[z_index, c])
        WRITERS[data_format](stacks / f"day1t1xy{xy}{STACK_SUFFIX[data_format]}", planes)
    return single, stacks, data


def full_catalogue(raw_dir: Path, data_cfg: dict) -> pd.DataFrame:
    records = catalogue.records_from_config(data_cfg, raw_dir)
    files = sorted(set(records["file"]))
    return catalogue.build_catalogue(files, raw_dir, data_cfg, progress=False)


# ---------------------------------------------------------------- the same catalogue
@pytest.mark.parametrize("data_format", sorted(WRITERS))
def test_a_stack_per_state_gives_the_catalogue_of_its_planes_as_single_tiffs(tmp_path, data_format):
    single, stacks, _ = write_both(tmp_path, data_format)
    from_planes = full_catalogue(single, SINGLE)
    from_stacks = full_catalogue(stacks, stack_config(data_format))

    assert len(from_stacks) == len(from_planes) == 2 * len(PLANES) * len(NAMES)
    pd.testing.assert_frame_equal(
        from_stacks[COMPARED].reset_index(drop=True), from_planes[COMPARED].reset_index(drop=True)
    )
    for plane_path, stack_path in zip(from_planes["path"], from_stacks["path"], strict=True):
        np.testing.assert_array_equal(read_image(stack_path), read_image(plane_path))
    # The container's plane is addressed; its file is what Snakemake sees.
    address = PlaneAddress.parse(from_stacks["path"].iloc[0])
    assert address is not None and address.format == data_format
    assert source_file(from_stacks["path"].iloc[0]) == from_stacks["file"].iloc[0]
    assert set(from_stacks["file"]) == {str(path) for path in sorted(stacks.iterdir())}
    # The pixel size: the file's, or unknown for TIFFs that state none.
    assert from_stacks["pixel_size"].tolist() == pytest.approx([PIXEL_UM] * len(from_stacks))
    assert from_planes["pixel_size"].isna().all()


def test_a_configured_pixel_size_fills_in_for_files_without_one(tmp_path):
    single, stacks, data = write_both(tmp_path, "ome-tiff")
    configured = full_catalogue(single, {**SINGLE, "pixel_size": 0.4})
    assert configured["pixel_size"].tolist() == pytest.approx([0.4] * len(configured))
    # The file's own size wins over the config's.
    own = full_catalogue(stacks, stack_config("ome-tiff", pixel_size=0.4))
    assert own["pixel_size"].tolist() == pytest.approx([PIXEL_UM] * len(own))
    # A stack that states none takes the config's.
    bare = tmp_path / "bare"
    bare.mkdir()
    write_ome_tiff(bare / "day1t1xy1.ome.tif", data[1], pixel=None)
    records = catalogue.records_from_config(stack_config("ome-tiff", pixel_size=0.4), bare)
    assert records["pixel_size"].tolist() == pytest.approx([0.4] * len(records))


def test_channels_are_mapped_by_index_when_they_are_not_names(tmp_path):
    _, stacks, data = write_both(tmp_path, "ome-tiff")
    by_index = stack_config("ome-tiff", channels={"1": "fluorescent", "0": "brightfield"})
    records = catalogue.records_from_config(by_index, stacks)
    fluorescent = records[(records["modality"] == "fluorescent") & (records["xy"] == 10)]
    np.testing.assert_array_equal(read_image(fluorescent["path"].iloc[-1]), data[10][-1, 1])


def test_time_points_of_one_file_become_states(tmp_path):
    series = stack_data(3, times=2)
    tifffile.imwrite(
        tmp_path / "day1xy1.ome.tif",
        series,
        ome=True,
        metadata={"axes": "TZCYX", "Channel": {"Name": list(NAMES)}},
    )
    cfg = stack_config(
        "ome-tiff",
        pattern=r"^day(?P<day>\d+)xy(?P<xy>\d+)\.ome\.tif$",
        state_format="day{day}xy{xy}t{t}",
    )
    records = catalogue.records_from_config(cfg, tmp_path)
    assert sorted(records["state"].unique()) == ["day1xy1t0", "day1xy1t1"]
    plane = records[(records["state"] == "day1xy1t1") & (records["z"] == 18)]
    plane = plane[plane["modality"] == "fluorescent"]
    np.testing.assert_array_equal(read_image(plane["path"].iloc[0]), series[1, 1, 1])
    # Without {t} the time points would be one state: said, with the fix.
    with pytest.raises(InputError, match=r"add \{scene\} and \{t\} to data\.state_format"):
        catalogue.records_from_config({**cfg, "state_format": "day{day}xy{xy}"}, tmp_path)


def test_format_names_a_container_whatever_the_file_name(tmp_path):
    tifffile.imwrite(tmp_path / "day1t1xy1.tif", stack_data(1), metadata={"axes": "ZCYX"})
    cfg = {
        **stack_config("ome-tiff"),
        "pattern": r"^day(?P<day>\d+)t(?P<time>\d+)xy(?P<xy>\d+)\.tif$",
    }
    cfg["channels"] = {"0": "brightfield", "1": "fluorescent"}
    records = catalogue.records_from_config({**cfg, "format": "tiff"}, tmp_path)
    assert set(records["path"].map(lambda path: PlaneAddress.parse(path).format)) == {"tiff"}
    # auto: the pattern leaves z and channel to the file, and its header says it is a stack.
    assert catalogue.records_from_config(cfg, tmp_path)["path"].tolist() == records["path"].tolist()


def test_the_schema_lists_every_format_the_reader_knows():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert tuple(schema["properties"]["data"]["properties"]["format"]["enum"]) == FORMATS


# ---------------------------------------------------------------- bad stacks
def one_stack(folder: Path, data: np.ndarray, **metadata) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "day1t1xy1.ome.tif"
    write_ome_tiff(path, data, **metadata)
    return path


def test_a_stack_with_fewer_planes_than_configured_names_the_file(tmp_path):
    path = one_stack(tmp_path / "raw", stack_data(1)[:2])
    with pytest.raises(
        InputError,
        match=r"day1t1xy1\.ome\.tif: holds 2 focal plane\(s\) \(Z\), but data\.planes lists 3",
    ):
        catalogue.records_from_config(stack_config("ome-tiff"), path.parent)


def test_a_channel_name_the_file_lacks_names_the_file_and_its_channels(tmp_path):
    path = one_stack(tmp_path / "raw", stack_data(1))
    cfg = stack_config("ome-tiff", channels={"BF": "brightfield", "DAPI": "fluorescent"})
    with pytest.raises(
        InputError,
        match=r"day1t1xy1\.ome\.tif: has no channel named 'DAPI' \(channels: 'BF', 'GFP'\)",
    ):
        catalogue.records_from_config(cfg, path.parent)


def test_a_pixel_size_of_zero_is_refused(tmp_path):
    path = one_stack(tmp_path / "raw", stack_data(1), pixel=0.0)
    with pytest.raises(InputError, match=r"day1t1xy1\.ome\.tif: .*pixel size of zero"):
        catalogue.records_from_config(stack_config("ome-tiff"), path.parent)
    config = tiny_config()
    config["data"]["pixel_size"] = 0
    with pytest.raises(Exception, match=r"pixel_size"):
        validate(config)


def test_a_corrupt_container_names_the_file_and_the_reader(tmp_path):
    path = one_stack(tmp_path / "raw", stack_data(1))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InputError, match=r"day1t1xy1\.ome\.tif: .*reader bioio-ome-tiff"):
        catalogue.records_from_config(stack_config("ome-tiff"), path.parent)


def test_a_single_plane_without_z_in_its_name_is_refused(tmp_path):
    (tmp_path / "raw").mkdir()
    write_tiff(tmp_path / "raw" / "day1t1xy1.tif", stack_data(1)[0, 0])
    cfg = {
        **stack_config("ome-tiff"),
        "pattern": r"^day(?P<day>\d+)t(?P<time>\d+)xy(?P<xy>\d+)\.tif$",
    }
    with pytest.raises(
        InputError,
        match=r"day1t1xy1\.tif: holds a single plane, but data\.pattern has no channel and no z group",
    ):
        catalogue.records_from_config(cfg, tmp_path / "raw")


def test_a_pattern_group_named_like_a_container_index_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.pattern.*\['t'\] would hide"):
        catalogue.compile_pattern(r"^xy(?P<xy>\d+)_(?P<t>\d+)\.czi$", "xy{xy}", containers=True)


# ---------------------------------------------------------------- the workflow
def demo_as_stacks(tmp_path: Path) -> tuple[dict, dict]:
    """The tiny demo generated as single planes, and the same planes packed into one RGB
    OME-TIFF per state; configs of both."""
    from protoseg.demo import generate_demo

    planes_cfg = tiny_config()
    demo_dir = tmp_path / "demo"
    generate_demo(
        planes_cfg["demo"],
        planes_cfg["data"]["planes"],
        demo_dir,
        channels=planes_cfg["data"]["channels"],
        state_format=planes_cfg["data"]["state_format"],
    )
    planes_cfg["data"].update({"source": "folder", "raw_dir": str(demo_dir / "raw")})
    planes_cfg["quality"]["truth_dir"] = str(demo_dir / "truth")
    records = catalogue.records_from_config(planes_cfg["data"], demo_dir / "raw")
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    modalities = ("brightfield", "fluorescent")  # channels BF and GFP of the stacks
    for state in records["state"].unique():
        data = np.stack(
            [
                np.stack(
                    [
                        read_image(catalogue.lookup(records, state=state, modality=modality, z=z))
                        for modality in modalities
                    ]
                )
                for z in planes_cfg["data"]["planes"]
            ]
        )
        tifffile.imwrite(
            stacks / f"{state}.ome.tif",
            data,
            ome=True,
            photometric="rgb",
            metadata={
                "axes": "ZCYXS",
                "Channel": {"Name": ["BF", "GFP"]},
                "PhysicalSizeX": 0.5,
                "PhysicalSizeY": 0.5,
            },
        )
    stacks_cfg = yaml.safe_load(yaml.safe_dump(planes_cfg))
    stacks_cfg["data"].update(
        {
            "raw_dir": str(stacks),
            "pattern": r"^day(?P<day>\d+)t(?P<time>\d+)xy(?P<xy>\d+)\.ome\.tif$",
            "channels": {"BF": "brightfield", "GFP": "fluorescent"},
        }
    )
    return planes_cfg, stacks_cfg


@pytest.mark.slow
def test_the_demo_runs_end_to_end_from_ome_tiff_stacks(tmp_path):
    planes_cfg, stacks_cfg = demo_as_stacks(tmp_path)
    # Learnt at the cells' size in micrometres: 12.5 um cells (25 px at the stacks' 0.5 um)
    # are 12 px at the training scale, so every image is rescaled by 0.48.
    stacks_cfg["dataset"].update(
        {
            "geometry": "patches",
            "cell_diameter_um": 12.5,
            "target_diameter": 12,
            "patch_size": [32, 32],
            "normalise": "percentile",
        }
    )
    stacks_cfg["train"].update({"samples_per_epoch": 16, "losses": ["bce"]})
    # One model is enough to follow the stacks to the tables (the others read the same data).
    stacks_cfg["dataset"]["variants"] = {"brightfield": {"modalities": ["brightfield"]}}
    from_stacks, from_planes = tmp_path / "run_stacks", tmp_path / "run_planes"
    write_project(from_stacks, stacks_cfg)
    write_project(from_planes, planes_cfg)
    run_snakemake(from_stacks)
    run_snakemake(from_planes, "all_merge")

    results = from_stacks / "results"
    table = pd.read_csv(results / "catalogue.csv")
    assert table["path"].str.contains(r"\.ome\.tif::ome-tiff:s0:t0:z\d:c\d$").all()
    assert table["pixel_size"].tolist() == pytest.approx([0.5] * len(table))
    # Same pixels, same masks, plane for plane.
    masks = sorted((results / "masks" / "planes").rglob("*.tif"))
    assert len(masks) == 3 * len(stacks_cfg["data"]["planes"])
    for mask in masks:
        twin = from_planes / mask.relative_to(from_stacks)
        np.testing.assert_array_equal(read_image(mask), read_image(twin))
    # Each image rescaled by its pixel size over the model's (0.5 / (12.5 / 12)).
    manifest = pd.read_csv(results / "datasets" / "brightfield" / "manifest.csv")
    height = stacks_cfg["demo"]["height"]
    assert set(manifest["stored_height"]) == {round(height * 0.48)}
    _, meta = load_model(results / "models" / "brightfield-bce" / "model.pt")
    record = meta["dataset"]
    assert record["preprocessing"]["pixel_size"] == pytest.approx(12.5 / 12)
    assert record["cell_diameter_um"] == 12.5 and record["source_pixel_sizes"] == [0.5]
    assert record["source_dtypes"] == ["uint8"]
    # And on to the per-z tables.
    tables = sorted((results / "tables").glob("*.md"))
    assert tables, "no tables"
    text = (results / "tables" / "brightfield.md").read_text()
    for z in stacks_cfg["data"]["planes"]:
        assert f"z{z}" in text
