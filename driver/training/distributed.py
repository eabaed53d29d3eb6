"""Data-parallel training under torchrun: process group setup and the split of runs across ranks."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if device_type == "cuda":
        torch.cuda.set_device(local)
    log.info("rank %d of %d (%s)", rank, world, backend)
    return DistInfo(rank, world, local)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def partition_runs(runs: list[str], weights: list[int], world: int) -> list[list[str]]:
    """Assign whole runs to ranks, greedily balancing the weight (clip count) per rank.

    Every rank gets at least one run; the split is deterministic for the same inputs.
    """
    if len(runs) < world:
        raise ValueError(f"{len(runs)} training runs cannot be split across {world} processes: each rank "
                         "reads whole runs, so use at most as many processes as training runs")
    parts: list[list[str]] = [[] for _ in range(world)]
    load = [0] * world
    for w, r in sorted(zip(weights, runs, strict=True), key=lambda t: (-t[0], t[1])):
        i = min(range(world), key=lambda k: (load[k], len(parts[k]), k))
        parts[i].append(r)
        load[i] += w
    return [sorted(p) for p in parts]


def all_reduce_sum(values: list[float], info: DistInfo, device) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_min(value: int, info: DistInfo, device) -> int:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def broadcast_flag(flag: bool, info: DistInfo, device) -> bool:
    """Rank 0's decision (e.g. early stop) for everyone."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())
