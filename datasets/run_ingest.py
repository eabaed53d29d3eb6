"""Ingest one run (an HDF5 file or an imported :class:`~.interop.RunSource`) into a staging folder of the store
(runs in an ingest worker, a thread or a process: :mod:`.ingest_workers`).

Frames stream from the source one shard at a time, into two reused buffers: a thread reads the next shard
while the current one goes to disk as a finished shard file (:mod:`.shard_writer`), each fsynced in the
background; the source's sha256 is computed in a thread while that happens. Frames stored the way
``write_run`` stores them (uncompressed, unfiltered chunks of whole frames, or a contiguous dataset) are
read with one positioned vector read per shard at the chunks' own file offsets, as large as a plain file
copy's reads; any other layout goes through h5py.
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

from . import array_writer, storage
from .interop.sources import Hdf5Source, RunSource
from .layout import FORMAT_VERSION, STAGING, create_frames_array, create_series_array, shard_frames_for
from .run_format import RunFormatError, RunInfo
from .series import speed_series_name
from .shard_writer import FramesShardWriter
from .validity import ValidityRules, validity_mask

HASH_BLOCK = 8 * 2**20
MAX_GAP = 1 << 20  # chunk gaps (HDF5 index nodes) up to this size are read through, not a new read


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
    """The file's sha256 (hex), read in blocks into one reused buffer (no fresh 8 MiB of pages to fault in per read)."""
    h = hashlib.sha256()
    block = bytearray(HASH_BLOCK)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(block):
            h.update(view[:n])
    return h.hexdigest()


