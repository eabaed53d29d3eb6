"""The clip Dataset: T consecutive frames with the next N steps of steer and motor as targets.

One item (torch tensors, ready for the default collate)::

    frames  uint8   (T, V, H, W, 3)  V = stack * cameras, time-major [cam0 t-1, cam1 t-1, cam0 t, ...]
    target  float32 (T, N, 2)        steer, motor at frames t, t+s, ..., normalised to [-1, 1] (driver.units)
    modes   float32 (M,)             the run's labels over ``ClipConfig.modes`` (``datasets.modes.mode_vector``)
    speed   float32 (T,)             only with ``ClipConfig.speed``: the car's speed (m/s) at each step's frame,
                                     from the run's speed series (``encoder`` preferred, ``datasets.series``)
    run     int64                    index into ``dataset.runs``
    start   int64                    frame index of the clip's first step in its run
    flipped bool                     horizontal-flip augmentation applied (``color_jitter`` is not flagged);
                                     drawn per clip, or per run and epoch (``flip_scope="run"``)

A clip may start at frame s only if every frame of its window, from the stacked previous frame to its
last target (frames the strides skip included), is valid and lies in one segment of the run.
Turn frames into model input with ``driver.preprocess.frames_to_input`` (the one preprocessing function
shared with the car).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from driver.units import run_to_norm

from .augment import Jitter, flip_clip, item_uniforms, jitter_, jitter_colors, mirror_  # noqa: F401 - re-exported
from .lint import LintRules, lint_run
from .modes import MODES, active_labels, mode_vector
from .series import stored_speed_name
from .store import Store, StoreError
from .validity import ValidityRules, validity_mask

DEFAULT_EXCLUDE = ("reject_run",)

_scratch = threading.local()  # per thread: one reused buffer for the cameras' T+1 frames

@dataclass(frozen=True)
class ClipConfig:
    """What a clip is. Every field is validated with a message naming it and its valid range."""

    clip_length: int = 1
    frame_stride: int = 1
    cameras: tuple[str, ...] = ("left", "right")
    stack: int = 1
    horizon: int = 10
    target_stride: int = 1
    flip: float = 0.0
    flip_scope: str = "clip"  # one flip draw per clip, or per run and epoch ("run": recurrent lanes)
    color_jitter: float = 0.0
    modes: tuple[str, ...] = MODES
    include_labels: tuple[str, ...] = ()
    exclude_labels: tuple[str, ...] = DEFAULT_EXCLUDE
    validity: ValidityRules | None = None
    exclude_flagged: LintRules | None = None  # drop windows where the driver lost control (datasets.lint)
    speed: bool = False  # items carry the car's speed; every run needs a speed series
    seed: int = 0

    def __post_init__(self):
        checks = [
            ("clip_length", self.clip_length, 1, 64),
            ("frame_stride", self.frame_stride, 1, 1000),
            ("stack", self.stack, 1, 2),
            ("horizon", self.horizon, 1, 1000),
            ("target_stride", self.target_stride, 1, 1000),
        ]
        for name, value, lo, hi in checks:
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name}={value!r} must be an integer in {lo}..{hi}")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip={self.flip} must be a probability in 0..1")
        if self.flip_scope not in ("clip", "run"):
            raise ValueError(f"flip_scope={self.flip_scope!r} must be 'clip' or 'run'")
        if not 0.0 <= self.color_jitter <= 1.0:
            raise ValueError(f"color_jitter={self.color_jitter} must be in 0..1")
        if self.cameras not in (("left",), ("right",), ("left", "right")):
            raise ValueError(f"cameras={self.cameras!r} must be ('left',), ('right',) or ('left', 'right')")
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "include_labels", tuple(self.include_labels))
        object.__setattr__(self, "exclude_labels", tuple(self.exclude_labels))

    @property
    def views(self) -> int:
        return self.stack * len(self.cameras)

    def span(self) -> tuple[int, int]:
        """Frames touched before and after a clip's start frame (inclusive offsets)."""
        before = self.stack - 1
        after = (self.clip_length - 1) * self.frame_stride + (self.horizon - 1) * self.target_stride
        return before, after


