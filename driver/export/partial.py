"""Resumable compression: the model and masks after each finished pruning round, next to the output file.

A killed ``driver compress`` run again with the same checkpoint and settings goes on after the last
finished round (``OUT.partial.pt``) instead of starting over; the result is the same file an uninterrupted
run writes. A different checkpoint or different settings start over. The file is removed once the
``.dcz`` is written. It is a plain tensor dict, written atomically and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from driver.training.checkpoint import save_checkpoint

log = logging.getLogger(__name__)

FORMAT = "driver-compress-partial"
VERSION = 1
# Settings that do not change the compressed weights: a resumed run may differ in these.
NOT_IN_KEY = ("out", "workdir", "progress", "sim_tracks", "threads")


def partial_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial.pt")


def resume_key(settings: dict, model: nn.Module) -> str:
    """sha256 over the settings that shape the result and the starting weights."""
    h = hashlib.sha256(json.dumps({k: v for k, v in settings.items() if k not in NOT_IN_KEY}, sort_keys=True,
                                  default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_partial(out: str | os.PathLike, key: str, done_round: int, model: nn.Module, masks: dict[str, Tensor],
                 stages: dict, tune: dict) -> None:
    """Record the state after pruning round ``done_round`` (atomically; the previous one stays until then)."""
    partial_path(out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(partial_path(out), {
        "format": FORMAT, "version": VERSION, "key": key, "round": done_round,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "masks": {k: v.clone() for k, v in masks.items()},
        "report": json.dumps({"stages": stages, "tune": tune}, default=float)})


def load_partial(out: str | os.PathLike, key: str) -> dict | None:
    """The saved state for this exact job, or None (none saved, unreadable, or from another job: start over)."""
    path = partial_path(out)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
            raise ValueError("not a driver compression state")
        report = json.loads(state["report"])
    except Exception as e:  # truncated or foreign: the job is simply run from the start
        log.warning("%s: cannot resume from it (%s: %s); starting over", path, type(e).__name__, str(e)[:200])
        return None
    if state["key"] != key:
        log.warning("%s: saved by a run with another checkpoint or other settings; starting over", path)
        return None
    return {"round": int(state["round"]), "model": state["model"], "masks": state["masks"], **report}


def clear_partial(out: str | os.PathLike) -> None:
    partial_path(out).unlink(missing_ok=True)
