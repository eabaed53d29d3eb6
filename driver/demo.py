"""`driver demo`: the main job on an embedded default, no data needed.

The whole story on the simulator: the expert drives training tracks with DART noise and the runs are
recorded in the lab's HDF5 format (`driver sim record`), ingested into a store (`driver ingest`), a
recurrent SqueezeNet-GRU is trained on them (`driver train`), replayed open-loop against the recorded
human (here: expert) driving on held-out runs, and finally drives held-out tracks closed-loop from
pixels alone (`driver sim drive`), scored with PilotNet's autonomy metric, and is exported to ONNX
(parity-checked against PyTorch) for the car. A short report is printed and written to ``WORKDIR/report.md``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from driver.datasets.info import describe_store
from driver.datasets.ingest import IngestConfig, ingest
from driver.errors import DriverError
from driver.export.onnx_export import OnnxExportConfig, export_onnx
from driver.policy import load_policy
from driver.sim.evaluate_policy import SimDriveConfig, sim_drive
from driver.sim.record import SimRecordConfig, record_runs
from driver.sim.replay import ReplayConfig, replay
from driver.training import TrainConfig, train

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    workdir: str = "demo_out"
    runs: int = 32
    seconds: float = 15.0
    height: int = 48
    width: int = 64
    steps: int = 2400
    eval_tracks: int = 6
    jobs: int = 2
    seed: int = 0

    def __post_init__(self):
        if not 3 <= self.runs <= 1000:
            raise ValueError(f"runs={self.runs} must be in 3..1000 (some runs are held out for validation)")
        if not 5 <= self.seconds <= 3600:
            raise ValueError(f"seconds={self.seconds} must be in 5..3600 per run")
        if not 1 <= self.steps <= 10**6:
            raise ValueError(f"steps={self.steps} must be in 1..1000000")
        if not 1 <= self.eval_tracks <= 100:
            raise ValueError(f"eval_tracks={self.eval_tracks} must be in 1..100")


def run_demo(config: DemoConfig) -> str:
    """Run every stage; return the report text (also written to WORKDIR/report.md)."""
    work = Path(config.workdir)
    # the demo's own outputs: start afresh
    for part in ("runs", "store.zarr", "train", "replay", "sim_drive", "export"):
        shutil.rmtree(work / part, ignore_errors=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    paths = record_runs(SimRecordConfig(out=work / "runs", runs=config.runs, seconds=config.seconds,
                                        height=config.height, width=config.width, seed=config.seed))
    timings["sim record"] = time.perf_counter() - t

    store_path = work / "store.zarr"
    report = ingest(IngestConfig(sources=[str(p) for p in paths], out=str(store_path), jobs=config.jobs))
    timings["ingest"] = report.seconds
    if not report.ok:
        raise DriverError("demo ingest failed: " + "; ".join(o.error for o in report.failures))
    summary = describe_store(store_path)

    t = time.perf_counter()
    epochs = 4
    train_config = TrainConfig(**{
        "data": str(store_path), "arch": "squeezenet_gru", "arch_kwargs": {"hidden_size": 32},
        "cameras": "left", "stack": 1, "clip_length": 4, "horizon": 1, "target_stride": 1, "batch_size": 16,
        "epochs": epochs, "steps_per_epoch": max(1, config.steps // epochs), "lr": 1e-3, "warmup_steps": 100,
        "color_jitter": 0.5,
        "val_fraction": 0.15, "out": str(work / "train"), "name": "demo", "seed": config.seed})
    run = train(train_config)
    timings["train"] = time.perf_counter() - t
    checkpoint = run.best_checkpoint or run.last_checkpoint

    t = time.perf_counter()
    replay_text = _replay(checkpoint, store_path, run, work)
    timings["replay"] = time.perf_counter() - t

    t = time.perf_counter()
    drive = sim_drive(SimDriveConfig(model=str(checkpoint), out=str(work / "sim_drive"),
                                     tracks=config.eval_tracks, seed=config.seed))
    timings["sim drive"] = time.perf_counter() - t
    d = drive.summary()

    t = time.perf_counter()
    onnx = export_onnx(checkpoint, OnnxExportConfig(out=str(work / "export" / "demo.onnx")))
    timings["export"] = time.perf_counter() - t

    text = "\n".join([
        "# driver demo report",
        "",
        f"- data: {len(summary.runs)} simulated runs ({config.seconds:.0f} s each, {config.height}x{config.width} "
        f"mono, expert with DART noise), {summary.frames:,} frames, {summary.valid:,} valid",
        f"- model: squeezenet_gru trained {run.steps} steps ({run.samples_per_s:,.0f} frames/s, "
        f"data wait {100 * run.data_wait:.1f}%) on runs split by run",
        f"- validation (held-out runs): steer MAE {run.best_val.get('steer_mae', float('nan')):.2f}, "
        f"throttle MAE {run.best_val.get('motor_mae', float('nan')):.2f} run units (0..99)",
        replay_text,
        f"- **closed loop on {config.eval_tracks} held-out tracks: autonomy {d['autonomy_pct']:.1f}%**, "
        f"{d['interventions']} interventions ({d['interventions_per_km']:.1f}/km), mean |cte| "
        f"{d['mean_abs_cte_m']:.3f} m, mean speed {d['mean_speed_mps']:.2f} m/s, {d['laps']:.1f} laps",
        f"- deploy: ONNX step model {onnx.path} ({onnx.bytes / 1e6:.2f} MB, state in and out), parity with "
        f"PyTorch on real frames max |diff| {onnx.max_abs_diff:.1e} over {onnx.steps_checked} steps; drive it "
        f"with `driver drive --model {onnx.path} --runtime onnx`",
        f"- files: checkpoint {checkpoint}, sim drive media in {work / 'sim_drive'}",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
        "",
    ])
    (work / "report.md").write_text(text, encoding="utf-8")
    (work / "report.json").write_text(json.dumps({"timings": timings, "sim_drive": d, "val": run.best_val,
                                                  "export": onnx.to_dict()}, indent=2), encoding="utf-8")
    print(text)  # noqa: T201 - the demo's report is its output
    return text


def _replay(checkpoint: Path, store_path: Path, run, work: Path) -> str:
    """Open-loop replay on the held-out runs: the model against the recorded (expert) driving."""
    val_runs = json.loads((run.run_dir / "split.json").read_text())["val"]
    rep = replay(ReplayConfig(model=str(checkpoint), data=str(store_path), runs=val_runs,
                              out=str(work / "replay"), video=True), policy=load_policy(checkpoint, threads=1))
    o = rep.overall
    return (f"- open-loop replay on {len(val_runs)} held-out runs ({o['scored']:,} frames): steer MAE "
            f"{o['steer']['mae']:.2f}, bias {o['steer']['bias']:+.2f}, throttle MAE {o['throttle']['mae']:.2f} "
            f"run units; best lag {o['lag_frames']} frames; plots and video in {work / 'replay'}")
