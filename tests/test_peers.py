"""The peer benchmarks' own logic, without the peers installed: how a protoseg data set
becomes nnU-Net's raw layout and its one fold, and how the peers' scores are pooled."""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from protoseg import metrics
from tests.test_train import make_discs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "peers"))
import nnunet_peer  # noqa: E402
from peer_scoring import image_scores, load_split, pooled  # noqa: E402

GREY_AT_OWN_SIZE = {"geometry": "patches", "patch_size": [16, 16], "colour": "grey"}


def discs_dataset(tmp_path: Path) -> Path:
    # As the pipeline lays it out (RUN/results/datasets/NAME): masks are found from RUN.
    folder = tmp_path / "run" / "results" / "datasets"
    folder.mkdir(parents=True)
    return make_discs(folder, validation=(4, 5), dataset_cfg=GREY_AT_OWN_SIZE)


def test_nnunet_gets_the_stored_pixels_and_protoseg_split(tmp_path, monkeypatch):
    dataset_dir = discs_dataset(tmp_path)
    monkeypatch.chdir(tmp_path / "run")
    splits = {s: load_split(dataset_dir, s, None) for s in ("train", "validation", "test")}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [6, 4, 2]
    # A second cell, labelled 7: nnU-Net's label is the foreground class, 1, not the id.
    splits["train"][0]["labels"][:2, :2] = 7
    work_dir = tmp_path / "nn"

    cases = nnunet_peer.write_raw_dataset(work_dir, splits)

    raw = work_dir / "raw" / nnunet_peer.DATASET_NAME
    # Training and validation images train nnU-Net's fold; test images only in imagesTs.
    assert len(list((raw / "imagesTr").glob("*_0000.png"))) == 10
    assert len(list((raw / "labelsTr").glob("*.png"))) == 10
    assert sorted(p.name for p in (raw / "imagesTs").iterdir()) == [
        "ts0000_0000.png",
        "ts0001_0000.png",
    ]
    # Truth for scoring only, outside nnU-Net's folders: validation and test images.
    assert len(list((work_dir / "truth").glob("*.tif"))) == 6
    for split, images in splits.items():
        folder = "imagesTs" if split == "test" else "imagesTr"
        for index, item in enumerate(images):
            case = nnunet_peer.case_name(split, index)
            assert cases[case] == {"split": split, "image": str(item["row"]["image"])}
            written = cv2.imread(str(raw / folder / f"{case}_0000.png"), cv2.IMREAD_UNCHANGED)
            # The discs are stored as RGB uint8 with noise per channel: grey is their
            # luminance, in the stored dtype (nnU-Net normalises by itself).
            expected = cv2.cvtColor(item["raw"], cv2.COLOR_RGB2GRAY)
            assert written.dtype == np.uint8
            np.testing.assert_array_equal(written, expected)
            if split != "test":
                label = cv2.imread(str(raw / "labelsTr" / f"{case}.png"), cv2.IMREAD_UNCHANGED)
                np.testing.assert_array_equal(label, (item["labels"] > 0).astype(np.uint8))
            if split != "train":
                truth = tifffile.imread(work_dir / "truth" / f"{case}.tif")
                np.testing.assert_array_equal(truth, item["labels"])
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 10
    assert dataset_json["labels"] == {"background": 0, "cell": 1}
    assert dataset_json["file_ending"] == ".png"
    assert json.loads((work_dir / "cases.json").read_text()) == cases

    # One fold: exactly protoseg's training and validation images, no test image.
    fold = nnunet_peer.fold_of(cases)
    assert fold["train"] == [f"tr{i:04d}" for i in range(6)]
    assert fold["val"] == [f"va{i:04d}" for i in range(4)]


def test_prepare_writes_the_fold_and_refuses_an_existing_folder(tmp_path, monkeypatch):
    dataset_dir = discs_dataset(tmp_path)
    monkeypatch.chdir(tmp_path / "run")
    work_dir = tmp_path / "nn"

    fold = nnunet_peer.prepare(dataset_dir, work_dir, max_images=2)

    assert json.loads((work_dir / "splits_final.json").read_text()) == [fold]
    assert fold == {"train": ["tr0000", "tr0001"], "val": ["va0000", "va0001"]}
    with pytest.raises(SystemExit, match="exists"):
        nnunet_peer.prepare(dataset_dir, work_dir, max_images=2)


def test_nnunet_folders_are_set_before_nnunet_reads_them(tmp_path, monkeypatch):
    for key in ("raw", "preprocessed", "results"):
        monkeypatch.delenv(f"nnUNet_{key}", raising=False)
    folders = nnunet_peer.nnunet_folders(tmp_path / "work")
    for key, folder in folders.items():
        assert folder.is_dir()
        assert Path(__import__("os").environ[f"nnUNet_{key}"]) == folder


def test_peer_scores_pool_pixels_and_objects_over_images():
    # Image 1: one true cell found exactly, one false cell. Image 2: one cell missed.
    truth_1 = np.zeros((10, 10), np.uint32)
    truth_1[1:4, 1:4] = 1
    cells_1 = truth_1.copy()
    cells_1[6:8, 6:8] = 2
    truth_2 = np.zeros((10, 10), np.uint32)
    truth_2[5:9, 5:9] = 1
    cells_2 = np.zeros((10, 10), np.uint32)
    rows = [image_scores(cells_1, truth_1), image_scores(cells_2, truth_2)]

    scores = pooled(rows)

    # Pixels: tp 9, fp 4, fn 16 over both images -> F1 = 18 / (18 + 20).
    assert scores["pixel_f1"] == metrics.f1(9, 4, 16, 171) == 18 / 38
    # Objects: 1 match of 2 predicted and 2 true -> matched F1 0.5, SA50 1 / 3.
    assert scores["matched_f1_pooled"] == 0.5
    assert np.isclose(scores["sa50_pooled"], 1 / 3)
    assert scores["n_pred"] == [2, 0] and scores["n_true"] == [1, 1]
