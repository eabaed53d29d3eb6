"""Scores of closed-loop drives: PilotNet's autonomy, pace against the expert, lap times, interventions by
cause, and speed in corners vs straights. Definitions (also in docs/sim.md):

* **autonomy** = ``(1 - interventions * 6 s / elapsed s) * 100`` (Bojarski et al. 2016, arXiv:1604.07316);
* **pace** = distance covered along the centre line per second ÷ the clean expert's on the same track and
  variant (1.0 = as fast as the expert). Distance skipped by intervention resets does not count;
* **lap times**: seconds per completed lap (a lap with interventions includes them);
* **interventions by cause**: ``off_road`` (the rear axle left the road), ``slid`` (left the road within
  ``slide_window_s`` of the tyres sliding), ``wrong_way`` (heading error over 100°), ``stopped`` (moved less
  than 0.1 m in ``stall_s``);
* **corner / straight speed**: mean speed over the steps where the centre line's |curvature| at the car is
  at least / below ``corner_curvature`` (default 0.25 1/m, radius 4 m).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .track import Track

CAUSES = ("off_road", "slid", "wrong_way", "stopped")


def autonomy_percent(interventions: int, elapsed_s: float, penalty_s: float = 6.0) -> float:
    """PilotNet's autonomy: ``(1 - interventions * penalty_s / elapsed_s) * 100`` (may be negative)."""
    if elapsed_s <= 0:
        raise ValueError(f"elapsed_s={elapsed_s} must be > 0")
    return (1.0 - interventions * penalty_s / elapsed_s) * 100.0


def count_interventions(cte: np.ndarray, threshold: float) -> int:
    """Interventions in a cross-track sequence without resets: the times |cte| rises above ``threshold``."""
    over = np.abs(np.asarray(cte, dtype=np.float64)) > threshold
    return int(over[0]) + int(np.count_nonzero(over[1:] & ~over[:-1])) if len(over) else 0


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def _round(x: float | None, n: int) -> float | None:
    return None if x is None else round(x, n)


@dataclass
class EpisodeResult:
    """One world (track + variant) driven by a controller; per-step arrays have one row per step."""

    track: Track
    world: str  # e.g. "eval/3" or "eval/3@eval/7" (track in another variant)
    threshold: float  # metres of |cte| that count as off the road
    elapsed_s: float
    distance_m: float  # odometer
    progress_m: float  # driven along the centre line (reset jumps excluded)
    laps: float  # position along the track / track length (reset jumps included)
    lap_times: list[float]
    path: np.ndarray  # (N, 2) rear-axle positions
    yaw: np.ndarray  # (N,)
    cte: np.ndarray  # (N,) signed cross-track error, metres, + left
    speed: np.ndarray  # (N,) m/s
    steer: np.ndarray  # (N,) commanded steer
    motor: np.ndarray  # (N,) commanded motor
    position: np.ndarray  # (N,) arc length of the car's projection on the centre line, metres in [0, length)
    curvature: np.ndarray  # (N,) centre-line curvature at the projection, 1/m
    sliding: np.ndarray  # (N,) bool
    intervention_xy: np.ndarray  # (K, 2)
    intervention_causes: list[str]
    lateral_demand: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) v² × wheel curvature, m/s², + left
    planned_speed: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) the expert's plan at the car, m/s
    intervention_steps: list[int] = field(default_factory=list)  # (K,) step index of each intervention
    grip_mps2: float = float("inf")  # the car's mu * g
    dt: float = 1.0 / 30.0  # seconds per step
    frames: list[np.ndarray] = field(default_factory=list, repr=False)  # first video_frames camera images
    penalty_s: float = 6.0
    corner_curvature: float = 0.25
    reference: EpisodeResult | None = field(default=None, repr=False)  # the clean expert on the same world

    @property
    def interventions(self) -> int:
        return len(self.intervention_causes)

    @property
    def causes(self) -> dict[str, int]:
        return {c: self.intervention_causes.count(c) for c in CAUSES}

    @property
    def autonomy(self) -> float:
        return autonomy_percent(self.interventions, self.elapsed_s, self.penalty_s)

    @property
    def progress_rate(self) -> float:
        """Metres along the centre line per second."""
        return self.progress_m / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def pace(self) -> float | None:
        """Progress rate ÷ the expert's on the same world (None without a reference)."""
        if self.reference is None or self.reference.progress_rate <= 0:
            return None
        return self.progress_rate / self.reference.progress_rate

    @property
    def mean_abs_cte(self) -> float:
        return float(np.abs(self.cte).mean()) if len(self.cte) else 0.0

    @property
    def mean_speed(self) -> float:
        return float(self.speed.mean()) if len(self.speed) else 0.0

    @property
    def in_corner(self) -> np.ndarray:
        return np.abs(self.curvature) >= self.corner_curvature

    @property
    def corner_speed(self) -> float | None:
        return _mean(self.speed[self.in_corner])

    @property
    def straight_speed(self) -> float | None:
        return _mean(self.speed[~self.in_corner])

    def intervention_details(self, before_s: float = 2.0) -> list[dict]:
        """Per intervention, what led to it (see docs/sim.md, "Intervention details"): the time; at the onset of
        the last slide before it (or at the intervention if it did not slide) the speed against the expert's
        plan there, the centre line's curvature and the cross-track error; the largest lateral acceleration the
        steering asked for (``v² tan δ / L``) from then to the intervention, as a share of the grip; over the
        ``before_s`` seconds before it the largest speed over the plan and the largest steering change per step."""
        out = []
        n_before = max(1, int(round(before_s / self.dt)))
        for step, cause in zip(self.intervention_steps, self.intervention_causes, strict=True):
            lo = max(0, step - n_before)
            onset = step
            if self.sliding[step] or cause == "slid":
                onset = next((i for i in range(step, lo - 1, -1) if self.sliding[i]), step)
                while onset > lo and self.sliding[onset - 1]:
                    onset -= 1
            w = slice(lo, step + 1)
            over = self.speed[w] - self.planned_speed[w]
            dsteer = np.abs(np.diff(self.steer[w])) if step > lo else np.zeros(1)
            out.append({"t_s": round(step * self.dt, 2), "cause": cause,
                        "onset_s_before": round((step - onset) * self.dt, 2),
                        "speed_mps": round(float(self.speed[onset]), 3),
                        "planned_mps": round(float(self.planned_speed[onset]), 3),
                        "curvature": round(float(self.curvature[onset]), 3),
                        "demand_over_grip": round(float(np.abs(self.lateral_demand[onset:step + 1]).max())
                                                  / self.grip_mps2, 3),
                        "cte_m": round(float(self.cte[onset]), 3),
                        "max_over_plan_mps": round(float(over.max()), 3),
                        "max_steer_step": round(float(dsteer.max()), 3)})
        return out

    def summary(self) -> dict:
        ref = self.reference
        return {"world": self.world, "autonomy_pct": round(self.autonomy, 2),
                "pace": _round(self.pace, 3), "interventions": self.interventions, "causes": self.causes,
                "lap_times_s": [round(t, 2) for t in self.lap_times], "laps": round(self.laps, 2),
                "mean_speed_mps": round(self.mean_speed, 3), "corner_speed_mps": _round(self.corner_speed, 3),
                "straight_speed_mps": _round(self.straight_speed, 3), "mean_abs_cte_m": round(self.mean_abs_cte, 4),
                "slide_pct": round(100.0 * float(self.sliding.mean()) if len(self.sliding) else 0.0, 1),
                "distance_m": round(self.distance_m, 1), "elapsed_s": round(self.elapsed_s, 2),
                "intervention_details": self.intervention_details(),
                "expert": None if ref is None else {
                    "lap_times_s": [round(t, 2) for t in ref.lap_times], "mean_speed_mps": round(ref.mean_speed, 3),
                    "corner_speed_mps": _round(ref.corner_speed, 3),
                    "straight_speed_mps": _round(ref.straight_speed, 3),
                    "progress_rate_mps": round(ref.progress_rate, 3)}}


