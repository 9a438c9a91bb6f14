"""Pixel and instance metrics on tiny hand-computed cases."""

import numpy as np
import pytest

from protoseg import metrics


def test_confusion_counts_one_image():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    target = np.array([[1, 0, 0], [1, 0, 0]])
    tp, fp, fn, tn = metrics.confusion(pred, target)
    assert (tp, fp, fn, tn) == (1, 1, 1, 3)


def test_scores_match_hand_computation():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    target = np.array([[1, 0, 0], [1, 0, 0]])
    counts = metrics.confusion(pred, target)
    assert metrics.pixel_accuracy(*counts) == pytest.approx(4 / 6)
    assert metrics.f1(*counts) == pytest.approx(2 / 4)
    assert metrics.iou(*counts) == pytest.approx(1 / 3)


def test_micro_pools_pixels_and_imagewise_averages_images():
    # Image 1: a big object found perfectly; image 2: a one-pixel object missed.
    target = np.zeros((2, 4, 4), dtype=bool)
    target[0, :3, :3] = True
    target[1, 0, 0] = True
    pred = np.zeros_like(target)
    pred[0, :3, :3] = True
    counts = metrics.confusion(pred, target)
    assert counts[0].shape == (2,)
    assert metrics.iou(*counts, reduction="micro") == pytest.approx(9 / 10)
    assert metrics.iou(*counts, reduction="imagewise") == pytest.approx((1 + 0) / 2)
    assert metrics.f1(*counts, reduction="micro") == pytest.approx(18 / 19)
    assert metrics.f1(*counts, reduction="imagewise") == pytest.approx(0.5)
    np.testing.assert_allclose(metrics.f1(*counts, reduction="none"), [1.0, 0.0])
    # Accuracy: every image has 16 pixels, so both reductions agree here.
    assert metrics.pixel_accuracy(*counts, reduction="micro") == pytest.approx(31 / 32)
    assert metrics.pixel_accuracy(*counts, reduction="imagewise") == pytest.approx(
        (1 + 15 / 16) / 2
    )


def test_empty_target_and_empty_prediction_score_one():
    empty = np.zeros((3, 3), dtype=bool)
    counts = metrics.confusion(empty, empty)
    assert metrics.f1(*counts) == 1.0
    assert metrics.iou(*counts) == 1.0
    assert metrics.pixel_accuracy(*counts) == 1.0


def test_empty_target_with_false_positives_scores_zero():
    target = np.zeros((3, 3), dtype=bool)
    pred = target.copy()
    pred[1, 1] = True
    counts = metrics.confusion(pred, target)
    assert metrics.f1(*counts) == 0.0
    assert metrics.iou(*counts) == 0.0


def test_unknown_reduction_and_shape_mismatch_raise():
    counts = metrics.confusion(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="reduction"):
        metrics.f1(*counts, reduction="macro")
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion(np.ones((2, 2)), np.ones((2, 3)))


def _two_cells():
    labels = np.zeros((12, 20), dtype=np.uint16)
    labels[2:8, 2:8] = 1
    labels[2:8, 11:17] = 2
    return labels


def test_perfect_instances_score_one():
    truth = _two_cells()
    prediction = metrics.instances_from_binary(truth > 0)
    scores = metrics.instance_scores(prediction, truth)
    assert scores["n_true"] == scores["n_pred"] == scores["tp50"] == 2
    for name in metrics.INSTANCE_SCORES:
        assert scores[name] == pytest.approx(1.0)


def test_merged_cells_count_as_one_false_positive_and_two_misses():
    truth = _two_cells()
    merged = (truth > 0).copy()
    merged[4:6, 8:11] = True  # a bridge joins the two cells into one component
    prediction = metrics.instances_from_binary(merged)
    assert prediction.max() == 1
    scores = metrics.instance_scores(prediction, truth)
    # The merged object overlaps each cell with IoU < 0.5: TP 0, FP 1, FN 2.
    assert scores["tp50"] == 0
    assert scores["sa50"] == 0.0
    assert scores["matched_f1"] == 0.0


def test_split_cell_counts_one_match_and_one_false_positive():
    truth = np.zeros((12, 20), dtype=np.uint16)
    truth[2:10, 2:18] = 1
    prediction = np.zeros_like(truth)
    prediction[2:10, 2:13] = 1  # IoU 88/128 > 0.5: matched
    prediction[2:10, 14:18] = 2  # leftover piece: a false positive
    scores = metrics.instance_scores(prediction, truth)
    assert scores["tp50"] == 1
    assert scores["sa50"] == pytest.approx(1 / 2)  # TP / (TP + FP + FN) = 1 / (1 + 1 + 0)
    assert scores["matched_f1"] == pytest.approx(2 / 3)
    assert scores["precision50"] == pytest.approx(1 / 2)
    assert scores["recall50"] == pytest.approx(1.0)
    # IoU 88/128 = 0.6875: matched at thresholds 0.50..0.65 (4 of 10), SA 1/2 there.
    assert scores["msa"] == pytest.approx(4 * 0.5 / 10)


def test_instance_edge_cases():
    empty = np.zeros((5, 5), dtype=np.uint16)
    one = empty.copy()
    one[1:3, 1:3] = 1
    assert metrics.instance_scores(empty, empty)["sa50"] == 1.0
    assert metrics.instance_scores(one, empty)["sa50"] == 0.0
    assert metrics.instance_scores(empty, one)["matched_f1"] == 0.0


def test_diagonal_neighbours_stay_apart():
    binary = np.array([[1, 0], [0, 1]], dtype=bool)
    assert metrics.instances_from_binary(binary).max() == 2


def test_pooled_instance_scores():
    pooled = metrics.pooled_instance_scores(n_true=[2, 3], n_pred=[2, 1], tp50=[2, 1])
    # TP 3, FP 0, FN 2
    assert pooled["sa50"] == pytest.approx(3 / 5)
    assert pooled["matched_f1"] == pytest.approx(6 / 8)
    assert metrics.pooled_instance_scores([0], [0], [0])["sa50"] == 1.0


def test_threshold_counts_match_direct_counting_and_find_the_best_f1():
    from protoseg.metrics import THRESHOLD_GRID, ThresholdCounts, confusion, f1

    rng = np.random.default_rng(0)
    counts = ThresholdCounts()
    images = []
    for _ in range(3):
        target = rng.random((20, 30)) < 0.1
        # cells get high probabilities, background low, with overlap between the two
        probabilities = np.clip(
            np.where(target, 0.7, 0.2) + rng.normal(0, 0.15, target.shape), 0, 1
        )
        counts.add(probabilities.astype(np.float32), target)
        images.append((probabilities, target))
    for threshold in (0.1, 0.35, 0.5, 0.9, 0.99):
        direct = [confusion(p > threshold, t) for p, t in images]
        expected = tuple(int(sum(int(d[i]) for d in direct)) for i in range(4))
        # the bins are 1/1000 wide: values within a bin of the threshold may differ by a few
        assert np.allclose(counts.counts(threshold), expected, atol=3)
    best, best_f1 = counts.best()
    assert best in THRESHOLD_GRID and 0.3 < best < 0.6
    assert best_f1 == pytest.approx(max(f1(*counts.counts(t)) for t in THRESHOLD_GRID))
    assert THRESHOLD_GRID[-1] > 0.99  # room above the 0.98 where aiSEGcell's best lay
