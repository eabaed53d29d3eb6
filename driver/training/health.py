"""Training health: per-layer activation and gradient statistics, and checks that the model learns.

Every ``health_every`` steps the forward pass of every layer with parameters (convolutions, linear and
recurrent layers, norms) is measured, and after the backward pass its gradient:

| column | meaning |
|---|---|
| ``act_rms``, ``act_max`` | root mean square and largest magnitude of the layer's output |
| ``channel_ratio`` | the largest channel's mean magnitude / the median channel's: a few exploding channels |
| ``grad_norm``, ``weight_norm`` | L2 norms over the layer's parameters |

They go to ``health.csv`` and TensorBoard (``health/<column>/<layer>``). A norm layer's *input* is measured
too (``<layer>.input``): it is what the norm sees, e.g. the pooled encoder features before the RNN.
:func:`blown_up` names layers whose activations exploded: a few channels dominate (``channel_ratio``, over
the channels that are not dead, above ``MAX_CHANNEL_RATIO`` with ``act_max`` above ``MIN_BLOWUP``), any
activation that is not finite, or any above the training precision's cap (``ACTIVATION_CAPS``). Growth alone
is not flagged: a layer followed by a per-channel norm may grow its scale harmlessly (the norm removes it).
``first`` holds each layer's first ``act_max`` of the run, shown beside the current one.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .metrics import CsvLog, read_metrics

COLUMNS = ("step", "layer", "act_rms", "act_max", "channel_ratio", "grad_norm", "weight_norm")
MAX_CHANNEL_RATIO = 100.0
MIN_BLOWUP = 1000.0
# The largest activation a precision tolerates. fp16 (CUDA AMP without bf16) overflows at 65,504: the cap leaves
# the next layer's sums 6x headroom. bf16 and fp32 have float32's range and round every magnitude to the same
# relative precision, so a large scale costs nothing there; their cap only catches a diverging run long
# before it reaches inf (healthy runs measured so far peak at ~2.4e4: the demo's pooled features before the
# per-channel BatchNorm, docs/benchmarks.md, the balanced loss on the project's sim).
ACTIVATION_CAPS = {"fp16": 1e4, "bf16": 1e6, "fp32": 1e6}
_NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def _stats(t: torch.Tensor, channel_dim: int) -> dict:
    a = t.detach().float()
    channel_mean = a.abs().movedim(channel_dim, -1).reshape(-1, a.shape[channel_dim]).mean(0)
    active = channel_mean[channel_mean > 0]  # dead ReLU channels would make the median 0
    median = float(active.median()) if active.numel() else 0.0
    top = float(channel_mean.max())
    return {"act_rms": float(a.square().mean().sqrt()), "act_max": float(a.abs().max()),
            "channel_ratio": top / median if median > 0 else (math.inf if top > 0 else 1.0)}


def _channel_dim(module: nn.Module, t: torch.Tensor) -> int:
    return 1 if isinstance(module, nn.Conv2d | nn.BatchNorm2d | nn.GroupNorm) or t.dim() == 4 else -1


def measured_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that hold parameters themselves (conv, linear, RNN, norm), in model order."""
    return [(name, m) for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))]


class HealthMonitor:
    """Hooks that measure a model's layers on the steps where :meth:`measuring` is on; writes the rows."""

    def __init__(self, model: nn.Module, run_dir: Path | None, tensorboard=None):
        self.layers = measured_layers(model)
        self.rows: dict[str, dict] = {}
        self._on = False
        self._tb = tensorboard
        self._hooks = [m.register_forward_hook(self._hook(name)) for name, m in self.layers]
        self.csv = CsvLog(run_dir / "health.csv", COLUMNS, enabled=run_dir is not None) if run_dir else None
        self.first: dict[str, float] = {}  # each layer's first act_max of the run (resumed runs: from the CSV)
        if self.csv is not None and self.csv.path.exists():
            for row in read_metrics(self.csv.path):
                if row.get("act_max"):
                    self.first.setdefault(row["layer"], float(row["act_max"]))

    def _hook(self, name: str):
        def record(module, inputs, output):
            if not self._on:
                return
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, torch.Tensor) and out.numel():
                self.rows[name] = _stats(out, _channel_dim(module, out))
            if isinstance(module, _NORMS) and inputs and isinstance(inputs[0], torch.Tensor):
                self.rows[f"{name}.input"] = _stats(inputs[0], _channel_dim(module, inputs[0]))
        return record

    def start(self) -> None:
        """Measure the next forward pass."""
        self.rows, self._on = {}, True

    def finish(self, step: int) -> dict[str, dict]:
        """After backward: add gradient and weight norms, write the rows; returns {layer: stats}."""
        self._on = False
        for name, module in self.layers:
            params = list(module.parameters(recurse=False))
            grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
            row = self.rows.setdefault(name, {})
            row["grad_norm"] = float(torch.stack(grads).norm()) if grads else 0.0
            row["weight_norm"] = float(torch.stack([p.detach().float().norm() for p in params]).norm())
        self._write(step)
        for layer, row in self.rows.items():
            if "act_max" in row:
                self.first.setdefault(layer, row["act_max"])
        return self.rows

    def _write(self, step: int) -> None:
        if self.csv is not None:
            self.csv.write([{"step": step, "layer": layer, **row} for layer, row in self.rows.items()])
        if self._tb is not None:
            for layer, row in self.rows.items():
                for k, v in row.items():
                    if math.isfinite(v):
                        self._tb.add_scalar(f"health/{k}/{layer}", v, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint (they will be redone)."""
        if self.csv is not None:
            self.csv.truncate_after(step)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def blown_up(rows: dict[str, dict], first: dict[str, float] | None, precision: str) -> list[str]:
    """Layers whose activations exploded, described (see the module docstring); ``first``: each layer's
    first ``act_max`` of the run; ``precision``: the training's (``fp16``, ``bf16`` or ``fp32``), whose
    ``ACTIVATION_CAPS`` entry bounds any activation."""
    cap = ACTIVATION_CAPS[precision]
    out = []
    for layer, r in rows.items():
        if "act_max" not in r:
            continue
        top, start = r["act_max"], (first or {}).get(layer, math.inf)
        few = r["channel_ratio"] > MAX_CHANNEL_RATIO and top > MIN_BLOWUP
        if few or top > cap or not math.isfinite(top):
            growth = f", {top / start:,.0f}x its first value" if math.isfinite(start) and start > 0 else ""
            out.append(f"{layer}: largest activation {top:,.0f}{growth}, largest channel "
                       f"{r['channel_ratio']:,.0f}x the median channel")
    return out