def eligible_starts(valid: np.ndarray, segment: np.ndarray, before: int, after: int) -> np.ndarray:
    """Start frames s whose whole window [s-before, s+after] is valid and inside one segment."""
    n = len(valid)
    lo, hi = np.arange(-before, n - before), np.arange(after, n + after)
    inside = (lo >= 0) & (hi < n)
    s = np.flatnonzero(inside)
    bad = np.concatenate([[0], np.cumsum(~valid.astype(bool))])  # bad[i] = invalid frames before i
    a, b = s - before, s + after
    ok = (bad[b + 1] - bad[a] == 0) & (segment[a] == segment[b])
    return s[ok].astype(np.int64)


class _StackedPut:
    """``ShardedFrames.visit`` callback copying a camera's T+1 consecutive frames into a stack-2 clip
    straight from the shard: frame i = 0 into the previous view's first step, i >= 1 into the current
    view's step i-1."""

    __slots__ = ("out", "slot", "cameras")

    def __init__(self, out: np.ndarray, slot: int, cameras: int):
        self.out, self.slot, self.cameras = out, slot, cameras

    def __call__(self, pos: int, frames: np.ndarray) -> None:
        out, slot = self.out, self.slot
        if pos == 0:
            out[0, slot] = frames[0]
            frames, pos = frames[1:], 1
        out[pos - 1 : pos - 1 + len(frames), self.cameras + slot] = frames


def _span_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """This thread's reused buffer for the cameras' T+1 frames (a fresh one page-faults every item)."""
    buf = getattr(_scratch, "span", None)
    if buf is None or buf.shape != shape:
        buf = _scratch.span = np.empty(shape, dtype=np.uint8)
    return buf


@dataclass
class _RunArrays:
    name: str
    steer: np.ndarray
    motor: np.ndarray
    modes: np.ndarray
    n_frames: int = 0
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    speed: np.ndarray | None = None  # m/s per frame (ClipConfig.speed)


