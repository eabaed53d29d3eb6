"""Checkpoints that carry everything needed to use or resume a model, written atomically, loaded safely.

A checkpoint is a ``torch.save`` dict of tensors and plain containers only, so it loads with
``torch.load(weights_only=True)`` (no arbitrary pickle). It holds the weights, the architecture name,
its :class:`InputSpec` and kwargs, the resolved training config, the input normalisation, the run-unit
mapping and the dataset fingerprint; ``last.pt`` also holds the optimizer, scheduler, sampler position,
RNG and carried recurrent state for an exact resume.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import torch
from torch import nn

from driver.models import InputSpec, create_model, legacy_kwargs
from driver.units import RUN_MAX, RUN_MIN, RUN_NEUTRAL

FORMAT = "driver-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, not ours, or does not fit; names the file."""


def dataset_fingerprint(store, runs: list[str]) -> str:
    """sha256 over the runs' names and source sha256s: identifies the training data exactly."""
    h = hashlib.sha256()
    for r in sorted(runs):
        h.update(f"{r}:{store.run_meta(r)['source']['sha256']}\n".encode())
    return h.hexdigest()


def preprocess_info(spec: InputSpec, cameras: tuple[str, ...], modes: tuple[str, ...]) -> dict:
    """How frames become model input (driver.preprocess.frames_to_input) for this model."""
    return {"scale": 1.0 / 255.0, "offset": -0.5, "order": "time-major views, RGB", "cameras": list(cameras),
            "stack": spec.stack, "height": spec.height, "width": spec.width, "modes": list(modes)}


UNITS = {"neutral": RUN_NEUTRAL, "below": RUN_NEUTRAL - RUN_MIN, "above": RUN_MAX - RUN_NEUTRAL,
         "run_range": [RUN_MIN, RUN_MAX],
         "doc": "norm = (v-49)/49 below neutral, (v-49)/50 above; per-mille = 1000*norm (driver.units)"}


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def model_payload(model: nn.Module) -> dict:
    m = unwrap(model)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": m.arch, "spec": vars(m.spec).copy(),
            "arch_kwargs": dict(m.arch_kwargs), "model": {k: v.detach().cpu() for k, v in m.state_dict().items()}}


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write atomically: a temp file in the same folder, fsync, then rename over ``path``.

    On any error (disk full included) the temp file is removed and the previous checkpoint is intact.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load safely (``weights_only=True``) and check it is a driver checkpoint of a known version."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or pickles objects we refuse to load
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a driver checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {ckpt.get('format_version')} is not supported "
                              f"(this driver reads {FORMAT_VERSION})")
    ckpt["path"] = str(path)
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model of a checkpoint and load its weights (eval mode, CPU)."""
    spec = InputSpec(**ckpt["spec"])
    model = create_model(ckpt["arch"], spec, **legacy_kwargs(ckpt["arch"], ckpt["arch_kwargs"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: weights do not fit {ckpt['arch']} "
                              f"with {spec}: {str(e)[:300]}") from e
    return model.eval()


def check_compatible(ckpt: dict, arch: str, spec: InputSpec) -> None:
    """Refuse to continue a checkpoint with another architecture or input shape."""
    where = ckpt.get("path", "checkpoint")
    if ckpt["arch"] != arch:
        raise CheckpointError(f"{where}: checkpoint is arch {ckpt['arch']!r}, the run asks for {arch!r}")
    if InputSpec(**ckpt["spec"]) != spec:
        raise CheckpointError(f"{where}: checkpoint input {InputSpec(**ckpt['spec'])} does not match the data "
                              f"({spec}); another image size, camera count, stacking, modes or horizon")
