"""`driver export --format torchscript`: the traced step model (state in and out) with metadata in the archive.

    report = export_torchscript("best.pt", TorchScriptConfig(out="sq.ts"))
    model, meta = load_torchscript_model("sq.ts")   # a drop-in for the torch model inside Policy

The archive holds ``extra/driver.json`` (the same metadata as the ONNX export), so it needs no other file.
Tracing fixes the presence of modes and state at export; the batch size stays free.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from driver.export.common import (
    ExportError,
    StepModule,
    check_parity,
    flat_state,
    model_metadata,
    parity_inputs,
    resolve_checkpoint,
    validate_parity,
)
from driver.export.onnx_export import ExportReport, example_args, write_atomic
from driver.models.spec import InputSpec

log = logging.getLogger(__name__)

EXTRA_FILE = "driver.json"


@dataclass
class TorchScriptConfig:
    out: str = ""
    tolerance: float = 1e-4
    parity_steps: int = 8
    parity_sequences: int = 2
    freeze: bool = True  # torch.jit.freeze: constant weights, faster at batch 1

    def __post_init__(self) -> None:
        validate_parity(self.tolerance, self.parity_steps, self.parity_sequences)


class ScriptStepModel:
    """A TorchScript step module behind the torch step interface (``step``, ``is_recurrent``, ``eval``, ``to``)."""

    def __init__(self, module: torch.jit.ScriptModule, meta: dict) -> None:
        self.module, self.meta = module, meta
        self.spec = InputSpec(**meta["spec"])
        self.state_names = list(meta["state"]["names"])
        self.is_recurrent = bool(self.state_names)
        self.num_layers, self.hidden_size = int(meta["state"]["layers"]), int(meta["state"]["hidden"])

    def initial_state(self, batch_size: int, device: Any = None) -> Any:
        if not self.is_recurrent:
            return None
        zeros = [torch.zeros(self.num_layers, batch_size, self.hidden_size) for _ in self.state_names]
        return zeros[0] if len(zeros) == 1 else tuple(zeros)

    @torch.no_grad()
    def step(self, frame: Tensor, modes: Tensor | None = None, state: Any = None) -> tuple[Tensor, Any]:
        args = [frame.float()]
        if self.spec.n_modes:
            args.append(torch.zeros(frame.shape[0], self.spec.n_modes) if modes is None else modes.float())
        if self.is_recurrent:
            args.extend(flat_state(self.initial_state(frame.shape[0]) if state is None else state))
        outs = self.module(*args)
        if not self.is_recurrent:
            return outs[0], None
        return outs[0], (outs[1] if len(outs) == 2 else tuple(outs[1:]))

    def eval(self) -> ScriptStepModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> ScriptStepModel:
        return self  # traced on CPU; frozen constants stay there


def export_torchscript(source: str | os.PathLike | dict, config: TorchScriptConfig) -> ExportReport:
    """Trace (and freeze) the step model, check parity against eager PyTorch, write ``config.out``."""
    if not config.out:
        raise ValueError("out is empty: name the TorchScript file to write")
    ckpt, model = resolve_checkpoint(source)
    meta = model_metadata(ckpt, model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        traced = torch.jit.trace(StepModule(model).eval(), example_args(model), check_trace=False)
        if config.freeze:
            traced = torch.jit.freeze(traced)
    seqs, frames = parity_inputs(ckpt, model, config.parity_steps, config.parity_sequences)
    delta = check_parity(model.step, ScriptStepModel(traced, meta).step, model, seqs, config.tolerance,
                         f"{config.out} (torchscript)")
    meta["parity"] = {"max_abs_diff": delta, "tolerance": config.tolerance, "frames": frames}
    out = Path(config.out)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: json.dumps(meta, default=str)})
    write_atomic(out, buffer.getvalue())  # never half an archive under the final name
    log.info("exported %s (torchscript): max |Δ| %.2e vs eager over %d steps of %s", out, delta,
             config.parity_steps * config.parity_sequences, frames)
    return ExportReport(str(out), "torchscript", out.stat().st_size, delta, config.tolerance,
                        config.parity_steps * config.parity_sequences, frames)


def load_torchscript_model(path: str | os.PathLike) -> tuple[ScriptStepModel, dict]:
    """(backend, metadata) from a file written by :func:`export_torchscript`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: TorchScript model not found")
    extra = {EXTRA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # RuntimeError from the zip reader on truncated or corrupt archives
        raise ExportError(f"{path}: not a loadable TorchScript model ({type(e).__name__}: {str(e)[:200]})") from e
    if not extra[EXTRA_FILE]:
        raise ExportError(f"{path}: TorchScript archive carries no driver metadata; export it with `driver export`")
    meta = json.loads(extra[EXTRA_FILE])
    return ScriptStepModel(module.eval(), meta), {**meta, "path": str(path)}
