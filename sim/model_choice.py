"""Model choice by driving: score a model during training by driving held-out worlds, not by its loss.

``driver train --eval-closed-loop TRACKS --every N`` calls :func:`drive_score` on a copy of the model being
trained: the model drives ``TRACKS`` eval-split tracks, each in its own eval-split variant (held-out tracks
AND held-out looks: the train and eval splits draw from disjoint random streams, :mod:`.variant`), on the
dynamic car, at the training data's frame rate and frame size, for at most ``seconds`` of simulated time
per world (one lap at most). The score is ``pace × max(autonomy, 0) / 100``: the distance covered per
second against the clean expert's on the same world, times the share of time without interventions
(:mod:`.scoring`; PilotNet's autonomy goes below 0 when interventions × 6 s exceed the time driven, which
short drives of an early model do, so it is clamped at 0). ``best.pt`` is the model with the highest
score; a tie keeps the earlier model.

:func:`rank_disagreement` says how often the open-loop validation loss and the closed-loop score order
two evaluations differently (the question model choice by driving answers).
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from driver.policy import Policy

from .closed_loop import ClosedLoopConfig, drive_closed_loop
from .policy_controller import PolicyController

log = logging.getLogger(__name__)


def parse_tracks(text: str) -> int | list[int]:
    """``"3"`` -> 3 (eval tracks 0, 1, 2); ``"1,4,7"`` -> [1, 4, 7]; raises ValueError naming the value."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"eval_closed_loop={text!r} must be a count of held-out tracks (e.g. 3) or "
                         "comma-separated track seeds (e.g. 1,4,7)")
    if len(parts) == 1:
        if not 1 <= seeds[0] <= 100:
            raise ValueError(f"eval_closed_loop={text!r}: a count of tracks must be in 1..100")
        return seeds[0]
    return seeds


@dataclass
class DriveEvalConfig:
    """Where and how long a model in training drives (see the module docstring)."""

    tracks: int | list[int]
    fps: float
    height: int
    width: int
    stereo: bool = False
    seconds: float = 30.0
    mode: str | None = "direct"
    seed: int = 0

    def loop_config(self) -> ClosedLoopConfig:
        return ClosedLoopConfig(tracks=self.tracks, split="eval", car="dynamic", laps=1.0, fps=self.fps,
                                height=self.height, width=self.width, stereo=self.stereo,
                                max_seconds=self.seconds, video_frames=0, seed=self.seed)


def drive_score(model, checkpoint: dict, config: DriveEvalConfig) -> dict:
    """Drive a copy of ``model`` (in eval mode on the CPU; the model itself is untouched) through the held-out
    worlds. ``checkpoint``: what :class:`~driver.policy.Policy` needs (``arch``, ``preprocess``, ``config``).
    Returns ``drive_score`` (pace × max(autonomy, 0) / 100), ``drive_autonomy`` (%) and ``drive_pace``."""
    policy = Policy(copy.deepcopy(model).float().cpu(), checkpoint, device="cpu")
    result = drive_closed_loop(PolicyController(policy, config.mode), config.loop_config())
    pace = result.pace or 0.0
    return {"drive_score": pace * max(result.autonomy, 0.0) / 100.0, "drive_autonomy": result.autonomy,
            "drive_pace": pace}


def is_better(score: float, best: float) -> bool:
    """Whether a drive ``score`` beats the ``best`` so far (a tie keeps the earlier model)."""
    return score > best


def pick_best(checkpoints: list[str | os.PathLike], config: DriveEvalConfig) -> tuple[Path, list[dict]]:
    """Drive every checkpoint through the same held-out worlds; (the best one by the drive score, the
    scores in the order given). The choice ``driver train --eval-closed-loop`` makes during training."""
    from driver.training.checkpoint import load_checkpoint, model_from_checkpoint

    if not checkpoints:
        raise ValueError("pick_best needs at least one checkpoint")
    scores, best = [], 0
    for i, path in enumerate(checkpoints):
        ckpt = load_checkpoint(path)
        scores.append(drive_score(model_from_checkpoint(ckpt), ckpt, config))
        if i and is_better(scores[i]["drive_score"], scores[best]["drive_score"]):
            best = i
    return Path(checkpoints[best]), scores


def rank_disagreement(history: list[tuple[float, float]]) -> tuple[int, int]:
    """(discordant pairs, pairs) over evaluations ``(validation loss, drive score)``: a pair is discordant
    when the lower loss has the lower drive score (a tie in either counts as agreement)."""
    discordant = pairs = 0
    for i in range(len(history)):
        for j in range(i + 1, len(history)):
            (loss_i, drive_i), (loss_j, drive_j) = history[i], history[j]
            pairs += 1
            discordant += (loss_i - loss_j) * (drive_j - drive_i) < 0
    return discordant, pairs


def summarise_choice(history: list[list]) -> dict:
    """``model_choice.json`` of a training run from its drives ``[step, validation score or None, drive score]``:
    the step each criterion picks and how often the two rankings disagreed (also logged)."""
    judged = [(v, d) for _, v, d in history if v is not None]
    discordant, pairs = rank_disagreement(judged)
    by_loss = min((h for h in history if h[1] is not None), key=lambda h: h[1], default=None)
    by_drive = max(history, key=lambda h: h[2], default=None)  # max keeps the first of equals, as training does
    choice = {"drives": len(history), "best_by_driving_step": by_drive[0] if by_drive else None,
              "best_by_loss_step": by_loss[0] if by_loss else None, "discordant_pairs": discordant, "pairs": pairs,
              "history": [{"step": h[0], "val_score": h[1], "drive_score": h[2]} for h in history]}
    if pairs:
        log.info("model choice: best.pt is step %s by driving, step %s by validation loss; the two rankings "
                 "disagreed on %d of %d pairs of evaluations (%.0f%%)", choice["best_by_driving_step"],
                 choice["best_by_loss_step"], discordant, pairs, 100.0 * discordant / pairs)
    return choice
