"""Precise BatchNorm statistics: the running mean and variance recomputed on a sample of training clips.

In training, BatchNorm normalises each batch by that batch's own statistics and keeps an exponential moving
average of them (momentum 0.1: about the last ten batches) for evaluation and for the car. A recurrent
model's batch is ``batch_size`` lanes walking slowly through as many runs, so those ten batches show the same
few places of the same few runs, and the average follows wherever the lanes happen to be: the held-out
error of checkpoints a few hundred steps apart then jumps up and down, and ``best.pt`` is chosen among
models normalised by chance. Setting them to the mean and variance of the layer's input over random training
clips (population statistics, as PreciseBN does; Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021)
before every validation and the last checkpoint removes that: it changes only the BatchNorm buffers, never
the weights or the course of training. Measured on issue 18's external-simulator benchmark: on 13
checkpoints of one run the held-out steering MSE was lower at 11, median 19.4 -> 9.7 run units²
(docs/benchmarks.md, "Precise BatchNorm statistics"). Models without
BatchNorm (every frame model here) are left as they are, at no cost.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from driver.datasets.clips import ClipDataset

from . import distributed as ddp
from .config import TrainConfig
from .evaluate import collate_clips, forward_batch


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def sample_clips(n_clips: int, wanted: int, seed: int, step: int) -> np.ndarray:
    """``wanted`` distinct clip indices (all when there are fewer), a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step, 1709])
    return np.sort(rng.choice(n_clips, min(wanted, n_clips), replace=False))


def recompute_batchnorm(model: nn.Module, dataset: ClipDataset, config: TrainConfig, device, autocast,
                        dist: ddp.DistInfo, step: int) -> int:
    """Set every BatchNorm layer's running mean and variance to the mean and (unbiased) variance of its input
    over ``config.precise_bn`` random training clips: every frame's features pooled, over all ranks (augmented
    as in training, the model in training mode, zero recurrent state: the norms sit before the RNN). Returns
    the clips used (0: nothing to do)."""
    layers = batchnorm_layers(model)
    if not layers or config.precise_bn == 0 or len(dataset) == 0:
        return 0
    clips = sample_clips(len(dataset), config.precise_bn, config.seed + dist.rank, step)
    sums: dict[nn.Module, list[torch.Tensor]] = {}

    def accumulate(layer, inputs):  # (N, C, ...) -> count, sum and sum of squares per channel, float64
        x = inputs[0].detach().transpose(0, 1).flatten(1).double()
        count = torch.tensor([x.shape[1]], dtype=torch.float64, device=x.device)
        parts = (count, x.sum(1), (x * x).sum(1))
        sums[layer] = [a + b for a, b in zip(sums[layer], parts, strict=True)] if layer in sums else list(parts)

    hooks = [m.register_forward_pre_hook(accumulate) for m in layers]
    training = model.training
    model.train()  # as the statistics are used in training (dropout included, where a model has any)
    try:
        with torch.no_grad():
            for i in range(0, len(clips), config.batch_size):
                forward_batch(model, collate_clips(dataset, clips[i:i + config.batch_size].tolist()), None,
                              config, device, autocast)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    with torch.no_grad():
        for m in layers:
            count, total, squares = sums[m]
            if dist.enabled:
                for t in (count, total, squares):
                    torch.distributed.all_reduce(t)
            mean = total / count
            var = (squares / count - mean * mean).clamp_min(0) * count / (count - 1).clamp_min(1)
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    return len(clips)
