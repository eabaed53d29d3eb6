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
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from driver.atomic_write import atomic_path
from driver.errors import DriverError
from driver.export.meta import check_preprocess, check_spec
from driver.file_checks import GiB, check_size, check_zip, require
from driver.models import InputSpec, create_model, legacy_kwargs
from driver.units import RUN_MAX, RUN_MIN, RUN_NEUTRAL

FORMAT = "driver-checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 4 * GiB  # AlexNet's last.pt with Adam state is ~0.4 GB


class CheckpointError(DriverError, ValueError):
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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _unpickle_refusal(error: Exception) -> str:
    """What torch's weights-only unpickler refused, without its advice to turn the protection off."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if m:
        return f"it holds Python objects ({m.group(1)}) that safe loading refuses"
    m = re.search(r"Unsupported operand (\d+)", str(error))
    if m:
        return f"it is a plain pickle (operand {m.group(1)}), not a torch.save archive"
    return "safe loading refuses its contents"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load safely (``weights_only=True``, bounded) and check it is a driver checkpoint of a known version.

    Before torch reads anything: the file is at most :data:`MAX_CHECKPOINT_BYTES` and a zip archive of stored
    entries whose declared sizes fit that bound. Afterwards every field a checkpoint must have is checked.
    Every failure is a :class:`CheckpointError` naming the file, never torch's own advice or warnings.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    check_size(path, MAX_CHECKPOINT_BYTES, "checkpoint", CheckpointError)
    with open(path, "rb") as f:
        if f.read(1) == b"\x80":  # the pickle protocol opcode: a bare pickle, never unpickled here
            raise CheckpointError(f"{path}: not a driver checkpoint: a plain pickle, not a torch.save archive")
    check_zip(path, MAX_CHECKPOINT_BYTES, "checkpoint", CheckpointError, stored_only=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the unpickler's protocol warning on a foreign pickle
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: not a driver checkpoint: {_unpickle_refusal(e)}") from None
    except Exception as e:  # truncated or corrupt archive
        reason = " ".join(str(e).split()).split(". ")[0][:200]
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a driver checkpoint (no format {FORMAT!r})")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {ckpt.get('format_version')} is not supported "
                              f"(this driver reads {FORMAT_VERSION})")
    check_fields(ckpt, str(path))
    ckpt["path"] = str(path)
    return ckpt


def check_fields(ckpt: dict, where: str) -> None:
    """The fields every driver checkpoint has (model_payload + preprocess), with their types."""
    require(ckpt, "arch", str, where, CheckpointError)
    check_spec(require(ckpt, "spec", dict, where, CheckpointError), where, CheckpointError)
    require(ckpt, "arch_kwargs", dict, where, CheckpointError)
    weights = require(ckpt, "model", dict, where, CheckpointError)
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise CheckpointError(f"{where}: 'model' must map parameter names to tensors")
    if "preprocess" not in ckpt:
        raise CheckpointError(f"{where}: checkpoint has no 'preprocess' (how frames become model input); it was "
                              "not written by `driver train`")
    check_preprocess(ckpt["preprocess"], where, CheckpointError)
    for key in ("config", "dataset", "units", "metrics", "training"):
        if key in ckpt:
            require(ckpt, key, dict, where, CheckpointError)


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model of a checkpoint and load its weights (eval mode, CPU)."""
    return build_model(ckpt["arch"], ckpt["spec"], ckpt["arch_kwargs"], ckpt["model"], ckpt.get("path", "checkpoint"),
                       CheckpointError)


def build_model(arch: str, spec: dict, arch_kwargs: dict, weights: dict, where: str,
                error: type[Exception]) -> nn.Module:
    """The model ``arch`` for ``spec`` with ``weights`` loaded (eval mode), or ``error`` naming ``where``.

    The architecture is first built on the meta device (no memory) and its tensor shapes compared with the
    weights, so a file that declares a huge input (an FC layer of billions of weights) costs nothing: the
    real model is only allocated once it is known to be exactly as big as the weights the file holds.
    """
    try:
        spec_ = InputSpec(**spec)
        arch_kwargs = legacy_kwargs(arch, arch_kwargs)  # files from before a knob existed
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on zero-element layers: the shapes decide below
            shell = create_model(arch, spec_, **arch_kwargs)
    except Exception as e:  # noqa: BLE001 - the builder runs on untrusted arch_kwargs (unknown, inf, negative, ...)
        raise error(f"{where}: cannot rebuild the model ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:300]})") from None
    want = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if want != got:
        missing = sorted(set(want) - set(got))[:3]
        unexpected = sorted(set(got) - set(want))[:3]
        shapes = [f"{k} {got[k]} != {want[k]}" for k in sorted(set(want) & set(got)) if want[k] != got[k]][:2]
        raise error(f"{where}: weights do not fit {arch} with {spec_}: missing {missing}, unexpected {unexpected}, "
                    f"shapes {shapes}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(arch, spec_, **arch_kwargs)
    model.load_state_dict(weights)
    return model.eval()


def check_compatible(ckpt: dict, arch: str, spec: InputSpec) -> None:
    """Refuse to continue a checkpoint with another architecture or input shape."""
    where = ckpt.get("path", "checkpoint")
    if ckpt["arch"] != arch:
        raise CheckpointError(f"{where}: checkpoint is arch {ckpt['arch']!r}, the run asks for {arch!r}")
    if InputSpec(**ckpt["spec"]) != spec:
        raise CheckpointError(f"{where}: checkpoint input {InputSpec(**ckpt['spec'])} does not match the data "
                              f"({spec}); another image size, camera count, stacking, modes or horizon")
