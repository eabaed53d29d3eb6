"""`driver train`: the training loop. Reads top to bottom: start or resume, set up, loop, finish.

:func:`train` builds a :class:`~driver.training.setup.Setup` (data, model, optimiser) and a :class:`Trainer`
whose :class:`~driver.training.state.TrainingState` is everything the loop changes and a checkpoint saves.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from driver.errors import DriverError
from driver.models import detach_state, legacy_kwargs, list_models
from driver.preprocess import frames_to_input
from driver.progress import Progress
from driver.threads import apply_threads, loader_worker_init

from . import distributed as ddp
from .batches import curriculum_epochs
from .budget import paced_epochs, size_to_budget
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
from .config import TrainConfig, parse_budget, write_config
from .distill import check_same_teacher
from .evaluate import balance_factors, batch_speed, evaluate, not_beating, running_error_ratios, weighted_loss
from .health import HealthMonitor, blown_up
from .metrics import MetricsLog, plot_curves
from .optim import lr_factor
from .precise_bn import recompute_batchnorm
from .recipe import store_frame_rate
from .setup import Setup, device_for, prepare
from .state import TrainingState, mask_state
from .weight_average import WeightAverage

log = logging.getLogger(__name__)

RESUME_OVERRIDES = ("epochs", "progress", "num_workers", "threads")  # flags a resume may change


class TrainingError(DriverError, RuntimeError):
    """Training stopped on a problem the user must act on; the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    steps: int
    epochs: int
    stopped: str  # completed | early_stop | budget
    best_val: dict = field(default_factory=dict)
    final_val: dict = field(default_factory=dict)
    samples_per_s: float | None = None  # frames per second trained by this process (None: no step ran)
    data_wait: float | None = None
    model_choice: dict = field(default_factory=dict)  # --eval-closed-loop: model_choice.json (see Trainer)


def train(config: TrainConfig | None = None, resume: str | Path | None = None,
          overrides: dict | None = None) -> RunResult:
    """Train per ``config``, or continue the run in directory ``resume`` exactly where it stopped.

    ``overrides`` (with ``resume``): options given again; ``epochs`` extends the run, ``progress``,
    ``num_workers`` and ``threads`` apply, anything else is ignored with a warning (the run keeps its ``config.json``).
    """
    started = time.perf_counter()
    ckpt, run_dir = None, None
    if resume is not None:
        run_dir = Path(resume)
        config, ckpt = _load_resume(run_dir, overrides or {})
    elif config is None:
        raise ValueError("train() needs a config or a run directory to resume")
    if config.arch not in list_models():
        raise ValueError(f"arch={config.arch!r} is not a known model; choose one of {', '.join(list_models())}")
    if not config.data:
        raise ValueError("data is empty: name the store to train on (driver ingest output)")
    apply_threads(config.threads, config.num_workers)
    dist = ddp.init_distributed(device_for(config).type)
    created = False
    try:
        if run_dir is None:
            run_dir = _new_run_dir(config, dist)
        fresh = ckpt is None
        sizer = (lambda setup: size_to_budget(setup, started)) if fresh and config.budget else None
        setup = prepare(config, dist, fresh, sizer)
        if dist.is_main and not run_dir.exists():
            run_dir.mkdir(parents=True)
            created = True
        return Trainer(setup, run_dir, ckpt, started, pace=sizer is not None).run()
    except BaseException:
        if created and not (run_dir / "last.pt").exists():  # a failed start leaves no empty run folder
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        ddp.shutdown(dist)


def _load_resume(run_dir: Path, overrides: dict) -> tuple[TrainConfig, dict | None]:
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir}: not a training run directory (no config.json)")
    saved = json.loads((run_dir / "config.json").read_text())
    saved.setdefault("speed_input", "off")  # runs from before speed input existed trained without it
    saved.setdefault("loss_balance", False)  # and runs from before the balanced loss without it
    config = TrainConfig.from_dict(saved, str(run_dir))
    changed = {k: v for k, v in overrides.items() if v is not None and v != getattr(config, k)}
    ignored = sorted(k for k in changed if k not in RESUME_OVERRIDES)
    if ignored:
        log.warning("resume continues %s with its config.json; ignored: %s (only %s can change on resume)",
                    run_dir, ", ".join(f"--{k.replace('_', '-')}" for k in ignored),
                    ", ".join(f"--{k}" for k in RESUME_OVERRIDES))
    keep = {k: v for k, v in changed.items() if k in RESUME_OVERRIDES}
    if keep.get("epochs", config.epochs) < config.epochs:
        raise ValueError(f"--epochs {keep['epochs']} is fewer than the run's {config.epochs}: a resume can only "
                         "extend a run")
    if "epochs" in keep:
        log.info("extending %s from %d to %d epochs (the lr schedule stretches to the new length)", run_dir,
                 config.epochs, keep["epochs"])
    config = replace(config, **keep)
    ckpt = load_checkpoint(run_dir / "last.pt") if (run_dir / "last.pt").exists() else None
    if ckpt is not None:  # rebuild exactly the saved model (knobs recorded since, or their values before)
        config = replace(config, arch_kwargs=legacy_kwargs(ckpt["arch"], ckpt["arch_kwargs"]))
    return config, ckpt


