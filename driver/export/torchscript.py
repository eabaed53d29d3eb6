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
import pickletools
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from driver.atomic_write import write_atomic
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
from driver.export.meta import check_metadata
from driver.export.onnx_export import ExportReport, example_args
from driver.export.ort_backend import parse_metadata
from driver.file_checks import GiB, check_size, check_zip
from driver.models.base import require_speed
from driver.models.spec import InputSpec

log = logging.getLogger(__name__)

EXTRA_FILE = "driver.json"
MAX_TORCHSCRIPT_BYTES = 2 * GiB


@dataclass
class TorchScriptConfig:
    out: str = ""  # output file (empty: beside the checkpoint, e.g. best.onnx)
    tolerance: float = 1e-4  # max |diff| vs PyTorch
    parity_steps: int = 8  # recurrent steps compared against PyTorch per sequence
    parity_sequences: int = 2  # sequences of real frames compared against PyTorch
    freeze: bool = True  # torch.jit.freeze: constant weights, faster at batch 1

    def __post_init__(self) -> None:
        validate_parity(self.tolerance, self.parity_steps, self.parity_sequences)


class ScriptStepModel:
    """A TorchScript step module behind the torch step interface (``step``, ``is_recurrent``, ``eval``, ``to``)."""

    def __init__(self, module: torch.jit.ScriptModule, meta: dict) -> None:
        self.module, self.meta = module, check_metadata(meta, "TorchScript model")
        self.spec = InputSpec(**meta["spec"])
        self.state_names = list(meta["state"]["names"])
        self.is_recurrent = bool(self.state_names)
        self.num_layers, self.hidden_size = int(meta["state"]["layers"]), int(meta["state"]["hidden"])
        self.speed_input = "speed" in meta["inputs"]  # the car's speed (m/s) is an input

    def initial_state(self, batch_size: int, device: Any = None) -> Any:
        if not self.is_recurrent:
            return None
        zeros = [torch.zeros(self.num_layers, batch_size, self.hidden_size) for _ in self.state_names]
        return zeros[0] if len(zeros) == 1 else tuple(zeros)

    @torch.no_grad()
    def step(self, frame: Tensor, modes: Tensor | None = None, state: Any = None,
             speed: Tensor | None = None) -> tuple[Tensor, Any]:
        args = [frame.float()]
        if self.spec.n_modes:
            args.append(torch.zeros(frame.shape[0], self.spec.n_modes) if modes is None else modes.float())
        if self.speed_input:
            args.append(require_speed(self.meta["arch"], speed, (frame.shape[0],)))
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


_PUSH_INT = {"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4"}
_PUSH_STR = {"BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINUNICODE8"}


def check_archive(path: Path, entries: list[zipfile.ZipInfo]) -> None:
    """What torch's C++ reader trusts, checked first: every entry's CRC-32, every pickle well formed, and every
    tensor storage a pickle declares no larger than the record that holds it (a damaged pickle declaring a
    huge storage or string would otherwise be allocated before the read fails)."""
    sizes = {e.filename: e.file_size for e in entries}
    try:
        with zipfile.ZipFile(path) as z, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickletools decodes protocol-0 strings with Python's escape rules
            for e in entries:
                data = z.read(e.filename)  # verifies the entry's CRC-32
                if e.filename.endswith((".pkl", "data.pkl")) and not e.filename.endswith(".debug_pkl"):
                    _check_pickle(data, e.filename, sizes, path)
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
        raise ExportError(f"{path}: not a loadable TorchScript model ({' '.join(str(e).split())[:200]})") from None


def _check_pickle(data: bytes, name: str, sizes: dict[str, int], path: Path) -> None:
    folder = name.rsplit("/", 1)[0] + "/" + ("constants" if name.endswith("constants.pkl") else "data")
    recent: list[tuple[str, object]] = []
    for op, arg, _ in pickletools.genops(data):  # ValueError when an argument runs past the end
        if op.name in _PUSH_INT or op.name in _PUSH_STR:
            recent = [*recent[-5:], (op.name, arg)]
        elif op.name == "BINPERSID":
            keys = [a for kind, a in recent if kind in _PUSH_STR and a not in ("storage", "cpu")]
            numels = [a for kind, a in recent if kind in _PUSH_INT]
            record = f"{folder}/{keys[-1]}" if keys else ""
            if not keys or not numels or record not in sizes or not 0 <= numels[-1] <= sizes[record]:
                raise ValueError(f"entry {name!r} declares a storage its archive does not hold ({record!r}, "
                                 f"{numels[-1] if numels else '?'} elements)")
            recent = []


def load_torchscript_model(path: str | os.PathLike) -> tuple[ScriptStepModel, dict]:
    """(backend, metadata) from a file written by :func:`export_torchscript`; errors name the file.

    Bounded like a checkpoint (size, a zip of stored entries, declared sizes) before torch reads it; the
    metadata is checked field by field.
    """
    path = Path(path)
    check_size(path, MAX_TORCHSCRIPT_BYTES, "TorchScript model", ExportError)
    entries = check_zip(path, MAX_TORCHSCRIPT_BYTES, "TorchScript model", ExportError)
    if not any(e.filename.endswith(f"extra/{EXTRA_FILE}") for e in entries):
        raise ExportError(f"{path}: TorchScript archive carries no driver metadata; export it with `driver export`")
    check_archive(path, entries)
    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.13 deprecates torch.jit
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # RuntimeError from the zip reader or the TorchScript parser
        reason = " ".join(str(e).split()).split(". ")[0][:200]
        raise ExportError(f"{path}: not a loadable TorchScript model ({type(e).__name__}: {reason})") from None
    text = extra[EXTRA_FILE]
    meta = parse_metadata(text.decode("utf-8", "replace") if isinstance(text, bytes) else text, str(path))
    return ScriptStepModel(module.eval(), meta), {**meta, "path": str(path)}
