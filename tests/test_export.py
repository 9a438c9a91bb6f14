"""bioimage.io export: packages of tiny random U-Nets, tested offline with bioimageio.core's
own test and compared with protoseg's prediction; models the format cannot express are
refused, saying why; the command line."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import tifffile
import torch
import yaml
from skimage.draw import disk

from protoseg import export
from protoseg.cli import main
from protoseg.dataset import DatasetRecord
from protoseg.errors import InputError
from protoseg.model import UNet, load_model, save_model
from protoseg.segmenter import Segmenter
from protoseg.transforms import Preprocessing

torch.set_num_threads(1)
PACKAGE_FILES = {
    "rdf.yaml",
    "README.md",
    "cover.png",
    "test_input.npy",
    "test_output.npy",
    "sample_input.tif",
    "sample_output.tif",
    "weights_state_dict.pt",
    "weights_torchscript.pt",
}


def meta_for(
    geometry="patches",
    colour="grey",
    normalise="percentile",
    scale=1.0,
    tile=(64, 64),
    sources=((96, 80),),
    context_planes=None,
    instances=None,
    dtypes=(),
):
    """Model meta as training writes it: the data set record, a threshold, instances."""
    size = tuple(tile) if geometry == "resize" else None
    prep = Preprocessing(
        geometry, colour, normalise, (1.0, 99.8), size, None if size else scale, tuple(tile)
    )
    record = DatasetRecord(
        variant="bf",
        modalities=("brightfield",),
        preprocessing=prep,
        patch_size=None if size else tuple(tile),
        mask_source="state",
        split={"key": "xy", "test": [10], "validation": [3]},
        samples={"train": 4, "validation": 1, "test": 1},
        shard_size=1,
        has_instances=True,
        context_planes=context_planes or 0,
        source_sizes=tuple(sources),
        source_dtypes=tuple(dtypes),
    ).to_dict()
    meta = {
        "name": "bf-bce",
        "loss": "bce",
        "epochs": 3,
        "dataset": record,
        "threshold": {"value": 0.5, "source": "validation"},
    }
    if instances:
        meta["instances"] = instances
    return meta


def random_unet(in_channels=1, out_channels=1) -> UNet:
    """A tiny random U-Net whose output depends on its input: convolution weights x 3
    (at the default initialisation the probabilities all sit within 0.01 of 0.5, so a
    package that ignored its input would pass its test as well)."""
    torch.manual_seed(0)
    network = UNet(in_channels, out_channels, depth=2, base_channels=4).eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.mul_(3.0)
    return network


def saved_model(path, in_channels=1, out_channels=1, **meta_kwargs):
    save_model(path, random_unet(in_channels, out_channels), meta_for(**meta_kwargs))
    return path


def cells_image(shape=(96, 80), dtype=np.uint16, channels=0):
    """Dim background with bright discs, with noise (a grey or RGB image)."""
    rng = np.random.default_rng(1)
    image = rng.normal(900, 60, shape)
    for centre in ((30, 25), (60, 55), (25, 60)):
        image[disk(centre, 11, shape=shape)] += 2500
    image = np.clip(image, 0, 4095).astype(np.float64)
    if dtype == np.uint8:
        image = image / 16
    image = image.astype(dtype)
    return np.stack([image] * channels, axis=-1) if channels else image


def block_network(monkeypatch) -> list:
    """Every attempt to open a connection or resolve a name is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def no_network(monkeypatch):
    return block_network(monkeypatch)


@pytest.fixture(scope="module")
def grey_package(tmp_path_factory):
    """A percentile-normalised grey patches model exported with a uint16 image."""
    folder = tmp_path_factory.mktemp("grey")
    model = saved_model(folder / "model.pt")
    image = folder / "field.tif"
    tifffile.imwrite(image, cells_image())
    with pytest.MonkeyPatch.context() as patch:
        attempts = block_network(patch)
        out = export.export_model(model, folder / "package", image=image, authors=["A. Tester"])
    return model, image, out, attempts


