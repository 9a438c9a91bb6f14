import pytest
import torch
import torch.nn.functional as F

from protoseg.errors import ConfigError
from protoseg.losses import LOSSES, SegmentationLoss, get_loss, register_loss


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=generator) * 3
    target = (torch.rand(2, 1, 8, 8, generator=generator) > 0.5).float()
    return logits, target


def test_bce_matches_torch_on_logits_and_probabilities(batch):
    logits, target = batch
    assert torch.allclose(
        get_loss("bce")(logits, target), F.binary_cross_entropy_with_logits(logits, target)
    )
    probabilities = torch.sigmoid(logits)
    assert torch.allclose(
        get_loss("bce", from_logits=False)(probabilities, target),
        F.binary_cross_entropy(probabilities, target),
    )


def test_mse_is_on_probabilities(batch):
    logits, target = batch
    expected = F.mse_loss(torch.sigmoid(logits), target)
    assert torch.allclose(get_loss("mse")(logits, target), expected)
    assert torch.allclose(
        get_loss("mse", from_logits=False)(torch.sigmoid(logits), target), expected
    )


def test_soft_dice(batch):
    logits, target = batch
    p = torch.sigmoid(logits)
    expected = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert torch.allclose(get_loss("dice")(logits, target), expected)
    perfect = torch.where(target > 0, 50.0, -50.0)
    assert get_loss("dice")(perfect, target) < 1e-3
    assert get_loss("bce")(perfect, target) < 1e-3


def test_losses_run_in_float32_under_half_precision(batch):
    logits, target = batch
    for name in LOSSES:
        value = get_loss(name)(logits.half(), target)
        assert value.dtype == torch.float32


def test_bce_dice_is_the_sum_of_its_parts(batch):
    logits, target = batch
    both = get_loss("bce+dice")(logits, target)
    assert both == pytest.approx(
        float(get_loss("bce")(logits, target) + get_loss("dice")(logits, target))
    )


def test_unknown_loss_lists_known_names():
    with pytest.raises(ConfigError, match=r"train\.losses.*'focal'.*bce, bce\+dice, dice, mse"):
        get_loss("focal")


def test_registering_a_loss_makes_it_available(monkeypatch):
    monkeypatch.setattr("protoseg.losses.LOSSES", dict(LOSSES))

    @register_loss("l1")
    class L1(SegmentationLoss):
        def forward(self, output, target):
            return (self.probabilities(output) - target).abs().mean()

    from protoseg import losses

    assert "l1" in losses.loss_names()
    assert isinstance(get_loss("l1"), L1)
