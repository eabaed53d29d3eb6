"""ONNX Runtime backend: an exported ``.onnx`` step model that drops in for the torch model inside ``Policy``.

    model, meta = load_onnx_model("sq.onnx", threads=1)
    policy = Policy(model, meta)           # Policy calls model.to(...).eval(), model.step(x, modes, state)

:class:`OrtStepModel` has the torch model's step contract (torch tensors in and out, state ``(h, c)``/``h``
or None), plus ``is_recurrent``, ``spec``, ``initial_state``, ``eval`` and ``to`` (CPU only).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from driver.export.common import META_FORMAT, ExportError
from driver.models.spec import InputSpec

log = logging.getLogger(__name__)

META_KEY = "driver"  # metadata_props key holding the JSON metadata


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


def read_onnx(path: str | os.PathLike) -> tuple[Any, dict]:
    """Load and check an exported file: (onnx.ModelProto, metadata dict). Errors name the file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX model not found")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf DecodeError, ValidationError, truncated files
        raise ExportError(f"{path}: not a valid ONNX model, it may be truncated or corrupt "
                          f"({type(e).__name__}: {str(e)[:200]})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise ExportError(f"{path}: ONNX model carries no driver metadata; export it with `driver export`")
    try:
        meta = json.loads(props[META_KEY])
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: driver metadata is not valid JSON ({e})") from e
    if meta.get("format") != META_FORMAT:
        raise ExportError(f"{path}: metadata format {meta.get('format')!r} is not {META_FORMAT!r}")
    return proto, meta


class OrtStepModel:
    """An ONNX Runtime session behind the torch step interface (see module docstring)."""

    def __init__(self, model: bytes | str | os.PathLike, meta: dict, threads: int | None = None,
                 name: str = "model.onnx") -> None:
        import onnxruntime as ort

        self.meta = meta
        self.name = str(name)
        self.spec = InputSpec(**meta["spec"])
        self.arch = meta["arch"]
        self.state_names: list[str] = list(meta["state"]["names"])
        self.is_recurrent = bool(self.state_names)
        self.num_layers = int(meta["state"]["layers"])
        self.hidden_size = int(meta["state"]["hidden"])
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise ExportError(f"{self.name}: ONNX Runtime cannot load the model ({str(e)[:300]})") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.input_names != list(meta["inputs"]):
            raise ExportError(f"{self.name}: model inputs {self.input_names} do not match its metadata "
                              f"{meta['inputs']}")

    def initial_state(self, batch_size: int, device: Any = None) -> Any:
        """Zero state like the torch model's: ``(h, c)``, ``h`` or None."""
        if not self.is_recurrent:
            return None
        zeros = [torch.zeros(self.num_layers, batch_size, self.hidden_size) for _ in self.state_names]
        return zeros[0] if len(zeros) == 1 else tuple(zeros)

    def feeds(self, frame: Tensor, modes: Tensor | None, state: Any) -> dict[str, np.ndarray]:
        """The session's input dict; a None state becomes zeros, missing modes become zeros."""
        batch = frame.shape[0]
        feed = {"frame": np.ascontiguousarray(frame.detach().float().cpu().numpy())}
        if self.spec.n_modes:
            m = torch.zeros(batch, self.spec.n_modes) if modes is None else modes
            feed["modes"] = np.ascontiguousarray(m.detach().float().cpu().numpy())
        if self.is_recurrent:
            state = self.initial_state(batch) if state is None else state
            parts = [state] if isinstance(state, Tensor) else list(state)
            for name, part in zip(self.state_names, parts, strict=True):
                feed[name] = np.ascontiguousarray(torch.as_tensor(part).detach().float().cpu().numpy())
        return feed

    def step(self, frame: Tensor, modes: Tensor | None = None, state: Any = None) -> tuple[Tensor, Any]:
        """frame (B, C, H, W) -> (out (B, horizon, 2), new state), torch tensors as the torch model returns."""
        outs = self.session.run(None, self.feeds(frame, modes, state))
        out = torch.from_numpy(outs[0])
        if not self.is_recurrent:
            return out, None
        new = [torch.from_numpy(o) for o in outs[1:]]
        return out, (new[0] if len(new) == 1 else tuple(new))

    def eval(self) -> OrtStepModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OrtStepModel:
        """Accepts ``.to("cpu")`` and ``.to(memory_format=...)`` as Policy calls them; other devices raise."""
        device = kwargs.get("device", args[0] if args and not isinstance(args[0], torch.dtype) else None)
        if device is not None and torch.device(device).type != "cpu":
            raise ExportError(f"{self.name}: the ONNX Runtime backend runs on CPU only, not {device}")
        return self

    def __repr__(self) -> str:
        return f"OrtStepModel({self.name}, arch={self.arch}, recurrent={self.is_recurrent})"


def load_onnx_model(path: str | os.PathLike, threads: int | None = None) -> tuple[OrtStepModel, dict]:
    """(backend, checkpoint-like metadata dict for ``Policy``) from an exported ``.onnx`` file."""
    proto, meta = read_onnx(path)
    model = OrtStepModel(proto.SerializeToString(), meta, threads=threads, name=str(path))
    return model, {**meta, "path": str(path)}
