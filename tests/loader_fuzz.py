"""Fuzzing every file format driver reads: mutate a valid file, load it, and sort what happens.

A load either succeeds (a damaged weight is still a model), or raises the format's own error with one line
that names the file: anything else (another exception type, a traceback-worthy message, a leaked warning,
anything a library printed) is a failure. The suite runs each format for a few seconds
(tests/test_loader_fuzz.py); ``bench/fuzz_loaders.py`` runs the same harness longer and reports the counts.
Deterministic: every case comes from ``seed``.

Formats: checkpoints (``.pt``), exported ``.onnx``, TorchScript, compressed ``.dcz`` (bytes with the checksum
fixed afterwards, so mutations reach the parser, and header fields), store metadata (``zarr.json``) and drive
config files (TOML, YAML).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import struct
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("checkpoint", "onnx", "torchscript", "dcz", "store-json", "run-json", "config-toml", "config-yaml")
HOSTILE_VALUES = (None, True, -1, 0, 2**31, 2**62, 1e308, float("nan"), "", "x" * 300, [], [0] * 50, {}, {"a": 1})


@dataclass
class Outcome:
    """How the cases of one format ended."""

    cases: int = 0
    loaded: int = 0
    refused: Counter = field(default_factory=Counter)  # clean one-line errors, by the start of the reason
    failures: list[str] = field(default_factory=list)  # each one a bug

    def line(self, name: str) -> str:
        kinds = ", ".join(f"{n}× {k}" for k, n in self.refused.most_common(4))
        return (f"{name}: {self.cases} cases, {self.loaded} loaded, {sum(self.refused.values())} refused cleanly "
                f"({kinds}), {len(self.failures)} failures")


@dataclass
class Format:
    name: str
    path: Path  # the valid file (mutants are written next to it)
    load: Callable[[Path], object]
    errors: tuple[type[BaseException], ...]
    mutate: Callable[[bytes, random.Random], bytes]
    target: Path | None = None  # the file mutants replace when the loader takes a folder (a store)


# ---- byte mutations ----

def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One of: flip bits, overwrite a window, truncate, insert, duplicate a chunk, zero a run."""
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        i = rng.randrange(len(b))
        n = rng.randint(1, 64)
        b[i : i + n] = bytes(rng.randrange(256) for _ in range(min(n, len(b) - i)))
    elif kind == 2:
        b = b[: rng.randrange(len(b))]
    elif kind == 3:
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 4:
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 256))
        b[j:j] = b[i:j]
    else:
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 32)] = bytes(min(32, len(b) - i))
    return bytes(b)


def mutate_json_doc(doc, rng: random.Random):
    """Replace, delete or retype one value somewhere in a JSON document (a deep copy)."""
    doc = json.loads(json.dumps(doc))
    containers = []

    def walk(node) -> None:
        if isinstance(node, dict | list) and node:
            containers.append(node)
            for child in (node.values() if isinstance(node, dict) else node):
                walk(child)

    walk(doc)
    if not containers:
        return rng.choice(HOSTILE_VALUES)
    node = rng.choice(containers)
    key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
    if isinstance(node, dict) and rng.random() < 0.3:
        del node[key]
    else:
        node[key] = rng.choice(HOSTILE_VALUES)
    return doc


# ---- zip archives (checkpoints, TorchScript): mutate one entry and re-zip, so its CRC-32 is valid ----

