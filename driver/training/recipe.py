"""Recipes that fit the data: a config in seconds and "auto" values, resolved against the store it trains on.

``resolve_config`` turns the store-independent parts of a :class:`TrainConfig` into concrete values, once,
before training (they are written to ``config.json`` and every checkpoint, so resume, export and fine-tuning
read plain frame counts):

- ``cameras="auto"``: ``both`` when every run has a right camera, else ``left``;
- clip length, prediction horizon and target stride given in seconds become frames with the store's frame
  rate (the median frame interval over its runs); a frame count given explicitly wins;
- ``stack=0``: 1 for recurrent models (their state carries time: on the project's sim and on highway-env
  a second stacked frame did not help them, docs/benchmarks.md), 2 for frame models (the lab's previous +
  current frame: their only view of motion);
- ``flip_scope="auto"``: ``run`` for recurrent models (a lane walks a run's consecutive clips carrying its
  state, so every chunk of it must be mirrored alike; a per-clip draw mirrored the world under a carried
  state half the time), ``clip`` for frame models;
- ``lr=0``: :func:`auto_lr`, scaled with the frames per step and the input size;
- ``warmup_steps=-1``: 5% of the steps, at most 100;
- ``frame_loss > 0``: the recurrent model is built with its per-frame head (``frame_head`` in ``arch_kwargs``);
- ``random_clip_share > 0``: :func:`resolve_curriculum`, the curriculum's epochs of a fresh run.

:func:`clip_config` is the one mapping from a resolved config to the clip loader's :class:`ClipConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from driver.datasets.clips import ClipConfig
from driver.datasets.lint import LintRules
from driver.datasets.series import frame_rate, stored_speed_name
from driver.datasets.store import Store
from driver.models import RECURRENT_ARCHS, is_recurrent_arch, takes_speed_input

from .batches import curriculum_epochs
from .config import TrainConfig

log = logging.getLogger(__name__)

LR_REFERENCE = 1e-3  # AdamW at 64 frames per step on 48x64 frames (the demo's size)
LR_REFERENCE_FRAMES = 64
LR_REFERENCE_PIXELS = 48 * 64
LR_RANGE = (1e-4, 2e-3)


def store_frame_rate(store: Store, runs: list[str]) -> float:
    """Frames per second of the store's runs: the median over runs of each run's median frame rate."""
    rates = [frame_rate(store.series(r, "timestamp"), store.series(r, "segment")) for r in runs]
    return float(np.median(rates))


def auto_lr(frames_per_step: int, height: int, width: int) -> float:
    """AdamW learning rate: 1e-3 at 64 frames of 48x64 per step, x sqrt(frames / 64) x sqrt(3072 / pixels),
    clipped to 1e-4..2e-3. Bigger batches average noisier gradients (square-root scaling); bigger frames
    make the pooled encoder features larger sums, which grew a few channels without bound at the small-input
    lr on 96x96 frames (issue 18)."""
    lr = LR_REFERENCE * math.sqrt(frames_per_step / LR_REFERENCE_FRAMES) * math.sqrt(LR_REFERENCE_PIXELS /
                                                                                    (height * width))
    return float(min(max(lr, LR_RANGE[0]), LR_RANGE[1]))


def auto_warmup(total_steps: int) -> int:
    return int(min(100, max(0, round(0.05 * total_steps))))


def resolve_data(config: TrainConfig, store: Store, runs: list[str]) -> TrainConfig:
    """Cameras, clip length, horizon and target stride as concrete values for ``store`` (see module)."""
    metas = [store.run_meta(r) for r in runs]
    cameras = config.cameras
    if cameras == "auto":
        cameras = "both" if all("right" in m["cameras"] for m in metas) else "left"
    elif cameras in ("both", "right"):
        mono = [m["name"] for m in metas if "right" not in m["cameras"]]
        if mono:
            raise ValueError(f"--cameras {cameras} needs a right camera but run {mono[0]!r} has only "
                             f"{store.run_meta(mono[0])['cameras']}; use --cameras left (or auto)")
    fps = store_frame_rate(store, runs)
    clip_length = config.clip_length or max(1, round(config.clip_seconds * fps))
    target_stride = config.target_stride or max(1, round(config.target_stride_seconds * fps))
    horizon = config.horizon or 1 + int(math.floor(config.horizon_seconds * fps / target_stride + 1e-6))
    if clip_length > 64 or horizon > 100 or target_stride > 100:
        raise ValueError(f"at {fps:.1f} frames/s the recipe gives clip_length={clip_length} (max 64), "
                         f"horizon={horizon} (max 100), target_stride={target_stride} (max 100) frames; "
                         "shorten --clip-seconds / --horizon-seconds")
    speed_input = resolve_speed_input(config, metas)
    recurrent = is_recurrent_arch(config.arch)
    stack = config.stack or (1 if recurrent else 2)
    flip_scope = config.flip_scope if config.flip_scope != "auto" else "run" if recurrent else "clip"
    arch_kwargs = {**config.arch_kwargs, "speed_input": True} if speed_input == "on" else config.arch_kwargs
    if config.frame_loss > 0:
        if not recurrent:
            raise ValueError(f"--frame-loss {config.frame_loss}: arch {config.arch!r} reads each frame on its own "
                             "already; the per-frame loss is for recurrent models "
                             f"({', '.join(sorted(RECURRENT_ARCHS))})")
        arch_kwargs = {**arch_kwargs, "frame_head": True}
    resolved = dataclasses.replace(config, cameras=cameras, stack=stack, clip_length=clip_length, horizon=horizon,
                                   target_stride=target_stride, speed_input=speed_input, arch_kwargs=arch_kwargs,
                                   flip_scope=flip_scope)
    ahead = ("the current command predicted" if horizon == 1 else f"{horizon} predicted steps every "
             f"{target_stride} frames ({(horizon - 1) * target_stride / fps:.2f} s ahead)")
    log.info("recipe at %.1f frames/s: cameras %s, %s, clips of %d frames (%.2f s), %s", fps, cameras,
             "one frame per step" if stack == 1 else "previous + current frame stacked", clip_length,
             clip_length / fps, ahead)
    return resolved


def resolve_speed_input(config: TrainConfig, metas: list[dict]) -> str:
    """``on`` or ``off``: ``auto`` is on when the arch takes speed and every run has a speed series."""
    if "speed_input" in config.arch_kwargs:
        given = "on" if config.arch_kwargs["speed_input"] is True else "off"
        if config.speed_input not in ("auto", given):
            raise ValueError(f"--speed-input {config.speed_input} contradicts arch_kwargs "
                             f"speed_input={config.arch_kwargs['speed_input']!r}; give one of them")
        return given
    without = [m["name"] for m in metas if stored_speed_name(m) is None]
    if config.speed_input == "on":
        if not takes_speed_input(config.arch):
            raise ValueError(f"--speed-input on: arch {config.arch!r} does not take the car's speed; use a "
                             f"recurrent model ({', '.join(sorted(RECURRENT_ARCHS))})")
        if without:
            raise ValueError(f"--speed-input on: run {without[0]!r} has no speed series (encoder or speed); "
                             f"{len(without)} of {len(metas)} runs lack one. Use --speed-input off or auto")
        return "on"
    if config.speed_input == "auto":
        on = takes_speed_input(config.arch) and not without
        log.info("speed input %s (auto: %s)", "on" if on else "off",
                 "every run has a speed series; on the car driver drive needs a wheel encoder for it (carlink v1.2, "
                 "--wheel-m-per-tick)" if on else
                 f"{config.arch} does not take speed" if not takes_speed_input(config.arch) else
                 f"run {without[0]!r} has no speed series")
        return "on" if on else "off"
    return "off"


def resolve_optimisation(config: TrainConfig, total_steps: int, height: int, width: int) -> TrainConfig:
    """``lr=0`` and ``warmup_steps=-1`` as concrete values for this run's batch, clip and frame size."""
    lr = config.lr or auto_lr(config.batch_size * config.clip_length, height, width)
    warmup = auto_warmup(total_steps) if config.warmup_steps < 0 else config.warmup_steps
    if config.lr == 0:
        log.info("lr auto: %.2e for %d frames per step of %dx%d", lr, config.batch_size * config.clip_length,
                 height, width)
    return dataclasses.replace(config, lr=lr, warmup_steps=warmup)


