"""The `driver` command line: parses arguments into typed configs and dispatches. Nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from rich.console import Console

from driver.config_flags import add_config_flags
from driver.errors import DriverError

MODEL_FILES = "checkpoint (best.pt / last.pt / run dir), exported .onnx / .ts or compressed .dcz"

INGEST_EXAMPLES = """examples:
  driver ingest runs/*.h5 --out data/store.zarr
  driver ingest runs/ --out data/store.zarr --jobs 2            # every .h5/.hdf5 in runs/
  driver ingest runs/*.h5 --out store.zarr --accepted-states 1 --min-motor 50 --max-gap 0.2
  driver ingest new_runs/*.h5 --out data/store.zarr             # adds new runs; unchanged ones are skipped

A run that fails validation is reported on one line and skipped; the others are ingested and the exit
code is 1. A killed ingest leaves no half-written run: run the same command again to finish.
"""

TRAIN_EXAMPLES = """examples:
  driver train --data store.zarr --arch squeezenet_lstm
  driver train --data store.zarr --arch squeezenet --stack 2 --epochs 20 --batch-size 64 --name sq1
  driver train --config train.toml --lr 3e-4          # flags override the file
  driver train --resume runs/train/sq1                # after a crash or kill -9: continues exactly
  torchrun --nproc-per-node 2 -m driver.cli train --data store.zarr --name ddp1   # data parallel
"""

DRIVE_EXAMPLES = """examples:
  driver drive --port /dev/ttyUSB0 --model runs/train/x/best.pt                 # USB camera 0
  driver drive --port /dev/ttyUSB0 --model best.pt --camera /dev/video2 --fps 30 --max-throttle 0.25
  driver drive --model best.pt --camera sim --seconds 60                        # no car: the simulator
  driver drive --port /dev/ttyUSB0 --model best.pt --camera file:lap.mp4 --shadow
  driver drive --port /dev/ttyUSB0 --model best.pt --camera replay:store.zarr:run_003
Exit code 0 on a clean stop (Ctrl-C, SIGTERM, --seconds, end of video), 1 when a failsafe check fired.
"""

SIM_DRIVE_EXAMPLES = """examples:
  driver sim drive --model expert --tracks 6                         # the expert: the pace reference
  driver sim drive --model best.pt --tracks 6 --out drive6           # held-out tracks in their own variants
  driver sim drive --model best.pt --tracks 6 --variants 10 11 --variant-split eval   # other held-out looks
Prints a table per track (autonomy, pace vs the expert, lap times, interventions by cause, corner/straight
speeds) and writes summary.json, top-down maps, speed profiles and videos to --out.
"""

DEMO_EXAMPLES = """examples:
  driver demo                  # sim record -> ingest -> train -> open-loop replay -> closed-loop sim drive
  driver demo --workdir /tmp/d --runs 24 --steps 1200 --eval-tracks 10
"""


def _ingest(args: argparse.Namespace) -> int:
    from driver.datasets.ingest import IngestConfig, ingest, summary_table
    from driver.datasets.validity import ValidityRules

    rules = ValidityRules(accepted_states=tuple(args.accepted_states), min_motor=args.min_motor,
                          max_gap_s=args.max_gap, reject_pinned_steer=not args.keep_pinned_steer)
    config = IngestConfig(sources=args.sources, out=args.out, jobs=args.jobs, codec=args.codec,
                          shard_frames=args.shard_frames, validity=rules, force=args.force)
    report = ingest(config, progress=sys.stderr.isatty())
    console = Console()
    console.print(summary_table(report))
    for o in report.failures:
        console.print(f"[red]FAILED[/red] {o.error}", highlight=False, soft_wrap=True)
    return 0 if report.ok else 1


def _info(args: argparse.Namespace) -> int:
    from driver.datasets.info import describe_store, info_tables

    console = Console()
    for table in info_tables(describe_store(args.store)):
        console.print(table)
    return 0


def _models(args: argparse.Namespace) -> int:
    from driver.models import InputSpec
    from driver.models.summary import format_model_table, model_rows

    spec = InputSpec(height=args.height, width=args.width, cameras=args.cameras, stack=args.stack,
                     n_modes=args.modes, horizon=args.horizon)
    print(format_model_table(model_rows(spec)))  # noqa: T201 - the command's output
    return 0


def _train(args: argparse.Namespace) -> int:
    from driver.training import resolve_config, train
    from driver.training.config import TrainConfig
    from driver.training.metrics import summary_table

    if args.resume:
        result = train(resume=args.resume)
    else:
        overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
        if isinstance(overrides.get("arch_kwargs"), str):
            try:
                overrides["arch_kwargs"] = json.loads(overrides["arch_kwargs"])
            except json.JSONDecodeError as e:
                raise ValueError(f"--arch-kwargs is not valid JSON ({e}): {overrides['arch_kwargs']!r}") from e
        result = train(resolve_config(args.config, overrides))
    Console().print(summary_table(result))
    return 0


def _sim_record(args: argparse.Namespace) -> int:
    from driver.sim.record import SimRecordConfig, record_runs

    paths = record_runs(SimRecordConfig(out=args.out, runs=args.runs, seconds=args.seconds, fps=args.fps,
                                        height=args.height, width=args.width, stereo=args.stereo, seed=args.seed,
                                        noise=args.noise, split=args.split, variants=args.variants or None,
                                        variant_split=args.variant_split, car=args.car,
                                        progress=sys.stderr.isatty()))
    print(f"wrote {len(paths)} runs to {args.out}")  # noqa: T201 - the command's output
    return 0


def _sim_drive(args: argparse.Namespace) -> int:
    from driver.sim.evaluate_policy import SimDriveConfig, format_sim_drive, sim_drive

    result = sim_drive(SimDriveConfig(model=args.model, out=args.out, tracks=args.tracks, laps=args.laps,
                                      split=args.split, variants=args.variants or [],
                                      variant_split=args.variant_split or "", car=args.car,
                                      max_seconds=args.max_seconds, mode=args.mode, media=not args.no_media,
                                      seed=args.seed, runtime=args.runtime))
    print(format_sim_drive(result))  # noqa: T201 - the command's output
    return 0


def _replay(args: argparse.Namespace) -> int:
    from driver.policy import load_policy
    from driver.sim.replay import ReplayConfig, format_replay_report, replay
    from driver.sim.warp_replay import WarpReplayConfig, format_warp_report, warp_replay

    policy = load_policy(args.model, runtime=args.runtime, threads=args.threads)
    if args.closed_loop:
        report = warp_replay(WarpReplayConfig(model=args.model, data=args.data, runs=args.runs or [],
                                              threshold_m=args.threshold, mode=args.mode, out=args.out),
                             policy=policy)
        print(format_warp_report(report))  # noqa: T201 - the command's output
        return 0
    report = replay(ReplayConfig(model=args.model, data=args.data, runs=args.runs or [], out=args.out,
                                 mode=args.mode, video=not args.no_video, runtime=args.runtime), policy=policy)
    print(format_replay_report(report))  # noqa: T201 - the command's output
    return 0


def _drive(args: argparse.Namespace) -> int:
    from driver.vehicle.drive_config import DriveConfig
    from driver.vehicle.drive_loop import drive

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DriveConfig)}
    report = drive(DriveConfig.from_dict({k: v for k, v in values.items() if v is not None}))
    return report.exit_code


def _beside(path: str, suffix: str) -> str:
    """The default output file: next to the input, e.g. runs/x/best.pt -> runs/x/best.onnx."""
    from pathlib import Path

    p = Path(path)
    p = p / "best.pt" if p.is_dir() else p
    return str(p.with_name(p.name.split(".")[0] + suffix))


def _export(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        from driver.export.onnx_export import OnnxExportConfig, export_onnx

        out = args.out or _beside(args.checkpoint, ".onnx")
        r = export_onnx(args.checkpoint, OnnxExportConfig(out=out, opset=args.opset, tolerance=args.tolerance))
    else:
        from driver.export.torchscript import TorchScriptConfig, export_torchscript

        r = export_torchscript(args.checkpoint, TorchScriptConfig(out=args.out or _beside(args.checkpoint, ".ts"),
                                                                  tolerance=args.tolerance))
    print(f"wrote {r.path} ({r.format}, {r.bytes / 1e6:.3f} MB); parity vs PyTorch over {r.steps_checked} steps "  # noqa: T201
          f"on {r.frames} frames: max |diff| {r.max_abs_diff:.2e} (tolerance {r.tolerance:.0e})")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from driver.export.quantize import QuantizeConfig, quantize_onnx

    out = args.out or _beside(args.model, ".int8.onnx")
    r = quantize_onnx(args.model, QuantizeConfig(out=out, calibration_frames=args.calibration_frames,
                                                 calibration_method=args.calibration_method,
                                                 per_channel=not args.no_per_channel))
    mae = ("" if r.steer_mae_fp32 is None else
           f"; held-out steer MAE {r.steer_mae_fp32:.3f} -> {r.steer_mae_int8:.3f} run units")
    print(f"wrote {r.path}: {r.fp32_bytes / 1e6:.3f} MB -> {r.int8_bytes / 1e6:.3f} MB, step {r.fp32_ms:.2f} -> "  # noqa: T201
          f"{r.int8_ms:.2f} ms ({r.speedup:.2f}x), max |diff| {r.max_abs_diff:.3g} ({r.calibration}){mae}")
    return 0


def _compress(args: argparse.Namespace) -> int:
    from driver.export.compress import CompressConfig, compress_checkpoint, format_compress_result

    def pairs(items, cast):
        out = {}
        for item in items or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"{item!r} must be PATTERN=VALUE")
            out[key] = cast(value)
        return out

    config = CompressConfig(out=args.out or _beside(args.checkpoint, ".dcz"), density=args.density, bits=args.bits,
                            layer_bits=pairs(args.layer_bits, int), layer_density=pairs(args.layer_density, float),
                            prune_rounds=args.prune_rounds, prune_steps=args.prune_steps,
                            centroid_steps=args.centroid_steps, lr=args.lr, centroid_lr=args.centroid_lr,
                            sim_tracks=args.sim_tracks, seed=args.seed, progress=sys.stderr.isatty())
    result = compress_checkpoint(args.checkpoint, config)
    if args.report:
        from driver.export.onnx_export import write_atomic

        write_atomic(args.report, json.dumps(result.to_dict(), indent=1, default=str).encode())
    print(format_compress_result(result, layers=args.layers))  # noqa: T201
    return 0


def _link(args: argparse.Namespace) -> int:
    from driver.vehicle.link_check import LinkCheckConfig, check_link, format_link_report

    report = check_link(LinkCheckConfig(port=args.port, seconds=args.seconds, baud=args.baud))
    print(format_link_report(report))  # noqa: T201 - the command's output
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from driver.demo import DemoConfig, run_demo

    run_demo(DemoConfig(workdir=args.workdir, runs=args.runs, seconds=args.seconds, steps=args.steps,
                        eval_tracks=args.eval_tracks, jobs=args.jobs, seed=args.seed))
    return 0


def _world_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--variants", type=int, nargs="*", default=None, metavar="V",
                   help="world variant seeds, paired with the tracks in turn (default: each track's own)")
    s.add_argument("--variant-split", choices=("train", "eval"), default=None,
                   help="split of --variants (default: --split)")
    s.add_argument("--car", choices=("dynamic", "kinematic"), default="dynamic",
                   help="car model: dynamic (force, brake, grip limit; default) or kinematic (motor = speed)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="driver", description="Behavioral cloning for small autonomous cars.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser("ingest", help="shard HDF5 runs into a zarr v3 store", epilog=INGEST_EXAMPLES,
                       formatter_class=fmt, description="Validate HDF5 driving runs and write them into a store.")
    s.add_argument("sources", nargs="+", help="run files (.h5/.hdf5) or folders of them")
    s.add_argument("--out", required=True, help="store path (created if missing)")
    s.add_argument("--jobs", type=int, default=1, help="runs ingested in parallel processes (default 1)")
    s.add_argument("--codec", choices=("none", "lz4", "zstd"), default="none",
                   help="frame compression (default none: fastest reads; see docs/dataset-format.md)")
    s.add_argument("--shard-frames", type=int, default=None, help="frames per shard file (default: ~24 MiB)")
    s.add_argument("--accepted-states", type=int, nargs="+", default=[1, 3, 5, 6, 7], metavar="S",
                   help="state codes whose frames are valid (default 1 3 5 6 7)")
    s.add_argument("--min-motor", type=float, default=53.0, help="valid frames need motor >= this (default 53)")
    s.add_argument("--max-gap", type=float, default=0.1, help="max seconds to the next frame (default 0.1)")
    s.add_argument("--keep-pinned-steer", action="store_true",
                   help="do not reject autonomous frames with steering pinned at 0 or 99")
    s.add_argument("--force", action="store_true", help="re-ingest runs even if unchanged")
    s.set_defaults(func=_ingest)

    s = sub.add_parser("info", help="show what a store holds", description="Runs, frames, modes, size.")
    s.add_argument("store", help="store path")
    s.set_defaults(func=_info)

    s = sub.add_parser("models", help="list model architectures with parameters and MFLOPs per frame")
    s.add_argument("--height", type=int, default=94)
    s.add_argument("--width", type=int, default=168)
    s.add_argument("--cameras", type=int, default=2, choices=(1, 2))
    s.add_argument("--stack", type=int, default=2, choices=(1, 2))
    s.add_argument("--modes", type=int, default=6, help="behavioral-mode planes (default 6)")
    s.add_argument("--horizon", type=int, default=10, help="future steps predicted (default 10)")
    s.set_defaults(func=_models)

    from driver.training.config import TrainConfig

    s = sub.add_parser("train", help="train a model on a store", epilog=TRAIN_EXAMPLES, formatter_class=fmt,
                       description="Train a controller; every option can also come from --config FILE.")
    s.add_argument("--config", default=None, help="TOML or YAML file of options (flags override it)")
    s.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run exactly where it stopped")
    add_config_flags(s, TrainConfig)
    s.set_defaults(func=_train)

    sim = sub.add_parser("sim", help="the driving simulator: record runs, drive a model closed-loop")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")
    s = sim_sub.add_parser("record", help="record expert driving (with DART noise) as lab-format HDF5 runs")
    s.add_argument("--runs", type=int, default=4)
    s.add_argument("--out", required=True, help="folder for the .h5 runs")
    s.add_argument("--seconds", type=float, default=60.0, help="seconds per run (default 60)")
    s.add_argument("--fps", type=float, default=30.0)
    s.add_argument("--height", type=int, default=94)
    s.add_argument("--width", type=int, default=168)
    s.add_argument("--stereo", action="store_true", help="record a right camera too")
    s.add_argument("--seed", type=int, default=0, help="run i drives track seed+i of the split")
    s.add_argument("--noise", type=float, default=0.15, help="DART steering noise (normalised, 0 = clean)")
    s.add_argument("--split", choices=("train", "eval"), default="train")
    _world_flags(s)
    s.set_defaults(func=_sim_record)
    s = sim_sub.add_parser("drive", help="a model (or the expert) drives held-out tracks: autonomy, pace, laps",
                           epilog=SIM_DRIVE_EXAMPLES, formatter_class=fmt)
    s.add_argument("--model", required=True, help=f"{MODEL_FILES}, or 'expert'")
    s.add_argument("--tracks", type=int, default=3)
    s.add_argument("--laps", type=float, default=1.0)
    s.add_argument("--split", choices=("train", "eval"), default="eval")
    _world_flags(s)
    s.add_argument("--max-seconds", type=float, default=120.0, help="per track")
    s.add_argument("--mode", default="direct", help="behavioral mode given to the model")
    s.add_argument("--out", default="sim_drive_out", help="summary.json, top-down and speed-profile PNGs, MP4s")
    s.add_argument("--no-media", action="store_true")
    s.add_argument("--seed", type=int, default=0, help="render-noise seed (tracks are always eval seeds 0..N-1)")
    s.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="inference runtime")
    s.set_defaults(func=_sim_drive)

    s = sub.add_parser("replay", help="evaluate a model on recorded runs: open-loop, or closed-loop by warping",
                       description="Open-loop: the model against the recorded human, frame by frame in order. "
                       "--closed-loop: the model drives a virtual car along the recorded path (viewpoint warping).")
    s.add_argument("--model", required=True, help=MODEL_FILES)
    s.add_argument("--data", required=True, help="store (driver ingest output)")
    s.add_argument("--runs", nargs="*", default=None, help="runs to replay (default: all)")
    s.add_argument("--out", default="replay_out", help="report.json, plots, video, worst.csv")
    s.add_argument("--mode", default=None, help="behavioral mode (default: from each run's labels)")
    s.add_argument("--no-video", action="store_true")
    s.add_argument("--closed-loop", action="store_true", help="closed-loop replay by viewpoint warping")
    s.add_argument("--threshold", type=float, default=0.3, help="closed loop: intervention |offset| in m")
    s.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest at batch 1)")
    s.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="inference runtime")
    s.set_defaults(func=_replay)

    from driver.vehicle.drive_config import DriveConfig

    s = sub.add_parser("drive", help="drive the car (or the sim) with a model: camera -> policy -> carlink",
                       epilog=DRIVE_EXAMPLES, formatter_class=fmt,
                       description="Runs the model frame by frame and sends steering/throttle over carlink v1, "
                       "with named failsafe checks (every fault ends in neutral throttle) and session recording. "
                       "See docs/drive.md.")
    add_config_flags(s, DriveConfig)
    s.set_defaults(func=_drive)

    s = sub.add_parser("export", help="export a checkpoint to ONNX or TorchScript (parity-checked)",
                       description="The step model with recurrent state in and out, metadata inside; the export "
                       "fails unless it matches PyTorch on real frames within the tolerance. See docs/deploy.md.")
    s.add_argument("checkpoint", help="best.pt / last.pt / run dir")
    s.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    s.add_argument("--out", default=None, help="output file (default: beside the checkpoint, e.g. best.onnx)")
    s.add_argument("--opset", type=int, default=17)
    s.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| vs PyTorch (default 1e-4)")
    s.set_defaults(func=_export)

    s = sub.add_parser("quantize", help="static int8 (per-channel QDQ) ONNX model calibrated on store frames")
    s.add_argument("model", help="an exported .onnx model")
    s.add_argument("--out", default=None)
    s.add_argument("--calibration-frames", type=int, default=256)
    s.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    s.add_argument("--no-per-channel", action="store_true")
    s.set_defaults(func=_quantize)

    s = sub.add_parser("compress", help="Deep Compression: prune + retrain, k-means weight sharing, Huffman",
                       description="Writes one .dcz file that driver loads directly (replay, sim drive, drive). "
                       "A killed run resumes after its last finished pruning round when run again.")
    s.add_argument("checkpoint")
    s.add_argument("--out", default=None, help="output .dcz (default: next to the checkpoint)")
    s.add_argument("--density", type=float, default=0.35, help="share of weights kept per pruned layer")
    s.add_argument("--bits", type=int, default=5, help="index bits per layer (2**bits shared values)")
    s.add_argument("--layer-bits", nargs="*", metavar="PATTERN=BITS", help="per-layer bits, e.g. head=8")
    s.add_argument("--layer-density", nargs="*", metavar="PATTERN=D", help="per-layer density")
    s.add_argument("--prune-rounds", type=int, default=3, help="pruning rounds (geometric density schedule)")
    s.add_argument("--prune-steps", type=int, default=2700, help="retraining steps while pruning, all rounds")
    s.add_argument("--centroid-steps", type=int, default=600, help="centroid fine-tuning steps")
    s.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the pruning retraining")
    s.add_argument("--centroid-lr", type=float, default=1e-4, help="learning rate of the centroid fine-tuning")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sim-tracks", type=int, default=0, help="> 0: sim autonomy before and after")
    s.add_argument("--layers", action="store_true", help="also print one line per tensor (kept, bits, bytes)")
    s.add_argument("--report", default=None, metavar="JSON", help="also write the whole report as JSON")
    s.set_defaults(func=_compress)

    s = sub.add_parser("link", help="check the serial link to the car's microcontroller (carlink v1)",
                       description="Handshake, versions, round-trip latency and live RC values; nothing moves.")
    s.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    s.add_argument("--seconds", type=float, default=3.0, help="how long to measure (default 3)")
    s.add_argument("--baud", type=int, default=115200)
    s.set_defaults(func=_link)

    s = sub.add_parser("demo", help="the main job on an embedded default (no data needed)",
                       epilog=DEMO_EXAMPLES, formatter_class=fmt)
    s.add_argument("--workdir", default="demo_out", help="where runs, store and report go (default demo_out)")
    s.add_argument("--runs", type=int, default=32, help="simulated runs (training tracks) to record (default 32)")
    s.add_argument("--seconds", type=float, default=15.0, help="seconds per run (default 15)")
    s.add_argument("--steps", type=int, default=2400, help="training steps (default 2400)")
    s.add_argument("--eval-tracks", type=int, default=6, help="held-out tracks driven closed-loop (default 6)")
    s.add_argument("--jobs", type=int, default=2, help="ingest processes")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError, DriverError) as e:  # bad input: one clear line, no traceback
        logging.getLogger("driver").error("%s", " ".join(str(e).split()))
        return 2


if __name__ == "__main__":
    sys.exit(main())
