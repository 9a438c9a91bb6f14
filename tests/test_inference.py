"""Inference: batched prediction and the Gaussian-blended sliding window."""

import numpy as np
import pytest
import torch

from protoseg import inference
from protoseg.dataset import DatasetRecord
from protoseg.device import cpu_has_native_bf16
from protoseg.segmenter import Segmenter
from protoseg.transforms import Preprocessing, prepare_image

torch.set_num_threads(1)


def record_of(prep: Preprocessing) -> DatasetRecord:
    """The data set record of a model trained with ``prep`` on bright-field images."""
    return DatasetRecord.from_dict(
        {
            "variant": "brightfield",
            "modalities": ["brightfield"],
            "preprocessing": prep.to_dict(),
            "patch_size": list(prep.tile) if prep.geometry == "patches" else None,
            "mask_source": "state",
            "split": {},
            "samples": {},
            "shard_size": 1,
            "has_instances": False,
        }
    )


def _conv_model(kernel: int, layers: int = 1, channels: int = 3) -> torch.nn.Module:
    """A small conv net whose receptive field reaches (kernel // 2) * layers pixels."""
    torch.manual_seed(0)
    modules = []
    for index in range(layers):
        modules.append(
            torch.nn.Conv2d(
                channels if index == 0 else 4,
                4 if index < layers - 1 else 1,
                kernel,
                padding=kernel // 2,
                padding_mode="reflect",
            )
        )
        if index < layers - 1:
            modules.append(torch.nn.ReLU())
    return torch.nn.Sequential(*modules).eval()


