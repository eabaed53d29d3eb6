"""The one Policy: a trained controller that turns camera frames into actions, frame by frame.

``driver replay``, ``driver sim drive`` and the car loop all call :func:`load_policy` and
``policy.act``; recurrent state and the stacked previous frame live inside the policy::

    policy = load_policy("runs/train/x/best.pt")
    policy.reset()
    action = policy.act(frame_rgb_uint8, right=None, mode="direct")
    action = policy.act(frame, mode=store.labels(run))  # a run's labels: the model's input in training
    action.steer, action.motor            # run units, 0..99 with 49 neutral
    action.steer_norm, action.motor_norm  # [-1, 1]
    action.steer_permille                 # carlink wire values
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from driver.datasets.modes import Labels, active_labels, mode_vector
from driver.errors import DriverError
from driver.preprocess import frames_to_input, prepare_frame
from driver.units import norm_to_permille, norm_to_run


class NonFiniteOutput(DriverError, ValueError):
    """The model produced NaN or infinity: the caller must not send it (the car loop stops in neutral)."""


@dataclass(frozen=True)
class Action:
    """One control decision. ``horizon`` holds all predicted (steer, motor) steps, normalised."""

    steer: float
    motor: float
    steer_norm: float
    motor_norm: float
    steer_permille: int
    motor_permille: int
    latency_s: float
    horizon: np.ndarray


class Policy:
    """A model plus everything needed to feed it exactly as in training (see module docstring)."""

    def __init__(self, model: torch.nn.Module, checkpoint: dict, device: str = "cpu", threads: int | None = None):
        pre = checkpoint["preprocess"]
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.arch = checkpoint["arch"]
        self.cameras: tuple[str, ...] = tuple(pre["cameras"])
        self.stack = int(pre["stack"])
        self.height, self.width = int(pre["height"]), int(pre["width"])
        self.modes: tuple[str, ...] = tuple(pre["modes"])
        self.label_stats: dict | None = checkpoint.get("label_stats")  # training labels: the constant predictor
        self.channels_last = bool(checkpoint.get("config", {}).get("channels_last", True))
        self.path = checkpoint.get("path", "")
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

    def mode_vector(self, mode: Labels) -> torch.Tensor | None:
        """(1, n_modes) model input for ``mode``: one mode name, a set of labels or a run's ``{label: 0|1}``
        labels, built by the same :func:`driver.datasets.modes.mode_vector` as training. Labels the model has
        no mode for (``sim``, ``reject_run``) are ignored; a single name must be one of ``self.modes``."""
        if not self.modes:
            return None
        if isinstance(mode, str) and mode not in self.modes:
            raise ValueError(f"mode={mode!r} is not one of this model's modes {list(self.modes)}")
        return torch.from_numpy(mode_vector(active_labels(mode), self.modes))[None].to(self.device)

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

    @torch.no_grad()
    def act(self, frame: np.ndarray, right: np.ndarray | None = None, mode: Labels = None) -> Action:
        """One frame in, one action out; carries recurrent state and the stacked frame between calls.

        ``mode``: a mode name (``"direct"``), a set of labels, or a run's labels dict (see :meth:`mode_vector`).
        """
        t0 = time.perf_counter()
        current = self.views(frame, right)
        if self.stack == 2:
            previous = current if self._previous is None else self._previous
            views = np.concatenate([previous, current])  # [cam0 t-1, cam1 t-1, cam0 t, cam1 t]
            self._previous = current
        else:
            views = current
        x = frames_to_input(torch.from_numpy(views)[None], channels_last=self.channels_last).to(self.device)
        out, state = self.model.step(x, self.mode_vector(mode), self._state)
        raw = out[0].float().cpu().numpy()  # (horizon, 2)
        if not np.isfinite(raw).all():
            self.reset()  # never carry a poisoned state into the next frame
            raise NonFiniteOutput(f"{self.arch} output is not finite: {raw[0].tolist()} (first step)")
        self._state = state
        pred = np.clip(raw, -1.0, 1.0)
        steer_n, motor_n = float(pred[0, 0]), float(pred[0, 1])
        return Action(float(norm_to_run(steer_n)), float(norm_to_run(motor_n)), steer_n, motor_n,
                      norm_to_permille(steer_n), norm_to_permille(motor_n), time.perf_counter() - t0, pred)


def load_policy(path: str | os.PathLike, runtime: str = "torch", device: str = "cpu",
                threads: int | None = None) -> Policy:
    """A Policy from a checkpoint or run directory, an exported ``.onnx`` / TorchScript ``.ts``, or a
    compressed ``.dcz`` file. ``runtime="onnx"`` runs the model with ONNX Runtime (a checkpoint is exported
    in memory and parity-checked first)."""
    from driver.export import load_step_model

    model, ckpt = load_step_model(path, runtime=runtime, threads=threads)
    return Policy(model, ckpt, device=device, threads=threads)
