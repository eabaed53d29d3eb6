"""Issue 12's benchmark table: what each ingredient buys in closed-loop autonomy and pace, on held-out tracks in
held-out world variants (dynamic car, pixels in; speed too where enabled).

    OMP_NUM_THREADS=1 python bench/pace_table.py --workdir /tmp/pace_table [--runs 24] [--seconds 15] \
        [--steps 1600] [--eval-tracks 6] [--eval-variants 20 21 22 23 24 25] [--dagger-rounds 2] \
        [--rows plain dart recurrence speed dagger]

Rows, each adding one thing to the row above (same data sizes, same training steps, same seed):

* **plain BC**: a single-frame SqueezeNet on runs of the clean expert (no DART noise);
* **+DART**: the same model on runs recorded with DART noise 0.15 (the expert's clean labels on states the
  noisy execution reached);
* **+recurrence**: the default recurrent SqueezeNet-GRU (4-frame clips) instead of the single-frame model;
* **+speed input**: the same with ``driver train --speed-input on`` (the ``encoder`` series as an input);
  skipped, and said so, where ``driver train`` has no ``speed_input`` option yet;
* **+DAgger round k**: ``driver sim dagger`` from the row above: per round the model drives ``--dagger-tracks``
  new training tracks with the expert taking over per the β-mixture, the runs are ingested into a copy of
  the DART store and training resumes for one more epoch (``steps / 4`` steps).

Columns: autonomy (PilotNet, 6 s per intervention), pace (distance per second ÷ the clean expert's on the
same world), interventions, mean speed. Prints a markdown table and writes ``WORKDIR/pace_table.json``.
Rows already in that JSON are reused (a stopped benchmark continues); ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.validity import ValidityRules
from driver.policy import load_policy
from driver.sim.closed_loop import ClosedLoopConfig, drive_closed_loop
from driver.sim.dagger import DaggerConfig, run_dagger
from driver.sim.policy_controller import PolicyController
from driver.sim.record import SimRecordConfig, record_runs
from driver.training import TrainConfig, train

log = logging.getLogger("pace_table")
HEIGHT, WIDTH = 48, 64
HAS_SPEED_INPUT = "speed_input" in {f.name for f in dataclasses.fields(TrainConfig)}
ROWS = ("plain", "dart", "recurrence", "speed", "dagger")


def make_store(work: Path, name: str, noise: float, args) -> Path:
    store = work / f"{name}.zarr"
    if store.exists():
        return store
    paths = record_runs(SimRecordConfig(out=work / f"runs_{name}", runs=args.runs, seconds=args.seconds,
                                        height=HEIGHT, width=WIDTH, noise=noise, seed=args.seed))
    report = ingest(IngestConfig(sources=[str(p) for p in paths], out=str(store), jobs=1,
                                 validity=ValidityRules(min_motor=0.0)))
    if not report.ok:
        raise SystemExit("ingest failed: " + "; ".join(o.error for o in report.failures))
    return store


def train_model(work: Path, name: str, store: Path, args, recurrent: bool, speed: bool = False) -> Path:
    epochs = 4
    cfg = {"data": str(store), "cameras": "left", "stack": 1, "horizon": 1, "target_stride": 1, "epochs": epochs,
           "steps_per_epoch": max(1, args.steps // epochs), "lr": 1e-3, "warmup_steps": 100, "color_jitter": 0.5,
           "val_fraction": 0.15, "out": str(work / "train"), "name": name, "seed": args.seed, "progress": False}
    if recurrent:  # the demo's recipe: 16 lanes of 4-frame clips
        cfg.update(arch="squeezenet_gru", arch_kwargs={"hidden_size": 32}, clip_length=4, batch_size=16)
    else:  # the same frames per step, one frame each
        cfg.update(arch="squeezenet", clip_length=1, batch_size=64)
    if HAS_SPEED_INPUT:
        cfg["speed_input"] = "on" if speed else "off"
    run_dir = work / "train" / name
    if (run_dir / "last.pt").exists():  # finish (or keep) a run begun before
        return train(resume=run_dir, overrides={"progress": False}).last_checkpoint
    shutil.rmtree(run_dir, ignore_errors=True)
    return train(TrainConfig(**cfg)).last_checkpoint


def evaluate(checkpoint: Path, args) -> dict:
    policy = load_policy(checkpoint, threads=1)
    loop = ClosedLoopConfig(tracks=args.eval_tracks, split="eval", variants=args.eval_variants,
                            variant_split="eval", laps=1.0, height=policy.height, width=policy.width,
                            max_seconds=args.max_seconds, video_frames=0, seed=args.seed)
    s = drive_closed_loop(PolicyController(policy), loop).summary()
    return {k: s[k] for k in ("autonomy_pct", "pace", "interventions", "causes", "mean_speed_mps", "laps")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/pace_table")
    p.add_argument("--runs", type=int, default=24, help="recorded training runs per data set")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds per recorded run")
    p.add_argument("--steps", type=int, default=1600, help="training steps per model (4 epochs)")
    p.add_argument("--eval-tracks", type=int, default=6)
    p.add_argument("--eval-variants", type=int, nargs="+", default=[20, 21, 22, 23, 24, 25])
    p.add_argument("--max-seconds", type=float, default=60.0, help="per held-out track")
    p.add_argument("--dagger-rounds", type=int, default=2)
    p.add_argument("--dagger-tracks", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                   help="rows to run (default: all; dagger starts from the last BC row run)")
    p.add_argument("--fresh", action="store_true", help="start over instead of reusing WORKDIR")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    work = Path(args.workdir)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    out_json = work / "pace_table.json"
    done = {r["row"]: r for r in json.loads(out_json.read_text())["rows"]} if out_json.exists() else {}
    rows: list[dict] = []

    def add(row: str, what: str, fn) -> None:
        if row in done:
            rows.append(done[row])
        else:
            t0 = time.perf_counter()
            result = fn()
            rows.append({"row": row, "what": what, **result, "seconds": round(time.perf_counter() - t0, 1)})
        out_json.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2), encoding="utf-8")
        log.info("%s: %s", row, rows[-1])

    def bc_row(name: str, store_fn, recurrent: bool, speed: bool = False):
        def run():
            ckpt = train_model(work, name, store_fn(), args, recurrent, speed)
            return {"checkpoint": str(ckpt), **evaluate(ckpt, args)}
        return run

    clean = lambda: make_store(work, "clean", 0.0, args)  # noqa: E731
    dart = lambda: make_store(work, "dart", 0.15, args)  # noqa: E731
    if "plain" in args.rows:
        add("plain BC", "single-frame SqueezeNet, clean expert runs", bc_row("plain_bc", clean, False))
    if "dart" in args.rows:
        add("+DART", "single-frame SqueezeNet, DART 0.15 runs", bc_row("dart", dart, False))
    if "recurrence" in args.rows:
        add("+recurrence", "SqueezeNet-GRU (default), DART runs", bc_row("recurrent", dart, True))
    if "speed" in args.rows and HAS_SPEED_INPUT:
        add("+speed input", "SqueezeNet-GRU with --speed-input on, DART runs", bc_row("speed", dart, True, True))
    elif "speed" in args.rows:
        log.warning("driver train has no speed_input option here: the +speed input row is not run")
    if "dagger" not in args.rows or not rows:
        args.dagger_rounds = 0
    base = rows[-1]["row"] if rows else ""
    start = rows[-1] if rows else None
    dagger_rows = [f"+DAgger round {k}" for k in range(1, args.dagger_rounds + 1)]
    if args.dagger_rounds and not all(r in done for r in dagger_rows):
        aggregate = work / "dagger_store.zarr"
        if not (work / "dagger" / "dagger.json").exists():
            shutil.rmtree(aggregate, ignore_errors=True)
            shutil.copytree(dart(), aggregate)
        t0 = time.perf_counter()
        report = run_dagger(DaggerConfig(
            model=start["checkpoint"], data=str(aggregate), rounds=args.dagger_rounds, out=str(work / "dagger"),
            tracks=args.dagger_tracks, seconds=args.seconds, eval_tracks=args.eval_tracks,
            eval_variants=args.eval_variants, max_seconds=args.max_seconds, seed=args.seed, progress=False))
        per_round = round((time.perf_counter() - t0) / args.dagger_rounds, 1)
        for r in report.rows[1:]:
            done[f"+DAgger round {r['round']}"] = {
                "row": f"+DAgger round {r['round']}", "what": f"{base} + DAgger (beta {r['beta']:.3f}, "
                f"{r['runs_added']} runs, expert drove {100 * r['expert_share']:.0f}%)", "checkpoint": r["model"],
                "autonomy_pct": r["autonomy_pct"], "pace": r["pace"], "interventions": r["interventions"],
                "mean_speed_mps": r["mean_speed_mps"], "seconds": per_round}
    for row in dagger_rows:
        add(row, done[row]["what"], lambda: {})
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "  # noqa: T201
          f"{torch.__version__}; {args.eval_tracks} held-out eval tracks in eval variants {args.eval_variants}\n")
    print("| row | model and data | autonomy | pace | interventions | mean speed m/s | seconds |")  # noqa: T201
    print("|---|---|---:|---:|---:|---:|---:|")  # noqa: T201
    for r in rows:
        pace = "-" if r["pace"] is None else f"{r['pace']:.3f}"
        print(f"| {r['row']} | {r['what']} | {r['autonomy_pct']:.1f}% | {pace} | {r['interventions']} | "  # noqa: T201
              f"{r['mean_speed_mps']:.2f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
