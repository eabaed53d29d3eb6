"""A fast reader for frame arrays stored as standard zarr v3 shards.

zarr-python costs ~0.5 ms per indexing call; a training clip needs far less. This reader parses the
array's ``zarr.json`` and each shard's index (once per process). An uncompressed shard whose frames lie
in order is memory-mapped, and a run of consecutive frames is one copy into the caller's array; other
shards are read chunk by chunk with positioned reads and Blosc/Zstd decoding. It
reads exactly the files zarr writes and falls back to zarr-python for layouts it does not handle.

Supported fast layout: ``sharding_indexed`` with shards split along axis 0 only, inner chunks of whole
frames, inner codecs ``bytes`` (+ optional ``blosc`` or ``zstd``), index codecs ``bytes`` (+ ``crc32c``).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from pathlib import Path

import numpy as np

_MISSING = np.uint64(2**64 - 1)


class ShardReadError(OSError):
    """A shard file that is missing, truncated or fails its index checksum; names the file."""


def _inner_decoder(codecs: list[dict]):
    names = [c["name"] for c in codecs]
    if names[:1] != ["bytes"]:
        return False, None
    rest = codecs[1:]
    if not rest:
        return True, None
    if len(rest) == 1 and rest[0]["name"] == "blosc":
        from numcodecs import Blosc

        return True, Blosc()
    if len(rest) == 1 and rest[0]["name"] == "zstd":
        from numcodecs import Zstd

        return True, Zstd()
    return False, None


class ShardedFrames:
    """Random access to frames ``(N, *frame_shape)`` of one zarr v3 array. Picklable; opens files lazily."""

    def __init__(self, array_dir: str | os.PathLike):
        self.path = Path(array_dir)
        meta_path = self.path / "zarr.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ShardReadError(f"{meta_path}: cannot read array metadata: {e}") from e
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]) if meta["data_type"] != "bool" else np.dtype(bool)
        self.frame_shape = self.shape[1:]
        self.fill_value = meta.get("fill_value", 0)
        self._fast = False
        self._decoder = None
        codecs = meta.get("codecs", [])
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        sep = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
        self._key_tail = sep.join(["0"] * (len(self.shape) - 1))
        self._sep = sep
        if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed" and tuple(grid[1:]) == self.frame_shape:
            cfg = codecs[0]["configuration"]
            inner = cfg["chunk_shape"]
            index_names = [c["name"] for c in cfg.get("index_codecs", [])]
            ok, self._decoder = _inner_decoder(cfg["codecs"])
            endian = cfg["codecs"][0].get("configuration", {}).get("endian", "little")
            if (ok and tuple(inner[1:]) == self.frame_shape and index_names in (["bytes"], ["bytes", "crc32c"])
                    and (self.dtype.itemsize == 1 or endian == "little")):
                self._fast = True
                self.shard_frames = int(grid[0])
                self.chunk_frames = int(inner[0])
                self.chunks_per_shard = self.shard_frames // self.chunk_frames
                self._index_at_end = cfg.get("index_location", "end") == "end"
                self._index_crc = index_names == ["bytes", "crc32c"]
        self.frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self.chunk_bytes = self.frame_bytes * (self.chunk_frames if self._fast else 1)
        self._reset()

    def _reset(self):
        self._pid = os.getpid()
        self._fds: dict[int, int] = {}
        self._index: dict[int, np.ndarray] = {}
        self._views: dict[int, np.ndarray] = {}  # memory-mapped frames of uncompressed, in-order shards
        self._zarr = None

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_fds", "_index", "_views", "_zarr"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        """``frames[i]`` (one frame) or ``frames[a:b]`` (consecutive frames), as numpy arrays."""
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                return self.read_frames(np.arange(start, stop, step))
            return self.read(start, max(0, stop - start))
        index = int(key)
        if index < 0:
            index += self.shape[0]
        return self.read(index, 1)[0]

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._reset()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    # -- shard files and indices -------------------------------------------------------------------
    def _shard_path(self, shard: int) -> Path:
        return self.path / "c" / (f"{shard}{self._sep}{self._key_tail}" if self._key_tail else str(shard))

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            path = self._shard_path(shard)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return -1
            self._fds[shard] = fd
        return fd

    def _shard_index(self, shard: int) -> np.ndarray | None:
        """(chunks_per_shard, 2) uint64 offsets and byte counts, or None for a shard never written."""
        index = self._index.get(shard)
        if index is not None:
            return index
        fd = self._fd(shard)
        if fd < 0:
            return None
        n = self.chunks_per_shard * 16
        size = os.fstat(fd).st_size
        total = n + (4 if self._index_crc else 0)
        if size < total:
            raise ShardReadError(f"{self._shard_path(shard)}: shard is {size} bytes, too short for its index")
        raw = os.pread(fd, total, size - total if self._index_at_end else 0)
        if self._index_crc:
            import crc32c

            stored = int.from_bytes(raw[n:], "little")
            if crc32c.crc32c(raw[:n]) != stored:
                raise ShardReadError(f"{self._shard_path(shard)}: shard index checksum mismatch (corrupt file)")
        index = np.frombuffer(raw[:n], dtype="<u8").reshape(-1, 2).copy()
        present = index[:, 0] != _MISSING
        if np.any(index[present, 0] + index[present, 1] > size):
            raise ShardReadError(f"{self._shard_path(shard)}: index points past the end of the file (truncated)")
        self._index[shard] = index
        # chunks of this shard that lie inside the array (the last shard is partial)
        frames_here = min(self.shard_frames, self.shape[0] - shard * self.shard_frames)
        used = index[: -(-frames_here // self.chunk_frames)]
        offs = used[:, 0]
        contiguous = bool(
            self._decoder is None and np.all(used[:, 0] != _MISSING) and np.all(used[:, 1] == self.chunk_bytes)
            and np.all(offs[1:] == offs[:-1] + used[:-1, 1])
        )
        if contiguous:  # map the frames: a copy out of the page cache beats a read() syscall's copy
            mapped = np.frombuffer(mmap.mmap(fd, 0, prot=mmap.PROT_READ), dtype=np.uint8)
            start = int(offs[0])
            self._views[shard] = mapped[start : start + len(used) * self.chunk_bytes].view(self.dtype).reshape(
                -1, *self.frame_shape)
        return index

    # -- reading ------------------------------------------------------------------------------------
    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start .. start+count-1`` as ``(count, *frame_shape)``, into ``out`` when given.

        ``out`` may be a strided view (e.g. one camera's slots of a stereo clip).
        """
        if self._pid != os.getpid():  # forked into a DataLoader worker: never share descriptors
            self._reset()
        if out is None:
            out = np.empty((count, *self.frame_shape), dtype=self.dtype)
        if start < 0 or start + count > self.shape[0]:
            raise IndexError(f"{self.path}: frames {start}..{start + count - 1} out of range 0..{self.shape[0] - 1}")
        if not self._fast:
            out[...] = self._zarr_array()[start : start + count]
            return out
        pos = 0
        while pos < count:
            f = start + pos
            shard, in_shard = divmod(f, self.shard_frames)
            take = min(count - pos, self.shard_frames - in_shard)
            self._read_in_shard(shard, in_shard, take, out[pos : pos + take])
            pos += take
        return out

    def read_frames(self, frames, out: np.ndarray | None = None) -> np.ndarray:
        """Arbitrary frame indices (sorted or not); consecutive runs are read with one call each."""
        frames = np.asarray(frames, dtype=np.int64)
        if out is None:
            out = np.empty((len(frames), *self.frame_shape), dtype=self.dtype)
        i = 0
        while i < len(frames):
            j = i + 1
            while j < len(frames) and frames[j] == frames[j - 1] + 1:
                j += 1
            self.read(int(frames[i]), j - i, out[i:j])
            i = j
        return out

    def _read_in_shard(self, shard: int, first: int, count: int, out: np.ndarray) -> None:
        index = self._index.get(shard)
        if index is None:
            index = self._shard_index(shard)
            if index is None:
                out[...] = self.fill_value
                return
        view = self._views.get(shard)
        if view is not None:
            np.copyto(out, view[first : first + count])
            return
        fd = self._fds[shard]
        c0, c1 = first // self.chunk_frames, (first + count - 1) // self.chunk_frames
        for c in range(c0, c1 + 1):
            lo = max(first, c * self.chunk_frames)
            hi = min(first + count, (c + 1) * self.chunk_frames)
            dst = out[lo - first : hi - first]
            off, nbytes = index[c]
            if off == _MISSING:
                dst[...] = self.fill_value
                continue
            raw = os.pread(fd, int(nbytes), int(off))
            if len(raw) != nbytes:
                raise ShardReadError(f"{self._shard_path(shard)}: short read (truncated shard)")
            if self._decoder is not None:
                raw = self._decoder.decode(raw)
            chunk = np.frombuffer(raw, dtype=self.dtype).reshape(self.chunk_frames, *self.frame_shape)
            a = lo - c * self.chunk_frames
            dst[...] = chunk[a : a + (hi - lo)]

    def _zarr_array(self):
        if self._zarr is None or self._pid != os.getpid():
            import zarr

            self._reset()
            self._zarr = zarr.open_array(self.path, mode="r")
        return self._zarr
