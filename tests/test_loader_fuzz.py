"""Every file format driver reads, fuzzed (seeded: the same cases every run) and attacked with crafted files.

A case passes when the loader either loads the file or raises its own error with one line naming the file;
the longer run of the same harness is ``bench/fuzz_loaders.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch

from driver.export.codec import (
    CompressedFileError,
    SharedTensor,
    load_compressed_model,
    read_compressed,
    write_compressed,
)
from driver.export.huffman import BLOCK_BITS, decode, encode
from driver.models import InputSpec, create_model
from driver.training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, model_payload
from tests.loader_fuzz import build_formats, fuzz

CASES = {"checkpoint": 120, "onnx": 80, "torchscript": 60, "dcz": 400, "store-json": 150, "run-json": 150,
         "config-toml": 150, "config-yaml": 150}  # about 6 s in all


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    torch.set_num_threads(1)
    return {f.name: f for f in build_formats(tmp_path_factory.mktemp("fuzz"))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fuzzed_files_load_or_fail_with_one_named_line(formats, name):
    fmt = formats[name]
    fmt.load(fmt.path)  # the valid file loads
    outcome = fuzz(fmt, CASES[name], seed=14)
    assert outcome.failures == [], outcome.line(name) + "\n" + "\n".join(outcome.failures[:5])
    assert sum(outcome.refused.values()) > 0, outcome.line(name)  # the mutations did reach the checks


def _dcz_with_header(path, header: dict, body: bytes) -> None:
    packed = zlib.compress(json.dumps(header).encode())
    data = b"DRVDCZ01" + struct.pack("<I", len(packed)) + packed + body
    path.write_bytes(data + struct.pack("<I", zlib.crc32(data)))


def test_crafted_dcz_files_with_valid_checksums_are_refused_without_allocating(tmp_path):
    base = tmp_path / "ok.dcz"
    write_compressed(base, {"arch": "x"}, {"w": SharedTensor(np.ones(4, np.float32), np.zeros((3, 3), np.int64))})
    header = json.loads(zlib.decompress(base.read_bytes()[12:-4][: struct.unpack("<I", base.read_bytes()[8:12])[0]]))
    entry = header["tensors"][0]
    cases = {
        "shape": ({**entry, "shape": [1 << 20, 1 << 20]}, "more than the 67108864 a compressed model may hold"),
        "nnz": ({**entry, "nnz": 10**12}, "nnz=1000000000000 must be in 0..9"),
        "bits": ({**entry, "index_bits": 10**15}, "index_bits="),
        "kind": ({k: v for k, v in entry.items() if k != "kind"}, "missing 'kind'"),
        "type": ({**entry, "shape": "3x3"}, "'shape' must be list"),
        "k": ({**entry, "k": -5}, "k=-5 must be in 0..256"),
    }
    body = base.read_bytes()[12 + struct.unpack("<I", base.read_bytes()[8:12])[0] : -4]
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.dcz"
        _dcz_with_header(path, {**header, "tensors": [bad]}, body)
        with pytest.raises(CompressedFileError, match=message):
            read_compressed(path)
    bomb = tmp_path / "bomb.dcz"  # a header that inflates to 64 MiB from a few hundred bytes
    packed = zlib.compress(b" " * (64 << 20), 9)
    data = b"DRVDCZ01" + struct.pack("<I", len(packed)) + packed
    bomb.write_bytes(data + struct.pack("<I", zlib.crc32(data)))
    with pytest.raises(CompressedFileError, match="bomb.dcz: header inflates to more than 16 MiB"):
        read_compressed(bomb)
    past = tmp_path / "past.dcz"
    data = b"DRVDCZ01" + struct.pack("<I", 1 << 30) + b"x" * 10
    past.write_bytes(data + struct.pack("<I", zlib.crc32(data)))
    with pytest.raises(CompressedFileError, match="header length 1073741824 runs past the end"):
        read_compressed(past)


def test_huffman_streams_longer_than_a_block_decode_exactly():
    rng = np.random.default_rng(3)
    symbols = rng.choice(32, size=800_000, p=np.r_[0.5, np.full(31, 0.5 / 31)])
    lengths, data, n_bits = encode(symbols, 32)
    assert n_bits > 2 * BLOCK_BITS
    np.testing.assert_array_equal(decode(lengths, data, n_bits, len(symbols)), symbols)


def _save(path, payload) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())


def test_crafted_checkpoints(tmp_path):
    spec = InputSpec(height=48, width=64, cameras=1, stack=1, n_modes=0, horizon=1)
    model = create_model("squeezenet", spec, stem_channels=8, base_width=16, width_increment=16)
    payload = {**model_payload(model), "preprocess": {"cameras": ["left"], "stack": 1, "height": 48, "width": 64,
                                                       "modes": []}}
    # a refused pickle: "not a driver checkpoint", never torch's advice to turn protection off, no warning
    _save(tmp_path / "objects.pt", {"x": np.zeros(3)})
    pickle.dump({"a": 1}, open(tmp_path / "plain.pt", "wb"), protocol=4)  # noqa: SIM115
    for name in ("objects.pt", "plain.pt"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(CheckpointError, match=f"{name}: not a driver checkpoint") as info:
                load_checkpoint(tmp_path / name)
        assert "weights_only" not in str(info.value) and "Re-running" not in str(info.value)
    # a missing field is named
    _save(tmp_path / "nopre.pt", {k: v for k, v in payload.items() if k != "preprocess"})
    with pytest.raises(CheckpointError, match="nopre.pt: checkpoint has no 'preprocess'"):
        load_checkpoint(tmp_path / "nopre.pt")
    _save(tmp_path / "badpre.pt", {**payload, "preprocess": {**payload["preprocess"], "cameras": "left"}})
    with pytest.raises(CheckpointError, match="badpre.pt: preprocess: 'cameras' must be list or tuple"):
        load_checkpoint(tmp_path / "badpre.pt")
    # a huge declared input (alexnet at 4096x4096 would be 17 G weights): refused before anything is allocated
    _save(tmp_path / "huge.pt", {**payload, "arch": "alexnet", "arch_kwargs": {},
                                 "spec": {**payload["spec"], "height": 4096, "width": 4096}})
    with pytest.raises(CheckpointError, match="huge.pt: weights do not fit alexnet"):
        model_from_checkpoint(load_checkpoint(tmp_path / "huge.pt"))
    # a zip whose entry is deflated (how a small file claims gigabytes): torch.save never writes one
    good = tmp_path / "good.pt"
    _save(good, payload)
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for item in z.infolist():
            out.writestr(item.filename, z.read(item.filename))
    with pytest.raises(CheckpointError, match="deflated.pt: not a loadable checkpoint \\(compressed archive entry"):
        load_checkpoint(tmp_path / "deflated.pt")
    assert model_from_checkpoint(load_checkpoint(good)) is not None


def test_dcz_declaring_a_huge_input_is_refused(tmp_path, formats):
    cm = read_compressed(formats["dcz"].path)
    meta = {**cm.meta, "arch": "alexnet", "arch_kwargs": {}, "spec": {**cm.meta["spec"], "height": 4096,
                                                                       "width": 4096}}
    write_compressed(tmp_path / "huge.dcz", meta, cm.tensors)
    with pytest.raises(CompressedFileError, match="huge.dcz: weights do not fit alexnet"):
        load_compressed_model(tmp_path / "huge.dcz")
