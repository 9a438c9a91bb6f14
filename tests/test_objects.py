"""Object-level decisions learned on validation images (protoseg.objects), test-time
augmentation and the moving average of the weights."""

import types

import numpy as np
import pytest
import torch

from protoseg import metrics, objects
from protoseg.config import complete_section
from protoseg.ema import WeightAverage
from protoseg.errors import ConfigError
from protoseg.segmenter import Segmenter, dihedral
from protoseg.train import settings_from_config

torch.set_num_threads(1)


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def scene(seed: int = 0):
    """A 64 x 64 image: 3 true discs found well (probability 0.95), plus debris: a speck
    (4 px, 0.95), a faint blob (0.55) and a ragged cross (0.95); the truth has the discs."""
    shape = (64, 64)
    truth = np.zeros(shape, np.int32)
    probability = np.full(shape, 0.02, np.float32)
    for index, centre in enumerate([(12, 12), (12, 44), (44, 20)], start=1):
        cell = disc(shape, centre, 7 + seed % 2)
        truth[cell] = index
        probability[cell] = 0.95
    probability[30:32, 30:32] = 0.95  # speck
    probability[disc(shape, (56, 56), 5)] = 0.55  # faint blob
    probability[40:60, 38] = probability[49, 29:48] = 0.95  # ragged cross
    pred = metrics.instances_from_binary(probability > 0.5)
    return pred, probability, truth


def test_the_filter_drops_small_faint_and_ragged_objects_and_keeps_cells():
    pred, probability, truth = scene()
    assert pred.max() == 6
    rule = objects.ObjectFilter(min_area=10, min_mean_probability=0.7, min_solidity=0.6)
    kept = rule.apply(pred, probability)
    assert kept.max() == 3 and set(np.unique(kept)) == {0, 1, 2, 3}
    assert metrics.instance_scores(kept, truth)["matched_f1"] == 1.0
    # Each measure alone drops its own kind of debris only.
    assert objects.ObjectFilter(min_area=10).apply(pred, probability).max() == 5
    assert objects.ObjectFilter(min_mean_probability=0.7).apply(pred, probability).max() == 5
    assert objects.ObjectFilter(min_solidity=0.6).apply(pred, probability).max() == 5
    assert objects.ObjectFilter().apply(pred, probability) is not None
    assert not objects.ObjectFilter().active


def test_the_chosen_filter_maximises_pooled_matched_f1_on_the_validation_images():
    images = [scene(0), scene(1)]
    chosen = objects.choose_filter(images)
    assert chosen["n_true"] == 6 and chosen["images"] == 2
    assert chosen["matched_f1"] == 1.0 > chosen["matched_f1_unfiltered"]

    # Brute force with the metrics module's own matching: no filter of the grid does better,
    # and the chosen one scores what choose_filter says.
    def pooled(rule):
        counts = [
            metrics.instance_scores(rule.apply(pred, probability), truth)
            for pred, probability, truth in images
        ]
        return metrics.pooled_instance_scores(
            *(sum(c[key] for c in counts) for key in ("n_true", "n_pred", "tp50"))
        )["matched_f1"]

    grid = objects.filter_grid()[::3]  # every 3rd: the brute force stays quick
    assert pooled(chosen["filter"]) == pytest.approx(chosen["matched_f1"])
    assert all(pooled(rule) <= chosen["matched_f1"] for rule in grid)
    # Ties go to the mildest filter (grid order): each debris dropped by the first step
    # that drops it: the 4 px speck by area, the faint blob by 0.6, the cross by solidity.
    assert chosen["filter"] == objects.ObjectFilter(5, 0.6, 0.5)


def test_typical_area_is_the_size_of_the_cells_not_of_the_many_specks():
    # 5 specks of 4 px and 2 cells of 400 px: the plain median is a speck's area.
    areas = np.array([4, 4, 4, 4, 4, 400, 400])
    assert np.median(areas) == 4 and objects.typical_area(areas) == 400
    assert objects.typical_area([30, 50, 70]) == 50 and objects.typical_area([]) == 0.0


def _two_magnifications():
    """One image at low magnification (cells of radius 4, about 50 px) and one at high
    (cells of radius 14) holding debris blobs of radius 4, all at probability 0.95: no
    area in pixels drops the debris without dropping the small image's cells."""
    from skimage.draw import disk

    images = []
    for radius, debris in ((4, 0), (14, 6)):
        truth = np.zeros((160, 160), np.int32)
        probability = np.full(truth.shape, 0.02, np.float32)
        for label, centre in enumerate([(30, 30), (30, 120), (120, 30), (120, 120)], start=1):
            truth[disk(centre, radius)] = label
            probability[disk(centre, radius)] = 0.95
        for index in range(debris):
            probability[disk((75, 15 + 25 * index), 4)] = 0.95
        images.append((metrics.instances_from_binary(probability > 0.5), probability, truth))
    return images


