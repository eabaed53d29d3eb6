"""The training state: everything the loop changes, in one object that a checkpoint saves and restores.

What the optimizer, scheduler and RNGs hold is saved beside it (``checkpoint``); throughput counters
describe this process only and are not saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from driver.models import RecurrentState


@dataclass
class TrainingState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float = math.inf  # lowest validation score so far (median over runs of the run loss)
    bad_validations: int = 0  # validations since the best one
    best_val: dict = field(default_factory=dict)  # the best validation, with its step
    last_val: dict = field(default_factory=dict)
    best_drive: float = -math.inf  # highest closed-loop drive score so far (--eval-closed-loop)
    drive_history: list = field(default_factory=list)  # [step, validation score or None, drive score] per drive
    window: list[float] = field(default_factory=list)  # training losses since the last metrics row
    carry: RecurrentState = None  # recurrent state carried into the next step's lanes (this rank)
    # throughput of this process
    samples: int = 0
    wait_s: float = 0.0
    busy_s: float = 0.0
    steps_run: int = 0

    def to_dict(self) -> dict:
        """The saved part (plain containers and tensors: loads with ``weights_only=True``)."""
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "best_val_loss": self.best_score, "bad_validations": self.bad_validations,
                "best_val": self.best_val, "last_val": self.last_val, "window": list(self.window),
                "best_drive": self.best_drive, "drive_history": [list(h) for h in self.drive_history]}

    @classmethod
    def from_checkpoint(cls, training: dict, rank: int, device: torch.device) -> TrainingState:
        """The state of ``last.pt``'s ``training`` entry for ``rank`` (older checkpoints lack some fields)."""
        carry = training["carry"][rank] if training.get("carry") else None
        carry = tuple(c.to(device) for c in carry) if isinstance(carry, list) else carry
        carry = carry.to(device) if isinstance(carry, torch.Tensor) else carry
        return cls(step=training["step"], epoch=training["epoch"], batch_in_epoch=training["batch_in_epoch"],
                   best_score=training["best_val_loss"], bad_validations=training["bad_validations"],
                   best_val=dict(training.get("best_val", {})), last_val=dict(training.get("last_val", {})),
                   window=list(training.get("window", [])), carry=carry,
                   best_drive=training.get("best_drive", -math.inf),
                   drive_history=[list(h) for h in training.get("drive_history", [])])

    def carry_cpu(self):
        """The carried state on the CPU, as saved (a tuple becomes a list)."""
        if self.carry is None:
            return None
        return [c.cpu() for c in self.carry] if isinstance(self.carry, tuple) else self.carry.cpu()

    @property
    def samples_per_s(self) -> float | None:
        return self.samples / self.busy_s if self.busy_s else None

    @property
    def data_wait(self) -> float | None:
        return self.wait_s / self.busy_s if self.busy_s else None
