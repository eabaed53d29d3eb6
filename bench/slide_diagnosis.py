"""Why does a model slide where the expert does not? Drives a checkpoint on held-out worlds (as ``driver sim
drive`` does) and prints, per intervention, the state at the onset of the slide that led to it against the
expert's plan and the expert's own steering at the same states; then pooled statistics of model vs expert.

    OMP_NUM_THREADS=1 python bench/slide_diagnosis.py --model CKPT [--tracks 30] \
        [--variants 20 21 ... 49] [--json OUT.json]

Per intervention: speed at slide onset vs the plan there; the lateral acceleration the steering asked for
(``v² tan(δ) / L``) as a share of the grip (μ·g); the same for the steering the expert would have commanded
at that state; the largest speed over the plan and the largest steering step in the 2 s before; speed, plan, steer and
motor of the model and of the expert at the same states, every 0.2 s over those 2 s.
Pooled (all steps): share of steps sliding, steps over the plan by > 0.2 m/s, mean |steer − expert steer|,
mean steering change per step, for the model and for the clean expert on the same worlds.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import torch

from driver.policy import load_policy
from driver.sim.car import CarState, DynamicSpec
from driver.sim.closed_loop import ClosedLoopConfig, drive_closed_loop
from driver.sim.expert import Expert
from driver.sim.policy_controller import PolicyController

log = logging.getLogger("slide_diagnosis")


def expert_commands(ep, spec: DynamicSpec) -> np.ndarray:
    """The clean expert's (steer, motor) at every state the episode reached, (N, 2)."""
    expert = Expert(ep.track, spec)
    return np.array([expert.command(CarState(x, y, yaw, v))
                     for (x, y), yaw, v in zip(ep.path, ep.yaw, ep.speed, strict=True)]).reshape(-1, 2)


def demand_over_grip(steer: np.ndarray, speed: np.ndarray, spec: DynamicSpec) -> np.ndarray:
    return np.abs(speed ** 2 * np.tan(steer * spec.max_steer_rad) / spec.wheelbase_m) / spec.grip_mps2


def pooled(ep, es: np.ndarray) -> dict:
    """Step counts and sums of one episode (``es``: the expert's steering at its states)."""
    return {"steps": len(ep.speed), "sliding": int(ep.sliding.sum()),
            "over_plan": int(np.count_nonzero(ep.speed - ep.planned_speed > 0.2)),
            "steer_err_sum": float(np.abs(ep.steer - es).sum()),
            "steer_step_sum": float(np.abs(np.diff(ep.steer)).sum()) if len(ep.steer) > 1 else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tracks", type=int, default=30)
    p.add_argument("--variants", type=int, nargs="+", default=list(range(20, 50)))
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--json", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    policy = load_policy(args.model, threads=1)
    cfg = ClosedLoopConfig(tracks=args.tracks, split="eval", variants=args.variants, variant_split="eval",
                           height=policy.height, width=policy.width, max_seconds=args.max_seconds, video_frames=0)
    res = drive_closed_loop(PolicyController(policy), cfg)
    spec = DynamicSpec()
    rows, totals = [], {"model": {}, "expert": {}}
    for ep in res.episodes:
        ec = expert_commands(ep, spec)
        es, em = ec[:, 0], ec[:, 1]
        for who, e, steer in (("model", ep, es), ("expert", ep.reference, expert_commands(ep.reference, spec)[:, 0])):
            for k, v in pooled(e, steer).items():
                totals[who][k] = totals[who].get(k, 0) + v
        if not ep.interventions:
            continue
        for step, d in zip(ep.intervention_steps, ep.intervention_details(), strict=True):
            onset = step - int(round(d["onset_s_before"] / ep.dt))
            lo = max(0, step - int(round(2.0 / ep.dt)))
            rows.append({"world": ep.world, **d,
                         "expert_demand_over_grip": round(float(demand_over_grip(
                             es[onset:onset + 1], ep.speed[onset:onset + 1], spec)[0]), 3),
                         "model_steer": round(float(ep.steer[onset]), 3), "expert_steer": round(float(es[onset]), 3),
                         "max_steer_err_2s": round(float(np.abs(ep.steer[lo:step + 1] - es[lo:step + 1]).max()), 3),
                         "speed_2s": [round(float(v), 2) for v in ep.speed[lo:step + 1:6]],
                         "plan_2s": [round(float(v), 2) for v in ep.planned_speed[lo:step + 1:6]],
                         "steer_2s": [round(float(v), 2) for v in ep.steer[lo:step + 1:6]],
                         "expert_steer_2s": [round(float(v), 2) for v in es[lo:step + 1:6]],
                         "motor_2s": [round(float(v), 2) for v in ep.motor[lo:step + 1:6]],
                         "expert_motor_2s": [round(float(v), 2) for v in em[lo:step + 1:6]]})
    s = res.summary()
    print(f"\n{args.model}: autonomy {s['autonomy_pct']}%, pace {s['pace']}, {s['interventions']} interventions "  # noqa: T201
          f"{s['causes']}, corner/straight {s['corner_speed_mps']}/{s['straight_speed_mps']} m/s "
          f"(expert {s['expert_corner_speed_mps']}/{s['expert_straight_speed_mps']})")
    for who, t in totals.items():
        n = max(1, t["steps"])
        print(f"{who:6s}: sliding {100 * t['sliding'] / n:.1f}% of steps, >0.2 m/s over plan "  # noqa: T201
              f"{100 * t['over_plan'] / n:.1f}%, mean |steer - expert steer| {t['steer_err_sum'] / n:.3f}, "
              f"mean |steer step| {t['steer_step_sum'] / n:.4f}")
    for r in rows:
        print(json.dumps(r))  # noqa: T201
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"summary": {k: v for k, v in s.items() if k != "per_track"}, "totals": totals,
                       "interventions": rows}, f, indent=1)


if __name__ == "__main__":
    main()
