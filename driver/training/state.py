"""The training state: everything the loop changes, in one object that a checkpoint saves and restores.

What the optimizer, scheduler and RNGs hold is saved beside it (``checkpoint``); throughput counters
describe this process only and are not saved.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from driver.models import RecurrentState

log = logging.getLogger(__name__)


SCORE_KIND = "error_ratio"  # what best_score measures; runs saved before it held the median run loss


def _best_score(training: dict) -> float:
    """The saved best score, or inf when it was measured on another scale (a run from before the error ratio:
    its next validation becomes the best, logged)."""
    if training.get("score_kind") == SCORE_KIND:
        return training["best_val_loss"]
    log.info("the saved best validation score is a median run loss (before the error-ratio score): the next "
             "validation starts the comparison afresh")
    return math.inf


def mask_state(state: RecurrentState, keep: torch.Tensor) -> RecurrentState:
    """Zero the carried state of lanes that restart (``keep`` (B,) bool False): tensors are (layers, B, hidden)."""
    if state is None:
        return None
    k = keep.to(dtype=torch.float32)[None, :, None]
    return tuple(s * k for s in state) if isinstance(state, tuple) else state * k


def state_to_cpu(state: RecurrentState):
    """A carried state as saved: on the CPU, a tuple (LSTM) as a list."""
    if state is None:
        return None
    return [s.cpu() for s in state] if isinstance(state, tuple) else state.cpu()


def state_to_device(saved, device: torch.device) -> RecurrentState:
    """A saved carried state back on ``device`` (a list becomes the LSTM's tuple)."""
    if saved is None:
        return None
    return tuple(s.to(device) for s in saved) if isinstance(saved, list) else saved.to(device)


@dataclass
class TrainingState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float = math.inf  # lowest validation score so far (evaluate.py: median over runs of the error ratio)
    bad_validations: int = 0  # validations since the best one
    best_val: dict = field(default_factory=dict)  # the best validation, with its step
    last_val: dict = field(default_factory=dict)
    best_drive: float = -math.inf  # highest closed-loop drive score so far (--eval-closed-loop)
    drive_history: list = field(default_factory=list)  # [step, validation score or None, drive score] per drive
    window: list[float] = field(default_factory=list)  # training losses since the last metrics row
    carry: RecurrentState = None  # recurrent state carried into the next step's lanes (this rank)
    error_ratios: list[float] = field(default_factory=lambda: [1.0, 1.0])  # --loss-balance: running, per target
    teacher_carry: list | None = None  # --teacher: each recurrent member's state carried along the lanes (this rank)
    # throughput of this process
    samples: int = 0
    wait_s: float = 0.0
    busy_s: float = 0.0
    steps_run: int = 0

    def to_dict(self) -> dict:
        """The saved part (plain containers and tensors: loads with ``weights_only=True``)."""
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "best_val_loss": self.best_score, "score_kind": SCORE_KIND, "bad_validations": self.bad_validations,
                "best_val": self.best_val, "last_val": self.last_val, "window": list(self.window),
                "best_drive": self.best_drive, "drive_history": [list(h) for h in self.drive_history],
                "error_ratios": list(self.error_ratios)}

    @classmethod
    def from_checkpoint(cls, training: dict, rank: int, device: torch.device) -> TrainingState:
        """The state of ``last.pt``'s ``training`` entry for ``rank`` (older checkpoints lack some fields)."""
        carry = state_to_device(training["carry"][rank] if training.get("carry") else None, device)
        teacher = training["teacher_carry"][rank] if training.get("teacher_carry") else None
        return cls(step=training["step"], epoch=training["epoch"], batch_in_epoch=training["batch_in_epoch"],
                   best_score=_best_score(training), bad_validations=training["bad_validations"],
                   best_val=dict(training.get("best_val", {})), last_val=dict(training.get("last_val", {})),
                   window=list(training.get("window", [])), carry=carry,
                   teacher_carry=None if teacher is None else [state_to_device(c, device) for c in teacher],
                   best_drive=training.get("best_drive", -math.inf),
                   drive_history=[list(h) for h in training.get("drive_history", [])],
                   error_ratios=list(training.get("error_ratios", [1.0, 1.0])))

    def carry_cpu(self):
        """The carried states on the CPU, as saved: (the model's, the teacher members' or None)."""
        teacher = None if self.teacher_carry is None else [state_to_cpu(c) for c in self.teacher_carry]
        return state_to_cpu(self.carry), teacher

    @property
    def samples_per_s(self) -> float | None:
        return self.samples / self.busy_s if self.busy_s else None

    @property
    def data_wait(self) -> float | None:
        return self.wait_s / self.busy_s if self.busy_s else None
