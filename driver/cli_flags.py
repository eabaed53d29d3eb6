"""Each ``driver`` subcommand's flags and examples (driver/cli.py dispatches): one function per subcommand
adds its flags, generated from the command's config dataclass by driver/config_flags.py. A function imports its
config module only when its command is parsed, so ``driver --help`` stays light."""

from __future__ import annotations

import argparse
import dataclasses

from driver.config_flags import add_config_flags

RUNTIMES = ("torch", "onnx")  # what replay and sim drive run a model with

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
  driver drive --port /dev/ttyUSB0 --model speed.onnx --wheel-m-per-tick 0.0071 # a speed-input model: wheel encoder
Exit code 0 on a clean stop (Ctrl-C, SIGTERM, --seconds, end of video), 1 when a failsafe check fired
(the MCU going FAILSAFE on its own included), 2 when it could not start (bad model, port, camera, flag).
"""

LINK_EXAMPLES = """examples:
  driver link --port /dev/ttyUSB0
  python -m driver.vehicle.fake_mcu driver link --port {port}      # no hardware: the firmware's logic on a pty
  driver link --port /dev/ttyUSB0 --seconds 20 --wheel-m-per-tick 0.0071   # push the car along a measured line
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


def ingest_flags(s: argparse.ArgumentParser) -> None:
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


def verify_flags(s: argparse.ArgumentParser) -> None:
    from driver.datasets.verify import VerifyConfig

    add_config_flags(s, VerifyConfig, positional=("store",), metavar={"runs": "RUN"})


def export_dataset_flags(s: argparse.ArgumentParser) -> None:
    from driver.datasets.interop.lerobot_export import VCODECS, LeRobotExportConfig

    s.add_argument("--to", choices=("lerobot",), required=True, help="dataset format (required)")
    add_config_flags(s, LeRobotExportConfig, positional=("store", "out"), skip=("progress",),
                     choices={"vcodec": VCODECS})


def view_flags(s: argparse.ArgumentParser) -> None:
    from driver.view.store_view import ViewConfig

    add_config_flags(s, ViewConfig, positional=("store",), skip=("sink",))
    where = s.add_mutually_exclusive_group()
    sink = next(f.default for f in dataclasses.fields(ViewConfig) if f.name == "sink")
    where.add_argument("--save", default=None, metavar="OUT.rrd", help=f"write a recording (default: {sink})")
    where.add_argument("--spawn", action="store_true", help="open a Rerun viewer on this machine (default: off)")
    where.add_argument("--web", action="store_true",
                       help="serve Rerun's web viewer on --port (Ctrl-C stops) (default: off)")
    s.add_argument("--port", type=int, default=9090, help="web viewer port; gRPC on port + 1 (default: 9090)")


def info_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("store", help="store path or URL")
    s.add_argument("--lint", action="store_true", help="flag windows of saturated steering and of throttle "
                   "without progress (the driver lost control); driver train drops them by default (default: off)")
    s.add_argument("--lint-json", default=None, metavar="FILE",
                   help="also write the lint report as JSON (default: none)")


def models_flags(s: argparse.ArgumentParser) -> None:
    from driver.models import InputSpec

    add_config_flags(s, InputSpec, rename={"n_modes": "modes"}, choices={"cameras": (1, 2), "stack": (1, 2)})


def train_flags(s: argparse.ArgumentParser) -> None:
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


def sim_record_flags(s: argparse.ArgumentParser) -> None:
    from driver.sim.record import SimRecordConfig

    add_config_flags(s, SimRecordConfig, skip=("progress",), **_world_knobs())


def sim_dagger_flags(s: argparse.ArgumentParser) -> None:
    from driver.sim.dagger_config import DaggerConfig

    add_config_flags(s, DaggerConfig, metavar={"variants": "V", "eval_variants": "V"}, required=("model", "data"))


def sim_drive_flags(s: argparse.ArgumentParser) -> None:
    from driver.sim.evaluate_policy import SimDriveConfig

    add_config_flags(s, SimDriveConfig, optional_value={"view": "file"}, **_world_knobs(runtime=RUNTIMES))


def replay_flags(s: argparse.ArgumentParser) -> None:
    from driver.sim.replay import ReplayConfig
    from driver.sim.warp_replay import WarpReplayConfig

    add_config_flags(s, ReplayConfig, optional_value={"view": "file"}, choices={"runtime": RUNTIMES},
                     rename={"max_gap_s": "max-gap"})
    closed = s.add_argument_group("closed loop (--closed-loop)")
    closed.add_argument("--closed-loop", action="store_true",
                        help="closed-loop replay by viewpoint warping (default: off, open loop)")
    shared = {f.name for f in dataclasses.fields(ReplayConfig)}
    add_config_flags(closed, WarpReplayConfig, skip=shared | {"camera"}, rename={"threshold_m": "threshold"})


def drive_flags(s: argparse.ArgumentParser) -> None:
    from driver.vehicle.drive_config import DriveConfig

    s.add_argument("--config", default=None, metavar="FILE",
                   help="a car's settings: TOML or YAML of the options below, a [drive] table allowed; flags "
                   "override it (default: none)")
    add_config_flags(s, DriveConfig, required=("model",), required_unless="in --config FILE")


def ensemble_flags(s: argparse.ArgumentParser) -> None:
    from driver.ensemble import EnsembleConfig

    add_config_flags(s, EnsembleConfig, positional=("members",), metavar={"members": "MODEL"})


def export_flags(s: argparse.ArgumentParser) -> None:
    from driver.export.onnx_export import OnnxExportConfig
    from driver.export.torchscript import TorchScriptConfig

    s.add_argument("checkpoint", help="best.pt / last.pt / run dir")
    s.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (runs on ONNX Runtime, the car's runtime) or torchscript (default: onnx)")
    add_config_flags(s, OnnxExportConfig)
    shared = {f.name for f in dataclasses.fields(OnnxExportConfig)}
    add_config_flags(s.add_argument_group("torchscript"), TorchScriptConfig, skip=shared)


def quantize_flags(s: argparse.ArgumentParser) -> None:
    from driver.export.quantize import QuantizeConfig

    s.add_argument("model", help="an exported .onnx model")
    add_config_flags(s, QuantizeConfig)


def compress_flags(s: argparse.ArgumentParser) -> None:
    from driver.export.compress import CompressConfig

    s.add_argument("checkpoint", help="best.pt / last.pt / run dir")
    add_config_flags(s, CompressConfig, skip=("progress",),
                     metavar={"layer_bits": "PATTERN=BITS", "layer_density": "PATTERN=D"})
    s.add_argument("--layers", action="store_true",
                   help="also print one line per tensor: kept, bits, bytes (default: off)")
    s.add_argument("--report", default=None, metavar="JSON", help="also write the whole report as JSON (default: "
                   "none)")


def link_flags(s: argparse.ArgumentParser) -> None:
    from driver.vehicle.link_check import LinkCheckConfig

    add_config_flags(s, LinkCheckConfig, required=("port",))


def demo_flags(s: argparse.ArgumentParser) -> None:
    from driver.demo import DemoConfig

    add_config_flags(s, DemoConfig)
