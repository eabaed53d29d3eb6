"""`driver train`: the training loop. Reads top to bottom: setup, data, model, resume, loop, finish."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from driver.datasets.clips import ClipConfig, ClipDataset
from driver.datasets.sampling import split_runs
from driver.datasets.store import Store
from driver.errors import DriverError
from driver.models import InputSpec, create_model, detach_state, list_models
from driver.preprocess import frames_to_input

from . import distributed as ddp
from .batches import PlanMaker
from .checkpoint import (
    UNITS,
    CheckpointError,
    check_compatible,
    dataset_fingerprint,
    load_checkpoint,
    model_payload,
    preprocess_info,
    save_checkpoint,
)
from .config import TrainConfig, write_config
from .evaluate import evaluate, weighted_loss
from .metrics import MetricsLog, plot_curves
from .optim import make_optimizer, make_scheduler

log = logging.getLogger(__name__)


class TrainingError(DriverError, RuntimeError):
    """Training stopped on a problem the user must act on; the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    steps: int
    epochs: int
    stopped: str  # completed | early_stop
    best_val: dict = field(default_factory=dict)
    final_val: dict = field(default_factory=dict)
    samples_per_s: float = 0.0
    data_wait: float = 0.0


def _device(config: TrainConfig) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but no CUDA device is available; use --device cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


def _autocast(config: TrainConfig, device: torch.device):
    """(autocast context factory, GradScaler or None) for the configured precision."""
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


def _mask_state(state, keep: torch.Tensor):
    """Zero the carried state of lanes that restart: state tensors are (layers, B, hidden)."""
    if state is None:
        return None
    k = keep.to(dtype=torch.float32)[None, :, None]
    return tuple(s * k for s in state) if isinstance(state, tuple) else state * k


def _new_run_dir(config: TrainConfig) -> Path:
    name = config.name or f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.out) / name
    if (run_dir / "last.pt").exists():
        raise ValueError(f"{run_dir} already holds a training run; continue it with --resume {run_dir} "
                         "or choose another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(config: TrainConfig | None = None, resume: str | Path | None = None) -> RunResult:
    """Train per ``config``, or continue the run in directory ``resume`` exactly where it stopped."""
    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.json").is_file():
            raise ValueError(f"{run_dir}: not a training run directory (no config.json)")
        config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()), str(run_dir))
        if (run_dir / "last.pt").exists():
            ckpt = load_checkpoint(run_dir / "last.pt")
    elif config is None:
        raise ValueError("train() needs a config or a run directory to resume")
    if config.arch not in list_models():
        raise ValueError(f"arch={config.arch!r} is not a known model; choose one of {', '.join(list_models())}")
    if not config.data:
        raise ValueError("data is empty: name the store to train on (driver ingest output)")

    device = _device(config)
    dist_info = ddp.init_distributed(device.type)
    try:
        if resume is None:
            box = [str(_new_run_dir(config)) if dist_info.is_main else ""]
            if dist_info.enabled:
                torch.distributed.broadcast_object_list(box, 0)
            run_dir = Path(box[0])
        return _train(config, run_dir, ckpt, device, dist_info)
    finally:
        ddp.shutdown(dist_info)


