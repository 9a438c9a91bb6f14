"""Device, precision, compile and GPU-claim choices, with the GPU's capabilities mocked
(these run on CPU-only machines; the GPU numbers are benchmarks/gpu_check.py's)."""

import fcntl

import pytest
import torch

from protoseg import device as devices
from protoseg.config import complete_section
from protoseg.errors import ConfigError


@pytest.fixture
def gpus(monkeypatch):
    """A machine with ``count`` CUDA GPUs that do (or do not) compute bfloat16."""

    def fake(count=2, bf16=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)

    return fake


def test_auto_precision_on_a_bf16_gpu_is_bf16_with_channels_last(gpus):
    gpus(bf16=True)
    assert devices.resolve_precision("auto", "cuda") == "bf16"
    assert devices.resolve_precision("auto", "cuda:1") == "bf16"
    assert devices.uses_channels_last("bf16")


def test_auto_precision_on_an_older_gpu_stays_fp16(gpus):
    gpus(bf16=False)
    assert devices.resolve_precision("auto", "cuda") == "fp16"
    assert devices.uses_channels_last("fp16") and not devices.uses_channels_last("fp32")


def test_bf16_on_a_gpu_without_it_names_the_key(gpus):
    gpus(bf16=False)
    with pytest.raises(ConfigError, match="train.precision.*does not support bfloat16"):
        devices.resolve_precision("bf16", "cuda")
    with pytest.raises(ConfigError, match="predict.precision"):
        devices.resolve_precision("bf16", "cuda:0", key="predict.precision")
    assert devices.resolve_precision("fp16", "cuda") == "fp16"


def test_fp16_on_a_cpu_names_the_key():
    with pytest.raises(ConfigError, match="evaluate.precision.*fp16 is not computed natively"):
        devices.resolve_precision("fp16", "cpu", key="evaluate.precision")


def test_gpu_index_is_checked_against_the_gpus_torch_sees(gpus, monkeypatch):
    gpus(count=2)
    assert devices.resolve_device("cuda:1", "train.device") == "cuda:1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(ConfigError, match="train.device.*GPU index 2 does not exist") as caught:
        devices.resolve_device("cuda:2", "train.device")
    assert "cuda:0..cuda:1" in str(caught.value) and "CUDA_VISIBLE_DEVICES=4,5" in str(caught.value)


def test_gpu_index_without_cuda_names_the_key(gpus):
    gpus(count=0)
    with pytest.raises(ConfigError, match="train.device.*no CUDA GPU"):
        devices.resolve_device("cuda:0", "train.device")


def test_schema_takes_gpu_indexes_and_compile_auto():
    assert complete_section("train", {"device": "cuda:3"})["device"] == "cuda:3"
    settings = complete_section("train", {})
    assert settings["compile"] == "auto" and settings["workers"] == "auto"
    for value in (True, False, "auto"):
        assert complete_section("train", {"compile": value})["compile"] == value
    with pytest.raises(ConfigError, match="train.compile.*'yes'"):
        complete_section("train", {"compile": "yes"})
    with pytest.raises(ConfigError, match="train.device.*'gpu'"):
        complete_section("train", {"device": "gpu"})
    with pytest.raises(ConfigError, match="predict.device"):
        complete_section("predict", {"device": "cuda:x"})


def test_compile_auto_compiles_on_cuda_only(monkeypatch):
    monkeypatch.setattr(devices, "compile_unavailable", lambda: None)
    assert devices.resolve_compile("auto", "cuda") is True
    assert devices.resolve_compile("auto", "cuda:1") is True
    assert devices.resolve_compile("auto", "cpu") is False
    assert devices.resolve_compile("auto", "mps") is False
    assert devices.resolve_compile(True, "cpu") is True
    assert devices.resolve_compile(False, "cuda") is False


def test_compile_where_torch_cannot_is_an_error_naming_the_key_or_off_for_auto(monkeypatch):
    monkeypatch.setattr(devices, "compile_unavailable", lambda: "torch 1.13 has no torch.compile")
    with pytest.raises(ConfigError, match="train.compile.*torch 1.13 has no torch.compile"):
        devices.resolve_compile(True, "cuda")
    assert devices.resolve_compile("auto", "cuda") is False
    with pytest.raises(ConfigError, match="train.compile"):
        devices.resolve_compile("sometimes", "cuda")


def test_each_training_job_claims_a_gpu_no_other_job_holds(tmp_path):
    devices.release_gpus()
    assert devices.claim_gpu("cpu", count=4, lock_dir=tmp_path) == "cpu"
    assert devices.claim_gpu("cuda:2", count=4, lock_dir=tmp_path) == "cuda:2"
    assert devices.claim_gpu("cuda", count=1, lock_dir=tmp_path) == "cuda:0"
    # Another job holds GPU 0 (its own open file, as another process would).
    tmp_path.mkdir(exist_ok=True)
    other = open(tmp_path / "gpu-0.lock", "a+")  # noqa: SIM115
    fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert devices.claim_gpu("cuda", count=3, lock_dir=tmp_path) == "cuda:1"
        # The same job asking again keeps its GPU.
        assert devices.claim_gpu("cuda", count=3, lock_dir=tmp_path) == "cuda:1"
        devices.release_gpus()
        # Every GPU held: share the first, with a warning.
        third = open(tmp_path / "gpu-1.lock", "a+")  # noqa: SIM115
        fcntl.flock(third.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert devices.claim_gpu("cuda", count=2, lock_dir=tmp_path) == "cuda:0"
        third.close()
    finally:
        other.close()
        devices.release_gpus()
    # Released when the holder ends: the next job gets GPU 0.
    assert devices.claim_gpu("cuda", count=3, lock_dir=tmp_path) == "cuda:0"
    devices.release_gpus()


def test_reduced_precision_inference_runs_channels_last():
    from protoseg.inference import prepare_network
    from protoseg.model import UNet

    unet = UNet(in_channels=3, out_channels=1, depth=2, base_channels=2, batch_norm=True)
    weight = next(p for p in prepare_network(unet, "cpu", "bf16").parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