# ---------------------------------------------------------------- a package that passes
@pytest.mark.slow
def test_the_package_holds_every_part_and_asked_nothing_of_the_network(grey_package):
    _, _, out, attempts = grey_package
    assert {path.name for path in out.iterdir()} == PACKAGE_FILES
    assert attempts == []
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    architecture = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert (architecture["import_from"], architecture["callable"]) == ("protoseg.model", "UNet")
    assert architecture["kwargs"]["depth"] == 2
    [raw] = rdf["inputs"]
    assert [axis["type"] for axis in raw["axes"]] == ["batch", "channel", "space", "space"]
    assert raw["axes"][1]["channel_names"] == ["grey"]
    # multiples of 2^depth, at least twice the halo (16, a multiple of 2^depth) and a step
    assert raw["axes"][2]["size"] == {"min": 36, "step": 4}
    scale_range = next(step for step in raw["preprocessing"] if step["id"] == "scale_range")
    assert scale_range["kwargs"]["min_percentile"] == 1.0
    assert scale_range["kwargs"]["max_percentile"] == 99.8
    assert scale_range["kwargs"]["axes"] == ["channel", "y", "x"]
    [probabilities] = rdf["outputs"]
    assert probabilities["axes"][1]["channel_names"] == ["foreground"]
    assert [step["id"] for step in probabilities["postprocessing"]][0] == "sigmoid"
    assert rdf["config"]["protoseg"]["threshold"] == 0.5
    assert any("Munteanu" in entry["text"] for entry in rdf["cite"])
    assert "## Validation" in (out / "README.md").read_text()


@pytest.mark.slow
def test_bioimageio_core_test_passes_offline(grey_package, no_network):
    _, _, out, _ = grey_package
    summary = export.test_package(out, devices=["cpu"])
    assert summary.status == "passed", summary.format()
    tested = {detail.name for detail in summary.details if detail.status == "passed"}
    assert any("pytorch_state_dict" in name for name in tested)
    assert any("torchscript" in name for name in tested)
    assert no_network == []


@pytest.mark.slow
def test_the_package_predicts_what_protoseg_predicts(grey_package):
    """bioimageio.core runs the package (its preprocessing, each weight format, its
    postprocessing) on the test input, as its test does (no halo padding); protoseg predicts
    the same pixels of the original uint16 image."""
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import get_test_input_sample
    from bioimageio.spec import load_description

    model, image, out, _ = grey_package
    description = load_description(export.description_file(out), perform_io_checks=False)
    test_input = np.load(out / "test_input.npy")
    assert test_input.shape == (1, 1, 64, 64)
    network, meta = load_model(model)
    crop = tifffile.imread(image)[16:80, 8:72]  # the centre 64 x 64 of the 96 x 80 image
    np.testing.assert_array_equal(test_input[0, 0], crop.astype(np.float32))
    segmenter = Segmenter.from_meta(network, meta, tile=(64, 64))
    ours = segmenter.outputs(segmenter.prepare(crop), crop.shape)
    assert ours.std() > 0.05  # the output depends on the input, so equality means something
    np.testing.assert_allclose(np.load(out / "test_output.npy")[0], ours, atol=1e-6)
    for weights in ("pytorch_state_dict", "torchscript"):
        with create_prediction_pipeline(
            description, weight_format=weights, devices=["cpu"]
        ) as pipeline:
            sample = pipeline.predict_sample_without_blocking(
                get_test_input_sample(description),
                skip_input_padding=True,
                skip_output_cropping=True,
            )
        package = sample.members["probabilities"].data.to_numpy()
        np.testing.assert_allclose(package[0], ours, atol=1e-5, err_msg=weights)


@pytest.mark.slow
def test_a_package_that_disagrees_with_protoseg_fails_and_writes_nothing(tmp_path, monkeypatch):
    """The export tests its own package: a test output off by 0.1 is refused."""
    model = saved_model(tmp_path / "model.pt")
    real = export.protoseg_prediction
    monkeypatch.setattr(
        export, "protoseg_prediction", lambda *args: np.clip(real(*args) + 0.1, 0, 1)
    )
    with pytest.raises(InputError, match="failed bioimage.io's test"):
        export.export_model(model, tmp_path / "package", input_dtype="uint8")
    assert not (tmp_path / "package").exists()
    assert not list(tmp_path.glob(".package.*"))


