"""The `driver` command line: parses arguments into typed configs and dispatches. Nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing

from rich.console import Console

from driver.config_flags import add_config_flags, config_from_args, given_values
from driver.errors import DriverError

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
  driver ingest /nfs/runs --out s3://lab/driving.zarr --dask tcp://10.0.0.5:8786   # a Dask cluster

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

    force_all = args.force is not None and not args.force  # a bare --force: every run, as before
    config = config_from_args(IngestConfig, args, force=force_all, force_runs=tuple(args.force or ()))
    report = ingest(config, progress=True)
    console = Console()
    console.print(summary_table(report))
    for o in report.failures:
        console.print(f"[red]FAILED[/red] {o.error}", highlight=False, soft_wrap=True)
    return 0 if report.ok else 1


def _export_dataset(args: argparse.Namespace) -> int:
    from driver.datasets.interop.lerobot_export import LeRobotExportConfig, export_lerobot

    r = export_lerobot(config_from_args(LeRobotExportConfig, args, progress=True))
    print(f"wrote {r.path}: LeRobot v3.0, {r.episodes} episodes, {r.frames} frames at {r.fps} fps, "  # noqa: T201
          f"{r.bytes / 1e6:.1f} MB in {r.seconds:.1f} s")
    return 0


def _view(args: argparse.Namespace) -> int:
    from driver.view.store_view import ViewConfig, view_store

    sink = "spawn" if args.spawn else f"web:{args.port}" if args.web else args.save
    r = view_store(config_from_args(ViewConfig, args, **({"sink": sink} if sink else {})))
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

    report = verify_store(config_from_args(VerifyConfig, args), progress=True)
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

    print(format_model_table(model_rows(config_from_args(InputSpec, args))))  # noqa: T201 - the command's output
    return 0


def _train(args: argparse.Namespace) -> int:
    from driver.training import resolve_config, train
    from driver.training.config import TrainConfig
    from driver.training.metrics import runs_table, summary_table

    overrides = given_values(args, TrainConfig)
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

    config = config_from_args(SimRecordConfig, args, variants=args.variants or None, progress=True)
    paths = record_runs(config)
    print(f"wrote {len(paths)} runs to {config.out}")  # noqa: T201 - the command's output
    return 0


def _sim_drive(args: argparse.Namespace) -> int:
    from driver.sim.evaluate_policy import SimDriveConfig, format_sim_drive, sim_drive

    result = sim_drive(config_from_args(SimDriveConfig, args))
    print(format_sim_drive(result))  # noqa: T201 - the command's output
    return 0


def _sim_dagger(args: argparse.Namespace) -> int:
    from driver.sim.dagger import run_dagger
    from driver.sim.dagger_config import DaggerConfig

    report = run_dagger(config_from_args(DaggerConfig, args))
    print(report.table)  # noqa: T201 - the command's output
    print(f"table: {report.out / 'dagger_table.md'} and dagger_table.json")  # noqa: T201
    return 0


def _replay(args: argparse.Namespace) -> int:
    from driver.policy import load_policy
    from driver.sim.replay import ReplayConfig, format_replay_report, replay
    from driver.sim.warp_replay import WarpReplayConfig, format_warp_report, warp_replay
    from driver.threads import apply_threads

    if args.closed_loop and args.view:
        raise ValueError("--view shows the open-loop replay; it does not apply to --closed-loop")
    config = config_from_args(ReplayConfig, args)
    policy = load_policy(config.model, runtime=config.runtime, threads=apply_threads(config.threads))
    if args.closed_loop:
        report = warp_replay(config_from_args(WarpReplayConfig, args, out=config.out), policy=policy)
        print(format_warp_report(report))  # noqa: T201 - the command's output
        return 0
    report = replay(config, policy=policy)
    print(format_replay_report(report))  # noqa: T201 - the command's output
    return 0


def _drive(args: argparse.Namespace) -> int:
    from driver.vehicle.drive_config import DriveConfig
    from driver.vehicle.drive_loop import drive

    given = given_values(args, DriveConfig)
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

        config = config_from_args(OnnxExportConfig, args, out=args.out or _beside(args.checkpoint, ".onnx"))
        r = export_onnx(args.checkpoint, config)
    else:
        from driver.export.torchscript import TorchScriptConfig, export_torchscript

        config = config_from_args(TorchScriptConfig, args, out=args.out or _beside(args.checkpoint, ".ts"))
        r = export_torchscript(args.checkpoint, config)
    print(f"wrote {r.path} ({r.format}, {r.bytes / 1e6:.3f} MB); parity vs PyTorch over {r.steps_checked} steps "  # noqa: T201
          f"on {r.frames} frames: max |diff| {r.max_abs_diff:.2e} (tolerance {r.tolerance:.0e})")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from driver.export.quantize import QuantizeConfig, quantize_onnx

    config = config_from_args(QuantizeConfig, args, out=args.out or _beside(args.model, ".int8.onnx"))
    r = quantize_onnx(args.model, config)
    mae = ("" if r.steer_mae_fp32 is None else
           f"; held-out steer MAE {r.steer_mae_fp32:.3f} -> {r.steer_mae_int8:.3f} run units")
    print(f"wrote {r.path}: {r.fp32_bytes / 1e6:.3f} MB -> {r.int8_bytes / 1e6:.3f} MB, step {r.fp32_ms:.2f} -> "  # noqa: T201
          f"{r.int8_ms:.2f} ms ({r.speedup:.2f}x), max |diff| {r.max_abs_diff:.3g} ({r.calibration}){mae}")
    return 0


def _compress(args: argparse.Namespace) -> int:
    from driver.export.compress import CompressConfig, compress_checkpoint, format_compress_result

    config = config_from_args(CompressConfig, args, out=args.out or _beside(args.checkpoint, ".dcz"),
                              progress=True)
    result = compress_checkpoint(args.checkpoint, config)
    if args.report:
        from driver.atomic_write import write_atomic

        write_atomic(args.report, json.dumps(result.to_dict(), indent=1, default=str).encode())
    print(format_compress_result(result, layers=args.layers))  # noqa: T201
    return 0


def _link(args: argparse.Namespace) -> int:
    from driver.vehicle.link_check import LinkCheckConfig, check_link, format_link_report

    report = check_link(config_from_args(LinkCheckConfig, args))
    print(format_link_report(report))  # noqa: T201 - the command's output
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from driver.demo import DemoConfig, run_demo

    run_demo(config_from_args(DemoConfig, args))
    return 0


# ---- flags: each subcommand's come from its config dataclass (driver/config_flags.py) ----------------------

def _ingest_flags(s: argparse.ArgumentParser) -> None:
    from driver.datasets.ingest import IngestConfig
    from driver.datasets.interop.mapping import FORMATS
    from driver.datasets.layout import CODECS

    add_config_flags(s, IngestConfig, positional=("sources",), skip=("force", "force_runs"),
                     rename={"max_gap_s": "max-gap", "lock_ttl_s": "lock-ttl"},
                     negate={"reject_pinned_steer": "keep-pinned-steer"},
                     choices={"format": ("auto", *FORMATS), "codec": CODECS},
                     metavar={"mapping": "FILE", "dask": "SCHEDULER", "lock_ttl_s": "S", "accepted_states": "S",
                              "sources": "SOURCES"})
    s.add_argument("--force", nargs="*", default=None, metavar="RUN",
                   help="re-ingest even if unchanged: the named runs (from SOURCES, else from the source file the "
                   "store recorded), or every run when no name follows (put --force after the sources) "
                   "(default: only new or changed runs)")


def _verify_flags(s: argparse.ArgumentParser) -> None:
    from driver.datasets.verify import VerifyConfig

    add_config_flags(s, VerifyConfig, positional=("store",), metavar={"runs": "RUN"})


def _export_dataset_flags(s: argparse.ArgumentParser) -> None:
    from driver.datasets.interop.lerobot_export import VCODECS, LeRobotExportConfig

    s.add_argument("--to", choices=("lerobot",), required=True, help="dataset format (required)")
    add_config_flags(s, LeRobotExportConfig, positional=("store", "out"), skip=("progress",),
                     choices={"vcodec": VCODECS})


def _view_flags(s: argparse.ArgumentParser) -> None:
    from driver.view.store_view import ViewConfig

    add_config_flags(s, ViewConfig, positional=("store",), skip=("sink",))
    where = s.add_mutually_exclusive_group()
    sink = next(f.default for f in dataclasses.fields(ViewConfig) if f.name == "sink")
    where.add_argument("--save", default=None, metavar="OUT.rrd", help=f"write a recording (default: {sink})")
    where.add_argument("--spawn", action="store_true", help="open a Rerun viewer on this machine (default: off)")
    where.add_argument("--web", action="store_true",
                       help="serve Rerun's web viewer on --port (Ctrl-C stops) (default: off)")
    s.add_argument("--port", type=int, default=9090, help="web viewer port; gRPC on port + 1 (default: 9090)")


def _info_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("store", help="store path or URL")
    s.add_argument("--lint", action="store_true", help="flag windows of saturated steering and of throttle "
                   "without progress (the driver lost control); driver train drops them by default (default: off)")
    s.add_argument("--lint-json", default=None, metavar="FILE",
                   help="also write the lint report as JSON (default: none)")


def _models_flags(s: argparse.ArgumentParser) -> None:
    from driver.models import InputSpec

    add_config_flags(s, InputSpec, rename={"n_modes": "modes"}, choices={"cameras": (1, 2), "stack": (1, 2)})


def _train_flags(s: argparse.ArgumentParser) -> None:
    from driver.models import list_models
    from driver.training.config import TrainConfig

    s.add_argument("--config", default=None, metavar="FILE",
                   help="TOML or YAML file of the options below, a [train] table allowed; flags override it "
                   "(default: none)")
    s.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a run exactly where it stopped (default: a new run)")
    add_config_flags(s, TrainConfig, notes={"arch": "one of: " + ", ".join(list_models())}, required=("data",),
                     required_unless="in --config FILE or with --resume")


def _world_knobs(**choices) -> dict:
    from driver.sim.car import CAR_MODELS
    from driver.sim.track import SPLITS

    return {"choices": {"split": tuple(SPLITS), "variant_split": tuple(SPLITS), "car": CAR_MODELS, **choices},
            "metavar": {"variants": "V"}}


def _sim_record_flags(s: argparse.ArgumentParser) -> None:
    from driver.sim.record import SimRecordConfig

    add_config_flags(s, SimRecordConfig, skip=("progress",), **_world_knobs())


def _sim_dagger_flags(s: argparse.ArgumentParser) -> None:
    from driver.sim.dagger_config import DaggerConfig

    add_config_flags(s, DaggerConfig, metavar={"variants": "V", "eval_variants": "V"}, required=("model", "data"))


def _sim_drive_flags(s: argparse.ArgumentParser) -> None:
    from driver.sim.evaluate_policy import SimDriveConfig

    add_config_flags(s, SimDriveConfig, optional_value={"view": "file"}, **_world_knobs(runtime=RUNTIMES))


def _replay_flags(s: argparse.ArgumentParser) -> None:
    from driver.sim.replay import ReplayConfig
    from driver.sim.warp_replay import WarpReplayConfig

    add_config_flags(s, ReplayConfig, optional_value={"view": "file"}, choices={"runtime": RUNTIMES},
                     rename={"max_gap_s": "max-gap"})
    closed = s.add_argument_group("closed loop (--closed-loop)")
    closed.add_argument("--closed-loop", action="store_true",
                        help="closed-loop replay by viewpoint warping (default: off, open loop)")
    shared = {f.name for f in dataclasses.fields(ReplayConfig)}
    add_config_flags(closed, WarpReplayConfig, skip=shared | {"camera"}, rename={"threshold_m": "threshold"})


def _drive_flags(s: argparse.ArgumentParser) -> None:
    from driver.vehicle.drive_config import DriveConfig

    s.add_argument("--config", default=None, metavar="FILE",
                   help="a car's settings: TOML or YAML of the options below, a [drive] table allowed; flags "
                   "override it (default: none)")
    add_config_flags(s, DriveConfig, required=("model",), required_unless="in --config FILE")


def _export_flags(s: argparse.ArgumentParser) -> None:
    from driver.export.onnx_export import OnnxExportConfig
    from driver.export.torchscript import TorchScriptConfig

    s.add_argument("checkpoint", help="best.pt / last.pt / run dir")
    s.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (runs on ONNX Runtime, the car's runtime) or torchscript (default: onnx)")
    add_config_flags(s, OnnxExportConfig)
    shared = {f.name for f in dataclasses.fields(OnnxExportConfig)}
    add_config_flags(s.add_argument_group("torchscript"), TorchScriptConfig, skip=shared)


def _quantize_flags(s: argparse.ArgumentParser) -> None:
    from driver.export.quantize import QuantizeConfig

    s.add_argument("model", help="an exported .onnx model")
    add_config_flags(s, QuantizeConfig)


def _compress_flags(s: argparse.ArgumentParser) -> None:
    from driver.export.compress import CompressConfig

    s.add_argument("checkpoint", help="best.pt / last.pt / run dir")
    add_config_flags(s, CompressConfig, skip=("progress",),
                     metavar={"layer_bits": "PATTERN=BITS", "layer_density": "PATTERN=D"})
    s.add_argument("--layers", action="store_true",
                   help="also print one line per tensor: kept, bits, bytes (default: off)")
    s.add_argument("--report", default=None, metavar="JSON", help="also write the whole report as JSON (default: "
                   "none)")


def _link_flags(s: argparse.ArgumentParser) -> None:
    from driver.vehicle.link_check import LinkCheckConfig

    add_config_flags(s, LinkCheckConfig, required=("port",))


def _demo_flags(s: argparse.ArgumentParser) -> None:
    from driver.demo import DemoConfig

    add_config_flags(s, DemoConfig)


RUNTIMES = ("torch", "onnx")


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: ``flags`` adds its flags to its parser (None: a group of subcommands), ``run`` runs it."""

    flags: typing.Callable[[argparse.ArgumentParser], None] | None
    run: typing.Callable[[argparse.Namespace], int] | None
    help: str
    description: str | None = None
    epilog: str | None = None  # examples, printed as written