class ClipDataset(Dataset):
    """Clips from an ingested store (see module docstring). Safe under fork, spawn and forkserver."""

    def __init__(self, store: str | os.PathLike | Store, config: ClipConfig = ClipConfig(),
                 runs: list[str] | None = None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.config = config
        self.epoch = 0
        names = self.store.runs if runs is None else list(runs)
        if not names:
            raise StoreError(f"{self.store.path}: the store holds no runs")
        self._runs: list[_RunArrays] = []
        before, after = config.span()
        needed = ["steer", "motor", "segment"] + (["valid"] if config.validity is None else ["state", "timestamp"])
        self.store.load_series(names, needed)  # on object storage: all at once, not one request after another
        for name in names:
            meta = self.store.run_meta(name)
            labels = active_labels(meta["labels"])
            if config.include_labels and not labels & set(config.include_labels):
                continue
            if labels & set(config.exclude_labels):
                continue
            missing = [c for c in config.cameras if c not in meta["cameras"]]
            if missing:
                raise StoreError(f"{self.store.path}: run {name!r} has no {missing[0]!r} camera "
                                 f"(has {meta['cameras']}); train with --cameras left (or auto)")
            steer, motor = self.store.series(name, "steer"), self.store.series(name, "motor")
            segment = self.store.series(name, "segment")
            if config.validity is None:
                valid = self.store.series(name, "valid")
            else:
                speed_name = stored_speed_name(meta)
                valid = validity_mask(self.store.series(name, "state"), steer, motor,
                                      self.store.series(name, "timestamp"), segment, config.validity,
                                      self.store.series(name, speed_name) if speed_name else None)
            if config.exclude_flagged is not None:
                valid = valid & ~lint_run(self.store, name, config.exclude_flagged)[1]
            modes = mode_vector(labels, config.modes)
            steer_n, motor_n = (run_to_norm(v.astype(np.float32)) for v in (steer, motor))
            arrays = _RunArrays(name, steer_n, motor_n, modes, len(steer),
                                eligible_starts(valid, segment, before, after),
                                self._speed(name, meta) if config.speed else None)
            self._runs.append(arrays)
        if not self._runs:
            raise StoreError(f"{self.store.path}: no run matches include_labels={list(config.include_labels)} "
                             f"and exclude_labels={list(config.exclude_labels)} among {len(names)} runs")
        self.runs = [r.name for r in self._runs]
        counts = [len(r.starts) for r in self._runs]
        self._run_index = np.repeat(np.arange(len(self._runs)), counts)
        self._starts = np.concatenate([r.starts for r in self._runs]) if self._runs else np.zeros(0, np.int64)
        if len(self._starts) == 0:
            raise StoreError(f"{self.store.path}: no clips of length {config.clip_length} (horizon "
                             f"{config.horizon}) pass the validity mask in runs {names}")
        self._target_offsets = (np.arange(config.clip_length)[:, None] * config.frame_stride
                                + np.arange(config.horizon)[None, :] * config.target_stride)  # (T, N)
        shape = self.store.run_meta(self.runs[0])
        self.frame_shape = (shape["height"], shape["width"], 3)
        for r in self.runs[1:]:
            m = self.store.run_meta(r)
            if (m["height"], m["width"]) != self.frame_shape[:2]:
                raise StoreError(f"{self.store.path}: run {r!r} is {m['height']}x{m['width']} but run "
                                 f"{self.runs[0]!r} is {self.frame_shape[0]}x{self.frame_shape[1]}; "
                                 "a dataset needs one frame size")

    def _speed(self, name: str, meta: dict) -> np.ndarray:
        """The run's speed series (m/s), checked: one finite value per frame."""
        series = stored_speed_name(meta)
        if series is None:
            extras = [e["name"] for e in meta.get("extras", [])]
            raise StoreError(f"{self.store.path}: run {name!r} has no speed series (encoder or speed; it has "
                             f"{extras or 'no extra series'}); train without speed input (--speed-input off)")
        speed = np.asarray(self.store.series(name, series), dtype=np.float32)
        if not np.isfinite(speed).all():
            bad = int(np.flatnonzero(~np.isfinite(speed))[0])
            raise StoreError(f"{self.store.path}: run {name!r} series {series!r} is not finite at frame {bad}")
        return speed

    def __len__(self) -> int:
        return len(self._starts)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the augmentation for a new epoch (items stay a pure function of seed, epoch, index)."""
        self.epoch = int(epoch)

    def clip_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(run index, start frame) of every clip, ordered by run then start."""
        return self._run_index, self._starts

    def clip_run_and_start(self, index: int) -> tuple[str, int]:
        return self.runs[self._run_index[index]], int(self._starts[index])

    def labels_at_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """(steer, motor), normalised to [-1, 1], at every clip's first frame (the labels training sees)."""
        steer = np.concatenate([r.steer[r.starts] for r in self._runs])
        motor = np.concatenate([r.motor[r.starts] for r in self._runs])
        return steer, motor

    def high_steer(self) -> np.ndarray:
        """Per clip: is the lab-smoothed steering at its start outside 43..55 (for SteerBalancedSampler)."""
        from .sampling import high_steer_mask

        masks = [high_steer_mask(self.store.series(r.name, "steer"))[r.starts] for r in self._runs]
        return np.concatenate(masks)

    def read_frames(self, run: int, start: int, out: np.ndarray | None = None, flipped: bool = False,
                    jitter: Jitter | None = None) -> np.ndarray:
        """The uint8 (T, V, H, W, 3) input frames of the clip starting at ``start`` in run index ``run``.

        ``flipped``: as the flip augmentation gives them (cameras swapped, every image mirrored);
        ``jitter``: with that colour jitter applied. With ``stack`` 2 and ``frame_stride`` 1 the stacked
        views share frames: each camera's T+1 frames are read once, straight into the current view (and
        the previous view's first step) whose other steps are then copied from it; or, for an augmented
        clip, into a reused buffer where they are jittered and mirrored once, in cache, before both views
        are copied from it.
        """
        cfg = self.config
        T, S, cams = cfg.clip_length, cfg.stack, cfg.cameras
        C = len(cams)
        if out is None:
            out = np.empty((T, cfg.views, *self.frame_shape), dtype=np.uint8)
        name = self._runs[run].name
        shared = S == 2 and cfg.frame_stride == 1  # ClipConfig allows stack 1..2
        span = _span_buffer((C, T + 1, *self.frame_shape)) if shared and (flipped or jitter) else None
        for c, cam in enumerate(cams):
            slot = C - 1 - c if flipped else c  # the mirrored left image is the right camera's view
            reader = self.store.frames(name, cam)
            if span is not None:
                reader.read(start - 1, T + 1, span[slot])
            elif shared:  # frame start-1+i goes to out[0, slot] (i = 0), else to out[i-1, C+slot]
                reader.visit(start - 1, T + 1, _StackedPut(out, slot, C))
            elif cfg.frame_stride > 1:
                for j in range(S):
                    first = start - (S - 1 - j)
                    reader.read_frames(first + np.arange(T) * cfg.frame_stride, out[:, j * C + slot])
            else:
                reader.read(start, T, out[:, slot])
        if shared and span is None:
            out[1:, :C] = out[:-1, C:]
            return out
        frames = out if span is None else span  # every frame of the clip once
        if jitter is not None:
            jitter_([frames], jitter)
        if flipped:
            mirror_(frames)
        if span is not None:
            out[:, :C] = span[:, :-1].swapaxes(0, 1)
            out[:, C:] = span[:, 1:].swapaxes(0, 1)
        return out

    def _reads(self, index: int) -> list[tuple[str, str, int, int]]:
        """The (run, camera, first frame, count) reads of item ``index``, as :meth:`read_frames` makes them."""
        cfg = self.config
        name, s = self.runs[self._run_index[index]], int(self._starts[index])
        if cfg.frame_stride == 1:
            return [(name, cam, s - (cfg.stack - 1), cfg.clip_length + cfg.stack - 1) for cam in cfg.cameras]
        return [(name, cam, int(f), 1) for cam in cfg.cameras for j in range(cfg.stack)
                for f in s - (cfg.stack - 1 - j) + np.arange(cfg.clip_length) * cfg.frame_stride]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A batch of items (the DataLoader calls this). On object storage the byte ranges of the whole batch
        are fetched first, in parallel, one request each, instead of one after another item by item."""
        if self.store.remote:
            self.store.prefetch([r for i in indices for r in self._reads(int(i) % len(self))])
        return [self[i] for i in indices]

    def __getitem__(self, index: int) -> dict:
        n = len(self._starts)
        if not -n <= index < n:
            raise IndexError(f"clip index {index} out of range for {n} clips")
        index = int(index) % n
        cfg = self.config
        r, s = int(self._run_index[index]), int(self._starts[index])
        run = self._runs[r]
        u = item_uniforms(cfg.seed, self.epoch, index)
        # "run": every clip of run r shares one draw per epoch (keyed apart from the clips' own draws), so a
        # recurrent lane, which walks one run's consecutive clips with its state carried, sees one world
        u_flip = item_uniforms(cfg.seed, self.epoch, -1 - r)[0] if cfg.flip_scope == "run" else u[0]
        flipped = cfg.flip > 0 and u_flip < cfg.flip
        jitter = Jitter.draw(cfg.color_jitter, u[1:6]) if cfg.color_jitter > 0 else None
        frames = self.read_frames(r, s, flipped=flipped, jitter=jitter)
        steps = s + self._target_offsets  # (T, N)
        target = np.empty((*steps.shape, 2), dtype=np.float32)
        if flipped:
            np.negative(run.steer[steps], out=target[..., 0])
        else:
            target[..., 0] = run.steer[steps]
        target[..., 1] = run.motor[steps]
        item = {
            "frames": torch.from_numpy(frames),
            "target": torch.from_numpy(target),
            "modes": torch.from_numpy(run.modes.copy()),
            "run": torch.from_numpy(np.array(r, dtype=np.int64)),
            "start": torch.from_numpy(np.array(s, dtype=np.int64)),
            "flipped": torch.from_numpy(np.array(flipped)),
        }
        if run.speed is not None:
            item["speed"] = torch.from_numpy(run.speed[steps[:, 0]].copy())
        return item
