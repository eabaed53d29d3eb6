"""The one Policy: a trained controller that turns camera frames into actions, frame by frame.

``driver replay``, ``driver sim drive`` and the car loop all call :func:`load_policy` and
``policy.act``; recurrent state and the stacked previous frame live inside the policy::

    policy = load_policy("runs/train/x/best.pt")
    policy.reset()
    action = policy.act(frame_rgb_uint8, right=None, mode="direct")
    action = policy.act(frame, mode=store.labels(run))  # a run's labels: the model's input in training
    action = policy.act(frame, mode="direct", speed=1.8)  # the car's speed in m/s (policy.speed_input models)
    action.steer, action.motor            # run units, 0..99 with 49 neutral
    action.steer_norm, action.motor_norm  # [-1, 1]
    action.steer_permille                 # carlink wire values
    action.raw                            # the model's output before any clamp (the car loop checks it)

torch is imported only for torch models: an exported ``.onnx`` runs on ONNX Runtime with numpy in and out
(``driver[car]``, no torch).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from driver.datasets.modes import Labels, active_labels, mode_vector
from driver.errors import DriverError, SpeedRequired
from driver.export.meta import check_preprocess
from driver.preprocess import frames_to_input, frames_to_input_numpy, prepare_frame
from driver.units import norm_to_permille, norm_to_run

if TYPE_CHECKING:
    from driver.ensemble import EnsemblePolicy


class NonFiniteOutput(DriverError, ValueError):
    """The model produced NaN or infinity: the caller must not send it (the car loop stops in neutral)."""


@dataclass(frozen=True)
class Action:
    """One control decision. ``horizon`` holds all predicted (steer, motor) steps, normalised and clamped to
    [-1, 1]; ``raw`` the same before the clamp, as the model produced it (what safety checks look at)."""

    steer: float
    motor: float
    steer_norm: float
    motor_norm: float
    steer_permille: int
    motor_permille: int
    latency_s: float
    horizon: np.ndarray
    raw: np.ndarray = field(default_factory=lambda: np.zeros((1, 2), np.float32))


def action_from_raw(raw: np.ndarray, latency_s: float) -> Action:
    """The Action for a model's raw (horizon, 2) output: the first step, clamped to [-1, 1], in every unit."""
    pred = np.clip(raw, -1.0, 1.0)
    steer_n, motor_n = float(pred[0, 0]), float(pred[0, 1])
    return Action(float(norm_to_run(steer_n)), float(norm_to_run(motor_n)), steer_n, motor_n,
                  norm_to_permille(steer_n), norm_to_permille(motor_n), latency_s, pred, raw)


