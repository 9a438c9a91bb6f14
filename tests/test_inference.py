"""Inference: input preparation, batched and tiled prediction."""

import numpy as np
import pytest
import torch

from protoseg import inference
from protoseg.errors import InputError

torch.set_num_threads(1)


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
            )
        )
        if index < layers - 1:
            modules.append(torch.nn.ReLU())
    return torch.nn.Sequential(*modules).eval()


def _random_image(channels: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(1).random((channels, height, width), dtype=np.float32)


def test_predict_probabilities_shape_range_and_batch_independence():
    model = _conv_model(3)
    images = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)
    whole = inference.predict_probabilities(model, images, batch_size=5)
    in_twos = inference.predict_probabilities(model, images, batch_size=2)
    assert whole.shape == (5, 16, 16) and whole.dtype == np.float32
    assert 0 <= whole.min() and whole.max() <= 1
    np.testing.assert_allclose(whole, in_twos, atol=1e-6)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(images)))[:, 0].numpy()
    np.testing.assert_allclose(whole, expected, atol=1e-6)


def test_tiled_equals_untiled_when_overlap_covers_receptive_field():
    # Two 3x3 convs reach 2 pixels; overlap 6 keeps 3 pixels of context at every cut.
    model = _conv_model(3, layers=2)
    image = _random_image(3, 45, 61)  # not a multiple of the tile: last tiles shift back
    untiled = inference.predict_probabilities(model, image[None])[0]
    tiled = inference.predict_tiled(model, image, tile=16, overlap=6, batch_size=3)
    assert tiled.shape == (45, 61)
    np.testing.assert_allclose(tiled, untiled, atol=1e-5)


def test_tiled_differs_when_overlap_is_too_small():
    # The same check with no overlap must fail, or the equality above proves nothing.
    model = _conv_model(3, layers=2)
    image = _random_image(3, 45, 61)
    untiled = inference.predict_probabilities(model, image[None])[0]
    tiled = inference.predict_tiled(model, image, tile=16, overlap=0)
    assert np.abs(tiled - untiled).max() > 1e-4


def test_small_image_is_padded_and_cropped_back():
    model = _conv_model(1)  # pointwise: padding cannot change the kept pixels
    image = _random_image(3, 10, 7)
    tiled = inference.predict_tiled(model, image, tile=(16, 32), overlap=4)
    untiled = inference.predict_probabilities(model, image[None])[0]
    assert tiled.shape == (10, 7)
    np.testing.assert_allclose(tiled, untiled, atol=1e-6)


def test_bad_overlap_raises():
    with pytest.raises(ValueError, match="overlap"):
        inference.predict_tiled(_conv_model(1), _random_image(3, 8, 8), tile=8, overlap=8)


def test_prepare_image_scales_8_and_16_bit_to_unit_range():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    prepared = inference.prepare_image(rgb, in_channels=3, colour="rgb")
    assert prepared.shape == (3, 4, 6) and prepared.dtype == np.float32
    np.testing.assert_allclose(prepared[0], 1.0)
    np.testing.assert_allclose(prepared[1:], 0.0)
    grey16 = np.full((4, 6), 65535, dtype=np.uint16)
    prepared = inference.prepare_image(grey16, in_channels=3, colour="rgb")
    np.testing.assert_allclose(prepared, 1.0)  # greyscale repeated into three channels
    prepared = inference.prepare_image(rgb, in_channels=1, colour="grey")
    assert prepared.shape == (1, 4, 6)
    np.testing.assert_allclose(prepared, 0.299, atol=1e-6)


def test_prepare_image_resizes_by_scale():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    assert inference.prepare_image(image, 3, "rgb", scale=0.5).shape == (3, 20, 30)
    assert inference.prepare_image(image, 3, "rgb", scale=(0.25, 0.5)).shape == (3, 10, 30)


def test_channel_mismatch_names_the_image():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    with pytest.raises(InputError, match=r"new\.tif.*model takes 1"):
        inference.prepare_image(rgb, in_channels=1, colour="rgb", source="new.tif")
    five_channels = np.zeros((4, 6, 5), dtype=np.uint8)
    with pytest.raises(InputError, match="shape"):
        inference.prepare_image(five_channels, in_channels=3, colour="rgb", source="new.tif")


def test_predict_image_returns_probabilities_at_the_raw_size():
    model = _conv_model(3)
    image = (np.random.default_rng(2).random((50, 70, 3)) * 255).astype(np.uint8)
    probabilities = inference.predict_image(
        model, image, in_channels=3, colour="rgb", scale=0.5, tile=16, overlap=4
    )
    assert probabilities.shape == (50, 70)
    assert 0 <= probabilities.min() and probabilities.max() <= 1


def test_tiled_prediction_with_the_project_unet():
    from protoseg.model import build_model

    torch.manual_seed(0)
    unet = build_model({"depth": 2, "base_channels": 4}, in_channels=3).eval()
    image = _random_image(3, 50, 70)
    tiled = inference.predict_tiled(unet, image, tile=32, overlap=8)
    assert tiled.shape == (50, 70) and tiled.dtype == np.float32
    assert np.isfinite(tiled).all() and 0 <= tiled.min() and tiled.max() <= 1
    # One tile covering a whole tile-sized image is exactly the untiled prediction.
    crop = image[:, :32, :32]
    np.testing.assert_allclose(
        inference.predict_tiled(unet, crop, tile=32, overlap=8),
        inference.predict_probabilities(unet, crop[None])[0],
        atol=1e-6,
    )
