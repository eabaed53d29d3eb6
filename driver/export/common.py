"""What every exporter shares: the export error, the model's metadata, the state-flattening step wrapper,
parity frames (real ones from the checkpoint's store when it is there) and held-out metrics.

The step interface being exported is the one in :mod:`driver.models.base`::

    model.step(frame (B, C, H, W), modes (B, M) | None, state, speed (B,) | None) -> (out (B, horizon, 2), new_state)

with ``state`` ``(h, c)`` (LSTM) or ``h`` (GRU), each (layers, B, hidden) float32, and None for frame-wise
models; ``speed`` (m/s) only for models trained with speed input. :class:`StepModule` flattens that into
positional tensors so ONNX and TorchScript see ``frame, [modes], [speed], *state -> out, *new_state``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from driver.export.meta import META_FORMAT, META_VERSION, ExportError
from driver.training.checkpoint import load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)

META_KEYS = ("arch", "spec", "arch_kwargs", "preprocess", "units", "metrics", "precision", "label_stats")


class StepModule(nn.Module):
    """``model.step`` with flat tensor inputs and outputs: ``frame, [modes], [speed], *state -> out, *new_state``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.has_modes = model.spec.n_modes > 0
        self.has_speed = bool(getattr(model, "speed_input", False))
        self.state_names = state_names(model)

    def forward(self, frame: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        modes = rest[0] if self.has_modes else None
        flat = rest[1:] if self.has_modes else rest
        speed = flat[0] if self.has_speed else None
        flat = flat[1:] if self.has_speed else flat
        state = None if not flat else (flat[0] if len(flat) == 1 else tuple(flat))
        out, new_state = self.model.step(frame, modes, state, speed=speed)
        if new_state is None:
            return (out,)
        return (out, new_state) if isinstance(new_state, Tensor) else (out, *new_state)


def state_names(model: nn.Module) -> list[str]:
    """Names of the state tensors: ``["h", "c"]`` (LSTM), ``["h"]`` (GRU), ``[]`` (frame-wise)."""
    if not getattr(model, "is_recurrent", False):
        return []
    return ["h", "c"] if getattr(model, "cell", "") == "lstm" else ["h"]


def input_names(model: nn.Module) -> list[str]:
    speed = ["speed"] if getattr(model, "speed_input", False) else []
    return ["frame"] + (["modes"] if model.spec.n_modes > 0 else []) + speed + state_names(model)


def output_names(model: nn.Module) -> list[str]:
    return ["out"] + [f"{name}_out" for name in state_names(model)]


def flat_state(state: Any) -> list[Tensor]:
    """None / Tensor / tuple of Tensors -> list of tensors."""
    if state is None:
        return []
    return [state] if isinstance(state, Tensor) else list(state)


def model_metadata(ckpt: dict, model: nn.Module) -> dict:
    """JSON-serialisable metadata that lets ``load_policy`` use an exported file with no other file."""
    meta: dict[str, Any] = {"format": META_FORMAT, "version": META_VERSION}
    for key in META_KEYS:
        if key in ckpt:
            meta[key] = ckpt[key]
    meta["config"] = {"channels_last": False}  # exported runtimes take plain NCHW arrays
    meta["source_config"] = ckpt.get("config", {})
    meta["dataset"] = {k: v for k, v in ckpt.get("dataset", {}).items() if k in ("store", "fingerprint", "val_runs",
                                                                               "train_runs")}
    meta["source_checkpoint"] = str(ckpt.get("path", ""))
    meta["inputs"], meta["outputs"] = input_names(model), output_names(model)
    meta["state"] = {"names": state_names(model), "layers": getattr(model, "num_layers", 0),
                     "hidden": getattr(model, "hidden_size", 0)}
    return meta


def resolve_checkpoint(source: str | os.PathLike | dict) -> tuple[dict, nn.Module]:
    """A checkpoint path or an already loaded checkpoint dict -> (checkpoint, eval-mode CPU model)."""
    ckpt = source if isinstance(source, dict) else load_checkpoint(source)
    return ckpt, model_from_checkpoint(ckpt).float().eval()


def _store_reachable(store: str | None) -> bool:
    """The checkpoint's store is there to read: a folder that exists, or an object-storage URL."""
    from driver.datasets.storage import is_remote

    return bool(store) and (is_remote(store) or Path(store).exists())


def _store_frames(ckpt: dict, steps: int, sequences: int, speed: bool = False
                  ) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """(sequences, steps, V, H, W, 3) uint8, (sequences, M) modes and, with ``speed``, the runs' speed series
    (sequences, steps) m/s from the checkpoint's store, or None."""
    store_path = ckpt.get("dataset", {}).get("store")
    if not _store_reachable(store_path):
        return None
    from driver.datasets.clips import ClipConfig, ClipDataset

    pre = ckpt["preprocess"]
    try:
        runs = list(ckpt["dataset"].get("val_runs") or []) or None
        clip = ClipConfig(clip_length=steps, cameras=tuple(pre["cameras"]), stack=int(pre["stack"]), horizon=1,
                          modes=tuple(pre["modes"]) or ("direct",), exclude_labels=(), speed=speed)
        ds = ClipDataset(store_path, clip, runs=runs)
        if len(ds) == 0:
            return None
        picks = np.linspace(0, len(ds) - 1, sequences).astype(int)
        items = [ds[int(i)] for i in picks]
    except (ValueError, OSError, KeyError) as e:  # a moved or changed store: fall back to synthetic frames
        log.warning("%s: cannot read parity frames (%s); using synthetic frames", store_path, e)
        return None
    frames = torch.stack([item["frames"] for item in items])
    modes = torch.stack([item["modes"] for item in items])
    return frames, modes, torch.stack([item["speed"] for item in items]) if speed else None


def parity_inputs(ckpt: dict, model: nn.Module, steps: int = 8, sequences: int = 2,
                  seed: int = 0) -> tuple[list[tuple[Tensor, Tensor | None]], str]:
    """Sequences of (frame (1, C, H, W) float, modes (1, M) | None) for parity checks, and their source.

    Real frames come from the checkpoint's store (its held-out runs when recorded); otherwise seeded
    synthetic uint8 frames go through the same :func:`~driver.preprocess.frames_to_input`.
    """
    seqs, _, source = parity_inputs_with_speed(ckpt, model, steps, sequences, seed)
    return seqs, source


def parity_inputs_with_speed(ckpt: dict, model: nn.Module, steps: int = 8, sequences: int = 2, seed: int = 0
                             ) -> tuple[list[tuple[Tensor, Tensor | None]], Tensor | None, str]:
    """:func:`parity_inputs` and, for a speed-input model, the speeds (sequences, steps) m/s to feed beside
    them: the store runs' own speed series where the frames come from the store, else :func:`parity_speed`."""
    from driver.preprocess import frames_to_input

    spec = model.spec
    views = spec.cameras * spec.stack
    wants_speed = bool(getattr(model, "speed_input", False))
    real = _store_frames(ckpt, steps, sequences, speed=wants_speed)
    speeds = torch.stack([torch.cat([parity_speed(t) for t in range(steps)])] * sequences) if wants_speed else None
    if real is not None:
        frames, modes, store_speeds = real
        speeds = store_speeds if wants_speed else None
        source = f"store {ckpt['dataset']['store']}"
    else:
        gen = torch.Generator().manual_seed(seed)
        frames = torch.randint(0, 256, (sequences, steps, views, spec.height, spec.width, 3), generator=gen,
                               dtype=torch.uint8)
        modes = torch.zeros(sequences, max(spec.n_modes, 1))
        modes[:, 0] = 1.0
        source = "synthetic frames"
    x = frames_to_input(frames, channels_last=False)  # (S, T, C, H, W)
    seqs = []
    for s in range(sequences):
        m = modes[s : s + 1, : spec.n_modes].float() if spec.n_modes else None
        seqs.append([(x[s, t : t + 1].contiguous(), m) for t in range(steps)])
    return seqs, speeds, source


def parity_speed(t: int) -> Tensor:
    """The car's speed (m/s) fed at step ``t`` of a parity sequence to a speed-input model: 0.5..2.6 m/s."""
    return torch.tensor([0.5 + 0.3 * (t % 8)])


def run_sequences(step_fn, model: nn.Module, seqs: list) -> list[Tensor]:
    """Outputs of ``step_fn(frame, modes, state[, speed=])`` over each sequence, state carried (speed
    :func:`parity_speed` for speed-input models); (S*T, horizon, 2)."""
    outs = []
    speed = bool(getattr(model, "speed_input", False))
    for seq in seqs:
        state = None
        for t, (frame, modes) in enumerate(seq):
            kw = {"speed": parity_speed(t)} if speed else {}
            out, state = step_fn(frame, modes, state, **kw)
            outs.append(torch.as_tensor(np.asarray(out)).float().reshape(-1, model.spec.horizon, 2))
    return outs


@torch.no_grad()
def check_parity(reference, candidate, model: nn.Module, seqs: list, tolerance: float, what: str) -> float:
    """Max |Δ| of ``candidate`` against ``reference`` over the sequences; raises ExportError past tolerance."""
    ref = torch.cat(run_sequences(reference, model, seqs))
    got = torch.cat(run_sequences(candidate, model, seqs))
    delta = float((ref - got).abs().max())
    if not np.isfinite(delta) or delta > tolerance:
        raise ExportError(f"{what}: parity check failed, max |Δ| = {delta:.3g} > tolerance {tolerance:g} "
                          f"over {len(ref)} steps; the exported model does not match PyTorch")
    return delta


class SequenceAdapter(nn.Module):
    """Makes a step-only backend look like a model's clip ``forward`` for :func:`heldout_metrics`."""

    def __init__(self, step_model: Any) -> None:
        super().__init__()
        self.step_model = step_model
        self.is_recurrent = bool(getattr(step_model, "is_recurrent", False))

    def forward(self, clip: Tensor, modes: Tensor | None = None, state: Any = None,
                speed: Tensor | None = None) -> tuple[Tensor, Any]:
        outs = []
        for t in range(clip.shape[1]):
            kw = {"speed": speed[:, t]} if getattr(self.step_model, "speed_input", False) else {}
            out, state = self.step_model.step(clip[:, t].contiguous(), modes, state, **kw)
            outs.append(torch.as_tensor(out))
        return torch.stack(outs, dim=1), state


def heldout_metrics(net: Any, ckpt: dict, max_clips: int = 512) -> dict:
    """Held-out loss and steering/throttle MAE (run units) of ``net`` on the checkpoint's validation runs.

    ``net`` is a torch model or anything with ``.step`` (wrapped in :class:`SequenceAdapter`). Uses
    :func:`driver.training.evaluate.evaluate` on the runs the checkpoint held out; {} when there are none.
    """
    from driver.datasets.clips import ClipDataset
    from driver.training import evaluate as ev
    from driver.training.config import TrainConfig
    from driver.training.distributed import DistInfo
    from driver.training.recipe import clip_config

    dataset = ckpt.get("dataset", {})
    val_runs = list(dataset.get("val_runs") or [])
    if not val_runs or not _store_reachable(dataset.get("store")):
        return {}
    config = TrainConfig.from_dict({**ckpt["config"], "channels_last": False})
    config = TrainConfig.from_dict({**config.to_dict(), "val_clips": max_clips})
    ds = ClipDataset(dataset["store"], clip_config(config, train=False), runs=val_runs)
    if not isinstance(net, nn.Module):
        net = SequenceAdapter(net)
    return ev.evaluate(net, ds, config, torch.device("cpu"), contextlib.nullcontext, DistInfo())


def validate_parity(tolerance: float, steps: int, sequences: int) -> None:
    """The parity-check settings every exporter takes, with messages naming the field and its range."""
    if not 0.0 < tolerance <= 1.0:
        raise ValueError(f"tolerance={tolerance} must be in (0, 1]")
    if not 1 <= steps <= 1000:
        raise ValueError(f"parity_steps={steps} must be in 1..1000")
    if not 1 <= sequences <= 100:
        raise ValueError(f"parity_sequences={sequences} must be in 1..100")

