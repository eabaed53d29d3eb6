"""The one atomic file writer: a file appears complete under its final name, or not at all.

Every file driver writes whole (checkpoints, exported and compressed models, store metadata, reports)
goes through :func:`atomic_path` or :func:`write_atomic`: the bytes go to a temporary file in the same
folder, are fsynced, and the temporary file is renamed over the final name (then the folder is fsynced,
so the rename survives a power cut). On any error, disk full and Ctrl-C included, the temporary file is
removed and whatever was under the final name before is intact. A leaf module: standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed over ``path`` when the block ends without error.

    ``durable``: fsync the file and its folder (the default); off only for files that are cheap to redo.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (and durably, unless ``durable=False``)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (renames, new files) durable, where the filesystem supports that.

    Some network and FUSE filesystems refuse fsync on a directory (EINVAL, ENOTSUP); there the rename is
    as durable as that filesystem makes it, and the work goes on.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
