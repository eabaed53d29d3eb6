"""What an ensemble costs on the car: batch-1 step latency of one member alone and of the ensemble of all
members (``driver ensemble``), each through ``driver.load_policy`` as ``driver drive`` runs it, timed in
interleaved rounds so that load from other processes hits both alike.

    OMP_NUM_THREADS=1 python bench/ensemble_latency.py --members m0.onnx m1.onnx m2.onnx m3.onnx m4.onnx
    OMP_NUM_THREADS=1 python bench/ensemble_latency.py --members runs/train/s{0,1,2,3,4}/last.pt --rounds 20

Prints the median step (ms) of each and the ratio; ``act`` gets the car's speed when the models read it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np

from driver.ensemble import EnsembleConfig, write_ensemble
from driver.policy import load_policy


def steps_ms(policy, frames: np.ndarray, n: int) -> list[float]:
    out = []
    for i in range(n):
        f = frames[i % len(frames)]
        out.append(policy.act(f, right=f if policy.stereo else None, speed=2.0).latency_s * 1e3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", nargs="+", required=True, help="model files, 2 or more")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=50, help="steps per round per candidate")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_ensemble(EnsembleConfig(members=args.members, out=str(Path(tmp) / "e.json"))).path
        candidates = {"one member": load_policy(args.members[0], threads=1),
                      f"ensemble of {len(args.members)}": load_policy(manifest, threads=1)}
        first = candidates["one member"]
        frames = np.random.default_rng(0).integers(0, 256, (8, first.height, first.width, 3), dtype=np.uint8)
        times: dict[str, list[float]] = {k: [] for k in candidates}
        for pol in candidates.values():
            steps_ms(pol, frames, 10)  # warm up
        for _ in range(args.rounds):
            for k, pol in candidates.items():
                times[k] += steps_ms(pol, frames, args.steps)
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "  # noqa: T201
          f"{os.getloadavg()[0]:.1f}; members {Path(args.members[0]).suffix} at {first.height}x{first.width}\n")
    print("| policy | median step ms | p90 ms | vs one member |\n|---|---:|---:|---:|")  # noqa: T201
    base = statistics.median(times["one member"])
    for k, t in times.items():
        q = statistics.quantiles(t, n=10)
        print(f"| {k} | {statistics.median(t):.2f} | {q[-1]:.2f} | {statistics.median(t) / base:.2f}x |")  # noqa: T201


if __name__ == "__main__":
    main()
