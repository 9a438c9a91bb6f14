"""Segmentation losses by name, with one convention: they take the network's logits.

Every loss is called as ``loss(output, target)`` with ``target`` in {0, 1} (float, same
shape as ``output``). ``from_logits=True`` (the default, what training uses) means
``output`` is raw logits and the loss applies the sigmoid itself, in the numerically
stable form where there is one; ``from_logits=False`` means ``output`` is already a
probability. Losses are computed in float32 even under mixed precision.

* ``bce``: binary cross-entropy (``BCEWithLogits`` on logits);
* ``mse``: mean squared error of the probability (the study's second loss);
* ``dice``: soft Dice loss, 1 - 2|P.T| / (|P| + |T|), pooled over the batch;
* ``bce+dice``: their sum (nnU-Net's default): BCE gives every pixel a gradient, Dice keeps
  sparse cells (0.1-2 % of the pixels in real sets) from being outvoted by background.

Add a loss with :func:`register_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from protoseg.errors import ConfigError

LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str):
    """Class decorator: make a loss available to :func:`get_loss` (and config) as ``name``."""

    def decorate(cls):
        LOSSES[name] = cls
        return cls

    return decorate


class SegmentationLoss(nn.Module):
    """Base: holds ``from_logits`` and turns outputs into float32 probabilities on demand."""

    def __init__(self, from_logits: bool = True):
        super().__init__()
        self.from_logits = from_logits

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        output = output.float()
        return torch.sigmoid(output) if self.from_logits else output


@register_loss("bce")
class BCELoss(SegmentationLoss):
    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.from_logits:
            return F.binary_cross_entropy_with_logits(output.float(), target.float())
        return F.binary_cross_entropy(output.float(), target.float())


@register_loss("mse")
class MSELoss(SegmentationLoss):
    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.probabilities(output), target.float())


@register_loss("dice")
class DiceLoss(SegmentationLoss):
    def __init__(self, from_logits: bool = True, smooth: float = 1.0):
        super().__init__(from_logits)
        self.smooth = smooth  # keeps the loss defined (0) when both prediction and target are empty

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probabilities = self.probabilities(output)
        target = target.float()
        intersection = (probabilities * target).sum()
        total = probabilities.sum() + target.sum()
        return 1.0 - (2.0 * intersection + self.smooth) / (total + self.smooth)


@register_loss("bce+dice")
class BCEDiceLoss(SegmentationLoss):
    def __init__(self, from_logits: bool = True, smooth: float = 1.0):
        super().__init__(from_logits)
        self.bce = BCELoss(from_logits)
        self.dice = DiceLoss(from_logits, smooth)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce(output, target) + self.dice(output, target)


def loss_names() -> list[str]:
    return sorted(LOSSES)


def get_loss(name: str, key: str = "train.losses", **kwargs) -> nn.Module:
    """The loss registered as ``name``; an unknown name raises :class:`ConfigError` naming ``key``."""
    if name not in LOSSES:
        raise ConfigError(key, f"unknown loss '{name}'; known losses: {', '.join(loss_names())}")
    return LOSSES[name](**kwargs)


# ---------------------------------------------------------------- instance outputs
class InstanceOutputLoss(nn.Module):
    """The loss of a network's extra outputs (channels 1.., logits), fixed by the instance
    mode (:mod:`protoseg.instances`); the foreground channel keeps ``train.losses``.

    * ``boundaries``: soft Dice of the boundary probability (torch_em's ``DiceLoss``, its
      usual loss of boundary channels: boundaries are thin, so BCE alone is outvoted);
    * ``distances``: Dice of the centre and of the boundary distance, each masked to the
      true foreground: micro-sam's ``DiceBasedDistanceLoss(mask_distances_in_bg=True)``
      without its foreground term.

    ``target`` holds the foreground in channel 0 and the extra targets after it.
    """

    def __init__(self, mode: str):
        super().__init__()
        from torch_em.loss import DiceLoss as TorchEmDice

        if mode not in ("boundaries", "distances"):
            raise ValueError(f"instance mode '{mode}' has no extra outputs")
        self.mode = mode
        self.dice = TorchEmDice()

    def forward(self, extra_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probabilities = torch.sigmoid(extra_logits.float())
        target = target.float()
        if self.mode == "boundaries":
            return self.dice(probabilities, target[:, 1:])
        foreground = target[:, :1]
        total = probabilities.new_zeros(())
        for channel in range(probabilities.shape[1]):
            total = total + self.dice(
                probabilities[:, channel : channel + 1] * foreground,
                target[:, 1 + channel : 2 + channel] * foreground,
            )
        return total
