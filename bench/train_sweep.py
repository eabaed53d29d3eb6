"""Training sweep: does the default recipe learn on every kind of data the docs name, and beat the baselines?

    python bench/train_sweep.py --work /tmp/sweep --minutes 5
    python bench/train_sweep.py --work /tmp/sweep --datasets ext96 --extsim-runs /tmp/ext --recipes default pilotnet

For each dataset, runs are recorded (or taken from disk) and ingested into two stores: ``train.zarr`` (the
training runs; ``driver train`` holds some of them out for validation and ``best.pt``) and ``test.zarr``
(held-out runs that no training sees). Each recipe trains with ``driver train --budget MINUTES`` on one
torch thread, then ``driver replay`` scores ``best.pt`` on every held-out run, in order, as on the car:
R² per target and the error of the constant predictor (always the mean of the training labels), in run
units. Project-sim models also drive held-out sim tracks closed-loop (``driver sim drive``: autonomy).

Datasets (the input sizes in docs/car-to-model.md, and an external simulator's runs):

| name | runs |
|---|---|
| ``sim48`` | the project's sim, 48x64 mono at 30 fps (the demo's size): 24 x 20 s tracks; 6 held-out tracks |
| ``sim64`` | the same at 64x96 (PilotNet needs 61 px) |
| ``sim94`` | the same at the lab's 94x168, stereo: 12 x 20 s tracks; 4 held-out tracks |
| ``ext96`` | highway-env's racetrack from ``bench/extsim/record.py`` (96x96 mono, 15 Hz, a car that |
| | accelerates, coasts and brakes): ``--extsim-runs DIR`` holding ``runs_train/`` and ``runs_test/`` |

Recipes: ``default`` (driver train's defaults), ``pilotnet`` (``--arch pilotnet --stack 1``, the plain
single-frame baseline), ``legacy`` (the training recipe of docs/car-to-model.md's small-input example
before issue 18, on today's encoder: LayerNorm before the GRU, lr 2e-3, no target normalisation, hidden
32, 16 clips of 4 frames, one predicted step, flagged windows kept, one flip draw per clip).

Writes ``WORK/results.json`` and prints a markdown table (docs/benchmarks.md, "Training recipes").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.store import Store
from driver.policy import load_policy
from driver.sim.evaluate_policy import SimDriveConfig, sim_drive
from driver.sim.record import SimRecordConfig, record_runs
from driver.sim.replay import ReplayConfig, replay
from driver.training import TrainConfig, train

DATASETS = {
    "sim48": {"height": 48, "width": 64, "stereo": False, "train": 24, "test": 6, "seconds": 20.0},
    "sim64": {"height": 64, "width": 96, "stereo": False, "train": 24, "test": 6, "seconds": 20.0},
    "sim94": {"height": 94, "width": 168, "stereo": True, "train": 12, "test": 4, "seconds": 20.0},
    "ext96": None,
}
RECIPES = {
    "default": {},
    "pilotnet": {"arch": "pilotnet", "stack": 1},
    "legacy": {"arch": "squeezenet_gru", "arch_kwargs": {"hidden_size": 32, "feature_norm": "layer"}, "stack": 1,
               "clip_length": 4, "horizon": 1, "target_stride": 1, "batch_size": 16, "lr": 2e-3, "warmup_steps": 20,
               "target_norm": False, "exclude_flagged": False, "flip_scope": "clip"},
}


class WarningCounter(logging.Handler):
    """Counts the training's warnings (not learning, blowing up) to show them in the table."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("driver.training"):
            self.messages.append(record.getMessage())


def sim_stores(work: Path, name: str, spec: dict) -> tuple[Path, Path]:
    """Record (once) and ingest the project-sim runs of ``spec``: (train store, test store)."""
    stores = []
    for split, runs, seed in (("train", spec["train"], 0), ("eval", spec["test"], 100)):
        out = work / name / f"runs_{split}"
        if not out.exists() or len(list(out.glob("*.h5"))) < runs:
            record_runs(SimRecordConfig(out=out, runs=runs, seconds=spec["seconds"], height=spec["height"],
                                        width=spec["width"], stereo=spec["stereo"], seed=seed, split=split))
        stores.append(_ingest(out, work / name / f"{'train' if split == 'train' else 'test'}.zarr"))
    return stores[0], stores[1]


def _ingest(runs: Path, store: Path) -> Path:
    report = ingest(IngestConfig(sources=[str(runs)], out=str(store)))
    if not report.ok:
        raise SystemExit(f"ingest of {runs} failed: {[o.error for o in report.failures]}")
    return store


