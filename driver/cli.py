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
  driver ingest --out data/store.zarr --force run_003           # re-ingest a damaged run from its recorded source
  driver ingest runs/ --out data/store.zarr --force             # re-ingest everything
  driver ingest ~/mycar/data/tub_3 --out store.zarr              # a donkeycar tub: one run per session
  driver ingest lerobot_ds/ --out store.zarr --mapping car.toml  # a LeRobot v3 dataset: one run per episode
  driver ingest runs/*.h5 --out s3://lab/driving.zarr            # a store on object storage (driver[s3])
  driver ingest runs/ --out s3://lab/driving.zarr --dask local:4  # 4 Dask worker processes (driver[dask])
  driver ingest /shared/runs --out s3://lab/driving.zarr --dask tcp://10.0.0.5:8786   # a Dask cluster

A run that fails validation is reported on one line and skipped; the others are ingested and the exit
code is 1. A killed ingest leaves no half-written run: run the same command again to finish. Two ingests
into one store never both write: the second stops at once with one line. A first ingest that stores no
run leaves no store behind.
"""

VERIFY_EXAMPLES = """examples:
  driver verify data/store.zarr                       # every run; exit code 1 if any is damaged
  driver verify data/store.zarr --runs run_003 run_007
  driver verify s3://lab/driving.zarr                 # a store on object storage
Repair a damaged run with `driver ingest --out data/store.zarr --force RUN` (re-read from its source).
"""

TRAIN_EXAMPLES = """examples:
  driver train --data store.zarr --arch squeezenet_lstm
  driver train --data s3://lab/driving.zarr --num-workers 4    # from object storage, through a local cache
  driver train --data store.zarr --arch squeezenet --stack 2 --epochs 20 --batch-size 64 --name sq1
  driver train --config train.toml --lr 3e-4          # flags override the file
  driver train --resume runs/train/sq1                # after a crash or kill -9: continues exactly
  torchrun --nproc-per-node 2 -m driver.cli train --data store.zarr --name ddp1   # data parallel
"""

DRIVE_EXAMPLES = """examples:
  driver drive --port /dev/ttyUSB0 --model best.onnx                            # USB camera 0, ONNX Runtime
  driver drive --config car.toml                                                # a car's settings in one file
  driver drive --config car.toml --max-throttle 0.2 --shadow                    # flags override the file
  driver drive --port /dev/ttyUSB0 --model best.pt --camera /dev/video2 --fps 30 --max-throttle 0.25
  driver drive --model best.pt --camera sim --seconds 60                        # no car: the simulator
  driver drive --port /dev/ttyUSB0 --model best.onnx --cpus 2,3 --realtime      # a car computer's own cores
  driver drive --port /dev/ttyUSB0 --model best.pt --camera replay:store.zarr:run_003
Exit code 0 on a clean stop (Ctrl-C, SIGTERM, --seconds, end of video), 1 when a failsafe check fired
(the MCU going FAILSAFE on its own included), 2 when it could not start (bad model, port, camera, flag).
"""

LINK_EXAMPLES = """examples:
  driver link --port /dev/ttyUSB0
  python -m driver.vehicle.fake_mcu driver link --port {port}      # no hardware: the firmware's logic on a pty
"""

SIM_DRIVE_EXAMPLES = """examples:
  driver sim drive --model expert --tracks 6                         # the expert: the pace reference
  driver sim drive --model best.pt --tracks 6 --out drive6           # held-out tracks in their own variants
  driver sim drive --model best.pt --tracks 6 --variants 10 11 --variant-split eval   # other held-out looks
Prints a table per track (autonomy, pace vs the expert, lap times, interventions by cause, corner/straight
speeds) and writes summary.json, top-down maps, speed profiles and videos to --out.
"""

SIM_DAGGER_EXAMPLES = """examples:
  driver sim dagger --model demo_out/train/demo/best.pt --data demo_out/store.zarr --rounds 3
  driver sim dagger --model runs/train/x/last.pt --data store.zarr --rounds 5 --tracks 8 --epochs-per-round 2 \\
      --eval-tracks 6 --eval-variants 20 21 22 --out dagger5
Run the same command again to continue a stopped run (or with a larger --rounds to add rounds).
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
    force_all = args.force is not None and not args.force  # a bare --force: every run, as before
    config = IngestConfig(sources=args.sources, out=args.out, jobs=args.jobs, codec=args.codec,
                          shard_frames=args.shard_frames, validity=rules, force=force_all,
                          force_runs=tuple(args.force or ()), format=args.format, mapping=args.mapping,
                          dask=args.dask, lock_ttl_s=args.lock_ttl)
    report = ingest(config, progress=sys.stderr.isatty())
    console = Console()
    console.print(summary_table(report))
    for o in report.failures:
        console.print(f"[red]FAILED[/red] {o.error}", highlight=False, soft_wrap=True)
    return 0 if report.ok else 1


def _export_dataset(args: argparse.Namespace) -> int:
    from driver.datasets.interop.lerobot_export import LeRobotExportConfig, export_lerobot

    r = export_lerobot(LeRobotExportConfig(store=args.store, out=args.out, runs=args.runs or [], fps=args.fps,
                                           vcodec=args.vcodec, crf=args.crf, gop=args.gop, robot_type=args.robot_type,
                                           progress=sys.stderr.isatty()))
    print(f"wrote {r.path}: LeRobot v3.0, {r.episodes} episodes, {r.frames} frames at {r.fps} fps, "  # noqa: T201
          f"{r.bytes / 1e6:.1f} MB in {r.seconds:.1f} s")
    return 0


def _view(args: argparse.Namespace) -> int:
    from driver.view.store_view import ViewConfig, view_store

    sink = "spawn" if args.spawn else f"web:{args.port}" if args.web else args.save
    r = view_store(ViewConfig(store=args.store, runs=args.runs or [], sink=sink, every=args.every))
    print(f"{r['runs']} runs, {r['frames']} frames -> {r['sink'].target or r['sink'].kind}")  # noqa: T201
    return 0


def _info(args: argparse.Namespace) -> int:
    from driver.datasets.info import describe_store, print_info

    console = Console()
    print_info(describe_store(args.store), console)
    if args.lint or args.lint_json:
        from driver.datasets.lint import lint_store, lint_summary, lint_table

        report = lint_store(args.store)
        if report.flags:
            console.print(lint_table(report, args.store))
        for line in lint_summary(report):
            console.print(line, highlight=False, soft_wrap=True)
        if args.lint_json:
            from pathlib import Path

            Path(args.lint_json).write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from driver.datasets.verify import VerifyConfig, verify_store, verify_table

    report = verify_store(VerifyConfig(store=args.store, runs=args.runs or []), progress=sys.stderr.isatty())
    console = Console()
    console.print(verify_table(report))
    for r in report.runs:
        for problem in r.problems:
            console.print(f"[red]DAMAGED[/red] {problem}", highlight=False, soft_wrap=True)
    unverified = [r.run for r in report.runs if r.status == "unverified"]
    if unverified:
        console.print(f"{len(unverified)} run(s) were written before chunk checksums (format 1): damage inside "
                      f"their frames can go unseen; `driver ingest --out {report.store} --force` rewrites them "
                      "with checksums.", highlight=False, soft_wrap=True)
    if report.damaged:
        names = " ".join(r.run for r in report.damaged)
        console.print(f"repair: driver ingest --out {report.store} --force {names}", highlight=False, soft_wrap=True)
    return 0 if report.ok else 1


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
    from driver.training.metrics import runs_table, summary_table

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if isinstance(overrides.get("arch_kwargs"), str):
        try:
            overrides["arch_kwargs"] = json.loads(overrides["arch_kwargs"])
        except json.JSONDecodeError as e:
            raise ValueError(f"--arch-kwargs is not valid JSON ({e}): {overrides['arch_kwargs']!r}") from e
    if args.resume:
        result = train(resume=args.resume, overrides=overrides)
    else:
        result = train(resolve_config(args.config, overrides))
    console = Console()
    if result.best_val.get("runs"):
        console.print(runs_table(result.best_val, f"best validation (step {result.best_val['step']:,}) per held-out "
                                                  "run, run units, first predicted step"))
    console.print(summary_table(result))
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
                                      seed=args.seed, runtime=args.runtime,
                                      view=args.view or ""))
    print(format_sim_drive(result))  # noqa: T201 - the command's output
    return 0


def _sim_dagger(args: argparse.Namespace) -> int:
    from driver.sim.dagger import run_dagger
    from driver.sim.dagger_config import DaggerConfig

    report = run_dagger(DaggerConfig(**_given(args, DaggerConfig)))
    print(report.table)  # noqa: T201 - the command's output
    print(f"table: {report.out / 'dagger_table.md'} and dagger_table.json")  # noqa: T201
    return 0


def _replay(args: argparse.Namespace) -> int:
    from driver.policy import load_policy
    from driver.sim.replay import ReplayConfig, format_replay_report, replay
    from driver.sim.warp_replay import WarpReplayConfig, format_warp_report, warp_replay

    if args.closed_loop and args.view:
        raise ValueError("--view shows the open-loop replay; it does not apply to --closed-loop")
    policy = load_policy(args.model, runtime=args.runtime, threads=args.threads)
    if args.closed_loop:
        report = warp_replay(WarpReplayConfig(model=args.model, data=args.data, runs=args.runs or [],
                                              threshold_m=args.threshold, mode=args.mode, out=args.out),
                             policy=policy)
        print(format_warp_report(report))  # noqa: T201 - the command's output
        return 0
    report = replay(ReplayConfig(model=args.model, data=args.data, runs=args.runs or [], out=args.out,
                                 mode=args.mode, video=not args.no_video, runtime=args.runtime,
                                 view=args.view or ""), policy=policy)
    print(format_replay_report(report))  # noqa: T201 - the command's output
    return 0


def _given(args: argparse.Namespace, cls) -> dict:
    """The config fields whose flags were given on the command line (the others are None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}


def _drive(args: argparse.Namespace) -> int:
    from driver.vehicle.drive_config import DriveConfig
    from driver.vehicle.drive_loop import drive

    given = _given(args, DriveConfig)
    config = DriveConfig.from_file(args.config, given) if args.config else DriveConfig.from_dict(given, "flags")
    return drive(config).exit_code


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

    given = _given(args, QuantizeConfig)
    given["out"] = given.get("out") or _beside(args.model, ".int8.onnx")
    r = quantize_onnx(args.model, QuantizeConfig(**given))
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

    report = check_link(LinkCheckConfig(**_given(args, LinkCheckConfig)))
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
    s = sub.add_parser("ingest", help="shard runs (HDF5, donkeycar tubs, LeRobot) into a zarr v3 store",
                       epilog=INGEST_EXAMPLES, formatter_class=fmt,
                       description="Validate driving runs (HDF5 files, tub sessions, LeRobot episodes) and write "
                       "them into a store.")
    s.add_argument("sources", nargs="*", help="run files (.h5/.hdf5), donkeycar tubs, LeRobot v3 datasets, or "
                   "folders of them (optional with --force RUN)")
    s.add_argument("--format", choices=("auto", "hdf5", "tub", "lerobot"), default="auto",
                   help="how to read the sources (default auto: detected per path)")
    s.add_argument("--mapping", default=None, metavar="FILE",
                   help="TOML/YAML mapping of tub/LeRobot fields to the run format (docs/import-export.md)")
    s.add_argument("--out", required=True, help="store path or URL (s3://bucket/prefix, gs://, az://; created if "
                   "missing)")
    s.add_argument("--jobs", type=int, default=1, help="runs ingested in parallel processes (default 1)")
    s.add_argument("--dask", default="", metavar="SCHEDULER",
                   help="one task per run on a Dask cluster: local:N (N local worker processes) or a scheduler "
                   "address tcp://HOST:8786 (pip install 'driver[dask]')")
    s.add_argument("--lock-ttl", type=float, default=60.0, metavar="S",
                   help="object storage: seconds a run's lease lasts unless renewed; a dead writer's run is taken "
                   "over after 1.5x this (default 60)")
    s.add_argument("--codec", choices=("none", "lz4", "zstd"), default="none",
                   help="frame compression (default none: fastest reads; see docs/dataset-format.md)")
    s.add_argument("--shard-frames", type=int, default=None, help="frames per shard file (default: ~24 MiB)")
    s.add_argument("--accepted-states", type=int, nargs="+", default=[1, 3, 5, 6, 7], metavar="S",
                   help="state codes whose frames are valid (default 1 3 5 6 7)")
    s.add_argument("--min-motor", type=float, default=0.0,
                   help="the lab's rule: valid frames need motor >= this; 53 drops every braking and coasting "
                        "frame (default 0: off; parked-car frames are dropped by speed or long neutral stretches)")
    s.add_argument("--max-gap", type=float, default=0.1, help="max seconds to the next frame (default 0.1)")
    s.add_argument("--keep-pinned-steer", action="store_true",
                   help="do not reject autonomous frames with steering pinned at 0 or 99")
    s.add_argument("--force", nargs="*", default=None, metavar="RUN",
                   help="re-ingest even if unchanged: the named runs (from SOURCES, else from the source file the "
                   "store recorded), or every run when no name follows (put --force after the sources)")
    s.set_defaults(func=_ingest)

    s = sub.add_parser("verify", help="check every chunk of a store against its checksums",
                       epilog=VERIFY_EXAMPLES, formatter_class=fmt,
                       description="Reads every byte of the store's runs and checks it against its CRC32Cs; prints a "
                       "table and exits 1 when any run is damaged.")
    s.add_argument("store", help="store path or URL")
    s.add_argument("--runs", nargs="+", default=None, metavar="RUN", help="runs to check (default: every run)")
    s.set_defaults(func=_verify)
    s = sub.add_parser("export-dataset", help="write a store as a LeRobot v3 dataset (parquet + MP4)",
                       description="Each run becomes an episode; `driver ingest OUT` reads it back with labels "
                       "exact. See docs/import-export.md.")
    s.add_argument("store", help="store path")
    s.add_argument("out", help="new dataset folder")
    s.add_argument("--to", choices=("lerobot",), required=True, help="dataset format")
    s.add_argument("--runs", nargs="*", default=None, help="runs to export (default: all)")
    s.add_argument("--fps", type=int, default=0, help="dataset fps (default 0: the runs' median frame rate)")
    s.add_argument("--vcodec", default="libsvtav1", choices=("libsvtav1", "libx264", "h264", "hevc", "libx265"),
                   help="video codec (default libsvtav1, LeRobot's)")
    s.add_argument("--crf", type=int, default=30, help="video quality, lower is better (default 30, LeRobot's)")
    s.add_argument("--gop", type=int, default=2, help="frames between keyframes (default 2, LeRobot's)")
    s.add_argument("--robot-type", default="driver_car", help="info.json robot_type")
    s.set_defaults(func=_export_dataset)

    s = sub.add_parser("view", help="look at a store's runs in Rerun (pip install 'driver[view]')",
                       description="Both cameras, steer/motor/state timelines, the validity mask, segment breaks "
                       "and labels, scrubbable. See docs/view.md.")
    s.add_argument("store", help="store path")
    s.add_argument("--runs", nargs="*", default=None, help="runs to show (default: all)")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--save", default="view.rrd", metavar="OUT.rrd", help="write a recording (default view.rrd)")
    where.add_argument("--spawn", action="store_true", help="open a Rerun viewer on this machine")
    where.add_argument("--web", action="store_true", help="serve Rerun's web viewer on --port (Ctrl-C stops)")
    s.add_argument("--port", type=int, default=9090, help="web viewer port (default 9090; gRPC on port + 1)")
    s.add_argument("--every", type=int, default=1, help="show every N-th camera frame (default 1)")
    s.set_defaults(func=_view)

    s = sub.add_parser("info", help="show what a store holds", description="Runs, frames, modes, size, and the "
                       "frames each validity rule removes; --lint flags where the driver lost control.")
    s.add_argument("store", help="store path or URL")
    s.add_argument("--lint", action="store_true", help="flag windows of saturated steering and of throttle "
                   "without progress (the driver lost control); driver train drops them by default")
    s.add_argument("--lint-json", default=None, metavar="FILE", help="also write the lint report as JSON")
    s.set_defaults(func=_info)

    s = sub.add_parser("models", help="list model architectures with parameters and MFLOPs per frame",
                       description="Every registered architecture at one input size; 'input too small' where an "
                       "architecture cannot take it. See docs/models.md.")
    s.add_argument("--height", type=int, default=94, help="frame height in pixels (default 94)")
    s.add_argument("--width", type=int, default=168, help="frame width in pixels (default 168)")
    s.add_argument("--cameras", type=int, default=2, choices=(1, 2), help="cameras per frame (default 2)")
    s.add_argument("--stack", type=int, default=2, choices=(1, 2), help="frames stacked per step (default 2)")
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
    s.add_argument("--view", nargs="?", const="file", default=None, metavar="SINK",
                   help="Rerun view (driver[view]): OUT/sim_drive.rrd, or X.rrd, spawn, web[:PORT], rerun+http://HOST:PORT/proxy")
    s.set_defaults(func=_sim_drive)

    from driver.sim.dagger_config import DaggerConfig

    s = sim_sub.add_parser("dagger", help="DAgger: the model drives, the expert labels, ingest, resume training",
                           epilog=SIM_DAGGER_EXAMPLES, formatter_class=fmt,
                           description="Rounds of: the model drives training tracks with the expert taking over "
                           "per a beta-mixture and near the road edge, every frame labelled with the expert's clean "
                           "command; the runs are appended to --data; training resumes; held-out tracks are driven. "
                           "A table of autonomy and pace per round. A stopped run continues. See docs/training.md.")
    add_config_flags(s, DaggerConfig)
    s.set_defaults(func=_sim_dagger)

    s = sub.add_parser("replay", help="evaluate a model on recorded runs: open-loop, or closed-loop by warping",
                       description="Open-loop: the model against the recorded human, frame by frame in order, "
                       "beside the constant predictor (the training mean) and with R² per target. "
                       "--closed-loop: the model drives a virtual car along the recorded path (viewpoint warping).")
    s.add_argument("--model", required=True, help=MODEL_FILES)
    s.add_argument("--data", required=True, help="store path or URL (driver ingest output)")
    s.add_argument("--runs", nargs="*", default=None, help="runs to replay (default: all)")
    s.add_argument("--out", default="replay_out", help="report.json, plots, video, worst.csv (default replay_out)")
    s.add_argument("--mode", default=None, help="condition on this behavioral mode only (default: every mode "
                   "label of each run, the input training gave it)")
    s.add_argument("--no-video", action="store_true", help="skip the overlay video")
    s.add_argument("--closed-loop", action="store_true", help="closed-loop replay by viewpoint warping")
    s.add_argument("--threshold", type=float, default=0.3,
                   help="closed loop: intervention when |offset| exceeds this, in m (default 0.3)")
    s.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest at batch 1)")
    s.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="inference runtime")
    s.add_argument("--view", nargs="?", const="file", default=None, metavar="SINK",
                   help="Rerun view (driver[view]): OUT/replay.rrd, or X.rrd, spawn, web[:PORT], rerun+http://HOST:PORT/proxy")
    s.set_defaults(func=_replay)

    from driver.vehicle.drive_config import DriveConfig

    s = sub.add_parser("drive", help="drive the car (or the sim) with a model: camera -> policy -> carlink",
                       epilog=DRIVE_EXAMPLES, formatter_class=fmt,
                       description="Runs the model frame by frame and sends steering/throttle over carlink v1.1, "
                       "with named failsafe checks (every fault ends in neutral throttle) and session recording. "
                       "Every option can also come from --config FILE. See docs/drive.md.")
    s.add_argument("--config", default=None, metavar="FILE",
                   help="a car's settings: TOML or YAML of the options below, a [drive] table allowed; flags "
                   "override it (default: none)")
    add_config_flags(s, DriveConfig)
    s.set_defaults(func=_drive)

    s = sub.add_parser("export", help="export a checkpoint to ONNX or TorchScript (parity-checked)",
                       description="The step model with recurrent state in and out, metadata inside; the export "
                       "fails unless it matches PyTorch on real frames within the tolerance. See docs/deploy.md.")
    s.add_argument("checkpoint", help="best.pt / last.pt / run dir")
    s.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (runs on ONNX Runtime, the car's runtime) or torchscript (default: onnx)")
    s.add_argument("--out", default=None, help="output file (default: beside the checkpoint, e.g. best.onnx)")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    s.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| vs PyTorch (default: 1e-4)")
    s.set_defaults(func=_export)

    from driver.export.quantize import QuantizeConfig

    s = sub.add_parser("quantize", help="static int8 (per-channel QDQ) ONNX model calibrated on store frames",
                       description="Takes an exported .onnx (run `driver export` on a checkpoint first) and writes "
                       "its int8 twin, with held-out MAE and latency of both. See docs/deploy.md.")
    s.add_argument("model", help="an exported .onnx model")
    add_config_flags(s, QuantizeConfig)
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

    from driver.vehicle.link_check import LinkCheckConfig

    s = sub.add_parser("link", help="check the serial link to the car's microcontroller (carlink v1.1)",
                       epilog=LINK_EXAMPLES, formatter_class=fmt,
                       description="Handshake, versions, the MCU's calibration, round-trip latency and live RC "
                       "values; nothing moves.")
    add_config_flags(s, LinkCheckConfig)
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