def test_an_area_relative_to_the_image_holds_across_magnifications():
    images = _two_magnifications()
    small_cell, debris = (
        objects.measure(pred, probability)["area"].min() for pred, probability, _ in images
    )
    assert small_cell == debris  # the same size in pixels: min_area cannot tell them apart
    in_pixels = objects.choose_filter(images)
    assert in_pixels["matched_f1"] < 1.0
    relative = objects.choose_filter(images, objects.filter_grid(objects.RELATIVE_AREA_GRID))
    assert relative["matched_f1"] == 1.0 and relative["filter"].min_relative_area > 0
    for pred, probability, truth in images:
        kept = relative["filter"].apply(pred, probability)
        assert metrics.instance_scores(kept, truth)["matched_f1"] == 1.0
    # It round-trips through model.pt's dict and is said in the tables' note.
    stored = relative["filter"].to_dict()
    assert objects.ObjectFilter.from_dict(stored) == relative["filter"]
    assert "typical object" in relative["filter"].describe()
    # A filter stored before the key existed reads as 0 (off).
    del stored["min_relative_area"]
    assert objects.ObjectFilter.from_dict(stored).min_relative_area == 0.0


def test_the_held_out_score_is_what_a_choice_scores_on_an_image_it_did_not_see():
    images = [(probability[None], truth) for _, probability, truth in _two_magnifications()]

    def cells(outputs, threshold):
        return metrics.instances_from_binary(outputs[0] > threshold)

    tables = objects.threshold_tables(images, cells)
    for filters in (None, objects.filter_grid(objects.RELATIVE_AREA_GRID)):
        held_out = objects.held_out_score(tables, filters=filters)
        # By hand: choose on the other image, apply to this one, pool the counts.
        tp = n_pred = 0
        for index, (outputs, truth) in enumerate(images):
            chosen = objects.choose_threshold_and_filter(
                images[:index] + images[index + 1 :], cells, filters=filters
            )
            kept = chosen["filter"].apply(cells(outputs, chosen["value"]), outputs[0])
            scored = metrics.instance_scores(kept, truth)
            tp, n_pred = tp + scored["tp50"], n_pred + scored["n_pred"]
        assert (held_out["tp"], held_out["n_pred"], held_out["n_true"]) == (tp, n_pred, 8)
        assert held_out["matched_f1"] == pytest.approx(2 * tp / (n_pred + 8))
    # Chosen on the large cells alone, an area in pixels drops every small cell; an area
    # relative to the image does not (the debris is still kept where nothing showed it).
    in_pixels = objects.held_out_score(tables)
    relative = objects.held_out_score(
        tables, filters=objects.filter_grid(objects.RELATIVE_AREA_GRID)
    )
    assert in_pixels["tp"] == 4 and relative["tp"] == 8
    assert relative["matched_f1"] > in_pixels["matched_f1"]
    # On the images it was chosen on, both choices are perfect: only held out do they differ.
    for filters in (None, objects.filter_grid(objects.RELATIVE_AREA_GRID)):
        on_each = [objects.joint_choice([image], filters=filters) for image in tables]
        assert all(choice["matched_f1"] == 1.0 for choice in on_each)


def test_matching_agrees_with_the_metrics_module():
    pred, probability, truth = scene()
    labels, hits = objects.matched_objects(pred, truth)
    assert len(labels) == metrics.instance_scores(pred, truth)["n_pred"]
    assert hits.sum() == metrics.instance_scores(pred, truth)["tp50"]


def test_matching_agrees_with_every_pair_compared_by_hand():
    """Labels with gaps, of two integer types, a pair at IoU exactly 0.5 (a hit) and one
    just under it, and objects that overlap two true cells."""
    rng = np.random.default_rng(3)
    truth = np.zeros((40, 60), np.uint32)
    pred = np.zeros((40, 60), np.uint16)
    truth[0:10, 0:10], pred[0:10, 0:5] = 7, 40  # IoU 50 / 100 = 0.5: a hit
    truth[0:10, 20:30], pred[0:10, 20:24], pred[0:1, 24] = 9, 41, 42  # 40 / 100: no hit
    truth[20:40] = rng.integers(0, 5, (20, 60)) * 3 + 100  # many small true cells
    pred[20:40] = rng.integers(0, 4, (20, 60)) * 5
    pred[15:25, 40:60] = 1000  # overlaps background and several true cells
    labels, hits = objects.matched_objects(pred, truth)
    expected = []
    for value in np.unique(pred[pred > 0]):
        mine = pred == value
        ious = [
            (mine & (truth == other)).sum() / (mine | (truth == other)).sum()
            for other in np.unique(truth[truth > 0])
        ]
        expected.append(max(ious) >= 0.5)
    assert labels.tolist() == np.unique(pred[pred > 0]).tolist()
    assert hits.tolist() == expected
    assert hits[labels.tolist().index(40)] and not hits[labels.tolist().index(41)]


