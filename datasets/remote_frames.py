"""Frames of a store on object storage, read by byte range: the same shards, metadata and checks as the
local reader (:class:`~.shard_reader.ShardedFrames`), over requests instead of memory maps.

Per process, a shard's index is one suffix-range GET (then cached), and a read of consecutive frames is
one range GET of their chunks (two when it crosses a shard boundary), checked chunk by chunk against the
CRC32Cs stored with them. Ranges go through the host's read-through :class:`~.shard_cache.ShardCache`
when there is one, so a second epoch reads local files. :func:`prefetch` fetches the ranges of many
upcoming reads at once, in parallel (``ClipDataset.__getitems__`` calls it with a whole batch), so the
reads that follow find their bytes already here.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import numpy as np

from .shard_reader import _MISSING, ShardedFrames, ShardReadError, _Shard


class RemoteFrames(ShardedFrames):
    """``ShardedFrames`` of the array ``key`` (e.g. ``runs/r/left``) of a store at an ``ObjectLocation``.

    ``generation`` identifies the written version of the run (its ``write_id``): the cache keys carry it.
    """

    def __init__(self, location, key: str, where: str, cache=None, generation: str = ""):
        self.location, self.key, self.cache, self.generation = location, key.strip("/"), cache, generation
        super().__init__(PurePosixPath(self.key), where=where)

    def _read_meta(self) -> dict:
        import json

        name = self.location.name(f"{self.key}/zarr.json")
        try:
            return json.loads(self.location.read(f"{self.key}/zarr.json", 1 << 24).decode("utf-8"))
        except FileNotFoundError as e:
            raise ShardReadError(f"{self.where}: no array metadata ({name})") from e
        except (UnicodeDecodeError, ValueError) as e:
            raise ShardReadError(f"{self.where}: cannot read array metadata {name}: {e}") from e

    def _reset(self):
        super()._reset()
        self._index: dict[int, _Shard | None] = {}
        self._sizes: dict[int, int] = {}
        self._pending: dict[tuple[int, int, int], bytes] = {}  # prefetched ranges not read yet

    def __getstate__(self):
        state = super().__getstate__()
        for k in ("_index", "_sizes", "_pending"):
            state.pop(k, None)
        return state

    def close(self) -> None:
        self._reset()

    def _zarr_array(self):
        if self._zarr is None or self._pid != os.getpid():
            import zarr

            self._reset()
            self._zarr = zarr.open_array(self.location.zarr_store(), path=self.key, mode="r")
        return self._zarr

    # -- shard indices ---------------------------------------------------------------------------------
    def _object(self, shard: int) -> str:
        return str(self.shard_path(shard))

    def _cache_key(self, shard: int) -> str:
        return f"{self.location.name(self._object(shard))}@{self.generation}"

    def _index_bytes(self) -> int:
        return self.chunks_per_shard * 16 + (4 if self._index_crc else 0)

    def _remote_index(self, shard: int) -> _Shard | None:
        """The shard's checked index (None for a shard never written: its frames read as the fill value)."""
        if shard in self._index:
            return self._index[shard]
        n = self._index_bytes()
        ck = self._cache_key(shard) + "#index"
        raw = self.cache.get(ck, [(0, n + 8)]) if self.cache is not None else None
        if raw is not None:
            size = int.from_bytes(raw[n:], "little")
            raw = raw[:n]
        else:
            try:
                if self._index_at_end:
                    raw, size = self.location.read_suffix(self._object(shard), n)
                else:
                    raw, size = bytes(self.location.read_range(self._object(shard), 0, n)), 0
            except FileNotFoundError:
                self._index[shard] = None
                return None
            if len(raw) < n:
                raise self._damaged(shard, f"object is {len(raw)} bytes, too short for its index (truncated)")
            if self.cache is not None:
                self.cache.put(ck, 0, raw + int(size).to_bytes(8, "little"), [(0, n + 8)])
        entry = self._index_from(shard, raw, size if self._index_at_end else 2**63)
        self._index[shard] = entry
        return entry

    def _span(self, shard: int, entry: _Shard, first: int, count: int) -> tuple[int, int, list[tuple[int, int]]]:
        """The byte range of the chunks holding frames ``first..first+count-1`` of a shard, and the chunks."""
        c0, c1 = first // self.chunk_frames, (first + count - 1) // self.chunk_frames
        if entry.index is None:
            pieces = [(entry.base + c * self._stride, self._stride) for c in range(c0, c1 + 1)]
        else:
            pieces = [(int(o), int(b)) for o, b in entry.index[c0 : c1 + 1] if o != _MISSING]
        if not pieces:
            return 0, 0, []
        pieces.sort()
        return pieces[0][0], max(o + b for o, b in pieces), pieces

    # -- reading ---------------------------------------------------------------------------------------
    def _fetch(self, shard: int, start: int, stop: int, pieces) -> bytes:
        pending = self._pending.get((shard, start, stop))  # kept for the batch: an index may repeat
        if pending is not None:
            return pending
        key = self._cache_key(shard)
        if self.cache is not None:
            data = self.cache.get(key, pieces)
            if data is not None:
                return data
        data = self.location.read_range(self._object(shard), start, stop)
        if self.cache is not None:
            self.cache.put(key, start, data, pieces)
        return data

    def _visit_in_shard(self, shard: int, first: int, count: int, pos: int, fn) -> None:
        """One range GET (or the cache) for the chunks of frames ``first..first+count-1`` of a shard, every
        chunk checked against its CRC32C, then handed to ``fn`` as the local reader does."""
        entry = self._remote_index(shard)
        start, stop, pieces = self._span(shard, entry, first, count) if entry is not None else (0, 0, [])
        if not pieces:
            fn(pos, self._fill(count))
            return
        data = np.frombuffer(self._fetch(shard, start, stop, pieces), dtype=np.uint8)
        for c in range(first // self.chunk_frames, (first + count - 1) // self.chunk_frames + 1):
            lo = max(first, c * self.chunk_frames)
            hi = min(first + count, (c + 1) * self.chunk_frames)
            at = pos + lo - first
            if entry.index is None:
                off, nbytes = entry.base + c * self._stride, self._stride
            else:
                off, nbytes = (int(v) for v in entry.index[c])
                if off == int(_MISSING):
                    fn(at, self._fill(hi - lo))
                    continue
            chunk = self._chunk_frames(shard, data, off - start, nbytes, c)
            a = lo - c * self.chunk_frames
            fn(at, chunk[a : a + (hi - lo)])

    def verify(self, on_bytes=None) -> tuple[list[str], int]:
        """Every shard checked as the local reader does, each read with one request (not through the cache:
        this checks the store itself)."""
        if not self._fast:
            return super().verify(on_bytes)
        problems: list[str] = []
        nbytes = 0
        for shard in range(self.shard_count()):
            try:
                entry = self._remote_index(shard)
            except (ShardReadError, OSError) as e:
                problems.append(str(e))
                continue
            if entry is None:
                problems.append(str(self._damaged(shard, "shard object is missing")))
                continue
            frames = self._frames_in(shard)
            chunks = -(-frames // self.chunk_frames)
            if entry.index is not None:
                missing = [c for c in range(chunks) if entry.index[c, 0] == _MISSING]
                problems += [str(self._damaged(shard, f"chunk {c} is missing from the index")) for c in missing]
            start, stop, pieces = self._span(shard, entry, 0, frames)
            try:
                data = np.frombuffer(self.location.read_range(self._object(shard), start, stop), dtype=np.uint8)
            except OSError as e:
                problems.append(f"{self.where}: shard {shard}: {e}")
                continue
            for c in range(chunks):
                if entry.index is None:
                    off, size = entry.base + c * self._stride - start, self._stride
                else:
                    off, size = (int(v) for v in entry.index[c])
                    if off == int(_MISSING):
                        continue
                    off -= start
                try:
                    self._chunk_bytes(shard, data, off, size, c)
                except ShardReadError as e:
                    problems.append(str(e))
            nbytes += stop - start
            if on_bytes is not None:
                on_bytes(stop - start)
        return problems, nbytes


def prefetch(location, reads: list[tuple[RemoteFrames, int, int]]) -> None:
    """Fetch the bytes of ``(frames, first, count)`` reads now: shard indices first, then one range GET per
    read and shard that the cache does not hold, all in parallel. The reads that follow use them."""
    spans = []  # (frames, shard, first-in-shard, count)
    for frames, first, count in reads:
        if not frames._fast or frames._pid != os.getpid():
            continue  # other layouts read through zarr; a fresh process parses again on its first read
        pos = 0
        while pos < count:
            shard, in_shard = divmod(first + pos, frames.shard_frames)
            take = min(count - pos, frames.shard_frames - in_shard)
            spans.append((frames, shard, in_shard, take))
            pos += take
    for frames in {id(s[0]): s[0] for s in spans}.values():
        frames._pending.clear()  # a new batch: what the last one left unread goes
    need = list({(id(f), s): (f, s) for f, s, _, _ in spans if s not in f._index}.values())
    location.map(lambda fs: fs[0]._remote_index(fs[1]), need)
    todo = {}
    for frames, shard, first, count in spans:
        entry = frames._index.get(shard)
        if entry is None:
            continue
        start, stop, pieces = frames._span(shard, entry, first, count)
        if not pieces or (frames, shard, start, stop) in todo:
            continue
        if frames.cache is not None and (hit := frames.cache.get(frames._cache_key(shard), pieces)) is not None:
            frames._pending[(shard, start, stop)] = hit
            continue
        todo[(frames, shard, start, stop)] = pieces
    if not todo:
        return
    keys = list(todo)
    datas = location.read_ranges([(f._object(s), a, b) for f, s, a, b in keys])
    for (frames, shard, start, stop), data in zip(keys, datas, strict=True):
        frames._pending[(shard, start, stop)] = data
        if frames.cache is not None:
            frames.cache.put(frames._cache_key(shard), start, data, todo[(frames, shard, start, stop)])
