"""An exponential moving average of the weights (Polyak averaging, as timm's ``ModelEma``), ``--ema DECAY``.

After every optimiser step the average moves towards the trained weights: ``avg += (1 - d) * (w - avg)``,
with ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the first steps are not averaged with the
random initialisation (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``). Floating-point
buffers (BatchNorm's running statistics) are averaged alike and integer ones copied; with precise BatchNorm
(the default) they are recomputed for the average before every validation and the last checkpoint anyway.

The average is the model that is validated, chosen as ``best.pt``, driven by ``--eval-closed-loop`` and saved as
every checkpoint's ``model`` (what ``driver replay``, ``driver drive`` and export load); the trained weights
travel in ``last.pt``'s training state, so a resume continues both exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP_UPDATES = 10  # (1 + n) / (10 + n) reaches d after (10 d - 1) / (1 - d) updates: 0.999 after ~9,000


class WeightAverage:
    """A frozen copy of ``model`` whose weights follow the trained ones as an exponential moving average."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema={decay} must be in (0, 1) (0 turns the average off)")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (WARMUP_UPDATES + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s weights and buffers (call after each optimiser step)."""
        keep = self.current_decay()
        averaged, trained = [], []
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.is_floating_point():
                averaged.append(mine)
                trained.append(theirs.to(mine.dtype))
            else:
                mine.copy_(theirs)
        torch._foreach_lerp_(averaged, trained, 1.0 - keep)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay}

    def load(self, weights: dict, state: dict) -> None:
        """Restore the average from a checkpoint: its ``model`` weights and ``training["weight_average"]``."""
        self.model.load_state_dict(weights)
        self.updates = int(state["updates"])
