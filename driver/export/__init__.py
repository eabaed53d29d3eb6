"""Deployment: ONNX/TorchScript export with parity checks, the ONNX Runtime policy backend, static int8,
and Deep Compression into one ``.dcz`` file. See ``docs/deploy.md``.

:func:`load_step_model` is the one entry point ``load_policy`` needs: it returns a step model (a torch
module, or a drop-in with ``step``/``is_recurrent``/``eval``/``to``) and the checkpoint-like metadata dict
that ``Policy`` reads, for a checkpoint, an ``.onnx``, a TorchScript or a ``.dcz`` file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from driver.export.codec import MAGIC as DCZ_MAGIC
from driver.export.codec import CompressedFileError, load_compressed_model, read_compressed, write_compressed
from driver.export.common import ExportError
from driver.export.compress import CompressConfig, CompressResult, compress_checkpoint, format_compress_result
from driver.export.onnx_export import ExportReport, OnnxExportConfig, export_onnx
from driver.export.ort_backend import OrtStepModel, load_onnx_model
from driver.export.quantize import QuantizeConfig, QuantizeReport, quantize_onnx
from driver.export.torchscript import TorchScriptConfig, export_torchscript, load_torchscript_model

RUNTIMES = ("torch", "onnx")


def model_kind(path: str | os.PathLike) -> str:
    """``checkpoint`` | ``onnx`` | ``torchscript`` | ``compressed``, from the file's first bytes."""
    p = Path(path)
    if p.is_dir():
        return "checkpoint"
    if not p.is_file():
        raise ExportError(f"{p}: model file not found")
    with open(p, "rb") as f:
        head = f.read(8)
    if head == DCZ_MAGIC:
        return "compressed"
    if p.suffix == ".onnx":
        return "onnx"
    if p.suffix in (".ts", ".torchscript"):
        return "torchscript"
    return "checkpoint"


def load_step_model(path: str | os.PathLike, runtime: str = "torch", threads: int | None = None) -> tuple[Any, dict]:
    """(model for ``Policy``, checkpoint-like dict) for any model file; ``runtime="onnx"`` runs ONNX Runtime.

    With ``runtime="onnx"`` a checkpoint or ``.dcz`` is exported in memory (parity-checked) first, so
    ``--runtime onnx`` works on every model file.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} must be one of {', '.join(RUNTIMES)}")
    kind = model_kind(path)
    if kind == "onnx":
        if runtime != "onnx":
            raise ValueError(f"{path}: an .onnx model needs runtime='onnx'")
        return load_onnx_model(path, threads=threads)
    if kind == "torchscript":
        return load_torchscript_model(path)
    if kind == "compressed":
        model, ckpt = load_compressed_model(path)
    else:
        from driver.training.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt)
    if runtime == "torch":
        return model, ckpt
    return _to_onnx(model, ckpt, threads)


def _to_onnx(model: Any, ckpt: dict, threads: int | None) -> tuple[OrtStepModel, dict]:
    from driver.export.common import check_parity, model_metadata, parity_inputs
    from driver.export.onnx_export import onnx_bytes

    config = OnnxExportConfig(out="memory")
    meta = model_metadata(ckpt, model)
    backend = OrtStepModel(onnx_bytes(model.float().eval(), meta, config), meta, threads=threads,
                           name=f"{ckpt.get('path', 'model')} (onnx)")
    seqs, _ = parity_inputs({**ckpt, "dataset": {}}, model, steps=2, sequences=1)
    check_parity(model.step, backend.step, model, seqs, config.tolerance, backend.name)
    return backend, {**meta, "path": ckpt.get("path", "")}


__all__ = [
    "RUNTIMES",
    "CompressConfig",
    "CompressResult",
    "CompressedFileError",
    "ExportError",
    "ExportReport",
    "OnnxExportConfig",
    "OrtStepModel",
    "QuantizeConfig",
    "QuantizeReport",
    "TorchScriptConfig",
    "compress_checkpoint",
    "export_onnx",
    "export_torchscript",
    "format_compress_result",
    "load_compressed_model",
    "load_onnx_model",
    "load_step_model",
    "load_torchscript_model",
    "model_kind",
    "quantize_onnx",
    "read_compressed",
    "write_compressed",
]
