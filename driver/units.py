"""The one mapping between run units, normalised model outputs and carlink per-mille values.

Run units are the lab's percentages: ``steer`` and ``motor`` in 0..99 with 49 = straight / stopped
(0 = full left, 99 = full right; 99 = full forward). Models predict normalised values in [-1, 1] with
0 = neutral. The car link carries per-mille values in -1000..1000.

The map from run units to normalised values is piecewise linear around the neutral 49 so that both ends
land exactly on -1 and +1::

    norm = (v - 49) / 49   for v <= 49     (0  -> -1)
    norm = (v - 49) / 50   for v >= 49     (99 -> +1)

and per-mille = round(1000 * norm). Every part of ``driver`` converts through these functions.
"""

from __future__ import annotations

import numpy as np

RUN_MIN = 0.0
RUN_MAX = 99.0
RUN_NEUTRAL = 49.0
_BELOW = RUN_NEUTRAL - RUN_MIN  # 49 run units below neutral
_ABOVE = RUN_MAX - RUN_NEUTRAL  # 50 run units above neutral


def run_to_norm(value):
    """Run units (0..99, 49 neutral) to normalised [-1, 1]. Works on scalars, numpy arrays and tensors."""
    if np.isscalar(value):
        centred = float(value) - RUN_NEUTRAL
        return centred / (_ABOVE if centred >= 0 else _BELOW)
    return _piecewise(value - RUN_NEUTRAL, _BELOW, _ABOVE, divide=True)


def norm_to_run(value):
    """Normalised [-1, 1] to run units (0..99, 49 neutral); the exact inverse of :func:`run_to_norm`."""
    if np.isscalar(value):
        value = float(value)
        return RUN_NEUTRAL + value * (_ABOVE if value >= 0 else _BELOW)
    return RUN_NEUTRAL + _piecewise(value, _BELOW, _ABOVE, divide=False)


def norm_to_permille(value):
    """Normalised [-1, 1] to carlink per-mille integers, clamped to -1000..1000."""
    if np.isscalar(value):
        return int(max(-1000, min(1000, round(float(value) * 1000.0))))
    return np.clip(np.rint(np.asarray(value, dtype=np.float64) * 1000.0), -1000, 1000).astype(np.int16)


def permille_to_norm(value):
    """Carlink per-mille values to normalised [-1, 1]."""
    if np.isscalar(value):
        return float(value) / 1000.0
    return np.asarray(value, dtype=np.float32) / np.float32(1000.0)


def _piecewise(x, below: float, above: float, *, divide: bool):
    """Scale negative parts of ``x`` by ``below`` and the rest by ``above`` (divide or multiply)."""
    if hasattr(x, "where") and not isinstance(x, np.ndarray):  # torch.Tensor
        import torch

        neg = torch.full_like(x, below)
        pos = torch.full_like(x, above)
        scale = torch.where(x < 0, neg, pos)
        return x / scale if divide else x * scale
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    scale = np.where(x < 0, below, above).astype(dtype)
    return (x / scale if divide else x * scale).astype(dtype, copy=False)
