"""Shared fixtures.

No SAM weights can be downloaded here, so SAM code is tested with randomly initialised
models of the real architectures, built and saved once per test session. micro-sam loads
them exactly like downloaded weights (``get_sam_model(model_type="vit_t",
checkpoint_path=...)``); their masks are meaningless, so tests assert what holds for any
weights (shapes, dtypes, caching, which prompts reach SAM), never mask quality.
"""

from __future__ import annotations

import warnings

import pytest

SEED = 0


def build_random_vit_t():
    """A randomly initialised MobileSAM (vit_t), seeded, on the CPU."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm deprecation noise from mobile_sam
        from mobile_sam import sam_model_registry

    torch.manual_seed(SEED)
    return sam_model_registry["vit_t"]().eval()


@pytest.fixture(scope="session")
def vit_t_checkpoint(tmp_path_factory):
    """Path of a randomly initialised vit_t SAM state dict (~40 MB, built once)."""
    import torch

    path = tmp_path_factory.mktemp("sam") / "vit_t_random.pt"
    torch.save(build_random_vit_t().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def vit_t_ais_checkpoint(tmp_path_factory):
    """A random vit_t plus a random instance-segmentation decoder, in micro-sam's format.

    micro-sam's AIS checkpoints hold ``model_state`` (SAM) and ``decoder_state`` (the
    UNETR decoder, without the shared image encoder).
    """
    import torch
    from micro_sam.instance_segmentation import get_unetr

    sam = build_random_vit_t()
    torch.manual_seed(SEED + 1)
    unetr = get_unetr(sam.image_encoder, decoder_state=None, device="cpu")
    decoder_state = {
        key: value for key, value in unetr.state_dict().items() if not key.startswith("encoder")
    }
    path = tmp_path_factory.mktemp("sam") / "vit_t_ais_random.pt"
    torch.save({"model_state": sam.state_dict(), "decoder_state": decoder_state}, path)
    return path
