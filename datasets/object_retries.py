"""How requests to object storage are retried: the policy (attempts, backoff, time), which errors deserve
another try, and a zarr store wrapper that applies the same to zarr-python's own requests.

obstore retries 5xx answers, dropped connections and timeouts itself; some failures it gives up on at once
(a response body cut short, a connection dropped while a listing or a delete was being answered). Those
are tried again here, within the same policy, so that a faulty network costs retries, never a failed run.
"""

from __future__ import annotations

import functools
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class RetryPolicy:
    """How requests are retried (5xx answers, dropped connections, timeouts): exponential backoff with
    jitter from ``backoff_s`` up to ``max_backoff_s``, at most ``retries`` times and ``timeout_s`` in all.
    Environment: DRIVER_STORE_RETRIES, DRIVER_STORE_RETRY_TIMEOUT_S, DRIVER_STORE_BACKOFF_S."""

    retries: int = 10
    timeout_s: float = 180.0
    backoff_s: float = 0.1
    max_backoff_s: float = 15.0

    def __post_init__(self):
        for name, lo, hi in (("retries", 0, 100), ("timeout_s", 0.1, 86400), ("backoff_s", 0.001, 60),
                             ("max_backoff_s", 0.001, 600)):
            v = getattr(self, name)
            if isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{name}={v!r} must be in {lo}..{hi}")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        def num(var: str, default, kind):
            raw = os.environ.get(var, "")
            try:
                return kind(raw) if raw else default
            except ValueError:
                raise ValueError(f"{var}={raw!r} must be a number") from None

        d = cls()
        try:
            return cls(num("DRIVER_STORE_RETRIES", d.retries, int),
                       num("DRIVER_STORE_RETRY_TIMEOUT_S", d.timeout_s, float),
                       num("DRIVER_STORE_BACKOFF_S", d.backoff_s, float), d.max_backoff_s)
        except ValueError as e:
            raise ValueError(f"DRIVER_STORE_RETRIES / _RETRY_TIMEOUT_S / _BACKOFF_S: {e}") from None

    def delays(self):
        """Waits before each further try of an error obstore gave up on at once: exponential with jitter,
        ``retries`` of them, within ``timeout_s`` in all."""
        start = time.monotonic()
        for i in range(self.retries):
            delay = random.uniform(0.5, 1.0) * min(self.max_backoff_s, self.backoff_s * 2**i)
            if time.monotonic() + delay - start > self.timeout_s:
                return
            yield delay

    def obstore_config(self) -> dict:
        return {"max_retries": self.retries, "retry_timeout": timedelta(seconds=self.timeout_s),
                "backoff": {"init_backoff": timedelta(seconds=self.backoff_s),
                            "max_backoff": timedelta(seconds=self.max_backoff_s), "base": 2}}


def _retried_already(e: BaseException) -> bool:
    """Whether obstore itself retried this error up to its limit ("after 10 retries, max_retries: 10")."""
    m = re.search(r"after (\d+) retries, max_retries: (\d+)", str(e).split("\n", 1)[0])
    return m is not None and int(m.group(1)) >= int(m.group(2))


def transient(e: BaseException) -> bool:
    """An error worth another try that obstore gave up on at once: a body cut short, a connection dropped
    while the answer was being read. (Definite answers, such as not found or refused, are not.)"""
    import obstore.exceptions as oe

    definite = (FileNotFoundError, oe.AlreadyExistsError, oe.PreconditionError, oe.PermissionDeniedError,
                oe.UnauthenticatedError, oe.NotSupportedError, oe.InvalidPathError, oe.NotModifiedError)
    return isinstance(e, oe.BaseError) and not isinstance(e, definite) and not _retried_already(e)


def retrying_zarr_store(store, retry: RetryPolicy):
    """``store`` (a zarr store) with its reads, writes, deletes and listings tried again on :func:`transient`
    errors."""
    return _retrying_class()(store, retry)


@functools.cache
def _retrying_class():
    from zarr.storage import WrapperStore

    class Retrying(WrapperStore):
        """A zarr store whose reads and writes are tried again on the errors obstore does not retry."""

        def __init__(self, store, retry: RetryPolicy):
            super().__init__(store)
            self.retry = retry

        def _with_store(self, store):
            return type(self)(store, self.retry)

        async def _again(self, call):
            import asyncio

            delays = self.retry.delays()
            while True:
                try:
                    return await call()
                except Exception as e:
                    delay = next(delays, None) if transient(e) else None
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)

        async def get(self, key, prototype, byte_range=None):
            return await self._again(lambda: self._store.get(key, prototype, byte_range))

        async def get_partial_values(self, prototype, key_ranges):
            return await self._again(lambda: self._store.get_partial_values(prototype, key_ranges))

        async def exists(self, key):
            return await self._again(lambda: self._store.exists(key))

        async def set(self, key, value):
            return await self._again(lambda: self._store.set(key, value))

        async def set_if_not_exists(self, key, value):
            return await self._again(lambda: self._store.set_if_not_exists(key, value))

        async def delete(self, key):
            return await self._again(lambda: self._store.delete(key))

        async def delete_dir(self, prefix):
            return await self._again(lambda: self._store.delete_dir(prefix))

        async def is_empty(self, prefix):
            return await self._again(lambda: self._store.is_empty(prefix))

        async def _listed(self, listing) -> list:
            async def collect():
                return [k async for k in listing()]

            return await self._again(collect)

        async def list(self):
            for k in await self._listed(lambda: self._store.list()):
                yield k

        async def list_prefix(self, prefix):
            for k in await self._listed(lambda: self._store.list_prefix(prefix)):
                yield k

        async def list_dir(self, prefix):
            for k in await self._listed(lambda: self._store.list_dir(prefix)):
                yield k

    return Retrying
