"""Read and validate one driving run in the lab's HDF5 format (docs/run-format.md).

A run file holds ``labels/<name>`` 0/1 flags and ``segments/<i>/`` groups, each with ``left``
(N×H×W×3 uint8 RGB), optional ``right``, ``steer``, ``motor`` (0..99, 49 neutral), ``state`` (lab codes)
and ``left_timestamp`` (seconds). Any other dataset of length N in a segment is an extra series
(encoder, gyro, ...) and is carried along.

:func:`inspect_run` validates everything except pixel values without reading the frames, so a bad run
is rejected before anything is written. Every problem raises :class:`RunFormatError` whose message
names the file and the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from driver.errors import DriverError

CAMERAS = ("left", "right")
SERIES = ("steer", "motor", "state", "left_timestamp")
RUN_VALUE_RANGE = (0.0, 99.0)


class RunFormatError(DriverError, ValueError):
    """A run file that is not a valid driving run; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class ExtraSeries:
    """An extra per-frame dataset (encoder, gyro, ...): its name, dtype and per-frame shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass
class SegmentInfo:
    """One segment of a run: its group name and frame count."""

    name: str
    n_frames: int


@dataclass
class RunInfo:
    """Validated description of a run file. Series are loaded (they are small); frames are not."""

    path: str
    labels: dict[str, int]
    segments: list[SegmentInfo]
    height: int
    width: int
    cameras: tuple[str, ...]
    extras: list[ExtraSeries] = field(default_factory=list)
    series: dict[str, np.ndarray] = field(default_factory=dict)  # concatenated over segments

    @property
    def n_frames(self) -> int:
        return sum(s.n_frames for s in self.segments)

    @property
    def stereo(self) -> bool:
        return "right" in self.cameras

    def open(self):
        """What the ingest reads frames and extras from: the open HDF5 file (imported runs override this)."""
        return open_run_file(self.path)


def _fail(path, problem: str):
    raise RunFormatError(path, problem)


def _segment_names(path, segments: h5py.Group) -> list[str]:
    names = list(segments.keys())
    if not names:
        _fail(path, "'segments' group is empty: a run needs at least one segment")
    bad = [n for n in names if not n.isdigit()]
    if bad:
        _fail(path, f"segment names must be integers 0, 1, 2, ...; found {bad[0]!r}")
    return sorted(names, key=int)


def _check_frames(path, where: str, ds, n: int | None, hw: tuple[int, int] | None):
    if not isinstance(ds, h5py.Dataset):
        _fail(path, f"{where} must be a dataset, found a group")
    if ds.dtype != np.uint8:
        _fail(path, f"{where} has dtype {ds.dtype}, expected uint8 RGB frames")
    if ds.ndim != 4 or ds.shape[3] != 3:
        _fail(path, f"{where} has shape {ds.shape}, expected (N, H, W, 3)")
    if ds.shape[0] == 0:
        _fail(path, f"{where} is empty (0 frames)")
    if n is not None and ds.shape[0] != n:
        _fail(path, f"{where} has {ds.shape[0]} frames but 'left' has {n}")
    if hw is not None and tuple(ds.shape[1:3]) != hw:
        _fail(path, f"{where} is {ds.shape[1]}x{ds.shape[2]} but the run's frames are {hw[0]}x{hw[1]}")


def _read_series(path, where: str, ds, n: int) -> np.ndarray:
    if not isinstance(ds, h5py.Dataset):
        _fail(path, f"{where} must be a dataset, found a group")
    if ds.dtype.kind not in "iuf":
        _fail(path, f"{where} has dtype {ds.dtype}, expected numbers")
    if ds.ndim != 1:
        _fail(path, f"{where} has shape {ds.shape}, expected ({n},)")
    if ds.shape[0] != n:
        _fail(path, f"{where} has {ds.shape[0]} values but 'left' has {n} frames")
    return ds[()].astype(np.float64)


def _check_values(path, seg: str, series: dict[str, np.ndarray]):
    lo, hi = RUN_VALUE_RANGE
    for name in ("steer", "motor"):
        v = series[name]
        if not np.all(np.isfinite(v)):
            i = int(np.flatnonzero(~np.isfinite(v))[0])
            _fail(path, f"segments/{seg}/{name}[{i}] is {v[i]}: values must be finite")
        if v.min() < lo or v.max() > hi:
            i = int(np.flatnonzero((v < lo) | (v > hi))[0])
            _fail(path, f"segments/{seg}/{name}[{i}] = {v[i]:g} is outside {lo:g}..{hi:g}")
    state = series["state"]
    if not np.all(np.isfinite(state)):
        _fail(path, f"segments/{seg}/state has non-finite values")
    t = series["left_timestamp"]
    if not np.all(np.isfinite(t)):
        _fail(path, f"segments/{seg}/left_timestamp has non-finite values")
    steps = np.diff(t)
    if steps.size and steps.min() <= 0:
        i = int(np.flatnonzero(steps <= 0)[0])
        _fail(
            path,
            f"segments/{seg}/left_timestamp is not increasing at frame {i + 1} "
            f"({t[i]:.6f} then {t[i + 1]:.6f})",
        )


def _extras_of(path, seg: str, group: h5py.Group, n: int) -> list[ExtraSeries]:
    extras = []
    for name, ds in group.items():
        if name in SERIES or name in CAMERAS:
            continue
        if not isinstance(ds, h5py.Dataset):
            _fail(path, f"segments/{seg}/{name} is a group; extra series must be datasets")
        if ds.dtype.kind not in "iufb" or ds.ndim < 1:
            _fail(path, f"segments/{seg}/{name} has dtype {ds.dtype} and shape {ds.shape}: "
                  "extra series must be numeric arrays with one row per frame")
        if ds.shape[0] != n:
            _fail(path, f"segments/{seg}/{name} has {ds.shape[0]} rows but 'left' has {n} frames")
        extras.append(ExtraSeries(name, ds.dtype.str, tuple(ds.shape[1:])))
    return sorted(extras, key=lambda e: e.name)


def _describe(extras: list[ExtraSeries]) -> str:
    return ", ".join(f"{e.name} {e.dtype}{list(e.shape)}" for e in extras) or "none"


def _read_labels(path, f: h5py.File) -> dict[str, int]:
    labels: dict[str, int] = {}
    if "labels" not in f:
        return labels
    if not isinstance(f["labels"], h5py.Group):
        _fail(path, "'labels' must be a group of 0/1 datasets")
    for name, ds in f["labels"].items():
        if not isinstance(ds, h5py.Dataset):
            _fail(path, f"labels/{name} is a group; labels must be 0/1 datasets")
        value = np.asarray(ds[()]).reshape(-1)
        if value.size != 1 or value[0] not in (0, 1):
            _fail(path, f"labels/{name} must be a single 0 or 1, found {value[:4].tolist()}")
        labels[name] = int(value[0])
    return labels


def open_run_file(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 run read-only, turning h5py's errors into a clear :class:`RunFormatError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        _fail(path, "no such file")
    if not h5py.is_hdf5(path):
        _fail(path, "not an HDF5 file (bad signature)")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        _fail(path, f"cannot open as HDF5 (truncated or corrupt?): {e}")


def inspect_run(path: str | os.PathLike) -> RunInfo:
    """Validate a run file's structure and series; return its :class:`RunInfo` (frames not read)."""
    path = os.fspath(path)
    with open_run_file(path) as f:
        try:
            return _inspect_open(path, f)
        except RunFormatError:
            raise
        except (OSError, KeyError, RuntimeError) as e:  # h5py raises these on corrupt objects
            _fail(path, f"corrupt HDF5 content: {e}")


