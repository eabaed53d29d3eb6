"""Run sources: one run to ingest, from a lab HDF5 file, a donkeycar tub session or a LeRobot episode.

``driver ingest`` plans and ingests :class:`RunSource` objects. Every source gives what the HDF5 reader
gives: :meth:`RunSource.inspect` returns a validated :class:`~driver.datasets.run_format.RunInfo` (series
loaded, frames not read) whose ``open()`` yields something shaped like the open HDF5 run file
(``src["segments"][name][dataset]`` with ``read_direct`` and slicing), so the ingest's write path reads
an imported run exactly as it reads an HDF5 run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..run_format import ExtraSeries, RunInfo, SegmentInfo, inspect_run
from .errors import ImportFormatError
from .mapping import Mapping

log = logging.getLogger(__name__)


class RunSource:
    """One run to ingest. ``path`` names it in reports; ``run`` is its name in the store."""

    path: str
    run: str
    format: str = "hdf5"

    def exists(self) -> bool:
        raise NotImplementedError

    def fingerprint(self) -> dict:
        """Cheap identity (sizes, mtimes, mapping): a stored run whose ``source`` matches is unchanged."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The run's ``source`` metadata: the fingerprint plus ``path``, ``file`` and a content ``sha256``."""
        raise NotImplementedError

    def inspect(self) -> RunInfo:
        raise NotImplementedError


