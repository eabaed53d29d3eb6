"""The command line is generated from the config dataclasses: every flag has help and shows the dataclass's
default, parsing gives back exactly the dataclass defaults, nested configs and renamed flags round-trip, and
`driver --help` stays light."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from typing import Literal

import pytest

from driver import __version__
from driver.cli import build_parser
from driver.config_flags import add_config_flags, config_from_args, field_default, given_values


def subcommands(parser: argparse.ArgumentParser, prefix: str = ""):
    """Every (name, parser) of the command line, ``sim record`` included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from subcommands(sub, full + " ")
                else:
                    yield full, sub


def test_every_option_of_every_subcommand_has_help_and_shows_its_default():
    commands = dict(subcommands(build_parser()))
    assert {"ingest", "train", "drive", "sim record", "sim drive", "replay", "compress", "demo", "models"} <= set(
        commands)
    for name, parser in commands.items():
        for a in parser._actions:
            if not a.option_strings or a.dest == "help":
                continue
            assert a.help and not a.help.startswith("("), (name, a.option_strings, a.help)
            assert "(default" in a.help or "(required" in a.help, (name, a.option_strings, a.help)


def _config_commands():
    from driver.datasets.ingest import IngestConfig
    from driver.demo import DemoConfig
    from driver.export.compress import CompressConfig
    from driver.export.onnx_export import OnnxExportConfig
    from driver.export.quantize import QuantizeConfig
    from driver.models import InputSpec
    from driver.sim.dagger_config import DaggerConfig
    from driver.sim.evaluate_policy import SimDriveConfig
    from driver.sim.record import SimRecordConfig
    from driver.sim.replay import ReplayConfig
    from driver.training.config import TrainConfig
    from driver.vehicle.link_check import LinkCheckConfig

    return [  # argv with the required values, the config class, those values as fields
        (["demo"], DemoConfig, {}),
        (["models"], InputSpec, {}),
        (["train"], TrainConfig, {}),
        (["link", "--port", "/dev/ttyX"], LinkCheckConfig, {"port": "/dev/ttyX"}),
        (["ingest", "a.h5", "--out", "s.zarr"], IngestConfig, {"sources": ["a.h5"], "out": "s.zarr"}),
        (["sim", "record", "--out", "runs"], SimRecordConfig, {"out": "runs"}),
        (["sim", "drive", "--model", "expert"], SimDriveConfig, {"model": "expert"}),
        (["sim", "dagger", "--model", "m.pt", "--data", "s.zarr"], DaggerConfig, {"model": "m.pt", "data": "s.zarr"}),
        (["replay", "--model", "m.pt", "--data", "s.zarr"], ReplayConfig, {"model": "m.pt", "data": "s.zarr"}),
        (["compress", "best.pt"], CompressConfig, {}),
        (["export", "best.pt"], OnnxExportConfig, {}),
        (["quantize", "m.onnx"], QuantizeConfig, {}),
    ]


@pytest.mark.parametrize("argv, cls, required", _config_commands(), ids=lambda x: " ".join(x) if
                         isinstance(x, list) else "")
def test_generated_defaults_are_the_dataclass_defaults(argv, cls, required):
    parser = build_parser()
    args = parser.parse_args(argv)
    assert given_values(args, cls) == required  # no flag carries a default of its own
    assert config_from_args(cls, args) == cls(**required)
    shown = {a.dest: a.help for a in parser._subparsers._group_actions[0].choices[argv[0]]._actions} \
        if argv[0] != "sim" else {}
    for f in dataclasses.fields(cls):  # the help shows the dataclass's own default
        if f.name in shown and field_default(f) is not dataclasses.MISSING and isinstance(field_default(f), int |
                float | str) and "(required" not in shown[f.name]:  # a refused default is not shown
            assert f"default: {field_default(f)!r}" in shown[f.name] or "default: on" in shown[f.name], f.name


def test_nested_renamed_and_negated_flags_round_trip():
    from driver.datasets.validity import ValidityRules

    args = build_parser().parse_args(["ingest", "r.h5", "--out", "s.zarr", "--max-gap", "0.2", "--keep-pinned-steer",
                                      "--accepted-states", "1", "3", "--lock-ttl", "30"])
    from driver.datasets.ingest import IngestConfig

    config = config_from_args(IngestConfig, args)
    assert config.validity == ValidityRules(max_gap_s=0.2, reject_pinned_steer=False, accepted_states=(1, 3))
    assert config.lock_ttl_s == 30.0 and config.jobs is None  # None: ingest's default


