"""Distillation: train one model towards what a teacher (a model or an ensemble) commands, ``--teacher PATH``.

An ensemble of seeds drives better than its members (docs/benchmarks.md, "An ensemble of seeds"), at N times
their latency and N trainings. ``driver train --teacher car.ensemble.json --teacher-weight W`` trains a single
model whose target at every frame is ``(1 - W) x the recorded label + W x the teacher's output`` on the same
input, so the student learns the ensemble's function where the data goes (Hinton et al. 2015, "Distilling the
Knowledge in a Neural Network", for regression: the soft target is the teacher's command).

The teacher is a checkpoint (``.pt``) or an ensemble manifest (``driver ensemble``, members checked against
their SHA-256) of checkpoints; the combination is the ensemble's own: the mean of the members' outputs, the
motor lowered by the manifest's ``motor_caution`` x their spread. Each member sees exactly what the student
sees in training: the same (flipped) frames, modes and speed, and, for recurrent members, its own state carried
along the student's lanes and reset where the student's is. Members must take the student's input (frame size,
cameras, stacking, modes, horizon; speed input needs ``--speed-input on``); they may differ in architecture.
Their carried states travel in ``last.pt`` and their file digests in the run's config check, so a resumed run
continues exactly and refuses a teacher that changed. Validation and ``best.pt`` still score against the
recorded labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from driver.models import InputSpec, detach_state

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from .state import mask_state

log = logging.getLogger(__name__)


class TeacherError(CheckpointError):
    """A teacher that cannot be loaded or does not take the student's input; the message names the file."""


def _member_paths(path: str) -> tuple[list[dict], float]:
    """[{"path", "sha256"}] of the teacher's model files and the motor caution (0 for a single checkpoint)."""
    from driver.ensemble import file_sha256, is_ensemble_manifest, read_manifest

    p = Path(path)
    if is_ensemble_manifest(p):
        members, caution = read_manifest(p)
    elif p.is_dir():
        raise TeacherError(f"teacher={path}: a folder; name the checkpoint (e.g. {p / 'last.pt'}) or an ensemble "
                           "manifest (.json)")
    elif not p.is_file():
        raise TeacherError(f"teacher={path}: file not found")
    else:
        members, caution = [{"path": str(p), "sha256": file_sha256(p)}], 0.0
    for m in members:
        if Path(m["path"]).suffix != ".pt":
            raise TeacherError(f"teacher={path}: member {m['path']} is not a checkpoint (.pt); a teacher runs in "
                               "PyTorch beside the student (export it from its checkpoint instead)")
    return members, caution


class Teacher:
    """The teacher's members in eval mode; :meth:`targets` mixes labels and their outputs."""

    def __init__(self, path: str, weight: float, spec: InputSpec, modes: tuple[str, ...],
                 cameras: tuple[str, ...], speed_input: bool, recurrent: bool, device: torch.device,
                 channels_last: bool):
        self.path, self.weight = path, weight
        self.members, self.caution = _member_paths(path)
        self.models = []
        for m in self.members:
            ckpt = load_checkpoint(m["path"])
            where = f"teacher {m['path']}"
            model = model_from_checkpoint(ckpt)
            if InputSpec(**ckpt["spec"]) != spec:
                raise TeacherError(f"{where}: input {InputSpec(**ckpt['spec'])} does not match the student's "
                                   f"({spec}); a teacher must take the same frames, stacking, modes and horizon")
            pre = ckpt["preprocess"]
            if tuple(pre.get("modes", ())) != tuple(modes) or tuple(pre.get("cameras", ())) != tuple(cameras):
                raise TeacherError(f"{where}: trained on cameras {pre.get('cameras')} and modes {pre.get('modes')}, "
                                   f"the student on {list(cameras)} and {list(modes)}")
            if bool(getattr(model, "speed_input", False)) and not speed_input:
                raise TeacherError(f"{where}: reads the car's speed; train the student with --speed-input on so "
                                   "the batches carry it")
            if bool(getattr(model, "is_recurrent", False)) and not recurrent:
                raise TeacherError(f"{where}: is recurrent but the student ({spec}) trains on independent frames, "
                                   "where the teacher's state would start from zero at every frame; distil it "
                                   "into a recurrent model")
            model.requires_grad_(False)
            model = model.to(device)
            self.models.append(model.to(memory_format=torch.channels_last) if channels_last else model)
        log.info("distilling from %s: %d member(s), target = %.2f x labels + %.2f x the teacher's output%s",
                 path, len(self.models), 1 - weight, weight,
                 f" (motor caution {self.caution:g})" if self.caution else "")

    def fingerprint(self) -> list[dict]:
        """What the run was distilled from: each member's file and SHA-256 (checked again on resume)."""
        return [dict(m) for m in self.members]

    @torch.no_grad()
    def targets(self, x: torch.Tensor, modes: torch.Tensor, speed, target: torch.Tensor, carry: list | None,
                keep: torch.Tensor, autocast) -> tuple[torch.Tensor, list]:
        """The student's target for this batch, labels and the teacher's (B, T, horizon, 2) output mixed by the
        weight, and the members' states after it. ``carry``: the members' states from the previous step (None
        at the start); ``keep`` (B,) bool: lanes that continue (the others restart from zero, as the student's)."""
        carry = carry if carry is not None else [None] * len(self.models)
        if len(carry) != len(self.models):
            raise TeacherError(f"teacher={self.path}: {len(carry)} carried member states for {len(self.models)} "
                               "members (the checkpoint was written with another teacher)")
        outs, after = [], []
        for model, state in zip(self.models, carry, strict=True):
            with autocast():
                out, new_state = model(x, modes, mask_state(state, keep), speed=speed)
            after.append(detach_state(new_state) if getattr(model, "is_recurrent", False) else None)
            outs.append(out.float())
        stacked = torch.stack(outs)
        taught = stacked.mean(0)
        if self.caution and len(outs) > 1:
            taught[..., 1] -= self.caution * stacked[..., 1].std(0, unbiased=False)
        return (1.0 - self.weight) * target + self.weight * taught, after


def check_same_teacher(saved: list[dict] | None, teacher: Teacher, run_dir: Path) -> None:
    """Refuse to resume a distilled run whose teacher files changed (its targets would not be the same)."""
    if saved is None:
        return
    now = teacher.fingerprint()
    if [m["sha256"] for m in saved] != [m["sha256"] for m in now]:
        raise TeacherError(f"{run_dir}: distilled from {[m['path'] for m in saved]}, but the teacher "
                           f"{teacher.path} now has other files or contents; resume with the same teacher or "
                           "start a new run")