def _train(config: TrainConfig, run_dir: Path, ckpt: dict | None, device: torch.device,
           dist_info: ddp.DistInfo) -> RunResult:
    main = dist_info.is_main
    if main:
        write_config(config, run_dir)
    torch.manual_seed(config.seed + dist_info.rank)

    # -- data: split by run, then whole runs per rank ------------------------------------------
    store = Store(config.data)
    clip = ClipConfig(clip_length=config.clip_length, frame_stride=config.frame_stride,
                      cameras=config.camera_names, stack=config.stack, horizon=config.horizon,
                      target_stride=config.target_stride, flip=config.flip, color_jitter=config.color_jitter,
                      include_labels=tuple(config.include_labels), exclude_labels=tuple(config.exclude_labels),
                      seed=config.seed)
    all_runs = ClipDataset(store, clip).runs  # runs that pass the label filters and have clips
    train_runs, val_runs = split_runs(all_runs, config.val_fraction, config.seed, config.val_runs or None)
    if not train_runs:
        raise ValueError(f"{config.data}: no training runs left after holding out {val_runs}")
    parts = [train_runs]
    if dist_info.enabled:
        counts = [len(ClipDataset(store, clip, runs=[r])) for r in train_runs]
        parts = ddp.partition_runs(train_runs, counts, dist_info.world)
    my_runs = parts[dist_info.rank]
    train_ds = ClipDataset(store, clip, runs=my_runs)
    val_clip = ClipConfig(**{**vars(clip), "flip": 0.0, "color_jitter": 0.0})
    val_ds = ClipDataset(store, val_clip, runs=val_runs) if val_runs else None
    if main:
        (run_dir / "split.json").write_text(json.dumps({"train": train_runs, "val": val_runs, "rank_runs": parts}))

    h, w, _ = train_ds.frame_shape
    spec = InputSpec(height=h, width=w, cameras=len(clip.cameras), stack=clip.stack, n_modes=len(clip.modes),
                     horizon=clip.horizon)

    # -- model, optimizer, schedule --------------------------------------------------------------
    try:
        model = create_model(config.arch, spec, **config.arch_kwargs).to(device)
    except TypeError as e:
        raise ValueError(f"arch_kwargs={config.arch_kwargs} do not fit arch {config.arch!r}: {e}") from e
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    recurrent = bool(model.is_recurrent)
    plans = PlanMaker(train_ds, config.batch_size, config.steps_per_epoch, recurrent,
                      config.balance_steer and not recurrent, config.zero_state_prob, config.seed, dist_info.rank)
    steps_per_epoch = ddp.all_reduce_min(plans.steps, dist_info, device)
    total_steps = steps_per_epoch * config.epochs
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, total_steps)
    autocast, scaler, precision = _autocast(config, device)
    net = DistributedDataParallel(model) if dist_info.enabled else model

    step, epoch, batch_in_epoch, best, bad, carry = 0, 0, 0, math.inf, 0, None
    if ckpt is not None:
        check_compatible(ckpt, config.arch, spec)
        state = ckpt["training"]
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        best, bad = state["best_val_loss"], state["bad_validations"]
        if len(state["rng"]) != dist_info.world:
            raise CheckpointError(f"{run_dir / 'last.pt'}: the run was trained with {len(state['rng'])} processes; "
                                  f"resume it with the same number (not {dist_info.world})")
        torch.set_rng_state(state["rng"][dist_info.rank])
        cuda_rng = state.get("cuda_rng")
        if device.type == "cuda" and cuda_rng is not None:  # one per rank (a bare tensor in older checkpoints)
            torch.cuda.set_rng_state(cuda_rng[dist_info.rank] if isinstance(cuda_rng, list) else cuda_rng)
        carry = state["carry"][dist_info.rank] if state.get("carry") else None
        carry = tuple(c.to(device) for c in carry) if isinstance(carry, list) else carry
        log.info("resuming %s at step %d (epoch %d, batch %d)", run_dir, step, epoch, batch_in_epoch)
    metrics = MetricsLog(run_dir, enabled=main)
    metrics.truncate_after(step)

    fingerprint = dataset_fingerprint(store, train_runs + val_runs)
    static = {"config": config.to_dict(), "preprocess": preprocess_info(spec, clip.cameras, clip.modes),
              "units": UNITS, "precision": precision,
              "dataset": {"store": str(store.path), "fingerprint": fingerprint, "train_runs": train_runs,
                          "val_runs": val_runs}}

    def validate() -> dict:
        if val_ds is None:
            return {}
        return evaluate(net, val_ds, config, device, autocast, dist_info)

    def checkpoint(last_val: dict) -> None:
        carries = [None] * dist_info.world
        mine = None if carry is None else ([c.cpu() for c in carry] if isinstance(carry, tuple) else carry.cpu())
        rngs = [torch.get_rng_state()] * dist_info.world
        my_cuda_rng = torch.cuda.get_rng_state() if device.type == "cuda" else None
        cuda_rngs = [my_cuda_rng] * dist_info.world
        if dist_info.enabled:
            torch.distributed.all_gather_object(carries, mine)
            torch.distributed.all_gather_object(rngs, torch.get_rng_state())
            torch.distributed.all_gather_object(cuda_rngs, my_cuda_rng)
        else:
            carries = [mine]
        if not main:
            return
        payload = {**model_payload(model), **static, "metrics": last_val, "training": {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {}, "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "best_val_loss": best, "bad_validations": bad, "rng": rngs,
            "cuda_rng": cuda_rngs if my_cuda_rng is not None else None,
            "carry": carries if any(c is not None for c in carries) else None}}
        save(run_dir / "last.pt", payload)

    def save(path: Path, payload: dict) -> None:
        try:
            save_checkpoint(path, payload)
        except (OSError, RuntimeError) as e:  # disk full surfaces as either, depending on where torch.save fails
            raise TrainingError(f"{path}: could not write checkpoint ({str(e).strip()[:200]}); the previous "
                                f"checkpoint is intact. Free space, then continue with: "
                                f"driver train --resume {run_dir}") from e

    # -- the loop --------------------------------------------------------------------------------
    progress = _progress(config, main, total_steps, step)
    stopped, last_val, best_val = "completed", {}, {}
    samples, wait_s, busy_s = 0, 0.0, 0.0
    window: list[float] = []
    t_start = time.perf_counter()
    while epoch < config.epochs and stopped == "completed":
        train_ds.set_epoch(epoch)
        plan = plans.plan(epoch)
        rows = plan.indices[batch_in_epoch:steps_per_epoch].tolist()
        loader = DataLoader(train_ds, batch_sampler=rows, num_workers=config.num_workers,
                            pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(config.seed * 1000 + epoch * 10 + dist_info.rank),
                            multiprocessing_context="forkserver" if config.num_workers else None)
        net.train()
        t_ready = time.perf_counter()
        for batch in loader:
            t_got = time.perf_counter()
            x = frames_to_input(batch["frames"].to(device, non_blocking=True), channels_last=config.channels_last)
            target = batch["target"].to(device, non_blocking=True)
            modes = batch["modes"].to(device, non_blocking=True)
            state_in = None
            if recurrent:
                keep = torch.from_numpy(~plan.reset[batch_in_epoch]).to(device)
                state_in = _mask_state(carry, keep) if carry is not None else None
            with autocast():
                out, state = net(x, modes, state_in)
            loss = weighted_loss(out.float(), target, config)
            if not torch.isfinite(loss):
                kept = (f"the last good checkpoint is kept: {run_dir / 'last.pt'}" if (run_dir / "last.pt").exists()
                        else "no checkpoint had been written yet")
                raise TrainingError(f"loss is {loss.item()} at step {step + 1} (epoch {epoch}); stopping, {kept}. "
                                    "Lower --lr or enable --grad-clip")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            carry = detach_state(state) if recurrent else None
            step += 1
            batch_in_epoch += 1
            t_done = time.perf_counter()
            wait_s += t_got - t_ready
            busy_s += t_done - t_ready
            samples += len(x) * x.shape[1]
            window.append(loss.item())
            if progress is not None:
                progress.update(step, loss=float(np.mean(window[-20:])), sps=samples / busy_s,
                                wait=wait_s / busy_s)
            if step % 10 == 0 or batch_in_epoch == steps_per_epoch:
                metrics.write(step, epoch, "train", loss=float(np.mean(window)), lr=scheduler.get_last_lr()[0],
                              samples_per_s=samples / busy_s, data_wait=wait_s / busy_s)
                window.clear()
            end_of_epoch = batch_in_epoch == steps_per_epoch
            if end_of_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            if (config.val_every and step % config.val_every == 0) or (not config.val_every and end_of_epoch):
                last_val = validate()
                if not last_val:  # no validation runs: still checkpoint on schedule
                    checkpoint(last_val)
                else:
                    metrics.write(step, epoch, "val", loss=last_val["loss"], steer_mae=last_val["steer_mae"],
                                  motor_mae=last_val["motor_mae"])
                    improved = last_val["loss"] < best
                    best, bad = (last_val["loss"], 0) if improved else (best, bad + 1)
                    checkpoint(last_val)
                    if improved and main:
                        best_val = dict(last_val, step=step)
                        save(run_dir / "best.pt", {**model_payload(model), **static, "metrics": best_val})
                    if config.patience and ddp.broadcast_flag(bad >= config.patience, dist_info, device):
                        stopped = "early_stop"
                        break
                net.train()
            elif step % config.checkpoint_every == 0 or end_of_epoch:
                checkpoint(last_val)
            if end_of_epoch:
                break
            t_ready = time.perf_counter()  # validation and checkpoints are not data wait
    checkpoint(last_val)
    if progress is not None:
        progress.close()
    metrics.close()
    if main:
        plot_curves(run_dir)
    elapsed = time.perf_counter() - t_start
    log.info("training %s after %d steps in %.0f s", stopped, step, elapsed)
    return RunResult(run_dir, run_dir / "last.pt", run_dir / "best.pt" if (run_dir / "best.pt").exists() else None,
                     step, epoch, stopped, best_val, last_val, samples / busy_s if busy_s else 0.0,
                     wait_s / busy_s if busy_s else 0.0)


class _Progress:
    def __init__(self, total: int, done: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
        self._task = self._p.add_task("train", total=total, completed=done, info="")
        self._p.start()

    def update(self, step: int, loss: float, sps: float, wait: float) -> None:
        self._p.update(self._task, completed=step,
                       info=f"loss {loss:.4f}  {sps:,.0f} samples/s  data wait {100 * wait:.0f}%")

    def close(self) -> None:
        self._p.stop()


def _progress(config: TrainConfig, main: bool, total: int, done: int):
    if not (config.progress and main and sys.stderr.isatty()):
        return None
    return _Progress(total, done)


__all__ = ["train", "RunResult", "TrainingError", "CheckpointError"]
