"""The one place where the store touches files: positioned reads through a bounded cache of open
descriptors, durable writes, renames and fsyncs.

Everything else in ``driver.datasets`` reads and writes store files through these functions, so a
store on another backend (object storage) needs a second implementation of this module, nothing more.

Open descriptors are bounded per process: a least-recently-used cache keeps at most
``max_open_files()`` (default 64, or ``DRIVER_MAX_OPEN_FILES``) shard files open, whatever the store
size, and closes the least recently used one when it needs another. A forked child (a DataLoader
worker) starts with an empty cache and never uses its parent's descriptors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections import OrderedDict

DEFAULT_MAX_OPEN_FILES = 64
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class _OpenFiles:
    """An LRU of read-only descriptors keyed by path (per process; thread-safe)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def fd(self, path: str) -> int:
        """An open read-only descriptor for ``path`` (raises FileNotFoundError when there is none)."""
        with self._lock:
            fd = self._fds.get(path)
            if fd is not None:
                self._fds.move_to_end(path)
                return fd
            while len(self._fds) >= self.capacity:
                os.close(self._fds.popitem(last=False)[1])
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._fds[path] = fd
            return fd

    def forget(self, path: str) -> None:
        with self._lock:
            fd = self._fds.pop(path, None)
            if fd is not None:
                os.close(fd)

    def clear(self, close: bool = True) -> None:
        with self._lock:
            if close:
                for fd in self._fds.values():
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._fds.clear()

    def __len__(self) -> int:
        return len(self._fds)


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
        while len(_open._fds) > n:
            os.close(_open._fds.popitem(last=False)[1])


def max_open_files() -> int:
    return _open.capacity


def open_file_count() -> int:
    """Descriptors currently held by the cache (for tests and benchmarks)."""
    return len(_open)


def forget(path: str | os.PathLike) -> None:
    """Close the cached descriptor of ``path`` (after the file was replaced or found damaged)."""
    _open.forget(os.fspath(path))


def file_size(path: str | os.PathLike) -> int:
    return os.fstat(_open.fd(os.fspath(path))).st_size


def read_at(path: str | os.PathLike, nbytes: int, offset: int) -> bytes:
    """``nbytes`` bytes at ``offset`` (fewer at the end of the file)."""
    return os.pread(_open.fd(os.fspath(path)), nbytes, offset)


def _advance(buffers: list[memoryview], n: int) -> list[memoryview]:
    """The part of ``buffers`` left after the first ``n`` bytes."""
    k = 0
    while k < len(buffers) and n >= buffers[k].nbytes:
        n -= buffers[k].nbytes
        k += 1
    return ([buffers[k][n:]] if k < len(buffers) else []) + buffers[k + 1:]


def read_into(path: str | os.PathLike, buffers: list, offset: int) -> int:
    """Fill ``buffers`` (writable, contiguous) in order from ``offset`` with positioned vector reads.

    Returns the bytes read: less than the buffers hold only at the end of the file.
    """
    fd = _open.fd(os.fspath(path))
    pending = [memoryview(b).cast("B") for b in buffers]
    total = 0
    while pending:
        batch = pending[:_IOV_MAX]
        n = os.preadv(fd, batch, offset + total)
        if n == 0:
            break
        total += n
        pending = _advance(batch, n) + pending[len(batch):]
    return total


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


def create_file(path: str | os.PathLike, buffers: list) -> int:
    """Write a new file (fails if it exists) from ``buffers``; returns its size. Not fsynced: see fsync_tree."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        return write_all(fd, buffers)
    finally:
        os.close(fd)


def write_durable(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temporary file, fsync, rename, fsync dir)."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, [data])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


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
