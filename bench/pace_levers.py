"""Issue 12's goal levers: the default recurrent SqueezeNet-GRU recipe of ``bench/pace_table.py`` (its
``+recurrence`` row) with one change each, every model scored on goal-grade held-out driving (30 eval tracks in
eval variants 20-49 by default: ~620 s, so one intervention costs about 1 point of autonomy).

    OMP_NUM_THREADS=1 python bench/pace_levers.py --workdir /tmp/pace_levers \
        --lever base '{}' --lever motor2 '{"motor_weight": 2.0}' [--data-noise 0.15] [--runs 24] [--seconds 15]

``--lever NAME JSON``: a name and ``driver train`` config overrides (TrainConfig fields) on top of the base
recipe (48×64 mono, 24 DART 0.15 runs of 15 s, 1,600 steps, 16 lanes × 4-frame clips, lr 1e-3, seed 0).
A lever may also change the data with the keys ``data_runs``, ``data_seconds``, ``data_noise``,
``data_motor_noise`` (``driver sim record --motor-noise``; -1 = the default 0.25 × noise), ``data_surge_rate``
(``driver sim record --surge-rate``, throttle surges per second; default 0), ``data_height``,
``data_width`` (frame size, default 48×64); ``"pick": "best"`` scores ``best.pt`` instead of ``last.pt``
(with ``eval_closed_loop``: the checkpoint chosen by driving); ``{"checkpoint": PATH}`` scores a model trained
before (a store per distinct data recipe is recorded once and reused); ``{"ensemble": [LEVER or PATH, ...]}``
scores the ensemble (``driver ensemble``, written to ``WORKDIR/ensembles/NAME.json``) of levers trained before in
this workdir (their ``last.pt``) or of model files, with ``"motor_caution": K`` its ``--motor-caution``.
Results (autonomy, pace, interventions with causes and their details, corner/straight speeds, training seconds)
go to ``WORKDIR/levers.json``; levers already there are reused, so a stopped run continues. Prints a markdown
table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import time
from pathlib import Path

import torch

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.validity import ValidityRules
from driver.ensemble import EnsembleConfig, write_ensemble
from driver.policy import load_policy
from driver.sim.closed_loop import ClosedLoopConfig, drive_closed_loop
from driver.sim.policy_controller import PolicyController
from driver.sim.record import SimRecordConfig, record_runs
from driver.training import TrainConfig, train

log = logging.getLogger("pace_levers")
HEIGHT, WIDTH = 48, 64
DATA_KEYS = ("data_runs", "data_seconds", "data_noise", "data_motor_noise", "data_surge_rate", "data_height",
             "data_width")


def base_recipe(store: Path, out: Path, name: str, steps: int) -> dict:
    """``bench/pace_table.py``'s +recurrence row."""
    return {"data": str(store), "cameras": "left", "stack": 1, "horizon": 1, "target_stride": 1, "epochs": 4,
            "steps_per_epoch": steps // 4, "lr": 1e-3, "warmup_steps": 100, "color_jitter": 0.5,
            "val_fraction": 0.15, "out": str(out), "name": name, "seed": 0, "progress": False,
            "arch": "squeezenet_gru", "arch_kwargs": {"hidden_size": 32}, "clip_length": 4, "batch_size": 16}


def make_store(work: Path, runs: int, seconds: float, noise: float, motor_noise: float, seed: int,
               size: tuple[int, int] = (HEIGHT, WIDTH), surge_rate: float = 0.0) -> Path:
    tag = f"dart_r{runs}_s{seconds:g}_n{noise:g}" + ("" if motor_noise == -1 else f"_m{motor_noise:g}")
    tag += f"_u{surge_rate:g}" if surge_rate else ""
    tag += "" if size == (HEIGHT, WIDTH) else f"_{size[0]}x{size[1]}"
    store = work / f"{tag}.zarr"
    if store.exists():
        return store
    paths = record_runs(SimRecordConfig(out=work / f"runs_{tag}", runs=runs, seconds=seconds, height=size[0],
                                        width=size[1], noise=noise, motor_noise=motor_noise, surge_rate=surge_rate,
                                        seed=seed))
    tmp = work / f"{tag}.partial.zarr"
    shutil.rmtree(tmp, ignore_errors=True)
    report = ingest(IngestConfig(sources=[str(p) for p in paths], out=str(tmp), jobs=1,
                                 validity=ValidityRules(min_motor=0.0)))
    if not report.ok:
        raise SystemExit("ingest failed: " + "; ".join(o.error for o in report.failures))
    tmp.rename(store)
    return store


