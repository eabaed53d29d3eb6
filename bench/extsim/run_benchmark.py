"""Issue 18's external-simulator benchmark, end to end, on highway-env's racetrack.

    pip install -e '.[extsim]'
    python bench/extsim/run_benchmark.py --work /tmp/extsim_bench --budget-minutes 10

1. record: the scripted expert with DART noise, ``--train-runs`` training drives and ``--test-runs``
   held-out drives (disjoint seeds) as lab-format HDF5 runs (``record.py``);
2. ingest: ``driver ingest`` into ``train.zarr`` and ``test.zarr`` (two stores: training never sees a
   held-out run, not even for choosing ``best.pt``);
3. train: ``driver train`` with the default recipe and with the PilotNet baseline, the same CPU budget
   each (see TRAINING INVOCATIONS below): one after the other, or with ``--parallel`` all at once, one
   torch thread each, so that every recipe trains under the same machine load;
4. open loop: ``driver replay`` of each checkpoint on the held-out runs → R² per target (run units);
   the constant predictor (the mean of the training labels) is scored from the labels directly;
5. closed loop: every controller drives the same held-out starts (``closed_loop.py``): score vs the
   expert, PilotNet autonomy, pace.

Prints one table and writes ``WORK/results.json`` and ``WORK/results.md``. Every stage skips work already
on disk (recorded runs, ingested runs, finished training; an interrupted training resumes), so running the
same command again after a kill continues where it stopped. Each subprocess's output goes to
``WORK/logs/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench.extsim` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.extsim.closed_loop import (
    ClosedLoopConfig,
    ConstantController,
    ExpertController,
    PolicyController,
    Summary,
    evaluate,
    summarize,
)
from bench.extsim.env import RacetrackSim, SimConfig, sim_version
from bench.extsim.expert import ExpertSpec
from bench.extsim.record import RecordConfig, record_runs
from bench.extsim.scores import constant_r_squared, fmt, r_squared_from_mse
from driver.datasets.store import Store
from driver.errors import DriverError
from driver.units import run_to_norm

log = logging.getLogger("extsim.bench")

# ==================================================================================================
# TRAINING INVOCATIONS: the one place to edit when `driver train`'s recipe flags change.
# `default` is `driver train`'s own recipe: only what these runs require is set (one camera). `pilotnet`
# is issue 18's plain single-frame CNN baseline (one frame in). Every recipe gets the same wall-clock
# budget through `driver train --budget` (steps, warmup and validation sized to this machine's speed).
# `small` (not run unless asked, `--models ... small`) is docs/car-to-model.md's small-input recipe, a check
# that these runs are learnable at all.
# ==================================================================================================


def half_widths(**extra) -> str:
    """``--arch-kwargs`` of the default's SqueezeNet at half its widths (stem 32, Fire expand 64..256), plus extra."""
    return json.dumps({"stem_channels": 32, "base_width": 64, "width_increment": 64, **extra})


