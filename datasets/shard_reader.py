"""A fast, verifying reader for frame arrays stored as standard zarr v3 shards.

zarr-python costs ~0.5 ms per indexing call; a training clip needs far less. This reader parses the
array's ``zarr.json`` and each shard's index once per process, then copies a run of consecutive frames
of an uncompressed shard out of the memory-mapped file in one go, straight into the caller's array.
Compressed shards are read chunk by chunk and decoded with Blosc/Zstd. Descriptors come from a bounded
per-process cache (:mod:`.storage`), so open files never grow with the store. It reads exactly the files
zarr writes and falls back to zarr-python for layouts it does not handle.

Checksums (format 2 stores: the ``crc32c`` codec that zarr itself verifies): by default (``first``) each
chunk's CRC32C is checked the first time this process reads it from a given file, and a per-shard
bitmap remembers what was checked (kept across the mapping's eviction, keyed by the file's identity, and
inherited by forked DataLoader workers). Committed shard files are never modified in place (a re-ingest
writes new files), so a chunk that passed once reads the same bytes again. ``always`` checks every read
(environment variable ``DRIVER_CHECKSUMS=always``); ``driver verify`` checks every chunk regardless.

Supported fast layout: ``sharding_indexed`` with shards split along axis 0 only, inner chunks of whole
frames, inner codecs ``bytes`` (+ optional ``blosc`` or ``zstd``) (+ optional ``crc32c``), index codecs
``bytes`` (+ ``crc32c``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np

from driver.errors import DriverError

from . import storage

_MISSING = np.uint64(2**64 - 1)
CHECKSUMS_ENV = "DRIVER_CHECKSUMS"
CHECKSUM_POLICIES = ("first", "always")
REPAIR_HINT = "run `driver verify STORE` to list the damage and `driver ingest --out STORE --force RUN` to repair"


class ShardReadError(DriverError, OSError):
    """A shard that is missing, truncated or fails a checksum; the message names store, run, array, frames."""


class ChecksumError(ShardReadError):
    """Stored bytes whose CRC32C does not match: the data on disk is damaged."""


def checksum_policy(value: str | None = None) -> str:
    """``value``, or ``$DRIVER_CHECKSUMS``, or ``first``: when reads check chunk CRC32Cs (see module docstring)."""
    source = "checksums" if value is not None else CHECKSUMS_ENV
    raw = value if value is not None else (os.environ.get(CHECKSUMS_ENV) or "first")
    if raw not in CHECKSUM_POLICIES:
        raise ValueError(f"{source}={raw!r} must be one of {', '.join(CHECKSUM_POLICIES)}")
    return raw


def _inner_decoder(codecs: list[dict]):
    """(supported, decoder or None, checksummed) for a shard's inner codecs."""
    names = [c["name"] for c in codecs]
    checksummed = names[-1:] == ["crc32c"]
    if checksummed:
        names = names[:-1]
    if names == ["bytes"]:
        return True, None, checksummed
    if names == ["bytes", "blosc"]:
        from numcodecs import Blosc

        return True, Blosc(), checksummed
    if names == ["bytes", "zstd"]:
        from numcodecs import Zstd

        return True, Zstd(), checksummed
    return False, None, checksummed


def _describe(array_dir: Path) -> str:
    """'STORE: run R, array A' for arrays of a store, else the folder."""
    parts = array_dir.parts
    if len(parts) >= 3 and parts[-3] == "runs":
        return f"{Path(*parts[:-3])}: run {parts[-2]!r}, array {parts[-1]!r}"
    return str(array_dir)


class _Checked:
    """Which chunks of one shard file had their CRC32C checked in this process, and how many (of those the
    shard uses) have not yet. Bits only ever go from False to True, so ``left`` computed from them after
    a check is never too small, even with threads reading the same shard."""

    __slots__ = ("identity", "bits", "used", "left")

    def __init__(self, identity: tuple, chunks: int, used: int):
        self.identity, self.bits, self.used, self.left = identity, np.zeros(chunks, dtype=bool), used, used

    def recount(self) -> None:
        self.left = int(np.count_nonzero(~self.bits[: self.used]))


