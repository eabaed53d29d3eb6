"""The store layout (docs/dataset-format.md): names, shard sizing, codecs and array creation.

::

    STORE/zarr.json                  root group; attrs["driver_store"] = {"format_version": 2}
    STORE/runs/<run>/zarr.json       one group per run; attrs hold labels, source, segments, counts
    STORE/runs/<run>/left, right     uint8 (N, H, W, 3); inner chunk = 1 frame, shard = S frames
    STORE/runs/<run>/steer, motor    float32 (N,) run units
    STORE/runs/<run>/state           int16 (N,) lab state codes (rounded)
    STORE/runs/<run>/timestamp       float64 (N,) seconds (the run's left_timestamp)
    STORE/runs/<run>/segment         int32 (N,) source segment index of each frame
    STORE/runs/<run>/valid           bool (N,) validity mask at ingest
    STORE/runs/<run>/extra/<name>    extra series (encoder, gyro, ...) as recorded

Format 2 puts a CRC32C (zarr v3's ``crc32c`` codec, which zarr-python checks too) on every chunk of
every array: each frame of a shard, and each series. Format 1 stores (written before) checksummed only
the shard indices; they still open and are reported as unverified.
"""

from __future__ import annotations

import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
STORE_ATTR = "driver_store"
RUNS = "runs"
STAGING = ".staging"
TRASH = ".trash"
SERIES_ARRAYS = ("steer", "motor", "state", "timestamp", "segment", "valid")
CODECS = ("none", "lz4", "zstd")
TARGET_SHARD_BYTES = 24 * 2**20


def shard_frames_for(frame_bytes: int) -> int:
    """Frames per shard: the power of two nearest ~24 MiB per shard file, between 16 and 1024.

    94×168×3 gives 512 frames per shard (the measured sweet spot, data_and_perf.md §6).
    """
    n = 16
    while n < 1024 and abs(n * 2 * frame_bytes - TARGET_SHARD_BYTES) < abs(n * frame_bytes - TARGET_SHARD_BYTES):
        n *= 2
    return n


def frame_compressors(codec: str) -> list:
    """zarr bytes-to-bytes codecs of one frame chunk: none (default, memcpy-speed reads), Blosc-LZ4 or
    Zstd level 3, then the chunk's CRC32C."""
    if codec == "none":
        return [Crc32cCodec()]
    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.noshuffle, typesize=1), Crc32cCodec()]
    if codec == "zstd":
        return [ZstdCodec(level=3), Crc32cCodec()]
    raise ValueError(f"codec={codec!r} is not one of {', '.join(CODECS)}")


def series_compressors() -> list:
    """zarr codecs of a series' one chunk: Zstd level 3, then its CRC32C."""
    return [ZstdCodec(level=3), Crc32cCodec()]


def create_series_array(group: zarr.Group, name: str, data) -> zarr.Array:
    """A whole per-frame series (one chunk, checksummed); extra series keep their per-frame shape."""
    chunks = tuple(max(int(d), 1) for d in data.shape)
    return group.create_array(name, data=data, chunks=chunks, compressors=series_compressors(),
                              dimension_names=("t",) if data.ndim == 1 else None)


def create_frames_array(group: zarr.Group, name: str, n_frames: int, height: int, width: int,
                        shard_frames: int, codec: str) -> zarr.Array:
    """A (N, H, W, 3) uint8 frames array: one frame per inner chunk, ``shard_frames`` per shard file.

    Callers pass ``shard_frames <= N`` so a short run is one shard of exactly its frames.
    """
    shards = (shard_frames, height, width, 3)
    return group.create_array(
        name,
        shape=(n_frames, height, width, 3),
        dtype="uint8",
        chunks=(1, height, width, 3),
        shards=shards,
        compressors=frame_compressors(codec),
        fill_value=0,
        dimension_names=("t", "y", "x", "c"),
        config={"write_empty_chunks": True},  # all-black frames too: keeps every shard one contiguous block
    )
