"""The one place where the store touches files: memory maps and positioned reads through a bounded
cache of open files, durable writes, renames and fsyncs; and where a store's location (a folder or an
object-storage URL) is opened.

Everything else in ``driver.datasets`` reads and writes store files through these functions and through a
*location* (:func:`open_location`): :class:`LocalLocation` for a folder, ``object_store.ObjectLocation`` for
``s3://``, ``gs://``, ``az://`` and the other URLs obstore opens. Both answer the same small set of questions
(read a metadata object, does it exist, list child folders, total bytes, a zarr store over it).

Open files are bounded per process: a least-recently-used cache keeps at most ``max_open_files()``
(default 64, or ``DRIVER_MAX_OPEN_FILES``) shard files open (a descriptor, or a read-only mapping that
holds one), whatever the store size, and closes the least recently used one when it needs another. A
forked child (a DataLoader worker) starts with an empty cache and never uses its parent's files.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import re
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from driver.atomic_write import fsync_dir, fsync_file  # noqa: F401 - storage's own API too

DEFAULT_MAX_OPEN_FILES = 64
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class Mapping:
    """A read-only map of a whole file and a uint8 array over it (the map keeps its own descriptor).

    ``parsed`` is free for a reader to keep what it parsed from this very file (a shard's index), so
    that it goes when the mapping goes and never outlives a replaced file. ``identity`` (device, inode,
    size, mtime) tells a later mapping of the same path whether it is still the same file.

    Page faults on the map read only their own pages (``MADV_RANDOM``: the kernel's default read-around
    would read up to ``read_ahead_kb`` around every fault, 8 MiB here, for a 0.5 MB clip); a reader asks
    :meth:`resident` whether a range is in the page cache and, when it is not, :meth:`will_need` reads
    exactly that range ahead in one request.
    """

    __slots__ = ("map", "array", "parsed", "identity", "address")

    def __init__(self, fd: int):
        st = os.fstat(fd)
        size = st.st_size
        self.identity = (st.st_dev, st.st_ino, size, st.st_mtime_ns)
        self.map = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
        self.array = np.frombuffer(self.map, dtype=np.uint8) if size else np.zeros(0, np.uint8)
        self.address = self.array.ctypes.data if size else 0
        self.parsed = None
        if size and hasattr(mmap, "MADV_RANDOM"):
            self.map.madvise(mmap.MADV_RANDOM)

    def resident(self, offset: int, length: int) -> bool:
        """Whether every page of bytes ``offset .. offset+length`` is in the page cache (``mincore``;
        True where that cannot be asked)."""
        if _mincore is None or self.map is None or length <= 0:
            return True
        start = offset - offset % mmap.PAGESIZE
        end = min(offset + length, len(self.map))
        pages = -(-(end - start) // mmap.PAGESIZE)
        vec = getattr(_pages, "vec", None)
        if vec is None or len(vec[0]) < pages:
            buf = bytearray(max(pages, 1024))
            vec = _pages.vec = (buf, ctypes.addressof(ctypes.c_char.from_buffer(buf)))
        if _mincore(self.address + start, end - start, vec[1]) != 0:
            return True
        return vec[0].find(0, 0, pages) < 0  # a byte per page, 1 if resident

    def will_need(self, offset: int, length: int) -> None:
        """Ask the kernel to read bytes ``offset .. offset+length`` ahead, in one request."""
        if self.map is None or length <= 0:
            return
        start = offset - offset % mmap.PAGESIZE
        self.map.madvise(mmap.MADV_WILLNEED, start, min(offset + length, len(self.map)) - start)

    def close(self) -> None:
        self.array = None
        if self.map is not None:
            with contextlib.suppress(BufferError):  # a view is still alive somewhere: it closes when that goes
                self.map.close()


def _libc_mincore():
    try:
        f = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).mincore
    except (OSError, AttributeError, TypeError):
        return None
    f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    f.restype = ctypes.c_int
    return f


_mincore = _libc_mincore()
_pages = threading.local()  # per thread: mincore's result buffer and its address


def _close(entry) -> None:
    if isinstance(entry, int):
        os.close(entry)
    else:
        entry.close()


class _OpenFiles:
    """An LRU of open files keyed by (path, kind): read-only descriptors and mappings (per process;
    thread-safe)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._open: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, kind: str):
        """The open descriptor (kind "fd") or mapping ("map") of ``path``; FileNotFoundError if none."""
        key = (path, kind)
        with self._lock:
            entry = self._open.get(key)
            if entry is not None:
                self._open.move_to_end(key)
                return entry
            while len(self._open) >= self.capacity:
                _close(self._open.popitem(last=False)[1])
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            if kind == "map":
                try:
                    entry = Mapping(fd)
                finally:
                    os.close(fd)
            else:
                entry = fd
            self._open[key] = entry
            return entry

    def forget(self, path: str) -> None:
        """Close ``path`` and every file under it (a folder)."""
        folder = path.rstrip(os.sep) + os.sep
        with self._lock:
            for key in [k for k in self._open if k[0] == path or k[0].startswith(folder)]:
                _close(self._open.pop(key))

    def clear(self, close: bool = True) -> None:
        with self._lock:
            if close:
                for entry in self._open.values():
                    with contextlib.suppress(OSError):
                        _close(entry)
            self._open.clear()

    def __len__(self) -> int:
        return len(self._open)