# "sim X" is subcommand X of `driver sim`
COMMANDS: dict[str, Command] = {
    "ingest": Command(_ingest_flags, _ingest,
        help="shard runs (HDF5, donkeycar tubs, LeRobot) into a zarr v3 store", epilog=INGEST_EXAMPLES,
        description="Validate driving runs (HDF5 files, tub sessions, LeRobot episodes) and write them into a store."),
    "verify": Command(_verify_flags, _verify,
        help="check every chunk of a store against its checksums", epilog=VERIFY_EXAMPLES,
        description="Reads every byte of the store's runs and checks it against its CRC32Cs; prints a table and "
        "exits 1 when any run is damaged."),
    "export-dataset": Command(_export_dataset_flags, _export_dataset,
        help="write a store as a LeRobot v3 dataset (parquet + MP4)", description="Each run becomes an episode; "
        "`driver ingest OUT` reads it back with labels exact. See docs/import-export.md."),
    "view": Command(_view_flags, _view,
        help="look at a store's runs in Rerun (pip install 'driver[view]')", description="Both cameras, "
        "steer/motor/state timelines, the validity mask, segment breaks and labels, scrubbable. See docs/view.md."),
    "info": Command(_info_flags, _info,
        help="show what a store holds", description="Runs, frames, modes, size, and the frames each validity rule "
        "removes; --lint flags where the driver lost control."),
    "models": Command(_models_flags, _models,
        help="list model architectures with parameters and MFLOPs per frame", description="Every registered "
        "architecture at one input size; 'input too small' where an architecture cannot take it. See "
        "docs/models.md."),
    "train": Command(_train_flags, _train,
        help="train a model on a store", epilog=TRAIN_EXAMPLES,
        description="Train a controller; every option can also come from --config FILE."),
    "sim": Command(None, None, help="the driving simulator: record runs, drive a model closed-loop"),
    "sim record": Command(_sim_record_flags, _sim_record,
        help="record expert driving (with DART noise) as lab-format HDF5 runs"),
    "sim drive": Command(_sim_drive_flags, _sim_drive,
        help="a model (or the expert) drives held-out tracks: autonomy, pace, laps", epilog=SIM_DRIVE_EXAMPLES),
    "sim dagger": Command(_sim_dagger_flags, _sim_dagger,
        help="DAgger: the model drives, the expert labels, ingest, resume training", epilog=SIM_DAGGER_EXAMPLES,
        description="Rounds of: the model drives training tracks with the expert taking over per a beta-mixture "
        "and near the road edge, every frame labelled with the expert's clean command; the runs are appended to "
        "--data; training resumes; held-out tracks are driven. A table of autonomy and pace per round. A stopped "
        "run continues. See docs/training.md."),
    "replay": Command(_replay_flags, _replay,
        help="evaluate a model on recorded runs: open-loop, or closed-loop by warping",
        description="Open-loop: the model against the recorded human, frame by frame in order, beside the "
        "constant predictor (the training mean) and with R² per target. --closed-loop: the model drives a virtual "
        "car along the recorded path (viewpoint warping)."),
    "drive": Command(_drive_flags, _drive,
        help="drive the car (or the sim) with a model: camera -> policy -> carlink", epilog=DRIVE_EXAMPLES,
        description="Runs the model frame by frame and sends steering/throttle over carlink v1.1, with named "
        "failsafe checks (every fault ends in neutral throttle) and session recording. Every "
        "option can also come from --config FILE. See docs/drive.md."),
    "export": Command(_export_flags, _export,
        help="export a checkpoint to ONNX or TorchScript (parity-checked)", description="The step model with "
        "recurrent state in and out, metadata inside; the export fails unless it matches PyTorch on real frames "
        "within the tolerance. See docs/deploy.md."),
    "quantize": Command(_quantize_flags, _quantize,
        help="static int8 (per-channel QDQ) ONNX model calibrated on store frames", description="Takes an "
        "exported .onnx (run `driver export` on a checkpoint first) and writes its int8 twin, with held-out MAE "
        "and latency of both. See docs/deploy.md."),
    "compress": Command(_compress_flags, _compress,
        help="Deep Compression: prune + retrain, k-means weight sharing, Huffman", description="Writes one .dcz "
        "file that driver loads directly (replay, sim drive, drive). A killed run resumes after its last finished "
        "pruning round when run again."),
    "link": Command(_link_flags, _link,
        help="check the serial link to the car's microcontroller (carlink v1.1)", epilog=LINK_EXAMPLES,
        description="Handshake, versions, the MCU's calibration, round-trip latency and live RC values; nothing "
        "moves."),
    "demo": Command(_demo_flags, _demo,
        help="the main job on an embedded default (no data needed)", epilog=DEMO_EXAMPLES),
}


