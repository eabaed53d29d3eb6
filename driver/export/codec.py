"""The compressed model file (``.dcz``): pruned, weight-shared tensors with Huffman-coded indices and gaps.

Layout (little endian)::

    b"DRVDCZ01"                      magic (8 bytes)
    u32 header_len, header           zlib-compressed JSON: model metadata + one entry per tensor
    payload                          the tensors' sections, in header order
    u32 crc32                        of every byte before it

A ``raw`` tensor is float32 bytes. A ``shared`` tensor (Deep Compression stages 2-3) is::

    codebook   float32 (k,)                         the fine-tuned centroids
    lengths    nibbles: k index-code lengths, then 2**gap_bits gap-code lengths (canonical Huffman)
    indices    Huffman bits of the centroid index of each kept weight, in C order
    gaps       Huffman bits of the zeros skipped before each kept weight; the symbol 2**gap_bits - 1
               means "skip that many zeros, no weight here" (the paper's filler), so long runs still code

Decoding gives exactly ``dense = codebook[index]`` where a weight was kept and ``0`` where it was pruned.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from driver.export import huffman
from driver.export.loading import DCZ_MAGIC as MAGIC
from driver.export.meta import ExportError, check_metadata
from driver.file_checks import MiB, inflate_bounded, read_bounded, require, require_int

FORMAT = "driver-compressed"
VERSION = 1
MAX_DCZ_BYTES = 256 * MiB  # a compressed car model is well under 1 MB
MAX_HEADER_BYTES = 16 * MiB  # inflated JSON header
MAX_ELEMENTS = 1 << 26  # decoded weights of every tensor together (256 MiB of float32; AlexNet is 24 M)
MAX_TENSORS = 4096


class CompressedFileError(ExportError):
    """A missing, truncated, corrupt or foreign compressed model file; the message names the file."""


@dataclass
class SharedTensor:
    """A weight-shared tensor: ``index`` (shape) int64 into ``codebook``, -1 where the weight was pruned."""

    codebook: np.ndarray  # (k,) float32
    index: np.ndarray  # int64, the tensor's shape

    def dense(self) -> torch.Tensor:
        """The weights the decoder promises: codebook[index], 0 where pruned (float32)."""
        values = self.codebook.astype(np.float32)[np.maximum(self.index, 0)]
        return torch.from_numpy(np.where(self.index >= 0, values, np.float32(0.0)).astype(np.float32))

    @property
    def density(self) -> float:
        return float((self.index >= 0).mean()) if self.index.size else 0.0


@dataclass
class CompressedModel:
    meta: dict
    tensors: dict[str, torch.Tensor | SharedTensor]
    nbytes: int = 0
    sections: dict[str, dict] = field(default_factory=dict)  # per-tensor sizes and bits, as written

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: (v.dense() if isinstance(v, SharedTensor) else v) for k, v in self.tensors.items()}


def _pack_nibbles(values: np.ndarray) -> bytes:
    v = np.asarray(values, dtype=np.uint8)
    if len(v) % 2:
        v = np.concatenate([v, np.zeros(1, np.uint8)])
    return ((v[0::2] << 4) | v[1::2]).astype(np.uint8).tobytes()


def _unpack_nibbles(data: bytes, count: int) -> np.ndarray:
    b = np.frombuffer(data, dtype=np.uint8)
    return np.stack([b >> 4, b & 15], axis=1).reshape(-1)[:count].astype(np.int64)


def gap_symbols(positions: np.ndarray, escape: int) -> np.ndarray:
    """Zeros skipped before each kept position, with runs of ``escape`` or more split by escape symbols."""
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    n_escapes = gaps // escape
    out = np.full(len(gaps) + int(n_escapes.sum()), escape, dtype=np.int64)
    ends = np.cumsum(n_escapes + 1) - 1  # each real gap sits after its escapes
    out[ends] = gaps - n_escapes * escape
    return out


def positions_from_gaps(symbols: np.ndarray, escape: int) -> np.ndarray:
    """Inverse of :func:`gap_symbols`: the kept positions."""
    real = symbols != escape
    advance = np.where(real, symbols + 1, escape)
    return (np.cumsum(advance) - 1)[real]


def encode_shared(t: SharedTensor, gap_bits: int) -> tuple[bytes, dict]:
    k = len(t.codebook)
    flat = t.index.reshape(-1)
    positions = np.flatnonzero(flat >= 0)
    escape = (1 << gap_bits) - 1
    # A layer kept whole needs no positions: an empty gap stream means "every weight, in order".
    gaps = np.zeros(0, np.int64) if len(positions) == flat.size else gap_symbols(positions, escape)
    idx_len, idx_data, idx_bits = huffman.encode(flat[positions], k)
    gap_len, gap_data, gap_bits_used = huffman.encode(gaps, escape + 1)
    tables = _pack_nibbles(np.concatenate([idx_len, gap_len]))
    body = t.codebook.astype("<f4").tobytes() + tables + idx_data + gap_data
    info = {"k": k, "gap_bits": gap_bits, "nnz": int(len(positions)), "gap_symbols": int(len(gaps)),
            "index_bits": idx_bits, "gap_bits_used": gap_bits_used, "index_bytes": len(idx_data),
            "gap_bytes": len(gap_data), "table_bytes": len(tables),
            "entropy_bits": round(huffman.entropy_bits(flat[positions], k) + huffman.entropy_bits(gaps, escape + 1))}
    return body, info


def decode_shared(body: memoryview, entry: dict, where: str) -> SharedTensor:
    """A shared tensor from its section; ``entry`` was checked by :func:`check_entry`."""
    k, gap_bits, nnz = entry["k"], entry["gap_bits"], entry["nnz"]
    alphabet = 1 << gap_bits
    pos = 0
    codebook = np.frombuffer(body[: 4 * k], dtype="<f4").astype(np.float32)
    pos += 4 * k
    lengths = _unpack_nibbles(bytes(body[pos : pos + entry["table_bytes"]]), k + alphabet)
    pos += entry["table_bytes"]
    idx_data = bytes(body[pos : pos + entry["index_bytes"]])
    pos += entry["index_bytes"]
    gap_data = bytes(body[pos : pos + entry["gap_bytes"]])
    try:
        values = huffman.decode(lengths[:k], idx_data, entry["index_bits"], nnz)
        gaps = huffman.decode(lengths[k:], gap_data, entry["gap_bits_used"], entry["gap_symbols"])
    except huffman.HuffmanError as e:
        raise CompressedFileError(f"{where}: tensor {entry['name']!r}: {e}") from e
    size = int(np.prod(entry["shape"]))
    whole = entry["gap_symbols"] == 0 and nnz == size
    positions = np.arange(size) if whole else positions_from_gaps(gaps, alphabet - 1)
    if len(positions) != nnz or (nnz and positions[-1] >= size) or (nnz and values.max() >= k):
        raise CompressedFileError(f"{where}: tensor {entry['name']!r} decodes outside its shape {entry['shape']}")
    flat = np.full(size, -1, dtype=np.int64)
    flat[positions] = values
    return SharedTensor(codebook, flat.reshape(entry["shape"]))


def check_entry(entry, where: str, budget: int) -> int:
    """Check one header entry against the format (types, ranges, section sizes); returns its element count.

    ``budget`` is how many decoded elements the file may still declare (:data:`MAX_ELEMENTS` in all).
    """
    err = CompressedFileError
    require(entry, "name", str, where, err)
    where = f"{where}: tensor {entry['name'][:80]!r}"
    kind = require(entry, "kind", str, where, err)
    shape = require(entry, "shape", list, where, err)
    if len(shape) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= budget for d in shape):
        raise err(f"{where}: shape {str(shape)[:80]} must be at most 8 sizes in 0..{budget}")
    numel = int(np.prod(shape, dtype=np.float64))
    if numel > budget:
        raise err(f"{where}: {numel} elements is more than the {MAX_ELEMENTS} a compressed model may hold")
    nbytes = require_int(entry, "bytes", 0, MAX_DCZ_BYTES, where, err)
    if kind == "raw":
        if nbytes != 4 * numel:
            raise err(f"{where}: {nbytes} bytes do not hold {numel} float32 values")
        return numel
    if kind != "shared":
        raise err(f"{where}: kind {kind[:20]!r} must be 'raw' or 'shared'")
    k = require_int(entry, "k", 0, 256, where, err)
    gap_bits = require_int(entry, "gap_bits", 1, 8, where, err)
    nnz = require_int(entry, "nnz", 0, numel, where, err)
    escape = (1 << gap_bits) - 1
    symbols = require_int(entry, "gap_symbols", 0, nnz + numel // escape + 1, where, err)
    index_bits = require_int(entry, "index_bits", 0, huffman.MAX_LEN * nnz, where, err)
    gap_bits_used = require_int(entry, "gap_bits_used", 0, huffman.MAX_LEN * symbols, where, err)
    sections = {"table_bytes": (k + (1 << gap_bits) + 1) // 2, "index_bytes": (index_bits + 7) // 8,
                "gap_bytes": (gap_bits_used + 7) // 8}
    for name, want in sections.items():
        if require(entry, name, int, where, err) != want:
            raise err(f"{where}: {name}={entry[name]} does not match its content ({want})")
    if nbytes != 4 * k + sum(sections.values()):
        raise err(f"{where}: {nbytes} bytes do not match its sections ({4 * k + sum(sections.values())})")
    return numel


def write_compressed(path: str | os.PathLike, meta: dict, tensors: dict[str, torch.Tensor | SharedTensor],
                     gap_bits: int = 5) -> CompressedModel:
    """Write the file atomically; returns what was written with per-tensor section sizes."""
    from driver.atomic_write import write_atomic

    if not 1 <= gap_bits <= 8:
        raise ValueError(f"gap_bits={gap_bits} must be in 1..8")
    entries, chunks = [], []
    for name, t in tensors.items():
        if isinstance(t, SharedTensor):
            body, info = encode_shared(t, gap_bits)
            entry = {"name": name, "kind": "shared", "shape": list(t.index.shape), **info}
        else:
            body = t.detach().cpu().float().numpy().astype("<f4").tobytes()
            entry = {"name": name, "kind": "raw", "shape": list(t.shape)}
        entry["bytes"] = len(body)
        entries.append(entry)
        chunks.append(body)
    header = zlib.compress(json.dumps({"format": FORMAT, "version": VERSION, "meta": meta, "tensors": entries},
                                      separators=(",", ":"), default=str).encode(), 9)
    data = MAGIC + struct.pack("<I", len(header)) + header + b"".join(chunks)
    data += struct.pack("<I", zlib.crc32(data))
    write_atomic(path, data)
    return CompressedModel(meta, dict(tensors), len(data), {e["name"]: e for e in entries})


def read_compressed(path: str | os.PathLike) -> CompressedModel:
    """Read and verify a ``.dcz`` file; every failure raises :class:`CompressedFileError` naming it.

    Bounded throughout: the file (:data:`MAX_DCZ_BYTES`), the inflated header (:data:`MAX_HEADER_BYTES`) and the
    decoded tensors (:data:`MAX_ELEMENTS`); every header field is checked before it is used, so a crafted file
    with a valid checksum fails with one line, never a traceback or an exhausted memory.
    """
    path = Path(path)
    data = read_bounded(path, MAX_DCZ_BYTES, "compressed model", CompressedFileError)
    if len(data) < len(MAGIC) + 8 or data[: len(MAGIC)] != MAGIC:
        raise CompressedFileError(f"{path}: not a driver compressed model (bad magic or too short)")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise CompressedFileError(f"{path}: checksum mismatch, the file is truncated or corrupt")
    (hlen,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if hlen > len(data) - start - 4:
        raise CompressedFileError(f"{path}: header length {hlen} runs past the end of the file")
    text = inflate_bounded(data[start : start + hlen], MAX_HEADER_BYTES, f"{path}: header", CompressedFileError)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CompressedFileError(f"{path}: unreadable header ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        found = (header.get("format"), header.get("version")) if isinstance(header, dict) else (None, None)
        raise CompressedFileError(f"{path}: format {found[0]!r} v{found[1]!r} is not {FORMAT!r} v{VERSION}")
    meta = require(header, "meta", dict, str(path), CompressedFileError)
    entries = require(header, "tensors", list, str(path), CompressedFileError)
    if len(entries) > MAX_TENSORS:
        raise CompressedFileError(f"{path}: {len(entries)} tensors; a compressed model holds at most {MAX_TENSORS}")
    budget = MAX_ELEMENTS
    for entry in entries:
        budget -= check_entry(entry, str(path), budget)
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise CompressedFileError(f"{path}: tensor names repeat")
    body = memoryview(data)[start + hlen : -4]
    if sum(e["bytes"] for e in entries) != len(body):
        raise CompressedFileError(f"{path}: the tensors' sections ({sum(e['bytes'] for e in entries)} bytes) do not "
                                  f"fill the payload ({len(body)} bytes)")
    tensors: dict[str, torch.Tensor | SharedTensor] = {}
    pos = 0
    for entry in entries:
        chunk = body[pos : pos + entry["bytes"]]
        if entry["kind"] == "shared":
            tensors[entry["name"]] = decode_shared(chunk, entry, str(path))
        else:
            arr = np.frombuffer(chunk, dtype="<f4").astype(np.float32)
            tensors[entry["name"]] = torch.from_numpy(arr.reshape(entry["shape"]))
        pos += entry["bytes"]
    return CompressedModel(meta, tensors, len(data), {e["name"]: e for e in entries})


def load_compressed_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """(dense eval-mode torch model, checkpoint-like dict for ``Policy``) decoded from a ``.dcz`` file."""
    from driver.training.checkpoint import build_model

    cm = read_compressed(path)
    meta = check_metadata(cm.meta, str(path), CompressedFileError)
    model = build_model(meta["arch"], meta["spec"], meta["arch_kwargs"], cm.state_dict(), str(path),
                        CompressedFileError)
    ckpt = {**meta, "config": meta.get("source_config", {}), "path": str(path)}
    return model.eval(), ckpt