def mutate_zip_entry(data: bytes, rng: random.Random) -> bytes:
    """Half byte-level, half one archive entry mutated (pickles and metadata first) inside a valid zip."""
    if rng.random() < 0.5:
        return mutate_bytes(data, rng)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    picks = [i for i, (info, _) in enumerate(entries) if info.filename.endswith((".pkl", ".json"))]
    target = rng.choice(picks if picks and rng.random() < 0.8 else range(len(entries)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for i, (info, content) in enumerate(entries):
            if i == target and content:
                content = mutate_json_file(content, rng) if info.filename.endswith(".json") else \
                    mutate_bytes(content, rng)
            z.writestr(info, content, compress_type=info.compress_type)
    return out.getvalue()


def mutate_json_file(data: bytes, rng: random.Random) -> bytes:
    """Half byte-level, half one value of the JSON document retyped or removed."""
    if rng.random() < 0.5:
        return mutate_bytes(data, rng)
    try:
        doc = json.loads(data)
    except ValueError:
        return mutate_bytes(data, rng)
    return json.dumps(mutate_json_doc(doc, rng)).encode()


# ---- the .dcz container: mutate, then make the checksum valid again ----

def _dcz_seal(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def mutate_dcz(data: bytes, rng: random.Random) -> bytes:
    """Half byte-level (checksum fixed), half a header field changed (header re-compressed, checksum fixed)."""
    if rng.random() < 0.5:
        mutated = mutate_bytes(data, rng)
        return _dcz_seal(mutated) if len(mutated) >= 16 else mutated
    (hlen,) = struct.unpack("<I", data[8:12])
    header = json.loads(zlib.decompress(data[12 : 12 + hlen]))
    packed = zlib.compress(json.dumps(mutate_json_doc(header, rng)).encode())
    return _dcz_seal(data[:8] + struct.pack("<I", len(packed)) + packed + data[12 + hlen :])


# ---- building the valid files ----

def _tiny_model():
    import torch

    from driver.models import InputSpec, create_model

    spec = InputSpec(height=48, width=64, cameras=1, stack=1, n_modes=0, horizon=1)
    torch.manual_seed(0)
    return create_model("squeezenet_gru", spec, stem_channels=8, base_width=16, width_increment=16,
                        hidden_size=8), spec


def build_formats(workdir: Path) -> list[Format]:
    """The valid file of every format, in ``workdir``, with its loader and error types."""
    import torch

    from driver.export.codec import CompressedFileError, SharedTensor, load_compressed_model, write_compressed
    from driver.export.common import model_metadata
    from driver.export.meta import ExportError
    from driver.export.onnx_export import OnnxExportConfig, export_onnx
    from driver.export.ort_backend import load_onnx_model
    from driver.export.torchscript import TorchScriptConfig, export_torchscript, load_torchscript_model
    from driver.training.checkpoint import (
        UNITS,
        CheckpointError,
        load_checkpoint,
        model_from_checkpoint,
        model_payload,
        preprocess_info,
        save_checkpoint,
    )
    from driver.vehicle.drive_config import DriveConfig

    workdir.mkdir(parents=True, exist_ok=True)
    model, spec = _tiny_model()
    ckpt_path = workdir / "model.pt"
    ckpt = {**model_payload(model), "preprocess": preprocess_info(spec, ("left",), ()), "units": UNITS,
            "config": {"channels_last": False}}
    save_checkpoint(ckpt_path, ckpt)
    onnx_path, ts_path, dcz_path = workdir / "model.onnx", workdir / "model.ts", workdir / "model.dcz"
    export_onnx(str(ckpt_path), OnnxExportConfig(out=str(onnx_path), parity_steps=2, parity_sequences=1))
    export_torchscript(str(ckpt_path), TorchScriptConfig(out=str(ts_path), parity_steps=2, parity_sequences=1))
    tensors = {}
    for name, w in model.state_dict().items():
        if w.dim() >= 2:
            codebook = np.linspace(float(w.min()), float(w.max()), 16).astype(np.float32)
            index = np.abs(w.numpy()[..., None] - codebook).argmin(-1).astype(np.int64)
            index[np.abs(w.numpy()) < float(w.abs().median())] = -1
            tensors[name] = SharedTensor(codebook, index)
        else:
            tensors[name] = w
    write_compressed(dcz_path, model_metadata({**ckpt, "path": str(ckpt_path)}, model), tensors)

    def load_ckpt(p: Path):
        return model_from_checkpoint(load_checkpoint(p))

    def mutate_ckpt(data: bytes, rng: random.Random) -> bytes:
        if rng.random() < 0.6:
            return mutate_zip_entry(data, rng)
        doc = {k: v for k, v in ckpt.items() if k != "model"}
        doc = mutate_json_doc(doc, rng)  # a field missing or of the wrong type
        payload = {**(doc if isinstance(doc, dict) else {"format": doc}), "model": ckpt["model"]}
        import io

        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    store_root, run_json = _tiny_store(workdir)
    config_toml, config_yaml = workdir / "car.toml", workdir / "car.yaml"
    config_toml.write_text('[drive]\nport = "/dev/ttyUSB0"\nmodel = "m.onnx"\nmax_throttle = 0.2\nfps = 20\n'
                           'camera = "0"\nshadow = false\ncpus = "1"\n')
    config_yaml.write_text("port: /dev/ttyUSB0\nmodel: m.onnx\nmax_throttle: 0.2\nfps: 20\nrealtime: true\n")

    def load_store(_: Path):
        from driver.datasets.store import Store

        store = Store(store_root)
        return [store.run_meta(r) for r in store.runs]

    from driver.datasets.store import StoreError

    return [
        Format("checkpoint", ckpt_path, load_ckpt, (CheckpointError,), mutate_ckpt),
        Format("onnx", onnx_path, lambda p: load_onnx_model(p, threads=1), (ExportError,), mutate_bytes),
        Format("torchscript", ts_path, load_torchscript_model, (ExportError,), mutate_zip_entry),
        Format("dcz", dcz_path, load_compressed_model, (CompressedFileError,), mutate_dcz),
        Format("store-json", store_root / "zarr.json", load_store, (StoreError,), mutate_json_file),
        Format("run-json", run_json, load_store, (StoreError,), mutate_json_file),
        Format("config-toml", config_toml, DriveConfig.from_file, (ValueError,), mutate_bytes),
        Format("config-yaml", config_yaml, DriveConfig.from_file, (ValueError,), mutate_bytes),
    ]


def _tiny_store(workdir: Path) -> tuple[Path, Path]:
    from driver.datasets.ingest import IngestConfig, ingest
    from driver.datasets.synthetic import write_synthetic_runs

    runs = write_synthetic_runs(workdir / "runs", 1, n_frames=20, height=16, width=24, stereo=False, seed=1)
    store = workdir / "store.zarr"
    report = ingest(IngestConfig(sources=[str(p) for p in runs], out=str(store)))
    assert report.ok, report.failures
    run_json = next((store / "runs").glob("*/zarr.json"))
    return store, run_json


# ---- running ----

def fuzz(fmt: Format, cases: int, seed: int) -> Outcome:
    """``cases`` mutants of ``fmt``'s file through its loader; the valid file is restored afterwards."""
    rng = random.Random(f"{fmt.name}:{seed}")
    original = fmt.path.read_bytes()
    mutant = fmt.path if fmt.name.endswith("json") else fmt.path.with_name(f"mutant{fmt.path.suffix}")
    outcome = Outcome()
    try:
        for _ in range(cases):
            mutant.write_bytes(fmt.mutate(original, rng))
            outcome.cases += 1
            printed = io.StringIO()
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed), \
                    contextlib.redirect_stderr(printed):
                warnings.simplefilter("always")
                try:
                    fmt.load(mutant)
                    outcome.loaded += 1
                except fmt.errors as e:
                    _judge(str(e), fmt, mutant, outcome)
                except Exception as e:  # noqa: BLE001 - sorting outcomes is the point
                    outcome.failures.append(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
            leaked = [w for w in caught if not issubclass(w.category, ResourceWarning)]
            if leaked:
                outcome.failures.append(f"leaked {leaked[0].category.__name__}: {str(leaked[0].message)[:200]}")
            if printed.getvalue().strip():
                outcome.failures.append(f"printed: {printed.getvalue().strip()[:200]!r}")
    finally:
        fmt.path.write_bytes(original)
        if mutant != fmt.path:
            mutant.unlink(missing_ok=True)
    return outcome


def _judge(message: str, fmt: Format, mutant: Path, outcome: Outcome) -> None:
    named = mutant.name in message or str(mutant.parent) in message
    if "\n" in message or not named or "weights_only" in message or len(message) > 1000:
        outcome.failures.append(f"unclear error: {message[:300]!r}")
        return
    reason = message.split(": ", 1)[-1]
    outcome.refused[" ".join(reason.split()[:4])] += 1