HALF = half_widths()
RECIPES: dict[str, list[str]] = {
    "default": [],
    "pilotnet": ["--arch", "pilotnet", "--stack", "1"],
    # the default before recurrent lanes drew one flip per run (each chunk of a lane was mirrored at random)
    "default_flip_clip": ["--flip-scope", "clip"],
    # the default before BatchNorm statistics were recomputed on random training clips at each validation
    "default_moving_bn": ["--precise-bn", "0"],
    # recurrent lanes that jump to a new random clip (zero state) with this chance each step
    "lane_jump25": ["--lane-jump", "0.25"],
    "lane_jump100": ["--lane-jump", "1.0"],
    "lane_jump25_s2": ["--lane-jump", "0.25", "--seed", "2"],
    "half_lane_jump25": ["--lane-jump", "0.25", "--arch-kwargs", HALF],
    "half_lane_jump25_s2": ["--lane-jump", "0.25", "--seed", "2", "--arch-kwargs", HALF],
    # the default reading the car's speed (the runs' `encoder` series; closed loop feeds the sim car's speed)
    "default_speed": ["--speed-input", "on"],
    # the default's SqueezeNet at half the widths (stem 32, Fire expand 64..256): 2.75x cheaper a step at 96x96
    "half": ["--arch-kwargs", HALF],
    "half_s2": ["--seed", "2", "--arch-kwargs", HALF],
    # a quarter of the widths (stem 16, Fire expand 32..128): cheaper steps again; and half at twice the auto lr
    "quarter": ["--arch-kwargs", '{"stem_channels": 16, "base_width": 32, "width_increment": 32}'],
    "half_lr2x": ["--lr", "1.3e-3", "--arch-kwargs", HALF],
    # half and PilotNet validated and saved as the moving average of their weights (--ema)
    "half_ema": ["--ema", "0.999", "--arch-kwargs", HALF],
    "pilotnet_ema": ["--arch", "pilotnet", "--stack", "1", "--ema", "0.999"],
    # half with more between the features and the output: two GRU layers, or a 256-wide GRU
    "half_gru2": ["--arch-kwargs", half_widths(num_layers=2)],
    "half_h256": ["--arch-kwargs", half_widths(hidden_size=256)],
    # half with a loss on each frame's encoder reading alone (--frame-loss, a per-frame head)
    "half_frame": ["--frame-loss", "1.0", "--arch-kwargs", HALF],
    # the lab's other trunk (two convolutions and a fully connected layer, as PilotNet's design) under the GRU,
    # and on its own
    "z2color_gru": ["--arch", "z2color_gru"],
    "z2color": ["--arch", "z2color", "--stack", "1"],
    # PilotNet's convolutions and first fully connected layer under the GRU (the trunk that reads steering best)
    "pilotnet_gru": ["--arch", "pilotnet_gru"],
    "pilotnet_gru_s2": ["--arch", "pilotnet_gru", "--seed", "2"],
    "pilotnet_gru_frame": ["--arch", "pilotnet_gru", "--frame-loss", "1.0"],
    "pilotnet_gru_frame_s2": ["--arch", "pilotnet_gru", "--frame-loss", "1.0", "--seed", "2"],
    # the same with lanes that jump to a new random clip (zero state) a quarter of the steps
    "pilotnet_gru_jump25": ["--arch", "pilotnet_gru", "--lane-jump", "0.25"],
    "pilotnet_gru_jump25_s2": ["--arch", "pilotnet_gru", "--lane-jump", "0.25", "--seed", "2"],
    # a curriculum: independent random clips for the first 35 epochs (about half a 30-minute budget here), then lanes
    "pilotnet_gru_rc35": ["--arch", "pilotnet_gru", "--random-clip-epochs", "35"],
    "pilotnet_gru_rc35_s2": ["--arch", "pilotnet_gru", "--random-clip-epochs", "35", "--seed", "2"],
    # the same with random clips for the first 45 epochs: lanes only for the last quarter or so
    "pilotnet_gru_rc45": ["--arch", "pilotnet_gru", "--random-clip-epochs", "45"],
    "pilotnet_gru_rc45_s2": ["--arch", "pilotnet_gru", "--random-clip-epochs", "45", "--seed", "2"],
    # the curriculum as a share of the epochs (re-planned with the budget): the default and pilotnet_gru
    "default_rcs50": ["--random-clip-share", "0.5"],
    "default_rcs50_s2": ["--random-clip-share", "0.5", "--seed", "2"],
    "pilotnet_gru_rcs50": ["--arch", "pilotnet_gru", "--random-clip-share", "0.5"],
    "pilotnet_gru_rcs50_s2": ["--arch", "pilotnet_gru", "--random-clip-share", "0.5", "--seed", "2"],
    "pilotnet_gru_rcs50_s3": ["--arch", "pilotnet_gru", "--random-clip-share", "0.5", "--seed", "3"],
    # the same at 0.45x the auto lr (2.9e-4 against 6.45e-4 for 16 clips of 5 frames at 96x96; PilotNet's too)
    "pilotnet_gru_rcs50_lr29": ["--arch", "pilotnet_gru", "--random-clip-share", "0.5", "--lr", "2.9e-4"],
    "pilotnet_gru_rcs50_lr29_s2": ["--arch", "pilotnet_gru", "--random-clip-share", "0.5", "--lr", "2.9e-4",
                                   "--seed", "2"],
    # the same with an MLP head after the GRU: PilotNet's fc 50 and fc 10 between the GRU's output and the linear map
    "pilotnet_gru_rcs50_mlp": ["--arch", "pilotnet_gru", "--random-clip-share", "0.5", "--arch-kwargs",
                               '{"head_widths": [50, 10]}'],
    "pilotnet_gru_rcs50_mlp_s2": ["--arch", "pilotnet_gru", "--random-clip-share", "0.5", "--arch-kwargs",
                                  '{"head_widths": [50, 10]}', "--seed", "2"],
    "pilotnet_gru_rcs50_mlp_s3": ["--arch", "pilotnet_gru", "--random-clip-share", "0.5", "--arch-kwargs",
                                  '{"head_widths": [50, 10]}', "--seed", "3"],
    # R12: PilotNet's classifier as the skip path beside the GRU (PilotNet plus what the GRU adds)
    **{f"pilotnet_gru_rcs50_pnskip{tail}": ["--arch", "pilotnet_gru", "--random-clip-share", "0.5", "--arch-kwargs",
                                            '{"head_skip": true, "skip_widths": [50, 10]}', *seed]
       for tail, seed in (("", []), ("_s2", ["--seed", "2"]), ("_s3", ["--seed", "3"]))},
    "speed_half": ["--speed-input", "on", "--arch-kwargs", HALF],
    "speed_half_stack1": ["--speed-input", "on", "--stack", "1", "--arch-kwargs", HALF],
    "speed_half_noflip": ["--speed-input", "on", "--flip", "0", "--arch-kwargs", HALF],
    "pilotnet_noflip": ["--arch", "pilotnet", "--stack", "1", "--flip", "0"],
    # second training seeds on the same recordings
    "speed_half_stack1_s2": ["--speed-input", "on", "--stack", "1", "--seed", "2", "--arch-kwargs", HALF],
    "pilotnet_s2": ["--arch", "pilotnet", "--stack", "1", "--seed", "2"],
    "pilotnet_s3": ["--arch", "pilotnet", "--stack", "1", "--seed", "3"],
    "default_s2": ["--seed", "2"],
    "default_s3": ["--seed", "3"],
    # each target's loss weight x 1 / its running error ratio (--loss-balance: the default since it was measured
    # here; the `_unbalanced` recipes are the two before it)
    "default_balance": ["--loss-balance"],
    "pilotnet_balance": ["--arch", "pilotnet", "--stack", "1", "--loss-balance"],
    "default_unbalanced": ["--no-loss-balance"],
    "pilotnet_unbalanced": ["--arch", "pilotnet", "--stack", "1", "--no-loss-balance"],
    # the default with one frame in (the recurrent state carries the time the stacked frame did)
    "default_stack1": ["--stack", "1"],
    # the default reading the car's speed, with AdamW's decoupled weight decay at a usual strength
    "speed_wd": ["--speed-input", "on", "--weight-decay", "0.05"],
    # 48 lanes of 0.1 s clips a step (the default's 16 of 0.3 s: the same frames a step at 30 fps)
    "lanes48": ["--batch-size", "48", "--clip-seconds", "0.1"],
    # 32 lanes of 0.15 s clips (2 frames at 15 Hz): 64 frames a step from twice the default's places
    "lanes32": ["--batch-size", "32", "--clip-seconds", "0.15"],
    # the default whose encoder hands the GRU 32 or 64 channels at each of the 5x5 places (16 by default)
    "spatial32": ["--arch-kwargs", '{"spatial_channels": 32}'],
    "spatial64": ["--arch-kwargs", '{"spatial_channels": 64}'],
    # PilotNet drawing its clips uniformly (the default for frame models is the lab's low/high steering balance)
    "pilotnet_nobal": ["--arch", "pilotnet", "--stack", "1", "--no-balance-steer"],
    # the default whose output also reads the frame's features past the GRU (a linear skip, `head_skip`)
    "default_skip": ["--arch-kwargs", '{"head_skip": true}'],
    "default_skip_s2": ["--seed", "2", "--arch-kwargs", '{"head_skip": true}'],
    "small": ["--arch", "squeezenet_gru", "--arch-kwargs", '{"hidden_size": 32}', "--stack", "1", "--clip-length", "4",
              "--horizon", "1", "--target-stride", "1", "--batch-size", "16", "--lr", "2e-3", "--warmup-steps", "20"],
}
REQUIRED = ["--cameras", "left", "--no-progress"]  # the runs have one camera; no progress bar in logs
INGEST_FLAGS = ["--min-motor", "0"]  # motor is an acceleration command here: coasting (49) and braking are data


