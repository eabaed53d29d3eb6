"""A lease on one run of a store on object storage, where there is no ``flock``: whoever holds it may
write the run. It is the object ``locks/<run>.lock`` (outside the zarr hierarchy), created with a
create-only write (``If-None-Match: *``) and carrying a random owner token, the holder's host and pid and
an expiry time. A thread renews it every ``ttl_s / 3`` by compare-and-swap on its ETag.

A lease whose holder died (a killed process, a Dask worker that vanished) is taken over, by
compare-and-swap, once it is stale: its ETag has not changed for 1.5 ``ttl_s`` while we watched (a clock-free
test: a live holder renews three times per ``ttl_s``), or its written expiry lies more than
``max(ttl_s, 30 s)`` in the past by our clock (a long-dead lease, taken at once; the margin absorbs clock
skew between hosts). A waiter gives up with a one-line error after ``wait_s`` if a live holder keeps
renewing. A create-only write whose acknowledgement was lost is recognised by its owner token.

What a lease cannot promise: a holder paused longer than ``ttl_s`` (a stopped VM, a network partition)
may still write after another process took over; the holder checks its lease before it commits, and the
commit itself is create-only, so at most one version of a run is ever committed (docs/object-storage.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from driver.errors import DriverError

from .object_store import WriteConflict

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60.0
LOCKS = "locks"


class LeaseHeld(DriverError, RuntimeError):
    """Another live process holds the run's lease (it is ingesting that run)."""


class LeaseLost(DriverError, RuntimeError):
    """This process no longer holds its lease (it could not renew it in time, or another took it over)."""


def lock_key(run: str) -> str:
    return f"{LOCKS}/{run}.lock"


class RunLease:
    """``with RunLease(location, run):`` holds the lease on ``run`` while the block runs (see module doc)."""

    def __init__(self, location, run: str, ttl_s: float = DEFAULT_TTL_S, wait_s: float | None = None):
        if not 0.5 <= ttl_s <= 86400:
            raise ValueError(f"lock ttl_s={ttl_s} must be in 0.5..86400 seconds")
        self.location, self.run, self.ttl_s = location, run, float(ttl_s)
        self.key = lock_key(run)
        self.wait_s = 2.0 * self.ttl_s + 10.0 if wait_s is None else float(wait_s)
        self.token = uuid.uuid4().hex
        self._etag: str | None = None
        self._renewed = 0.0  # monotonic time of the last successful write of the lease
        self._lost = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.token, "host": socket.gethostname(), "pid": os.getpid(), "run": self.run,
                           "ttl_s": self.ttl_s, "expires": time.time() + self.ttl_s}).encode("utf-8")

    def _held_by(self) -> tuple[dict, str | None] | None:
        """The current lease document and its ETag; None when there is no lease object."""
        try:
            raw, etag = self.location.read_versioned(self.key, 1 << 16)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError):
            doc = {}  # unreadable: nobody can renew it, so it goes stale like a dead holder's
        return doc, etag

    # -- taking it -----------------------------------------------------------------------------------
    def acquire(self) -> RunLease:
        start = time.monotonic()
        seen: dict[str | None, float] = {}  # ETag -> when we first saw it
        while True:
            body = self._body()
            t = time.monotonic()
            try:
                self._etag = self.location.write(self.key, body, mode="create")
                return self._held(t)
            except FileExistsError:
                pass
            held = self._held_by()
            if held is None:
                continue  # released meanwhile
            doc, etag = held
            if doc.get("owner") == self.token:  # our own create, whose answer was lost and retried
                self._etag = etag
                return self._held(t)
            first = seen.setdefault(etag, time.monotonic())
            ttl = float(doc.get("ttl_s", self.ttl_s)) if isinstance(doc.get("ttl_s"), int | float) else self.ttl_s
            expires = doc.get("expires") if isinstance(doc.get("expires"), int | float) else 0.0
            if time.monotonic() - first > 1.5 * ttl or expires + max(ttl, 30.0) < time.time() or not doc:
                try:
                    t = time.monotonic()
                    self._etag = self.location.write(self.key, self._body(), mode={"e_tag": etag})
                    log.warning("%s: took over the stale lock of %s pid %s", self.location.name(self.key),
                                doc.get("host", "?"), doc.get("pid", "?"))
                    return self._held(t)
                except (WriteConflict, FileNotFoundError):
                    continue  # renewed, released or taken by another waiter meanwhile: look again
            if time.monotonic() - start > self.wait_s:
                raise LeaseHeld(f"{self.location.name(self.key)}: run {self.run!r} is being ingested by "
                                f"{doc.get('host', '?')} pid {doc.get('pid', '?')} (its lease is being renewed); "
                                "run again when that ingest ends")
            time.sleep(min(max(self.ttl_s / 8, 0.05), 2.0))

    def _held(self, written_at: float) -> RunLease:
        self._renewed = written_at
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.run}", daemon=True)
        self._thread.start()
        return self

    # -- keeping it ----------------------------------------------------------------------------------
    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            t = time.monotonic()
            try:
                self._etag = self.location.write(self.key, self._body(), mode={"e_tag": self._etag})
                self._renewed = t
                continue
            except (WriteConflict, FileNotFoundError):
                held = self._held_by()
                if held is not None and held[0].get("owner") == self.token:
                    self._etag = held[1]  # our own renewal, whose answer was lost: still ours
                    self._renewed = t
                    continue
                doc = held[0] if held is not None else {}
                self._lost = f"taken over by {doc.get('host', '?')} pid {doc.get('pid', '?')}" if held else "deleted"
                return
            except OSError as e:  # network trouble: keep trying until the lease would have expired
                log.warning("%s: cannot renew the lease: %s", self.location.name(self.key), e)

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this process still holds the lease (call before committing)."""
        if not self._lost and time.monotonic() - self._renewed > self.ttl_s:
            self._lost = f"not renewed for {time.monotonic() - self._renewed:.0f} s (ttl {self.ttl_s:g} s)"
        if self._lost:
            raise LeaseLost(f"{self.location.name(self.key)}: lost the lease on run {self.run!r} ({self._lost}); "
                            "nothing was committed; run the ingest again")

    # -- giving it back ------------------------------------------------------------------------------
    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (best effort: it expires anyway)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._lost:
            return
        try:
            held = self._held_by()
            if held is not None and held[0].get("owner") == self.token:
                self.location.delete([self.key])
        except OSError as e:
            log.warning("%s: cannot release the lease (it expires in %g s): %s", self.location.name(self.key),
                        self.ttl_s, e)

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
