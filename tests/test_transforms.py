import numpy as np
import pytest

from protoseg.errors import InputError
from protoseg.transforms import (
    Augmentation,
    Preprocessing,
    augment_sample,
    binary_mask,
    centre_plane,
    context_window,
    display_rgb,
    normalise_percentiles,
    prepare_image,
    prepare_stack,
    resize_labels,
    scale_to_unit,
)


def resize_prep(size, colour, normalise="dtype"):
    return Preprocessing("resize", colour, normalise, (1.0, 99.8), tuple(size), None, tuple(size))


def test_scaling_by_dtype():
    assert scale_to_unit(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert scale_to_unit(np.array([0, 65535, 4095], np.uint16))[:2].tolist() == [0.0, 1.0]
    assert scale_to_unit(np.array([4095], np.uint16))[0] == pytest.approx(4095 / 65535)
    assert scale_to_unit(np.array([-0.5, 0.5, 2.0], np.float32)).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(InputError, match="signed"):
        scale_to_unit(np.array([-1, 3], np.int16), "x.tif")


def test_colour_rgb_repeats_grey_and_grey_converts_rgb():
    grey = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    rgb = prepare_image(grey, resize_prep([8, 8], "rgb"))
    assert rgb.shape == (3, 8, 8)
    assert np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[1], rgb[2])
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 1] = 200  # pure green
    one = prepare_image(colour, resize_prep([8, 8], "grey"))
    assert one.shape == (1, 8, 8)
    assert np.allclose(one, 0.587 * 200 / 255, atol=1e-3)


def test_resize_is_linear_and_mask_binarised():
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (4, 1))
    image = prepare_image(ramp, resize_prep([4, 16], "grey"))[0]
    assert np.all(np.diff(image[0]) > 0)  # interpolated ramp, not nearest-neighbour steps
    labels = np.zeros((16, 16), np.uint16)
    labels[4:8, 4:8] = 3
    labels[8:12, 8:12] = 900
    mask = binary_mask(labels, [8, 8])
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask[3, 3] == 1 and mask[5, 5] == 1 and mask[0, 0] == 0


def test_patches_preprocessing_rescales_by_the_factor_and_normalises_per_image():
    prep = Preprocessing("patches", "grey", "percentile", (1.0, 99.0), None, 0.5, (16, 16))
    dim = np.random.default_rng(0).integers(100, 140, (40, 60)).astype(np.uint16)
    bright = dim * 300  # another exposure of the same scene
    a, b = prepare_image(dim, prep), prepare_image(bright, prep)
    assert a.shape == (1, 20, 30)
    # per-image percentiles: both exposures give the same input
    assert np.allclose(a, b, atol=1e-4)
    assert np.percentile(a, 50) == pytest.approx(0.5, abs=0.2)


def test_percentile_normalisation_refuses_nan_and_flat_images_give_zeros():
    with pytest.raises(InputError, match="x.tif.*NaN"):
        normalise_percentiles(np.array([[np.nan, 1.0]]), (1, 99), "x.tif")
    assert not normalise_percentiles(np.full((4, 4), 7.0), (1, 99)).any()


def test_preprocessing_round_trips_through_a_dict():
    prep = Preprocessing("patches", "rgb", "percentile", (2.0, 98.0), None, 0.25, (64, 32))
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert prep.shape_at_training_scale(400, 100) == (100, 25)


def test_augmentation_moves_image_and_labels_together_and_zooms():
    rng = np.random.default_rng(3)
    image = np.zeros((1, 20, 20), np.float32)
    labels = np.zeros((20, 20), np.uint32)
    image[0, 2:6, 3:9] = 1.0
    labels[2:6, 3:9] = 5
    augmentation = Augmentation(flip=True, rotate90=True)
    for _ in range(10):
        out_image, out_labels = augment_sample(image, labels, (20, 20), augmentation, rng)
        assert np.array_equal(out_image[0] > 0.5, out_labels == 5)
    # a 10 x 10 region brought to a 20 x 20 patch is a 2x zoom: the object doubles
    zoomed, zoomed_labels = augment_sample(
        image[:, :10, :10], labels[:10, :10], (20, 20), Augmentation(), rng
    )
    assert (
        zoomed.shape == (1, 20, 20)
        and (zoomed_labels == 5).sum() == 4 * (labels[:10, :10] == 5).sum()
    )


