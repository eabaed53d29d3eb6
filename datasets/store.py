"""An ingested store: open it, list its runs, read their series and frames; commit runs atomically."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from .layout import FORMAT_VERSION, RUNS, SERIES_ARRAYS, STAGING, STORE_ATTR, TRASH
from .shard_reader import ShardedFrames


class StoreError(ValueError):
    """A store that is missing, not a driver store, or damaged; the message names the path."""


def run_name_for(path: str | os.PathLike) -> str:
    """The run's name in the store: the file name without its suffix, made path-safe."""
    stem = Path(path).name
    for suffix in (".hdf5", ".h5"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "run"


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Store:
    """Read access to a store written by ``driver ingest`` (see docs/dataset-format.md).

    Picklable and cheap to copy into DataLoader workers: files are opened lazily in each process.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        root = self.path / "zarr.json"
        if not root.is_file():
            raise StoreError(f"{self.path}: not a store (no zarr.json); create one with `driver ingest`")
        try:
            attrs = _read_json(root).get("attributes", {})
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{root}: unreadable store metadata: {e}") from e
        info = attrs.get(STORE_ATTR)
        if not isinstance(info, dict):
            raise StoreError(f"{self.path}: a zarr group but not a driver store (no '{STORE_ATTR}' attribute)")
        if info.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format_version {info.get('format_version')} is not "
                             f"supported (this driver reads {FORMAT_VERSION})")
        self._meta: dict[str, dict] = {}
        self._series: dict[tuple[str, str], np.ndarray] = {}
        self._frames: dict[tuple[str, str], ShardedFrames] = {}

    def __getstate__(self):
        return {"path": self.path, "_meta": self._meta, "_series": {}, "_frames": {}}

    @property
    def runs(self) -> list[str]:
        """Names of the complete runs, sorted."""
        d = self.path / RUNS
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if not p.name.startswith(".") and (p / "zarr.json").is_file())

    def has_run(self, name: str) -> bool:
        return (self.path / RUNS / name / "zarr.json").is_file()

    def run_meta(self, name: str) -> dict:
        """The run's metadata: labels, source (path, sha256, size), cameras, size, segments, counts."""
        if name not in self._meta:
            path = self.path / RUNS / name / "zarr.json"
            if not path.is_file():
                raise StoreError(f"{self.path}: no run named {name!r} (runs: {', '.join(self.runs) or 'none'})")
            meta = _read_json(path).get("attributes", {}).get("driver_run")
            if not isinstance(meta, dict):
                raise StoreError(f"{path}: run group has no 'driver_run' metadata")
            self._meta[name] = meta
        return self._meta[name]

    def series(self, run: str, name: str) -> np.ndarray:
        """A whole per-frame series of a run (steer, motor, state, timestamp, segment, valid, or an extra)."""
        key = (run, name)
        if key not in self._series:
            rel = name if name in SERIES_ARRAYS else f"extra/{name}"
            path = self.path / RUNS / run / rel
            if not (path / "zarr.json").is_file():
                raise StoreError(f"{self.path}: run {run!r} has no series {name!r}")
            self._series[key] = zarr.open_array(path, mode="r")[...]
        return self._series[key]

    def frames(self, run: str, camera: str = "left") -> ShardedFrames:
        """Fast random access to a run's frames of one camera."""
        key = (run, camera)
        if key not in self._frames:
            meta = self.run_meta(run)
            if camera not in meta["cameras"]:
                raise StoreError(f"{self.path}: run {run!r} has no {camera!r} camera (has {meta['cameras']})")
            self._frames[key] = ShardedFrames(self.path / RUNS / run / camera)
        return self._frames[key]

    def labels(self, run: str) -> dict[str, int]:
        """The run's 0/1 labels (behavioral modes and flags such as reject_run)."""
        return dict(self.run_meta(run)["labels"])

    def clips(self, config=None, runs: list[str] | None = None):
        """A :class:`~driver.datasets.clips.ClipDataset` over this store (all runs unless ``runs``)."""
        from .clips import ClipConfig, ClipDataset

        return ClipDataset(self, config or ClipConfig(), runs=runs)

    @cached_property
    def disk_bytes(self) -> int:
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(self.path) for f in fs)

    def update_source(self, run: str, source: dict) -> None:
        """Record a new path/mtime for an unchanged source (same sha256), atomically."""
        path = self.path / RUNS / run / "zarr.json"
        doc = _read_json(path)
        doc["attributes"]["driver_run"]["source"] = source
        tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        self._meta.pop(run, None)


def create_store(path: str | os.PathLike) -> Store:
    """Open the store at ``path``, creating an empty one if nothing is there."""
    p = Path(path)
    if p.exists() and not (p / "zarr.json").exists():
        if p.is_dir() and not any(p.iterdir()):
            pass
        else:
            raise StoreError(f"{p}: exists and is not a store; choose a new --out path")
    if not (p / "zarr.json").exists():
        root = zarr.open_group(p, mode="w")
        root.attrs[STORE_ATTR] = {"format_version": FORMAT_VERSION}
        root.create_group(RUNS)
    return Store(p)


@contextlib.contextmanager
def locked(store: Store):
    """Hold an exclusive lock on the store so two ingests cannot write it at once."""
    with open(store.path / "zarr.json", "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise StoreError(f"{store.path}: another ingest is writing this store") from e
        try:
            yield store
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (renames, new files) durable, where the filesystem supports that.

    Some network and FUSE filesystems refuse fsync on a directory (EINVAL, ENOTSUP); there the rename is
    as durable as that filesystem makes it, and ingest goes on.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file and folder under ``path`` (a staging run before its commit rename)."""
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def sweep_leftovers(store: Store) -> None:
    """Clean up after a killed ingest: drop staging folders; restore a replaced run whose new version never
    landed (killed between the two renames of :func:`commit_run`), then drop the trash."""
    shutil.rmtree(store.path / STAGING, ignore_errors=True)
    trash = store.path / TRASH
    if trash.is_dir():
        for entry in sorted(trash.iterdir()):
            name = entry.name.rsplit(".", 1)[0]
            target = store.path / RUNS / name
            if (entry / "zarr.json").is_file() and not target.exists():
                os.rename(entry, target)
                fsync_dir(target.parent)
        shutil.rmtree(trash, ignore_errors=True)


def commit_run(store: Store, name: str, staging: str) -> None:
    """Make a fully written (and fsynced) staging folder the run ``name``, replacing any previous version.

    A replace moves the old run to ``.trash`` first; if the process dies before the new one is renamed in,
    :func:`sweep_leftovers` puts the old run back, so a run is never lost, only not yet replaced.
    """
    target = store.path / RUNS / name
    if target.exists():
        trash = store.path / TRASH / f"{name}.{uuid.uuid4().hex[:12]}"
        trash.parent.mkdir(exist_ok=True)
        os.rename(target, trash)
        os.rename(staging, target)
        fsync_dir(target.parent)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(staging, target)
        fsync_dir(target.parent)
    store._meta.pop(name, None)
