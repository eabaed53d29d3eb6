"""Ensembles: several trained models driving as one, their outputs averaged frame by frame.

Models trained alike but from different seeds make different mistakes; the mean of their commands makes fewer
(measured in docs/benchmarks.md, "An ensemble of seeds"). ``driver ensemble`` writes a small manifest naming
the member model files (checkpoints, ``.onnx``, ``.ts`` or ``.dcz``) with a SHA-256 of each;
:func:`driver.load_policy` turns the manifest into an :class:`EnsemblePolicy`, so every command that takes a
model (``driver sim drive``, ``driver replay``, ``driver drive``) takes an ensemble::

    driver ensemble runs/train/s0/last.pt runs/train/s1/last.pt runs/train/s2/last.pt --out car.ensemble.json
    driver sim drive --model car.ensemble.json

Each member is its own :class:`~driver.policy.Policy` (its own preprocessing, stacked frame and recurrent
state) and sees exactly the frame, mode and speed it would see alone; the ensemble's raw output is the mean
of the members' raw outputs over every predicted step, clamped like a single model's. With a motor caution
``k`` > 0 (``driver ensemble --motor-caution k``) the motor is the mean minus ``k`` times the members' spread
(standard deviation) at that step: where the members disagree, the car slows down; where they agree, it
drives as the mean. Members must agree on what they are fed (frame size, cameras, modes, speed input) and on
the output's shape (horizon); they may differ in architecture and frame stacking.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from driver.atomic_write import write_atomic
from driver.datasets.modes import Labels
from driver.errors import DriverError
from driver.policy import Action, NonFiniteOutput, Policy, action_from_raw, load_policy

FORMAT = "driver-ensemble"
VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20
# What every member must share: the caller feeds all of them one frame, mode and speed.
SHARED_INPUTS = ("height", "width", "cameras", "modes", "speed_input")
MAX_CAUTION = 3.0


class EnsembleError(DriverError, ValueError):
    """A manifest that cannot be read or members that cannot drive together; the message names the file."""


@dataclass
class EnsembleConfig:
    """``driver ensemble``: which model files drive together and where the manifest goes."""

    members: list[str]  # model files (checkpoint .pt, .onnx, .ts or .dcz), 2 or more, trained on the same inputs
    out: str = ""  # the manifest to write (a .json file; default: ensemble.json in the first member's folder)
    motor_caution: float = 0.0  # 0..3: motor = mean - this x the members' spread (std): slower where they disagree

    def __post_init__(self):
        check_caution(self.motor_caution, "motor_caution")
        if len(self.members) < 2:
            raise ValueError(f"members: {len(self.members)} model file(s) given; an ensemble needs 2 or more")
        if len(set(map(os.path.realpath, self.members))) != len(self.members):
            raise ValueError(f"members: {self.members} names one file twice (each member counts once)")
        for m in self.members:
            if Path(m).is_dir():
                raise ValueError(f"members: {m} is a folder; name the model file (e.g. {Path(m) / 'last.pt'})")
            if not Path(m).is_file():
                raise ValueError(f"members: {m}: model file not found")
        self.out = self.out or str(Path(self.members[0]).parent / "ensemble.json")
        if Path(self.out).suffix != ".json":
            raise ValueError(f"out={self.out!r} must end in .json (the manifest is JSON)")


@dataclass
class EnsembleReport:
    path: str
    members: list[dict] = field(default_factory=list)
    latency_ms: float = 0.0  # median ensemble step on a blank frame on this machine (10 steps)


def check_caution(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= MAX_CAUTION:
        raise EnsembleError(f"{where}={value!r} must be a number in 0..{MAX_CAUTION:g} (0 = the plain mean)")
    return float(value)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class EnsemblePolicy:
    """Several :class:`~driver.policy.Policy` members acting as one (see the module docstring): the same
    attributes and ``reset``/``act`` a Policy has, so replay, the simulator and the car loop take it as is."""

    def __init__(self, members: list[Policy], path: str = "", motor_caution: float = 0.0):
        if len(members) < 2:
            raise EnsembleError(f"{path or 'ensemble'}: {len(members)} member(s); an ensemble needs 2 or more")
        first = members[0]
        for m in members[1:]:
            for name in SHARED_INPUTS:
                if getattr(m, name) != getattr(first, name):
                    raise EnsembleError(f"{path or 'ensemble'}: member {m.path or m.arch} has {name}="
                                        f"{getattr(m, name)!r} but {first.path or first.arch} has "
                                        f"{getattr(first, name)!r}; members must be fed the same inputs")
        self.members = members
        self.path = str(path)
        self.motor_caution = check_caution(motor_caution, f"{path or 'ensemble'}: motor_caution")
        self.height, self.width = first.height, first.width
        self.cameras, self.modes, self.speed_input = first.cameras, first.modes, first.speed_input
        self.arch = "ensemble of " + ", ".join(m.arch for m in members)
        self.label_stats = _mean_label_stats([m.label_stats for m in members])
        self._check_output_shapes()

    @property
    def stereo(self) -> bool:
        return len(self.cameras) == 2

    @property
    def is_recurrent(self) -> bool:
        return any(m.is_recurrent for m in self.members)

    def reset(self) -> None:
        for m in self.members:
            m.reset()

    def act(self, frame: np.ndarray, right: np.ndarray | None = None, mode: Labels = None,
            speed: float | None = None) -> Action:
        """Every member acts on the same input; the Action of the mean raw output (see :meth:`Policy.act`)."""
        t0 = time.perf_counter()
        raws = []
        for m in self.members:
            try:
                raws.append(m.act(frame, right=right, mode=mode, speed=speed).raw)
            except NonFiniteOutput as e:
                self.reset()  # the member reset itself; keep the others in step with it
                raise NonFiniteOutput(f"{self.path or 'ensemble'}: member {m.path or m.arch}: {e}") from None
        stacked = np.stack(raws).astype(np.float32)  # (members, horizon, 2)
        raw = stacked.mean(axis=0)
        if self.motor_caution:
            raw[:, 1] -= self.motor_caution * stacked[:, :, 1].std(axis=0)
        return action_from_raw(raw, time.perf_counter() - t0)

    def _check_output_shapes(self) -> None:
        """One step on a blank frame: every member's raw output must have the same shape (horizon, 2)."""
        blank = np.zeros((self.height, self.width, 3), np.uint8)
        shapes = {}
        for m in self.members:
            try:
                shapes[m.path or m.arch] = tuple(m.act(blank, right=blank if m.stereo else None, speed=0.0).raw.shape)
            except NonFiniteOutput:
                continue  # it reset itself; driving will stop at its first output, as with that model alone
            m.reset()
        if len(set(shapes.values())) > 1:
            raise EnsembleError(f"{self.path or 'ensemble'}: members predict different horizons (output shapes "
                                f"{shapes}); average only models with the same --horizon")


