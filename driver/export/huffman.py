"""Canonical Huffman coding of small-alphabet symbol streams (cluster indices, sparse-position gaps).

A code is stored as one byte of code length per symbol (0 = unused); the code itself is canonical, so the
lengths alone rebuild it. Lengths are capped at :data:`MAX_LEN` bits (by flattening the counts when the
optimal code is deeper), which lets the decoder use one lookup table of ``2**MAX_LEN`` entries.
"""

from __future__ import annotations

import heapq

import numpy as np

from driver.errors import DriverError

MAX_LEN = 15  # lengths fit a nibble (0..15), so code tables pack two per byte


class HuffmanError(DriverError, ValueError):
    """A corrupt code table or bit stream."""


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Optimal code length per symbol (0 for unused symbols), capped at MAX_LEN bits."""
    counts = np.asarray(counts, dtype=np.int64).copy()
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    if len(used) == 0:
        return lengths
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    while True:
        heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(used)]
        heapq.heapify(heap)
        depth = np.zeros(len(counts), dtype=np.int64)
        tie = len(heap)
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            depth[s1 + s2] += 1
            heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
            tie += 1
        if depth.max() <= MAX_LEN:
            lengths[used] = depth[used]
            return lengths
        counts[used] = np.maximum(1, counts[used] // 2)  # flatten the distribution and retry


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code value of each symbol (shorter codes first, then by symbol)."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for sym in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[sym]) - prev
        codes[sym] = code
        prev = int(lengths[sym])
        code += 1
    return codes


def encode(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, bytes, int]:
    """(code lengths (alphabet,) uint8, packed bit stream, number of bits) of ``symbols`` in [0, alphabet)."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise HuffmanError(f"symbols must be in [0, {alphabet})")
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    if symbols.size == 0:
        return lengths, b"", 0
    codes = canonical_codes(lengths)
    sym_len = lengths[symbols].astype(np.int64)
    n_bits = int(sym_len.sum())
    # Bit j (MSB first) of each symbol's code, laid out back to back.
    starts = np.concatenate([[0], np.cumsum(sym_len)[:-1]])
    bits = np.zeros(n_bits, dtype=np.uint8)
    for j in range(MAX_LEN):
        has = sym_len > j
        if not has.any():
            break
        bit = (codes[symbols[has]] >> (sym_len[has] - 1 - j)) & 1
        bits[starts[has] + j] = bit
    return lengths, np.packbits(bits).tobytes(), n_bits


def decode(lengths: np.ndarray, data: bytes, n_bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`encode`: ``count`` symbols from the first ``n_bits`` of ``data``.

    Works through the stream in blocks of :data:`BLOCK_BITS`, so memory stays bounded whatever the stream says.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if lengths.max(initial=0) > MAX_LEN or lengths.min(initial=0) < 0 or not lengths.any():
        raise HuffmanError("invalid code lengths")
    if sum(2.0 ** -float(n) for n in lengths if n) > 1.0 + 1e-9:
        raise HuffmanError("code lengths violate the Kraft inequality")
    if n_bits > len(data) * 8:
        raise HuffmanError(f"bit stream is truncated: {len(data) * 8} bits, {n_bits} expected")
    codes = canonical_codes(lengths)
    table_sym = np.full(1 << MAX_LEN, -1, dtype=np.int32)
    table_len = np.zeros(1 << MAX_LEN, dtype=np.int32)
    for sym in np.flatnonzero(lengths):
        shift = MAX_LEN - int(lengths[sym])
        lo = int(codes[sym]) << shift
        table_sym[lo : lo + (1 << shift)] = sym
        table_len[lo : lo + (1 << shift)] = lengths[sym]
    packed = np.frombuffer(data, dtype=np.uint8)
    out: list[int] = []
    pos = 0
    while len(out) < count:
        if pos >= n_bits:
            raise HuffmanError(f"bit stream ended after {len(out)} of {count} symbols")
        syms, lens = _block_lookup(packed, pos, min(n_bits, pos + BLOCK_BITS), n_bits, table_sym, table_len)
        local, end = 0, len(syms)
        while local < end and len(out) < count:
            sym = syms[local]
            if sym < 0:
                raise HuffmanError(f"invalid code at bit {pos + local}")
            out.append(sym)
            local += lens[local]
        pos += local
    if pos != n_bits:
        raise HuffmanError(f"decoded {count} symbols in {pos} bits, the stream holds {n_bits}")
    return np.asarray(out, dtype=np.int64)


BLOCK_BITS = 1 << 20


def _block_lookup(packed: np.ndarray, start: int, end: int, n_bits: int, table_sym: np.ndarray,
                  table_len: np.ndarray) -> tuple[list[int], list[int]]:
    """(symbol, code length) of the code starting at each bit in ``start..end``, zeros past ``n_bits``."""
    first = start // 8
    bits = np.unpackbits(packed[first : (end + MAX_LEN + 7) // 8]).astype(np.int32)
    bits[max(0, n_bits - 8 * first) :] = 0
    bits = bits[start - 8 * first :]
    span = end - start
    bits = np.concatenate([bits, np.zeros(max(0, span + MAX_LEN - len(bits)), np.int32)])
    window = np.zeros(span, dtype=np.int32)  # the MAX_LEN bits starting at every bit position
    for j in range(MAX_LEN):
        window = (window << 1) | bits[j : j + span]
    return table_sym[window].tolist(), table_len[window].tolist()


def entropy_bits(symbols: np.ndarray, alphabet: int) -> float:
    """Shannon bound in bits for coding ``symbols`` with a per-stream static model."""
    counts = np.bincount(np.asarray(symbols, dtype=np.int64), minlength=alphabet).astype(np.float64)
    p = counts[counts > 0] / max(counts.sum(), 1.0)
    return float(-(counts[counts > 0] * np.log2(p)).sum())
