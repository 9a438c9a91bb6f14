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


# ---------------------------------------------------------------- one tiny demo run
@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """The tiny demo (tests/workflow_helpers.tiny_demo_config) run end to end once per test
    session: ``(workdir, config)``. Under pytest-xdist the workers share one run (a file
    lock; the first worker to ask runs it). Tests in other modules may read its outputs;
    only tests/test_workflow.py runs Snakemake in it again (one module, one worker, so no
    two runs meet in the folder)."""
    import os
    import shutil

    from filelock import FileLock

    from tests.workflow_helpers import run_snakemake, tiny_demo_config, write_project

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    workdir, config = root / "tiny-demo", tiny_demo_config()
    with FileLock(str(root / "tiny-demo.lock")):
        if not (workdir / "finished").is_file():
            shutil.rmtree(workdir, ignore_errors=True)
            write_project(workdir, config)
            run_snakemake(workdir)
            (workdir / "finished").write_text("")
    return workdir, config
