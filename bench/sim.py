"""Benchmark the driving world: how hard it is (the expert and speed-control baselines, scored closed-loop) and
what it costs (car model and renderer per simulated frame, as ratios measured in one run).

    OMP_NUM_THREADS=1 python bench/sim.py [--tracks 10] [--variants 20 21 22 23 24] [--repeats 200]

Drivers, each on eval tracks 0..N-1 in held-out eval variants (paired in turn), dynamic car:
the clean expert (the pace reference), the expert with DART noise 0.15 (what recording executes), and the
expert's steering with a CONSTANT motor command (no speed control) at several values. Prints markdown
tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from driver.sim.car import DynamicCar, KinematicCar
from driver.sim.closed_loop import ClosedLoopConfig, ExpertController, drive_closed_loop
from driver.sim.expert import Expert
from driver.sim.variant import make_world


class ConstantThrottle(ExpertController):
    """The expert's steering with a constant motor command."""

    def __init__(self, motor: float):
        super().__init__()
        self.motor = motor

    def act(self, left, right):
        return super().act(left, right)[0], self.motor


def scores(args) -> None:
    cfg = ClosedLoopConfig(tracks=args.tracks, variants=args.variants, variant_split="eval", video_frames=0,
                           max_seconds=120)
    print(f"\n### Drivers on {args.tracks} held-out tracks in held-out variants {args.variants} (dynamic car, 1 lap)\n")
    print("| driver | autonomy | pace | interventions (off road / slid / wrong way / stopped) | corner / straight "
          "speed m/s | mean lap s |")
    print("|---|---|---|---|---|---|")
    drivers = [("expert (clean)", ExpertController()), ("expert + DART 0.15", ExpertController(noise=0.15, seed=1))]
    drivers += [(f"constant motor {m:.2f}", ConstantThrottle(m)) for m in args.constant]
    for name, ctrl in drivers:
        r = drive_closed_loop(ctrl, cfg)
        s = r.summary()
        c = s["causes"]
        laps = [t for e in r.episodes for t in e.lap_times[:1]]
        print(f"| {name} | {s['autonomy_pct']:.1f}% | {s['pace']:.3f} | {s['interventions']} ({c['off_road']} / "
              f"{c['slid']} / {c['wrong_way']} / {c['stopped']}) | {s['corner_speed_mps']:.2f} / "
              f"{s['straight_speed_mps']:.2f} | {np.mean(laps):.2f} |")


def costs(args) -> None:
    world = make_world(0, "eval")
    renderer = world.renderer(94, 168)
    expert = Expert(world.track)
    dt = 1 / 30
    parts = {}
    for name, car in (("kinematic car step", KinematicCar()), ("dynamic car step (2 ms substeps)", DynamicCar())):
        car.reset(*world.track.point_at(0.0), speed=2.0)
        parts[name] = lambda car=car: car.step(0.05, 0.6, dt)
    st = DynamicCar().state
    st.x, st.y, st.yaw = world.track.point_at(3.0)
    st.speed = 2.5
    parts["expert command"] = lambda: expert.command(st)
    pose = world.track.point_at(3.0)
    parts["render 94×168 mono"] = lambda: renderer.render(*pose)
    best = dict.fromkeys(parts, float("inf"))
    ratios: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.repeats):  # short interleaved rounds: each round's ratios share the machine's state
        took = {}
        for name, fn in parts.items():
            t0 = time.perf_counter()
            for _ in range(50):
                fn()
            took[name] = (time.perf_counter() - t0) / 50
            best[name] = min(best[name], took[name])
        for name in parts:
            ratios[name].append(took[name] / took["render 94×168 mono"])
    print(f"\n### Cost per simulated frame (30 Hz), one thread, {args.repeats} interleaved rounds\n")
    print("| part | best µs per frame | median ratio to the 94×168 render |")
    print("|---|---|---|")
    for name, sec in best.items():
        print(f"| {name} | {sec * 1e6:.1f} | {np.median(ratios[name]):.3f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tracks", type=int, default=10)
    ap.add_argument("--variants", type=int, nargs="+", default=[20, 21, 22, 23, 24])
    ap.add_argument("--constant", type=float, nargs="+", default=[0.5, 0.55, 0.6, 0.65, 0.7, 0.75])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}")
    scores(args)
    costs(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
