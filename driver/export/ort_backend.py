"""ONNX Runtime backend: an exported ``.onnx`` step model that drops in for the torch model inside ``Policy``.

    model, meta = load_onnx_model("sq.onnx", threads=1)
    policy = Policy(model, meta)           # numpy in, numpy out: no torch on the car computer

:class:`OrtStepModel` has the torch model's step contract (``step(frame, modes, state) -> (out, state)``,
state ``(h, c)``/``h`` or None) on numpy arrays, and on torch tensors when given tensors (the export parity
checks and quantization call it that way), plus ``is_recurrent``, ``initial_state``, ``eval`` and ``to``
(CPU only). Loading needs only numpy and onnxruntime: the file is read with a size bound, handed to ONNX
Runtime as bytes (so it cannot pull external data from elsewhere on disk), and its metadata is read from the
session and checked field by field. :func:`read_onnx` (the ``onnx`` package) is for quantization.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from driver.errors import SpeedRequired
from driver.export.meta import ExportError, check_metadata
from driver.file_checks import GiB, MiB, read_bounded

log = logging.getLogger(__name__)

META_KEY = "driver"  # metadata_props key holding the JSON metadata
MAX_ONNX_BYTES = 1 * GiB  # protobuf's own limit is 2 GiB; a car model is a few MB
MAX_META_BYTES = 4 * MiB


def session_options(threads: int | None = None, optimize: bool = True):
    """ORT session options: all graph optimisations (NCHWc layouts matter on x86), ``threads`` intra-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    return options


def parse_metadata(text: str | None, where: str) -> dict:
    """The driver metadata JSON of a model file, checked (:func:`driver.export.meta.check_metadata`)."""
    if text is None:
        raise ExportError(f"{where}: the model carries no driver metadata; export it with `driver export`")
    if len(text) > MAX_META_BYTES:
        raise ExportError(f"{where}: driver metadata is {len(text) / MiB:.1f} MiB, more than {MAX_META_BYTES // MiB}")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ExportError(f"{where}: driver metadata is not valid JSON ({e})") from e
    return check_metadata(meta, where)