def test_intensity_augmentation_changes_the_image_not_the_labels():
    rng = np.random.default_rng(0)
    image = np.linspace(0, 1, 256, dtype=np.float32).reshape(1, 16, 16)
    labels = (image[0] > 0.5).astype(np.uint32)
    augmentation = Augmentation(brightness=0.2, contrast=0.3, gamma=0.5)
    out, out_labels = augment_sample(image, labels, (16, 16), augmentation, rng)
    assert not np.allclose(out, image)
    assert np.array_equal(out_labels, labels)
    assert np.all(np.diff(out[0].ravel()) >= -1e-6)  # monotone changes keep the order


def test_noise_augmentation_adds_zero_mean_noise_up_to_its_bound():
    image = np.full((1, 64, 64), 0.5, dtype=np.float32)
    labels = np.zeros((64, 64), np.uint32)
    sigmas = []
    for seed in range(20):
        out, out_labels = augment_sample(
            image, labels, (64, 64), Augmentation(noise=0.2), np.random.default_rng(seed)
        )
        assert out.dtype == np.float32 and np.array_equal(out_labels, labels)
        assert abs(float(out.mean()) - 0.5) < 0.02
        sigmas.append(float(out.std()))
    assert max(sigmas) < 0.2 * 1.1 and max(sigmas) - min(sigmas) > 0.05  # drawn in [0, 0.2]
    same, _ = augment_sample(image, labels, (64, 64), Augmentation(), np.random.default_rng(0))
    assert np.array_equal(same, image)


def test_labels_resized_by_nearest_keep_their_ids():
    labels = np.zeros((8, 8), np.uint32)
    labels[:4, :4] = 70000
    small = resize_labels(labels, (4, 4))
    assert set(np.unique(small)) == {0, 70000} and small.dtype == np.uint32


def test_display_rgb_stretches_and_takes_model_input():
    image = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32) * 0.1
    shown = display_rgb(image, channels_first=True)
    assert shown.shape == (8, 8, 3) and shown.dtype == np.uint8 and shown.max() >= 250


# ---------------------------------------------------------------- focal context
@pytest.mark.parametrize(
    ("z", "k", "expected"),
    [
        (18, 0, [18]),
        (18, 1, [16, 18, 20]),
        (18, 2, [14, 16, 18, 20, 22]),
        # Beyond the stack's ends the nearest plane repeats.
        (12, 1, [12, 12, 14]),
        (24, 1, [22, 24, 24]),
        (12, 2, [12, 12, 12, 14, 16]),
        (14, 3, [12, 12, 12, 14, 16, 18, 20]),
    ],
)
def test_context_window_counts_neighbours_in_the_stack_and_repeats_its_ends(z, k, expected):
    planes = [24, 12, 20, 14, 18, 16, 22]  # any order: the stack is ordered by depth
    assert context_window(planes, z, k) == expected


def test_context_window_of_a_two_plane_stack_and_bad_arguments():
    assert context_window([1, 5], 5, 2) == [1, 1, 5, 5, 5]
    with pytest.raises(ValueError, match="z13"):
        context_window([12, 14], 13, 1)
    with pytest.raises(ValueError, match="0 or more"):
        context_window([12, 14], 12, -1)


def test_prepare_stack_puts_each_plane_in_its_channels_in_window_order():
    prep = resize_prep((4, 6), "rgb")
    raws = [np.full((8, 12), value, np.uint8) for value in (51, 102, 204)]
    stacked = prepare_stack(raws, prep, ["a", "b", "c"])
    assert stacked.shape == (9, 4, 6) and stacked.dtype == np.float32
    np.testing.assert_allclose(stacked[:, 0, 0], [0.2] * 3 + [0.4] * 3 + [0.8] * 3, atol=1e-6)
    np.testing.assert_array_equal(centre_plane(stacked, 1), prepare_image(raws[1], prep))
    # One image is exactly the single-plane input.
    np.testing.assert_array_equal(prepare_stack(raws[:1], prep), prepare_image(raws[0], prep))
    with pytest.raises(ValueError, match="9 channels do not split into 5"):
        centre_plane(stacked, 2)


def test_prepare_stack_refuses_planes_of_different_sizes():
    prep = Preprocessing("patches", "grey", "dtype", (1.0, 99.8), None, 1.0, (16, 16))
    raws = [np.zeros((8, 12), np.uint8), np.zeros((8, 10), np.uint8)]
    with pytest.raises(InputError, match="z14.tif.*share one size"):
        prepare_stack(raws, prep, ["z12.tif", "z14.tif"])
