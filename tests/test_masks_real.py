"""The SAM paths on a real fluorescence image (DSB 2018 nuclei), with a random vit_t.

A smoke test: random weights say nothing about quality, but the real image, its size
(512 x 512 uint16) and its true masks go through micro-sam's loading, embedding and
prompting code and protoseg's scoring exactly as real weights would.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.measure import regionprops

from protoseg.config import section_defaults
from protoseg.masks import make_plane_mask
from protoseg.quality import score

DSB = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dsb2018-stardist"
pytestmark = pytest.mark.skipif(
    not (DSB / "img2d.tif").is_file(), reason="shared dsb2018 data not present"
)


def box_prompts(truth: np.ndarray, n_objects: int) -> pd.DataFrame:
    rows = []
    for region in regionprops(truth)[:n_objects]:
        y0, x0, y1, x1 = region.bbox
        rows.append(
            {
                "state": "dsb",
                "z": 1,
                "object": region.label,
                "kind": "box",
                "x0": x0,
                "y0": y0,
                "x1": x1,
                "y1": y1,
            }
        )
    return pd.DataFrame(
        rows, columns=["state", "z", "object", "kind", "x", "y", "positive", "x0", "y0", "x1", "y1"]
    )


@pytest.mark.slow
def test_sam_paths_run_on_real_fluorescence_and_are_scored(vit_t_checkpoint, tmp_path):
    image = tifffile.imread(DSB / "img2d.tif")
    truth = tifffile.imread(DSB / "mask2d.tif")
    prompts = box_prompts(truth, n_objects=12)
    prompts.to_csv(tmp_path / "prompts.csv", index=False)
    sam_keys = {
        "model_type": "vit_t",
        "checkpoint": str(vit_t_checkpoint),
        "mode": "amg",
        "device": "cpu",
        "embeddings_dir": str(tmp_path / "embeddings"),
        "points_per_side": 4,
    }
    masks_cfg = section_defaults(
        "masks",
        method="sam-auto",
        modality="fluorescent",
        sam=sam_keys,
        prompted={"prompts": str(tmp_path / "prompts.csv")},
    )

    prompted = make_plane_mask(
        image,
        method="sam-prompted",
        masks_cfg={**masks_cfg, "method": "sam-prompted"},
        state="dsb",
        z=1,
    )
    assert prompted.shape == truth.shape and prompted.dtype == np.uint16
    assert 1 <= prompted.max() <= len(prompts)  # at most one cell per prompted box
    automatic = make_plane_mask(
        image, method="sam-auto", masks_cfg={**masks_cfg, "method": "sam-auto"}, state="dsb", z=1
    )
    assert automatic.shape == truth.shape and automatic.dtype == np.uint16

    for prediction in (prompted, automatic):
        scores = score(prediction, truth)
        for key in ("sa50", "msa", "precision", "recall", "pixel_iou"):
            assert 0.0 <= scores[key] <= 1.0
