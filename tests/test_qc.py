"""QC overlays: grid layout and size, outlines drawn where the masks are, bad input."""

import numpy as np
import pytest

from protoseg import qc
from protoseg.io import read_image, write_png
from protoseg.qc import PLANE_COLOUR, STATE_COLOUR, grid_size, overlay_grid


def stack(n, shape=(60, 80), colour=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 40, size=(n, *shape, 3) if colour else (n, *shape)).astype(np.uint8)
    return list(images)


def masks(n, shape=(60, 80)):
    result = []
    for k in range(n):
        mask = np.zeros(shape, np.uint16)
        mask[10:30, 10 + 5 * k : 30 + 5 * k] = 1
        result.append(mask)
    return result


def test_grid_has_the_expected_size_and_is_written(tmp_path):
    planes = [12, 14, 16]
    grid = overlay_grid(
        {"fluorescent": stack(3), "brightfield": stack(3, colour=False)},
        masks(3),
        masks(1)[0],
        planes,
        panel_width=40,
    )
    assert grid.dtype == np.uint8 and grid.shape == (*grid_size((60, 80), 3, 2, 40), 3)
    path = tmp_path / "qc.png"
    write_png(path, grid)
    assert read_image(path).shape == grid.shape


def test_panels_scale_down_large_images_only():
    small = overlay_grid({"fluorescent": stack(2)}, masks(2), None, [1, 2], panel_width=400)
    assert small.shape[:2] == grid_size((60, 80), 2, 1, 400)
    assert grid_size((60, 80), 2, 1, 400) == grid_size((60, 80), 2, 1, 80)  # never enlarged


def test_both_outlines_are_drawn():
    grid = overlay_grid({"fluorescent": stack(2)}, masks(2), masks(1)[0], [1, 2], panel_width=80)
    pixels = grid.reshape(-1, 3)
    assert (pixels == PLANE_COLOUR).all(axis=1).sum() > 50
    assert (pixels == STATE_COLOUR).all(axis=1).sum() > 50
    without_state = overlay_grid({"fluorescent": stack(2)}, masks(2), None, [1, 2], panel_width=80)
    assert not (without_state.reshape(-1, 3) == STATE_COLOUR).all(axis=1).any()


def test_16_bit_grey_images_are_shown():
    images = [
        np.full((60, 80), 1000, np.uint16),
        np.arange(60 * 80, dtype=np.uint16).reshape(60, 80),
    ]
    grid = overlay_grid({"fluorescent": images}, masks(2), None, [1, 2], panel_width=360)
    assert grid.dtype == np.uint8


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="2 images for 3 planes"):
        overlay_grid({"fluorescent": stack(2)}, masks(3), None, [1, 2, 3], panel_width=360)
    with pytest.raises(ValueError, match="differs from mask shape"):
        overlay_grid(
            {"fluorescent": stack(2, shape=(50, 80))}, masks(2), None, [1, 2], panel_width=360
        )


def test_densest_window_finds_the_cells_and_fits_small_images():
    weight = np.zeros((600, 500))
    weight[400:450, 300:350] = 1
    rows, columns = qc.densest_window(weight, 256)
    assert rows.stop - rows.start == 256 and columns.stop - columns.start == 256
    assert rows.start <= 400 and rows.stop >= 450 and columns.start <= 300 and columns.stop >= 350
    assert qc.densest_window(np.ones((40, 30)), 256) == (slice(0, 40), slice(0, 30))


def test_a_large_overlay_gets_its_densest_crop_enlarged_beside_it():
    rng = np.random.default_rng(0)
    overlay = rng.integers(0, 200, (1100, 1024, 3), dtype=np.uint8)
    labels = np.zeros((1100, 1024), np.uint16)
    labels[800:820, 100:120] = 1
    labels[850:870, 150:170] = 2
    shown = qc.with_zoomed_crop(overlay, labels)
    # 1024 // 512 = 2: the 256 px crop at twice its size, 8 white pixels to the right.
    assert shown.shape == (1100, 1024 + 8 + 512, 3)
    rows, columns = qc.densest_window(qc.object_centres(labels), 256)
    assert rows.start <= 800 and rows.stop >= 870 and columns.start <= 100 and columns.stop >= 170
    crop = overlay[rows, columns]
    assert np.array_equal(shown[:512:2, 1032::2], crop)  # pixels repeated, not interpolated
    assert (shown[:, 1024:1032] == 255).all() and (shown[512:, 1032:] == 255).all()
    # The window is framed in white on the image; the rest of the image is untouched.
    assert (shown[rows.start, columns.start : columns.stop] == 255).all()
    untouched = np.ones((1100, 1024), bool)
    untouched[rows, columns] = False
    assert np.array_equal(shown[:, :1024][untouched], overlay[untouched])
    # A small image stays as it is.
    small = overlay[:300, :400]
    assert qc.with_zoomed_crop(small, labels[:300, :400]) is small


def test_object_centres_count_each_cell_once_whatever_its_size():
    labels = np.zeros((100, 100), np.uint16)
    labels[10:60, 10:60] = 7  # one large cell
    labels[80:83, 80:83] = 2
    labels[90:93, 80:83] = 3
    points = qc.object_centres(labels)
    assert points.sum() == 3 and points[34, 34] == 1 and points[81, 81] == 1
    # A window of 30 px holds the two small cells, not a part of the large one.
    rows, columns = qc.densest_window(points, 30)
    assert rows.start <= 81 and rows.stop > 91 and columns.start <= 81 < columns.stop