def _new_run_dir(config: TrainConfig, dist: ddp.DistInfo) -> Path:
    name = [config.name or f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}"]
    if dist.enabled:
        torch.distributed.broadcast_object_list(name, 0)
    run_dir = Path(config.out) / name[0]
    if (run_dir / "last.pt").exists() or (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir} already holds a training run; continue it with --resume {run_dir} "
                         "or choose another --name")
    return run_dir


class Trainer:
    """One training run: the setup, the state, and the steps between them."""

    def __init__(self, setup: Setup, run_dir: Path, ckpt: dict | None, started: float, pace: bool = False):
        self.s, self.cfg, self.run_dir = setup, setup.config, run_dir
        self.pace = pace  # a fresh budgeted run: re-plan the epochs that fit at each epoch's end
        self.main = setup.dist.is_main
        # --ema: the averaged weights are the model validated and saved; else the trained weights are
        self.average = WeightAverage(setup.model, self.cfg.ema) if self.cfg.ema else None
        self.state = TrainingState() if ckpt is None else self._restore(ckpt)
        self.metrics = MetricsLog(run_dir, enabled=self.main)
        self.metrics.truncate_after(self.state.step)
        self.health = None
        if self.cfg.health_every:
            self.health = HealthMonitor(setup.model, run_dir if self.main else None, self.metrics.tb)
            self.health.truncate_after(self.state.step)
        self.deadline = started + parse_budget(self.cfg.budget) if self.cfg.budget else None
        self.check_step = self.cfg.learning_check_step or max(1, setup.total_steps // 4)
        self.warned: set[str] = set()
        self.static = self._static_payload()
        self.drive_eval = self._drive_eval_config() if self.cfg.eval_closed_loop else None
        self.bn_step = -1  # the step at which BatchNorm statistics were last recomputed

    @property
    def served_model(self) -> torch.nn.Module:
        """The model validated, driven and saved: the weight average with ``--ema``, else the trained model."""
        return self.s.model if self.average is None else self.average.model

    def _restore(self, ckpt: dict) -> TrainingState:
        s, training = self.s, ckpt["training"]
        check_compatible(ckpt, self.cfg.arch, s.spec)
        if s.teacher is not None:
            check_same_teacher(ckpt.get("distill", {}).get("members"), s.teacher, self.run_dir)
        if self.average is not None:  # the checkpoint's model is the average; the trained weights travel beside
            self.average.load(ckpt["model"], training["weight_average"])
            s.model.load_state_dict(training["trained_model"])
        else:
            s.model.load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(training["optimizer"])
        s.scheduler.load_state_dict(training["scheduler"])
        if s.scaler is not None and training.get("scaler"):
            s.scaler.load_state_dict(training["scaler"])
        if len(training["rng"]) != s.dist.world:
            raise CheckpointError(f"{self.run_dir / 'last.pt'}: the run was trained with {len(training['rng'])} "
                                  f"processes; resume it with the same number (not {s.dist.world})")
        torch.set_rng_state(training["rng"][s.dist.rank])
        cuda_rng = training.get("cuda_rng")
        if s.device.type == "cuda" and cuda_rng is not None:  # one per rank (a bare tensor in older checkpoints)
            torch.cuda.set_rng_state(cuda_rng[s.dist.rank] if isinstance(cuda_rng, list) else cuda_rng)
        state = TrainingState.from_checkpoint(training, s.dist.rank, s.device)
        if not state.best_val and (self.run_dir / "best.pt").exists():  # checkpoints before best_val was saved
            state.best_val = dict(load_checkpoint(self.run_dir / "best.pt").get("metrics", {}))
        log.info("resuming %s at step %d (epoch %d, batch %d)", self.run_dir, state.step, state.epoch,
                 state.batch_in_epoch)
        return state

    def _static_payload(self) -> dict:
        s = self.s
        return {"config": self.cfg.to_dict(), "units": UNITS, "precision": s.precision,
                "preprocess": preprocess_info(s.spec, self.cfg.camera_names, s.train_ds.config.modes),
                "label_stats": s.stats.to_dict(),
                **({"distill": {"teacher": s.teacher.path, "weight": s.teacher.weight,
                                "members": s.teacher.fingerprint()}} if s.teacher is not None else {}),
                "dataset": {"store": str(s.store.path), "train_runs": s.train_runs, "val_runs": s.val_runs,
                            "fingerprint": dataset_fingerprint(s.store, s.train_runs + s.val_runs)}}

    def _drive_eval_config(self):
        """Held-out worlds to drive (``--eval-closed-loop``) at the training data's frame rate and size."""
        from driver.sim.model_choice import DriveEvalConfig, parse_tracks

        s = self.s
        return DriveEvalConfig(tracks=parse_tracks(self.cfg.eval_closed_loop),
                               fps=store_frame_rate(s.store, s.train_runs), height=s.spec.height,
                               width=s.spec.width, stereo=len(self.cfg.camera_names) == 2,
                               seconds=self.cfg.eval_seconds, seed=self.cfg.seed)

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg, st = self.cfg, self.state
        if self.main:
            write_config(cfg, self.run_dir)
            (self.run_dir / "split.json").write_text(json.dumps({"train": self.s.train_runs, "val": self.s.val_runs,
                                                                  "rank_runs": self.s.rank_runs}))
        if st.epoch >= cfg.epochs:
            log.warning("%s is already complete (step %d, %d epochs); pass --epochs N (> %d) with --resume to "
                        "train longer", self.run_dir, st.step, cfg.epochs, cfg.epochs)
        stopped = "completed"
        self.loop_started, self.loop_start_step = time.perf_counter(), st.step
        with Progress("train", self.s.total_steps, st.step, enabled=cfg.progress and self.main) as progress:
            while st.epoch < self.cfg.epochs and stopped == "completed":
                stopped = self._epoch(progress)
                if stopped == "completed" and self.pace:
                    self._pace(progress)
            if self.bn_step != st.step:
                self._precise_bn()
            self._checkpoint()
        self.metrics.close()
        if self.health is not None:
            self.health.close()
        if self.main:
            plot_curves(self.run_dir)
        log.info("training %s after %d steps", stopped, st.step)
        choice = self._report_model_choice() if self.drive_eval is not None and self.main else {}
        best = self.run_dir / "best.pt"
        return RunResult(self.run_dir, self.run_dir / "last.pt", best if best.exists() else None, st.step, st.epoch,
                         stopped, st.best_val, st.last_val, st.samples_per_s, st.data_wait, choice)

    def _epoch(self, progress: Progress) -> str:
        """Train the rest of the current epoch; returns ``completed`` or why training stopped early."""
        s, st, cfg = self.s, self.state, self.cfg
        s.train_ds.set_epoch(st.epoch)
        plan = s.plans.plan(st.epoch)
        rows = plan.indices[st.batch_in_epoch:s.steps_per_epoch].tolist()
        loader = DataLoader(s.train_ds, batch_sampler=rows, num_workers=cfg.num_workers,
                            pin_memory=s.device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed * 1000 + st.epoch * 10 + s.dist.rank),
                            multiprocessing_context="forkserver" if cfg.num_workers else None,
                            worker_init_fn=loader_worker_init if cfg.num_workers else None)
        s.net.train()
        t_ready = time.perf_counter()
        for batch in loader:
            t_got = time.perf_counter()
            loss, frames = self._step(batch, plan.reset[st.batch_in_epoch])
            st.wait_s += t_got - t_ready
            st.busy_s += time.perf_counter() - t_ready
            st.samples += frames
            progress.update(st.step, loss=f"loss {np.mean(st.window[-20:]):.4f}",
                            rate=f"{st.samples_per_s:,.0f} frames/s")
            stopped = self._after_step(loss)
            if stopped != "completed" or st.batch_in_epoch == 0:  # stopped, or the epoch ended
                return stopped
            t_ready = time.perf_counter()  # validation and checkpoints are not data wait
        return "completed"

    def _pace(self, progress: Progress) -> None:
        """At an epoch's end of a budgeted run: as many epochs as fit the time left at the speed so far
        (``budget.paced_epochs``); the lr schedule stretches or shrinks to the new length."""
        s, st = self.s, self.state
        ran = st.step - self.loop_start_step
        if not ran or st.epoch >= self.cfg.epochs:
            return
        now = time.perf_counter()
        epochs = paced_epochs(self.cfg.epochs, s.steps_per_epoch, st.step, (now - self.loop_started) / ran,
                              self.deadline - now)
        epochs = int(ddp.all_reduce_min(epochs, s.dist, s.device))  # every rank follows the slowest
        if epochs == self.cfg.epochs:
            return
        log.info("budget %s: %d steps fit at %.2f s a step so far (was %d); lr schedule %s", self.cfg.budget,
                 epochs * s.steps_per_epoch, (now - self.loop_started) / ran, s.total_steps,
                 "stretched" if epochs > self.cfg.epochs else "shortened")
        self.cfg = s.config = replace(self.cfg, epochs=epochs)
        if self.cfg.random_clip_share:  # a curriculum given as a share follows the new length until it ends
            switch = curriculum_epochs(self.cfg.random_clip_share, epochs, st.epoch, self.cfg.random_clip_epochs)
            if switch != self.cfg.random_clip_epochs:
                log.info("curriculum: random clips for the first %d of %d epochs (was %d)", switch, epochs,
                         self.cfg.random_clip_epochs)
                self.cfg = s.config = replace(self.cfg, random_clip_epochs=switch)
                s.plans.random_clip_epochs = switch
        s.scheduler.lr_lambdas = [lr_factor(self.cfg, s.total_steps)] * len(s.scheduler.lr_lambdas)
        self.static = self._static_payload()
        progress.set_total(s.total_steps)
        if self.main:
            write_config(self.cfg, self.run_dir)

    def _step(self, batch: dict, reset: np.ndarray) -> tuple[float, int]:
        """One optimiser step on a batch; returns (loss, frames)."""
        s, st, cfg = self.s, self.state, self.cfg
        x = frames_to_input(batch["frames"].to(s.device, non_blocking=True), channels_last=cfg.channels_last)
        target = batch["target"].to(s.device, non_blocking=True)
        modes, speed = batch["modes"].to(s.device, non_blocking=True), batch_speed(batch, s.device)
        keep = torch.from_numpy(~reset).to(s.device)
        state_in = None
        if s.model.is_recurrent and st.carry is not None:
            state_in = mask_state(st.carry, keep)
        if s.teacher is not None:  # --teacher: the labels mixed with the teacher's output on the same input
            target, st.teacher_carry = s.teacher.targets(x, modes, speed, target, st.teacher_carry, keep, s.autocast)
        measure = self.health is not None and (st.step + 1) % cfg.health_every == 0
        if measure:
            self.health.start()
        extra = {"frame_outputs": True} if cfg.frame_loss > 0 else {}
        with s.autocast():
            out, state, *framewise = s.net(x, modes, state_in, speed=speed, **extra)
        if cfg.loss_balance:
            st.error_ratios = running_error_ratios(st.error_ratios, out, target, s.stats)
        balance = balance_factors(cfg, st.error_ratios) if cfg.loss_balance else None
        loss = weighted_loss(out.float(), target, cfg, s.stats, balance)
        if framewise:  # --frame-loss: each frame's features alone must predict the targets too
            loss = loss + cfg.frame_loss * weighted_loss(framewise[0].float(), target, cfg, s.stats, balance)
        if not torch.isfinite(loss):
            last = self.run_dir / "last.pt"
            kept = f"the last good checkpoint is kept: {last}" if last.exists() else "no checkpoint had been written"
            raise TrainingError(f"loss is {loss.item()} at step {st.step + 1} (epoch {st.epoch}); stopping, {kept}. "
                                "Lower --lr or enable --grad-clip")
        s.optimizer.zero_grad(set_to_none=True)
        if s.scaler is not None:
            s.scaler.scale(loss).backward()
            s.scaler.unscale_(s.optimizer)
        else:
            loss.backward()
        if measure:
            self._check_health(self.health.finish(st.step + 1))
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)
        if s.scaler is not None:
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            s.optimizer.step()
        s.scheduler.step()
        if self.average is not None:
            self.average.update(s.model)
        st.carry = detach_state(state) if s.model.is_recurrent else None
        st.step, st.batch_in_epoch, st.steps_run = st.step + 1, st.batch_in_epoch + 1, st.steps_run + 1
        st.window.append(loss.item())
        return st.window[-1], x.shape[0] * x.shape[1]

    def _after_step(self, loss: float) -> str:
        """Metrics rows, the epoch boundary, validation and checkpoints after a step; why to stop, if so."""
        s, st, cfg = self.s, self.state, self.cfg
        end_of_epoch = st.batch_in_epoch == s.steps_per_epoch
        if st.step % 10 == 0 or end_of_epoch:
            self.metrics.write(st.step, st.epoch, "train", loss=float(np.mean(st.window)),
                               lr=s.scheduler.get_last_lr()[0], samples_per_s=st.samples_per_s,
                               data_wait=st.data_wait)
            st.window.clear()
        if end_of_epoch:
            st.epoch, st.batch_in_epoch = st.epoch + 1, 0
        stopped = "completed"
        validate = (cfg.val_every and st.step % cfg.val_every == 0) or (not cfg.val_every and end_of_epoch)
        drive = self.drive_eval is not None and (st.step % cfg.every == 0 if cfg.every else validate)
        if validate or drive:
            stopped = self._validate(drive)
        elif st.step % cfg.checkpoint_every == 0 or end_of_epoch:
            self._checkpoint()
        if (stopped == "completed" and self.deadline is not None and st.step < s.total_steps
                and time.perf_counter() > self.deadline):  # (the last step done: completed, however late)
            log.warning("the budget %s is spent at step %d of %d: stopping", cfg.budget, st.step, s.total_steps)
            stopped = "budget"
        return stopped

    def _validate(self, drive: bool = False) -> str:
        """Validate (and with ``drive`` also drive the held-out sim worlds), checkpoint, keep ``best.pt``: by the
        validation score (evaluate.py: median over runs of the error ratio), or with ``--eval-closed-loop`` by
        the drive score (pace × autonomy) at each drive;
        ``early_stop`` after ``patience`` judged evaluations without improvement."""
        s, st, cfg = self.s, self.state, self.cfg
        self._precise_bn()
        if s.val_ds is None and not drive:
            self._checkpoint()
            return "completed"
        if s.val_ds is not None:
            served = s.net if self.average is None else self.served_model  # s.net: DDP-wrapped when distributed
            st.last_val = evaluate(served, s.val_ds, cfg, s.device, s.autocast, s.dist, s.stats)
            s.net.train()
            self.metrics.write_validation(st.step, st.epoch, st.last_val)
        else:
            st.last_val = {}
        if drive:
            self._drive()
        judged, improved = self.drive_eval is None or drive, False  # with closed loop, only drives choose
        if judged:
            if self.drive_eval is None:
                improved = st.last_val["score"] < st.best_score
                st.best_score = min(st.best_score, st.last_val["score"])
            else:
                from driver.sim.model_choice import is_better

                improved = is_better(st.last_val["drive_score"], st.best_drive)
                st.best_drive = st.last_val["drive_score"] if improved else st.best_drive
            st.bad_validations = 0 if improved else st.bad_validations + 1
        if improved:
            st.best_val = dict(st.last_val, step=st.step)
        self._checkpoint()
        if improved and self.main:
            self._save(self.run_dir / "best.pt", {**model_payload(self.served_model), **self.static,
                                                  "metrics": st.best_val})
        if s.val_ds is not None and st.step >= self.check_step:
            self._warn_or_fail("not_learning", not_beating(st.last_val, cfg))
        if judged and cfg.patience and ddp.broadcast_flag(st.bad_validations >= cfg.patience, s.dist, s.device):
            return "early_stop"
        return "completed"

    def _precise_bn(self) -> None:
        """BatchNorm statistics from random training clips, not the last few batches (``precise_bn.py``)."""
        s = self.s
        recompute_batchnorm(self.served_model, s.train_ds, self.cfg, s.device, s.autocast, s.dist, self.state.step)
        self.bn_step = self.state.step

    def _drive(self) -> None:
        """Drive a copy of the model through the held-out worlds (main process only; the others score 0)."""
        from driver.sim.model_choice import drive_score

        st = self.state
        scores = {"drive_score": 0.0, "drive_autonomy": 0.0, "drive_pace": 0.0}
        if self.main:
            t0 = time.perf_counter()
            scores = drive_score(self.served_model, {"arch": self.cfg.arch, **self.static}, self.drive_eval)
            log.info("step %d: drove %s held-out worlds in %.0f s: autonomy %.1f%%, pace %.3f, drive score %.3f",
                     st.step, self.cfg.eval_closed_loop, time.perf_counter() - t0, scores["drive_autonomy"],
                     scores["drive_pace"], scores["drive_score"])
        st.last_val = {**st.last_val, **scores}
        self.metrics.write(st.step, st.epoch, "drive", loss=st.last_val.get("loss"), score=st.last_val.get("score"),
                           **scores)
        st.drive_history.append([st.step, st.last_val.get("score"), scores["drive_score"]])

    def _report_model_choice(self) -> dict:
        """Which step each criterion picks, and how often the two rankings disagreed (``model_choice.json``)."""
        from driver.sim.model_choice import summarise_choice

        choice = summarise_choice(self.state.drive_history)
        (self.run_dir / "model_choice.json").write_text(json.dumps(choice, indent=2), encoding="utf-8")
        return choice

    def _check_health(self, rows: dict) -> None:
        self._warn_or_fail("blowup", blown_up(rows, self.health.first, self.s.precision))

    def _warn_or_fail(self, kind: str, problems: list[str]) -> None:
        """Warn once per problem kind (or stop, with ``not_learning="fail"``) about a training that goes wrong."""
        if not problems or self.cfg.not_learning == "off":
            return
        what = {"not_learning": "the model does not beat the constant predictor (always the training mean)",
                "blowup": "activations blow up"}[kind]
        text = f"step {self.state.step}: {what}: " + "; ".join(problems[:3])
        if self.cfg.not_learning == "fail":
            raise TrainingError(text + ". Stopping (not_learning=fail); try a lower --lr, more steps, or check "
                                "the data with driver info --lint")
        if kind not in self.warned:
            self.warned.add(kind)
            log.warning("%s", text)

    def _checkpoint(self) -> None:
        """Write ``last.pt``: the model, the state, the optimiser and every rank's RNG and carried state."""
        s, st = self.s, self.state
        carries, mine = [None] * s.dist.world, st.carry_cpu()
        rngs = [torch.get_rng_state()] * s.dist.world
        my_cuda_rng = torch.cuda.get_rng_state() if s.device.type == "cuda" else None
        cuda_rngs = [my_cuda_rng] * s.dist.world
        if s.dist.enabled:
            torch.distributed.all_gather_object(carries, mine)
            torch.distributed.all_gather_object(rngs, torch.get_rng_state())
            torch.distributed.all_gather_object(cuda_rngs, my_cuda_rng)
        else:
            carries = [mine]
        if not self.main:
            return
        models, teachers = [c[0] for c in carries], [c[1] for c in carries]
        training = {**st.to_dict(), "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
                    "scaler": s.scaler.state_dict() if s.scaler is not None else {}, "rng": rngs,
                    "cuda_rng": cuda_rngs if my_cuda_rng is not None else None,
                    "carry": models if any(c is not None for c in models) else None,
                    "teacher_carry": teachers if any(c is not None for c in teachers) else None}
        if self.average is not None:
            training |= {"weight_average": self.average.state_dict(),
                         "trained_model": {k: v.detach().cpu() for k, v in s.model.state_dict().items()}}
        self._save(self.run_dir / "last.pt", {**model_payload(self.served_model), **self.static,
                                              "metrics": st.last_val, "training": training})

    def _save(self, path: Path, payload: dict) -> None:
        try:
            save_checkpoint(path, payload)
        except (OSError, RuntimeError) as e:  # disk full surfaces as either, depending on where torch.save fails
            what = f"could not write checkpoint ({str(e).strip()[:200]})"
            if (self.run_dir / "last.pt").exists():
                raise TrainingError(f"{path}: {what}; the previous checkpoint is intact. Free space, then continue "
                                    f"with: driver train --resume {self.run_dir}") from e
            raise TrainingError(f"{path}: {what}; no checkpoint was saved, so the run folder is removed. Free "
                                "space, then run the same command again") from e


__all__ = ["train", "RunResult", "TrainingError", "CheckpointError"]
