"""`driver sim drive`: a trained model (or the expert) drives held-out worlds; autonomy, pace, lap times,
interventions by cause, corner vs straight speed, media and a summary.json."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from driver.policy import load_policy
from driver.threads import apply_threads, check_threads

from .car import CAR_MODELS
from .closed_loop import ClosedLoopConfig, ExpertController, drive_closed_loop
from .media import write_closed_loop_media
from .policy_controller import PolicyController
from .scoring import CAUSES, ClosedLoopResult
from .track import SPLITS

log = logging.getLogger(__name__)


@dataclass
class SimDriveConfig:
    """``model``: a checkpoint, or ``"expert"`` to score the sim's own expert the same way. Track ``i`` is
    eval seed ``i`` (of ``split``); ``variants`` empty = each track in its own variant, else variant seeds of
    ``variant_split`` paired with the tracks in turn."""

    model: str  # checkpoint (best.pt / last.pt / run dir), .onnx / .ts, compressed .dcz, ensemble .json or "expert"
    out: str = "sim_drive_out"  # summary.json, top-down and speed-profile PNGs, MP4s
    tracks: int = 3  # held-out tracks driven (eval seeds 0..N-1)
    laps: float = 1.0  # laps per track
    split: str = "eval"  # track split driven
    variants: list[int] = field(default_factory=list)  # world variant seeds, paired with the tracks in turn (empty:
                                                       # each track's own)
    variant_split: str = ""  # split of --variants (empty: --split)
    car: str = "dynamic"  # car model: dynamic (force, brake, grip limit) or kinematic (motor = speed)
    fps: float = 30.0  # simulated camera frame rate
    max_seconds: float = 120.0  # time limit per track
    mode: str | None = "direct"  # behavioral mode given to the model
    media: bool = True  # write top-down maps, speed profiles and videos
    seed: int = 0  # render-noise seed (tracks are always eval seeds 0..N-1)
    threads: int = 1  # compute threads (1 is fastest for batch-1 inference on small CPUs; 0 = auto)
    runtime: str = "torch"  # inference runtime
    view: str = ""  # Rerun view: "" off, "file" = OUT/sim_drive.rrd, X.rrd, spawn, web[:PORT], rerun+http://...

    def __post_init__(self):
        check_threads(self.threads)
        if not self.model:
            raise ValueError("model is empty: name a checkpoint (best.pt) or 'expert'")
        if not 1 <= self.tracks <= 1000:
            raise ValueError(f"tracks={self.tracks} must be in 1..1000")
        if self.variant_split and self.variant_split not in SPLITS:
            raise ValueError(f"variant_split={self.variant_split!r} must be one of {', '.join(SPLITS)}")
        if any(int(v) < 0 for v in self.variants):
            raise ValueError(f"variants={self.variants} must be seeds >= 0")
        if self.car not in CAR_MODELS:
            raise ValueError(f"car={self.car!r} must be one of {', '.join(CAR_MODELS)}")


def sim_drive(config: SimDriveConfig) -> ClosedLoopResult:
    """Drive ``config.tracks`` worlds; the sim renders at the model's input size. Writes ``summary.json``
    (and media) to ``config.out``."""
    threads = apply_threads(config.threads)
    if config.model == "expert":
        controller, height, width, stereo = ExpertController(fps=config.fps), 94, 168, False
    else:
        policy = load_policy(config.model, runtime=config.runtime, threads=threads)
        controller = PolicyController(policy, config.mode)
        height, width, stereo = policy.height, policy.width, policy.stereo
    loop = ClosedLoopConfig(tracks=config.tracks, split=config.split, variants=list(config.variants) or None,
                            variant_split=config.variant_split or None, car=config.car, laps=config.laps,
                            fps=config.fps, height=height, width=width, stereo=stereo,
                            max_seconds=config.max_seconds, video_frames=300 if config.media else 0,
                            seed=config.seed)
    if config.view:  # Rerun: keep a third of the camera frames for the view (driver.view, optional extra)
        from driver.view.sim_view import ViewedController

        controller = ViewedController(controller, every=3)
    result = drive_closed_loop(controller, loop)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.view:
        from driver.view.sim_view import view_sim_drive

        view_sim_drive(result, controller, config.view, str(out / "sim_drive.rrd"), config.fps)
    summary = {"model": config.model, "car": config.car, **result.summary()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if config.media:
        write_closed_loop_media(result, out, fps=config.fps)
    return result


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_sim_drive(result: ClosedLoopResult) -> str:
    """A per-world table and the overall line."""
    rows = [f"{'world':<16} {'autonomy':>8} {'pace':>5} {'lap s':>7} {'expert':>7} {'interventions':<34} "
            f"{'corner/straight m/s':>19}"]
    for ep in result.episodes:
        causes = ", ".join(f"{c} {n}" for c, n in ep.causes.items() if n) or "0"
        lap = ep.lap_times[0] if ep.lap_times else None
        ref_lap = ep.reference.lap_times[0] if ep.reference is not None and ep.reference.lap_times else None
        rows.append(f"{ep.world:<16} {ep.autonomy:>7.1f}% {_f(ep.pace, '.2f'):>5} {_f(lap, '.1f'):>7} "
                    f"{_f(ref_lap, '.1f'):>7} {causes:<34} "
                    f"{_f(ep.corner_speed, '.2f'):>9}/{_f(ep.straight_speed, '.2f')}")
    s = result.summary()
    causes = ", ".join(f"{c} {s['causes'][c]}" for c in CAUSES)
    rows.append(f"overall: autonomy {s['autonomy_pct']:.1f}%  pace {_f(s['pace'], '.2f')}  interventions "
                f"{s['interventions']} ({causes}; {s['interventions_per_km']:.1f}/km)  mean speed "
                f"{s['mean_speed_mps']:.2f} m/s (corners {_f(s['corner_speed_mps'], '.2f')}, straights "
                f"{_f(s['straight_speed_mps'], '.2f')}; expert {_f(s['expert_corner_speed_mps'], '.2f')}, "
                f"{_f(s['expert_straight_speed_mps'], '.2f')})  mean |cte| {s['mean_abs_cte_m']:.3f} m  "
                f"laps {s['laps']:.2f}")
    return "\n".join(rows)