def _capacity_from_env() -> int:
    raw = os.environ.get("DRIVER_MAX_OPEN_FILES", "")
    try:
        n = int(raw) if raw else DEFAULT_MAX_OPEN_FILES
    except ValueError:
        raise ValueError(f"DRIVER_MAX_OPEN_FILES={raw!r} must be an integer in 1..65536") from None
    if not 1 <= n <= 65536:
        raise ValueError(f"DRIVER_MAX_OPEN_FILES={n} must be in 1..65536")
    return n


_open = _OpenFiles(_capacity_from_env())


def _after_fork_in_child() -> None:
    # The child's copies of the parent's descriptors share file offsets with the parent; positioned reads
    # would still be safe, but a worker must not pin the parent's files: close the copies, start empty.
    _open.clear(close=True)
    _open._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_max_open_files(n: int) -> None:
    """Bound the descriptors this process keeps open on shard files (default 64)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 65536:
        raise ValueError(f"max_open_files={n!r} must be an integer in 1..65536")
    with _open._lock:
        _open.capacity = n
        while len(_open._open) > n:
            _close(_open._open.popitem(last=False)[1])


def max_open_files() -> int:
    return _open.capacity


def open_file_count() -> int:
    """Files (descriptors and mappings) currently held by the cache (for tests and benchmarks)."""
    return len(_open)


def close_all() -> None:
    """Close every cached file of this process (benchmarks of cold reads: mapped pages cannot be evicted)."""
    _open.clear(close=True)


def forget(path: str | os.PathLike) -> None:
    """Close the cached file ``path``, or every cached file under the folder ``path`` (replaced, removed)."""
    _open.forget(os.fspath(path))


def mapped(path: str) -> Mapping:
    """The whole file memory-mapped, read-only (``.array`` is its bytes); cached with the open files."""
    return _open.get(path, "map")


def _advance(buffers: list[memoryview], n: int) -> list[memoryview]:
    """The part of ``buffers`` left after the first ``n`` bytes."""
    k = 0
    while k < len(buffers) and n >= buffers[k].nbytes:
        n -= buffers[k].nbytes
        k += 1
    return ([buffers[k][n:]] if k < len(buffers) else []) + buffers[k + 1:]


def file_size(path: str | os.PathLike) -> int:
    return os.stat(path).st_size


def read_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_all(fd: int, buffers: list) -> int:
    """Write every byte of ``buffers`` (vector writes, resumed after short writes); returns the count."""
    pending = [memoryview(b).cast("B") for b in buffers]
    total = 0
    while pending:
        batch = pending[:_IOV_MAX]
        n = os.writev(fd, batch)
        total += n
        pending = _advance(batch, n) + pending[len(batch):]
    return total


def pread_all(fd: int, buffers: list, offset: int) -> None:
    """Fill ``buffers`` from ``offset`` of an open file (vector reads, resumed after short reads);
    EOFError if the file ends first."""
    pending = [memoryview(b).cast("B") for b in buffers]
    while pending:
        batch = pending[:_IOV_MAX]
        n = os.preadv(fd, batch, offset)
        if n == 0:
            raise EOFError(f"file ends at byte {offset}")
        offset += n
        pending = _advance(batch, n) + pending[len(batch):]


def create_file(path: str | os.PathLike, buffers: list) -> int:
    """Write a new file (fails if it exists) from ``buffers``; returns its size. Not fsynced: see fsync_tree."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        return write_all(fd, buffers)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file and folder under ``path`` (a staging run before its commit rename).

    The fsyncs run concurrently: a journaling filesystem commits concurrent fsyncs together, so a run of
    hundreds of files costs a few journal commits instead of one each.
    """
    from concurrent.futures import ThreadPoolExecutor

    files, folders = [], []
    for root, _, names in os.walk(path):
        files += [os.path.join(root, f) for f in names]
        folders.append(root)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(fsync_file, files))
        list(pool.map(fsync_dir, folders))


def tree_bytes(path: str | os.PathLike, skip_hidden: bool = False) -> int:
    """Bytes of the files under ``path``; ``skip_hidden`` leaves out dot-folders (staging, trash)."""
    total = 0
    for root, dirs, files in os.walk(path):
        if skip_hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


def drop_from_page_cache(path: str | os.PathLike) -> None:
    """Ask the kernel to evict a file's pages (benchmarks of cold reads); a no-op where unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# -- locations: where a store lives -------------------------------------------------------------------
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(url: str | os.PathLike) -> str:
    """The URL scheme of ``url`` ("s3", "gs", ...), or "" for a plain path."""
    m = _URL.match(os.fspath(url))
    return m.group(1).lower() if m else ""


