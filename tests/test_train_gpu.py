"""The training path's GPU parts (data loader, compile fallback, checkpoints from a CPU
copy written in the background, resume across compile settings), run on the CPU with
the GPU's parts mocked."""

import logging
from types import SimpleNamespace

import pytest
import torch

from protoseg import device as devices
from protoseg import train as training
from protoseg.errors import OutputError
from protoseg.model import UNet, load_model
from protoseg.train import CompiledForward, Trainer, loader_workers, make_loader, train_model
from tests.test_train import MODEL_CFG, TRAIN_CFG, make_discs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_discs(tmp_path_factory.mktemp("train_gpu"))


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.zeros(1), torch.zeros(1)


class EpochItems(Items):
    def set_epoch(self, epoch):
        self.epoch = epoch


def test_workers_auto_none_on_a_cpu_some_on_cuda():
    assert loader_workers("auto", torch.device("cpu")) == 0
    assert 1 <= loader_workers("auto", torch.device("cuda")) <= training.MAX_AUTO_WORKERS
    assert (
        loader_workers(3, torch.device("cuda")) == 3
        and loader_workers(0, torch.device("cuda")) == 0
    )


def test_cuda_loader_pins_keeps_workers_and_prefetches():
    cuda = make_loader(Items(), 4, True, None, 2, torch.device("cuda"))
    assert cuda.pin_memory and cuda.persistent_workers
    assert cuda.prefetch_factor == training.CUDA_PREFETCH
    # A data set that changes each epoch (patches) needs fresh workers that see set_epoch.
    patches = make_loader(EpochItems(), 4, False, None, 2, torch.device("cuda"))
    assert patches.pin_memory and not patches.persistent_workers
    # The CPU loader is as it was: nothing pinned, no workers kept.
    cpu = make_loader(Items(), 4, True, None, 0, torch.device("cpu"))
    assert not cpu.pin_memory and not cpu.persistent_workers


def test_a_failed_compilation_falls_back_to_eager_and_says_so(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("inductor: no C compiler found")

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: broken)
    model = UNet(in_channels=3, out_channels=1, depth=2, base_channels=2, batch_norm=True).eval()
    forward = CompiledForward(model, "bf-bce")
    images = torch.rand(2, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="protoseg.train"):
        out = forward(images)
    assert torch.equal(out, model(images))
    assert forward.failed
    assert "bf-bce: torch.compile failed (RuntimeError: inductor: no C compiler" in caplog.text
    assert "eager mode" in caplog.text
    caplog.clear()
    forward(images)  # later steps: eager, without trying (or warning) again
    assert not caplog.text


def test_compiled_and_eager_networks_save_the_same_state_dict_keys():
    model = UNet(in_channels=3, out_channels=1, depth=2, base_channels=2, batch_norm=True)
    keys = list(model.state_dict())
    forward = CompiledForward(model)  # compiles lazily: nothing is built here
    assert list(forward.model.state_dict()) == keys
    # What a wrapper's state_dict would have given instead (and what the trainer avoids).
    assert all(key.startswith("_orig_mod.") for key in forward.compiled.state_dict())


def test_a_run_resumes_across_compile_settings_to_the_same_weights(
    dataset_dir, tmp_path, monkeypatch
):
    """Eager run interrupted, resumed with compile: true (torch.compile stubbed: the CPU
    cannot be asked to compile in a test's time): the weights of an uninterrupted run."""
    train_model(
        dataset_dir,
        tmp_path / "straight",
        model_cfg=MODEL_CFG,
        train_cfg=TRAIN_CFG,
        loss="bce",
        progress=False,
    )

    def crash_after_two(epoch):
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train_model(
            dataset_dir,
            tmp_path / "resumed",
            model_cfg=MODEL_CFG,
            train_cfg={**TRAIN_CFG, "compile": False},
            loss="bce",
            progress=False,
            on_epoch_end=crash_after_two,
        )
    compiled = []
    monkeypatch.setattr(devices, "compile_unavailable", lambda: None)
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(model) or model)
    epochs_run = []
    train_model(
        dataset_dir,
        tmp_path / "resumed",
        model_cfg=MODEL_CFG,
        train_cfg={**TRAIN_CFG, "compile": True},
        loss="bce",
        progress=False,
        on_epoch_end=epochs_run.append,
    )
    assert epochs_run == [3] and len(compiled) == 1
    straight, meta = load_model(tmp_path / "straight" / "model.pt")
    resumed, resumed_meta = load_model(tmp_path / "resumed" / "model.pt")
    assert list(straight.state_dict()) == list(resumed.state_dict())
    for (key, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
    assert meta["compiled"] is False and resumed_meta["compiled"] is True
    assert meta["precision"] == "fp32" and meta["channels_last"] is False


def test_background_checkpoint_from_a_cpu_copy_equals_the_direct_one(dataset_dir, tmp_path):
    trainer = Trainer(
        dataset_dir,
        tmp_path / "direct",
        model_cfg=MODEL_CFG,
        train_cfg=TRAIN_CFG,
        loss="bce",
        progress=False,
    )
    trainer.history = [{"epoch": 1, "train_loss": 0.5}]
    trainer.save_checkpoint(1)  # on the CPU: written here
    direct = torch.load(training.checkpoint_path(trainer.model_dir, 1), weights_only=False)
    # As on a GPU: the state copied to the CPU, written by a thread, waited for.
    trainer.model_dir = tmp_path / "background"
    trainer.device = SimpleNamespace(type="cuda")
    trainer.save_checkpoint(1)
    trainer.history.append({"epoch": 2, "train_loss": 0.4})  # training goes on meanwhile
    trainer.wait_for_checkpoint()
    written = torch.load(training.checkpoint_path(trainer.model_dir, 1), weights_only=False)
    assert written["history"] == direct["history"] == [{"epoch": 1, "train_loss": 0.5}]
    for key, value in direct["model"].items():
        assert torch.equal(value, written["model"][key]), key
    assert written["optimizer"]["param_groups"] == direct["optimizer"]["param_groups"]
    assert torch.equal(written["rng"]["torch"], direct["rng"]["torch"])


def test_a_failed_background_write_is_raised_in_the_training_thread(dataset_dir, tmp_path):
    trainer = Trainer(
        dataset_dir,
        tmp_path / "m",
        model_cfg=MODEL_CFG,
        train_cfg=TRAIN_CFG,
        loss="bce",
        progress=False,
    )
    trainer.device = SimpleNamespace(type="cuda")
    trainer.model_dir = tmp_path / "a-file"
    trainer.model_dir.write_text("not a folder")
    trainer.save_checkpoint(1)
    with pytest.raises(OutputError, match="epoch-001.pt: could not write it"):
        trainer.wait_for_checkpoint()
    trainer.wait_for_checkpoint()  # raised once


def test_cpu_copy_copies_every_tensor_and_keeps_the_structure():
    weights = torch.ones(3)
    state = {"a": weights, "b": [torch.zeros(2), 1.5, "x"], "c": {"d": torch.ones(1)}}
    copied = training.cpu_copy(state)
    weights += 1
    assert torch.equal(copied["a"], torch.ones(3))
    assert copied["b"][1:] == [1.5, "x"] and torch.equal(copied["c"]["d"], torch.ones(1))
