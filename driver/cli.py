"""The `driver` command line: parses arguments into typed configs and dispatches. Nothing else (each
subcommand's flags and examples are in driver/cli_flags.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing

from rich.console import Console

from driver import cli_flags
from driver.config_flags import config_from_args, given_values
from driver.errors import DriverError


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


def _ensemble(args: argparse.Namespace) -> int:
    from driver.ensemble import EnsembleConfig, write_ensemble

    r = write_ensemble(config_from_args(EnsembleConfig, args))
    print(f"wrote {r.path}: an ensemble of {len(r.members)} models, one step {r.latency_ms:.1f} ms on this "  # noqa: T201
          "machine; use it as --model")
    return 0


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
    "ingest": Command(cli_flags.ingest_flags, _ingest,
        help="shard runs (HDF5, donkeycar tubs, LeRobot) into a zarr v3 store", epilog=cli_flags.INGEST_EXAMPLES,
        description="Validate driving runs (HDF5 files, tub sessions, LeRobot episodes) and write them into a store."),
    "verify": Command(cli_flags.verify_flags, _verify,
        help="check every chunk of a store against its checksums", epilog=cli_flags.VERIFY_EXAMPLES,
        description="Reads every byte of the store's runs and checks it against its CRC32Cs; prints a table and "
        "exits 1 when any run is damaged."),
    "export-dataset": Command(cli_flags.export_dataset_flags, _export_dataset,
        help="write a store as a LeRobot v3 dataset (parquet + MP4)", description="Each run becomes an episode; "
        "`driver ingest OUT` reads it back with labels exact. See docs/import-export.md."),
    "view": Command(cli_flags.view_flags, _view,
        help="look at a store's runs in Rerun (pip install 'driver[view]')", description="Both cameras, "
        "steer/motor/state timelines, the validity mask, segment breaks and labels, scrubbable. See docs/view.md."),
    "info": Command(cli_flags.info_flags, _info,
        help="show what a store holds", description="Runs, frames, modes, size, and the frames each validity rule "
        "removes; --lint flags where the driver lost control."),
    "models": Command(cli_flags.models_flags, _models,
        help="list model architectures with parameters and MFLOPs per frame", description="Every registered "
        "architecture at one input size; 'input too small' where an architecture cannot take it. See "
        "docs/models.md."),
    "train": Command(cli_flags.train_flags, _train,
        help="train a model on a store", epilog=cli_flags.TRAIN_EXAMPLES,
        description="Train a controller; every option can also come from --config FILE."),
    "sim": Command(None, None, help="the driving simulator: record runs, drive a model closed-loop"),
    "sim record": Command(cli_flags.sim_record_flags, _sim_record,
        help="record expert driving (with DART noise) as lab-format HDF5 runs"),
    "sim drive": Command(cli_flags.sim_drive_flags, _sim_drive,
        help="a model (or the expert) drives held-out tracks: autonomy, pace, laps",
        epilog=cli_flags.SIM_DRIVE_EXAMPLES),
    "sim dagger": Command(cli_flags.sim_dagger_flags, _sim_dagger,
        help="DAgger: the model drives, the expert labels, ingest, resume training",
        epilog=cli_flags.SIM_DAGGER_EXAMPLES,
        description="Rounds of: the model drives training tracks with the expert taking over per a beta-mixture "
        "and near the road edge, every frame labelled with the expert's clean command; the runs are appended to "
        "--data; training resumes; held-out tracks are driven. A table of autonomy and pace per round. A stopped "
        "run continues. See docs/training.md."),
    "replay": Command(cli_flags.replay_flags, _replay,
        help="evaluate a model on recorded runs: open-loop, or closed-loop by warping",
        description="Open-loop: the model against the recorded human, frame by frame in order, beside the "
        "constant predictor (the training mean) and with R² per target. --closed-loop: the model drives a virtual "
        "car along the recorded path (viewpoint warping)."),
    "drive": Command(cli_flags.drive_flags, _drive,
        help="drive the car (or the sim) with a model: camera -> policy -> carlink", epilog=cli_flags.DRIVE_EXAMPLES,
        description="Runs the model frame by frame and sends steering/throttle over carlink v1.2, with named "
        "failsafe checks (every fault ends in neutral throttle) and session recording. Every "
        "option can also come from --config FILE. See docs/drive.md."),
    "ensemble": Command(cli_flags.ensemble_flags, _ensemble,
        help="drive several models as one (their outputs averaged): writes a manifest to use as --model",
        description="Checks that the model files load and take the same inputs, and writes a JSON manifest naming "
        "them with a SHA-256 each; replay, sim drive and drive load it like a model file. See docs/training.md."),
    "export": Command(cli_flags.export_flags, _export,
        help="export a checkpoint to ONNX or TorchScript (parity-checked)", description="The step model with "
        "recurrent state in and out, metadata inside; the export fails unless it matches PyTorch on real frames "
        "within the tolerance. See docs/deploy.md."),
    "quantize": Command(cli_flags.quantize_flags, _quantize,
        help="static int8 (per-channel QDQ) ONNX model calibrated on store frames", description="Takes an "
        "exported .onnx (run `driver export` on a checkpoint first) and writes its int8 twin, with held-out MAE "
        "and latency of both. See docs/deploy.md."),
    "compress": Command(cli_flags.compress_flags, _compress,
        help="Deep Compression: prune + retrain, k-means weight sharing, Huffman", description="Writes one .dcz "
        "file that driver loads directly (replay, sim drive, drive). A killed run resumes after its last finished "
        "pruning round when run again."),
    "link": Command(cli_flags.link_flags, _link,
        help="check the serial link to the car's microcontroller (carlink v1.2)", epilog=cli_flags.LINK_EXAMPLES,
        description="Handshake, versions, the MCU's calibration, round-trip latency and live RC values; nothing "
        "moves."),
    "demo": Command(cli_flags.demo_flags, _demo,
        help="the main job on an embedded default (no data needed)", epilog=cli_flags.DEMO_EXAMPLES),
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