@pytest.mark.slow
def test_command_exports_an_rgb_dtype_model_with_its_synthetic_image(tmp_path, capsys):
    model = saved_model(tmp_path / "model.pt", in_channels=3, colour="rgb", normalise="dtype")
    out = tmp_path / "rgb"
    status = main(["export", str(model), "--out", str(out), "--input-dtype", "uint8"])
    assert status == 0, capsys.readouterr().err
    assert "passed bioimage.io's test" in capsys.readouterr().out
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    [raw] = rdf["inputs"]
    assert raw["data"]["type"] == "uint8"
    assert raw["axes"][1]["channel_names"] == ["red", "green", "blue"]
    scale = next(step for step in raw["preprocessing"] if step["id"] == "scale_linear")
    assert scale["kwargs"]["gain"] == pytest.approx(1 / 255)
    test_input = np.load(out / "test_input.npy")
    assert test_input.dtype == np.uint8 and test_input.shape == (1, 3, 64, 64)


@pytest.mark.slow
def test_instance_outputs_are_named_and_a_fixed_size_model_keeps_its_size(tmp_path):
    instances = {"mode": "boundaries", "settings": {"seed_threshold": 0.6, "min_size": 10}}
    model = saved_model(
        tmp_path / "model.pt",
        out_channels=2,
        geometry="resize",
        tile=(48, 64),
        sources=((48, 64),),  # the training images had the training size: nothing resized
        instances=instances,
    )
    image = tmp_path / "field.png"
    import cv2

    cv2.imwrite(str(image), cells_image((48, 64), np.uint8))
    out = export.export_model(model, tmp_path / "package", image=image)
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    assert [axis.get("size") for axis in rdf["inputs"][0]["axes"][2:]] == [48, 64]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["foreground", "boundaries"]
    stored = rdf["config"]["protoseg"]["instances"]
    assert (stored["mode"], stored["settings"]) == ("boundaries", instances["settings"])
    assert np.load(out / "test_output.npy").shape == (1, 2, 48, 64)
    assert "watershed_from_components" in (out / "README.md").read_text()


# ---------------------------------------------------------------- refused, saying why
@pytest.mark.parametrize(
    "meta_kwargs, message",
    [
        ({"context_planes": 1}, r"focal window of 3 planes.*context_planes 1"),
        ({"scale": 0.5}, r"rescaled by 0\.5.*cannot resize"),
        ({"context_planes": 2, "scale": 2.0}, r"context_planes 2.*; it sees every image rescaled"),
    ],
)
def test_models_the_package_cannot_express_are_refused(tmp_path, meta_kwargs, message):
    # A focal-context network takes one grey channel per plane of its window.
    channels = 2 * meta_kwargs.get("context_planes", 0) + 1
    model = saved_model(tmp_path / "model.pt", in_channels=channels, **meta_kwargs)
    with pytest.raises(InputError, match=message) as caught:
        export.export_model(model, tmp_path / "package", test=False)
    assert str(caught.value).startswith(f"{model}: cannot be exported as a bioimage.io model")
    assert not (tmp_path / "package").exists()


