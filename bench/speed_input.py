"""Speed input ablation: the demo's recipe trained with and without the car's speed as a model input.

    OMP_NUM_THREADS=1 python bench/speed_input.py [--workdir /tmp/speed_ablation] [--runs 32] [--seconds 15]
                                                  [--steps 2400] [--tracks 6] [--seeds 0]

Records the demo's sim runs (dynamic car, expert at the grip limit with DART noise, an ``encoder`` series),
ingests them keeping braking (``min_motor`` 0), then trains the demo's squeezenet_gru (hidden 32, 4-frame
clips, one predicted step, colour jitter 0.5) twice per seed from the same split and seed: ``--speed-input
off`` and ``on``. Each model is scored open loop on the held-out runs (steering and throttle R², throttle
MAE) and closed loop on held-out eval tracks in their own eval variants (autonomy, pace against the expert,
corner and straight speed). Prints a markdown table and writes ``results.json`` to the workdir.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.validity import ValidityRules
from driver.sim.evaluate_policy import SimDriveConfig, sim_drive
from driver.sim.record import SimRecordConfig, record_runs
from driver.training import TrainConfig, train


def _record(work: Path, runs: int, seconds: float) -> Path:
    store = work / "store.zarr"
    if not store.exists():
        paths = record_runs(SimRecordConfig(out=work / "runs", runs=runs, seconds=seconds, height=48, width=64))
        report = ingest(IngestConfig(sources=[str(p) for p in paths], out=str(store),
                                     validity=ValidityRules(min_motor=0.0)))
        assert report.ok, report.failures
    return store


def _train_and_score(store: Path, work: Path, speed: str, steps: int, tracks: int, seed: int) -> dict:
    t0 = time.perf_counter()
    run = train(TrainConfig(
        data=str(store), arch="squeezenet_gru", arch_kwargs={"hidden_size": 32}, cameras="left", stack=1,
        clip_length=4, horizon=1, target_stride=1, batch_size=16, epochs=4, steps_per_epoch=max(1, steps // 4),
        lr=1e-3, warmup_steps=100, color_jitter=0.5, val_fraction=0.15, out=str(work / "train"),
        name=f"speed_{speed}_s{seed}", seed=seed, speed_input=speed, progress=False))
    train_s = time.perf_counter() - t0
    ckpt = run.best_checkpoint or run.last_checkpoint
    t0 = time.perf_counter()
    drive = sim_drive(SimDriveConfig(model=str(ckpt), out=str(work / f"drive_{speed}_s{seed}"), tracks=tracks,
                                     media=False, seed=seed)).summary()
    val = run.best_val
    return {"speed_input": speed, "seed": seed, "steps": run.steps, "train_s": round(train_s, 1),
            "drive_s": round(time.perf_counter() - t0, 1), "steer_r2": val["steer"]["r2"],
            "motor_r2": val["motor"]["r2"], "motor_mae": val["motor"]["mae"],
            "motor_const_mae": val["motor"]["const_mae"], "autonomy": drive["autonomy_pct"], "pace": drive["pace"],
            "interventions": drive["interventions"], "causes": drive["causes"],
            "corner_speed": drive["corner_speed_mps"], "straight_speed": drive["straight_speed_mps"],
            "expert_corner_speed": drive["expert_corner_speed_mps"],
            "expert_straight_speed": drive["expert_straight_speed_mps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/speed_ablation")
    ap.add_argument("--runs", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--tracks", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    work = Path(args.workdir)
    store = _record(work, args.runs, args.seconds)
    rows = [_train_and_score(store, work, speed, args.steps, args.tracks, seed)
            for seed in args.seeds for speed in ("off", "on")]
    (work / "results.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print("| speed input | seed | steer R² | throttle R² | throttle MAE (const) | autonomy | pace | "
          "interventions | corner / straight m/s (expert) | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['speed_input']} | {r['seed']} | {r['steer_r2']:.3f} | {r['motor_r2']:.3f} | "
              f"{r['motor_mae']:.2f} ({r['motor_const_mae']:.2f}) | {r['autonomy']:.1f}% | {r['pace']:.3f} | "
              f"{r['interventions']} | {r['corner_speed']:.2f} / {r['straight_speed']:.2f} "
              f"({r['expert_corner_speed']:.2f} / {r['expert_straight_speed']:.2f}) | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