@dataclass
class Hdf5Source(RunSource):
    """A lab HDF5 run file (docs/run-format.md)."""

    path: str
    run: str = ""
    format: str = "hdf5"

    def __post_init__(self):
        if not self.run:
            from ..store import run_name_for

            self.run = run_name_for(self.path)

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def fingerprint(self) -> dict:
        st = os.stat(self.path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def describe(self) -> dict:
        from ..run_ingest import file_sha256

        return {"path": os.path.abspath(self.path), "file": os.path.basename(self.path),
                "sha256": file_sha256(self.path), **self.fingerprint()}

    def inspect(self) -> RunInfo:
        return inspect_run(self.path)


@dataclass
class ImportedSource(RunSource):
    """A run read from another format. ``error`` set: the source could not be listed, and fails alone."""

    path: str
    run: str
    format: str
    mapping: Mapping | None = None
    files: list[str] = field(default_factory=list)  # every file the run is read from
    error: str = ""
    detail: dict = field(default_factory=dict)  # format-specific metadata kept in the store's `source`

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def fingerprint(self) -> dict:
        size, mtime = 0, 0
        for f in self.files:
            try:
                st = os.stat(f)
            except OSError:
                continue  # reported by inspect, with the record that needs it
            size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
        return {"size": size, "mtime_ns": mtime, "mapping_sha256": self.mapping.digest() if self.mapping else ""}

    def describe(self) -> dict:
        self.fail_if_broken()
        h = hashlib.sha256()
        h.update(self.content_key().encode())
        for f in self.files:
            if not os.path.isfile(f):
                raise ImportFormatError(f, self.missing(f))
            h.update(_file_digest(f).encode())
        return {"path": os.path.abspath(self.path), "file": os.path.basename(os.path.normpath(self.path)),
                "format": self.format, "sha256": h.hexdigest(), **self.detail, **self.fingerprint()}

    def content_key(self) -> str:
        """What identifies the run inside its files (session, episode) and how it is mapped."""
        return f"{self.format}:{self.run}:{self.mapping.digest() if self.mapping else ''}"

    def missing(self, path: str) -> str:
        """What to say about a file of this run that does not exist."""
        return "file is missing"

    def inspect(self) -> RunInfo:
        self.fail_if_broken()  # a source that could not even be listed (formats override the rest)
        raise NotImplementedError

    def fail_if_broken(self) -> None:
        if self.error:
            where, _, problem = self.error.partition(": ")
            raise ImportFormatError(where, problem or self.error)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: str) -> str:
    """sha256 of a file, cached per process by (path, size, mtime): episodes share their video files."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImportFormatError(path, f"cannot read: {e.strerror}") from None
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        from ..run_ingest import file_sha256

        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


# ---- the in-memory run: RunInfo + something shaped like the open HDF5 file ----


class FrameReader:
    """Reads frames of one camera of an imported run by frame index (over all its segments)."""

    def read(self, camera: str, start: int, count: int, out: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class ImportedRunInfo(RunInfo):
    """A RunInfo whose frames come from a :class:`FrameReader` and extras from memory."""

    reader: FrameReader | None = None
    extra_data: dict[str, np.ndarray] = field(default_factory=dict)  # concatenated over segments

    def open(self) -> ImportedRunView:
        return ImportedRunView(self)


class _Dataset:
    """The part of ``h5py.Dataset`` the ingest uses: ``shape``, ``dtype``, slicing and ``read_direct``."""

    def __init__(self, shape: tuple[int, ...], dtype, read):
        self.shape, self.dtype, self._read = tuple(shape), np.dtype(dtype), read

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _range(self, sel) -> tuple[int, int]:
        if sel is None or sel == () or sel is Ellipsis:
            return 0, self.shape[0]
        if isinstance(sel, slice):
            a, b, step = sel.indices(self.shape[0])
            if step != 1:
                raise ValueError("only contiguous slices are supported")
            return a, max(a, b)
        if isinstance(sel, tuple) and len(sel) == 1:
            return self._range(sel[0])
        raise ValueError(f"unsupported selection {sel!r}")

    def __getitem__(self, sel):
        if isinstance(sel, int | np.integer):
            return self[int(sel):int(sel) + 1][0]
        a, b = self._range(sel)
        out = np.empty((b - a, *self.shape[1:]), self.dtype)
        self._read(a, b - a, out)
        return out

    def read_direct(self, dest: np.ndarray, source_sel=None, dest_sel=None) -> None:
        a, b = self._range(source_sel)
        target = dest if dest_sel is None else dest[dest_sel]
        if target.shape[0] != b - a:
            raise ValueError(f"read_direct: {b - a} frames into a buffer of {target.shape[0]}")
        self._read(a, b - a, target)


class ImportedRunView:
    """``view["segments"][name][dataset]`` over an imported run, like an open HDF5 run file."""

    def __init__(self, info: ImportedRunInfo):
        self.info = info
        segments, start = {}, 0
        for seg in info.segments:
            segments[seg.name] = self._segment(start, seg.n_frames)
            start += seg.n_frames
        self._root = {"segments": segments}

    def _segment(self, start: int, n: int) -> dict:
        info, d = self.info, {}
        for cam in info.cameras:
            def read(a, count, out, cam=cam):
                info.reader.read(cam, start + a, count, out)
            d[cam] = _Dataset((n, info.height, info.width, 3), np.uint8, read)
        for k in ("steer", "motor", "state", "left_timestamp"):
            d[k] = info.series[k][start:start + n]
        for name, arr in info.extra_data.items():
            d[name] = arr[start:start + n]
        return d

    def __getitem__(self, key):
        return self._root[key]

    def __enter__(self) -> ImportedRunView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.info.reader is not None:
            self.info.reader.close()


# ---- from per-record columns to a validated run ----


@dataclass
class RecordTable:
    """One run's records as columns, in recording order, before mapping.

    ``where(i)`` names the file (and line or row) of record ``i`` for error messages. ``mode`` holds the
    mode field's raw values (strings or numbers) or None; ``segment_key`` any values whose change starts a
    new segment.
    """

    steer: np.ndarray
    motor: np.ndarray
    time: np.ndarray
    where: Callable[[int], str]
    mode: np.ndarray | None = None
    deleted: np.ndarray | None = None
    segment_key: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steer)


def _check_finite(values: np.ndarray, table: RecordTable, name: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ImportFormatError(table.where(i), f"{name} is {values[i]}: values must be finite numbers")


def build_run(path: str, table: RecordTable, mapping: Mapping, cameras: tuple[str, ...], height: int, width: int,
              reader: FrameReader, labels: dict[str, int]) -> tuple[ImportedRunInfo, np.ndarray]:
    """Map, validate and segment one run's records; returns its RunInfo and the kept record indices.

    Steering and throttle are scaled to run units, modes become state codes, deleted records are kept
    with ``deleted_state`` or dropped (leaving a gap), time is scaled to seconds and must increase, and a
    new segment starts at every gap over ``split_gap_s``, every dropped stretch and every change of
    ``segment_key``.
    """
    n = len(table)
    if n == 0:
        raise ImportFormatError(path, "no records: nothing to import")
    steer_raw = np.asarray(table.steer, np.float64)
    motor_raw = np.asarray(table.motor, np.float64)
    _check_finite(steer_raw, table, mapping.steer.field)
    _check_finite(motor_raw, table, mapping.motor.field)
    t = np.asarray(table.time, np.float64)
    inverse = 1.0 / mapping.time_scale
    t = t / round(inverse) if abs(inverse - round(inverse)) < 1e-9 else t * mapping.time_scale  # ms: exactly /1000
    _check_finite(t, table, mapping.time_field)
    steer, clipped_s = mapping.steer.to_run(steer_raw)
    motor, clipped_m = mapping.motor.to_run(motor_raw)
    for what, k in ((mapping.steer.field, clipped_s), (mapping.motor.field, clipped_m)):
        if k:
            log.warning("%s: %d %s values outside the mapped range were clipped to 0..99", path, k, what)
    state = _states(table, mapping, path)
    deleted = np.zeros(n, bool) if table.deleted is None else np.asarray(table.deleted, bool)
    keep = np.flatnonzero(~deleted) if mapping.deleted == "drop" else np.arange(n)
    if mapping.deleted == "invalid":
        state[deleted] = mapping.deleted_state
    if keep.size == 0:
        raise ImportFormatError(path, "every record is deleted: nothing to import")
    tk = t[keep]
    steps = np.diff(tk)
    if steps.size and steps.min() <= 0:
        i = int(np.flatnonzero(steps <= 0)[0])
        raise ImportFormatError(table.where(int(keep[i + 1])),
                                f"{mapping.time_field} = {table.time[keep[i + 1]]} is not after the previous "
                                f"record's {table.time[keep[i]]}: time must increase")
    period = float(np.median(steps)) if steps.size else 0.0
    gap = mapping.split_gap_s if mapping.split_gap_s is not None else 5.0 * period
    breaks = np.zeros(keep.size, bool)
    if keep.size > 1:
        breaks[1:] = (np.diff(keep) > 1) | (steps > gap if gap > 0 else False)
        if table.segment_key is not None:
            key = np.asarray(table.segment_key)[keep]
            breaks[1:] |= key[1:] != key[:-1]
    starts = np.flatnonzero(breaks).tolist()
    bounds = [0, *starts, keep.size]
    segments = [SegmentInfo(str(i), b - a) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
    extras, extra_data = [], {}
    for name, values in sorted(table.extras.items()):
        arr = np.asarray(values)[keep]
        if arr.dtype.kind not in "iufb":
            raise ImportFormatError(path, f"extra series {name!r} has dtype {arr.dtype}: extras must be numbers")
        extras.append(ExtraSeries(name, arr.dtype.str, tuple(arr.shape[1:])))
        extra_data[name] = arr
    info = ImportedRunInfo(
        path=path, labels=dict(labels), segments=segments, height=height, width=width, cameras=cameras,
        extras=extras, series={"steer": steer[keep], "motor": motor[keep], "state": state[keep].astype(np.float64),
                               "left_timestamp": tk},
        reader=reader, extra_data=extra_data)
    return info, keep


def _states(table: RecordTable, mapping: Mapping, path: str) -> np.ndarray:
    n = len(table)
    if table.mode is None:
        return np.full(n, mapping.state_default, np.int64)
    modes = np.asarray(table.mode)
    if modes.dtype.kind in "iuf" and not mapping.state_codes:
        return np.rint(modes).astype(np.int64)
    codes = {str(k): v for k, v in mapping.state_codes.items()}
    keys = [str(m) if not (isinstance(m, float) and m.is_integer()) else str(int(m)) for m in modes.tolist()]
    out = np.array([codes.get(k, mapping.state_default) for k in keys], np.int64)
    unknown = sorted({k for k in keys if k not in codes})
    if unknown:
        log.warning("%s: modes %s have no state code in the mapping; they get state %d", path, unknown[:5],
                    mapping.state_default)
    return out