def frame_offsets(ds) -> np.ndarray | None:
    """The file offset of every frame of an HDF5 frames dataset whose bytes are stored as they are
    (uint8, no filters, chunks of whole frames or contiguous, every chunk written); None otherwise."""
    if not isinstance(ds, h5py.Dataset) or ds.dtype != np.uint8 or ds.ndim != 4 or ds.shape[0] == 0:
        return None
    dcpl = ds.id.get_create_plist()
    if dcpl.get_nfilters() or dcpl.get_external_count():
        return None
    n, frame = ds.shape[0], int(np.prod(ds.shape[1:]))
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        base = ds.id.get_offset()
        return None if base is None else base + np.arange(n, dtype=np.int64) * frame
    if layout != h5py.h5d.CHUNKED or tuple(ds.chunks[1:]) != ds.shape[1:] or not hasattr(ds.id, "chunk_iter"):
        return None
    k = ds.chunks[0]
    starts = np.full(-(-n // k), -1, dtype=np.int64)

    def visit(info):
        if info.filter_mask == 0 and info.size == k * frame:
            starts[info.chunk_offset[0] // k] = info.byte_offset

    ds.id.chunk_iter(visit)
    if (starts < 0).any():  # a chunk never written (fill value) or stored differently
        return None
    return (starts[:, None] + np.arange(k, dtype=np.int64)[None, :] * frame).reshape(-1)[:n]


def _read_direct(fd: int, path: str, offsets: np.ndarray, out: np.ndarray, junk: np.ndarray) -> None:
    """Frames at ``offsets`` into ``out``: one vector read per run of frames that follow each other in the
    file, reading through small gaps (HDF5 index nodes) into ``junk``."""
    frame = out[0].nbytes
    i = 0
    while i < len(offsets):
        buffers, start, end, j = [out[i]], int(offsets[i]), int(offsets[i]) + frame, i + 1
        while j < len(offsets) and 0 <= int(offsets[j]) - end <= min(MAX_GAP, junk.nbytes):
            gap = int(offsets[j]) - end
            if gap:
                buffers.append(junk[:gap])
            buffers.append(out[j])
            end = int(offsets[j]) + frame
            j += 1
        try:
            storage.pread_all(fd, buffers, start)
        except EOFError as e:
            raise RunFormatError(path, f"frames end past the end of the file (truncated?): {e}") from e
        i = j


@dataclass
class _Piece:
    """Frames ``pos:pos+take`` of one segment's camera dataset, into rows ``dst:dst+take`` of a shard buffer."""

    ds: object  # h5py.Dataset, or an imported run's dataset-like (``read_direct``)
    offsets: np.ndarray | None  # file offset of each of the segment's frames: read directly (frame_offsets)
    file: str  # the file those offsets are in (the dataset's own: an external link may point elsewhere)
    pos: int
    take: int
    dst: int


def _shard_plan(h5, info: RunInfo, camera: str, shard: int) -> list[list[_Piece]]:
    """For each shard of ``camera``, the segment pieces that fill it (a shard may span segments)."""
    plan: list[list[_Piece]] = [[]]
    filled = 0
    for seg in info.segments:
        ds = h5["segments"][seg.name][camera]
        offsets = frame_offsets(ds)
        file = ds.file.filename if offsets is not None else ""
        pos = 0
        while pos < seg.n_frames:
            if filled == shard:
                plan.append([])
                filled = 0
            take = min(shard - filled, seg.n_frames - pos)
            plan[-1].append(_Piece(ds, offsets, file, pos, take, filled))
            pos += take
            filled += take
    return plan if plan[0] else []


def _fill(fds: dict[str, int], path: str, pieces: list[_Piece], buf: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """Read one shard's frames into ``buf`` (``fds``: the open source files); returns the filled rows."""
    for p in pieces:
        if p.offsets is None:
            p.ds.read_direct(buf, np.s_[p.pos : p.pos + p.take], np.s_[p.dst : p.dst + p.take])
        else:
            _read_direct(fds[p.file], path, p.offsets[p.pos : p.pos + p.take], buf[p.dst : p.dst + p.take], junk)
    return buf[: pieces[-1].dst + pieces[-1].take]


def _copy_frames(h5, info: RunInfo, cameras: list[str], writers: list[FramesShardWriter], bufs: list[np.ndarray],
                 reader: ThreadPoolExecutor) -> None:
    """Stream every camera's frames, segment after segment, into whole shard files: shard k+1 is read (in
    ``reader``, into the other of the two ``bufs``) while shard k is CRC'd and written, so the source is read
    while the disk takes the writes."""
    shards = [(writer, k, pieces) for cam, writer in zip(cameras, writers, strict=True)
              for k, pieces in enumerate(_shard_plan(h5, info, cam, len(bufs[0])))]
    if not shards:
        return
    junk = np.empty(MAX_GAP, dtype=np.uint8)
    fds: dict[str, int] = {}
    pending = None
    try:
        for file in {p.file for _, _, pieces in shards for p in pieces if p.offsets is not None}:
            fds[file] = os.open(file, os.O_RDONLY)
        pending = reader.submit(_fill, fds, info.path, shards[0][2], bufs[0], junk)
        for i, (writer, k, _) in enumerate(shards):
            frames = pending.result()
            pending = None
            if i + 1 < len(shards):
                pending = reader.submit(_fill, fds, info.path, shards[i + 1][2], bufs[(i + 1) % 2], junk)
            writer.write_shard(k, frames)
    finally:
        if pending is not None:  # an error while writing: let the read in flight end before closing its file
            pending.exception()
        for fd in fds.values():
            os.close(fd)


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
    group = None if zarr_store is None else zarr.open_group(zarr_store, path=path, mode="w")  # object storage
    if group is None:
        os.makedirs(path, exist_ok=True)
    bufs = [np.empty((shard, info.height, info.width, 3), dtype=np.uint8) for _ in range(2)]
    writers = []
    # the HDF5 file, or a run shaped like it; a thread reading frames ahead, two fsyncing finished shards
    with info.open() as h5, ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=2) as sync:
        for cam in info.cameras:
            if group is None:
                array_writer.write_frames_metadata(os.path.join(path, cam), n, info.height, info.width, shard,
                                                   job.codec)
            else:
                create_frames_array(group, cam, n, info.height, info.width, shard, job.codec)  # metadata only
            sink = shard_sink(cam) if shard_sink is not None else None
            writers.append(FramesShardWriter(os.path.join(path, cam), n, shard, job.codec,
                                             sync if sink is None else None, sink))
        _copy_frames(h5, info, list(info.cameras), writers, bufs, reader)
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
        extras = {e.name: np.concatenate([h5["segments"][seg.name][e.name][()] for seg in info.segments])
                  for e in info.extras}
        if group is not None:  # object storage: zarr-python writes through the store
            for name, data in series.items():
                create_series_array(group, name, data)
            if extras:
                extra = group.create_group("extra")
                for name, data in extras.items():
                    create_series_array(extra, name, data)
        else:
            for name, data in series.items():
                array_writer.write_series(os.path.join(path, name), data)
            if extras:
                array_writer.write_group(os.path.join(path, "extra"))
                for name, data in extras.items():
                    if array_writer.can_write_series(data):
                        array_writer.write_series(os.path.join(path, "extra", name), data)
                    else:  # a dtype the direct writer does not encode: zarr-python does
                        create_series_array(zarr.open_group(os.path.join(path, "extra"), mode="a"), name, data)
        for w in writers:
            w.finish()
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
    if group is None:
        array_writer.write_group(path, {"driver_run": meta})  # last: the run group is complete
    else:
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
        if storage.is_remote(job.store):  # no rename there: write in place, commit by a marker written last
            from .object_ingest import write_and_commit

            return {**write_and_commit(job, src.inspect(), source_meta), "bytes_in": size}
        # made before the source is opened: if the process dies (a crash in the HDF5 library), the folder left
        # behind tells the next ingest which run to isolate (ingest_workers)
        staging = os.path.join(job.store, STAGING, f"{job.run}.{uuid.uuid4().hex[:12]}")
        os.makedirs(staging)
        try:
            meta = write_run_group(staging, job, src.inspect(), source_meta)
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
