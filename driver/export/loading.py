"""The one entry point ``load_policy`` needs: any model file → (step model, checkpoint-like metadata dict).

A checkpoint, an exported ``.onnx`` / TorchScript file or a compressed ``.dcz``; the kind is read from the
file (magic bytes, suffix). Only what the kind needs is imported: an ``.onnx`` on ONNX Runtime needs numpy
and onnxruntime, never torch, so ``driver drive`` runs on a ``driver[car]`` install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from driver.export.meta import ExportError

RUNTIMES = ("auto", "torch", "onnx")
DCZ_MAGIC = b"DRVDCZ01"  # driver.export.codec.MAGIC (kept here so telling the kind apart imports no torch)


def model_kind(path: str | os.PathLike) -> str:
    """``checkpoint`` | ``onnx`` | ``torchscript`` | ``compressed``, from the file's first bytes and suffix."""
    p = Path(path)
    if p.is_dir():
        return "checkpoint"
    if not p.is_file():
        raise ExportError(f"{p}: model file not found")
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ExportError(f"{p}: cannot read the model file: {e.strerror or e}") from e
    if head == DCZ_MAGIC:
        return "compressed"
    if p.suffix == ".onnx":
        return "onnx"
    if p.suffix in (".ts", ".torchscript"):
        return "torchscript"
    return "checkpoint"


def resolve_runtime(path: str | os.PathLike, runtime: str = "auto") -> str:
    """``auto`` → ``onnx`` for an ``.onnx`` file, else ``torch``; an explicit runtime is checked and kept."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} must be one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "onnx" if model_kind(path) == "onnx" else "torch"
    return runtime


def load_step_model(path: str | os.PathLike, runtime: str = "auto", threads: int | None = None
                    ) -> tuple[Any, dict]:
    """(model for ``Policy``, checkpoint-like dict) for any model file.

    ``runtime``: ``auto`` (ONNX Runtime for an ``.onnx``, PyTorch for the rest), ``torch`` or ``onnx``; with
    ``onnx`` a checkpoint or ``.dcz`` is exported in memory (parity-checked) first, so every model file runs
    on ONNX Runtime.
    """
    runtime = resolve_runtime(path, runtime)
    kind = model_kind(path)
    if kind == "onnx":
        if runtime != "onnx":
            raise ValueError(f"{path}: an .onnx model runs on ONNX Runtime (runtime='onnx' or 'auto')")
        from driver.export.ort_backend import load_onnx_model

        return load_onnx_model(path, threads=threads)
    if kind == "torchscript":
        from driver.export.torchscript import load_torchscript_model

        return load_torchscript_model(path)
    if kind == "compressed":
        from driver.export.codec import load_compressed_model

        model, ckpt = load_compressed_model(path)
    else:
        from driver.training.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt)
    if runtime == "torch":
        return model, ckpt
    return _to_onnx(model, ckpt, threads)


def _to_onnx(model: Any, ckpt: dict, threads: int | None) -> tuple[Any, dict]:
    from driver.export.common import check_parity, model_metadata, parity_inputs
    from driver.export.onnx_export import OnnxExportConfig, onnx_bytes
    from driver.export.ort_backend import OrtStepModel

    config = OnnxExportConfig(out="memory")
    meta = model_metadata(ckpt, model)
    backend = OrtStepModel(onnx_bytes(model.float().eval(), meta, config), meta, threads=threads,
                           name=f"{ckpt.get('path', 'model')} (onnx)")
    seqs, _ = parity_inputs({**ckpt, "dataset": {}}, model, steps=2, sequences=1)
    check_parity(model.step, backend.step, model, seqs, config.tolerance, backend.name)
    return backend, {**meta, "path": ckpt.get("path", "")}