@dataclass
class ClosedLoopResult:
    """All worlds together; autonomy and speeds pool the steps (time-weighted), pace is the mean over worlds."""

    episodes: list[EpisodeResult]
    penalty_s: float = 6.0

    @property
    def elapsed_s(self) -> float:
        return float(sum(e.elapsed_s for e in self.episodes))

    @property
    def interventions(self) -> int:
        return int(sum(e.interventions for e in self.episodes))

    @property
    def causes(self) -> dict[str, int]:
        return {c: sum(e.causes[c] for e in self.episodes) for c in CAUSES}

    @property
    def distance_m(self) -> float:
        return float(sum(e.distance_m for e in self.episodes))

    @property
    def laps(self) -> float:
        return float(sum(e.laps for e in self.episodes))

    @property
    def autonomy(self) -> float:
        return autonomy_percent(self.interventions, self.elapsed_s, self.penalty_s)

    @property
    def pace(self) -> float | None:
        paces = [e.pace for e in self.episodes]
        return None if any(p is None for p in paces) else float(np.mean(paces))

    @property
    def interventions_per_km(self) -> float:
        return self.interventions / max(self.distance_m / 1000.0, 1e-9)

    @property
    def mean_abs_cte(self) -> float:
        return float(np.abs(np.concatenate([e.cte for e in self.episodes])).mean())

    @property
    def mean_speed(self) -> float:
        return float(np.concatenate([e.speed for e in self.episodes]).mean())

    def _pooled(self, corner: bool, reference: bool = False) -> float | None:
        eps = [e.reference if reference else e for e in self.episodes]
        if any(e is None for e in eps):
            return None
        return _mean(np.concatenate([e.speed[e.in_corner == corner] for e in eps]))

    def summary(self) -> dict:
        """Plain numbers, for logs, JSON and tables."""
        return {"autonomy_pct": round(self.autonomy, 2), "pace": _round(self.pace, 3),
                "interventions": self.interventions, "causes": self.causes,
                "interventions_per_km": round(self.interventions_per_km, 2),
                "mean_abs_cte_m": round(self.mean_abs_cte, 4), "mean_speed_mps": round(self.mean_speed, 3),
                "corner_speed_mps": _round(self._pooled(True), 3),
                "straight_speed_mps": _round(self._pooled(False), 3),
                "expert_corner_speed_mps": _round(self._pooled(True, reference=True), 3),
                "expert_straight_speed_mps": _round(self._pooled(False, reference=True), 3),
                "laps": round(self.laps, 2), "distance_m": round(self.distance_m, 1),
                "elapsed_s": round(self.elapsed_s, 1), "tracks": [e.track.seed for e in self.episodes],
                "per_track": [e.summary() for e in self.episodes]}
