"""Deployment: ONNX/TorchScript export with parity checks, the ONNX Runtime policy backend, static int8,
and Deep Compression into one ``.dcz`` file. See ``docs/deploy.md``.

:func:`load_step_model` is the one entry point ``load_policy`` needs: it returns a step model (a torch
module, or a drop-in with ``step``/``is_recurrent``/``eval``/``to``) and the checkpoint-like metadata dict
that ``Policy`` reads, for a checkpoint, an ``.onnx``, a TorchScript or a ``.dcz`` file.

Names are imported lazily (on first use), so loading an ``.onnx`` policy never imports torch, the exporters
or the trainer.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "RUNTIMES": "loading",
    "load_step_model": "loading",
    "model_kind": "loading",
    "resolve_runtime": "loading",
    "ExportError": "meta",
    "CompressedFileError": "codec",
    "load_compressed_model": "codec",
    "read_compressed": "codec",
    "write_compressed": "codec",
    "CompressConfig": "compress",
    "CompressResult": "compress",
    "compress_checkpoint": "compress",
    "format_compress_result": "compress",
    "ExportReport": "onnx_export",
    "OnnxExportConfig": "onnx_export",
    "export_onnx": "onnx_export",
    "OrtStepModel": "ort_backend",
    "load_onnx_model": "ort_backend",
    "QuantizeConfig": "quantize",
    "QuantizeReport": "quantize",
    "quantize_onnx": "quantize",
    "TorchScriptConfig": "torchscript",
    "export_torchscript": "torchscript",
    "load_torchscript_model": "torchscript",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"driver.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'driver.export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