def run_one(work: Path, dataset: str, recipe: str, stores: tuple[Path, Path], minutes: float,
            sim_tracks: int) -> dict:
    train_store, test_store = stores
    out = work / dataset / "train"
    name = recipe
    shutil.rmtree(out / name, ignore_errors=True)
    counter = WarningCounter()
    logging.getLogger("driver").addHandler(counter)
    t0 = time.perf_counter()
    try:
        result = train(TrainConfig(**{"data": str(train_store), "out": str(out), "name": name,
                                      "budget": f"{minutes:g}m", "progress": False, **RECIPES[recipe]}))
    except ValueError as e:  # e.g. PilotNet on frames smaller than 61x61
        return {"dataset": dataset, "recipe": recipe, "error": str(e)}
    finally:
        logging.getLogger("driver").removeHandler(counter)
    seconds = time.perf_counter() - t0
    ckpt = result.best_checkpoint or result.last_checkpoint
    rep = replay(ReplayConfig(model=str(ckpt), data=str(test_store), out=str(work / dataset / "replay" / name),
                              video=False, plots=False), policy=load_policy(ckpt, threads=1))
    o = rep.overall
    row = {"dataset": dataset, "recipe": recipe, "steps": result.steps, "train_s": round(seconds),
           "frames_per_s": result.samples_per_s, "warnings": counter.messages, "test_frames": o["scored"],
           "steer": o["steer"], "throttle": o["throttle"], "constant": o.get("constant"),
           "val": {k: result.best_val.get(k) for k in ("loss", "score", "step")}}
    if sim_tracks and dataset.startswith("sim"):
        d = sim_drive(SimDriveConfig(model=str(ckpt), out=str(work / dataset / "sim_drive" / name),
                                     tracks=sim_tracks, media=False)).summary()
        row["autonomy_pct"] = d["autonomy_pct"]
        row["mean_speed_mps"] = d["mean_speed_mps"]
    return row


def _f(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def table(rows: list[dict]) -> str:
    lines = ["| data | recipe | steps | steer R² | steer MAE (constant) | throttle R² | throttle MAE (constant) "
             "| sim autonomy | training warnings |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['recipe']} | - | - | - | - | - | - | {r['error'][:60]} |")
            continue
        s, t = r["steer"], r["throttle"]
        warn = "; ".join(w.split(": ", 1)[-1][:90] for w in r["warnings"]) or "none"
        lines.append(f"| {r['dataset']} | {r['recipe']} | {r['steps']:,} | {_f(s['r2'])} | {_f(s['mae'])} "
                     f"({_f(s['const_mae'])}) | {_f(t['r2'])} | {_f(t['mae'])} ({_f(t['const_mae'])}) | "
                     f"{_f(r.get('autonomy_pct'), 1)} | {warn} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--datasets", nargs="+", default=["sim48", "sim64", "ext96"], choices=sorted(DATASETS))
    ap.add_argument("--recipes", nargs="*", default=["default", "pilotnet", "legacy"], choices=sorted(RECIPES))
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per run (driver train --budget)")
    ap.add_argument("--extsim-runs", default=None, help="folder with runs_train/ and runs_test/ (bench/extsim)")
    ap.add_argument("--sim-tracks", type=int, default=3, help="held-out sim tracks driven closed-loop (0 = none)")
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME=JSON",
                    help='an extra recipe of TrainConfig fields, e.g. small={"batch_size": 8}')
    args = ap.parse_args()
    for item in args.recipe:
        name, _, fields = item.partition("=")
        RECIPES[name] = json.loads(fields)
        args.recipes.append(name)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    work = Path(args.work)
    rows = []
    for dataset in args.datasets:
        if dataset == "ext96":
            if not args.extsim_runs:
                raise SystemExit("ext96 needs --extsim-runs DIR (record with bench/extsim/record.py)")
            src = Path(args.extsim_runs)
            stores = (_ingest(src / "runs_train", work / dataset / "train.zarr"),
                      _ingest(src / "runs_test", work / dataset / "test.zarr"))
        else:
            stores = sim_stores(work, dataset, DATASETS[dataset])
        for recipe in args.recipes:
            rows.append(run_one(work, dataset, recipe, stores, args.minutes, args.sim_tracks))
            (work / "results.json").write_text(json.dumps(rows, indent=1, default=str))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    runs = {d: len(Store(work / d / "test.zarr").runs) for d in args.datasets}
    print(f"\ncommand: python bench/train_sweep.py {' '.join(os.sys.argv[1:])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} on 1 thread; held-out runs per dataset: {runs}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
