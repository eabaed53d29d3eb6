"""Stores on object storage: ``s3://bucket/prefix`` and every other URL obstore opens (``gs://``, ``az://``,
``abfs://``, ``http(s)://``, ``memory://``), behind the same location interface as a local folder.

Why obstore (a Rust client, ``pip install 'driver[s3]'``): measured against the same S3 server
(bench/object_store.py), its range GETs cost half the client CPU per GB of boto3 or s3fs, it retries
dropped connections and 5xx answers with backoff by default and its final error names the object's URL,
and it does the conditional writes (``If-None-Match: *``, ``If-Match: <etag>``) that the lease and
commit protocol of ``object_ingest`` need (docs/object-storage.md). Retries: :mod:`.object_retries`.

Credentials come the way users already have them and are never stored here: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``) in the environment; else, when boto3 is installed,
boto3's own chain (``AWS_PROFILE`` and ``~/.aws`` profiles, SSO, assumed roles, instance roles); else
obstore's (instance metadata). A location pickles as its URL alone and builds its client in each process
from that process's environment, so no secret travels into worker processes, checkpoints or logs.

obstore cannot run in a process forked from one that used it (its runtime hangs), so a forked child that
tries fails at once with a message naming the fix (a ``forkserver`` or ``spawn`` start method).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from driver.errors import DriverError

from .object_retries import RetryPolicy, retrying_zarr_store, transient
from .storage import url_scheme

OBSTORE_SCHEMES = ("s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https", "memory")
DEFAULT_CONCURRENCY = 16  # range requests in flight per process


class StoreIOError(DriverError, OSError):
    """A request to object storage that failed after its retries; the message names the object."""


class WriteConflict(DriverError, OSError):
    """A conditional write lost: the object changed since it was read (compare-and-swap on its ETag)."""


class ForkedClientError(DriverError, RuntimeError):
    """obstore used in a process forked from one that had used it (it would hang)."""


# -- fork guard --------------------------------------------------------------------------------------
_used_in: int | None = None  # pid of the process whose obstore runtime has started
_forked_after_use = False


def _after_fork_in_child() -> None:
    global _forked_after_use
    if _used_in is not None:
        _forked_after_use = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _first_line(e: BaseException) -> str:
    """obstore's message without its debug dump and XML body, plus the S3 error code when there is one."""
    text = str(e)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    line = text.split("\n", 1)[0].split(": <?xml", 1)[0].strip()
    if code and code.group(1) not in line:
        line += f" ({code.group(1)})"
    return line[:500]


def _s3_options() -> dict:
    """obstore options for S3 from the user's environment and AWS profiles (nothing secret is kept)."""
    opts: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        try:
            import boto3
        except ImportError:
            if os.environ.get("AWS_PROFILE"):
                raise StoreIOError(f"AWS_PROFILE={os.environ['AWS_PROFILE']} needs boto3 to read the AWS "
                                   "profiles: pip install 'driver[s3]'") from None
            boto3 = None
        if boto3 is not None:
            from obstore.auth.boto3 import Boto3CredentialProvider

            try:
                session = boto3.Session()
            except Exception as e:  # noqa: BLE001 - botocore's ProfileNotFound and config parse errors
                raise StoreIOError(f"AWS credentials: {e}") from None
            if session.get_credentials() is not None:
                opts["credential_provider"] = Boto3CredentialProvider(session)
                if session.region_name and not os.environ.get("AWS_REGION"):
                    opts["region"] = session.region_name
                endpoint = endpoint or session._session.get_scoped_config().get("endpoint_url")
    if endpoint:
        opts["endpoint"] = endpoint
    if (endpoint or "").startswith("http://"):
        opts["client_options"] = {"allow_http": True}  # a plain-http endpoint the user configured (MinIO, tests)
    return opts


