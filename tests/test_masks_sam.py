"""sam-auto and sam-prompted with a random vit_t, the offline checks, and the dispatcher.

Random weights make meaningless masks, so these tests check what any weights must give:
shapes and dtypes, that embeddings are cached and reused, that tiling runs, that each
prompt reaches micro-sam in its coordinate order, and that errors come before any work.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
import torch

from protoseg.config import section_defaults
from protoseg.device import resolve_device
from protoseg.errors import ConfigError, InputError
from protoseg.masks import make_plane_mask, make_state_masks, prompts, sam

torch.set_num_threads(1)

SHAPE = (64, 96)


@pytest.fixture(autouse=True)
def empty_model_cache(tmp_path, monkeypatch):
    """micro-sam's weight cache pointed at an empty folder: nothing is downloaded here."""
    monkeypatch.setenv("MICROSAM_CACHEDIR", str(tmp_path / "microsam-cache"))


def random_image(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return (rng.random((*shape, 3)) * 255).astype(np.uint8)


def sam_config(tmp_path, checkpoint=None, method="sam-auto", **sam_keys):
    keys = {
        "model_type": "vit_t",
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "mode": "amg",
        "device": "cpu",
        "embeddings_dir": str(tmp_path / "embeddings"),
        "points_per_side": 2,
    }
    keys.update(sam_keys)
    return section_defaults(
        "masks",
        method=method,
        modality="fluorescent",
        sam=keys,
        prompted={"prompts": str(tmp_path / "prompts.csv")},
    )


def sam_settings(**keys):
    """``masks.sam`` as validation fills it, with ``keys`` set; not validated, so bad
    values reach the library's own checks."""
    section = section_defaults("masks", method="sam-auto", modality="fluorescent")["sam"]
    return sam.settings_from_config(section | keys)


class EncoderCalls:
    """Counts forward passes of the loaded model's image encoder."""

    def __init__(self, masks_cfg):
        predictor, _ = sam.load_predictor(sam.settings_from_config(masks_cfg["sam"]))
        self.count = 0
        self.handle = predictor.model.image_encoder.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.count += 1

    def close(self):
        self.handle.remove()


# ---------------------------------------------------------------- configuration errors


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="masks.method.*unknown method 'watershed'"):
        make_plane_mask(random_image(), method="watershed", masks_cfg={}, state="s1", z=18)


def test_unknown_model_lists_valid_names():
    settings = sam_settings(model_type="vit_q")
    with pytest.raises(
        ConfigError, match="masks.sam.model_type.*unknown model 'vit_q'.*vit_b_lm.*vit_h"
    ):
        sam.check_model(settings)


def test_missing_checkpoint_is_a_config_error(tmp_path):
    settings = sam_settings(model_type="vit_t", checkpoint=str(tmp_path / "absent.pt"))
    with pytest.raises(ConfigError, match="masks.sam.checkpoint.*checkpoint file not found"):
        sam.check_model(settings)


@pytest.mark.parametrize(
    ("keys", "key"),
    [
        ({"tile_shape": [64, 64]}, "masks.sam.halo"),
        ({"tile_shape": [64, 64], "halo": [32, 8]}, "masks.sam.halo"),
        ({"halo": [8, 8]}, "masks.sam.tile_shape"),
        ({"mode": "apg"}, "masks.sam.mode"),
        ({"colour": "red"}, "masks.sam.colour"),
    ],
)
def test_bad_sam_settings(keys, key):
    with pytest.raises(ConfigError, match=key):
        sam_settings(**keys)


def test_ais_needs_a_decoder_named_model():
    with pytest.raises(ConfigError, match="masks.sam.mode.*'vit_h' has none"):
        sam.check_model(sam_settings(model_type="vit_h", mode="ais"))


