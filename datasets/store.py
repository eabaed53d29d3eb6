"""An ingested store: open it, list its runs, read their series and frames; commit runs atomically."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import uuid
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from driver.atomic_write import write_atomic
from driver.errors import DriverError

from . import storage
from .layout import FORMAT_VERSION, READABLE_VERSIONS, RUNS, SERIES_ARRAYS, STAGING, STORE_ATTR, TRASH
from .object_store import StoreIOError, WriteConflict
from .shard_reader import REPAIR_HINT, ChecksumError, ShardedFrames, ShardReadError
from .storage import fsync_dir, fsync_tree


class StoreError(DriverError, ValueError):
    """A store that is missing, not a driver store, or damaged; the message names the path."""


def run_name_for(path: str | os.PathLike) -> str:
    """The run's name in the store: the file name without its suffix, made path-safe."""
    stem = Path(path).name
    for suffix in (".hdf5", ".h5"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "run"


MAX_JSON_BYTES = 16 << 20  # one zarr.json; a run's holds its labels and segment table (a few KB)


def _parse_json(raw: bytes, where: str) -> dict:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise StoreError(f"{where}: unreadable store metadata: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("attributes", {}), dict):
        raise StoreError(f"{where}: store metadata must be a JSON object with an 'attributes' object")
    return doc


def _read_json(location, key: str) -> dict:
    """A store metadata document (a JSON object), bounded; every problem is a StoreError naming the object
    (FileNotFoundError when absent; a failed request to object storage stays a StoreIOError)."""
    where = location.name(key)
    try:
        raw = location.read(key, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise
    except ValueError as e:
        raise StoreError(f"{e} of metadata") from e
    except OSError as e:
        if location.remote:
            raise
        raise StoreError(f"{where}: unreadable store metadata: {e}") from e
    return _parse_json(raw, where)


class Store:
    """Read access to a store written by ``driver ingest`` (see docs/dataset-format.md), in a folder or at
    an object-storage URL (docs/object-storage.md).

    ``path`` is the folder (a Path), or for a store on object storage its URL (a str); ``url`` is the str
    in both cases. ``cache`` applies to stores on object storage: frames read by byte range go through a
    local read-through cache (default :meth:`ShardCache.from_env`; ``None`` reads without one).
    Picklable and cheap to copy into DataLoader workers: files and connections are opened lazily in each
    process.
    """

    def __init__(self, path: str | os.PathLike, cache="auto"):
        self.location = storage.open_location(path)
        self.url: str = self.location.url
        self.remote: bool = self.location.remote
        self.path = self.location.path if not self.remote else self.url
        if self.remote and cache == "auto":
            from .shard_cache import ShardCache

            cache = ShardCache.from_env()
        self.cache = cache if self.remote else None
        try:
            attrs = _read_json(self.location, "zarr.json").get("attributes", {})
        except FileNotFoundError:
            raise StoreError(f"{self.url}: not a store (no zarr.json); create one with `driver ingest`") from None
        info = attrs.get(STORE_ATTR)
        if not isinstance(info, dict):
            raise StoreError(f"{self.url}: a zarr group but not a driver store (no '{STORE_ATTR}' attribute)")
        if info.get("format_version") not in READABLE_VERSIONS:
            raise StoreError(f"{self.url}: store format_version {info.get('format_version')} is not "
                             f"supported (this driver reads {', '.join(map(str, READABLE_VERSIONS))})")
        self.format_version: int = info["format_version"]
        self._meta: dict[str, dict] = {}
        self._docs: dict[str, dict] = {}  # run markers fetched by `runs` on object storage, parsed on demand
        self._series: dict[tuple[str, str], np.ndarray] = {}
        self._frames: dict[tuple[str, str], ShardedFrames] = {}

    def __getstate__(self):
        return {**self.__dict__, "_docs": {}, "_series": {}, "_frames": {}}

    @property
    def verified(self) -> bool:
        """Every chunk of every run carries a checksum (format 2); format 1 stores are unverified."""
        return self.format_version >= 2

    def run_verified(self, name: str) -> bool:
        """The run was written with a CRC32C on every chunk (format 2), so damage cannot go unnoticed."""
        return int(self.run_meta(name).get("format_version", 1)) >= 2

    def _marker(self, name: str) -> str:
        return f"{RUNS}/{name}/zarr.json"

    @property
    def runs(self) -> list[str]:
        """Names of the complete (committed) runs, sorted."""
        names = self.location.list_dirs(RUNS)
        if not self.remote:
            return [n for n in names if self.location.exists(self._marker(n))]
        todo = [n for n in names if n not in self._meta and n not in self._docs]
        for n, doc in zip(todo, self.location.map(self._fetch_marker, todo), strict=True):
            if doc is not None:
                self._docs[n] = doc
        return [n for n in names if n in self._meta or n in self._docs]

    def _fetch_marker(self, name: str) -> dict | None:
        try:
            return _read_json(self.location, self._marker(name))
        except FileNotFoundError:
            return None  # data without its marker: an ingest still running, or killed (not a run yet)

    def has_run(self, name: str) -> bool:
        return self.location.exists(self._marker(name))

    def run_meta(self, name: str) -> dict:
        """The run's metadata: labels, source (path, sha256, size), cameras, size, segments, counts."""
        if name not in self._meta:
            key = self._marker(name)
            doc = self._docs.pop(name, None)
            if doc is None:
                try:
                    doc = _read_json(self.location, key)
                except FileNotFoundError:
                    raise StoreError(f"{self.url}: no run named {name!r} (runs: {', '.join(self.runs) or 'none'})"
                                     ) from None
                except StoreError as e:
                    raise StoreError(f"{self.url}: run {name!r}: unreadable metadata {self.location.name(key)}: "
                                     f"{e}; {REPAIR_HINT}") from e
            meta = doc.get("attributes", {}).get("driver_run")
            if not isinstance(meta, dict):
                raise StoreError(f"{self.location.name(key)}: run group has no 'driver_run' metadata")
            self._meta[name] = meta
        return self._meta[name]

    def series(self, run: str, name: str) -> np.ndarray:
        """A whole per-frame series of a run (steer, motor, state, timestamp, segment, valid, or an extra)."""
        key = (run, name)
        if key not in self._series:
            rel = name if name in SERIES_ARRAYS else f"extra/{name}"
            if not self.remote and not self.location.exists(f"{RUNS}/{run}/{rel}/zarr.json"):
                raise StoreError(f"{self.url}: run {run!r} has no series {name!r}")
            self._series[key] = self._read_series(run, rel)
        return self._series[key]

    def load_series(self, runs: list[str], names: list[str]) -> None:
        """Read these series of these runs now, many requests at once on object storage (a dataset over
        hundreds of remote runs opens in seconds, not minutes); a no-op for a local store."""
        if not self.remote:
            return
        todo = [(r, n) for r in runs for n in names if (r, n) not in self._series]
        list(self.location.map(lambda rn: self.series(*rn), todo))

    def _read_series(self, run: str, rel: str) -> np.ndarray:
        try:
            data = zarr.open_array(self.location.zarr_store(), path=f"{RUNS}/{run}/{rel}", mode="r")[...]
        except FileNotFoundError as e:
            raise StoreError(f"{self.url}: run {run!r} has no series {rel.split('/')[-1]!r}") from e
        except StoreIOError:
            raise
        except Exception as e:  # noqa: BLE001 - zarr raises ValueError (checksum), codec and OS errors
            n = self.run_meta(run).get("n_frames", "?")
            cls = ChecksumError if "checksum" in str(e).lower() else ShardReadError
            what = "checksum mismatch" if cls is ChecksumError else f"unreadable ({type(e).__name__}: {e})"
            raise cls(f"{self.url}: run {run!r}, array {rel!r}: frames 0..{n if n == '?' else n - 1}: {what}; "
                      f"{REPAIR_HINT}") from e
        if not self.run_verified(run):
            self._check_unverified(run, rel, data)
        return data

    def _check_unverified(self, run: str, rel: str, data: np.ndarray) -> None:
        """Format 1 series have no checksums: catch at least damage that breaks what ingest validated
        (finite values; steer and motor in run units 0..99)."""
        if data.dtype.kind != "f":
            return
        flat = data.reshape(len(data), -1)
        bad = ~np.isfinite(flat).all(axis=1)
        if rel in ("steer", "motor"):
            bad |= ((flat < 0) | (flat > 99)).any(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ShardReadError(f"{self.url}: run {run!r}, array {rel!r}: frames {i}..{i}: value {flat[i]} is "
                                 f"impossible (format 1 run without checksums: damaged on disk?); {REPAIR_HINT}")

    def frames(self, run: str, camera: str = "left") -> ShardedFrames:
        """Fast random access to a run's frames of one camera (by byte range on object storage)."""
        key = (run, camera)
        if key not in self._frames:
            meta = self.run_meta(run)
            if camera not in meta["cameras"]:
                raise StoreError(f"{self.url}: run {run!r} has no {camera!r} camera (has {meta['cameras']})")
            self._frames[key] = self.open_frames(run, camera)
        return self._frames[key]

    def open_frames(self, run: str, camera: str) -> ShardedFrames:
        """A new reader of the array ``runs/<run>/<camera>`` (not cached; what `driver verify` checks)."""
        where = f"{self.url}: run {run!r}, array {camera!r}"
        if not self.remote:
            return ShardedFrames(self.path / RUNS / run / camera, where=where)
        from .remote_frames import RemoteFrames

        return RemoteFrames(self.location, f"{RUNS}/{run}/{camera}", where, self.cache,
                            generation=run_generation(self.run_meta(run)))

    def prefetch(self, reads: list[tuple[str, str, int, int]]) -> None:
        """Fetch the frames ``(run, camera, first, count)`` of upcoming reads all at once (one range request
        each, in parallel) into the cache, so the reads that follow are local; a no-op for a local store."""
        if not self.remote or not reads:
            return
        from .remote_frames import prefetch

        prefetch(self.location, [(self.frames(r, c), a, n) for r, c, a, n in reads])

    def labels(self, run: str) -> dict[str, int]:
        """The run's 0/1 labels (behavioral modes and flags such as reject_run)."""
        return dict(self.run_meta(run)["labels"])

    def clips(self, config=None, runs: list[str] | None = None):
        """A :class:`~driver.datasets.clips.ClipDataset` over this store (all runs unless ``runs``)."""
        from .clips import ClipConfig, ClipDataset

        return ClipDataset(self, config or ClipConfig(), runs=runs)

    @cached_property
    def disk_bytes(self) -> int:
        """Bytes of the store's files (objects), without leftovers of killed ingests (staging, trash, locks)."""
        return self.location.tree_bytes("", skip_hidden=True)

    def _rewrite_json(self, key: str, change) -> None:
        """Apply ``change(doc)`` to a metadata document atomically: a durable replace in a folder, a
        compare-and-swap on object storage (retried when another writer got there first)."""
        if not self.remote:
            doc = _read_json(self.location, key)
            change(doc)
            write_atomic(self.path / key, json.dumps(doc, indent=2).encode("utf-8"))
            return
        for _ in range(8):
            raw, etag = self.location.read_versioned(key, MAX_JSON_BYTES)
            doc = _parse_json(raw, self.location.name(key))
            change(doc)
            try:
                self.location.write(key, json.dumps(doc, indent=2).encode("utf-8"), mode={"e_tag": etag})
                return
            except WriteConflict:
                continue
        raise StoreError(f"{self.location.name(key)}: changed by other writers 8 times while being updated; run again")

    def update_source(self, run: str, source: dict) -> None:
        """Record a new path/mtime for an unchanged source (same sha256), atomically."""
        def set_source(doc: dict) -> None:
            doc["attributes"]["driver_run"]["source"] = source

        self._rewrite_json(self._marker(run), set_source)
        self._meta.pop(run, None)

    def forget_run(self, name: str) -> None:
        """Drop what this process cached of a run (metadata, series, open shard files): it was replaced."""
        self._meta.pop(name, None)
        self._docs.pop(name, None)
        for cache in (self._series, self._frames):
            for key in [k for k in cache if k[0] == name]:
                del cache[key]
        if not self.remote:
            storage.forget(self.path / RUNS / name)

    def set_format_version(self, version: int) -> None:
        """Record the store's format version (ingest raises it to 2 once every run is checksummed)."""
        def set_version(doc: dict) -> None:
            doc.setdefault("attributes", {})[STORE_ATTR] = {"format_version": version}

        self._rewrite_json("zarr.json", set_version)
        self.format_version = version


def run_generation(meta: dict) -> str:
    """What identifies one written version of a run (its ``write_id``; older runs: when it was ingested
    and from which source): cached bytes of another version never pass for this one."""
    if meta.get("write_id"):
        return str(meta["write_id"])
    return f"{meta.get('ingested_at', '')}-{(meta.get('source') or {}).get('sha256', '')}"


def create_store(path: str | os.PathLike) -> Store:
    """Open the store at ``path``, creating an empty one if nothing (or an empty folder) is there."""
    return open_or_create_store(path)[0]


def open_or_create_store(path: str | os.PathLike) -> tuple[Store, bool]:
    """Like :func:`create_store`; also says whether this call created the store.

    Creation is atomic: the store is built in a hidden sibling folder and renamed into place, so a racing
    process sees either no store or a complete one, never a half-made one (on object storage: create-only
    writes of its two group objects, the root last).
    """
    if storage.is_remote(path):  # object storage: create-only writes instead of a rename (object_ingest)
        from .object_ingest import create_object_store

        location = storage.open_location(path)
        created = not location.exists("zarr.json") and create_object_store(location, FORMAT_VERSION)
        return Store(path), created
    p = Path(path)
    if (p / "zarr.json").exists():
        return Store(p), False
    if p.exists() and not (p.is_dir() and not any(p.iterdir())):
        raise StoreError(f"{p}: exists and is not a store; choose a new --out path")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.creating-{uuid.uuid4().hex[:12]}"
    try:
        root = zarr.open_group(tmp, mode="w")
        root.attrs[STORE_ATTR] = {"format_version": FORMAT_VERSION}
        root.create_group(RUNS)
        fsync_tree(tmp)
        try:
            os.rename(tmp, p)  # replaces an empty folder; fails if another process created the store first
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            if not (p / "zarr.json").exists():
                raise StoreError(f"{p}: exists and is not a store; choose a new --out path") from e
            return Store(p), False
        fsync_dir(p.parent)
        return Store(p), True
    finally:
        storage.remove_tree(tmp)


def remove_store(store: Store) -> None:
    """Delete a store (an empty one its failed first ingest created): renamed aside first, so it vanishes
    at once, then removed."""
    aside = store.path.parent / f".{store.path.name}.removing-{uuid.uuid4().hex[:12]}"
    os.rename(store.path, aside)
    fsync_dir(store.path.parent)
    storage.remove_tree(aside)


@contextlib.contextmanager
def locked(store: Store):
    """Hold an exclusive lock on the store so two ingests cannot write it at once.

    The lock is the store's ``zarr.json``; after taking it we check that the file is still the store's
    (not one a failed first ingest removed meanwhile), so a lock is never held on a vanished store.
    """
    path = store.path / "zarr.json"
    try:
        f = open(path, "rb")  # noqa: SIM115 - held for the duration of the context
    except FileNotFoundError as e:
        raise StoreError(f"{store.path}: the store was removed (by another ingest that failed?); run again") from e
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise StoreError(f"{store.path}: another ingest is writing this store; run again when it ends") from e
        try:
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                raise StoreError(f"{store.path}: the store was removed or replaced while waiting for its lock "
                                 "(by another ingest that failed?); run again")
            yield store
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sweep_leftovers(store: Store) -> None:
    """Clean up after a killed ingest: drop staging folders; restore a replaced run whose new version never
    landed (killed between the two renames of :func:`commit_run`), then drop the trash."""
    storage.remove_tree(store.path / STAGING)
    trash = store.path / TRASH
    if trash.is_dir():
        for entry in sorted(trash.iterdir()):
            name = entry.name.rsplit(".", 1)[0]
            target = store.path / RUNS / name
            if (entry / "zarr.json").is_file() and not target.exists():
                os.rename(entry, target)
                fsync_dir(target.parent)
        storage.remove_tree(trash)


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
        storage.remove_tree(trash)
    else:
        os.rename(staging, target)
        fsync_dir(target.parent)
    store.forget_run(name)