class ObjectLocation:
    """A store at an object-storage URL. Keys are '/'-separated paths under the URL's prefix.

    Picklable (as its URL and retry policy); the client is built lazily in each process. Every failure
    is a one-line error naming the object's URL: FileNotFoundError (no such object), FileExistsError
    (a create-only write found one), :class:`WriteConflict`, :class:`StoreIOError`.
    """

    remote = True

    def __init__(self, url: str, retry: RetryPolicy | None = None):
        scheme = url_scheme(url)
        if scheme not in OBSTORE_SCHEMES:
            raise ValueError(f"{url}: unsupported store URL scheme {scheme!r}; use a folder or one of "
                             f"{', '.join(s + '://' for s in OBSTORE_SCHEMES)}")
        netloc = url.split("://", 1)[1].split("/", 1)[0]
        if "@" in netloc and scheme not in ("az", "abfs", "abfss", "adl", "azure"):
            raise ValueError(f"{scheme}://{netloc.rsplit('@', 1)[1]}/...: credentials do not belong in a store URL "
                             "(it is recorded in logs and checkpoints); set them in the environment or an AWS profile")
        if not netloc:
            raise ValueError(f"{url}: the URL names no bucket")
        self.url = url.rstrip("/")
        self.scheme = scheme
        self.retry = retry or RetryPolicy.from_env()
        self._reset()

    def _reset(self) -> None:
        self._client = None
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"url": self.url, "scheme": self.scheme, "retry": self.retry}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return f"ObjectLocation({self.url!r})"

    def name(self, key: str = "") -> str:
        return f"{self.url}/{key}" if key else self.url

    # -- the client ----------------------------------------------------------------------------------
    @property
    def client(self):
        """The obstore store of this process (built on first use from the environment)."""
        global _used_in
        if _forked_after_use:
            raise ForkedClientError(f"{self.url}: this process was forked from one that had used object storage, "
                                    "and obstore hangs there; start DataLoader workers with "
                                    "multiprocessing_context='forkserver' (or 'spawn'), as `driver train` does")
        if self._pid != os.getpid():
            self._reset()
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build()
                    _used_in = os.getpid()
        return self._client

    def _build(self):
        try:
            from obstore.store import from_url
        except ImportError:
            raise StoreIOError(f"{self.url}: stores on object storage need obstore: pip install 'driver[s3]'") from None
        opts = _s3_options() if self.scheme in ("s3", "s3a") else {}
        try:
            return from_url(self.url, retry_config=self.retry.obstore_config(), **opts)
        except Exception as e:  # noqa: BLE001 - obstore configuration errors
            raise StoreIOError(f"{self.url}: cannot open: {_first_line(e)}") from None

    def _fail(self, op: str, key: str, e: Exception):
        """The one-line error for a failed request (re-raised by the caller)."""
        import obstore.exceptions as oe

        where = self.name(key)
        if isinstance(e, FileNotFoundError):
            return FileNotFoundError(f"{where}: no such object")
        if isinstance(e, oe.AlreadyExistsError):
            return FileExistsError(f"{where}: already exists")
        if isinstance(e, oe.PreconditionError):
            return WriteConflict(f"{where}: changed since it was read (conditional {op} refused)")
        if isinstance(e, (oe.PermissionDeniedError, oe.UnauthenticatedError)):
            return StoreIOError(f"{where}: {op} refused: {_first_line(e)}; check the credentials (environment "
                                "or AWS profile)")
        return StoreIOError(f"{where}: {op} failed: {_first_line(e)}")

    def _call(self, op: str, key: str, fn):
        """``fn(client)``, tried again (with backoff, within the retry policy) on the errors obstore does
        not retry itself, and every failure turned into one line naming the object."""
        delays = self.retry.delays()
        while True:
            try:
                return fn(self.client)
            except (ForkedClientError, StoreIOError, StopIteration):
                raise
            except Exception as e:  # noqa: BLE001 - every obstore error becomes one line naming the object
                delay = next(delays, None) if transient(e) else None
                if delay is None:
                    raise self._fail(op, key, e) from e
                time.sleep(delay)

    # -- reads ---------------------------------------------------------------------------------------
    def read(self, key: str, limit: int | None = None) -> bytes:
        return self.read_versioned(key, limit)[0]

    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, str | None]:
        """The object's bytes and its ETag (for a later compare-and-swap write)."""
        import obstore as obs

        r = self._call("GET", key, lambda c: obs.get(c, key))
        size = r.meta["size"]
        if limit is not None and size > limit:
            raise ValueError(f"{self.name(key)}: {size >> 20} MiB, more than this object may hold ({limit >> 20} MiB)")
        return self._call("GET", key, lambda c: bytes(r.bytes())), r.meta.get("e_tag")

    def exists(self, key: str) -> bool:
        import obstore as obs

        try:
            self._call("HEAD", key, lambda c: obs.head(c, key))
            return True
        except FileNotFoundError:
            return False

    def read_range(self, key: str, start: int, stop: int):
        """Bytes ``start..stop-1`` of ``key`` (one range GET; a zero-copy buffer)."""
        import obstore as obs

        data = self._call("GET", key, lambda c: obs.get_range(c, key, start=start, end=stop))
        if len(data) != stop - start:
            raise StoreIOError(f"{self.name(key)}: range {start}..{stop - 1}: got {len(data)} bytes "
                               f"(the object is shorter: truncated?)")
        return data

    def read_suffix(self, key: str, n: int) -> tuple[bytes, int]:
        """The last ``n`` bytes of ``key`` (one suffix-range GET, no HEAD) and the object's size."""
        import obstore as obs

        def get(c):
            r = obs.get(c, key, options={"range": {"suffix": n}})
            return bytes(r.bytes()), int(r.meta["size"])

        return self._call("GET", key, get)

    def read_ranges(self, requests: list[tuple[str, int, int]]) -> list:
        """Many ``(key, start, stop)`` ranges at once: one GET each, up to DRIVER_STORE_CONCURRENCY (16)
        in flight from a thread pool (obstore releases the GIL while it waits)."""
        if len(requests) <= 1:
            return [self.read_range(*r) for r in requests]
        pool = self._threads()
        return list(pool.map(lambda r: self.read_range(*r), requests))

    def map(self, fn, items) -> list:
        """``[fn(x) for x in items]``, run concurrently on the request thread pool (each ``fn`` makes requests)."""
        items = list(items)
        if len(items) <= 1:
            return [fn(x) for x in items]
        return list(self._threads().map(fn, items))

    def _threads(self) -> ThreadPoolExecutor:
        if self._pid != os.getpid():
            self._reset()
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    n = int(os.environ.get("DRIVER_STORE_CONCURRENCY", DEFAULT_CONCURRENCY))
                    if not 1 <= n <= 1024:
                        raise ValueError(f"DRIVER_STORE_CONCURRENCY={n} must be in 1..1024")
                    self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="driver-store")
        return self._pool

    # -- listing -------------------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of every object under ``prefix`` (a folder: ``runs/x/``), in pages."""
        import obstore as obs

        stream = self._call("LIST", prefix, lambda c: obs.list(c, prefix or None, chunk_size=1000))
        while True:
            try:
                page = self._call("LIST", prefix, lambda c: next(stream))
            except StopIteration:
                return
            for meta in page:
                yield meta["path"], int(meta["size"])

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the 'folders' directly under ``prefix`` (common prefixes), without dot-names."""
        import obstore as obs

        res = self._call("LIST", prefix, lambda c: obs.list_with_delimiter(c, prefix.rstrip("/") + "/"))
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in res["common_prefixes"])
        return sorted(n for n in names if not n.startswith("."))

    def tree_bytes(self, prefix: str = "", skip_hidden: bool = False) -> int:
        """Bytes of the objects under ``prefix``; ``skip_hidden`` leaves out dot-names and ``locks/``."""
        total = 0
        for key, size in self.list(prefix):
            rel = key[len(prefix):].lstrip("/") if prefix else key
            if skip_hidden and (rel.startswith("locks/") or any(p.startswith(".") for p in rel.split("/"))):
                continue
            total += size
        return total

    # -- writes --------------------------------------------------------------------------------------
    def write(self, key: str, data, mode: str | dict = "overwrite") -> str | None:
        """PUT ``data`` (bytes or a list of buffers) as one request; returns the new ETag.

        ``mode``: "overwrite", "create" (If-None-Match: \\*; FileExistsError when the object exists) or
        ``{"e_tag": etag}`` (If-Match; :class:`WriteConflict` when it changed).
        """
        import obstore as obs

        if isinstance(data, list):
            data = b"".join(memoryview(b).cast("B") for b in data)
        res = self._call("PUT", key, lambda c: obs.put(c, key, data, mode=mode, use_multipart=False))
        return res.get("e_tag")

    def delete(self, keys: list[str]) -> None:
        import obstore as obs

        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            self._call("DELETE", batch[0], lambda c, b=batch: obs.delete(c, b))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many there were."""
        keys = [k for k, _ in self.list(prefix)]
        self.delete(keys)
        return len(keys)

    def zarr_store(self, read_only: bool = True):
        """zarr-python's ``ObjectStore`` over this location (what plain zarr users open), with the same
        retries as this location's own requests."""
        from zarr.storage import ObjectStore

        return retrying_zarr_store(ObjectStore(self.client, read_only=read_only), self.retry)
