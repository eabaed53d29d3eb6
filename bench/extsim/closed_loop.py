"""Closed loop on highway-env's racetrack: a controller drives from the camera alone, from held-out
starts, and is scored against the scripted expert on the same starts.

    python bench/extsim/closed_loop.py --model runs/train/x/best.pt --episodes 6 --seconds 45 --out cl.json
    python bench/extsim/closed_loop.py --model expert

A controller is any object with ``reset()`` and ``act(frame, sim) -> (steer, accel)`` (normalised, + right,
+ faster); a ``driver`` checkpoint drives through ``driver.load_policy`` (``PolicyController``: the same
``Policy.act`` as replay and the car, the run label ``racing`` as its mode). Episode ``k`` starts the car
from seed ``EVAL_SEEDS + seed + k`` (a random lane, place, offset and speed; disjoint from every
recording seed) and drives ``seconds`` of simulated time at the simulator's rate.

Per episode, three views of the same drive:

- **The sim's own success**: highway-env's reward (lane centring, action penalty, 0 off the road) summed
  until the simulator *terminates* the episode (the car left the road) or time runs out. Because the
  racetrack's reward does not pay for progress (a car standing still in its lane earns it), the
  benchmark weights it by distance: ``weighted_distance`` = Σ reward × metres advanced along the
  track, up to the sim's termination. **score** = Σ weighted_distance ÷ the expert's on the same starts
  (1.0 = the expert; 0 = no progress or off the road at once).
- **Autonomy** (PilotNet, Bojarski et al. 2016): the drive continues past the sim's termination; each
  time the car leaves the road, or makes less than 0.5 m of progress in 5 s, counts an intervention and
  the car is put back on the closest lane centre; ``autonomy = (1 - 6 s × interventions / elapsed) × 100``.
- **Pace**: metres advanced along the track over the whole drive ÷ the expert's (same starts, same time).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench.extsim` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.extsim.env import RacetrackSim, SimConfig, sim_version
from bench.extsim.expert import Expert, ExpertSpec
from driver.errors import DriverError
from driver.policy import NonFiniteOutput, Policy
from driver.sim.closed_loop import autonomy_percent

log = logging.getLogger("extsim.closed_loop")

EVAL_SEEDS = 2_000_000  # closed-loop starts; recordings use 0.. (train) and 1,000,000.. (test)
STALL_S, STALL_M = 5.0, 0.5  # an intervention when the car advances less than STALL_M in STALL_S
INTERVENTION_S = 6.0


class Controller(Protocol):
    def reset(self) -> None: ...

    def act(self, frame: np.ndarray, sim: RacetrackSim) -> tuple[float, float]: ...


class PolicyController:
    """A ``driver`` Policy at the wheel: camera frame in, (steer, accel) out through ``Policy.act``.

    A non-finite output is a fault: the car gets a neutral command (straight, no acceleration) for that
    step, as on the car, and the fault is counted."""

    def __init__(self, policy: Policy, mode: str | None = "racing"):
        self.policy = policy
        self.mode = mode if mode in policy.modes else None
        self.faults = 0

    def reset(self) -> None:
        self.policy.reset()

    def act(self, frame: np.ndarray, sim: RacetrackSim) -> tuple[float, float]:
        try:
            # the car's speed, as its `encoder` series records it; a model without speed input ignores it
            a = self.policy.act(frame, mode=self.mode, speed=float(sim.vehicle.speed))
        except NonFiniteOutput:
            self.faults += 1
            return 0.0, 0.0
        return a.steer_norm, a.motor_norm


class ExpertController:
    """The scripted expert (privileged: reads the simulator state), without noise: the reference."""

    def __init__(self, spec: ExpertSpec | None = None):
        self.expert = Expert(spec)

    def reset(self) -> None:
        self.expert.reset()

    def act(self, frame: np.ndarray, sim: RacetrackSim) -> tuple[float, float]:
        return self.expert.command(sim)


class ConstantController:
    """The constant predictor: the same normalised (steer, accel) at every step."""

    def __init__(self, steer: float, accel: float):
        self.steer, self.accel = float(steer), float(accel)

    def reset(self) -> None:
        pass

    def act(self, frame: np.ndarray, sim: RacetrackSim) -> tuple[float, float]:
        return self.steer, self.accel


@dataclass
class ClosedLoopConfig:
    episodes: int = 6
    seconds: float = 45.0
    seed: int = 0
    sim: SimConfig = SimConfig()

    def __post_init__(self):
        if not 1 <= self.episodes <= 1000:
            raise ValueError(f"episodes={self.episodes} must be in 1..1000")
        if not 5.0 <= self.seconds <= 3600.0:
            raise ValueError(f"seconds={self.seconds} must be in 5..3600")
        if not 0 <= self.seed < 1_000_000:
            raise ValueError(f"seed={self.seed} must be in 0..999999")

    def episode_seeds(self) -> list[int]:
        return [EVAL_SEEDS + self.seed + k for k in range(self.episodes)]


@dataclass
class Episode:
    """One closed-loop drive (metres along the track, seconds of simulated time)."""

    seed: int
    seconds: float
    sim_return: float  # Σ highway-env reward until its termination
    survived_s: float  # time until the sim terminated the episode (= seconds if it never did)
    weighted_distance: float  # Σ reward × metres advanced, until the sim's termination
    distance: float  # metres advanced over the whole drive (interventions included)
    interventions: int
    mean_abs_cte: float
    mean_speed: float
    faults: int = 0


def drive_episode(sim: RacetrackSim, controller: Controller, seed: int, seconds: float) -> Episode:
    """Drive one episode from start ``seed``; the controller sees only the camera (privileged ones the sim)."""
    sim.place_random(np.random.default_rng([seed, 1]))
    controller.reset()
    n = max(1, int(round(seconds * sim.config.fps)))
    stall_steps = int(round(STALL_S * sim.config.fps))
    faults0 = getattr(controller, "faults", 0)
    sim_return = weighted = distance = 0.0
    survived, interventions, alive = None, 0, True
    cte, speed, since_progress, window = [], [], 0, 0.0
    for k in range(n):
        st = sim.lane_state()
        steer, accel = controller.act(sim.frame(), sim)
        before = np.array(sim.vehicle.position, dtype=np.float64)
        reward, terminated = sim.step(float(np.clip(steer, -1, 1)), float(np.clip(accel, -1, 1)))
        step_m = float(np.dot(np.asarray(sim.vehicle.position) - before,
                              [np.cos(st.lane_heading), np.sin(st.lane_heading)]))
        distance += step_m
        if alive:
            sim_return += reward
            weighted += reward * max(step_m, 0.0)
        cte.append(abs(st.lateral))
        speed.append(float(sim.vehicle.speed))
        window += step_m
        since_progress += 1
        if window >= STALL_M:
            window, since_progress = 0.0, 0
        if terminated or since_progress >= stall_steps:
            if terminated and alive:
                alive, survived = False, (k + 1) / sim.config.fps
            interventions += 1
            sim.recover()
            controller.reset()
            window, since_progress = 0.0, 0
    return Episode(seed, n / sim.config.fps, sim_return, survived if survived is not None else n / sim.config.fps,
                   weighted, distance, interventions, float(np.mean(cte)), float(np.mean(speed)),
                   getattr(controller, "faults", 0) - faults0)


def evaluate(controller: Controller, config: ClosedLoopConfig, sim: RacetrackSim | None = None) -> list[Episode]:
    """Drive every episode of ``config``; ``sim`` may be shared between controllers (same settings)."""
    own = sim is None
    sim = sim or RacetrackSim(config.sim)
    try:
        episodes = []
        for seed in config.episode_seeds():
            ep = drive_episode(sim, controller, seed, config.seconds)
            log.info("episode %d: %d interventions, %.0f m, weighted %.0f m, survived %.1f s", seed,
                     ep.interventions, ep.distance, ep.weighted_distance, ep.survived_s)
            episodes.append(ep)
        return episodes
    finally:
        if own:
            sim.close()


@dataclass
class Summary:
    """A controller's closed-loop result; ``score`` and ``pace`` need the expert's episodes."""

    episodes: list[Episode]
    score: float | None = None
    pace: float | None = None
    autonomy_pct: float = 0.0
    interventions: int = 0
    completed: float = 0.0  # share of episodes the sim never terminated
    sim_return_per_step: float = 0.0
    mean_abs_cte: float = 0.0
    mean_speed: float = 0.0
    faults: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(episodes: list[Episode], reference: list[Episode] | None = None, fps: float = 15.0) -> Summary:
    """Pool ``episodes``; with the expert's ``reference`` episodes (same seeds) add score and pace."""
    if not episodes:
        raise ValueError("no episodes to summarize")
    total_s = sum(e.seconds for e in episodes)
    s = Summary(episodes=episodes,
                autonomy_pct=autonomy_percent(sum(e.interventions for e in episodes), total_s, INTERVENTION_S),
                interventions=sum(e.interventions for e in episodes),
                completed=float(np.mean([e.survived_s >= e.seconds for e in episodes])),
                sim_return_per_step=sum(e.sim_return for e in episodes) / (total_s * fps),
                mean_abs_cte=float(np.mean([e.mean_abs_cte for e in episodes])),
                mean_speed=float(np.mean([e.mean_speed for e in episodes])),
                faults=sum(e.faults for e in episodes))
    if reference is not None:
        if [e.seed for e in reference] != [e.seed for e in episodes]:
            raise ValueError("the reference episodes must use the same seeds in the same order")
        ref_w = sum(e.weighted_distance for e in reference)
        ref_d = sum(e.distance for e in reference)
        s.score = sum(e.weighted_distance for e in episodes) / ref_w if ref_w > 0 else None
        s.pace = sum(e.distance for e in episodes) / ref_d if ref_d > 0 else None
    return s


