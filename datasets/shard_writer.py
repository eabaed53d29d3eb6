"""Write a frames array's shard files directly: chunk bytes, CRC32Cs and the shard index.

zarr-python encodes a shard one inner chunk (frame) at a time through its async codec pipeline, which
made ingest CPU-bound at a fraction of disk speed. The bytes of the layout ``create_frames_array``
declares are simple, so this writer produces them itself with one vector write per shard: for each
frame its (optionally compressed) bytes followed by their CRC32C, then the index (offset and size of
every inner chunk, little-endian uint64) followed by the index's CRC32C. zarr-python reads the result
like any array it wrote (tested). Given an executor, each finished shard file is fsynced there while
the next one is read and written, so the disk writes overlap the work instead of following it.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, Future
from pathlib import Path

import crc32c
import numpy as np

from . import storage

_MISSING = 2**64 - 1


def _encoder(codec: str):
    if codec == "none":
        return None
    if codec == "lz4":
        from numcodecs import Blosc

        return Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)
    if codec == "zstd":
        from numcodecs import Zstd

        return Zstd(level=3)
    raise ValueError(f"codec={codec!r} is not one of none, lz4, zstd")


class FramesShardWriter:
    """Writes shard ``i`` of a one-frame-per-chunk array created by ``layout.create_frames_array``."""

    def __init__(self, array_dir: str | os.PathLike, n_frames: int, shard_frames: int, codec: str,
                 sync: Executor | None = None, sink=None):
        """``sync``: fsync each shard file there, in the background (``finish`` waits for them).
        ``sink(key, buffers) -> bytes written`` stores a shard elsewhere than in a file under ``array_dir``
        (``key`` is relative to the array, e.g. ``c/0/0/0/0``): a store on object storage."""
        self.path = Path(array_dir)
        self._sink = sink
        self.n_frames = n_frames
        self.shard_frames = shard_frames
        self._encode = _encoder(codec)
        self._sync = sync
        self._pending: list[Future] = []
        self.bytes_written = 0

    def write_shard(self, shard: int, frames: np.ndarray) -> int:
        """Write the frames of shard ``shard`` (all of them: ``shard_frames``, fewer for the last shard)."""
        expected = min(self.shard_frames, self.n_frames - shard * self.shard_frames)
        if len(frames) != expected:
            raise ValueError(f"{self.path}: shard {shard} needs {expected} frames, got {len(frames)}")
        index = np.full((self.shard_frames, 2), _MISSING, dtype="<u8")
        buffers: list = []
        offset = 0
        for i in range(len(frames)):
            frame = np.ascontiguousarray(frames[i])
            payload = frame if self._encode is None else self._encode.encode(frame)
            crc = crc32c.crc32c(payload).to_bytes(4, "little")
            size = memoryview(payload).nbytes + 4
            index[i] = (offset, size)
            buffers += [payload, crc]
            offset += size
        raw_index = index.tobytes()
        buffers += [raw_index, crc32c.crc32c(raw_index).to_bytes(4, "little")]
        if self._sink is not None:
            n = self._sink(f"c/{shard}/0/0/0", buffers)
        else:
            folder = self.path / "c" / str(shard) / "0" / "0"
            folder.mkdir(parents=True, exist_ok=True)
            n = storage.create_file(folder / "0", buffers)
            if self._sync is not None:
                self._pending.append(self._sync.submit(storage.fsync_file, folder / "0"))
        self.bytes_written += n
        return n

    def finish(self) -> None:
        """Wait for the background fsyncs of the shards written so far (raising the first error)."""
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()
