"""The `driver` console script, run as a real subprocess."""

import json
import subprocess
import sys

from driver.datasets.synthetic import write_synthetic_runs

from tests.conftest import SAFETY_S


def _driver(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "driver.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=SAFETY_S)


def test_help_lists_subcommands_with_examples():
    out = _driver("--help").stdout
    for cmd in ("ingest", "info", "models", "demo"):
        assert cmd in out
    assert "examples:" in _driver("ingest", "--help").stdout


def test_ingest_info_and_exit_codes(tmp_path):
    write_synthetic_runs(tmp_path / "runs", 2, n_frames=50, height=24, width=32)
    (tmp_path / "runs" / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    store = tmp_path / "s.zarr"
    r = _driver("ingest", str(tmp_path / "runs"), "--out", str(store), "--jobs", "2")
    assert r.returncode == 1
    assert "broken.h5" in r.stdout and "FAILED" in r.stdout and "2 ok, 1 failed" in r.stdout
    info = _driver("info", str(store))
    assert info.returncode == 0 and "run_000" in info.stdout and "24x32 stereo" in info.stdout
    (tmp_path / "runs" / "broken.h5").unlink()
    again = _driver("ingest", str(tmp_path / "runs"), "--out", str(store))
    assert again.returncode == 0 and "unchanged" in again.stdout
    bad = _driver("info", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "not a store" in bad.stderr
    bad = _driver("ingest", str(tmp_path / "runs"), "--out", str(store), "--min-motor", "120")
    assert bad.returncode == 2 and "min_motor=120.0 must be in 0..99" in bad.stderr


def test_models_table():
    r = _driver("models", "--height", "96", "--width", "96", "--cameras", "1", "--stack", "1")
    assert r.returncode == 0
    for arch in ("z2color", "squeezenet", "alexnet", "squeezenet_lstm", "squeezenet_gru"):
        assert arch in r.stdout


def test_demo_runs_end_to_end(tmp_path):
    r = _driver("demo", "--workdir", str(tmp_path / "d"), "--runs", "3", "--seconds", "6", "--steps", "4",
                "--eval-tracks", "1", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "d" / "report.md").read_text()
    assert "3 simulated runs" in report and "| train |" in report
    assert "held-out tracks in held-out world variants: autonomy" in report and "of the expert" in report
    assert "track eval/0: autonomy" in report and "(expert " in report
    summary = json.loads((tmp_path / "d" / "sim_drive" / "summary.json").read_text())
    assert summary["car"] == "dynamic" and summary["pace"] is not None and set(summary["causes"]) == {
        "off_road", "slid", "wrong_way", "stopped"}
    assert (tmp_path / "d" / "sim_drive" / "speed_eval_0.png").is_file()
    assert "parity with PyTorch" in report and (tmp_path / "d" / "export" / "demo.onnx").is_file()