def recipe_arch(model: str) -> str:
    args = RECIPES[model]
    return args[args.index("--arch") + 1] if "--arch" in args else "default"


def train_budget_args(budget_s: float) -> list[str]:
    """Flags that hold training to ``budget_s`` of wall-clock time on this machine (`driver train --budget`
    sizes steps, warmup and validation to it)."""
    return ["--budget", f"{budget_s / 60:g}m"]


# ==================================================================================================


def driver_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "driver.cli", *args]


def run_logged(cmd: list[str], log_path: Path) -> float:
    """Run ``cmd`` with its output in ``log_path``; return seconds; raise with the log's tail on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + shlex.join(cmd), flush=True)
    t = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise DriverError(f"{shlex.join(cmd[:4])} ... exited {rc} (log {log_path}): {' | '.join(tail)}")
    return time.perf_counter() - t


def registered_archs() -> set[str]:
    from driver.models import list_models

    return set(list_models())


@dataclass
class BenchConfig:
    work: str
    train_runs: int = 24
    test_runs: int = 6
    seconds: float = 60.0
    budget_minutes: float = 10.0
    models: list[str] = field(default_factory=lambda: ["default", "pilotnet"])
    eval_episodes: int = 6
    eval_seconds: float = 45.0
    seed: int = 0
    parallel: bool = False  # train every model at once, one torch thread each (the same load for all)
    steer_lag: float = 0.0  # the expert's steering lag, s, in the recordings and the closed-loop reference
    sim: SimConfig = SimConfig()

    def __post_init__(self):
        if not 2 <= self.train_runs <= 1000:
            raise ValueError(f"train_runs={self.train_runs} must be in 2..1000 (training holds one out)")
        if not 1 <= self.test_runs <= 1000:
            raise ValueError(f"test_runs={self.test_runs} must be in 1..1000")
        if not 0.5 <= self.budget_minutes <= 600:
            raise ValueError(f"budget_minutes={self.budget_minutes} must be in 0.5..600")
        unknown = [m for m in self.models if m not in RECIPES]
        if unknown:
            raise ValueError(f"models {unknown} are not recipes here ({', '.join(RECIPES)})")

    @property
    def root(self) -> Path:
        return Path(self.work)


# ---- stages --------------------------------------------------------------------------------------


def stage_record(cfg: BenchConfig) -> None:
    for split, n in (("train", cfg.train_runs), ("test", cfg.test_runs)):
        record_runs(RecordConfig(out=str(cfg.root / "runs" / split), runs=n, seconds=cfg.seconds, split=split,
                                 seed=cfg.seed, steer_lag=cfg.steer_lag, sim=cfg.sim), progress=True)


def stage_ingest(cfg: BenchConfig) -> None:
    for split in ("train", "test"):
        run_logged(driver_cmd("ingest", str(cfg.root / "runs" / split), "--out", str(cfg.root / f"{split}.zarr"),
                              *INGEST_FLAGS), cfg.root / "logs" / f"ingest_{split}.log")


def train_base_args(cfg: BenchConfig, model: str) -> list[str]:
    """`driver train` flags of ``model``'s recipe on the benchmark's training store (budget flags aside); a
    recipe's own ``--seed`` (a second training seed on the same recordings) wins over the benchmark's."""
    return ["--data", str(cfg.root / "train.zarr"), "--seed", str(cfg.seed), *RECIPES[model], *REQUIRED,
            *(["--threads", "1"] if cfg.parallel else [])]


@dataclass
class TrainOutcome:
    model: str
    arch: str
    checkpoint: str | None = None
    seconds: float = 0.0
    steps: int = 0
    command: str = ""
    error: str | None = None


def stage_train(cfg: BenchConfig, model: str) -> TrainOutcome:
    arch = recipe_arch(model)
    out = TrainOutcome(model, arch)
    if arch != "default" and arch not in registered_archs():
        out.error = f"arch {arch!r} is not in this build of driver (driver models)"
        return out
    run_dir = cfg.root / "train" / model
    done = run_dir / "benchmark_done.json"
    if done.is_file():
        known = {f.name for f in fields(TrainOutcome)}
        return TrainOutcome(**{k: v for k, v in json.loads(done.read_text(encoding="utf-8")).items() if k in known})
    base = train_base_args(cfg, model)
    try:
        if (run_dir / "last.pt").is_file():  # an interrupted run: continue it
            cmd = driver_cmd("train", "--resume", str(run_dir))
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = driver_cmd("train", *base, *train_budget_args(cfg.budget_minutes * 60),
                             "--out", str(run_dir.parent), "--name", model)
        out.command = shlex.join(["driver", *cmd[3:]])
        out.seconds = run_logged(cmd, cfg.root / "logs" / f"train_{model}.log")
    except DriverError as e:
        out.error = str(e)
        return out
    best = run_dir / "best.pt"
    out.checkpoint = str(best if best.is_file() else run_dir / "last.pt")
    with open(run_dir / "metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out.steps = max((int(r["step"]) for r in rows), default=0)
    done.write_text(json.dumps(asdict(out), indent=2), encoding="utf-8")
    return out


class LoadSampler:
    """The machine's 1-minute load average every ``every_s`` seconds while training runs (in a thread)."""

    def __init__(self, every_s: float = 30.0):
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = np.array(self.samples or [float("nan")])
        return {"min": round(float(s.min()), 1), "median": round(float(np.median(s)), 1),
                "max": round(float(s.max()), 1), "samples": len(self.samples)}