class _LazySubcommands(argparse._SubParsersAction):
    """Subcommands whose flags are added only when one is chosen: `driver --help` imports no config module
    (and so no torch or zarr); `driver drive ...` imports only the drive's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: dict[str, typing.Callable] = {}

    def populate(self, name: str) -> None:
        add_flags = self.pending.pop(name, None)
        if add_flags:
            add_flags(self.choices[name])

    def __call__(self, parser, namespace, values, option_string=None):
        if values:
            self.populate(values[0])
        super().__call__(parser, namespace, values, option_string)


def build_parser(lazy: bool = False) -> argparse.ArgumentParser:
    """The whole command line; ``lazy``: each subcommand's flags are added only when it is parsed."""
    from driver import __version__

    p = argparse.ArgumentParser(prog="driver", description="Behavioral cloning for small autonomous cars.")
    p.register("action", "parsers", _LazySubcommands)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and the traceback behind an error's one line")
    p.add_argument("--version", action="version", version=f"driver {__version__}")
    groups = {"": p.add_subparsers(dest="command", required=True, metavar="COMMAND")}
    for name, command in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        s = groups[group].add_parser(leaf, help=command.help, description=command.description,
                                     epilog=command.epilog, formatter_class=argparse.RawDescriptionHelpFormatter
                                     if command.epilog else argparse.HelpFormatter)
        if command.flags is None:  # a group of subcommands
            s.register("action", "parsers", _LazySubcommands)
            groups[name] = s.add_subparsers(dest=f"{name}_command", required=True, metavar=f"{name.upper()}_COMMAND")
            continue
        s.set_defaults(func=command.run)
        groups[group].pending[leaf] = command.flags
    if not lazy:
        for action in groups.values():
            for leaf in list(action.pending):
                action.populate(leaf)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser(lazy=True).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError, DriverError) as e:  # bad input: one clear line; -v adds the traceback
        log = logging.getLogger("driver")
        log.error("%s", " ".join(str(e).split()))
        if args.verbose:
            log.debug("the traceback behind that error:", exc_info=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