def evaluate(checkpoint: Path, args) -> dict:
    policy = load_policy(checkpoint, threads=1)
    tracks = list(range(args.first_track, args.first_track + args.eval_tracks))
    loop = ClosedLoopConfig(tracks=tracks, split="eval", variants=args.eval_variants,
                            variant_split="eval", height=policy.height, width=policy.width,
                            max_seconds=args.max_seconds, video_frames=0, seed=0)
    res = drive_closed_loop(PolicyController(policy), loop)
    s = res.summary()
    details = [{"world": e.world, **d} for e in res.episodes for d in e.intervention_details()]
    keep = ("autonomy_pct", "pace", "interventions", "causes", "mean_speed_mps", "corner_speed_mps",
            "straight_speed_mps", "expert_corner_speed_mps", "elapsed_s")
    return {**{k: s[k] for k in keep}, "intervention_details": details}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/pace_levers")
    p.add_argument("--lever", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    p.add_argument("--runs", type=int, default=24)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--data-noise", type=float, default=0.15)
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--eval-tracks", type=int, default=30)
    p.add_argument("--eval-variants", type=int, nargs="+", default=list(range(20, 50)))
    p.add_argument("--first-track", type=int, default=0, help="eval tracks are seeds FIRST..FIRST+N-1")
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--store", default="", help="use this store for the base data recipe instead of recording it")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out_json = work / "levers.json"
    done = {r["lever"]: r for r in json.loads(out_json.read_text())["levers"]} if out_json.exists() else {}
    for name, text in args.lever:
        if name in done:
            continue
        overrides = json.loads(text)
        if "ensemble" in overrides:  # members: levers trained before in this workdir, or model files
            members = [m if Path(m).is_file() else str(work / "train" / m / "last.pt") for m in overrides["ensemble"]]
            manifest = work / "ensembles" / f"{name}.json"
            write_ensemble(EnsembleConfig(members=members, out=str(manifest),
                                          motor_caution=overrides.get("motor_caution", 0.0)))
            overrides = {**overrides, "checkpoint": str(manifest)}
        if "checkpoint" in overrides:  # score a model trained before (e.g. on other held-out worlds)
            done[name] = {"lever": name, "overrides": overrides, "checkpoint": overrides["checkpoint"], "train_s": 0.0,
                          **evaluate(Path(overrides["checkpoint"]), args)}
            out_json.write_text(json.dumps({"args": vars(args), "levers": list(done.values())}, indent=1),
                                encoding="utf-8")
            continue
        data = {k: overrides.pop(k) for k in DATA_KEYS if k in overrides}
        pick = overrides.pop("pick", "last")
        if pick not in ("last", "best"):
            raise SystemExit(f"lever {name}: pick={pick!r} must be 'last' or 'best'")
        runs, seconds = data.get("data_runs", args.runs), data.get("data_seconds", args.seconds)
        noise, motor_noise = data.get("data_noise", args.data_noise), data.get("data_motor_noise", -1.0)
        size = (data.get("data_height", HEIGHT), data.get("data_width", WIDTH))
        surge_rate = data.get("data_surge_rate", 0.0)
        if args.store and (runs, seconds, noise, motor_noise, surge_rate, size) == (
                args.runs, args.seconds, args.data_noise, -1.0, 0.0, (HEIGHT, WIDTH)):
            store = Path(args.store)
        else:
            store = make_store(work, runs, seconds, noise, motor_noise, seed=0, size=size, surge_rate=surge_rate)
        cfg = {**base_recipe(store, work / "train", name, overrides.pop("steps", args.steps)), **overrides}
        run_dir = work / "train" / name
        t0 = time.perf_counter()
        if (run_dir / "last.pt").exists():
            result = train(resume=run_dir, overrides={"progress": False})
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            result = train(TrainConfig(**cfg))
        ckpt = result.best_checkpoint if pick == "best" and result.best_checkpoint else result.last_checkpoint
        train_s = round(time.perf_counter() - t0, 1)
        done[name] = {"lever": name, "overrides": json.loads(text), "checkpoint": str(ckpt), "train_s": train_s,
                      **evaluate(ckpt, args)}
        out_json.write_text(json.dumps({"args": vars(args), "levers": list(done.values())}, indent=1),
                            encoding="utf-8")
        log.info("%s: autonomy %.1f%%, pace %.3f, %d interventions", name, done[name]["autonomy_pct"],
                 done[name]["pace"], done[name]["interventions"])
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "  # noqa: T201
          f"{torch.__version__}; {args.eval_tracks} held-out eval tracks in eval variants "
          f"{args.eval_variants[0]}..{args.eval_variants[-1]}\n")
    print("| lever | overrides | autonomy | pace | interventions | corner / straight m/s | train s |")  # noqa: T201
    print("|---|---|---:|---:|---:|---|---:|")  # noqa: T201
    for name, _ in args.lever:
        r = done[name]
        print(f"| {name} | `{json.dumps(r['overrides'])}` | {r['autonomy_pct']:.1f}% | {r['pace']:.3f} | "  # noqa: T201
              f"{r['interventions']} | {r['corner_speed_mps']:.2f} / {r['straight_speed_mps']:.2f} | "
              f"{r['train_s']:.0f} |")
    print_seed_groups([done[name] for name, _ in args.lever])


def print_seed_groups(results: list[dict]) -> None:
    """Levers named ``NAME_s<seed>`` grouped by ``NAME``: the spread over seeds, which decides more than most
    levers (one intervention per ~1,240 s of driving on 60 worlds is ~0.5 points of autonomy)."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        match = re.fullmatch(r"(.+)_s\d+", r["lever"])
        if match:
            groups.setdefault(match.group(1), []).append(r)
    if not groups:
        return
    print("\n| lever | seeds | autonomy mean (min–max) | pace mean (min–max) | interventions per seed | "  # noqa: T201
          "seeds at the goal (≥ 99% and ≥ 0.90) |")
    print("|---|---:|---|---|---|---:|")  # noqa: T201
    for name, rs in groups.items():
        aut, pace = [r["autonomy_pct"] for r in rs], [r["pace"] for r in rs]
        at_goal = sum(a >= 99.0 and p >= 0.90 for a, p in zip(aut, pace, strict=True))
        print(f"| {name} | {len(rs)} | {sum(aut) / len(aut):.1f}% ({min(aut):.1f}–{max(aut):.1f}) | "  # noqa: T201
              f"{sum(pace) / len(pace):.3f} ({min(pace):.3f}–{max(pace):.3f}) | "
              f"{', '.join(str(r['interventions']) for r in rs)} | {at_goal} |")


if __name__ == "__main__":
    main()
