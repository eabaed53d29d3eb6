"""Train/validation split by run, and the lab's steering-balanced sampler."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def split_runs(runs: Sequence[str], val_fraction: float = 0.1, seed: int = 0,
               val_runs: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Split run names into (train, val), never splitting a run.

    ``val_runs`` names the validation runs explicitly; otherwise ``ceil(val_fraction * len(runs))`` runs
    (at least one when there are two or more) are drawn with ``seed``, independent of the input order.
    """
    names = sorted(set(runs))
    if len(names) != len(runs):
        raise ValueError("runs contains duplicate names")
    if val_runs is not None:
        unknown = sorted(set(val_runs) - set(names))
        if unknown:
            raise ValueError(f"val_runs names runs not in the store: {unknown}")
        val = sorted(set(val_runs))
        return [n for n in names if n not in val], val
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    n_val = math.ceil(val_fraction * len(names)) if val_fraction > 0 else 0
    if val_fraction > 0 and len(names) >= 2:
        n_val = max(1, min(n_val, len(names) - 1))
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    return [n for n in names if n not in val], val


LOW_HIGH_STEER = (43.0, 55.0)  # the lab's "high steer" band, run units


def lab_smooth(steer: np.ndarray) -> np.ndarray:
    """The lab's causal steering smoother: (s_i + 0.5 s_{i-1} + 0.25 s_{i-2}) / 1.75."""
    s = np.asarray(steer, dtype=np.float64)
    prev1 = np.concatenate([s[:1], s[:-1]])
    prev2 = np.concatenate([s[:1], s[:1], s[:-2]])[: len(s)]
    return (s + 0.5 * prev1 + 0.25 * prev2) / 1.75


def balanced_draw(rng: np.random.Generator, n: int, high: np.ndarray) -> np.ndarray:
    """``n`` clip indices, each from the high-steer clips (``high`` True) or the low ones with even odds, as the
    lab sampled; uniform over all clips when one side is empty. The one balanced draw: training's epoch
    plans (driver.training.batches) and :class:`SteerBalancedSampler` both use it."""
    high = np.asarray(high, dtype=bool)
    hi, lo = np.flatnonzero(high), np.flatnonzero(~high)
    if len(hi) == 0 or len(lo) == 0:
        return rng.integers(0, len(high), n)
    pick_hi = rng.random(n) < 0.5
    return np.where(pick_hi, hi[rng.integers(0, len(hi), n)], lo[rng.integers(0, len(lo), n)])


class SteerBalancedSampler(Sampler[int]):
    """Draw clips half from low-steer and half from high-steer starts, as the lab did.

    ``high`` marks clips whose smoothed start steering is outside the lab's 43..55 band
    (``ClipDataset.high_steer()``). Deterministic per ``seed`` and epoch (``set_epoch``).
    """

    def __init__(self, high: np.ndarray, num_samples: int | None = None, seed: int = 0):
        self.high = np.asarray(high, dtype=bool)
        n_high = int(self.high.sum())
        if n_high == 0 or n_high == len(self.high):
            raise ValueError(f"steer-balanced sampling needs both low and high steering clips; found "
                             f"{len(self.high) - n_high} low and {n_high} high")
        self.num_samples = int(num_samples or len(high))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(balanced_draw(rng, self.num_samples, self.high).tolist())


def high_steer_mask(steer_run_units: np.ndarray, band: tuple[float, float] = LOW_HIGH_STEER) -> np.ndarray:
    """True where the lab-smoothed steering (run units) is outside ``band``."""
    smooth = lab_smooth(steer_run_units)
    return (smooth < band[0]) | (smooth > band[1])
