"""The metadata an exported or compressed model carries, and its schema check (torch-free).

Every exported file (``.onnx``, TorchScript, ``.dcz``) carries the JSON written by
:func:`driver.export.common.model_metadata`; ``load_policy`` needs nothing else. A loader checks it with
:func:`check_metadata` before using a field, so a damaged or foreign file fails with one line naming it.
"""

from __future__ import annotations

from typing import Any

from driver.errors import DriverError
from driver.file_checks import require, require_int, require_str_list

META_FORMAT = "driver-model-meta"
META_VERSION = 1
CAMERAS = ("left", "right")
# InputSpec's ranges (driver/models/spec.py), checked here without importing the model zoo
SPEC_RANGES = {"height": (1, 4096), "width": (1, 4096), "cameras": (1, 8), "stack": (1, 64), "n_modes": (0, 256),
               "horizon": (1, 1024)}


class ExportError(DriverError, ValueError):
    """An export, a parity check or a model file that failed; the message names the file."""


def check_preprocess(pre: Any, where: str, error: type[Exception] = ExportError) -> dict:
    """How frames become model input (``cameras``, ``stack``, ``height``, ``width``, ``modes``), checked."""
    if not isinstance(pre, dict):
        raise error(f"{where}: no 'preprocess' table (how frames become model input); not a driver model "
                    "or written by another version")
    where = f"{where}: preprocess"
    cameras = require_str_list(pre, "cameras", where, error, max_len=2)
    if not cameras or len(set(cameras)) != len(cameras) or not set(cameras) <= set(CAMERAS):
        raise error(f"{where}: cameras={cameras} must be 'left', 'right' or both")
    require_int(pre, "stack", 1, 2, where, error)
    require_int(pre, "height", 1, 4096, where, error)
    require_int(pre, "width", 1, 4096, where, error)
    require_str_list(pre, "modes", where, error, max_len=256)
    return pre


def check_spec(spec: Any, where: str, error: type[Exception] = ExportError) -> dict:
    """An ``InputSpec`` as a dict: every field an int in its range."""
    for key, (lo, hi) in SPEC_RANGES.items():
        require_int(spec, key, lo, hi, f"{where}: spec", error)
    unknown = sorted(set(spec) - set(SPEC_RANGES))
    if unknown:
        raise error(f"{where}: spec has unknown fields {unknown}")
    return spec


def check_metadata(meta: Any, where: str, error: type[Exception] = ExportError) -> dict:
    """The exported model's metadata, checked field by field; returns it."""
    if not isinstance(meta, dict):
        raise error(f"{where}: driver metadata must be a JSON object, found {type(meta).__name__}")
    if meta.get("format") != META_FORMAT or meta.get("version") != META_VERSION:
        raise error(f"{where}: metadata format {meta.get('format')!r} v{meta.get('version')!r} is not "
                    f"{META_FORMAT!r} v{META_VERSION}")
    require(meta, "arch", str, where, error)
    check_spec(require(meta, "spec", dict, where, error), where, error)
    require(meta, "arch_kwargs", dict, where, error)
    check_preprocess(meta.get("preprocess"), where, error)
    state = require(meta, "state", dict, where, error)
    names = require_str_list(state, "names", f"{where}: state", error, max_len=2)
    if names not in ([], ["h"], ["h", "c"]):
        raise error(f"{where}: state names {names} must be [], ['h'] or ['h', 'c']")
    require_int(state, "layers", 0, 64, f"{where}: state", error)
    require_int(state, "hidden", 0, 65536, f"{where}: state", error)
    inputs = require_str_list(meta, "inputs", where, error, max_len=5)
    if inputs[:1] != ["frame"]:
        raise error(f"{where}: inputs {inputs} must start with 'frame'")
    require_str_list(meta, "outputs", where, error, max_len=4)
    if "config" in meta:
        require(meta, "config", dict, where, error)
    return meta
