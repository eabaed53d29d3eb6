"""The training loss and held-out validation that tells the truth: per target and per run, beside baselines.

The **constant predictor** always outputs the mean of the training labels (steer, motor); a model that does
not beat it has learned nothing from the pictures. Validation reports, per target and per held-out run, in
run units (0..99) on the first predicted step:

- ``mae``, ``rmse``: the model's error; ``const_mae``, ``const_rmse``: the constant predictor's;
- ``r2``: explained variance, ``1 - SSE / SST`` with SST around the held-out frames' own mean (0 = no better
  than knowing that mean, < 0 = worse).

``loss`` pools every held-out clip. ``score`` chooses ``best.pt``: per run, the **weighted geometric mean over
targets of the model's MSE ÷ the constant predictor's** (weights ``steer_weight``, ``motor_weight``; 1.0 = no
better than the constant, 0.5 = half its squared error), then the **median over runs**, so one run where the
driver lost control cannot dominate it. A ratio, not the loss: where one target is barely predictable from the
pictures (an expert's throttle, R² ~0.1), its validation loss swings by more than the other target's whole
remaining error, and a loss-chosen ``best.pt`` was an early checkpoint whose steering was worse (issue 18);
in ratios, halving either target's error counts the same. Without label statistics (no constant predictor)
``score`` is the median run loss. Recurrent models are validated as they drive: along each stretch of a held-out
run, clip after clip with the state carried.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Subset, default_collate

from driver.datasets.clips import ClipDataset
from driver.preprocess import frames_to_input
from driver.units import norm_to_run

from . import distributed as ddp
from .config import TrainConfig

TARGETS = ("steer", "motor")
MIN_STD = 0.1  # normalised units (5 run units): a target that varies less is weighted as if it varied this much
MIN_VARIATION = 5.0  # run units: a target whose constant-predictor RMSE is below this leaves nothing to learn
SCORE_EPS = 1.0  # run units²: squared errors this small are noise in the score's ratios (RMSE 1 of 0..99)


@dataclass(frozen=True)
class LabelStats:
    """Training labels in normalised units: ``mean`` (the constant predictor) and the variance of the targets
    as the model sees them (horizontal flips negate steering), per target (steer, motor)."""

    mean: tuple[float, float]
    var: tuple[float, float]

    @classmethod
    def of(cls, dataset: ClipDataset, flip: float) -> LabelStats:
        steer, motor = dataset.labels_at_starts()
        steer_mean_seen = (1.0 - 2.0 * flip) * float(steer.mean())
        var = (float(np.mean(steer**2)) - steer_mean_seen**2, float(motor.var()))
        return cls((float(steer.mean()), float(motor.mean())), tuple(max(v, MIN_STD**2) for v in var))

    def seen_mean(self, flip: float) -> tuple[float, float]:
        """The mean of the targets as the model sees them (the best constant under flip augmentation)."""
        return (1.0 - 2.0 * flip) * self.mean[0], self.mean[1]

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_run_units": [float(norm_to_run(m)) for m in self.mean]}

    @classmethod
    def from_dict(cls, d: dict) -> LabelStats:
        return cls(tuple(d["mean"]), tuple(d["var"]))


def target_weights(config: TrainConfig, stats: LabelStats | None, device, dtype,
                   balance: tuple[float, float] | None = None) -> torch.Tensor:
    """Per-target loss weights: steer_weight, motor_weight, each / the target's variance with target_norm,
    each x ``balance`` (:func:`balance_factors`) when given."""
    w = [config.steer_weight, config.motor_weight]
    if stats is not None and config.target_norm:
        w = [wi / vi for wi, vi in zip(w, stats.var, strict=True)]
    if balance is not None:
        w = [wi * bi for wi, bi in zip(w, balance, strict=True)]
    return torch.tensor(w, device=device, dtype=dtype)


BALANCE_MOMENTUM = 0.98  # the running error ratio follows about the last 50 steps


def running_error_ratios(ratios: list[float], out: torch.Tensor, target: torch.Tensor,
                         stats: LabelStats) -> list[float]:
    """``ratios`` (per target) moved towards this batch's: each target's squared error ÷ its training variance
    (1.0 = the constant predictor), an exponential average over about the last 50 steps."""
    mse = ((out.detach().float() - target) ** 2).flatten(0, -2).mean(0).tolist()
    return [BALANCE_MOMENTUM * r + (1 - BALANCE_MOMENTUM) * m / v
            for r, m, v in zip(ratios, mse, stats.var, strict=True)]


def balance_factors(config: TrainConfig, error_ratios: list[float]) -> tuple[float, float]:
    """``--loss-balance``: each target's weight x 1 / its running error ratio, rescaled so that the weights
    keep their sum (the loss stays at the constant predictor's 1.0 scale, gradient clipping means the same).
    The gradient is then that of the weighted sum of log error ratios, the quantity the validation score
    measures: halving either target's error counts the same, and a barely predictable target (an expert's
    acceleration command) no longer outweighs one the model has nearly learned."""
    w = (config.steer_weight, config.motor_weight)
    inv = [1.0 / max(r, 1e-4) for r in error_ratios]
    scale = sum(w) / max(sum(wi * i for wi, i in zip(w, inv, strict=True)), 1e-12)
    return tuple(i * scale for i in inv)


def per_clip_loss(out: torch.Tensor, target: torch.Tensor, config: TrainConfig,
                  stats: LabelStats | None = None, balance: tuple[float, float] | None = None) -> torch.Tensor:
    """(B,) loss of each clip over (T, horizon, 2): MSE or Huber, targets weighted per :func:`target_weights`,
    divided by the sum of steer_weight and motor_weight. With ``target_norm`` the constant predictor scores
    1.0 on the training distribution. With ``throttle_excess_weight`` k > 1 the motor error counts k times
    where the prediction is above the label (more throttle or less brake than the expert: the error that
    enters corners too fast), so the model errs towards braking. With ``brake_weight`` b > 1 the motor error
    counts b times where the label brakes (below neutral), whatever side the prediction is on: the rare
    labels before the sharpest corners, and not the labels of the straights."""
    weights = target_weights(config, stats, out.device, out.dtype, balance)
    per = F.huber_loss(out, target, reduction="none", delta=0.1) if config.loss == "huber" else (out - target) ** 2
    k = getattr(config, "throttle_excess_weight", 1.0)  # configs of older checkpoints lack these two
    b = getattr(config, "brake_weight", 1.0)
    if k != 1.0 or b != 1.0:
        motor = per[..., 1]
        if k != 1.0:  # risk-averse motor: too much throttle (too little brake) costs k times as much as too little
            motor = torch.where(out[..., 1] > target[..., 1], k * motor, motor)
        if b != 1.0:  # the driver brakes here: the error counts b times
            motor = torch.where(target[..., 1] < 0, b * motor, motor)
        per = torch.cat([per[..., :1], motor.unsqueeze(-1)], -1)
    return (per * weights).sum(-1).flatten(1).mean(1) / (config.steer_weight + config.motor_weight)


def weighted_loss(out: torch.Tensor, target: torch.Tensor, config: TrainConfig,
                  stats: LabelStats | None = None, balance: tuple[float, float] | None = None) -> torch.Tensor:
    """The training loss: the mean of :func:`per_clip_loss`."""
    return per_clip_loss(out, target, config, stats, balance).mean()


def val_indices(n: int, max_clips: int, world: int, rank: int) -> list[int]:
    """At most ``max_clips`` evenly spaced clips, split across ranks."""
    idx = np.unique(np.linspace(0, n - 1, min(n, max_clips)).astype(np.int64))
    return idx[rank::world].tolist()


def val_chains(dataset: ClipDataset, max_clips: int, world: int, rank: int) -> list[list[int]]:
    """Recurrent validation: chains of consecutive clips (each starting where the previous one ended), one per
    stretch of valid frames, each cut to its first ``k`` clips so that at most ``max_clips`` are scored
    (every run keeps its share); split across ranks."""
    runs, starts = dataset.clip_index()
    step = dataset.config.clip_length * dataset.config.frame_stride
    breaks = np.flatnonzero((np.diff(starts) != 1) | (np.diff(runs) != 0)) + 1
    chains = [list(range(a, b, step)) for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(starts)], strict=True)]
    if len(chains) > max_clips:
        chains = [chains[i] for i in np.unique(np.linspace(0, len(chains) - 1, max_clips).astype(int))]
    k = 1
    while k < max(map(len, chains)) and sum(min(len(c), k + 1) for c in chains) <= max_clips:
        k += 1
    return [c[:k] for c in chains][rank::world]


def collate_clips(dataset, indices: list[int]) -> dict:
    """The items at ``indices`` as one batch."""
    return default_collate([dataset[i] for i in indices])


def _val_batches(net, dataset: ClipDataset, config: TrainConfig, device, autocast, dist_info):
    """(batch, model output) over the validation clips: frame models on evenly spaced clips; recurrent models
    along :func:`val_chains` with the state carried from clip to clip, as on the car (zero state at each
    chain's start)."""
    lanes = max(1, config.batch_size // 2)
    if not getattr(getattr(net, "module", net), "is_recurrent", False):  # DDP wraps the model in .module
        idx = val_indices(len(dataset), config.val_clips, dist_info.world, dist_info.rank)
        for i in range(0, len(idx), lanes):
            batch = collate_clips(dataset, idx[i:i + lanes])
            yield batch, forward_batch(net, batch, None, config, device, autocast)[0]
        return
    chains = sorted(val_chains(dataset, config.val_clips, dist_info.world, dist_info.rank), key=len, reverse=True)
    for g in range(0, len(chains), lanes):
        group, state = chains[g:g + lanes], None
        for pos in range(len(group[0])):
            active = [c[pos] for c in group if len(c) > pos]  # longest first: the active lanes are a prefix
            state = None if state is None else _first_lanes(state, len(active))
            batch = collate_clips(dataset, active)
            out, state = forward_batch(net, batch, state, config, device, autocast)
            yield batch, out


def batch_speed(batch: dict, device) -> torch.Tensor | None:
    """The clips' speed (B, T) m/s on ``device`` when the items carry it (speed input), else None."""
    speed = batch.get("speed")
    return None if speed is None else speed.to(device, non_blocking=True)


def forward_batch(net, batch: dict, state, config: TrainConfig, device, autocast):
    """The model's (float) output and state for a batch, as training feeds it."""
    x = frames_to_input(batch["frames"].to(device), channels_last=config.channels_last)
    with autocast():
        out, state = net(x, batch["modes"].to(device), state, speed=batch_speed(batch, device))
    return out.float(), state


def _first_lanes(state, n: int):
    return tuple(s[:, :n] for s in state) if isinstance(state, tuple) else state[:, :n]


# Per-run sums: clips, loss, frames, then per target: |e|, e^2, |c-y|, (c-y)^2, y, y^2 (run units).
_SUMS = 3 + 6 * len(TARGETS)


@torch.no_grad()
def evaluate(net, dataset: ClipDataset, config: TrainConfig, device, autocast, dist_info,
             stats: LabelStats | None = None) -> dict:
    """Validation metrics over held-out clips (see the module docstring and :func:`_val_batches`). Without
    ``stats`` the constant-predictor fields are None."""
    net.eval()
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    sums = np.zeros((len(base.runs), _SUMS))
    const = None if stats is None else torch.tensor([float(norm_to_run(m)) for m in stats.mean])
    for batch, out in _val_batches(net, dataset, config, device, autocast, dist_info):
        target = batch["target"].to(device)
        loss = per_clip_loss(out, target, config, stats).cpu().double().numpy()
        pred = norm_to_run(out[..., 0, :].clamp(-1, 1).cpu()).double()  # (B, T, 2) first step
        true = norm_to_run(target[..., 0, :].cpu()).double()
        runs = batch["run"].numpy()
        cols = [np.ones(len(runs)), loss, np.full(len(runs), true.shape[1])]
        for t in range(len(TARGETS)):
            e, y = pred[..., t] - true[..., t], true[..., t]
            c = (const[t] - y) if const is not None else torch.zeros_like(y)
            cols += [e.abs().sum(1), (e * e).sum(1), c.abs().sum(1), (c * c).sum(1), y.sum(1), (y * y).sum(1)]
        np.add.at(sums, runs, np.stack([np.asarray(c, dtype=np.float64) for c in cols], 1))
    sums = np.asarray(ddp.all_reduce_sum(sums.ravel().tolist(), dist_info, device)).reshape(sums.shape)
    return _metrics(sums, base.runs, stats is not None, (config.steer_weight, config.motor_weight))


def _target_metrics(s: np.ndarray, frames: float, has_const: bool) -> dict:
    abs_e, sq_e, abs_c, sq_c, y, y2 = (float(v) for v in s)  # plain floats: checkpoints load weights_only
    sst = y2 - y * y / frames
    return {"mae": abs_e / frames, "rmse": math.sqrt(sq_e / frames),
            "const_mae": abs_c / frames if has_const else None,
            "const_rmse": math.sqrt(sq_c / frames) if has_const else None,
            "r2": 1.0 - sq_e / sst if sst > 1e-9 else None}


def error_ratio(targets: dict, weights: tuple[float, float]) -> float:
    """One block's score (see the module docstring) from its per-target metrics (:func:`_target_metrics`, run
    units): the ``weights``-weighted geometric mean over targets of (MSE + SCORE_EPS) ÷ (the constant
    predictor's MSE, at least MIN_VARIATION², + SCORE_EPS). 1.0 = the constant predictor; lower is better."""
    logs = sum(w * math.log((targets[name]["rmse"] ** 2 + SCORE_EPS) /
                            (max(targets[name]["const_rmse"], MIN_VARIATION) ** 2 + SCORE_EPS))
               for name, w in zip(TARGETS, weights, strict=True))
    return math.exp(logs / sum(weights)) if sum(weights) > 0 else math.nan


def _metrics(sums: np.ndarray, names: list[str], has_const: bool, weights: tuple[float, float]) -> dict:
    def block(row: np.ndarray) -> dict:
        clips, loss, frames = (float(v) for v in row[:3])
        out = {"clips": int(clips), "frames": int(frames), "loss": loss / max(clips, 1.0)}
        for t, name in enumerate(TARGETS):
            out[name] = _target_metrics(row[3 + 6 * t: 9 + 6 * t], max(frames, 1.0), has_const)
        out["score"] = error_ratio(out, weights) if has_const else out["loss"]
        return out

    seen = sums[:, 0] > 0
    per_run = {names[i]: block(sums[i]) for i in np.flatnonzero(seen)}
    pooled = block(sums.sum(0))
    score = float(np.median([r["score"] for r in per_run.values()])) if per_run else math.inf
    return {**pooled, "score": score, "steer_mae": pooled["steer"]["mae"], "motor_mae": pooled["motor"]["mae"],
            "runs": per_run}


def not_beating(val: dict, config: TrainConfig) -> list[str]:
    """Targets (with weight > 0, varying by at least ``MIN_VARIATION`` run units) on which the model does not
    beat the constant predictor, described."""
    out = []
    for name, weight in (("steer", config.steer_weight), ("motor", config.motor_weight)):
        m = val.get(name, {})
        const = m.get("const_rmse")
        if weight > 0 and const is not None and const >= MIN_VARIATION and m["rmse"] >= const:
            out.append(f"{name} RMSE {m['rmse']:.2f} vs {m['const_rmse']:.2f} for always predicting the training "
                       f"mean (run units)")
    return out
