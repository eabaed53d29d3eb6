"""Open-loop replay metrics: pure functions over predicted and human command sequences.

All values are in run units (0..99, 49 neutral; ``driver.units``). ``valid`` masks select the frames that
are scored; ``chunk`` ids (one per frame) mark stretches the policy saw without a reset (segments split at
timestamp gaps), so frame-to-frame quantities (lag, roughness) never pair frames across a reset.

Sign of the lag: ``lag = L > 0`` means the model is LATE, ``pred[t] ≈ human[t - L]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

STEER_BINS: tuple[float, ...] = (0.0, 5.0, 15.0, 30.0, math.inf)  # |human steer - 49|, run units
NEUTRAL = 49.0


def _arrays(pred, human, valid=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).ravel()
    h = np.asarray(human, dtype=np.float64).ravel()
    if p.shape != h.shape:
        raise ValueError(f"pred has {p.size} values but human has {h.size}")
    v = np.ones(p.shape, bool) if valid is None else np.asarray(valid, dtype=bool).ravel()
    if v.shape != p.shape:
        raise ValueError(f"valid has {v.size} values but pred has {p.size}")
    return p, h, v


def chunk_ids(segment: np.ndarray, timestamp: np.ndarray, max_gap_s: float) -> np.ndarray:
    """Chunk id per frame: a new chunk starts at each segment change and after a gap of >= ``max_gap_s``."""
    seg = np.asarray(segment).ravel()
    ts = np.asarray(timestamp, dtype=np.float64).ravel()
    if seg.shape != ts.shape:
        raise ValueError(f"segment has {seg.size} values but timestamp has {ts.size}")
    if seg.size == 0:
        return np.zeros(0, np.int64)
    new = np.zeros(seg.shape, bool)
    new[0] = True
    new[1:] = (seg[1:] != seg[:-1]) | (np.diff(ts) >= max_gap_s) | (np.diff(ts) < 0)
    return np.cumsum(new) - 1


def error_stats(pred, human, valid=None) -> dict:
    """MSE, MAE, RMSE, bias (mean pred − human) and |error| percentiles over the valid frames."""
    p, h, v = _arrays(pred, human, valid)
    e = p[v] - h[v]
    if e.size == 0:
        return {"n": 0, "mse": None, "mae": None, "rmse": None, "bias": None, "p50": None, "p90": None,
                "p99": None}
    a = np.abs(e)
    return {"n": int(e.size), "mse": float(np.mean(e * e)), "mae": float(a.mean()),
            "rmse": float(math.sqrt(np.mean(e * e))), "bias": float(e.mean()),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99))}


def baseline_stats(pred, human, valid=None, constant: float | None = None) -> dict:
    """The model against baselines over the valid frames: ``r2`` = 1 − SSE / SST, SST around the human's
    own mean over these frames (0 = no better than knowing that mean; < 0 worse; None when the human
    never varies), and the error of the **constant predictor** ``constant`` (the mean of the training
    labels, run units): ``const_mae``, ``const_rmse`` (None without a constant)."""
    p, h, v = _arrays(pred, human, valid)
    e, y = p[v] - h[v], h[v]
    if e.size == 0:
        return {"r2": None, "const_mae": None, "const_rmse": None}
    sst = float(np.sum((y - y.mean()) ** 2))
    c = None if constant is None else float(constant) - y
    return {"r2": 1.0 - float(np.dot(e, e)) / sst if sst > 1e-9 else None,
            "const_mae": None if c is None else float(np.abs(c).mean()),
            "const_rmse": None if c is None else float(math.sqrt(np.mean(c * c)))}


def bin_label(lo: float, hi: float) -> str:
    return f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}"


def errors_by_steer_bin(pred, human, valid=None, bins: Sequence[float] = STEER_BINS) -> list[dict]:
    """Count and MAE of steering error per bin of human steering magnitude ``|human − 49|`` (run units).

    Straights dominate driving data and hide curve errors; this splits them apart. Bins are [lo, hi).
    """
    p, h, v = _arrays(pred, human, valid)
    mag = np.abs(h - NEUTRAL)
    out = []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        m = v & (mag >= lo) & (mag < hi)
        n = int(m.sum())
        out.append({"bin": bin_label(lo, hi), "count": n,
                    "mae": float(np.abs(p[m] - h[m]).mean()) if n else None})
    return out


def lag_curve(pred, human, valid=None, chunk=None, max_lag: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Sum of squared error and pair count for each lag in ``-max_lag..max_lag`` (pairs ``pred[t]``,
    ``human[t − lag]``, both valid and in the same chunk). Sums pool across runs by adding."""
    p, h, v = _arrays(pred, human, valid)
    c = np.zeros(p.shape, np.int64) if chunk is None else np.asarray(chunk).ravel()
    if max_lag < 0:
        raise ValueError(f"max_lag={max_lag} must be >= 0")
    lags = np.arange(-max_lag, max_lag + 1)
    sse, cnt = np.zeros(len(lags)), np.zeros(len(lags), np.int64)
    n = p.size
    for k, lag in enumerate(lags):
        if abs(lag) >= n:
            continue
        if lag >= 0:
            pp, hh, vp, vh, cp, ch = p[lag:], h[: n - lag], v[lag:], v[: n - lag], c[lag:], c[: n - lag]
        else:
            pp, hh, vp, vh, cp, ch = p[: n + lag], h[-lag:], v[: n + lag], v[-lag:], c[: n + lag], c[-lag:]
        m = vp & vh & (cp == ch)
        d = pp[m] - hh[m]
        sse[k], cnt[k] = float(np.dot(d, d)), int(m.sum())
    return sse, cnt