class Policy:
    """A model plus everything needed to feed it exactly as in training (see module docstring)."""

    def __init__(self, model: Any, checkpoint: dict, device: str = "cpu", threads: int | None = None):
        self.path = checkpoint.get("path", "")
        pre = check_preprocess(checkpoint.get("preprocess"), self.path or "checkpoint")
        self.arch = checkpoint.get("arch", "?")
        self.cameras: tuple[str, ...] = tuple(pre["cameras"])
        self.stack = int(pre["stack"])
        self.height, self.width = int(pre["height"]), int(pre["width"])
        self.modes: tuple[str, ...] = tuple(pre["modes"])
        self.label_stats: dict | None = checkpoint.get("label_stats")  # training labels: the constant predictor
        self.speed_input = bool(getattr(model, "speed_input", False))  # act() needs speed= (m/s)
        self.numpy_io = bool(getattr(model, "numpy_io", False))  # ONNX Runtime: numpy in and out, no torch
        if self.numpy_io:
            self.model, self.device, self.channels_last = model.to(device), device, False
        else:
            import torch

            self.model = model.to(device).eval()
            self.device = torch.device(device)
            self.channels_last = bool(checkpoint.get("config", {}).get("channels_last", True))
            if threads:
                torch.set_num_threads(threads)
            if self.channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)
        self.reset()

    @property
    def is_recurrent(self) -> bool:
        return bool(self.model.is_recurrent)

    @property
    def stereo(self) -> bool:
        return len(self.cameras) == 2

    def reset(self) -> None:
        """Forget the recurrent state and the previous frame (a new drive, a mode change, a gap)."""
        self._state = None
        self._previous: np.ndarray | None = None

    def mode_vector(self, mode: Labels):
        """(1, n_modes) model input for ``mode``: one mode name, a set of labels or a run's ``{label: 0|1}``
        labels, built by the same :func:`driver.datasets.modes.mode_vector` as training. Labels the model has
        no mode for (``sim``, ``reject_run``) are ignored; a single name must be one of ``self.modes``.
        A numpy array for ONNX Runtime, else a torch tensor."""
        if not self.modes:
            return None
        if isinstance(mode, str) and mode not in self.modes:
            raise ValueError(f"mode={mode!r} is not one of this model's modes {list(self.modes)}")
        vec = mode_vector(active_labels(mode), self.modes)[None]
        if self.numpy_io:
            return vec
        import torch

        return torch.from_numpy(vec).to(self.device)

    def views(self, frame: np.ndarray, right: np.ndarray | None) -> np.ndarray:
        """Current camera views (cams, H, W, 3) at the model's size, validated and resized."""
        if self.stereo and right is None:
            raise ValueError(f"{self.arch} is a stereo model: pass right=<the right camera frame>")
        if self.cameras == ("right",):
            frame, right = (right if right is not None else frame), None
        cams = [prepare_frame(frame, self.height, self.width, "frame")]
        if self.stereo:
            cams.append(prepare_frame(right, self.height, self.width, "right"))
        return np.stack(cams)

    def act(self, frame: np.ndarray, right: np.ndarray | None = None, mode: Labels = None,
            speed: float | None = None) -> Action:
        """One frame in, one action out; carries recurrent state and the stacked frame between calls.

        ``mode``: a mode name (``"direct"``), a set of labels, or a run's labels dict (see :meth:`mode_vector`).
        ``speed``: the car's measured speed in m/s (the run's ``encoder`` series). A model trained with speed
        input (``self.speed_input``) requires it (:class:`~driver.errors.SpeedRequired` without it); every
        other model ignores it.
        """
        t0 = time.perf_counter()
        if self.speed_input:
            if speed is None:
                raise SpeedRequired(f"{self.path or self.arch}: this model was trained with the car's speed as an "
                                    "input (speed_input); pass speed=<m/s> to act()")
            speed = float(speed)
            if not np.isfinite(speed):
                raise ValueError(f"speed={speed} must be a finite number of m/s")
        current = self.views(frame, right)
        if self.stack == 2:
            previous = current if self._previous is None else self._previous
            views = np.concatenate([previous, current])  # [cam0 t-1, cam1 t-1, cam0 t, cam1 t]
            self._previous = current
        else:
            views = current
        raw, state = self._step(views, self.mode_vector(mode), speed if self.speed_input else None)
        if not np.isfinite(raw).all():
            self.reset()  # never carry a poisoned state into the next frame
            raise NonFiniteOutput(f"{self.arch} output is not finite: {raw[0].tolist()} (first step)")
        self._state = state
        return action_from_raw(raw, time.perf_counter() - t0)

    def _step(self, views: np.ndarray, modes, speed: float | None) -> tuple[np.ndarray, Any]:
        """One model step on (views, H, W, 3) uint8: the raw (horizon, 2) float32 output (before any clamp) and
        the new state."""
        if self.numpy_io:
            kw = {} if speed is None else {"speed": np.array([speed], np.float32)}
            out, state = self.model.step(frames_to_input_numpy(views[None]), modes, self._state, **kw)
            return np.asarray(out[0], np.float32), state
        import torch

        with torch.no_grad():
            x = frames_to_input(torch.from_numpy(views)[None], channels_last=self.channels_last).to(self.device)
            kw = {} if speed is None else {"speed": torch.tensor([speed], dtype=torch.float32, device=self.device)}
            out, state = self.model.step(x, modes, self._state, **kw)
            return out[0].float().cpu().numpy(), state


def load_policy(path: str | os.PathLike, runtime: str = "auto", device: str = "cpu",
                threads: int | None = None) -> Policy | EnsemblePolicy:
    """A Policy from a checkpoint or run directory, an exported ``.onnx`` / TorchScript ``.ts``, or a
    compressed ``.dcz`` file. ``runtime``: ``auto`` (ONNX Runtime for an ``.onnx``, PyTorch otherwise),
    ``torch`` or ``onnx`` (a checkpoint is exported in memory and parity-checked first). An ensemble manifest
    (``driver ensemble``, a ``.json`` file) gives an :class:`driver.ensemble.EnsemblePolicy` of its members,
    each loaded the same way."""
    from driver.ensemble import is_ensemble_manifest, load_ensemble
    from driver.export.loading import load_step_model

    if is_ensemble_manifest(path):
        return load_ensemble(path, runtime=runtime, device=device, threads=threads)

    model, ckpt = load_step_model(path, runtime=runtime, threads=threads)
    return Policy(model, ckpt, device=device, threads=threads)
