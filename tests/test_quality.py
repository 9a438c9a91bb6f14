"""Mask quality: scores against hand-computed values, tables, files."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg.config import section_defaults
from protoseg.errors import InputError
from protoseg.quality import build_pairs, markdown, score, summarise, write_quality


def squares(*specs, shape=(20, 20)):
    mask = np.zeros(shape, np.uint16)
    for label, (r, c, size) in enumerate(specs, start=1):
        mask[r : r + size, c : c + size] = label
    return mask


TRUTH = squares((2, 2, 5), (10, 10, 5))


def test_perfect_prediction_scores_one():
    relabelled = np.where(TRUTH > 0, 10 - TRUTH, 0).astype(np.uint16)  # ids need not match
    result = score(relabelled, TRUTH)
    assert all(result[name] == 1.0 for name in ("sa50", "msa", "precision", "recall", "pixel_iou"))
    assert result["n_pred"] == result["n_true"] == 2


def test_shifted_and_extra_object_by_hand():
    # Cell 1 exact; cell 2 shifted one column (IoU 20/30 = 0.667); one false 2x2 object.
    prediction = squares((2, 2, 5), (10, 11, 5), (16, 2, 2))
    result = score(prediction, TRUTH)
    # IoU 0.5: TP 2, FP 1, FN 0.
    assert result["sa50"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(1.0)
    # Thresholds 0.50-0.65 (4): SA 2/3; 0.70-0.95 (6): TP 1, FP 2, FN 1 -> 1/4.
    assert result["msa"] == pytest.approx((4 * 2 / 3 + 6 * 1 / 4) / 10)
    # Foreground: 54 predicted, 50 true, 45 shared.
    assert result["pixel_iou"] == pytest.approx(45 / 59)


def test_missing_cell_by_hand():
    result = score(squares((2, 2, 5)), TRUTH)
    assert result["sa50"] == pytest.approx(1 / 2) and result["recall"] == pytest.approx(1 / 2)
    assert result["precision"] == 1.0 and result["pixel_iou"] == pytest.approx(25 / 50)


def test_empty_masks():
    empty = np.zeros_like(TRUTH)
    assert score(empty, empty)["sa50"] == 1.0  # nothing to find, nothing found
    assert score(empty, TRUTH)["sa50"] == 0.0 and score(TRUTH, empty)["pixel_iou"] == 0.0


def test_shape_mismatch():
    with pytest.raises(ValueError, match="differs"):
        score(TRUTH[:10], TRUTH)


def table():
    rows = [
        dict(state="a", method="classical", kind="plane", z=12) | score(TRUTH, TRUTH),
        dict(state="b", method="classical", kind="plane", z=12) | score(squares((2, 2, 5)), TRUTH),
        dict(state="a", method="classical", kind="plane", z=14) | score(TRUTH, TRUTH),
        dict(state="a", method="classical", kind="state", z=None) | score(TRUTH, TRUTH),
    ]
    return pd.DataFrame(rows)


def test_summary_means_over_states_and_planes():
    summary = summarise(table()).set_index(["kind", "z"])
    assert summary.loc[("plane", "12"), "sa50"] == pytest.approx(0.75)
    assert summary.loc[("plane", "12"), "images"] == 2
    assert summary.loc[("plane", "all"), "sa50"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert summary.loc[("state", "-"), "sa50"] == 1.0
    assert summary.loc[("plane", "12"), "n_true"] == 4
    text = markdown(summarise(table()))
    assert "| classical | plane | 12 | 2 | 0.750 |" in text


def test_write_quality_scores_files_and_the_classical_baseline(tmp_path):
    truth_path, mask_path, image_path = (
        tmp_path / "truth.tif",
        tmp_path / "mask.tif",
        tmp_path / "image.tif",
    )
    tifffile.imwrite(truth_path, TRUTH)
    tifffile.imwrite(mask_path, squares((2, 2, 5)))
    image = np.zeros(TRUTH.shape, np.uint8)
    image[TRUTH > 0] = 200
    tifffile.imwrite(image_path, image)
    pairs = [
        dict(
            state="s",
            method="import",
            kind="plane",
            z=12,
            prediction=str(mask_path),
            truth=str(truth_path),
        ),
        dict(
            state="s",
            method="classical",
            kind="plane",
            z=12,
            image=str(image_path),
            truth=str(truth_path),
        ),
    ]
    settings = section_defaults(
        "masks",
        method="classical",
        modality="fluorescent",
        classical=dict(
            enhance="intensity", sigma=0.5, threshold="otsu", min_area=5, split_depth=1.0
        ),
    )["classical"]
    write_quality(pairs, tmp_path / "q.csv", tmp_path / "q.md", classical=settings)
    written = pd.read_csv(tmp_path / "q.csv")
    assert list(written["method"]) == ["import", "classical"]
    assert written.loc[0, "sa50"] == pytest.approx(0.5)
    assert written.loc[1, "sa50"] == pytest.approx(1.0)
    assert "| import | plane | 12 |" in (tmp_path / "q.md").read_text()


def test_prediction_of_the_wrong_shape_names_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "truth.tif", TRUTH)
    tifffile.imwrite(tmp_path / "mask.tif", TRUTH[:10])
    pair = dict(
        state="s",
        method="m",
        kind="plane",
        z=1,
        prediction=str(tmp_path / "mask.tif"),
        truth=str(tmp_path / "truth.tif"),
    )
    with pytest.raises(InputError, match="mask.tif"):
        write_quality([pair], tmp_path / "q.csv", tmp_path / "q.md")
    assert not (tmp_path / "q.csv").exists()


def test_build_pairs_covers_every_plane_and_state():
    pairs = build_pairs(
        ["s1", "s2"],
        [12, 14],
        method="classical",
        plane_mask="p/{state}/z{z}.tif",
        per_z_mask="q/{state}/z{z}.tif",
        state_mask="s/{state}.tif",
        truth_plane="t/{state}/z{z}.tif",
        truth_state="t/{state}.tif",
        classical_images={(s, z): f"raw/{s}z{z}.tif" for s in ("s1", "s2") for z in (12, 14)},
    )
    kinds = pd.DataFrame(pairs).groupby(["method", "kind"]).size().to_dict()
    assert kinds == {
        ("classical", "plane"): 8,
        ("classical", "per_z"): 4,
        ("classical", "state"): 2,
    }
    assert (
        dict(
            state="s2",
            method="classical",
            kind="per_z",
            z=14,
            prediction="q/s2/z14.tif",
            truth="t/s2/z14.tif",
        )
        in pairs
    )