def test_pairs_and_json_flags():
    from driver.export.compress import CompressConfig
    from driver.training.config import TrainConfig

    p = build_parser()
    args = p.parse_args(["compress", "best.pt", "--layer-bits", "head=8", "fire*=4", "--layer-density", "head=0.5"])
    config = config_from_args(CompressConfig, args)
    assert config.layer_bits == {"head": 8, "fire*": 4} and config.layer_density == {"head": 0.5}
    args = p.parse_args(["train", "--arch-kwargs", json.dumps({"hidden_size": 64})])
    assert given_values(args, TrainConfig) == {"arch_kwargs": {"hidden_size": 64}}
    args = p.parse_args(["train", "--arch-kwargs", "hidden_size=32", "cell=gru"])
    assert given_values(args, TrainConfig) == {"arch_kwargs": {"hidden_size": 32, "cell": "gru"}}
    for bad in (["compress", "best.pt", "--layer-bits", "head"], ["compress", "best.pt", "--layer-bits", "head=x"],
                ["train", "--arch-kwargs", "{not json"]):
        with pytest.raises(SystemExit) as e:
            p.parse_args(bad)
        assert e.value.code == 2


def test_arch_help_lists_the_registered_architectures():
    from driver.models import list_models

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    (arch,) = [a for a in train._actions if a.dest == "arch"]
    assert all(name in arch.help for name in list_models())


@dataclasses.dataclass
class Inner:
    gain: float = 0.5  # how much


@dataclasses.dataclass
class Knobs:
    path: str  # where
    mode: Literal["fast", "exact"] = "fast"  # which way
    # a section heading, not part of mode's help
    flip: bool = True  # mirror
                       # (left for right)
    sizes: tuple[int, ...] = (1, 2)  # several
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_a_new_config_field_becomes_a_flag_without_touching_the_cli():
    p = argparse.ArgumentParser()
    add_config_flags(p, Knobs)
    args = p.parse_args(["--path", "x", "--mode", "exact", "--no-flip", "--sizes", "3", "--gain", "2"])
    assert config_from_args(Knobs, args) == Knobs("x", "exact", False, (3,), Inner(2.0))
    assert config_from_args(Knobs, p.parse_args(["--path", "y"])) == Knobs("y")
    with pytest.raises(SystemExit):
        p.parse_args(["--path", "x", "--mode", "slow"])  # Literal -> choices
    helps = {a.dest: a.help for a in p._actions}
    assert helps["mode"] == "which way (default: 'fast')" and helps["inner.gain"] == "how much (default: 0.5)"
    assert helps["path"] == "where (required)"
    assert helps["flip"] == "mirror (left for right) (default: True)"  # a continued comment


@dataclasses.dataclass
class Named:
    name: str = ""  # who (the config refuses an empty one)
    note: str = ""  # what (empty: none)


def test_a_refused_default_shows_required_and_where_else_it_may_come_from():
    p = argparse.ArgumentParser()
    add_config_flags(p, Named, required=("name",))
    helps = {a.dest: a.help for a in p._actions}
    assert helps["name"] == "who (the config refuses an empty one) (required)"
    assert helps["note"] == "what (empty: none) (default: '')"
    with pytest.raises(SystemExit):
        p.parse_args(["--note", "x"])  # argparse insists on --name
    assert config_from_args(Named, p.parse_args(["--name", "a"])) == Named("a")
    p = argparse.ArgumentParser()
    add_config_flags(p, Named, required=("name",), required_unless="in --config FILE")
    helps = {a.dest: a.help for a in p._actions}
    assert helps["name"].endswith("(required unless in --config FILE)")
    assert given_values(p.parse_args([]), Named) == {}  # the file may hold it: the config's own check decides
    commands = dict(subcommands(build_parser()))
    for command, flag, shown in (("sim dagger", "--model", "(required)"), ("sim dagger", "--data", "(required)"),
                                 ("link", "--port", "(required)"), ("drive", "--model", "(required unless in --config"),
                                 ("train", "--data", "(required unless in --config FILE or with --resume)")):
        (action,) = [a for a in commands[command]._actions if flag in a.option_strings]
        assert shown in action.help and "default" not in action.help, (command, flag, action.help)


