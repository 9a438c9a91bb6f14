"""Steadier weights: an exponential moving average of a network's weights (``train.ema``).

After every optimiser step each floating-point parameter and buffer ``w`` moves its average
``a`` by ``a = d * a + (1 - d) * w`` (integer buffers such as batch-norm's step count are
copied). Validation and the saved model use the average, which swings less from step to
step than the raw weights do (timm's ``ModelEmaV2``, the mean teacher). Training itself goes
on with the raw weights.

The decay ``d`` of step ``n`` is ``min(decay, (1 + n) / (10 + n))``, the warm-up of
TensorFlow's ``ExponentialMovingAverage`` (``num_updates``) and of ``torch_ema``: without it
the random initial weights keep ``decay ** n`` of the average (0.999 ** 1728 = 18 % at the
end of an aiSEGcell run, 82 % at its first validation), and the average of a run of a few
thousand steps is not a network. With it the initial weights are gone within tens of
steps, and ``decay`` itself applies only after ``(10 * decay - 1) / (1 - decay)`` steps
(8,990 for 0.999): in shorter runs the average spans about the last ``n / 9`` steps.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class WeightAverage:
    """The moving average of ``model``'s state (parameters and buffers), kept in float32 on
    the model's device."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < float(decay) < 1:
            raise ValueError(f"the EMA decay must lie between 0 and 1, got {decay}")
        self.decay = float(decay)
        self.average = {
            key: value.detach().clone().float() if value.is_floating_point() else value.clone()
            for key, value in model.state_dict().items()
        }
        self.steps = 0

    def next_decay(self) -> float:
        """The decay of the next step: ``decay``, or less while few steps are averaged."""
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step of the average towards ``model``'s current weights."""
        decay = self.next_decay()
        self.steps += 1
        for key, value in model.state_dict().items():
            average = self.average[key]
            if value.is_floating_point():
                average.mul_(decay).add_(value.detach().float(), alpha=1.0 - decay)
            else:
                average.copy_(value)

    def weights(self, like: torch.nn.Module) -> dict:
        """The average as a state dict of ``like``'s dtypes (for load_state_dict)."""
        current = like.state_dict()
        return {key: value.to(current[key].dtype) for key, value in self.average.items()}

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """``model`` holds the averaged weights inside the block, its own ones after."""
        raw = {key: value.detach().clone() for key, value in model.state_dict().items()}
        model.load_state_dict(self.weights(model))
        try:
            yield model
        finally:
            model.load_state_dict(raw)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.steps = float(state["decay"]), int(state["steps"])
        for key, value in state["average"].items():
            self.average[key].copy_(value)