def _inspect_open(path: str, f: h5py.File) -> RunInfo:
    if "segments" not in f or not isinstance(f["segments"], h5py.Group):
        _fail(path, "not a driver run: no 'segments' group (see docs/run-format.md)")
    labels = _read_labels(path, f)
    segments: list[SegmentInfo] = []
    hw: tuple[int, int] | None = None
    cameras: tuple[str, ...] | None = None
    extras: list[ExtraSeries] | None = None
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SERIES}
    last_t = -np.inf
    for seg in _segment_names(path, f["segments"]):
        g = f["segments"][seg]
        if not isinstance(g, h5py.Group):
            _fail(path, f"segments/{seg} must be a group")
        for name in ("left", *SERIES):
            if name not in g:
                _fail(path, f"segments/{seg} has no '{name}' dataset")
        _check_frames(path, f"segments/{seg}/left", g["left"], None, hw)
        n = int(g["left"].shape[0])
        hw = (int(g["left"].shape[1]), int(g["left"].shape[2]))
        seg_cams = ("left", "right") if "right" in g else ("left",)
        if cameras is not None and seg_cams != cameras:
            _fail(path, f"segments/{seg} has cameras {seg_cams} but earlier segments have {cameras}")
        cameras = seg_cams
        if "right" in g:
            _check_frames(path, f"segments/{seg}/right", g["right"], n, hw)
        series = {k: _read_series(path, f"segments/{seg}/{k}", g[k], n) for k in SERIES}
        _check_values(path, seg, series)
        if series["left_timestamp"][0] <= last_t:
            _fail(path, f"segments/{seg} starts at t={series['left_timestamp'][0]:.6f}, "
                  f"not after the previous segment's last frame (t={last_t:.6f})")
        last_t = series["left_timestamp"][-1]
        seg_extras = _extras_of(path, seg, g, n)
        if extras is not None and seg_extras != extras:
            _fail(path, f"segments/{seg} has extra series {_describe(seg_extras)} "
                  f"but earlier segments have {_describe(extras)} (same names, dtypes and shapes needed)")
        extras = seg_extras
        for k in SERIES:
            parts[k].append(series[k])
        segments.append(SegmentInfo(seg, n))
    assert hw is not None and cameras is not None and extras is not None
    return RunInfo(
        path=path,
        labels=labels,
        segments=segments,
        height=hw[0],
        width=hw[1],
        cameras=cameras,
        extras=extras,
        series={k: np.concatenate(v) for k, v in parts.items()},
    )
