"""Steadier weights: an exponential moving average of a network's weights (``train.ema``).

After every optimiser step each floating-point parameter and buffer ``w`` moves its average
``a`` by ``a = decay * a + (1 - decay) * w`` (integer buffers such as batch-norm's step count
are copied). Validation and the saved model use the average, which swings less from step to
step than the raw weights do (timm's ``ModelEmaV2``, the mean teacher); a decay of 0.999
averages over roughly the last 1,000 steps. Training itself goes on with the raw weights.
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

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step of the average towards ``model``'s current weights."""
        self.steps += 1
        for key, value in model.state_dict().items():
            average = self.average[key]
            if value.is_floating_point():
                average.mul_(self.decay).add_(value.detach().float(), alpha=1.0 - self.decay)
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
