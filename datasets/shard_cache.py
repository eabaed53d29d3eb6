"""A local read-through cache of byte ranges of remote shard objects, shared by every process of a host
(DataLoader workers, torchrun ranks), so the second epoch from object storage reads at local-disk speed.

Layout under the cache folder (``DRIVER_CACHE_DIR``, default ``~/.cache/driver/shards``)::

    index.sqlite          WAL-mode SQLite: objects(key, cached bytes, last access) and
                          pieces(key, offset, nbytes, crc32c): one row per cached chunk
    data/<sha1(key)>.bin  one sparse file per remote object; a cached chunk sits at its offset in the object

A hit needs a row for every chunk of the range and each chunk's bytes to match its CRC32C; anything else
(a chunk never cached, a torn write, a file evicted by another process meanwhile) is a miss, and the range
is fetched again. A fill writes the bytes first and adds the rows afterwards in one transaction, so rows
never point at bytes that were not written. When the cached bytes pass ``max_bytes`` (``DRIVER_CACHE_BYTES``,
default 20 GiB; 0 turns the cache off) whole objects are evicted, least recently used first, down to 90 %:
rows go in the transaction, the file after it. Keys carry the run's ``write_id``, so a re-ingested run never
reads the cached bytes of its old version. The cache is disposable: if its database is damaged it is
reported once and reads go straight to the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time

import crc32c

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 2**30
TOUCH_EVERY_S = 10.0  # an object's last-access time is written at most this often per process
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str, what: str = "DRIVER_CACHE_BYTES") -> int:
    """'20G', '512M', '0', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", text)
    if not m:
        raise ValueError(f"{what}={text!r} must be a size such as 20G, 512M or 0 (off)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "driver", "shards")


class ShardCache:
    """See the module docstring. Picklable (folder and bound); opens its database lazily in each process."""

    def __init__(self, root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"cache max_bytes={max_bytes!r} must be a positive integer")
        self.root = os.fspath(root)
        self.max_bytes = max_bytes
        self._reset()

    @classmethod
    def from_env(cls) -> ShardCache | None:
        """The cache DRIVER_CACHE_DIR / DRIVER_CACHE_BYTES describe; None when DRIVER_CACHE_BYTES=0."""
        size = parse_bytes(os.environ["DRIVER_CACHE_BYTES"]) if os.environ.get("DRIVER_CACHE_BYTES") \
            else DEFAULT_MAX_BYTES
        if size == 0:
            return None
        return cls(os.environ.get("DRIVER_CACHE_DIR") or default_cache_dir(), size)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._touched: dict[str, float] = {}
        self._broken = False
        self.stats = {"hits": 0, "misses": 0, "bad": 0, "evicted": 0}

    def __getstate__(self):
        return {"root": self.root, "max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return f"ShardCache({self.root!r}, max_bytes={self.max_bytes})"

    # -- database and files --------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # forked: never share the parent's connection or descriptors
            self._reset()
        if self._db is None:
            os.makedirs(os.path.join(self.root, "data"), exist_ok=True)
            db = sqlite3.connect(os.path.join(self.root, "index.sqlite"), timeout=120, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS objects(key TEXT PRIMARY KEY, cached INTEGER NOT NULL DEFAULT 0, "
                       "last_access REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS pieces(key TEXT, offset INTEGER, nbytes INTEGER, crc INTEGER, "
                       "PRIMARY KEY(key, offset)) WITHOUT ROWID")
            self._db = db
        return self._db

    def _path(self, key: str) -> str:
        return os.path.join(self.root, "data", hashlib.sha1(key.encode("utf-8")).hexdigest() + ".bin")

    def _pread(self, key: str, n: int, offset: int) -> bytes:
        """Opened per call: no descriptor outlives an eviction or piles up over thousands of objects."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return b""
        try:
            return os.pread(fd, n, offset)
        finally:
            os.close(fd)

    def _pwrite(self, key: str, data: memoryview, offset: int) -> None:
        path = self._path(key)
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:  # the cache folder is new, or was deleted by hand
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, flags, 0o644)
        try:
            if os.pwrite(fd, data, offset) != len(data):
                raise OSError(f"short write to {path} (disk full?)")
        finally:
            os.close(fd)

    def _disable(self, e: Exception) -> None:
        if not self._broken:
            log.warning("shard cache %s is unusable (%s: %s); reading without it", self.root, type(e).__name__, e)
        self._broken = True

    # -- reading -------------------------------------------------------------------------------------
    def get(self, key: str, pieces: list[tuple[int, int]]):
        """The bytes of the contiguous chunks ``pieces`` ((offset, nbytes), ascending) of object ``key``, or
        None unless every chunk is cached and matches its CRC32C."""
        if self._broken or not pieces:
            return None
        start, stop = pieces[0][0], pieces[-1][0] + pieces[-1][1]
        try:
            with self._lock:
                db = self._conn()
                rows = db.execute("SELECT offset, nbytes, crc FROM pieces WHERE key=? AND offset>=? AND offset<?",
                                  (key, start, stop)).fetchall()
            known = {o: (n, c) for o, n, c in rows}
            if any(known.get(o, (None,))[0] != n for o, n in pieces):
                self.stats["misses"] += 1
                return None
            data = self._pread(key, stop - start, start)
            view = memoryview(data)
            if len(data) != stop - start or any(crc32c.crc32c(view[o - start : o - start + n]) != known[o][1]
                                                for o, n in pieces):
                self.stats["bad"] += 1  # evicted or torn under us: a miss
                return None
            self._touch(key)
            self.stats["hits"] += 1
            return data
        except (sqlite3.Error, OSError) as e:
            self._disable(e)
            return None

    def _touch(self, key: str) -> None:
        now = time.time()
        if now - self._touched.get(key, 0.0) < TOUCH_EVERY_S:
            return
        self._touched[key] = now
        with self._lock:
            self._conn().execute("UPDATE objects SET last_access=? WHERE key=?", (now, key))

    # -- filling -------------------------------------------------------------------------------------
    def put(self, key: str, start: int, data, pieces: list[tuple[int, int]]) -> None:
        """Cache ``data`` (the bytes of ``pieces``, starting at object offset ``start``), then evict down to
        the bound if needed. Idempotent: concurrent fills of the same chunks write the same bytes."""
        if self._broken or not pieces:
            return
        view = memoryview(data).cast("B")
        rows = [(key, o, n, crc32c.crc32c(view[o - start : o - start + n])) for o, n in pieces]
        try:
            self._pwrite(key, view, start)
            with self._lock:
                db = self._conn()
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute("INSERT INTO objects(key, cached, last_access) VALUES(?, 0, ?) "
                               "ON CONFLICT(key) DO UPDATE SET last_access=excluded.last_access", (key, time.time()))
                    have = {o for (o,) in db.execute("SELECT offset FROM pieces WHERE key=? AND offset>=? AND "
                                                     "offset<?", (key, start, start + len(view)))}
                    new = [r for r in rows if r[1] not in have]
                    db.executemany("INSERT INTO pieces VALUES(?,?,?,?)", new)
                    db.execute("UPDATE objects SET cached=cached+? WHERE key=?", (sum(r[2] for r in new), key))
                    victims = self._victims(db, key)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                self._touched[key] = time.time()
            for victim in victims:  # rows are gone: now the bytes may go
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(victim))
                self.stats["evicted"] += 1
        except (sqlite3.Error, OSError) as e:
            self._disable(e)

    def _victims(self, db, keep: str) -> list[str]:
        total = db.execute("SELECT COALESCE(SUM(cached), 0) FROM objects").fetchone()[0]
        if total <= self.max_bytes:
            return []
        victims = []
        target = self.max_bytes * 0.9
        for key, cached in db.execute("SELECT key, cached FROM objects WHERE key != ? ORDER BY last_access", (keep,)):
            victims.append(key)
            total -= cached
            if total <= target:
                break
        db.executemany("DELETE FROM pieces WHERE key=?", [(k,) for k in victims])
        db.executemany("DELETE FROM objects WHERE key=?", [(k,) for k in victims])
        return victims

    def cached_bytes(self) -> int:
        """Bytes the cache holds (as its index counts them)."""
        with self._lock:
            return int(self._conn().execute("SELECT COALESCE(SUM(cached), 0) FROM objects").fetchone()[0])