def _random_image(channels: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(1).random((channels, height, width), dtype=np.float32)


def test_predict_probabilities_shape_range_and_batch_independence():
    model = _conv_model(3)
    images = np.stack([_random_image(3, 12, 10) + i for i in range(5)])
    whole = inference.predict_probabilities(model, images, batch_size=5)
    in_twos = inference.predict_probabilities(model, images, batch_size=2)
    assert whole.shape == (5, 12, 10) and whole.dtype == np.float32
    assert 0 <= whole.min() and whole.max() <= 1
    np.testing.assert_allclose(whole, in_twos, atol=1e-6)


def test_sliding_window_equals_a_whole_image_prediction():
    # A 1x1 convolution sees no neighbours: any blend of tiles gives the untiled output.
    model = _conv_model(1)
    image = _random_image(3, 50, 70)
    untiled = inference.predict_probabilities(model, image[None])[0]
    for overlap in (0.0, 0.25, 0.5):
        tiled = inference.sliding_window(model, image, tile=16, overlap=overlap, batch_size=3)
        np.testing.assert_allclose(tiled, untiled, atol=1e-5)


def test_sliding_window_of_a_context_model_is_close_inside_and_has_no_seams():
    # 3 layers of 3x3: a receptive field of 3 pixels each side. Tiles lack context only at
    # their borders, where the Gaussian weights are small, so the blend stays close to the
    # untiled output everywhere, with no step at tile borders.
    model = _conv_model(3, layers=3)
    image = np.random.default_rng(4).random((3, 64, 64), dtype=np.float32)
    untiled = inference.predict_probabilities(model, image[None])[0]
    tiled = inference.sliding_window(model, image, tile=24, overlap=0.5)
    assert np.abs(tiled - untiled).max() < 2e-2
    # Seams: the difference to the untiled output has no jump along any column or row.
    difference = tiled - untiled
    assert np.abs(np.diff(difference, axis=0)).max() < 1e-2
    assert np.abs(np.diff(difference, axis=1)).max() < 1e-2


def test_uniform_blending_averages_tiles_and_trusts_their_borders_more_than_gaussian():
    # The ablation's alternative: a plain mean of the tiles. Exact where tiles agree (a 1x1
    # convolution); with context, borders lacking it count fully, so it strays further.
    pointwise, image = _conv_model(1), _random_image(3, 50, 70)
    untiled = inference.predict_probabilities(pointwise, image[None])[0]
    tiled = inference.sliding_window(pointwise, image, tile=16, overlap=0.5, blending="uniform")
    np.testing.assert_allclose(tiled, untiled, atol=1e-5)
    model = _conv_model(3, layers=3)
    image = np.random.default_rng(4).random((3, 64, 64), dtype=np.float32)
    untiled = inference.predict_probabilities(model, image[None])[0]
    errors = {
        blending: np.abs(
            inference.sliding_window(model, image, tile=24, overlap=0.5, blending=blending)
            - untiled
        ).mean()
        for blending in inference.BLENDINGS
    }
    assert errors["gaussian"] < errors["uniform"]
    with pytest.raises(ValueError, match="blending must be one of gaussian, uniform"):
        inference.sliding_window(model, image, tile=24, blending="median")


def test_tile_starts_cover_the_image_and_end_at_its_edge():
    assert inference.tile_starts(10, 16, 0.5) == [0]
    starts = inference.tile_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert max(b - a for a, b in zip(starts, starts[1:], strict=False)) <= 16


def test_gaussian_weights_peak_in_the_middle_and_are_never_zero():
    weights = inference.gaussian_weights((32, 32))
    assert weights.max() == pytest.approx(1.0) and weights.min() > 0
    assert weights[16, 16] > weights[4, 4] > weights[0, 0]


def test_images_smaller_than_a_tile_are_padded_and_cropped_back():
    model = _conv_model(1)
    image = _random_image(3, 10, 7)
    tiled = inference.sliding_window(model, image, tile=16)
    np.testing.assert_allclose(
        tiled, inference.predict_probabilities(model, image[None])[0], atol=1e-6
    )


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        inference.sliding_window(_conv_model(1), _random_image(3, 8, 8), tile=8, overlap=1.0)


def test_predict_image_returns_probabilities_at_the_raw_size():
    model = _conv_model(3)
    image = (np.random.default_rng(2).random((50, 70, 3)) * 255).astype(np.uint8)
    prep = Preprocessing("patches", "rgb", "dtype", (1.0, 99.8), None, 0.5, (16, 16))
    probabilities = Segmenter(model, record_of(prep), overlap=0.25).probabilities(image)
    assert probabilities.shape == (50, 70)
    assert 0 <= probabilities.min() and probabilities.max() <= 1


def test_resize_geometry_is_one_tile_the_size_of_the_training_images():
    model = _conv_model(1)
    image = (np.random.default_rng(2).random((40, 60, 3)) * 255).astype(np.uint8)
    prep = Preprocessing("resize", "rgb", "dtype", (1.0, 99.8), (16, 16), None, (16, 16))
    whole = inference.predict_probabilities(model, prepare_image(image, prep)[None])[0]
    probabilities = Segmenter(model, record_of(prep)).probabilities(image)
    np.testing.assert_allclose(probabilities, inference.to_original_size(whole, 40, 60), atol=1e-6)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_inference_is_close_to_fp32():
    from protoseg.model import build_model

    torch.manual_seed(0)
    unet = build_model({"depth": 2, "base_channels": 8}, in_channels=3).eval()
    image = _random_image(3, 48, 48)
    fp32 = inference.sliding_window(unet, image, tile=32, precision="fp32")
    bf16 = inference.sliding_window(unet, image, tile=32, precision="bf16")
    assert bf16.dtype == np.float32
    assert np.abs(fp32 - bf16).max() < 0.05
    assert ((fp32 > 0.5) == (bf16 > 0.5)).mean() > 0.97


def test_the_segmenter_runs_batch_norm_folded_into_the_convolutions():
    from tests.test_model import trained_looking_unet

    unet = trained_looking_unet(in_channels=3, depth=2, base_channels=8).train()
    image = (np.random.default_rng(4).random((40, 56, 3)) * 255).astype(np.uint8)
    prep = Preprocessing("resize", "rgb", "dtype", (1.0, 99.8), (32, 48), None, (32, 48))
    segmenter = Segmenter(unet, record_of(prep), fold_batch_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in segmenter.network.modules())
    assert unet.training  # a network still in training is left in training mode
    unfolded = inference.predict_probabilities(unet, prepare_image(image, prep)[None])[0]
    np.testing.assert_allclose(
        segmenter.probabilities(image), inference.to_original_size(unfolded, 40, 56), atol=1e-5
    )
    # Off (the default, and the study protocol's configs): the network as given, and back
    # on again.
    as_trained = segmenter.with_settings(fold_batch_norm=False)
    assert as_trained.network is unet and not as_trained.fold_batch_norm
    assert Segmenter(unet, record_of(prep)).network is unet
    refolded = as_trained.with_settings(fold_batch_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in refolded.network.modules())


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16")
def test_folded_batch_norm_in_bf16_is_as_close_to_fp32_as_unfolded():
    from protoseg.model import fold_batch_norm
    from tests.test_model import trained_looking_unet

    unet = trained_looking_unet(in_channels=3, depth=2, base_channels=8).eval()
    image = _random_image(3, 64, 64)
    fp32 = inference.sliding_window(unet, image, tile=32, precision="fp32")
    unfolded = inference.sliding_window(unet, image, tile=32, precision="bf16")
    folded = inference.sliding_window(fold_batch_norm(unet), image, tile=32, precision="bf16")
    assert np.abs(folded - fp32).max() <= 2 * np.abs(unfolded - fp32).max() + 1e-4
