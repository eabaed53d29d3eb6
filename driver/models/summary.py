"""Parameter counts and FLOPs of every registered model, for ``driver models`` and the benchmark."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from driver.models.registry import create_model, list_models
from driver.models.spec import InputSpec

logger = logging.getLogger(__name__)

aten = torch.ops.aten


def _lstm_flops(input_shape, hx, params, *args, out_shape=None, **kwargs) -> int:
    """``aten.lstm.input``: 2 FLOPs per multiply-add of every weight matrix, per sequence element."""
    elements = input_shape[0] * input_shape[1] if len(input_shape) == 3 else input_shape[0]
    return 2 * elements * sum(shape[0] * shape[1] for shape in params if len(shape) == 2)


def _mkldnn_rnn_layer_flops(input_shape, weight_ih, weight_hh, *args, out_shape=None, **kwargs) -> int:
    """``aten.mkldnn_rnn_layer`` (one LSTM layer, the CPU kernel): weights (4h, in) and (4h, h)."""
    elements = input_shape[0] * input_shape[1] if len(input_shape) == 3 else input_shape[0]
    return 2 * elements * (weight_ih[0] * weight_ih[1] + weight_hh[0] * weight_hh[1])


# FlopCounterMode has no formula for the fused CPU LSTM kernels (GRU decomposes into counted matmuls).
RNN_FLOP_FORMULAS = {aten.lstm: _lstm_flops, aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops}


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def flops_per_frame(model: nn.Module, spec: InputSpec) -> int:
    """FLOPs of one batch-1 frame through ``model`` (for recurrent models: one ``step``), eval mode."""
    frame = torch.zeros(1, spec.channels, spec.height, spec.width)
    modes = torch.zeros(1, spec.n_modes) if spec.n_modes else None
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=RNN_FLOP_FORMULAS)
        with torch.no_grad(), counter:
            model.step(frame, modes, model.initial_state(1))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def model_rows(spec: InputSpec) -> list[dict[str, Any]]:
    """One row per registered architecture: arch, params, mflops_per_frame, recurrent.

    Architectures that cannot take ``spec`` (input too small) get ``params``/``mflops_per_frame`` None
    and a ``note`` with the reason.
    """
    rows = []
    for name in list_models():
        try:
            model = create_model(name, spec)
        except ValueError as error:
            logger.warning("%s", error)
            row = {"arch": name, "params": None, "mflops_per_frame": None, "recurrent": None}
            rows.append({**row, "note": str(error)})
            continue
        rows.append(
            {
                "arch": name,
                "params": count_parameters(model),
                "mflops_per_frame": flops_per_frame(model, spec) / 1e6,
                "recurrent": bool(model.is_recurrent),
            }
        )
    return rows


def format_model_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`model_rows`."""
    header = ("arch", "params", "MFLOPs/frame", "recurrent")
    body = []
    for row in rows:
        if row["params"] is None:
            body.append((row["arch"], "-", "-", "input too small"))
            continue
        recurrent = "yes" if row["recurrent"] else "no"
        body.append((row["arch"], f"{row['params']:,}", f"{row['mflops_per_frame']:.1f}", recurrent))
    widths = [max(len(line[column]) for line in (header, *body)) for column in range(len(header))]

    def render(line: tuple[str, ...]) -> str:
        numbers = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        cells = [line[0].ljust(widths[0]), *numbers]
        return "  ".join(cells).rstrip()

    separator = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), separator, *(render(line) for line in body)])
