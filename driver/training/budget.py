"""``driver train --budget 20m``: size steps, warmup and validation to wall-clock time on this machine.

Before training, real steps (forward and backward on real batches, no update, a ``--teacher``'s forward
passes included; 3 to 30 of them, for up to 2% of the budget) and a small validation are timed; then, of the
budget left after setting up:

- validation gets at most 10%: up to ``MAX_VALIDATIONS`` validations of at most ``val_clips`` clips each
  (fewer clips when one validation would not fit);
- checkpoints, metrics and the rest of the overhead get ``OVERHEAD`` (10%);
- training gets the remainder: ``steps = remainder / seconds per step``, with warmup 5% of the steps (at
  most 100) unless set, spread over epochs of at most one pass over the training clips.

The sizing is logged and written into ``config.json`` (a resume continues the same plan). On a shared
machine the speed measured at the start is a snapshot: the load can halve or double it minutes later.
So the steps are split into at least ``PACE_EPOCHS`` epochs and, at the end of each epoch, :func:`paced_epochs`
sets how many epochs still fit from the speed measured so far (validations and checkpoints included),
stretching or shortening the lr schedule (as ``--resume --epochs`` does); ``config.json`` is rewritten.
Training also stops at the budget's end if the machine got slower (``stopped = "budget"``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import torch

from driver.preprocess import frames_to_input

from .config import TrainConfig, parse_budget
from .evaluate import batch_speed, evaluate, weighted_loss
from .precise_bn import batchnorm_layers
from .recipe import auto_warmup

log = logging.getLogger(__name__)

CALIBRATION_STEPS = (3, 30)  # at least / at most this many timed steps ...
CALIBRATION_SHARE = 0.02  # ... for up to this share of the budget (at most CALIBRATION_MAX_S)
CALIBRATION_MAX_S = 20.0
VAL_SHARE = 0.10
OVERHEAD = 0.10
MAX_VALIDATIONS = 10
MIN_VAL_CLIPS = 32
PACE_EPOCHS = 20  # at least this many epochs in a budgeted run: the pacing's step (5% of the plan)
PACE_MARGIN = 0.05  # of the time left, kept free when pacing
PACE_CHANGE = 0.05  # re-plan only when the steps that fit differ by more than this share


def _batch(dataset, rows: np.ndarray) -> dict:
    items = [dataset[int(i)] for i in rows]
    return {k: torch.stack([it[k] for it in items]) for k in ("frames", "target", "modes", "speed") if k in items[0]}


def seconds_per_step(setup, budget_s: float) -> float:
    """Median time of one training step (data, forward, backward) on this machine, over 3..30 steps and up
    to 2% of the budget; changes nothing (weights, norm statistics and the RNG are restored)."""
    cfg, model = setup.config, setup.model
    saved_rng, saved = torch.get_rng_state(), {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(cfg.seed)
    times: list[float] = []
    model.train()
    stop_at = time.perf_counter() + min(CALIBRATION_MAX_S, CALIBRATION_SHARE * budget_s)
    for i in range(CALIBRATION_STEPS[1] + 1):
        if len(times) >= CALIBRATION_STEPS[0] and time.perf_counter() > stop_at:
            break
        t0 = time.perf_counter()
        batch = _batch(setup.train_ds, rng.integers(0, len(setup.train_ds), cfg.batch_size))
        x = frames_to_input(batch["frames"].to(setup.device), channels_last=cfg.channels_last)
        modes, speed, target = batch["modes"].to(setup.device), batch_speed(batch, setup.device), batch["target"]
        if setup.teacher is not None:  # --teacher: its members' forward passes are part of every step
            target, _ = setup.teacher.targets(x, modes, speed, target.to(setup.device), None,
                                              torch.ones(x.shape[0], dtype=torch.bool), setup.autocast)
        with setup.autocast():
            out, _ = setup.net(x, modes, None, speed=speed)
        weighted_loss(out.float(), target.to(setup.device), cfg, setup.stats).backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up the allocator and kernels
            times.append(time.perf_counter() - t0)
    model.load_state_dict(saved)
    torch.set_rng_state(saved_rng)
    return float(np.median(times))


def seconds_per_val_clip(setup) -> float:
    if setup.val_ds is None:
        return 0.0
    cfg = dataclasses.replace(setup.config, val_clips=min(MIN_VAL_CLIPS, setup.config.val_clips))
    t0 = time.perf_counter()
    evaluate(setup.net, setup.val_ds, cfg, setup.device, setup.autocast, setup.dist, setup.stats)
    return (time.perf_counter() - t0) / max(1, min(len(setup.val_ds), cfg.val_clips))


def size_to_budget(setup, started: float) -> TrainConfig:
    """The config with epochs, steps_per_epoch, warmup_steps, val_every and val_clips sized to the budget
    (``started``: ``time.perf_counter()`` when the run began; setting up and calibrating count against it)."""
    cfg = setup.config
    budget = parse_budget(cfg.budget)
    step_s, clip_s = seconds_per_step(setup, budget), seconds_per_val_clip(setup)
    spent = time.perf_counter() - started
    left = budget - spent
    if left <= 0:
        raise ValueError(f"budget={cfg.budget!r} is used up by setting up ({spent:.0f} s); give a larger --budget")
    val_clips = min(cfg.val_clips, len(setup.val_ds)) if setup.val_ds is not None else 0
    validations = 0
    if val_clips:
        val_clips = int(min(val_clips, max(MIN_VAL_CLIPS, VAL_SHARE * left / clip_s)))
        validations = int(max(1, min(MAX_VALIDATIONS, VAL_SHARE * left / (val_clips * clip_s))))
    bn_clips = min(cfg.precise_bn, len(setup.train_ds)) if batchnorm_layers(setup.model) else 0  # each validation
    train_s = left * (1 - OVERHEAD) - validations * (val_clips + bn_clips) * clip_s
    steps = max(1, int(train_s / step_s))
    one_pass = max(1, len(setup.train_ds) // (cfg.batch_size * (cfg.clip_length if setup.model.is_recurrent else 1)))
    epochs = max(1, math.ceil(steps / one_pass), min(PACE_EPOCHS, steps))
    steps_per_epoch = max(1, steps // epochs)
    warmup = auto_warmup(steps) if cfg.warmup_steps < 0 else min(cfg.warmup_steps, steps // 2)
    val_every = max(1, steps_per_epoch * epochs // validations) if validations else 0
    log.info("budget %s: %d steps (%.2f s each on this machine) in %d epochs, warmup %d, %d validations of %d "
             "clips (%.1f s each), every %d steps", cfg.budget, steps_per_epoch * epochs, step_s, epochs, warmup,
             validations, val_clips, val_clips * clip_s, val_every)
    return dataclasses.replace(cfg, epochs=epochs, steps_per_epoch=steps_per_epoch, warmup_steps=warmup,
                               val_every=val_every, val_clips=max(1, val_clips or cfg.val_clips))


def paced_epochs(epochs: int, steps_per_epoch: int, step: int, seconds_per_step: float, seconds_left: float) -> int:
    """Epochs that fit the budget at a run's epoch boundary (``step`` steps done, ``seconds_left`` to the
    deadline, ``seconds_per_step`` measured so far with validations and checkpoints): ``epochs`` when the
    steps that fit differ by at most ``PACE_CHANGE``, else the whole epochs of the steps that fit in
    ``1 - PACE_MARGIN`` of the time left (at least the epochs done)."""
    done = step // steps_per_epoch
    fit = step + max(0.0, seconds_left * (1 - PACE_MARGIN)) / max(seconds_per_step, 1e-9)
    if abs(fit - epochs * steps_per_epoch) <= PACE_CHANGE * epochs * steps_per_epoch:
        return epochs
    return max(done, int(fit // steps_per_epoch))
