"""Ingest one HDF5 run into a staging folder of the store (runs in a worker process)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass

import h5py
import numpy as np
import zarr

from .layout import STAGING, create_frames_array, shard_frames_for
from .run_format import RunInfo, inspect_run, open_run_file
from .series import speed_series_name
from .store import fsync_tree
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


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def _copy_frames(h5: h5py.File, info: RunInfo, camera: str, arr: zarr.Array, shard: int) -> None:
    """Stream one camera's frames, segment after segment, into ``arr`` in whole-shard writes."""
    buf = np.empty((shard, info.height, info.width, 3), dtype=np.uint8)
    filled, written = 0, 0
    for seg in info.segments:
        ds = h5["segments"][seg.name][camera]
        pos = 0
        while pos < seg.n_frames:
            take = min(shard - filled, seg.n_frames - pos)
            ds.read_direct(buf, np.s_[pos : pos + take], np.s_[filled : filled + take])
            pos += take
            filled += take
            if filled == shard:
                arr[written : written + shard] = buf
                written += shard
                filled = 0
    if filled:
        arr[written : written + filled] = buf[:filled]


def write_run_group(path: str, job: RunJob, info: RunInfo, source_meta: dict) -> dict:
    """Write the full run group at ``path`` (a fresh folder); returns its metadata attributes."""
    rules = ValidityRules.from_dict(job.validity)
    n = info.n_frames
    frame_bytes = info.height * info.width * 3
    shard = min(job.shard_frames or shard_frames_for(frame_bytes), max(n, 1))
    group = zarr.open_group(path, mode="w")
    with open_run_file(info.path) as h5:
        for cam in info.cameras:
            arr = create_frames_array(group, cam, n, info.height, info.width, shard, job.codec)
            _copy_frames(h5, info, cam, arr, shard)
        segment = np.concatenate([np.full(s.n_frames, i, dtype=np.int32) for i, s in enumerate(info.segments)])
        s = info.series
        speed_name = speed_series_name([e.name for e in info.extras if not e.shape])
        speed = np.concatenate([h5["segments"][seg.name][speed_name][()] for seg in info.segments]) \
            if speed_name else None
        valid = validity_mask(s["state"], s["steer"], s["motor"], s["left_timestamp"], segment, rules, speed)
        series = {
            "steer": s["steer"].astype(np.float32),
            "motor": s["motor"].astype(np.float32),
            "state": np.rint(s["state"]).astype(np.int16),
            "timestamp": s["left_timestamp"].astype(np.float64),
            "segment": segment,
            "valid": valid,
        }
        for name, data in series.items():
            group.create_array(name, data=data, chunks=(max(n, 1),), dimension_names=("t",))
        if info.extras:
            extra = group.create_group("extra")
            for e in info.extras:
                data = np.concatenate([h5["segments"][seg.name][e.name][()] for seg in info.segments])
                extra.create_array(e.name, data=data, chunks=data.shape)
    starts = np.cumsum([0] + [seg.n_frames for seg in info.segments])
    meta = {
        "name": job.run,
        "source": source_meta,
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
    }
    group.attrs["driver_run"] = meta
    return meta


def ingest_run_file(job: RunJob) -> dict:
    """Hash, validate and write one run into a new staging folder; the parent commits it.

    Returns a result dict: status ``unchanged`` when the content hash matches the run already stored,
    else ``ingested``/``replaced`` with the staging folder. Raises RunFormatError for a bad run; any
    partial staging folder is removed before the error propagates.
    """
    st = os.stat(job.source)
    sha = file_sha256(job.source)
    source_meta = {"path": job.source, "file": os.path.basename(job.source), "sha256": sha,
                   "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if job.previous_sha256 == sha:
        return {"status": "unchanged", "bytes_in": st.st_size, "source": source_meta}
    info = inspect_run(job.source)
    staging = os.path.join(job.store, STAGING, f"{job.run}.{uuid.uuid4().hex[:12]}")
    os.makedirs(staging)
    try:
        meta = write_run_group(staging, job, info, source_meta)
        fsync_tree(staging)  # durable before the parent's commit rename makes it visible
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "status": "replaced" if job.replaces else "ingested",
        "frames": meta["n_frames"],
        "valid": meta["n_valid"],
        "bytes_in": st.st_size,
        "bytes_out": _dir_bytes(staging),
        "staging": staging,
    }
