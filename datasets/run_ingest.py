"""Ingest one run (an HDF5 file or an imported :class:`~.interop.RunSource`) into a staging folder of the store
(runs in a worker process).

Frames stream from the source one shard at a time into a reused buffer and go to disk as finished shard
files (:mod:`.shard_writer`); the source's sha256 is computed in a thread while that happens.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h5py
import numpy as np
import zarr

from . import storage
from .interop.sources import Hdf5Source, RunSource
from .layout import FORMAT_VERSION, STAGING, create_frames_array, create_series_array, shard_frames_for
from .run_format import RunInfo
from .shard_writer import FramesShardWriter
from .validity import ValidityRules, validity_mask

HASH_BLOCK = 8 * 2**20


@dataclass
class RunJob:
    """One source file to ingest (picklable: sent to worker processes)."""

    source: str
    run: str
    store: str
    codec: str
    shard_frames: int | None
    validity: dict
    previous_sha256: str | None  # skip the write when the content hash matches
    replaces: bool = False  # a run of this name is already stored
    origin: RunSource | None = None  # where the run is read from; None = the HDF5 file at ``source``
    write_id: str = ""  # this ingest of this run (recorded in its metadata; a retried task recognises its commit)
    lock_ttl_s: float = 60.0  # lease of a run being written to object storage (run_lease)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _copy_frames(h5: h5py.File, info: RunInfo, camera: str, writer: FramesShardWriter, buf: np.ndarray) -> None:
    """Stream one camera's frames, segment after segment, into whole shard files."""
    shard = len(buf)
    filled, index = 0, 0
    for seg in info.segments:
        ds = h5["segments"][seg.name][camera]
        pos = 0
        while pos < seg.n_frames:
            take = min(shard - filled, seg.n_frames - pos)
            ds.read_direct(buf, np.s_[pos : pos + take], np.s_[filled : filled + take])
            pos += take
            filled += take
            if filled == shard:
                writer.write_shard(index, buf)
                index += 1
                filled = 0
    if filled:
        writer.write_shard(index, buf[:filled])


def write_run_group(path: str, job: RunJob, info: RunInfo, source_meta, zarr_store=None, shard_sink=None) -> dict:
    """Write the full run group at ``path`` (a fresh folder); returns its metadata attributes.

    ``source_meta`` is the source's description, or a callable returning it (the hash still running).
    On object storage ``path`` is the run's key in ``zarr_store`` and ``shard_sink(camera)`` gives the
    frames writer its sink (``object_ingest``).
    """
    rules = ValidityRules.from_dict(job.validity)
    n = info.n_frames
    frame_bytes = info.height * info.width * 3
    shard = min(job.shard_frames or shard_frames_for(frame_bytes), max(n, 1))
    group = zarr.open_group(path, mode="w") if zarr_store is None else zarr.open_group(zarr_store, path=path, mode="w")
    buf = np.empty((shard, info.height, info.width, 3), dtype=np.uint8)
    with info.open() as h5:  # the HDF5 file, or an imported run shaped like it
        for cam in info.cameras:
            create_frames_array(group, cam, n, info.height, info.width, shard, job.codec)  # metadata only
            sink = shard_sink(cam) if shard_sink is not None else None
            _copy_frames(h5, info, cam, FramesShardWriter(os.path.join(path, cam), n, shard, job.codec, sink), buf)
        segment = np.concatenate([np.full(s.n_frames, i, dtype=np.int32) for i, s in enumerate(info.segments)])
        s = info.series
        valid = validity_mask(s["state"], s["steer"], s["motor"], s["left_timestamp"], segment, rules)
        series = {
            "steer": s["steer"].astype(np.float32),
            "motor": s["motor"].astype(np.float32),
            "state": np.rint(s["state"]).astype(np.int16),
            "timestamp": s["left_timestamp"].astype(np.float64),
            "segment": segment,
            "valid": valid,
        }
        for name, data in series.items():
            create_series_array(group, name, data)
        if info.extras:
            extra = group.create_group("extra")
            for e in info.extras:
                data = np.concatenate([h5["segments"][seg.name][e.name][()] for seg in info.segments])
                create_series_array(extra, e.name, data)
    starts = np.cumsum([0] + [seg.n_frames for seg in info.segments])
    meta = {
        "name": job.run,
        "format_version": FORMAT_VERSION,
        "source": source_meta() if callable(source_meta) else source_meta,
        "labels": info.labels,
        "cameras": list(info.cameras),
        "height": info.height,
        "width": info.width,
        "n_frames": n,
        "n_valid": int(valid.sum()),
        "segments": [{"name": seg.name, "start": int(a), "length": seg.n_frames}
                     for seg, a in zip(info.segments, starts[:-1], strict=True)],
        "extras": [{"name": e.name, "dtype": e.dtype, "shape": list(e.shape)} for e in info.extras],
        "validity": rules.to_dict(),
        "codec": job.codec,
        "shard_frames": shard,
        "ingested_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "write_id": job.write_id or uuid.uuid4().hex,
    }
    group.attrs["driver_run"] = meta
    return meta


def ingest_run_file(job: RunJob) -> dict:
    """Hash, validate and write one run into a new staging folder; the parent commits it.

    Returns a result dict: status ``unchanged`` when the content hash matches the run already stored,
    else ``ingested``/``replaced`` with the staging folder. Raises RunFormatError for a bad run; any
    partial staging folder is removed before the error propagates. On object storage there is no staging
    folder: the run is written in place and committed here, under its lease (:mod:`.object_ingest`).
    """
    src = job.origin or Hdf5Source(job.source)
    size = src.fingerprint()["size"]
    with ThreadPoolExecutor(max_workers=1) as hasher:
        if job.previous_sha256 is not None:  # a stored run of this name: the hash may make the write needless
            source_meta = src.describe()
            if job.previous_sha256 == source_meta["sha256"]:
                return {"status": "unchanged", "bytes_in": size, "source": source_meta}
        else:  # hash while the frames are read and written (hashlib releases the GIL)
            source_meta = hasher.submit(src.describe).result
        info = src.inspect()
        if storage.is_remote(job.store):  # no rename there: write in place, commit by a marker written last
            from .object_ingest import write_and_commit

            return {**write_and_commit(job, info, source_meta), "bytes_in": size}
        staging = os.path.join(job.store, STAGING, f"{job.run}.{uuid.uuid4().hex[:12]}")
        os.makedirs(staging)
        try:
            meta = write_run_group(staging, job, info, source_meta)
            storage.fsync_tree(staging)  # durable before the parent's commit rename makes it visible
        except BaseException:
            storage.remove_tree(staging)
            raise
    return {
        "status": "replaced" if job.replaces else "ingested",
        "frames": meta["n_frames"],
        "valid": meta["n_valid"],
        "bytes_in": size,
        "bytes_out": storage.tree_bytes(staging),
        "staging": staging,
    }