def test_offline_weights_missing_named_before_any_work(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("segmentation started before the weights were checked")

    monkeypatch.setattr(sam, "segment_auto", no_work)
    image = tmp_path / "z18.tif"
    tifffile.imwrite(image, random_image())
    output = tmp_path / "out" / "z18.tif"
    masks_cfg = sam_config(tmp_path, model_type="vit_b_lm")
    with pytest.raises(ConfigError) as error:
        make_state_masks(
            [image], [output], method="sam-auto", masks_cfg=masks_cfg, state="s1", planes=[18]
        )
    message = str(error.value)
    assert error.value.key == "masks.sam.checkpoint"
    assert "'vit_b_lm' are not on this machine" in message and ".pt file" in message
    assert "machine with internet" in message
    assert not output.exists()


def test_cached_or_downloadable_weights_pass_the_check(tmp_path):
    settings = sam_settings(model_type="vit_b_lm")
    missing = sam.missing_weights("vit_b_lm")
    assert [path.name for path in missing] == ["vit_b_lm", "vit_b_lm_decoder"]
    sam.check_model(sam_settings(model_type="vit_b_lm", download=True))
    for path in missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
    sam.check_model(settings)  # found in micro-sam's cache: no error


def test_device_resolution():
    assert resolve_device("auto") in ("cuda", "mps", "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="masks.sam.device.*unknown device 'tpu'"):
        resolve_device("tpu", key="masks.sam.device")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device.*no CUDA GPU"):
            resolve_device("cuda", key="train.device")


# ---------------------------------------------------------------- sam-auto


@pytest.mark.slow
def test_sam_auto_caches_and_reuses_embeddings(vit_t_checkpoint, tmp_path):
    masks_cfg = sam_config(tmp_path, vit_t_checkpoint)
    calls = EncoderCalls(masks_cfg)
    try:
        first = make_plane_mask(
            random_image(), method="sam-auto", masks_cfg=masks_cfg, state="s1", z=18
        )
        cache = tmp_path / "embeddings" / "vit_t-vit_t_random" / "s1" / "z18.zarr"
        assert first.dtype == np.uint16 and first.shape == SHAPE
        assert calls.count == 1 and cache.is_dir()

        again = make_plane_mask(
            random_image(), method="sam-auto", masks_cfg=masks_cfg, state="s1", z=18
        )
        assert calls.count == 1  # read from the cache, the encoder did not run
        np.testing.assert_array_equal(first, again)

        # Another image at the same place must not be served the old embeddings.
        make_plane_mask(
            random_image(seed=1), method="sam-auto", masks_cfg=masks_cfg, state="s1", z=18
        )
        assert calls.count == 2
    finally:
        calls.close()


def test_ais_with_a_checkpoint_without_decoder_fails_clearly(vit_t_checkpoint, tmp_path):
    masks_cfg = sam_config(tmp_path, vit_t_checkpoint, mode="ais")
    with pytest.raises(ConfigError, match="masks.sam.mode.*has none"):
        make_plane_mask(random_image(), method="sam-auto", masks_cfg=masks_cfg, state="s1", z=18)


@pytest.mark.slow
def test_sam_auto_ais_mode(vit_t_ais_checkpoint, tmp_path):
    masks_cfg = sam_config(tmp_path, vit_t_ais_checkpoint, mode="ais")
    mask = make_plane_mask(random_image(), method="sam-auto", masks_cfg=masks_cfg, state="s1", z=18)
    assert mask.dtype == np.uint16 and mask.shape == SHAPE
    labels = np.unique(mask)
    np.testing.assert_array_equal(labels, np.arange(len(labels)))  # consecutive ids


@pytest.mark.slow
def test_sam_auto_tiled(vit_t_checkpoint, tmp_path):
    masks_cfg = sam_config(tmp_path, vit_t_checkpoint, tile_shape=[64, 48], halo=[8, 8])
    calls = EncoderCalls(masks_cfg)
    try:
        mask = make_plane_mask(
            random_image(), method="sam-auto", masks_cfg=masks_cfg, state="s1", z=12
        )
    finally:
        calls.close()
    assert mask.dtype == np.uint16 and mask.shape == SHAPE
    assert calls.count == 2  # one encoder pass per tile: 64 x 96 in 64 x 48 tiles


# ---------------------------------------------------------------- sam-prompted

PROMPTS = (
    "state,z,object,kind,x,y,positive,x0,y0,x1,y1\n"
    "s1,18,a,point,40,20,1,,,,\n"
    "s1,18,a,point,5,60,0,,,,\n"
    "s1,18,b,box,,,,60,10,90,50\n"
    "s1,18,c,box,,,,10,30,30,60\n"
    "s1,18,c,point,20,45,1,,,,\n"
)


def spy_on_prompted_segmentation(monkeypatch):
    """Replace micro-sam's prompt functions by recorders that draw the prompt itself."""
    from micro_sam import prompt_based_segmentation as pbs

    calls = []

    def draw_points(predictor, points, labels, image_embeddings=None, **kwargs):
        calls.append(("points", points.copy(), labels.copy(), None))
        mask = np.zeros((1, *SHAPE), bool)
        row, col = points[labels == 1][0].astype(int)
        mask[0, max(row - 3, 0) : row + 4, max(col - 3, 0) : col + 4] = True
        return mask

    def box_mask(box):
        mask = np.zeros((1, *SHAPE), bool)
        row0, col0, row1, col1 = box.astype(int)
        mask[0, row0 : row1 + 1, col0 : col1 + 1] = True
        return mask

    def draw_box(predictor, box, image_embeddings=None, **kwargs):
        calls.append(("box", None, None, box.copy()))
        return box_mask(box)

    def draw_box_and_points(predictor, box, points, labels, image_embeddings=None, **kwargs):
        calls.append(("box+points", points.copy(), labels.copy(), box.copy()))
        return box_mask(box)

    monkeypatch.setattr(pbs, "segment_from_points", draw_points)
    monkeypatch.setattr(pbs, "segment_from_box", draw_box)
    monkeypatch.setattr(pbs, "segment_from_box_and_points", draw_box_and_points)
    return calls


def test_prompts_reach_micro_sam_in_its_order(vit_t_checkpoint, tmp_path, monkeypatch):
    (tmp_path / "prompts.csv").write_text(PROMPTS)
    calls = spy_on_prompted_segmentation(monkeypatch)
    masks_cfg = sam_config(tmp_path, vit_t_checkpoint, method="sam-prompted")
    mask = make_plane_mask(
        random_image(), method="sam-prompted", masks_cfg=masks_cfg, state="s1", z=18
    )

    kinds = [call[0] for call in calls]
    assert kinds == ["points", "box", "box+points"]
    # CSV x/y (column/row) reach micro-sam as (row, column); boxes as (row0, col0, row1, col1).
    np.testing.assert_array_equal(calls[0][1], [[20, 40], [60, 5]])
    np.testing.assert_array_equal(calls[0][2], [1, 0])
    np.testing.assert_array_equal(calls[1][3], [10, 60, 50, 90])
    np.testing.assert_array_equal(calls[2][3], [30, 10, 60, 30])
    # One label per object, each at its prompt.
    assert mask.dtype == np.uint16 and mask.max() == 3
    assert mask[20, 40] == 1 and mask[30, 75] == 2 and mask[45, 20] == 3


def test_prompted_with_random_sam_gives_at_most_one_label_per_object(vit_t_checkpoint, tmp_path):
    (tmp_path / "prompts.csv").write_text(PROMPTS)
    masks_cfg = sam_config(tmp_path, vit_t_checkpoint, method="sam-prompted")
    mask = make_plane_mask(
        random_image(), method="sam-prompted", masks_cfg=masks_cfg, state="s1", z=18
    )
    assert mask.dtype == np.uint16 and mask.shape == SHAPE
    labels = np.unique(mask[mask > 0])
    np.testing.assert_array_equal(labels, np.arange(1, len(labels) + 1))
    assert len(labels) <= 3
    assert (tmp_path / "embeddings" / "vit_t-vit_t_random" / "s1" / "z18.zarr").is_dir()


def test_plane_without_prompts_is_empty_with_a_warning(tmp_path, caplog):
    (tmp_path / "prompts.csv").write_text(PROMPTS)
    masks_cfg = sam_config(tmp_path, method="sam-prompted")
    with caplog.at_level(logging.WARNING):
        mask = make_plane_mask(
            random_image(), method="sam-prompted", masks_cfg=masks_cfg, state="s1", z=12
        )
    assert mask.dtype == np.uint16 and not mask.any()
    assert "no prompts" in caplog.text


def test_prompts_for_missing_plane_stop_before_work(vit_t_checkpoint, tmp_path, monkeypatch):
    prompts_csv = tmp_path / "prompts.csv"
    prompts_csv.write_text(PROMPTS + "s1,16,d,point,3,3,1,,,,\n")
    monkeypatch.setattr(
        prompts, "segment_prompted", lambda *a, **k: pytest.fail("segmentation started")
    )
    image = tmp_path / "z18.tif"
    tifffile.imwrite(image, random_image())
    masks_cfg = sam_config(tmp_path, vit_t_checkpoint, method="sam-prompted")
    with pytest.raises(InputError, match="line 7: plane z16 does not exist") as error:
        make_state_masks(
            [image],
            [tmp_path / "out.tif"],
            method="sam-prompted",
            masks_cfg=masks_cfg,
            state="s1",
            planes=[18],
            states=["s1"],
        )
    assert error.value.path == str(prompts_csv)
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.slow
def test_prompted_tiled(vit_t_checkpoint, tmp_path):
    (tmp_path / "prompts.csv").write_text(PROMPTS)
    masks_cfg = sam_config(
        tmp_path, vit_t_checkpoint, method="sam-prompted", tile_shape=[64, 48], halo=[8, 8]
    )
    mask = make_plane_mask(
        random_image(), method="sam-prompted", masks_cfg=masks_cfg, state="s1", z=18
    )
    assert mask.dtype == np.uint16 and mask.shape == SHAPE
    import zarr

    cache = zarr.open(
        str(tmp_path / "embeddings" / "vit_t-vit_t_random" / "s1" / "z18.zarr"), mode="r"
    )
    assert list(cache.attrs["tile_shape"]) == [64, 48]