def is_remote(url: str | os.PathLike) -> bool:
    """Whether ``url`` names a store on object storage rather than a folder (``file://`` is a folder)."""
    return url_scheme(url) not in ("", "file")


class LocalLocation:
    """A store in a folder of this machine (or of a mounted network filesystem). Keys are '/'-separated
    paths relative to the folder."""

    remote = False

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        if url_scheme(path) == "file":
            path = path[len("file://"):]
        self.path = Path(path)
        self.url = str(self.path)

    def __repr__(self) -> str:
        return f"LocalLocation({self.url!r})"

    def name(self, key: str = "") -> str:
        """What messages call the object ``key``: its path."""
        return str(self.path / key) if key else self.url

    def read(self, key: str, limit: int | None = None) -> bytes:
        """The bytes of ``key``; FileNotFoundError if absent, ValueError past ``limit`` bytes."""
        path = self.path / key
        if limit is not None and (size := file_size(path)) > limit:
            raise ValueError(f"{path}: {size >> 20} MiB, more than this file may hold ({limit >> 20} MiB)")
        return read_bytes(path)

    def exists(self, key: str) -> bool:
        return (self.path / key).is_file()

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the visible (not dot-) folders directly under ``prefix``."""
        d = self.path / prefix
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list(self, prefix: str = ""):
        """(key, size) of every file under the folder ``prefix``."""
        for root, _, files in os.walk(self.path / prefix):
            for f in files:
                path = os.path.join(root, f)
                yield os.path.relpath(path, self.path).replace(os.sep, "/"), os.path.getsize(path)

    def tree_bytes(self, prefix: str = "", skip_hidden: bool = False) -> int:
        return tree_bytes(self.path / prefix, skip_hidden)

    def zarr_store(self, read_only: bool = True):
        from zarr.storage import LocalStore

        return LocalStore(self.path, read_only=read_only)


def open_location(url: str | os.PathLike, **options):
    """The location of a store: a :class:`LocalLocation` for a path (or ``file://``), else an
    ``ObjectLocation`` (needs ``pip install 'driver[s3]'``) for ``s3://``, ``gs://``, ``az://``, ... URLs."""
    if not is_remote(url):
        return LocalLocation(url)
    from .object_store import ObjectLocation

    return ObjectLocation(os.fspath(url), **options)
