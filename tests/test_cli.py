"""The `driver` console script, run as a real subprocess."""

import json
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

from driver.cli import main
from driver.datasets.synthetic import write_synthetic_runs
from tests.limits import SAFETY_S


def _driver(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "driver.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=SAFETY_S)


def test_help_lists_subcommands_with_examples():
    out = _driver("--help").stdout
    for cmd in ("ingest", "info", "models", "demo"):
        assert cmd in out
    assert "examples:" in _driver("ingest", "--help").stdout


def test_ingest_info_and_exit_codes(tmp_path, capsys, caplog):
    write_synthetic_runs(tmp_path / "runs", 2, n_frames=50, height=24, width=32)
    (tmp_path / "runs" / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    store = tmp_path / "s.zarr"
    r = _driver("ingest", str(tmp_path / "runs"), "--out", str(store), "--jobs", "2")
    assert r.returncode == 1
    assert "broken.h5" in r.stdout and "FAILED" in r.stdout and "2 ok, 1 failed" in r.stdout
    info = _driver("info", str(store))
    assert info.returncode == 0 and "run_000" in info.stdout and "24x32 stereo" in info.stdout
    (tmp_path / "runs" / "broken.h5").unlink()
    # the rest in this process: the exit code is what main returns
    assert main(["ingest", str(tmp_path / "runs"), "--out", str(store)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "nowhere")]) == 2 and "not a store" in caplog.text
    assert main(["ingest", str(tmp_path / "runs"), "--out", str(store), "--min-motor", "120"]) == 2
    assert "min_motor=120.0 must be in 0..99" in caplog.text


def test_models_table(capsys):  # in this process: parsing and dispatch are the subprocess tests' job
    assert main(["models", "--height", "96", "--width", "96", "--cameras", "1", "--stack", "1"]) == 0
    out = capsys.readouterr().out
    for arch in ("z2color", "squeezenet", "alexnet", "squeezenet_lstm", "squeezenet_gru"):
        assert arch in out


@pytest.mark.slow
def test_demo_runs_end_to_end_and_its_next_step_runs_as_printed(tmp_path, caplog):
    caplog.set_level("INFO")  # the demo in this process (torch is imported already); its next step in its own
    assert main(["demo", "--workdir", str(tmp_path / "d"), "--runs", "3", "--seconds", "6", "--steps", "4",
                 "--eval-tracks", "1", "--jobs", "1", "--height", "32", "--width", "48"]) == 0, caplog.text[-3000:]
    report = (tmp_path / "d" / "report.md").read_text()
    assert "3 simulated runs" in report and "| train |" in report
    assert re.search(r"\| \*\*total\*\* \| \*\*[0-9.]+\*\* \|", report) and "compute thread" in report
    # without a terminal, long stages log a progress line (rate, ETA) instead of staying silent
    assert re.search(r"sim record [0-9,]+/[0-9,]+ \(100%\) [0-9.]+ frame/s, ETA", caplog.text)
    assert re.search(r"train 4/4 \(100%\) [0-9.]+ step/s, ETA .* \| loss", caplog.text)
    # the next step the report prints runs as printed: the exported model drives the simulated car
    command = re.search(r"`(driver drive [^`]*--camera sim[^`]*)`", report).group(1)
    assert "--seconds 20" in command  # the printed 20 s of real-time driving, cut to 3 here (the last flag wins)
    drive = _driver(*shlex.split(command)[1:], "--seconds", "3", cwd=tmp_path)
    assert drive.returncode == 0, drive.stderr
    said = drive.stderr + drive.stdout  # (4 training steps drive badly: PilotNet's autonomy may be negative)
    assert re.search(r"sim track \d+: autonomy -?[0-9.]+% .* cross-track \|e\| mean [0-9.]+ m", said)
    assert "held-out tracks in held-out world variants: autonomy" in report and "of the expert" in report
    assert "track eval/0: autonomy" in report and "(expert " in report
    summary = json.loads((tmp_path / "d" / "sim_drive" / "summary.json").read_text())
    assert summary["car"] == "dynamic" and summary["pace"] is not None and set(summary["causes"]) == {
        "off_road", "slid", "wrong_way", "stopped"}
    assert (tmp_path / "d" / "sim_drive" / "speed_eval_0.png").is_file()
    assert "parity with PyTorch" in report and (tmp_path / "d" / "export" / "demo.onnx").is_file()
    # a demo that does not learn fails (issue 18): from step 1,200 on; these 4 steps show the mechanics only
    trained = json.loads((tmp_path / "d" / "train" / "demo" / "config.json").read_text())
    assert (trained["not_learning"], trained["learning_check_step"]) == ("fail", 1200)


def test_a_non_checkpoint_pt_is_named_without_torch_advice_or_warnings(tmp_path, capsys, caplog, recwarn):
    torch.save({"weights": np.zeros(3)}, tmp_path / "notes.pt")  # a numpy array: refused by weights_only
    r = _driver("export", str(tmp_path / "notes.pt"), cwd=tmp_path)  # what a user's terminal shows
    assert r.returncode == 2
    assert "notes.pt: not a driver checkpoint" in r.stderr
    assert "Warning" not in r.stderr and "weights_only" not in r.stderr and "Traceback" not in r.stderr
    # the same load behind another command, in this process: the error line, no warning, no torch advice
    assert main(["sim", "drive", "--model", str(tmp_path / "notes.pt"), "--out", str(tmp_path / "sd")]) == 2
    said = caplog.text + capsys.readouterr().err
    assert "notes.pt: not a driver checkpoint" in said and "weights_only" not in said and "Traceback" not in said
    assert not recwarn.list, [str(w.message) for w in recwarn.list]
