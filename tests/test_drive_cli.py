"""`driver drive` / `link` / `quantize` as a user meets them: config files, the order errors come in, hints."""

from __future__ import annotations

import subprocess
import sys

import pytest

from driver.vehicle.drive_config import DriveConfig
from driver.vehicle.fake_mcu import FakeMcu
from tests.limits import SAFETY_S
from tests.test_car_install import onnx_model  # noqa: F401 - fixture (an .onnx: these runs need no torch)
from tests.test_drive_fixtures import drive_assets  # noqa: F401 - fixture
from tests.test_fake_mcu import host_mcu_bin  # noqa: F401 - fixture


def driver(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "driver.cli", *args], capture_output=True, text=True, timeout=SAFETY_S)


def test_config_file_holds_a_cars_settings_and_flags_override_it(tmp_path):
    toml = tmp_path / "car.toml"
    toml.write_text('[drive]\nport = "/dev/ttyUSB0"\nmodel = "m.onnx"\nmax_throttle = 0.2\nfps = 20\ncpus = "1"\n')
    config = DriveConfig.from_file(toml, {"max_throttle": 0.25})
    assert (config.port, config.max_throttle, config.fps, config.cpus) == ("/dev/ttyUSB0", 0.25, 20.0, "1")
    yaml = tmp_path / "car.yaml"
    yaml.write_text("model: m.onnx\ncamera: sim\nshadow: true\n")
    assert DriveConfig.from_file(yaml).shadow is True
    cases = {"max_trottle = 0.2\n": r"car.toml: unknown drive options \['max_trottle'\]",
             'model = "m.onnx"\nport = "p"\nfps = "fast"\n': "car.toml: fps='fast' must be float",
             'model = "m.onnx"\nport = "p"\nshadow = 1\n': "car.toml: shadow=1 must be bool",
             "model = [\n": "car.toml: invalid TOML"}
    for text, message in cases.items():
        toml.write_text(text)
        with pytest.raises(ValueError, match=message):
            DriveConfig.from_file(toml)
    (tmp_path / "car.ini").write_text("x")
    with pytest.raises(ValueError, match="car.ini: config files must be .toml, .yaml or .yml"):
        DriveConfig.from_file(tmp_path / "car.ini")
    (tmp_path / "big.yaml").write_bytes(b"#" * (2 << 20))
    with pytest.raises(ValueError, match="big.yaml: 2.0 MiB is more than a config file may be"):
        DriveConfig.from_file(tmp_path / "big.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="list.yaml: expected a table of options"):
        DriveConfig.from_file(tmp_path / "list.yaml")


def test_a_missing_port_is_named_before_any_camera_is_touched(onnx_model, tmp_path):  # noqa: F811
    r = driver("drive", "--port", "/dev/ttyNOPE", "--model", str(onnx_model), "--camera", "7", "--record-dir", "")
    assert r.returncode == 2
    assert "cannot open serial port /dev/ttyNOPE: no such device" in r.stderr
    assert "video7" not in r.stderr and "WARN" not in r.stderr
    (tmp_path / "car.toml").write_text(f'port = "/dev/ttyNOPE"\nmodel = "{onnx_model}"\n')
    r = driver("drive", "--config", str(tmp_path / "car.toml"), "--record-dir", "")
    assert r.returncode == 2 and "/dev/ttyNOPE" in r.stderr


def test_a_missing_camera_is_one_line_without_opencv_warnings(host_mcu_bin, onnx_model):  # noqa: F811
    with FakeMcu(host_mcu_bin) as mcu:
        r = driver("drive", "--port", mcu.port, "--model", str(onnx_model), "--camera", "7", "--warmup", "0",
                   "--record-dir", "")
    assert r.returncode == 2, r.stderr
    assert "camera '7': /dev/video7 does not exist" in r.stderr and "WARN" not in r.stderr


def test_quantize_on_a_checkpoint_says_to_export_first(drive_assets, caplog):  # noqa: F811
    from driver.cli import main

    assert main(["quantize", str(drive_assets["model"])]) == 2
    assert "quantize takes an exported .onnx model, not a checkpoint" in caplog.text
    assert "driver export" in caplog.text and "Traceback" not in caplog.text