def train_all(cfg: BenchConfig) -> tuple[dict[str, TrainOutcome], dict]:
    """Every model's training, one after the other or (``cfg.parallel``) all at once; and the machine's
    load average meanwhile."""
    with LoadSampler() as load:
        if cfg.parallel:
            with ThreadPoolExecutor(max_workers=len(cfg.models)) as pool:
                futures = {m: pool.submit(stage_train, cfg, m) for m in cfg.models}
                trained = {m: f.result() for m, f in futures.items()}
        else:
            trained = {m: stage_train(cfg, m) for m in cfg.models}
    return trained, load.summary()


def valid_labels(store_path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The steer and motor labels (run units) of the valid frames, per run and pooled (key ``ALL``)."""
    store = Store(store_path)
    out: dict[str, dict[str, np.ndarray]] = {}
    for run in store.runs:
        v = store.series(run, "valid").astype(bool)
        out[run] = {"steer": store.series(run, "steer")[v].astype(np.float64),
                    "motor": store.series(run, "motor")[v].astype(np.float64)}
    out["ALL"] = {k: np.concatenate([d[k] for d in out.values()]) for k in ("steer", "motor")}
    return out


def stage_replay(cfg: BenchConfig, model: str, checkpoint: str, test: dict) -> dict:
    out_dir = cfg.root / "replay" / model
    run_logged(driver_cmd("replay", "--model", checkpoint, "--data", str(cfg.root / "test.zarr"), "--out",
                          str(out_dir), "--no-video"), cfg.root / "logs" / f"replay_{model}.log")
    report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))

    def r2(m: dict, labels: dict) -> dict:
        return {"steer": r_squared_from_mse(m["steer"]["mse"], labels["steer"]),
                "motor": r_squared_from_mse(m["throttle"]["mse"], labels["motor"])}

    return {"overall": r2(report["overall"], test["ALL"]),
            "per_run": {run: r2(m, test[run]) for run, m in report["per_run"].items()},
            "steer_mae": report["overall"]["steer"]["mae"], "throttle_mae": report["overall"]["throttle"]["mae"]}


def constant_scores(train: dict, test: dict) -> dict:
    mean = {k: float(np.mean(train["ALL"][k])) for k in ("steer", "motor")}
    r2 = {k: constant_r_squared(mean[k], test["ALL"][k]) for k in ("steer", "motor")}
    per_run = {run: {k: constant_r_squared(mean[k], d[k]) for k in ("steer", "motor")}
               for run, d in test.items() if run != "ALL"}
    return {"mean_run_units": mean, "overall": r2, "per_run": per_run}


def stage_closed_loop(cfg: BenchConfig, controllers: dict[str, object]) -> dict[str, Summary]:
    loop = ClosedLoopConfig(episodes=cfg.eval_episodes, seconds=cfg.eval_seconds, seed=cfg.seed, sim=cfg.sim)
    sim = RacetrackSim(cfg.sim)
    try:
        expert = evaluate(ExpertController(ExpertSpec(steer_lag_s=cfg.steer_lag)), loop, sim)
        results = {"expert": summarize(expert, expert, cfg.sim.fps)}
        for name, controller in controllers.items():
            t = time.perf_counter()
            results[name] = summarize(evaluate(controller, loop, sim), expert, cfg.sim.fps)
            results[name].extra.update(seconds=round(time.perf_counter() - t, 1),
                                       mode=getattr(controller, "mode", None))
            print(f"closed loop {name}: score {fmt(results[name].score)} ({results[name].extra['seconds']} s)",
                  flush=True)
        return results
    finally:
        sim.close()


# ---- report --------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    head = ("| model | steer R² | throttle R² | closed-loop score | sim reward/step | autonomy | pace | completed "
            "| train steps | train s |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cl = r.get("closed_loop")
        lines.append("| " + " | ".join([
            r["model"], fmt(r.get("steer_r2")), fmt(r.get("throttle_r2")),
            fmt(cl.score) if cl else "-", fmt(cl.sim_return_per_step) if cl else "-",
            f"{cl.autonomy_pct:.1f}%" if cl else "-",
            fmt(cl.pace, 2) if cl else "-", f"{100 * cl.completed:.0f}%" if cl else "-",
            str(r.get("steps", "-")), fmt(r.get("train_s"), 0)]) + " |")
        if r.get("error"):
            lines[-1] += f" {r['error']}"
    return "\n".join(lines)


def run_benchmark(cfg: BenchConfig) -> dict:
    cfg.root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - t, 1)
        return result

    timed("record", stage_record, cfg)
    timed("ingest", stage_ingest, cfg)
    train_labels, test_labels = valid_labels(cfg.root / "train.zarr"), valid_labels(cfg.root / "test.zarr")
    trained, train_load = timed("train", train_all, cfg)
    open_loop = {m: timed(f"replay {m}", stage_replay, cfg, m, t.checkpoint, test_labels)
                 for m, t in trained.items() if t.checkpoint}
    const = constant_scores(train_labels, test_labels)

    from driver.policy import load_policy

    controllers: dict[str, object] = {
        "constant": ConstantController(run_to_norm(const["mean_run_units"]["steer"]),
                                       run_to_norm(const["mean_run_units"]["motor"]))}
    for m, t in trained.items():
        if t.checkpoint:
            controllers[m] = PolicyController(load_policy(t.checkpoint, threads=1))
    closed = timed("closed loop", stage_closed_loop, cfg, controllers)

    rows = [{"model": "expert (labels)", "steer_r2": 1.0, "throttle_r2": 1.0, "closed_loop": closed["expert"]},
            {"model": "constant (train mean)", "steer_r2": const["overall"]["steer"],
             "throttle_r2": const["overall"]["motor"], "closed_loop": closed["constant"]}]
    for m, t in trained.items():
        ol = open_loop.get(m, {}).get("overall", {})
        name = "default recipe" if m == "default" else m if t.arch in (m, "default") else f"{m} ({t.arch})"
        rows.append({"model": name,
                     "steer_r2": ol.get("steer"), "throttle_r2": ol.get("motor"), "closed_loop": closed.get(m),
                     "steps": t.steps, "train_s": t.seconds, "error": t.error})
    text = table(rows)
    n_train = sum(len(d["steer"]) for k, d in train_labels.items() if k != "ALL")
    n_test = len(test_labels["ALL"]["steer"])
    header = (f"highway-env {sim_version()} {cfg.sim.track}, {cfg.sim.height}x{cfg.sim.width} heading-up camera at "
              f"{cfg.sim.fps:g} Hz; {cfg.train_runs} training runs ({n_train:,} valid frames), {cfg.test_runs} "
              f"held-out runs ({n_test:,} frames); budget {cfg.budget_minutes:g} min per model; closed loop "
              f"{cfg.eval_episodes} held-out starts x {cfg.eval_seconds:g} s; trained "
              f"{'at the same time, one thread each' if cfg.parallel else 'one after the other'}, load average "
              f"{train_load['min']:g}-{train_load['max']:g} (median {train_load['median']:g}) on {os.cpu_count()} CPUs")
    results = {
        "config": {**asdict(cfg)}, "simulator": f"highway-env {sim_version()}", "timings_s": timings,
        "train_load": train_load,
        "constant": const, "open_loop": open_loop, "train": {m: asdict(t) for m, t in trained.items()},
        "closed_loop": {k: v.to_dict() for k, v in closed.items()}, "table": text, "header": header}
    (cfg.root / "results.json").write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    (cfg.root / "results.md").write_text(f"{header}\n\n{text}\n", encoding="utf-8")
    print(f"\n{header}\n\n{text}\n\nstage seconds: {timings}\nresults: {cfg.root / 'results.json'}")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="working folder (runs, stores, checkpoints, results)")
    ap.add_argument("--train-runs", type=int, default=24)
    ap.add_argument("--test-runs", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per recorded run")
    ap.add_argument("--budget-minutes", type=float, default=10.0, help="training budget per model")
    ap.add_argument("--models", nargs="+", default=["default", "pilotnet"], choices=sorted(RECIPES))
    ap.add_argument("--eval-episodes", type=int, default=6)
    ap.add_argument("--eval-seconds", type=float, default=45.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", action="store_true",
                    help="train the models at the same time, one torch thread each (the same load for all)")
    ap.add_argument("--steer-lag", type=float, default=0.0,
                    help="time constant (s) of a lag on the expert's steering, as a human's hands (0 = none: "
                         "the benchmark's expert); record.py's flag, also the closed loop's reference")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        cfg = BenchConfig(work=a.work, train_runs=a.train_runs, test_runs=a.test_runs, seconds=a.seconds,
                          budget_minutes=a.budget_minutes, models=a.models, eval_episodes=a.eval_episodes,
                          eval_seconds=a.eval_seconds, seed=a.seed, parallel=a.parallel, steer_lag=a.steer_lag)
        run_benchmark(cfg)
    except (DriverError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
