"""The car computer: `driver drive` on an exported ONNX model with torch, zarr, onnx and the trainer unimportable.

The suite's venv has torch, so a real subprocess blocks those imports (an import of any of them raises, as on
a `driver[car]` install); `.ci/run` checks the same in a venv that really lacks them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import pytest

from driver.cli import build_parser
from driver.export.onnx_export import OnnxExportConfig, export_onnx
from tests.limits import SAFETY_S
from tests.test_drive_fixtures import drive_assets  # noqa: F401 - fixture

BLOCKED = ("torch", "zarr", "onnx", "tensorboard", "matplotlib", "numcodecs")
CAR_SCRIPT = """
import importlib.abc, json, sys
BLOCKED = {blocked!r}
class NoTrainingStack(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed on the car")
sys.meta_path.insert(0, NoTrainingStack())
from driver.cli import main
from tests.limits import SAFETY_S
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # --help
    code = e.code
LIGHT = ("driver.datasets", "driver.datasets.modes")  # the one mode-vector definition: numpy only, shared with training
heavy = [m for m in sys.modules if m.split(".")[0] in BLOCKED
         or (m.startswith(("driver.training.trainer", "driver.training.checkpoint", "driver.datasets", "driver.models"))
             and m not in LIGHT)]
print("RESULT " + json.dumps({{"code": code, "heavy": heavy}}))
"""


@pytest.fixture(scope="module")
def onnx_model(drive_assets, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("car") / "model.onnx"
    export_onnx(str(drive_assets["model"]), OnnxExportConfig(out=str(out), parity_steps=2, parity_sequences=1))
    return out


def run_car(*args: str) -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-c", CAR_SCRIPT.format(blocked=BLOCKED), *args], capture_output=True,
                          text=True, timeout=SAFETY_S)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):]), proc


def test_drive_runs_an_onnx_model_without_the_training_stack(onnx_model, tmp_path):
    result, proc = run_car("drive", "--model", str(onnx_model), "--camera", "sim", "--seconds", "2", "--width", "64",
                           "--height", "48", "--record-dir", str(tmp_path))
    assert result == {"code": 0, "heavy": []}, proc.stderr[-3000:]
    assert "check duration fired" in proc.stderr and "autonomy" in proc.stderr  # the sim scores the drive
    (run,) = tmp_path.glob("drive_*.h5")
    with h5py.File(run) as f:
        assert f.attrs["complete"] == 1 and f["segments/0/left"].shape[0] > 0
        assert '"source": "sim"' in f.attrs["calibration"]


def test_drive_help_is_light_and_every_flag_says_what_and_its_default():
    result, proc = run_car("drive", "--help")
    assert result == {"code": 0, "heavy": []}, proc.stderr
    assert "--realtime" in proc.stdout and "--config" in proc.stdout
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("drive", "link", "quantize", "export"):
        flags = [a for a in commands[name]._actions if a.option_strings and a.dest != "help"]
        unexplained = [a.dest for a in flags if not a.help or a.help.startswith("(default")
                       or ("(default" not in a.help and "(required" not in a.help)]
        assert not unexplained, (name, unexplained)
    assert len([a for a in commands["drive"]._actions if a.option_strings]) > 30
