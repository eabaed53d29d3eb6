"""`driver sim drive`: a trained model drives held-out sim tracks; autonomy, media and a summary."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from driver.policy import load_policy

from .closed_loop import ClosedLoopConfig, ClosedLoopResult, ExpertController, drive_closed_loop
from .media import write_closed_loop_media
from .policy_controller import PolicyController

log = logging.getLogger(__name__)


@dataclass
class SimDriveConfig:
    """``model``: a checkpoint, or ``"expert"`` to score the sim's own expert the same way."""

    model: str
    out: str = "sim_drive_out"
    tracks: int = 3
    laps: float = 1.0
    split: str = "eval"
    fps: float = 30.0
    max_seconds: float = 120.0
    mode: str | None = "direct"
    media: bool = True
    seed: int = 0
    threads: int = 1  # torch threads for batch-1 inference (1 is fastest on small CPUs)
    runtime: str = "torch"  # torch | onnx
    view: str = ""  # Rerun view: "" off, "file" = OUT/sim_drive.rrd, X.rrd, spawn, web[:PORT], rerun+http://...

    def __post_init__(self):
        if not self.model:
            raise ValueError("model is empty: name a checkpoint (best.pt) or 'expert'")
        if not 1 <= self.tracks <= 1000:
            raise ValueError(f"tracks={self.tracks} must be in 1..1000")


def sim_drive(config: SimDriveConfig) -> ClosedLoopResult:
    """Drive ``config.tracks`` tracks of ``config.split``; the sim renders at the model's input size."""
    if config.model == "expert":
        controller, height, width, stereo = ExpertController(), 94, 168, False
    else:
        policy = load_policy(config.model, runtime=config.runtime, threads=config.threads)
        controller = PolicyController(policy, config.mode)
        height, width, stereo = policy.height, policy.width, policy.stereo
    loop = ClosedLoopConfig(tracks=config.tracks, split=config.split, laps=config.laps, fps=config.fps,
                            height=height, width=width, stereo=stereo, max_seconds=config.max_seconds,
                            video_frames=300 if config.media else 0, seed=config.seed)
    if config.view:  # Rerun: keep a third of the camera frames for the view (driver.view, optional extra)
        from driver.view.sim_view import ViewedController

        controller = ViewedController(controller, every=3)
    result = drive_closed_loop(controller, loop)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.view:
        from driver.view.sim_view import view_sim_drive

        view_sim_drive(result, controller, config.view, str(out / "sim_drive.rrd"), config.fps)
    summary = {"model": config.model, **result.summary()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if config.media:
        write_closed_loop_media(result, out, fps=config.fps)
    return result


def format_sim_drive(result: ClosedLoopResult) -> str:
    s = result.summary()
    return (f"autonomy {s['autonomy_pct']:.1f}%  interventions {s['interventions']} "
            f"({s['interventions_per_km']:.1f}/km)  mean |cte| {s['mean_abs_cte_m']:.3f} m  "
            f"mean speed {s['mean_speed_mps']:.2f} m/s  laps {s['laps']:.2f} on tracks {s['tracks']}")
