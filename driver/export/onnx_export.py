"""`driver export --format onnx`: the step model with state in and out, checked against PyTorch on real frames.

    report = export_onnx("runs/train/sq/best.pt", OnnxExportConfig(out="sq.onnx"))
    report.max_abs_diff   # over several steps of real frames, state carried; fp32 must be <= 1e-4

Inputs ``frame`` (B, C, H, W), ``modes`` (B, M) if the model has modes, ``h`` [``c``] (layers, B, hidden);
outputs ``out`` (B, horizon, 2), ``h_out`` [``c_out``]. The batch axis is dynamic (1 on the car). The
checkpoint's metadata (arch, spec, preprocess, units, ...) is stored as JSON in ``metadata_props["driver"]``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from driver.atomic_write import write_atomic
from driver.export.common import (
    StepModule,
    check_parity,
    input_names,
    model_metadata,
    output_names,
    parity_inputs,
    resolve_checkpoint,
    validate_parity,
)
from driver.export.ort_backend import META_KEY, OrtStepModel

log = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET = 14, 20


@dataclass
class OnnxExportConfig:
    """Where and how to export. ``tolerance`` is the max |Δ| allowed against PyTorch (fp32: 1e-4)."""

    out: str = ""  # output file (empty: beside the checkpoint, e.g. best.onnx)
    opset: int = 17  # ONNX opset
    tolerance: float = 1e-4  # max |diff| vs PyTorch
    parity_steps: int = 8  # recurrent steps compared against PyTorch per sequence
    parity_sequences: int = 2  # sequences of real frames compared against PyTorch
    dynamic_batch: bool = True  # ONNX: a dynamic batch dimension
    threads: int = 1  # ONNX Runtime threads of the parity check

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ValueError(f"opset={self.opset} must be in {MIN_OPSET}..{MAX_OPSET}")
        validate_parity(self.tolerance, self.parity_steps, self.parity_sequences)
        if not 1 <= self.threads <= 256:
            raise ValueError(f"threads={self.threads} must be in 1..256")


@dataclass
class ExportReport:
    path: str
    format: str
    bytes: int
    max_abs_diff: float
    tolerance: float
    steps_checked: int
    frames: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def example_args(model: nn.Module, batch: int = 1) -> tuple[torch.Tensor, ...]:
    spec = model.spec
    args = [torch.zeros(batch, spec.channels, spec.height, spec.width)]
    if spec.n_modes:
        args.append(torch.zeros(batch, spec.n_modes))
    if getattr(model, "speed_input", False):
        args.append(torch.ones(batch))  # m/s
    if getattr(model, "is_recurrent", False):
        state = model.initial_state(batch)
        args.extend([state] if isinstance(state, torch.Tensor) else list(state))
    return tuple(args)


def onnx_bytes(model: nn.Module, meta: dict, config: OnnxExportConfig) -> bytes:
    """Trace ``model.step`` to ONNX (TorchScript exporter, ``dynamo=False``) and attach the metadata."""
    import onnx

    wrapper = StepModule(model).eval()
    names_in, names_out = input_names(model), output_names(model)
    dynamic = None
    if config.dynamic_batch:
        dynamic = {n: {0: "batch"} for n in ("frame", "modes", "speed", "out") if n in names_in + names_out}
        dynamic.update({n: {1: "batch"} for n in names_in[1:] + names_out[1:] if n not in ("modes", "speed")})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(wrapper, example_args(model), buffer, dynamo=False, opset_version=config.opset,
                          input_names=names_in, output_names=names_out, dynamic_axes=dynamic,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    set_metadata(proto, meta)
    return proto.SerializeToString()


def set_metadata(proto, meta: dict) -> None:
    """Replace the ``driver`` entry of ``metadata_props`` with ``meta`` as JSON."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    for key, value in [*keep, (META_KEY, json.dumps(meta, default=str))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def export_onnx(source: str | os.PathLike | dict, config: OnnxExportConfig) -> ExportReport:
    """Export a checkpoint's model to ``config.out``; raises :class:`ExportError` if parity fails."""
    if not config.out:
        raise ValueError("out is empty: name the .onnx file to write")
    ckpt, model = resolve_checkpoint(source)
    meta = model_metadata(ckpt, model)
    data = onnx_bytes(model, meta, config)
    backend = OrtStepModel(data, meta, threads=config.threads, name=config.out)
    seqs, frames = parity_inputs(ckpt, model, config.parity_steps, config.parity_sequences)
    delta = check_parity(model.step, backend.step, model, seqs, config.tolerance, f"{config.out} (onnx)")
    meta["parity"] = {"max_abs_diff": delta, "tolerance": config.tolerance, "frames": frames,
                      "steps": config.parity_steps * config.parity_sequences}
    import onnx

    proto = onnx.load_from_string(data)
    set_metadata(proto, meta)
    data = proto.SerializeToString()
    write_atomic(config.out, data)
    log.info("exported %s (%s, %.1f KB): max |Δ| %.2e vs PyTorch over %d steps of %s", config.out, model.arch,
             len(data) / 1e3, delta, config.parity_steps * config.parity_sequences, frames)
    return ExportReport(config.out, "onnx", len(data), delta, config.tolerance,
                        config.parity_steps * config.parity_sequences, frames)