def read_onnx(path: str | os.PathLike) -> tuple[Any, dict]:
    """Load and check an exported file with the ``onnx`` package: (onnx.ModelProto, metadata dict)."""
    import onnx

    data = read_bounded(path, MAX_ONNX_BYTES, "ONNX model", ExportError)
    try:
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf DecodeError, ValidationError, truncated files
        raise ExportError(f"{path}: not a valid ONNX model, it may be truncated or corrupt "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    return proto, parse_metadata(props.get(META_KEY), str(path))


def _numpy(x: Any) -> np.ndarray:
    """A C-contiguous float32 array from a numpy array or a (CPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class OrtStepModel:
    """An ONNX Runtime session behind the step interface (see module docstring)."""

    numpy_io = True  # Policy feeds numpy arrays and gets numpy arrays back

    def __init__(self, model: bytes, meta: dict | None = None, threads: int | None = None,
                 name: str = "model.onnx") -> None:
        """``meta`` None: read from the model's own ``metadata_props`` (an exported file)."""
        import onnxruntime as ort

        self.name = str(name)
        try:  # ORT prints an "EP Error ... Falling back" banner before re-raising some failures: keep it quiet
            with contextlib.redirect_stdout(io.StringIO()):
                self.session = ort.InferenceSession(model, session_options(threads),
                                                    providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise ExportError(f"{self.name}: not a model ONNX Runtime can load, it may be truncated or corrupt "
                              f"({' '.join(str(e).split())[:300]})") from e
        if meta is None:
            try:
                text = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
            except UnicodeDecodeError as e:
                raise ExportError(f"{self.name}: the model's metadata is not UTF-8 text ({e.reason})") from None
            meta = parse_metadata(text, self.name)
        self.meta = meta = check_metadata(meta, self.name)
        self.arch = meta["arch"]
        self.n_modes = int(meta["spec"]["n_modes"])
        self.state_names: list[str] = list(meta["state"]["names"])
        self.is_recurrent = bool(self.state_names)
        self.num_layers = int(meta["state"]["layers"])
        self.hidden_size = int(meta["state"]["hidden"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.speed_input = "speed" in self.input_names  # the car's speed (m/s) is an input
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.input_names != list(meta["inputs"]) or len(self.output_names) != 1 + len(self.state_names):
            raise ExportError(f"{self.name}: model inputs {self.input_names} / outputs {self.output_names} do not "
                              f"match its metadata ({meta['inputs']}, state {self.state_names})")

    @property
    def spec(self):
        """The model's :class:`~driver.models.spec.InputSpec` (imports the model zoo: not on the car path)."""
        from driver.models.spec import InputSpec

        return InputSpec(**self.meta["spec"])

    def initial_state(self, batch_size: int, device: Any = None, torch_tensors: bool = False) -> Any:
        """Zero state like the torch model's: ``(h, c)``, ``h`` or None (numpy unless ``torch_tensors``)."""
        if not self.is_recurrent:
            return None
        zeros = [np.zeros((self.num_layers, batch_size, self.hidden_size), np.float32) for _ in self.state_names]
        if torch_tensors:
            import torch

            zeros = [torch.from_numpy(z) for z in zeros]
        return zeros[0] if len(zeros) == 1 else tuple(zeros)

    def feeds(self, frame: Any, modes: Any, state: Any, speed: Any = None) -> dict[str, np.ndarray]:
        """The session's input dict; a None state becomes zeros, missing modes become zeros; ``speed`` (B,) m/s
        is required by a speed-input model (:class:`~driver.errors.SpeedRequired`) and ignored otherwise."""
        x = _numpy(frame)
        batch = x.shape[0]
        feed = {"frame": x}
        if self.n_modes:
            feed["modes"] = np.zeros((batch, self.n_modes), np.float32) if modes is None else _numpy(modes)
        if self.speed_input:
            if speed is None:
                raise SpeedRequired(f"{self.name}: the model takes the car's speed: pass speed (m/s)")
            feed["speed"] = _numpy(speed).astype(np.float32).reshape(batch)
        if self.is_recurrent:
            state = self.initial_state(batch) if state is None else state
            parts = [state] if not isinstance(state, tuple | list) else list(state)
            for name, part in zip(self.state_names, parts, strict=True):
                feed[name] = _numpy(part)
        return feed

    def step(self, frame: Any, modes: Any = None, state: Any = None, speed: Any = None) -> tuple[Any, Any]:
        """frame (B, C, H, W) -> (out (B, horizon, 2), new state); torch tensors out when a tensor came in."""
        outs = self.session.run(None, self.feeds(frame, modes, state, speed))
        if hasattr(frame, "detach"):  # called the torch way (parity checks, quantization, evaluation)
            import torch

            outs = [torch.from_numpy(o) for o in outs]
        if not self.is_recurrent:
            return outs[0], None
        return outs[0], (outs[1] if len(outs) == 2 else tuple(outs[1:]))

    def eval(self) -> OrtStepModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OrtStepModel:
        """Accepts ``.to("cpu")`` and ``.to(memory_format=...)`` as Policy calls them; other devices raise."""
        device = kwargs.get("device", args[0] if args and isinstance(args[0], str) else None)
        if device is not None and str(device).split(":")[0] != "cpu":
            raise ExportError(f"{self.name}: the ONNX Runtime backend runs on CPU only, not {device}")
        return self

    def __repr__(self) -> str:
        return f"OrtStepModel({self.name}, arch={self.arch}, recurrent={self.is_recurrent})"


def load_onnx_model(path: str | os.PathLike, threads: int | None = None) -> tuple[OrtStepModel, dict]:
    """(backend, checkpoint-like metadata dict for ``Policy``) from an exported ``.onnx`` file (torch-free)."""
    data = read_bounded(path, MAX_ONNX_BYTES, "ONNX model", ExportError)
    model = OrtStepModel(data, None, threads=threads, name=str(Path(path)))
    return model, {**model.meta, "path": str(path)}