@dataclass
class _Shard:
    """A shard's parsed index: regular (every frame one chunk of ``stride`` bytes from ``base``) or not."""

    index: np.ndarray | None  # (chunks, 2) offsets and sizes; None when regular
    base: int = 0
    checked: _Checked | None = None


class ShardedFrames:
    """Random access to frames ``(N, *frame_shape)`` of one zarr v3 array. Picklable; opens files lazily.

    ``where`` names the array in error messages (default: store, run and array from the path).
    ``checksums``: ``first`` (check each chunk the first time this process reads it) or ``always``; default
    ``$DRIVER_CHECKSUMS`` or ``first``. ``verify_checksums = False`` exists only to measure what checking
    costs; leave it on.
    """

    verify_checksums = True

    def __init__(self, array_dir: str | os.PathLike, where: str | None = None, checksums: str | None = None):
        self.path = Path(array_dir)
        self.where = where or _describe(self.path)
        self.checksums = checksum_policy(checksums)
        self._checked: dict[int, _Checked] = {}  # per shard: which chunks were checked, of which file
        meta = self._read_meta()
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]) if meta["data_type"] != "bool" else np.dtype(bool)
        self.frame_shape = self.shape[1:]
        self.fill_value = meta.get("fill_value", 0)
        self.frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self._fast = False
        self._decoder = None
        self.checksummed = False  # every chunk carries a CRC32C (format 2)
        codecs = meta.get("codecs", [])
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        sep = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
        self._key_tail = sep.join(["0"] * (len(self.shape) - 1))
        self._sep = sep
        if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed" and tuple(grid[1:]) == self.frame_shape:
            cfg = codecs[0]["configuration"]
            inner = cfg["chunk_shape"]
            index_names = [c["name"] for c in cfg.get("index_codecs", [])]
            ok, self._decoder, checksummed = _inner_decoder(cfg["codecs"])
            endian = cfg["codecs"][0].get("configuration", {}).get("endian", "little")
            if (ok and tuple(inner[1:]) == self.frame_shape and index_names in (["bytes"], ["bytes", "crc32c"])
                    and (self.dtype.itemsize == 1 or endian == "little")):
                self._fast = True
                self.checksummed = checksummed
                self.shard_frames = int(grid[0])
                self.chunk_frames = int(inner[0])
                self.chunks_per_shard = self.shard_frames // self.chunk_frames
                self._index_at_end = cfg.get("index_location", "end") == "end"
                self._index_crc = index_names == ["bytes", "crc32c"]
                # bytes one stored uncompressed chunk takes: its frames, then its CRC32C
                self._stride = self.frame_bytes * self.chunk_frames + (4 if checksummed else 0)
                self._strides = (self._stride, *np.empty((1, *self.frame_shape), self.dtype).strides[1:])
        self._reset()

    def _read_meta(self) -> dict:
        """The array's zarr.json (a store on object storage reads it by request: ``remote_frames``)."""
        meta_path = self.path / "zarr.json"
        try:
            return json.loads(storage.read_bytes(meta_path).decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ShardReadError(f"{self.where}: cannot read array metadata {meta_path}: {e}") from e

    def _reset(self):
        self._pid = os.getpid()
        self._paths: dict[int, str] = {}
        self._zarr = None

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_paths", "_zarr", "_decoder"):
            state.pop(k, None)
        state["_checked"] = {}  # a spawned process checks for itself
        state["_decoder_kind"] = type(self._decoder).__name__ if self._decoder is not None else None
        return state

    def __setstate__(self, state):
        kind = state.pop("_decoder_kind", None)
        self.__dict__.update(state)
        self._decoder = None
        if kind == "Blosc":
            from numcodecs import Blosc

            self._decoder = Blosc()
        elif kind == "Zstd":
            from numcodecs import Zstd

            self._decoder = Zstd()
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
        """Close this array's cached shard files (and with them their parsed indices)."""
        if self._fast and self._pid == os.getpid():
            storage.forget(self.path)
        self._reset()

    # -- shard files and indices -------------------------------------------------------------------
    def shard_path(self, shard: int) -> Path:
        return self.path / "c" / (f"{shard}{self._sep}{self._key_tail}" if self._key_tail else str(shard))

    def shard_count(self) -> int:
        return -(-self.shape[0] // self.shard_frames) if self._fast else 0

    def _damaged(self, shard: int, what: str, cls=ShardReadError) -> ShardReadError:
        rel = self.shard_path(shard).relative_to(self.path)
        first = shard * self.shard_frames
        last = min(first + self.shard_frames, self.shape[0]) - 1
        return cls(f"{self.where}: frames {first}..{last}: {what} (shard file {rel}); {REPAIR_HINT}")

    def _frames_in(self, shard: int) -> int:
        return min(self.shard_frames, self.shape[0] - shard * self.shard_frames)

    def _load_index(self, shard: int) -> tuple[_Shard | None, storage.Mapping | None]:
        """A shard's checked index and its mapped file; (None, None) for a shard never written (fill value).

        The parsed index lives with the mapping, so it is parsed again whenever the file is mapped again;
        the bitmap of checked chunks outlives the mapping as long as the file stays the same.
        """
        try:
            mapping = storage.mapped(self._path_str(shard))
        except FileNotFoundError:
            return None, None
        if mapping.parsed is None:
            parsed = self._parse_index(shard, mapping.array)
            known = self._checked.get(shard)
            if known is None or known.identity != mapping.identity:
                used = -(-self._frames_in(shard) // self.chunk_frames)
                known = self._checked[shard] = _Checked(mapping.identity, self.chunks_per_shard, used)
            parsed.checked = known
            mapping.parsed = parsed
        return mapping.parsed, mapping

    def _parse_index(self, shard: int, data: np.ndarray) -> _Shard:
        size = len(data)
        n = self.chunks_per_shard * 16
        total = n + (4 if self._index_crc else 0)
        if size < total:
            raise self._damaged(shard, f"file is {size} bytes, too short for its index (truncated)")
        raw = bytes(data[size - total :] if self._index_at_end else data[:total])
        return self._index_from(shard, raw, size)

    def _index_from(self, shard: int, raw: bytes, size: int) -> _Shard:
        """A shard's index from its stored bytes (and the shard's size in bytes), checked."""
        n = self.chunks_per_shard * 16
        if self._index_crc and crc32c.crc32c(raw[:n]) != int.from_bytes(raw[n:], "little"):
            raise self._damaged(shard, "shard index checksum mismatch", ChecksumError)
        index = np.frombuffer(raw[:n], dtype="<u8").reshape(-1, 2)
        present = index[:, 0] != _MISSING
        if np.any(index[present, 0] + index[present, 1] > size):
            raise self._damaged(shard, "index points past the end of the file (truncated)")
        used = index[: -(-self._frames_in(shard) // self.chunk_frames)]
        offs = used[:, 0]
        regular = bool(self._decoder is None and self.chunk_frames == 1 and np.all(used[:, 0] != _MISSING)
                       and np.all(used[:, 1] == self._stride) and np.all(offs[1:] == offs[:-1] + self._stride))
        if regular:
            return _Shard(None, int(offs[0]))
        return _Shard(index.copy())

    def _path_str(self, shard: int) -> str:
        path = self._paths.get(shard)
        if path is None:
            path = self._paths[shard] = str(self.shard_path(shard))
        return path

    # -- reading ------------------------------------------------------------------------------------
    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start .. start+count-1`` as ``(count, *frame_shape)``, into ``out`` when given.

        ``out`` may be a strided view (e.g. one camera's slots of a stereo clip). Chunks are checked
        against their CRC32C (format 2; see ``checksums``): a mismatch raises :class:`ChecksumError`.
        """
        if out is None:
            out = np.empty((count, *self.frame_shape), dtype=self.dtype)
        self.visit(start, count, lambda pos, frames: np.copyto(out[pos : pos + len(frames)], frames))
        return out

    def visit(self, start: int, count: int, fn) -> None:
        """Call ``fn(pos, frames)`` for consecutive pieces of frames ``start .. start+count-1``, in order:
        ``frames`` is a read-only ``(n, *frame_shape)`` array of frames ``start+pos ..``, already checked,
        valid only during the call (it may be the mapped file itself). :meth:`read` copies them; a caller
        may instead copy them wherever it needs, transformed (a mirrored clip), without a second pass.
        """
        if self._pid != os.getpid():  # forked into a DataLoader worker: parse again, never share state
            self._reset()
        if start < 0 or count < 0 or start + count > self.shape[0]:
            raise IndexError(f"{self.where}: frames {start}..{start + count - 1} out of range 0..{self.shape[0] - 1}")
        if not self._fast:
            fn(0, self._zarr_array()[start : start + count])
            return
        pos = 0
        while pos < count:
            shard, first = divmod(start + pos, self.shard_frames)
            take = min(count - pos, self.shard_frames - first)
            self._visit_in_shard(shard, first, take, pos, fn)
            pos += take

    def _visit_in_shard(self, shard: int, first: int, count: int, pos: int, fn) -> None:
        """:meth:`visit` within one shard (a store on object storage reads it by request: ``remote_frames``)."""
        entry, mapping = self._load_index(shard)
        if entry is None:  # a shard never written: the fill value
            fn(pos, self._fill(count))
        elif entry.index is None:
            self._visit_regular(shard, entry, mapping, first, count, pos, fn)
        else:
            self._visit_chunks(shard, entry, mapping, first, count, pos, fn)

    def _fill(self, count: int) -> np.ndarray:
        return np.full((count, *self.frame_shape), self.fill_value, dtype=self.dtype)

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

    def _visit_regular(self, shard: int, entry: _Shard, mapping: storage.Mapping, first: int, count: int,
                       pos: int, fn) -> None:
        """``count`` uncompressed frames straight out of the mapped shard: their CRCs checked (those not
        checked before, unless ``always``), then handed to ``fn`` as one strided view."""
        data = mapping.array
        offset = entry.base + first * self._stride
        frames = np.ndarray((count, *self.frame_shape), self.dtype, data, offset, self._strides)
        if not mapping.resident(offset, count * self._stride):  # on disk: read it ahead in one request
            mapping.will_need(offset, count * self._stride)
        checked = entry.checked
        if self.checksummed and self.verify_checksums and (checked.left or self.checksums == "always"):
            bits = checked.bits[first : first + count]
            todo = range(count) if self.checksums == "always" else np.flatnonzero(~bits).tolist()
            if todo:
                stored = np.ndarray((count,), "<u4", data, offset + self.frame_bytes, (self._stride,))
                for i in todo:
                    if crc32c.crc32c(frames[i]) != int(stored[i]):
                        f = shard * self.shard_frames + first + i
                        raise ChecksumError(f"{self.where}: frames {f}..{f}: checksum mismatch (shard file "
                                            f"{self.shard_path(shard).relative_to(self.path)}); {REPAIR_HINT}")
                    bits[i] = True
                checked.recount()
        fn(pos, frames)

    def _chunk_bytes(self, shard: int, data: np.ndarray, off: int, nbytes: int, c: int, check: bool = True):
        """A stored chunk's payload, its CRC32C checked (unless ``check`` is False); decoded when compressed."""
        raw = data[off : off + nbytes]
        if len(raw) != nbytes:
            raise self._damaged(shard, "short read (truncated shard)")
        first = shard * self.shard_frames + c * self.chunk_frames
        if self.checksummed:
            if check and self.verify_checksums and (
                    nbytes < 4 or crc32c.crc32c(raw[:-4]) != int.from_bytes(raw[-4:], "little")):
                raise ChecksumError(f"{self.where}: frames {first}..{first + self.chunk_frames - 1}: checksum mismatch "
                                    f"(shard file {self.shard_path(shard).relative_to(self.path)}); {REPAIR_HINT}")
            raw = raw[:-4]
        if self._decoder is not None:
            try:
                raw = self._decoder.decode(raw)
            except Exception as e:  # noqa: BLE001 - a codec error on damaged bytes (format 1: no CRC to catch it)
                raise ShardReadError(f"{self.where}: frames {first}..{first + self.chunk_frames - 1}: cannot decode "
                                     f"({e}); {REPAIR_HINT}") from e
        return raw

    def _visit_chunks(self, shard: int, entry: _Shard, mapping: storage.Mapping, first: int, count: int,
                      pos: int, fn) -> None:
        """Frames of compressed (or irregularly placed) chunks, chunk by chunk: checked, decoded, handed on."""
        data = mapping.array
        c0, c1 = first // self.chunk_frames, (first + count - 1) // self.chunk_frames
        present = entry.index[c0 : c1 + 1][entry.index[c0 : c1 + 1, 0] != _MISSING]
        if len(present):  # the chunks' byte range, read ahead in one request when not in the page cache
            lo, hi = int(present[:, 0].min()), int((present[:, 0] + present[:, 1]).max())
            if not mapping.resident(lo, hi - lo):
                mapping.will_need(lo, hi - lo)
        for c in range(c0, c1 + 1):
            lo = max(first, c * self.chunk_frames)
            hi = min(first + count, (c + 1) * self.chunk_frames)
            at = pos + lo - first
            off, nbytes = entry.index[c]
            if off == _MISSING:
                fn(at, self._fill(hi - lo))
                continue
            check = self.checksums == "always" or not entry.checked.bits[c]
            chunk = self._chunk_frames(shard, data, int(off), int(nbytes), c, check)
            if check:
                entry.checked.bits[c] = True
                entry.checked.recount()
            a = lo - c * self.chunk_frames
            fn(at, chunk[a : a + (hi - lo)])

    def _chunk_frames(self, shard: int, data: np.ndarray, off: int, nbytes: int, c: int,
                      check: bool = True) -> np.ndarray:
        """A stored chunk as ``(chunk_frames, *frame_shape)`` frames: checked (see :meth:`_chunk_bytes`)."""
        chunk = np.frombuffer(self._chunk_bytes(shard, data, off, nbytes, c, check), dtype=self.dtype)
        if chunk.size != self.chunk_frames * self.frame_bytes // self.dtype.itemsize:
            raise self._damaged(shard, f"chunk {c} decodes to {chunk.nbytes} bytes, not a whole chunk")
        return chunk.reshape(self.chunk_frames, *self.frame_shape)

    # -- verification -------------------------------------------------------------------------------
    def verify(self, on_bytes=None) -> tuple[list[str], int]:
        """Check every shard: index checksum and bounds, every chunk's CRC32C (format 2) or that it
        decodes (format 1). Returns (problems, bytes read); goes on past damage to report all of it."""
        if not self._fast:
            try:
                self._zarr_array()[...]
                return [], 0
            except Exception as e:  # noqa: BLE001 - any failure of zarr-python on this array is damage
                return [f"{self.where}: {type(e).__name__}: {e}"], 0
        problems: list[str] = []
        nbytes = 0
        for shard in range(self.shard_count()):
            try:
                entry, mapping = self._load_index(shard)
            except ShardReadError as e:
                problems.append(str(e))
                continue
            if entry is None:
                problems.append(str(self._damaged(shard, "shard file is missing")))
                continue
            frames = self._frames_in(shard)
            mapping.will_need(0, frames * self._stride)  # one sequential read-ahead
            shard_bytes = 0
            for c in range(-(-frames // self.chunk_frames)):
                if entry.index is None:
                    off, size = entry.base + c * self._stride, self._stride
                else:
                    off, size = (int(v) for v in entry.index[c])
                    if off == int(_MISSING):
                        problems.append(str(self._damaged(shard, f"chunk {c} is missing from the index")))
                        continue
                try:
                    self._chunk_bytes(shard, mapping.array, off, size, c)
                except ShardReadError as e:
                    problems.append(str(e))
                shard_bytes += size
            nbytes += shard_bytes
            if on_bytes is not None:
                on_bytes(shard_bytes)
            storage.forget(self._path_str(shard))
        return problems, nbytes

    def _zarr_array(self):
        if self._zarr is None or self._pid != os.getpid():
            import zarr

            self._reset()
            self._zarr = zarr.open_array(self.path, mode="r")
        return self._zarr
