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
from driver.export.common import ExportError

MAGIC = b"DRVDCZ01"
FORMAT = "driver-compressed"
VERSION = 1


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


def write_compressed(path: str | os.PathLike, meta: dict, tensors: dict[str, torch.Tensor | SharedTensor],
                     gap_bits: int = 5) -> CompressedModel:
    """Write the file atomically; returns what was written with per-tensor section sizes."""
    from driver.export.onnx_export import write_atomic

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
    """Read and verify a ``.dcz`` file; every failure raises :class:`CompressedFileError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CompressedFileError(f"{path}: compressed model not found")
    data = path.read_bytes()
    if len(data) < len(MAGIC) + 8 or data[: len(MAGIC)] != MAGIC:
        raise CompressedFileError(f"{path}: not a driver compressed model (bad magic or too short)")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise CompressedFileError(f"{path}: checksum mismatch, the file is truncated or corrupt")
    (hlen,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(zlib.decompress(data[start : start + hlen]))
    except (zlib.error, json.JSONDecodeError) as e:
        raise CompressedFileError(f"{path}: unreadable header ({e})") from e
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CompressedFileError(f"{path}: format {header.get('format')!r} v{header.get('version')} is not "
                                  f"{FORMAT!r} v{VERSION}")
    body = memoryview(data)[start + hlen : -4]
    tensors: dict[str, torch.Tensor | SharedTensor] = {}
    pos = 0
    for entry in header["tensors"]:
        chunk = body[pos : pos + entry["bytes"]]
        if len(chunk) != entry["bytes"]:
            raise CompressedFileError(f"{path}: tensor {entry['name']!r} is cut short")
        if entry["kind"] == "shared":
            tensors[entry["name"]] = decode_shared(chunk, entry, str(path))
        else:
            arr = np.frombuffer(chunk, dtype="<f4").astype(np.float32)
            tensors[entry["name"]] = torch.from_numpy(arr.reshape(entry["shape"]))
        pos += entry["bytes"]
    return CompressedModel(header["meta"], tensors, len(data), {e["name"]: e for e in header["tensors"]})


def load_compressed_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """(dense eval-mode torch model, checkpoint-like dict for ``Policy``) decoded from a ``.dcz`` file."""
    from driver.models import InputSpec, create_model, legacy_kwargs

    cm = read_compressed(path)
    meta = cm.meta
    kwargs = legacy_kwargs(meta["arch"], meta.get("arch_kwargs", {}))  # files from before a knob existed
    model = create_model(meta["arch"], InputSpec(**meta["spec"]), **kwargs)
    try:
        model.load_state_dict(cm.state_dict())
    except RuntimeError as e:
        raise CompressedFileError(f"{path}: weights do not fit {meta['arch']}: {str(e)[:300]}") from e
    ckpt = {**meta, "config": meta.get("source_config", {}), "path": str(path)}
    return model.eval(), ckpt