def _mean_label_stats(stats: list[dict | None]) -> dict | None:
    """The members' training-label means averaged (their constant predictor), or None if any lacks them."""
    means = [(s or {}).get("mean_run_units") for s in stats]
    if any(m is None for m in means):
        return None
    return {"mean_run_units": np.mean(np.asarray(means, np.float64), axis=0).tolist()}


# ---- the manifest ----------------------------------------------------------------------------------


def is_ensemble_manifest(path: str | os.PathLike) -> bool:
    """True for a ``.json`` file (every other model file is a checkpoint, ``.onnx``, ``.ts`` or ``.dcz``)."""
    return Path(path).suffix == ".json" and not Path(path).is_dir()


def read_manifest(path: str | os.PathLike) -> tuple[list[dict], float]:
    """The manifest's members as ``{"path": absolute path, "sha256": ...}``, each checked against its file, and
    its motor caution."""
    p = Path(path)
    if not p.is_file():
        raise EnsembleError(f"{p}: ensemble manifest not found")
    if p.stat().st_size > MAX_MANIFEST_BYTES:
        raise EnsembleError(f"{p}: {p.stat().st_size} bytes is too large for an ensemble manifest")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnsembleError(f"{p}: not an ensemble manifest (not JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EnsembleError(f"{p}: not an ensemble manifest (no \"format\": \"{FORMAT}\"; write one with "
                            "`driver ensemble`)")
    if doc.get("version") != VERSION:
        raise EnsembleError(f"{p}: ensemble manifest version {doc.get('version')!r}; this driver reads {VERSION}")
    if doc.get("combine", "mean") != "mean":
        raise EnsembleError(f"{p}: combine={doc.get('combine')!r}; this driver averages members (\"mean\")")
    caution = check_caution(doc.get("motor_caution", 0.0), f"{p}: motor_caution")
    members = doc.get("members")
    if not isinstance(members, list) or len(members) < 2:
        raise EnsembleError(f"{p}: \"members\" must list 2 or more model files")
    out = []
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("path"), str) or not isinstance(m.get("sha256"), str):
            raise EnsembleError(f"{p}: members[{i}] must be {{\"path\": ..., \"sha256\": ...}}, got {m!r}")
        member = p.parent / m["path"]  # relative to the manifest (an absolute path stays absolute)
        if not member.is_file():
            raise EnsembleError(f"{p}: member {m['path']} not found (looked for {member})")
        digest = file_sha256(member)
        if digest != m["sha256"]:
            raise EnsembleError(f"{p}: member {m['path']} changed since the ensemble was written (SHA-256 "
                                f"{digest[:12]}..., manifest {m['sha256'][:12]}...); run `driver ensemble` again")
        out.append({"path": str(member), "sha256": digest})
    return out, caution


def load_ensemble(path: str | os.PathLike, runtime: str = "auto", device: str = "cpu",
                  threads: int | None = None) -> EnsemblePolicy:
    """An :class:`EnsemblePolicy` from a manifest; each member through :func:`driver.policy.load_policy`."""
    members, caution = read_manifest(path)
    policies = [load_policy(m["path"], runtime=runtime, device=device, threads=threads) for m in members]
    return EnsemblePolicy(policies, path=str(path), motor_caution=caution)


def write_ensemble(config: EnsembleConfig) -> EnsembleReport:
    """Check that the members load and can drive together, then write the manifest atomically."""
    policies = [load_policy(m, threads=1) for m in config.members]
    ensemble = EnsemblePolicy(policies, path=config.out, motor_caution=config.motor_caution)
    out = Path(config.out).resolve()
    members = []
    for m in config.members:
        target = Path(m).resolve()
        try:
            rel = os.path.relpath(target, out.parent)
        except ValueError:  # another drive (Windows): keep it absolute
            rel = str(target)
        members.append({"path": rel, "sha256": file_sha256(target)})
    blank = np.zeros((ensemble.height, ensemble.width, 3), np.uint8)
    steps = [ensemble.act(blank, right=blank if ensemble.stereo else None, speed=0.0).latency_s for _ in range(12)]
    ensemble.reset()
    latency_ms = float(np.median(steps[2:])) * 1e3  # after two warm-up steps
    doc = {"format": FORMAT, "version": VERSION, "combine": "mean", "motor_caution": config.motor_caution,
           "members": members}
    write_atomic(out, (json.dumps(doc, indent=1) + "\n").encode())
    return EnsembleReport(path=str(out), members=members, latency_ms=latency_ms)
