"""Short fine-tuning on the checkpoint's own training runs, with hooks for masks and shared weights.

Built from the training machinery (``ClipDataset``, ``PlanMaker``, ``weighted_loss``, ``make_scheduler``,
``frames_to_input``) with the checkpoint's resolved ``TrainConfig``, so pruning and centroid fine-tuning
see the same clips, augmentation, loss and steer balancing as training did. Recurrent models start
every clip from zero state (no carried lanes): enough for a few hundred recovery steps.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from driver.export.common import ExportError
from driver.preprocess import frames_to_input

log = logging.getLogger(__name__)

Hook = Callable[[], None]


@dataclass
class FinetuneConfig:
    steps: int = 200
    lr: float = 5e-4
    batch_size: int = 16
    weight_decay: float = 0.0
    precision: str = "auto"  # auto (bf16 where the CPU has it) | bf16 | fp32
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.steps <= 10**6:
            raise ValueError(f"steps={self.steps} must be in 0..1000000")
        if not 1e-8 <= self.lr <= 1.0:
            raise ValueError(f"lr={self.lr} must be in 1e-8..1")
        if not 1 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size={self.batch_size} must be in 1..4096")
        if not 0.0 <= self.weight_decay <= 1.0:
            raise ValueError(f"weight_decay={self.weight_decay} must be in 0..1")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision={self.precision!r} must be one of auto, bf16, fp32")


def _autocast(precision: str):
    if precision == "auto":
        precision = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def training_data(ckpt: dict, batch_size: int, steps: int, seed: int):
    """(train config, dataset, plan maker) over the checkpoint's training runs; raises if there are none."""
    from driver.datasets.clips import ClipDataset
    from driver.training.batches import PlanMaker
    from driver.training.config import TrainConfig
    from driver.training.recipe import clip_config

    dataset = ckpt.get("dataset", {})
    where = ckpt.get("path", "checkpoint")
    if not dataset.get("store") or not dataset.get("train_runs"):
        raise ExportError(f"{where}: checkpoint names no training store/runs; fine-tuning needs them")
    config = TrainConfig.from_dict({**ckpt["config"], "batch_size": batch_size, "steps_per_epoch": steps,
                                    "seed": seed})
    try:
        ds = ClipDataset(dataset["store"], clip_config(config, train=True, seed=seed), runs=list(dataset["train_runs"]))
    except (OSError, ValueError) as e:
        raise ExportError(f"{where}: cannot open its training store {dataset['store']} ({e})") from e
    plans = PlanMaker(ds, batch_size, steps, recurrent=False, balance=config.balance_steer,
                      zero_state_prob=0.0, seed=seed)
    return config, ds, plans


def finetune(model: nn.Module, ckpt: dict, config: FinetuneConfig, params: Iterable[nn.Parameter],
             after_backward: Hook | None = None, after_step: Hook | None = None, what: str = "fine-tune",
             on_step: Callable[[str, float], None] | None = None) -> dict:
    """``config.steps`` AdamW steps on ``params`` (cosine schedule with warmup); hooks run every step.

    ``after_backward`` may rewrite gradients (zero pruned ones, sum them into centroids); ``after_step``
    restores the constraint on the weights (re-apply masks, write centroids back); ``on_step(what, loss)``
    reports progress. Returns loss stats.
    """
    from driver.training.evaluate import weighted_loss
    from driver.training.optim import make_scheduler

    if config.steps == 0:
        return {"steps": 0}
    train_config, ds, plans = training_data(ckpt, config.batch_size, config.steps, config.seed)
    params = list(params)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched_config = type(train_config).from_dict({**train_config.to_dict(), "lr": config.lr, "schedule": "cosine",
                                                 "warmup_steps": min(20, config.steps // 10)})
    scheduler = make_scheduler(sched_config, optimizer, config.steps)
    autocast = _autocast(config.precision)
    torch.manual_seed(config.seed)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    rows = plans.plan(0).indices[: config.steps]
    for step, row in enumerate(rows):
        items = [ds[int(i)] for i in row]
        frames = torch.stack([it["frames"] for it in items])
        x = frames_to_input(frames, channels_last=train_config.channels_last)
        target = torch.stack([it["target"] for it in items])
        modes = torch.stack([it["modes"] for it in items]) if model.spec.n_modes else None
        speed = torch.stack([it["speed"] for it in items]) if "speed" in items[0] else None  # speed-input models
        with autocast():
            out, _ = model(x, modes, None, speed=speed)
        loss = weighted_loss(out.float(), target, train_config)
        if not torch.isfinite(loss):
            raise ExportError(f"{what}: loss is {loss.item()} at step {step + 1}; lower the fine-tuning lr")
        optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        if train_config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, train_config.grad_clip)
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            with torch.no_grad():
                after_step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(what, losses[-1])
        if (step + 1) % 50 == 0:
            log.info("%s step %d/%d loss %.5f", what, step + 1, config.steps, float(np.mean(losses[-50:])))
    model.eval()
    return {"steps": config.steps, "first_loss": float(np.mean(losses[:20])), "last_loss": float(np.mean(losses[-20:])),
            "seconds": round(time.perf_counter() - t0, 1)}
