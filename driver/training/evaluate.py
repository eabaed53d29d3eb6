"""The training loss and held-out validation (loss, steering and throttle MAE in run units)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from driver.datasets.clips import ClipDataset
from driver.preprocess import frames_to_input
from driver.units import norm_to_run

from . import distributed as ddp
from .config import TrainConfig

VAL_MAX_CLIPS = 1024


def weighted_loss(out: torch.Tensor, target: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """MSE or Huber over (B, T, horizon, 2), steer and motor weighted per config."""
    weights = torch.tensor([config.steer_weight, config.motor_weight], device=out.device, dtype=out.dtype)
    per = F.huber_loss(out, target, reduction="none", delta=0.1) if config.loss == "huber" else (out - target) ** 2
    return (per * weights).sum(-1).mean() / weights.sum()


def val_indices(n: int, world: int, rank: int) -> list[int]:
    """At most VAL_MAX_CLIPS evenly spaced clips, split across ranks."""
    idx = np.unique(np.linspace(0, n - 1, min(n, VAL_MAX_CLIPS)).astype(np.int64))
    return idx[rank::world].tolist()


@torch.no_grad()
def evaluate(net, dataset: ClipDataset, config: TrainConfig, device, autocast, dist_info) -> dict:
    """Mean loss, steering MAE and throttle MAE (run units, first predicted step) over held-out clips.

    Recurrent models start every clip from zero state, as they would after a reset on the car.
    """
    net.eval()
    loader = DataLoader(Subset(dataset, val_indices(len(dataset), dist_info.world, dist_info.rank)),
                        batch_size=max(1, config.batch_size // 2), num_workers=0)
    sums = [0.0, 0.0, 0.0, 0.0]  # loss * n, |steer err| sum, |motor err| sum, n
    for batch in loader:
        x = frames_to_input(batch["frames"].to(device), channels_last=config.channels_last)
        target = batch["target"].to(device)
        with autocast():
            out, _ = net(x, batch["modes"].to(device), None)
        out = out.float()
        n = len(x)
        sums[0] += weighted_loss(out, target, config).item() * n
        pred_run = norm_to_run(out[..., 0, :].clamp(-1, 1).cpu())  # (B, T, 2) first predicted step
        true_run = norm_to_run(target[..., 0, :].cpu())
        err = (pred_run - true_run).abs().mean(dim=1)  # (B, 2) mean over the clip's frames
        sums[1] += err[:, 0].sum().item()
        sums[2] += err[:, 1].sum().item()
        sums[3] += n
    total = ddp.all_reduce_sum(sums, dist_info, device)
    n = max(total[3], 1.0)
    return {"loss": total[0] / n, "steer_mae": total[1] / n, "motor_mae": total[2] / n, "clips": int(total[3])}
