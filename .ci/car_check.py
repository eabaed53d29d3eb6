"""CI check of the car computer install: ``driver[car]``, no torch, drives an exported ONNX model.

    python .ci/car_check.py prepare DIR     # with the full install: a small exported model, DIR/model.onnx
    CAR_VENV/bin/python .ci/car_check.py check DIR   # in a venv with only driver[car]

``check`` fails unless torch, zarr and the trainer are absent, ``driver drive`` runs the ONNX model in the
simulator to a clean stop with a recorded session, and ``driver link`` reaches the fake MCU on a pty.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path


def prepare(out: Path) -> None:
    import torch

    from driver.export.onnx_export import OnnxExportConfig, export_onnx
    from driver.models import InputSpec, create_model
    from driver.training.checkpoint import UNITS, model_payload, preprocess_info, save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    spec = InputSpec(height=48, width=64, cameras=1, stack=1, n_modes=0, horizon=1)
    torch.manual_seed(0)
    model = create_model("squeezenet_gru", spec, hidden_size=16)
    save_checkpoint(out / "model.pt", {**model_payload(model), "preprocess": preprocess_info(spec, ("left",), ()),
                                       "units": UNITS, "config": {"channels_last": False}})
    export_onnx(str(out / "model.pt"), OnnxExportConfig(out=str(out / "model.onnx")))


def check(out: Path) -> None:
    present = [m for m in ("torch", "zarr") if importlib.util.find_spec(m) is not None]
    if present:
        sys.exit(f"car install check: {present} must not be installed by driver[car]")
    from driver.cli import main
    from driver.vehicle.drive_config import DriveConfig
    from driver.vehicle.drive_loop import drive

    report = drive(DriveConfig(model=str(out / "model.onnx"), camera="sim", seconds=3.0, width=64, height=48,
                               record_dir=str(out / "runs")))
    loaded = [m for m in ("torch", "zarr", "driver.training.trainer", "driver.datasets.store") if m in sys.modules]
    if report.exit_code != 0 or report.reason != "duration" or not report.run_path or loaded:
        sys.exit(f"car install check failed: exit {report.exit_code} ({report.reason}: {report.message}), "
                 f"run {report.run_path}, loaded {loaded}")
    code = main(["drive", "--model", str(out / "model.onnx"), "--camera", "sim", "--seconds", "1", "--record-dir", ""])
    link = subprocess.run([sys.executable, "-m", "driver.vehicle.fake_mcu", "--build-dir", str(out / "fw"),
                           sys.executable, "-m", "driver.cli", "link", "--port", "{port}", "--seconds", "0.5"])
    if code != 0 or link.returncode != 0:
        sys.exit(f"car install check failed: driver drive exit {code}, driver link exit {link.returncode}")
    # the exported model is untrained (this checks the install, not driving): its sim autonomy means nothing
    print(f"car install OK: {report.ticks} ticks at {report.rate_hz:.0f} Hz on ONNX Runtime, no torch; "  # noqa: T201
          f"a clean stop after {report.reason}, session recorded at {report.run_path}")


if __name__ == "__main__":
    {"prepare": prepare, "check": check}[sys.argv[1]](Path(sys.argv[2]))
