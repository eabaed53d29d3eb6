"""When does a corner come into the camera's view, and when did the expert start braking for it?

Drives a checkpoint and the clean expert on one held-out world (as ``driver sim drive`` does), takes the
sharpest corner within ``--before`` seconds before and 1 s after the model's first intervention (or
``--at`` seconds), and prints every 0.1 s of each drive from ``--before`` seconds before it reaches the
corner's entry to 0.5 s after: speed, the expert's plan there, the model's motor
and the expert's motor at the same state, the distance to the corner's entry (the first centreline point
with ``|curvature| >= --entry-curvature``) and where that point falls in the frame: its row below the first
ground row (the horizon) and its column, or ``out`` when it is outside the picture. The same for the
expert's own drive (its own timeline). ``--png`` writes the model's frames every 0.4 s, enlarged.

    OMP_NUM_THREADS=1 python bench/corner_preview.py --model CKPT --track 53 --variant 73 [--png strip.png]

The camera model is the renderer's (``driver.sim.camera``): a pinhole ``forward_m`` ahead of the rear axle,
``height_m`` up, pitched down by ``pitch_deg``, ``hfov_deg`` wide; the world's variant sets its mount.
"""

from __future__ import annotations

import argparse
import logging
import math

import numpy as np
import torch

from driver.policy import load_policy
from driver.sim.camera import CameraSpec, _ground_rays
from driver.sim.car import CarState, DynamicSpec
from driver.sim.closed_loop import ClosedLoopConfig, drive_closed_loop
from driver.sim.expert import Expert
from driver.sim.policy_controller import PolicyController
from driver.sim.variant import make_world


def project(spec: CameraSpec, height: int, width: int, x: float, y: float) -> tuple[float, float] | None:
    """(row, column) of the ground point ``(x forward, y left)`` in the car frame, or None outside the frame."""
    f = (width / 2) / math.tan(math.radians(spec.hfov_deg) / 2)
    th = math.radians(spec.pitch_deg)
    dx, dy, dz = x - spec.forward_m, y, -spec.height_m
    fwd = dx * math.cos(th) - dz * math.sin(th)  # along the optical axis
    if fwd <= 1e-6:
        return None
    down = -dx * math.sin(th) - dz * math.cos(th)
    right = -dy
    row, col = (height - 1) / 2 + f * down / fwd, (width - 1) / 2 + f * right / fwd
    return (row, col) if -0.5 <= row < height - 0.5 and -0.5 <= col < width - 0.5 else None  # pixel centres at integers


def ground_rows(spec: CameraSpec, height: int, width: int) -> list[tuple[int, float]]:
    """(row, metres ahead of the rear axle) of the rows that meet the ground, top first, at the middle column:
    the renderer's own rays (``driver.sim.camera._ground_rays``)."""
    first, gx, _, _ = _ground_rays(spec, height, width, 0.0)
    return [(first + i, float(x)) for i, x in enumerate(gx[:, width // 2])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--track", type=int, required=True, help="eval track seed")
    p.add_argument("--variant", type=int, required=True, help="eval variant seed")
    p.add_argument("--at", type=float, default=-1.0, help="seconds; default: the model's first intervention")
    p.add_argument("--before", type=float, default=2.0, help="seconds before --at and before the entry")
    p.add_argument("--entry-curvature", type=float, default=0.5, help="1/m: where the corner starts")
    p.add_argument("--png", default="", help="write the model's frames every 0.4 s here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    policy = load_policy(args.model, threads=1)
    world = make_world(args.track, "eval", variant=args.variant, variant_split="eval")
    spec, h, w = world.variant.camera, policy.height, policy.width
    loop = ClosedLoopConfig(tracks=[args.track], split="eval", variants=[args.variant], variant_split="eval",
                            height=h, width=w, max_seconds=60.0, video_frames=1800, seed=0)
    ep = drive_closed_loop(PolicyController(policy), loop).episodes[0]
    track, fps = world.track, round(1 / ep.dt)
    at = args.at if args.at >= 0 else (ep.intervention_steps[0] / fps if ep.intervention_steps else -1)
    if at < 0:
        raise SystemExit("the model drove this world without an intervention: give --at SECONDS")
    # the sharpest corner from the car's place --before seconds earlier to 1 s after --at
    i0, i1 = max(0, int((at - args.before) * fps)), min(len(ep.speed) - 1, int((at + 1.0) * fps))
    s0, s1 = ep.position[i0] % track.length, ep.position[i1] % track.length
    span = np.arange(s0, s0 + ((s1 - s0) % track.length) + 1e-9, track.ds)
    curv = track.curvature[(span / track.ds).astype(int) % len(track.s)]
    apex = int(np.argmax(np.abs(curv)))
    entry_i = next(i for i in range(apex, -1, -1) if abs(curv[i]) < args.entry_curvature or i == 0)
    entry_s = span[entry_i] % track.length
    ex, ey = track.point_at(entry_s)[:2]
    expert = Expert(track, DynamicSpec())
    rows = ground_rows(spec, h, w)
    top = rows[0][0] if rows else h
    print(f"world eval/{args.track}@eval/{args.variant}: camera {spec.height_m:.3f} m high, pitch "  # noqa: T201
          f"{spec.pitch_deg:.1f} deg, {w}x{h}; corner apex curvature {curv[apex]:+.2f} 1/m, entry "
          f"(|curvature| >= {args.entry_curvature}) at {entry_s:.2f} m of the track")
    print("first ground rows (row: metres ahead, centre column): "  # noqa: T201
          + ", ".join(f"{r}: {d:.1f}" for r, d in rows[:5]))
    for name, e in (("model", ep), ("expert", ep.reference)):
        if e is None:
            continue
        reach = next((i for i in range(1, len(e.position)) if (e.position[i] - entry_s) % track.length < 1.0),
                     len(e.position) - 1)
        print(f"\n{name}: reaches the entry at {reach / fps:.2f} s")  # noqa: T201
        print("  t s   speed  plan  motor  expert motor  to entry m  entry in frame (rows below horizon, column)")  # noqa: T201
        for i in range(max(0, reach - int(args.before * fps)), min(len(e.speed), reach + fps // 2), max(1, fps // 10)):
            x, y, yaw = e.path[i, 0], e.path[i, 1], e.yaw[i]
            c, s = math.cos(yaw), math.sin(yaw)
            lx, ly = c * (ex - x) + s * (ey - y), -s * (ex - x) + c * (ey - y)
            px = project(spec, h, w, lx, ly)
            seen = "out" if px is None else f"{px[0] - top:5.1f}, {px[1]:5.1f}"
            clean = expert.command(CarState(x, y, yaw, e.speed[i]))[1]
            dist = (entry_s - e.position[i] % track.length) % track.length
            print(f"  {i / fps:5.2f}  {e.speed[i]:5.2f}  {e.planned_speed[i]:4.2f}  {e.motor[i]:5.2f}  "  # noqa: T201
                  f"{clean:12.2f}  {dist:10.2f}  {seen}")
    if args.png:
        import cv2

        first = max(0, int((at - args.before) * fps))
        picks = [ep.frames[i] for i in range(first, min(len(ep.frames), int(at * fps) + 1), int(0.4 * fps))]
        strip = np.hstack([cv2.resize(f, (f.shape[1] * 4, f.shape[0] * 4), interpolation=cv2.INTER_NEAREST)
                           for f in picks])
        cv2.imwrite(args.png, cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        print(f"\nframes {first / fps:.1f} s .. {at:.1f} s every 0.4 s: {args.png}")  # noqa: T201


if __name__ == "__main__":
    main()
