"""Ingest into a store on object storage, where there is no rename (docs/object-storage.md).

A run is written in place under ``runs/<run>/`` and becomes visible only when its group metadata
``runs/<run>/zarr.json`` is written, last, with a create-only write (``If-None-Match: *``). That object
is the commit marker: it holds the run's metadata, and plain zarr (like :class:`~.store.Store`) does not
see a run without it. zarr-python writes the arrays' metadata through :class:`_HoldMarker`, which keeps
the marker back until the commit; shards go to the location directly, one single-request PUT each.

Everything happens under the run's lease (:mod:`.run_lease`): a second ingest of the same run waits, and
a dead ingest's lease is taken over once stale. The first thing a holder does is delete whatever lies
under ``runs/<run>/`` without a marker (a killed attempt's objects), and a replaced run's marker is
deleted before its objects are rewritten. The marker records the ingest's ``write_id``, so a retried task
(Dask re-runs the task of a worker that died) recognises a commit its earlier attempt made.
"""

from __future__ import annotations

import logging

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from .layout import RUNS, STORE_ATTR
from .run_lease import RunLease
from .storage import open_location
from .store import MAX_JSON_BYTES, StoreError, _parse_json

log = logging.getLogger(__name__)


def marker_key(run: str) -> str:
    return f"{RUNS}/{run}/zarr.json"


class _HoldMarker(WrapperStore):
    """zarr writes of one run, with the run's own ``zarr.json`` held back in memory until the commit."""

    def __init__(self, store, marker: str, held: dict | None = None):
        super().__init__(store)
        self.marker = marker
        self.held: dict[str, Buffer] = {} if held is None else held

    def _with_store(self, store):
        return type(self)(store, self.marker, self.held)

    async def set(self, key: str, value: Buffer) -> None:
        if key == self.marker:
            self.held[key] = value
            return
        await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if key == self.marker:
            self.held.setdefault(key, value)
            return
        await self._store.set_if_not_exists(key, value)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None):
        if key in self.held:
            return self.held[key]
        return await self._store.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        return key in self.held or await self._store.exists(key)


def _group_documents(format_version: int) -> dict[str, bytes]:
    """The bytes of an empty store's root and ``runs`` group, as zarr-python writes them for a folder."""
    import zarr
    from zarr.storage import MemoryStore

    mem: dict = {}
    root = zarr.open_group(MemoryStore(mem), mode="w")
    root.attrs[STORE_ATTR] = {"format_version": format_version}
    root.create_group(RUNS)
    return {k: v.to_bytes() for k, v in mem.items()}


def create_object_store(location, format_version: int) -> bool:
    """Create an empty store at ``location`` unless one is there; True if this call created it.

    Both objects are create-only, ``runs/zarr.json`` first and the root (which makes it a store) last,
    so racing creators leave one store, and a half-made one is finished by the next call.
    """
    docs = _group_documents(format_version)
    created = False
    for key in (f"{RUNS}/zarr.json", "zarr.json"):
        try:
            location.write(key, docs[key], mode="create")
            created = key == "zarr.json"
        except FileExistsError:
            pass
    return created


def _committed(location, run: str) -> dict | None:
    """The run's metadata if it is committed, else None."""
    try:
        raw = location.read(marker_key(run), MAX_JSON_BYTES)
    except FileNotFoundError:
        return None
    meta = _parse_json(raw, location.name(marker_key(run))).get("attributes", {}).get("driver_run")
    if not isinstance(meta, dict):
        raise StoreError(f"{location.name(marker_key(run))}: run group has no 'driver_run' metadata")
    return meta


def _done(meta: dict, status: str) -> dict:
    return {"status": status, "frames": meta["n_frames"], "valid": meta["n_valid"]}


def write_and_commit(job, info, source_meta) -> dict:
    """Write run ``job.run`` into the store at URL ``job.store`` and commit it; returns the result dict of
    ``run_ingest.ingest_run_file`` (status, frames, valid, bytes_out). Raises on failure, leaving nothing
    visible (the objects written so far are removed by the next attempt)."""
    from .run_ingest import write_run_group

    location = open_location(job.store)
    run, marker = job.run, marker_key(job.run)
    with RunLease(location, run, ttl_s=job.lock_ttl_s) as lease:
        existing = _committed(location, run)
        if existing is not None:
            if job.write_id and existing.get("write_id") == job.write_id:
                log.info("%s: committed by an earlier attempt of this ingest", location.name(marker))
                return {**_done(existing, "replaced" if job.replaces else "ingested"),
                        "bytes_out": location.tree_bytes(f"{RUNS}/{run}/")}
            source = source_meta() if callable(source_meta) else source_meta
            if not job.replaces:
                if existing.get("source", {}).get("sha256") == source["sha256"]:
                    return {**_done(existing, "unchanged"), "source": source}
                raise StoreError(f"{location.name(marker)}: run {run!r} was committed by another ingest meanwhile "
                                 f"(from {existing.get('source', {}).get('path', '?')}); run again to replace it")
            location.delete([marker])  # the old version disappears before its objects are rewritten
        stale = location.delete_prefix(f"{RUNS}/{run}/")
        if stale:
            log.info("%s: removed %d objects of an unfinished or replaced version", location.name(f"{RUNS}/{run}/"),
                     stale)

        def shard_sink(camera: str):
            def put(rel: str, buffers: list) -> int:
                lease.check()  # never overwrite objects of a writer that took over from us
                location.write(f"{RUNS}/{run}/{camera}/{rel}", buffers)
                return sum(memoryview(b).nbytes for b in buffers)

            return put

        zstore = _HoldMarker(location.zarr_store(read_only=False), marker)
        meta = write_run_group(f"{RUNS}/{run}", job, info, source_meta, zarr_store=zstore, shard_sink=shard_sink)
        doc = zstore.held[marker].to_bytes()
        lease.check()
        try:
            location.write(marker, doc, mode="create")  # COMMIT: from here on the run is visible
        except FileExistsError:
            theirs = _committed(location, run) or {}
            if theirs.get("write_id") != meta["write_id"]:  # not merely our own write, acknowledged late
                raise StoreError(f"{location.name(marker)}: another ingest committed run {run!r} first; "
                                 "run again to replace it") from None
    return {**_done(meta, "replaced" if job.replaces else "ingested"),
            "bytes_out": location.tree_bytes(f"{RUNS}/{run}/")}