def test_plateau_centre_prefers_the_middle_of_a_plateau_to_a_lone_peak():
    scores = np.full(40, 0.2)
    scores[5:14] = 0.80  # a plateau of 9 points, centre 9
    scores[30] = 0.803  # a lone peak, higher by less than the tolerance
    assert objects.plateau_centre(scores, tolerance=0.005) == 9
    # A peak higher by more than the tolerance wins.
    scores[30] = 0.9
    assert objects.plateau_centre(scores, tolerance=0.005) == 30
    assert objects.plateau_centre([0.1, 0.5, 0.5, 0.1]) == 1


def test_logit_grid_is_fine_near_both_ends_and_holds_one_half():
    grid = np.array(objects.LOGIT_GRID)
    assert 0.5 in objects.LOGIT_GRID and grid.min() < 0.005 and grid.max() > 0.995
    steps = np.diff(grid)
    assert steps[0] < 0.002 and steps[-1] < 0.002 and steps.max() > 0.05


def test_the_instance_threshold_lies_in_the_middle_of_the_plateau():
    _, probability, truth = scene()
    probability = probability.copy()
    probability[probability == 0.95] = 0.97
    images = [(probability[None], truth)]
    chosen = objects.choose_threshold(
        images, lambda outputs, t: metrics.instances_from_binary(outputs[0] > t)
    )
    grid = np.array(objects.LOGIT_GRID)
    best = np.flatnonzero(chosen["scores"] >= chosen["scores"].max() - objects.PLATEAU_TOLERANCE)
    assert chosen["value"] == grid[(best[0] + best[-1]) // 2]
    assert chosen["n_true"] == 3 and chosen["matched_f1_at_05"] == chosen["scores"][24]


def _cored_cells_and_specks():
    """4 nuclei of radius 6 whose probability is 0.99 only in a core of radius 4 (0.6 in
    their rim), and 12 specks of 3 x 3 pixels at 0.6: a threshold over 0.6 leaves cores too
    small to match (IoU 16/36), one under it lets the specks in."""
    from skimage.draw import disk

    truth = np.zeros((120, 120), np.int32)
    probability = np.full((120, 120), 0.02, np.float32)
    for label, centre in enumerate([(20, 20), (20, 90), (90, 20), (90, 90)], start=1):
        truth[disk(centre, 6)] = label
        probability[disk(centre, 6)] = 0.6
        probability[disk(centre, 4)] = 0.99
    for index in range(12):
        top, left = 45 + 6 * (index // 4), 35 + 12 * (index % 4)
        probability[top : top + 3, left : left + 3] = 0.6
    return probability[None], truth


def test_threshold_and_filter_chosen_together_find_what_neither_finds_alone():
    outputs, truth = _cored_cells_and_specks()

    def cells(scored, threshold):
        return metrics.instances_from_binary(scored[0] > threshold)

    alone = objects.choose_threshold([(outputs, truth)], cells)
    assert alone["matched_f1"] == pytest.approx(0.4)  # 4 cells + 12 specks at best: 8 / 20
    together = objects.choose_threshold_and_filter([(outputs, truth)], cells)
    assert together["matched_f1"] == 1.0 and together["value"] < 0.6
    # Its filter (by area or by mean probability) drops the specks and keeps the cells.
    kept = together["filter"].apply(cells(outputs, together["value"]), outputs[0])
    assert kept.max() == 4 and metrics.instance_scores(kept, truth)["matched_f1"] == 1.0
    assert together["matched_f1_unfiltered"] == pytest.approx(0.4)
    # At every threshold the best filter's score; the plateau's centre is the choice.
    for index in (0, 24, 40):
        threshold = objects.LOGIT_GRID[index]
        best = objects.choose_filter([(cells(outputs, threshold), outputs[0], truth)])
        assert together["scores"][index] == best["matched_f1"]
    assert together["value"] == objects.LOGIT_GRID[objects.plateau_centre(together["scores"])]


def test_filter_values_out_of_range_name_their_key():
    for bad, key in (
        ({"min_solidity": 1.5}, "min_solidity"),
        ({"min_area": -1}, "min_area"),
        ({"min_mean_probability": "high"}, "min_mean_probability"),
        ({"min_relative_area": 1.5}, "min_relative_area"),
    ):
        with pytest.raises(ConfigError, match=f"train.object_filter.{key}"):
            objects.ObjectFilter.from_dict(bad)
    with pytest.raises(ConfigError, match="object_filter"):
        complete_section("train", {"object_filter": {"min_solidity": 2}})
    with pytest.raises(ConfigError, match="object_filter"):
        complete_section("train", {"object_filter": {"min_relative_area": -0.1}})
    assert complete_section("train", {"object_filter": {"min_relative_area": 0.3}})
    with pytest.raises(ConfigError, match="ema"):
        complete_section("train", {"ema": 1.0})
    with pytest.raises(ConfigError, match="tta"):
        complete_section("evaluate", {"tta": "yes"})


def test_the_defaults_leave_training_settings_as_they_were():
    settings = settings_from_config({"losses": ["bce"], "epochs": 1, "batch_size": 2})
    assert not {"ema", "threshold_objective", "object_filter"} & set(settings)
    assert complete_section("evaluate")["tta"] is False
    assert complete_section("predict")["tta"] is False
    on = settings_from_config(
        {"losses": ["bce"], "epochs": 1, "batch_size": 2, "ema": 0.99, "object_filter": "auto"}
    )
    assert on["ema"] == 0.99 and on["object_filter"] == "auto"


# ---------------------------------------------------------------- test-time augmentation
def toy_segmenter(kernel: torch.Tensor, tta: bool) -> Segmenter:
    network = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        network.weight.copy_(kernel.reshape(1, 1, 3, 3))
    record = types.SimpleNamespace(preprocessing=types.SimpleNamespace(tile=(16, 16)))
    return Segmenter(network.eval(), record, tile=(16, 16), overlap=0.5, tta=tta)


def test_dihedral_transforms_are_undone_by_their_inverse():
    array = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    results = {dihedral(array, index).tobytes() for index in range(8)}
    assert len(results) == 8
    for index in range(8):
        assert np.array_equal(dihedral(dihedral(array, index), index, inverse=True), array)


def test_tta_of_an_equivariant_network_equals_its_plain_output_and_of_another_differs():
    image = np.random.default_rng(0).normal(size=(1, 16, 16)).astype(np.float32)
    symmetric = torch.tensor([[0.1, 0.2, 0.1], [0.2, 1.0, 0.2], [0.1, 0.2, 0.1]])
    plain = toy_segmenter(symmetric, tta=False).outputs(image)
    averaged = toy_segmenter(symmetric, tta=True).outputs(image)
    np.testing.assert_allclose(averaged, plain, atol=1e-6)
    lopsided = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    plain = toy_segmenter(lopsided, tta=False).outputs(image)
    averaged = toy_segmenter(lopsided, tta=True).outputs(image)
    assert np.abs(averaged - plain).max() > 0.05
    assert toy_segmenter(lopsided, tta=True).with_settings(overlap=0.25).tta


# ---------------------------------------------------------------- moving average of weights
def test_weight_average_moves_towards_the_weights_and_is_swapped_in_and_out():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, 0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update(model)
    # The first step's decay is the warm-up's 1 / 10, not 0.5.
    expected = start["0.weight"] + 0.9
    assert torch.allclose(average.average["0.weight"], expected)
    assert not torch.allclose(average.average["0.weight"], model[0].weight)
    raw = model[0].weight.detach().clone()
    with average.applied(model):
        assert torch.allclose(model[0].weight, expected)
    assert torch.equal(model[0].weight, raw)
    copy = WeightAverage(model, 0.9)
    copy.load_state_dict(average.state_dict())
    assert copy.decay == 0.5 and torch.allclose(copy.average["0.weight"], expected)
    assert copy.steps == 1 and copy.next_decay() == pytest.approx(2 / 11)


def test_weight_average_forgets_the_initial_weights_in_a_short_run():
    """200 steps at decay 0.999 (an aiSEGcell run validates first at step 192): the
    average is the trained network, not 82 % of the random one it started from, and
    decay itself applies once enough steps are averaged."""
    model = torch.nn.Linear(2, 2)
    average = WeightAverage(model, 0.999)
    with torch.no_grad():
        model.weight.copy_(model.weight + 10.0)
    trained = model.weight.detach().clone()
    for _ in range(200):
        average.update(model)
    assert torch.allclose(average.average["weight"], trained, atol=1e-3)
    average.steps = 20_000
    assert average.next_decay() == 0.999
