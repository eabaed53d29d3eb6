"""Open-loop scores for the benchmark table: explained variance (R²) per target, in run units.

``R² = 1 - mean((pred - y)²) / var(y)`` over the scored (valid) frames of the held-out runs: 1 is
perfect, 0 is what always predicting the held-out mean would score, and the constant predictor trained
on the training labels (their mean) scores slightly below 0.
"""

from __future__ import annotations

import math

import numpy as np


def r_squared_from_mse(mse: float | None, y: np.ndarray) -> float:
    """R² of a predictor whose mean squared error on labels ``y`` is ``mse`` (nan when undefined)."""
    y = np.asarray(y, dtype=np.float64).ravel()
    if mse is None or y.size == 0:
        return math.nan
    var = float(np.var(y))
    if var <= 0.0:
        return math.nan
    return 1.0 - float(mse) / var


def r_squared(y: np.ndarray, pred: np.ndarray) -> float:
    """R² of predictions ``pred`` for labels ``y`` (same shape)."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels have {y.size} values but predictions have {p.size}")
    return r_squared_from_mse(float(np.mean((p - y) ** 2)) if y.size else None, y)


def constant_r_squared(value: float, y: np.ndarray) -> float:
    """R² of always predicting ``value`` (e.g. the mean of the training labels)."""
    y = np.asarray(y, dtype=np.float64).ravel()
    return r_squared(y, np.full_like(y, float(value)))


def fmt(x: float | None, nd: int = 3) -> str:
    """A table cell: ``-`` for missing or nan values."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


__all__ = ["constant_r_squared", "fmt", "r_squared", "r_squared_from_mse"]
