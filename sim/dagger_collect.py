"""One DAgger run: the current policy drives a training world, the expert labels every frame, and the run is
written in the lab format (what ``driver ingest`` reads).

The mixing rule (per frame, Ross et al. 2011's β-mixture plus a safety takeover):

* the policy is stepped on every frame (its recurrent state always sees the drive, as in the car's
  shadow mode), and the expert computes its clean command at the car's actual pose and speed: that is
  the label (``steer``/``motor``) of EVERY frame, whoever drove;
* the expert's command is EXECUTED instead of the policy's with probability ``beta`` (drawn per frame),
  and always while the expert has taken over: it takes over when the car is about to leave the road
  (its lateral offset now, or ``preview_s`` ahead on its present heading, ``cte + v·sin(heading error)·
  preview_s``, beyond ``takeover`` × half the road width) and hands back once both are within
  ``release`` × half the road width. So the car's own mistakes compound up to the edge of the road, and
  the run stays on it;
* should the car leave the road anyway (|cte| above ``reset_fraction`` × half the road width, e.g. sliding
  out), the segment ends and the car is put back on the centre line as in ``driver sim record``.

State codes (docs/run-format.md): 6 (network steer + motor) on frames the policy drove, 5 (network mode,
human overriding both) on frames the expert drove. Labels ``direct`` = 1, ``sim`` = 1, ``dagger`` = 1 (not
``caffe``: these labels are the expert's, not the network's own commands). Extra series: those of
``driver sim record`` (``encoder`` etc.; ``sim_executed_*`` = what the car did) plus ``controller`` (1 the
policy drove, 0 the expert, as in ``driver drive`` recordings), ``model_steer``/``model_motor`` (the policy's
output, run units) and ``sim_takeover`` (1 while the expert had taken over).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from driver.datasets.run_writer import write_run
from driver.policy import NonFiniteOutput
from driver.units import norm_to_run

from .car import make_car
from .expert import Expert
from .policy_controller import PolicyController
from .record import EXTRAS, SegmentBuffer
from .track import split_rng
from .variant import make_world

log = logging.getLogger(__name__)

STATE_NETWORK, STATE_EXPERT = 6, 5  # lab codes: network steer + motor; human (here: the expert) overriding
DAGGER_EXTRAS = (*EXTRAS, "controller", "model_steer", "model_motor", "sim_takeover")


@dataclass(frozen=True)
class MixRule:
    """When the expert's command is executed instead of the policy's (see the module docstring)."""

    beta: float  # probability per frame
    takeover: float = 0.7  # × half the road width
    release: float = 0.3  # × half the road width
    preview_s: float = 0.8  # the offset is also read this far ahead on the car's present heading
    reset_fraction: float = 0.9  # × half the road width: off the road, the segment ends


@dataclass(frozen=True)
class DaggerWorld:
    """Where one DAgger run drives: training track ``track_seed``, in variant ``variant`` (None: its own)."""

    track_seed: int
    variant: int | None
    name: str  # run name (file stem)
    seconds: float
    fps: float
    seed: int  # draws of the mixture and the start pose


def collect_run(controller: PolicyController, world_spec: DaggerWorld, rule: MixRule, out_dir: Path,
                meta: dict, car_kind: str = "dynamic") -> tuple[Path, dict]:
    """Drive ``world_spec`` with ``controller`` mixed with the expert per ``rule``; write the run to
    ``out_dir/<name>.h5`` (atomically). Returns the path and counts (frames, expert frames, takeovers, resets)."""
    policy = controller.policy
    world = make_world(world_spec.track_seed, "train", world_spec.variant, "train")
    track = world.track
    renderer = world.renderer(policy.height, policy.width, policy.stereo, seed=world_spec.seed)
    car = make_car(car_kind)
    expert = Expert(track, car.spec)
    rng = np.random.default_rng([world_spec.seed, world_spec.track_seed, 11])
    start = float(split_rng(world_spec.track_seed, "train", stream=3).uniform(0, track.length))
    x, y, yaw = track.point_at(start)
    car.reset(x, y, yaw, speed=float(rng.uniform(0.0, expert.plan.at(start))))
    controller.reset()
    dt = 1.0 / world_spec.fps
    n_total = max(1, int(round(world_spec.seconds * world_spec.fps)))
    half = track.lane_width / 2
    segments: list[dict] = []
    seg = SegmentBuffer(n_total, policy.height, policy.width, policy.stereo, DAGGER_EXTRAS)
    counts = {"frames": n_total, "expert_frames": 0, "takeovers": 0, "resets": 0, "non_finite": 0}
    taken_over = False
    t = 1000.0
    for _ in range(n_total):
        st = car.state
        loc = track.locate(st.x, st.y)
        left, right = renderer.render(st.x, st.y, st.yaw)
        try:
            p_steer, p_motor = controller.act(left, right, speed=abs(st.speed))
        except NonFiniteOutput:  # the policy reset itself; the expert drives this frame
            counts["non_finite"] += 1
            p_steer = p_motor = math.nan
        steer, motor = expert.command(st)
        heading_err = math.atan2(math.sin(st.yaw - loc.heading), math.cos(st.yaw - loc.heading))
        offset = max(abs(loc.lateral), abs(loc.lateral + st.speed * math.sin(heading_err) * rule.preview_s))
        if offset > rule.takeover * half:
            counts["takeovers"] += not taken_over
            taken_over = True
        elif taken_over and offset < rule.release * half:
            taken_over = False
        by_expert = taken_over or math.isnan(p_steer) or rng.random() < rule.beta
        ex_steer, ex_motor = (steer, motor) if by_expert else (p_steer, p_motor)
        ex_steer, ex_motor = min(1.0, max(-1.0, ex_steer)), min(1.0, max(-1.0, ex_motor))
        counts["expert_frames"] += by_expert
        seg.add(left, right, state=STATE_EXPERT if by_expert else STATE_NETWORK, steer=steer, motor=motor,
                left_timestamp=t, encoder=abs(st.speed), speed=st.speed, cte=loc.lateral, heading_error=heading_err,
                progress=loc.progress, curvature=loc.curvature, pose_x=st.x, pose_y=st.y, pose_yaw=st.yaw,
                sim_executed_steer=ex_steer, sim_executed_motor=ex_motor, sim_target_speed=expert.target_speed(st),
                sim_sliding=float(st.sliding), controller=0.0 if by_expert else 1.0,
                model_steer=norm_to_run(0.0 if math.isnan(p_steer) else p_steer),
                model_motor=norm_to_run(0.0 if math.isnan(p_motor) else p_motor), sim_takeover=float(taken_over))
        car.step(ex_steer, ex_motor, dt)
        t += dt
        after = track.locate(car.state.x, car.state.y)
        if abs(after.lateral) > rule.reset_fraction * half:  # left the road anyway: cut and put the car back
            counts["resets"] += 1
            segments.append(seg.arrays())
            seg = SegmentBuffer(n_total, policy.height, policy.width, policy.stereo, DAGGER_EXTRAS)
            ahead = after.progress + 0.5
            nx, ny, nyaw = track.point_at(ahead)
            car.reset(nx, ny, nyaw, speed=min(max(car.state.speed, 0.0), expert.plan.at(ahead)))
            controller.reset()
            taken_over = False
            t += 1.0
    if seg.n:
        segments.append(seg.arrays())
    for s in segments:
        for name in ("controller", "sim_takeover"):
            s[name] = s[name].astype(np.int8)
    v = world.variant
    attrs = {**meta, "track_seed": world_spec.track_seed, "split": "train", "world": world.name,
             "variant_seed": v.seed, "variant_split": v.split, "lane_width_m": track.lane_width,
             "track_length_m": track.length, "fps": world_spec.fps, "car_model": car_kind, "camera": asdict(v.camera),
             "mix": asdict(rule), "counts": counts}
    out = Path(out_dir) / f"{world_spec.name}.h5"
    write_run(out, segments, labels={"direct": 1, "sim": 1, "dagger": 1}, attrs={"sim": json.dumps(attrs)})
    log.info("wrote %s: %d frames, expert drove %.0f%% (%d takeovers, %d resets)", out, n_total,
             100 * counts["expert_frames"] / n_total, counts["takeovers"], counts["resets"])
    return out, counts


__all__ = ["DAGGER_EXTRAS", "DaggerWorld", "MixRule", "STATE_EXPERT", "STATE_NETWORK", "collect_run"]
