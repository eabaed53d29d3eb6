"""Everything a training run needs before its first step: runs and split, recipe, datasets, model, optimiser.

:func:`prepare` reads top to bottom: choose runs, resolve the recipe on the store, split by run, build the
datasets and the model, size the run (``--budget``), then the optimiser and schedule. Nothing is written
here; the run directory is created by the trainer once this succeeded.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from driver.datasets.clips import ClipDataset
from driver.datasets.modes import active_labels
from driver.datasets.sampling import split_runs
from driver.datasets.store import Store, StoreError
from driver.models import InputSpec, create_model

from . import distributed as ddp
from .batches import PlanMaker
from .config import TrainConfig
from .distill import Teacher
from .evaluate import LabelStats
from .optim import make_optimizer, make_scheduler
from .recipe import clip_config, resolve_curriculum, resolve_data, resolve_optimisation

log = logging.getLogger(__name__)


@dataclass
class Setup:
    config: TrainConfig  # resolved: concrete frames, cameras, lr, warmup, steps
    dist: ddp.DistInfo
    device: torch.device
    store: Store
    train_runs: list[str]
    val_runs: list[str]
    rank_runs: list[list[str]]
    train_ds: ClipDataset
    val_ds: ClipDataset | None
    stats: LabelStats
    spec: InputSpec
    model: torch.nn.Module
    net: torch.nn.Module  # the model, wrapped for DDP when distributed
    plans: PlanMaker
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: object
    scaler: object
    precision: str
    teacher: Teacher | None = None  # --teacher: the model or ensemble whose outputs join the targets

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs


def device_for(config: TrainConfig) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available; use --device cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_for(config: TrainConfig, device: torch.device):
    """(autocast context factory, GradScaler or None, precision used) for the configured precision."""
    p = config.precision
    if p == "auto":
        if device.type == "cuda":
            p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            p = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    if p == "fp32":
        return contextlib.nullcontext, None, p
    if p == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if p == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if p == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler, p


def candidate_runs(config: TrainConfig, store: Store) -> list[str]:
    """Runs that pass the label filters and are not excluded by name."""
    unknown = sorted(set(config.exclude_runs) - set(store.runs))
    if unknown:
        raise ValueError(f"exclude_runs names runs not in {store.path}: {unknown}")
    runs = []
    for r in store.runs:
        labels = active_labels(store.labels(r))
        if config.include_labels and not labels & set(config.include_labels):
            continue
        if r not in config.exclude_runs and not labels & set(config.exclude_labels):
            runs.append(r)
    if not runs:
        raise StoreError(f"{store.path}: no run matches include_labels={list(config.include_labels)} and "
                         f"exclude_labels={list(config.exclude_labels)} among {len(store.runs)} runs"
                         if store.runs else f"{store.path}: the store holds no runs")
    return runs


def build_data(config: TrainConfig, store: Store, dist: ddp.DistInfo):
    """(resolved config, train runs, val runs, rank runs, train dataset of this rank, val dataset, label stats)."""
    runs = candidate_runs(config, store)
    config = resolve_data(config, store, runs)
    clip = clip_config(config, train=True)
    all_runs = ClipDataset(store, clip, runs=runs).runs  # runs with at least one clip
    train_runs, val_runs = split_runs(all_runs, config.val_fraction, config.seed, config.val_runs or None)
    if not train_runs:
        raise ValueError(f"{config.data}: no training runs left after holding out {val_runs}")
    parts = [train_runs]
    if dist.enabled:
        counts = [len(ClipDataset(store, clip, runs=[r])) for r in train_runs]
        parts = ddp.partition_runs(train_runs, counts, dist.world)
    train_ds = ClipDataset(store, clip, runs=parts[dist.rank])
    all_train = train_ds if not dist.enabled else ClipDataset(store, clip, runs=train_runs)
    stats = LabelStats.of(all_train, config.flip)
    val_ds = ClipDataset(store, clip_config(config, train=False), runs=val_runs) if val_runs else None
    return config, train_runs, val_runs, parts, train_ds, val_ds, stats


def build_model(config: TrainConfig, spec: InputSpec, device: torch.device) -> torch.nn.Module:
    try:
        model = create_model(config.arch, spec, **config.arch_kwargs).to(device)
    except TypeError as e:
        raise ValueError(f"arch_kwargs={config.arch_kwargs} do not fit arch {config.arch!r}: {e}") from e
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def start_at_the_mean(model: torch.nn.Module, spec: InputSpec, mean: tuple[float, float]) -> None:
    """Set the output layer's bias (and the per-frame head's) so the untrained model predicts the training mean
    (the constant predictor) for every step: outputs are ordered ``[steer x horizon, motor x horizon]``."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
              and m.bias is not None and m.bias.numel() == spec.outputs]
    if layers and not isinstance(getattr(model, "output_activation", None), torch.nn.Tanh):
        frame_head = getattr(model, "frame_head", None)  # the recurrent models' training-only per-frame head
        with torch.no_grad():
            for layer in {layers[-1], frame_head} - {None}:
                layer.bias[: spec.horizon] += mean[0]
                layer.bias[spec.horizon:] += mean[1]


def prepare(config: TrainConfig, dist: ddp.DistInfo, fresh: bool, size_run=None) -> Setup:
    """Build everything for training (see the module docstring). ``size_run(setup_so_far)`` returns the
    config with steps sized to a budget (fresh runs with ``--budget``)."""
    device = device_for(config)
    torch.manual_seed(config.seed + dist.rank)
    store = Store(config.data)
    config, train_runs, val_runs, parts, train_ds, val_ds, stats = build_data(config, store, dist)
    h, w, _ = train_ds.frame_shape
    spec = InputSpec(height=h, width=w, cameras=len(config.camera_names), stack=config.stack,
                     n_modes=len(train_ds.config.modes), horizon=config.horizon)
    model = build_model(config, spec, device)
    if fresh and config.target_norm:
        start_at_the_mean(model, spec, stats.seen_mean(config.flip))
    autocast, scaler, precision = autocast_for(config, device)
    teacher = None
    if config.teacher:
        teacher = Teacher(config.teacher, config.teacher_weight, spec, train_ds.config.modes, config.camera_names,
                          config.speed_input == "on", bool(model.is_recurrent), device, config.channels_last)
    setup = Setup(config, dist, device, store, train_runs, val_runs, parts, train_ds, val_ds, stats, spec, model,
                  DistributedDataParallel(model) if dist.enabled else model, None, 0, None, None, autocast, scaler,
                  precision, teacher)
    if fresh and size_run is not None:
        setup.config = size_run(setup)
        if dist.enabled:  # every rank follows rank 0's sizing
            box = [setup.config.to_dict()]
            torch.distributed.broadcast_object_list(box, 0)
            setup.config = TrainConfig.from_dict(box[0])
    if fresh:
        setup.config = resolve_curriculum(setup.config)
    recurrent = bool(model.is_recurrent)
    setup.plans = PlanMaker(train_ds, setup.config.batch_size, setup.config.steps_per_epoch, recurrent,
                            setup.config.balance_steer and not recurrent, setup.config.zero_state_prob,
                            setup.config.seed, dist.rank, setup.config.lane_jump,
                            setup.config.random_clip_epochs)
    setup.steps_per_epoch = ddp.all_reduce_min(setup.plans.steps, dist, device)
    setup.config = resolve_optimisation(setup.config, setup.total_steps, h, w)
    setup.optimizer = make_optimizer(setup.config, model)
    setup.scheduler = make_scheduler(setup.config, setup.optimizer, setup.total_steps)
    return setup