def best_lag_from_curve(sse: np.ndarray, cnt: np.ndarray) -> int | None:
    """The lag with the smallest mean squared error (ties: the smallest |lag|); None with no pairs."""
    max_lag = (len(sse) - 1) // 2
    lags = np.arange(-max_lag, max_lag + 1)
    ok = cnt > 0
    if not ok.any():
        return None
    mse = np.where(ok, sse / np.maximum(cnt, 1), np.inf)
    best = np.flatnonzero(mse <= mse.min() + 1e-12)
    return int(lags[best[np.argmin(np.abs(lags[best]))]])


def best_lag(pred, human, valid=None, chunk=None, max_lag: int = 30) -> int | None:
    """Frames by which the model lags the human (min-MSE alignment; + = model late)."""
    return best_lag_from_curve(*lag_curve(pred, human, valid, chunk, max_lag))


def step_sums(x, valid=None, chunk=None) -> tuple[float, int]:
    """Sum of ``|x[t] − x[t−1]|`` and the number of such pairs (both valid, same chunk)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    v = np.ones(a.shape, bool) if valid is None else np.asarray(valid, dtype=bool).ravel()
    c = np.zeros(a.shape, np.int64) if chunk is None else np.asarray(chunk).ravel()
    if a.size < 2:
        return 0.0, 0
    m = v[1:] & v[:-1] & (c[1:] == c[:-1])
    return float(np.abs(np.diff(a))[m].sum()), int(m.sum())


def roughness(x, valid=None, chunk=None) -> float | None:
    """Mean ``|Δx|`` per frame (run units): 0 for a constant output; None with no frame pairs."""
    s, n = step_sums(x, valid, chunk)
    return s / n if n else None


def worst_moments(pred, human, valid=None, k: int = 20, min_separation: int = 0) -> list[int]:
    """Indices of the ``k`` valid frames with the largest |pred − human|, largest first (ties: earlier).

    ``min_separation`` > 0 keeps at most one frame per window of that many frames (one moment, not its
    neighbours)."""
    p, h, v = _arrays(pred, human, valid)
    err = np.where(v, np.abs(p - h), -1.0)
    order = np.argsort(-err, kind="stable")
    picked: list[int] = []
    for i in order:
        if err[i] < 0 or len(picked) >= k:
            break
        if min_separation and any(abs(int(i) - j) < min_separation for j in picked):
            continue
        picked.append(int(i))
    return picked
