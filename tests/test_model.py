import pytest
import torch

from protoseg.errors import ConfigError, InputError
from protoseg.model import UNet, architecture_from_config, load_model, save_model

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
