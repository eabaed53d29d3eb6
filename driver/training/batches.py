"""Epoch plans: which clips each training step reads, fixed in advance so a resume can skip exactly.

A plan is ``(indices (steps, B), reset (steps, B))`` made deterministically from (seed, epoch, rank).

- Frame models: clips drawn uniformly or steering-balanced (the lab's low/high split).
- Recurrent models (truncated BPTT): B *lanes*, each walking through consecutive clips of one run, so
  the state carried from chunk k (detached) meets chunk k+1 where it left off. A lane jumps to a new
  random clip, with zero state, when its run's valid stretch ends; and with probability
  ``zero_state_prob`` a lane restarts from zero state in place, so the model also learns to drive from
  a fresh reset; with probability ``lane_jump`` it jumps to a new random clip (zero state), so that
  consecutive steps see more of the data than 16 slowly walking lanes do. The first ``random_clip_epochs``
  epochs draw every clip at random with zero state (a curriculum: the encoder first learns from independent
  places, as a frame model's does, and the lanes teach the carried state after); given as a share of the
  training, :func:`curriculum_epochs` turns it into that count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driver.datasets.clips import ClipDataset
from driver.datasets.sampling import balanced_draw

_RUN_KEY = 1 << 32


@dataclass
class EpochPlan:
    indices: np.ndarray  # (steps, B) int64 dataset indices
    reset: np.ndarray  # (steps, B) bool: start this lane from zero state at this step

    def __len__(self) -> int:
        return len(self.indices)


def _rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, rank, 7919])


def curriculum_epochs(share: float, epochs: int, done: int = 0, switch: int | None = None) -> int:
    """How many first epochs draw random clips for a curriculum over the first ``share`` of ``epochs``, with
    ``done`` epochs trained: never fewer than those done, and once the lanes have started (``done > switch``,
    the count so far) it stays put, so a budget that re-plans the epochs never goes back to random clips."""
    if switch is not None and done > switch:
        return switch
    return max(done, round(share * epochs)) if share else 0


class PlanMaker:
    """Makes the plan of every epoch for one rank's training dataset."""

    def __init__(self, dataset: ClipDataset, batch_size: int, steps_per_epoch: int, recurrent: bool,
                 balance: bool, zero_state_prob: float, seed: int, rank: int = 0, lane_jump: float = 0.0,
                 random_clip_epochs: int = 0):
        self.ds, self.batch, self.recurrent, self.lane_jump = dataset, batch_size, recurrent, lane_jump
        self.random_clip_epochs = random_clip_epochs
        self.zero_state_prob, self.seed, self.rank = zero_state_prob, seed, rank
        n = len(dataset)
        self.steps = steps_per_epoch or max(1, n // (batch_size * (dataset.config.clip_length if recurrent else 1)))
        self.high = dataset.high_steer() if balance else None
        if self.high is not None and (self.high.all() or not self.high.any()):
            self.high = None  # nothing to balance
        runs, starts = dataset.clip_index()
        self._keys = runs.astype(np.int64) * _RUN_KEY + starts  # sorted: clips are listed run by run
        self._step = dataset.config.clip_length * dataset.config.frame_stride

    def _random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.high is None:
            return rng.integers(0, len(self.ds), n)
        return balanced_draw(rng, n, self.high)

    def plan(self, epoch: int) -> EpochPlan:
        rng = _rng(self.seed, epoch, self.rank)
        if not self.recurrent or epoch < self.random_clip_epochs:
            idx = self._random(rng, self.steps * self.batch).reshape(self.steps, self.batch)
            return EpochPlan(idx, np.ones_like(idx, dtype=bool))
        idx = np.empty((self.steps, self.batch), np.int64)
        reset = np.zeros((self.steps, self.batch), bool)
        lanes = self._random(rng, self.batch)
        reset[0] = True
        idx[0] = lanes
        for k in range(1, self.steps):
            nxt = self._keys[lanes] + self._step
            pos = np.searchsorted(self._keys, nxt)
            pos_ok = np.minimum(pos, len(self._keys) - 1)
            found = (pos < len(self._keys)) & (self._keys[pos_ok] == nxt)
            jump = ~found
            if self.lane_jump > 0:  # drawn only when asked, so plans without it stay as they were
                jump |= rng.random(self.batch) < self.lane_jump
            lanes = np.where(found, pos_ok, lanes)
            if jump.any():
                lanes[jump] = self._random(rng, int(jump.sum()))
            fresh = rng.random(self.batch) < self.zero_state_prob
            reset[k] = jump | fresh
            idx[k] = lanes
        return EpochPlan(idx, reset)