# ---------------------------------------------------------------- the study's resize models
@pytest.mark.slow
def test_a_resize_model_exports_with_the_resize_inside_the_network(tmp_path, no_network):
    """The study's geometry: 96 x 80 fields resized to 32 x 32 for the U-Net. The package
    takes the field's size, resizes inside the network, and its cells agree with
    protoseg's own on three images, through both weight formats."""
    model = saved_model(
        tmp_path / "model.pt",
        geometry="resize",
        tile=(32, 32),
        sources=((96, 80),),
        normalise="dtype",
        dtypes=("uint16",),
    )
    out = export.export_model(model, tmp_path / "package")  # no flags: dtype from model.pt
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    [raw], [probabilities] = rdf["inputs"], rdf["outputs"]
    assert raw["data"]["type"] == "uint16"
    assert [axis["size"] for axis in raw["axes"][2:]] == [96, 80]
    weights = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert weights["callable"] == "ResizingUNet" and weights["kwargs"]["size"] == [32, 32]
    # The network gives (and resizes) probabilities itself: no sigmoid after it.
    assert "sigmoid" not in [step["id"] for step in probabilities.get("postprocessing", [])]
    assert np.load(out / "test_output.npy").shape == (1, 1, 96, 80)
    assert "never tiles" in (out / "README.md").read_text()
    images = []
    for index, dtype_scale in enumerate((1, 2, 3)):
        path = tmp_path / f"field{index}.tif"
        tifffile.imwrite(path, (cells_image() // dtype_scale).astype(np.uint16))
        images.append(path)
    for weight_format in ("pytorch_state_dict", "torchscript"):
        rows = export.compare_with_protoseg(out, model, images, weight_format)
        assert len(rows) == 3
        for row in rows:
            assert (row["height"], row["width"]) == (96, 80)
            assert 0.02 < row["cell_fraction"] < 0.98  # a mask worth comparing
            assert row["pixels_differing"] < 0.01, (weight_format, row)
    assert no_network == []


@pytest.mark.slow
def test_a_resize_model_of_several_image_sizes_takes_any_size(tmp_path):
    model = saved_model(
        tmp_path / "model.pt",
        geometry="resize",
        tile=(32, 32),
        sources=((96, 80), (64, 72)),
        normalise="percentile",
    )
    out = export.export_model(model, tmp_path / "package")
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    sizes = [axis["size"] for axis in rdf["inputs"][0]["axes"][2:]]
    assert sizes == [{"min": 16, "step": 1}] * 2
    images = []
    for shape in ((96, 80), (64, 72), (50, 90)):
        path = tmp_path / f"field{shape[0]}x{shape[1]}.tif"
        tifffile.imwrite(path, cells_image(shape))
        images.append(path)
    rows = export.compare_with_protoseg(out, model, images)
    assert [(row["height"], row["width"]) for row in rows] == [(96, 80), (64, 72), (50, 90)]
    assert all(row["pixels_differing"] < 0.01 for row in rows), rows


def test_a_dtype_model_takes_the_dtype_its_training_images_had(tmp_path):
    network = random_unet()
    plan = export.plan_export("m.pt", network, meta_for(normalise="dtype", dtypes=("uint8",)))
    assert plan.input_dtype == "uint8"
    overridden = export.plan_export(
        "m.pt", network, meta_for(normalise="dtype", dtypes=("uint8",)), "uint16"
    )
    assert overridden.input_dtype == "uint16"  # --input-dtype and --image still decide
    with pytest.raises(InputError, match=r"m\.pt.*not one \(uint16, uint8\).*--input-dtype"):
        export.plan_export("m.pt", network, meta_for(normalise="dtype", dtypes=("uint16", "uint8")))


def test_a_dtype_model_needs_the_dtype_of_its_images(tmp_path, capsys):
    model = saved_model(tmp_path / "model.pt", normalise="dtype")
    status = main(["export", str(model), "--out", str(tmp_path / "package")])
    assert status == 2
    error = capsys.readouterr().err
    assert "protoseg export: error:" in error and "--input-dtype" in error
    assert not (tmp_path / "package").exists()


def test_an_image_of_the_wrong_dtype_or_too_small_is_named(tmp_path):
    network = random_unet()
    plan = export.plan_export("m.pt", network, meta_for(normalise="dtype"), "uint8")
    with pytest.raises(InputError, match=r"field\.tif: is uint16, but the package takes uint8"):
        export.test_image(plan, cells_image(), "field.tif")
    with pytest.raises(
        InputError, match=r"tiny\.tif: is 6x40; the test input needs at least 36x36"
    ):
        export.test_image(plan, cells_image((6, 40), np.uint8), "tiny.tif")


def test_the_test_image_is_cropped_to_a_size_the_input_takes(tmp_path):
    plan = export.plan_export("m.pt", random_unet(), meta_for(tile=(64, 64)))
    image = cells_image((50, 300))
    crop = export.test_image(plan, image)
    assert crop.shape == (48, 64, 1)  # multiples of 2^depth = 4, at most the 64 x 64 tile
    np.testing.assert_array_equal(crop[..., 0], image[1:49, 118:182])


def test_command_line_errors_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "p")]) == 2
    assert "model file not found" in capsys.readouterr().err
