"""Figures: metric versus z, prediction overlays."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from skimage.draw import disk

from protoseg import figures, study, tables
from protoseg.io import read_image, save_figure

from .test_tables import fake_per_image


def test_metrics_vs_z_has_a_panel_per_variant_and_metric(tmp_path):
    planes = list(study.PLANES)
    per_image = {
        (variant, loss): fake_per_image(planes, seed=index)
        for index, (variant, loss) in enumerate(
            [("all", "bce"), ("all", "mse"), ("brightfield", "bce"), ("brightfield", "mse")]
        )
    }
    summary = tables.summary(per_image, planes)
    modalities = {"all": ["brightfield", "fluorescent"], "brightfield": ["brightfield"]}
    figure = figures.metrics_vs_z(
        summary, planes, ["all", "brightfield"], ["bce", "mse"], modalities
    )
    axes = figure.get_axes()
    assert len(axes) == 2 * len(figures.PANEL_METRICS)
    # Our two losses, plus the study's two in the pixel-metric panels.
    assert len(axes[0].get_lines()) == 4 and len(axes[3].get_lines()) == 2
    ours = axes[1].get_lines()[0].get_ydata()  # variant all, F1, BCE
    expected = summary.query(
        "variant == 'all' and loss == 'bce' and reduction == 'micro' and z != 'overall'"
    )["f1"]
    np.testing.assert_allclose(ours, expected.to_numpy())
    path = tmp_path / "metrics_vs_z.png"
    save_figure(path, figure)
    plt.close(figure)
    image = read_image(path)
    assert image.shape[0] > 400 and image.shape[1] > 1000


def test_context_vs_z_puts_context_models_beside_the_single_plane_one(tmp_path):
    planes = [12, 14, 16]
    variants = ["bf", "bf_z1", "bf_z2", "all", "all_z1", "fl"]
    modalities = {
        "bf": ["brightfield"],
        "bf_z1": ["brightfield"],
        "bf_z2": ["brightfield"],
        "all": ["brightfield", "fluorescent"],
        "all_z1": ["fluorescent", "brightfield"],
        "fl": ["fluorescent"],
    }
    context = {"bf": 0, "bf_z1": 1, "bf_z2": 2, "all": 0, "all_z1": 1, "fl": 0}
    # Listed out of order: the groups put the single-plane model first.
    assert figures.context_groups(variants[::-1], modalities, context) == [
        ["all", "all_z1"],
        ["bf", "bf_z1", "bf_z2"],
    ]
    per_image = {
        (variant, loss): fake_per_image(planes, seed=index)
        for index, (variant, loss) in enumerate(
            (variant, loss) for variant in variants for loss in ("bce", "mse")
        )
    }
    summary = tables.summary(per_image, planes)
    figure = figures.context_vs_z(summary, planes, variants, ["bce", "mse"], modalities, context)
    axes = figure.get_axes()
    assert len(axes) == 4  # (bright-field, all) x (BCE, MSE); fluorescent alone has no context
    lines = axes[1].get_lines()  # bright-field, MSE
    assert [line.get_label() for line in lines] == [
        "bf: single plane",
        "bf_z1: ±1 plane",
        "bf_z2: ±2 planes",
    ]
    expected = summary.query(
        "variant == 'bf_z2' and loss == 'mse' and reduction == 'micro' and z != 'overall'"
    )["f1"]
    np.testing.assert_allclose(lines[2].get_ydata(), expected.to_numpy())
    save_figure(tmp_path / "context.png", figure)
    plt.close(figure)
    assert read_image(tmp_path / "context.png").shape[1] > 600
    with pytest.raises(ValueError, match="no variant has a focal context"):
        figures.context_vs_z(summary, planes, ["bf"], ["bce"], modalities, {"bf": 0})


def _overlay(planes, modalities, size=48):
    images, masks, probabilities, zs, names = [], [], [], [], []
    for modality in modalities:
        for z in planes:
            mask = np.zeros((size, size), bool)
            mask[disk((20, 20), 9)] = True
            probability = np.zeros((size, size), np.float16)
            probability[disk((22, 21), 9, shape=mask.shape)] = 0.9
            images.append(np.full((size, size, 3), 200, np.uint8))
            masks.append(mask)
            probabilities.append(probability)
            zs.append(z)
            names.append(modality)
    return {
        "images": np.stack(images),
        "masks": np.stack(masks),
        "probabilities": np.stack(probabilities),
        "z": np.array(zs),
        "modality": np.array(names),
    }


def test_prediction_overlays_grid(tmp_path):
    planes = [12, 18, 24]
    figure = figures.prediction_overlays(
        _overlay(planes, ["brightfield", "fluorescent"]), 0.5, "all-bce, day1t1xy10"
    )
    axes = figure.get_axes()
    assert len(axes) == 2 * 3
    assert axes[0].get_title().startswith("z12  F1 0.")
    path = tmp_path / "predictions.png"
    save_figure(path, figure)
    plt.close(figure)
    image = read_image(path)
    assert image.shape[1] > image.shape[0] > 200
    # Both outline colours are drawn.
    for colour in (figures.MASK_COLOUR, figures.PREDICTION_COLOUR):
        rgb = np.round(np.array(to_rgb(colour)) * 255).astype(np.uint8)
        assert np.any(np.all(image[..., :3] == rgb, axis=-1)), colour


def test_prediction_overlays_without_images_still_draws():
    empty = {
        "images": np.zeros((0, 0, 0, 3), np.uint8),
        "masks": np.zeros((0, 0, 0), bool),
        "probabilities": np.zeros((0, 0, 0), np.float16),
        "z": np.zeros(0, int),
        "modality": np.zeros(0, str),
    }
    figure = figures.prediction_overlays(empty, 0.5, "nothing")
    assert "no test images" in figure.get_axes()[0].texts[0].get_text()
    plt.close(figure)


def test_object_outcomes_tell_matched_false_and_missed_cells_apart():
    mask = np.zeros((40, 40), bool)
    mask[disk((10, 10), 5)] = mask[disk((30, 30), 5)] = True  # two true cells
    cells = np.zeros((40, 40), np.uint16)
    cells[disk((10, 11), 5)] = 1  # matches the first
    cells[disk((30, 8), 4)] = 2  # matches nothing; the second true cell is missed
    found = figures.object_outcomes(cells, mask)
    assert (found["n_pred"], found["n_true"], found["n_false"], found["n_missed"]) == (2, 2, 1, 1)
    assert np.array_equal(found["matched"], cells == 1)
    assert np.array_equal(found["false"], cells == 2)
    assert found["missed"][30, 30] and not found["missed"][10, 10]


def test_a_large_image_gets_a_crop_at_native_scale_with_false_and_missed_cells(tmp_path):
    """A 1024 px image of 12 px cells: the whole image, and below it a 256 px window around
    the cells drawn at one figure pixel per image pixel or more; false cells amber, missed
    true cells red."""
    size, mask = 1024, np.zeros((1024, 1024), bool)
    probability = np.zeros((size, size), np.float16)
    for centre in [(700, 600), (720, 640), (760, 610)]:
        mask[disk(centre, 6)] = True
    probability[disk((700, 600), 6)] = 0.9  # matched
    probability[disk((680, 680), 6)] = 0.9  # false
    overlay = {
        "images": np.full((1, size, size, 3), 90, np.uint8),
        "masks": mask[None],
        "probabilities": probability[None],
        "instances": figures.metrics.instances_from_binary(probability > 0.5)[None].astype(
            np.uint16
        ),
        "z": np.array([1]),
        "modality": np.array(["brightfield"]),
    }
    figure = figures.prediction_overlays(overlay, 0.5, "a 1024 px test image")
    whole, crop = figure.get_axes()[:2]
    assert "2 cells / 3 true" in whole.get_title() and "1 false, 2 missed" in whole.get_title()
    assert crop.get_title().startswith("crop y ") and "(1:1)" in crop.get_title()
    extent = crop.get_window_extent()
    assert min(extent.width, extent.height) >= 256 * figure.dpi / figures.FIGURE_DPI
    path = tmp_path / "predictions.png"
    save_figure(path, figure)
    plt.close(figure)
    image = read_image(path)[..., :3].astype(int)
    amber = np.array(to_rgb(figures.FALSE_COLOUR)) * 255
    # The false cell's amber shade over the grey image: seen (it is tiny in the whole image).
    shaded = 0.45 * 90 + 0.55 * amber
    assert (np.abs(image - shaded).max(axis=-1) < 3).sum() > 50