def _driver(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "driver.cli", *args], capture_output=True, text=True, timeout=600)


def test_version_and_help_without_torch_or_zarr():
    r = _driver("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"driver {__version__}"
    probe = ("import sys\nfrom driver.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print('HEAVY', sorted(m for m in ('torch', 'zarr', 'cv2', 'h5py') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert "HEAVY []" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_verbose_shows_the_traceback_behind_the_one_line_error(tmp_path):
    quiet = _driver("verify", str(tmp_path / "missing.zarr"))
    loud = _driver("-v", "verify", str(tmp_path / "missing.zarr"))
    assert quiet.returncode == loud.returncode == 2
    assert "missing.zarr" in quiet.stderr and "Traceback" not in quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) == 1, quiet.stderr
    assert "Traceback" in loud.stderr and "missing.zarr" in loud.stderr


@pytest.mark.slow  # imports every module of driver
def test_every_error_class_derives_from_driver_error():
    import importlib
    import inspect
    import pkgutil

    import driver
    import driver.datasets
    import driver.sim
    import driver.vehicle
    from driver.errors import DriverError

    outside, seen = [], 0
    packages = [(driver, "driver."), (driver.datasets, "driver.datasets."), (driver.sim, "driver.sim."),
                (driver.vehicle, "driver.vehicle.")]  # the last three live in their own top-level folders
    for info in (i for package, prefix in packages for i in pkgutil.walk_packages(package.__path__, prefix)):
        seen += 1
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra (rerun, dask, ...) that is not installed
            continue
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name
                    and name != "EndOfStream" and not issubclass(obj, DriverError)):  # EndOfStream: a signal
                outside.append(f"{info.name}.{name}")
    assert seen > 100 and not outside


def test_drive_config_declares_its_parts_fields_once(capsys):
    from driver.vehicle.camera import CameraConfig
    from driver.vehicle.drive_config import DriveConfig
    from driver.vehicle.limits import LimitsConfig
    from driver.vehicle.safety import SafetyConfig

    own = set(vars(DriveConfig)["__annotations__"])
    declared = [name for cls in DriveConfig.__mro__ if dataclasses.is_dataclass(cls)
                for name in vars(cls).get("__annotations__", {})]
    assert len(declared) == len(set(declared)) == len(dataclasses.fields(DriveConfig))  # each field declared once
    for part in (CameraConfig, LimitsConfig, SafetyConfig):
        names = {f.name for f in dataclasses.fields(part)}
        assert not own & names and names <= {f.name for f in dataclasses.fields(DriveConfig)}
    c = DriveConfig.from_dict({"model": "m.pt", "camera": "sim", "max_throttle": 0.2, "ack_timeout_ms": 300,
                               "fps": 20, "loop_video": True})
    assert c.camera_config == CameraConfig("sim", fps=20.0, loop_video=True)
    assert c.limits == LimitsConfig(max_throttle=0.2)
    assert c.safety == SafetyConfig(ack_timeout_ms=300, deadline_ms=1000.0 / 20.0)  # 0: one frame period
    with pytest.raises(ValueError, match="max_throttle=2"):
        DriveConfig.from_dict({"model": "m.pt", "camera": "sim", "max_throttle": 2})  # LimitsConfig's own check
    with pytest.raises(ValueError, match="fourcc='MJPEG' must be 4 characters"):  # CameraConfig's own check
        DriveConfig.from_dict({"model": "m.pt", "camera": "sim", "fourcc": "MJPEG"})
    args = build_parser().parse_args(["drive", "--model", "m.pt", "--camera", "sim", "--max-throttle", "0.2",
                                      "--fps", "15", "--width", "320", "--height", "240", "--fourcc", "YUYV",
                                      "--side-by-side", "--loop-video"])
    assert given_values(args, DriveConfig) == {"model": "m.pt", "camera": "sim", "max_throttle": 0.2, "fps": 15.0,
                                               "width": 320, "height": 240, "fourcc": "YUYV", "side_by_side": True,
                                               "loop_video": True}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["drive", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # the camera flags' help comes from CameraConfig's comments
    assert "--fourcc FOURCC V4L2 pixel format asked for (default: 'MJPG')" in text
    assert "--loop-video, --no-loop-video file camera: start over at the end" in text
