import numpy as np
import pytest
import torch

from protoseg.errors import ConfigError, InputError
from protoseg.model import (
    UNet,
    architecture_from_config,
    fold_batch_norm,
    load_model,
    save_model,
)

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("depth", "in_channels", "upsample", "size"),
    [
        (1, 1, "transpose", (16, 16)),
        (2, 3, "bilinear", (16, 24)),
        (3, 3, "transpose", (17, 23)),
        (4, 1, "bilinear", (32, 32)),
    ],
)
def test_output_is_one_logit_map_of_the_input_size(depth, in_channels, upsample, size):
    model = UNet(in_channels=in_channels, depth=depth, base_channels=2, upsample=upsample).eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_channels, *size))
    assert out.shape == (2, 1, *size)


def test_depth_and_batch_norm_change_the_network():
    shallow = UNet(depth=1, base_channels=2)
    deep = UNet(depth=3, base_channels=2)
    assert sum(p.numel() for p in deep.parameters()) > sum(p.numel() for p in shallow.parameters())
    assert any(
        isinstance(m, torch.nn.BatchNorm2d)
        for m in UNet(depth=1, base_channels=2, batch_norm=True).modules()
    )
    assert not any(
        isinstance(m, torch.nn.BatchNorm2d)
        for m in UNet(depth=1, base_channels=2, batch_norm=False).modules()
    )


def test_bad_architecture_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"model\.upsample"):
        UNet(upsample="nearest")
    with pytest.raises(ConfigError, match=r"model\.depth"):
        UNet(depth=0)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = UNet(in_channels=3, depth=2, base_channels=4).eval()
    save_model(tmp_path / "model.pt", model, {"loss": "bce", "epochs": 3})
    loaded, meta = load_model(
        tmp_path / "model.pt", "cpu", expected_architecture=model.architecture
    )
    assert meta == {"loss": "bce", "epochs": 3}
    assert loaded.architecture == model.architecture
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint_of_another_architecture_is_named(tmp_path):
    path = tmp_path / "model.pt"
    save_model(path, UNet(in_channels=3, depth=2, base_channels=4))
    expected = architecture_from_config({"depth": 3, "base_channels": 4}, in_channels=3)
    with pytest.raises(
        InputError,
        match=r"model\.pt: checkpoint of another architecture \(depth: file has 2, expected 3",
    ):
        load_model(path, expected_architecture=expected)


def test_weights_that_do_not_fit_are_named(tmp_path):
    path = tmp_path / "model.pt"
    save_model(path, UNet(in_channels=3, depth=2, base_channels=4))
    payload = torch.load(path, weights_only=True)
    payload["architecture"]["base_channels"] = 8  # architecture and weights disagree
    torch.save(payload, path)
    with pytest.raises(InputError, match=r"model\.pt: weights do not fit"):
        load_model(path)


def test_foreign_file_is_named(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(InputError, match=r"other\.pt: not a protoseg U-Net checkpoint"):
        load_model(path)
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing.pt")


def trained_looking_unet(**architecture) -> UNet:
    """A U-Net whose batch norms have statistics and affine terms far from their defaults,
    as after training (folding defaults would hide a wrong formula)."""
    torch.manual_seed(3)
    model = UNet(**architecture)
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.2, 3)
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_folding_batch_norm_keeps_the_function_and_leaves_the_network(upsample):
    model = trained_looking_unet(in_channels=2, depth=2, base_channels=4, upsample=upsample)
    model.train()  # as during training, when validation builds a segmenter of it
    before = {key: value.clone() for key, value in model.state_dict().items()}
    folded = fold_batch_norm(model)
    assert folded is not model and not folded.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert folded.architecture == model.architecture
    # The original is left as it was: still training, same weights, still normalising.
    assert model.training
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    x = torch.rand(2, 2, 20, 28)
    with torch.no_grad():
        expected = model.eval()(x)
        np.testing.assert_allclose(folded(x).numpy(), expected.numpy(), atol=1e-5, rtol=1e-5)


def test_folding_a_network_without_batch_norm_returns_it():
    plain = UNet(in_channels=1, depth=1, base_channels=2, batch_norm=False)
    assert fold_batch_norm(plain) is plain
    not_a_module = object()
    assert fold_batch_norm(not_a_module) is not_a_module