def format_summary(name: str, s: Summary) -> str:
    score = "-" if s.score is None else f"{s.score:.3f}"
    pace = "-" if s.pace is None else f"{s.pace:.2f}"
    return (f"{name}: score {score}  autonomy {s.autonomy_pct:.1f}% ({s.interventions} interventions)  "
            f"pace {pace}  completed {100 * s.completed:.0f}%  sim reward/step {s.sim_return_per_step:.3f}  "
            f"mean |cte| {s.mean_abs_cte:.2f} m  mean speed {s.mean_speed:.1f} m/s")


def controller_for(model: str, threads: int = 1) -> tuple[Controller, SimConfig]:
    """``expert`` or a checkpoint / exported model; the camera renders at the model's input size."""
    if model == "expert":
        return ExpertController(), SimConfig()
    from driver.policy import load_policy

    policy = load_policy(model, threads=threads)
    if policy.stereo:
        raise DriverError(f"{model}: a stereo model cannot drive the one-camera racetrack")
    return PolicyController(policy), SimConfig(height=policy.height, width=policy.width)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint / .onnx / .dcz, or 'expert'")
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the summary (with the expert's) as JSON here")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        controller, sim_config = controller_for(a.model)
        config = ClosedLoopConfig(episodes=a.episodes, seconds=a.seconds, seed=a.seed, sim=sim_config)
        sim = RacetrackSim(config.sim)
        try:
            expert = evaluate(ExpertController(), config, sim)
            mine = expert if a.model == "expert" else evaluate(controller, config, sim)
        finally:
            sim.close()
    except (DriverError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = summarize(mine, expert, config.sim.fps)
    print(format_summary(a.model, result))
    if a.out:
        Path(a.out).write_text(json.dumps({"model": a.model, "simulator": f"highway-env {sim_version()}",
                                           "config": asdict(config), "summary": result.to_dict(),
                                           "expert": summarize(expert, expert, config.sim.fps).to_dict()},
                                          indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