def resolve_curriculum(config: TrainConfig) -> TrainConfig:
    """``random_clip_share`` as the ``random_clip_epochs`` of a fresh run's planned epochs (a budgeted run
    re-plans it with its epochs until the lanes start, ``Trainer._pace``)."""
    if not config.random_clip_share:
        return config
    if config.random_clip_epochs:
        raise ValueError(f"random_clip_share={config.random_clip_share} and random_clip_epochs="
                         f"{config.random_clip_epochs}: give the curriculum's length one way, as a share of the "
                         "training (--random-clip-share) or in epochs (--random-clip-epochs)")
    epochs = curriculum_epochs(config.random_clip_share, config.epochs)
    log.info("curriculum: random clips for the first %d of %d epochs (share %.2f)", epochs, config.epochs,
             config.random_clip_share)
    return dataclasses.replace(config, random_clip_epochs=epochs)


def clip_config(config: TrainConfig, train: bool = True, seed: int | None = None) -> ClipConfig:
    """The clip loader's config for a resolved training config: augmentation only for training clips."""
    return ClipConfig(clip_length=config.clip_length, frame_stride=config.frame_stride,
                      cameras=config.camera_names, stack=config.stack, horizon=config.horizon,
                      target_stride=config.target_stride, flip=config.flip if train else 0.0,
                      flip_scope="clip" if config.flip_scope == "auto" else config.flip_scope,
                      color_jitter=config.color_jitter if train else 0.0,
                      include_labels=tuple(config.include_labels), exclude_labels=tuple(config.exclude_labels),
                      exclude_flagged=LintRules() if config.exclude_flagged else None,
                      speed=config.speed_input == "on", seed=config.seed if seed is None else seed)
