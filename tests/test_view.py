"""Rerun views: the written .rrd read back with Rerun's own reader (entities, frame counts, values), the
live drive view, the missing-extra message and the --web viewer loaded in headless Chromium."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from driver.datasets.store import Store
from driver.errors import DriverError

rr = pytest.importorskip("rerun")
from rerun.chunk import RrdReader  # noqa: E402

from tests.limits import SAFETY_S  # noqa: E402
from tests.test_drive_fixtures import H, W, drive_assets  # noqa: E402,F401 - fixture
from tests.test_replay import checkpoint, sim_store  # noqa: E402,F401 - fixtures


def read_rrd(path) -> tuple[Counter, dict]:
    """Rows per entity, and each scalar entity's values in 'frame'/'tick'/'step' order."""
    rows, values = Counter(), defaultdict(list)
    for chunk in RrdReader(path).stream():
        rows[chunk.entity_path] += chunk.num_rows
        batch = chunk.to_record_batch()
        if "Scalars:scalars" in batch.schema.names:
            index = next((t for t in ("frame", "tick", "step") if t in batch.schema.names), None)
            order = batch.column(index).to_numpy() if index else np.arange(batch.num_rows)
            vals = [v[0] for v in batch.column("Scalars:scalars").to_pylist()]
            values[chunk.entity_path] += list(zip(order, vals, strict=True))
    return rows, {k: np.array([v for _, v in sorted(x)]) for k, x in values.items()}


def test_store_view_logs_every_run(tmp_path, sim_store):  # noqa: F811
    from driver.view.store_view import ViewConfig, view_store

    out = tmp_path / "v.rrd"
    result = view_store(ViewConfig(store=str(sim_store), sink=str(out)))
    store = Store(sim_store)
    n = sum(store.run_meta(r)["n_frames"] for r in store.runs)
    assert result["frames"] == n
    rows, values = read_rrd(out)
    assert rows["/camera/left"] == n and rows["/commands/steer"] == n and rows["/valid"] == n
    steer = np.concatenate([store.series(r, "steer") for r in store.runs])
    assert np.allclose(values["/commands/steer"], steer)
    valid = np.concatenate([store.series(r, "valid") for r in store.runs])
    assert np.array_equal(values["/valid"], valid.astype(float))
    assert rows["/run"] == len(store.runs) and rows["/events"] >= len(store.runs)
    assert rows["/state/mode"] >= 1 and rows["/validity"] >= 1


def test_replay_view_has_model_human_error_and_worst(tmp_path, sim_store, checkpoint):  # noqa: F811
    from driver.sim.replay import ReplayConfig, replay

    report = replay(ReplayConfig(model=checkpoint, data=str(sim_store), out=str(tmp_path / "r"), video=False,
                                 plots=False, view="file"))
    path = tmp_path / "r" / "replay.rrd"
    assert str(path) in report.files
    rows, values = read_rrd(path)
    n = sum(len(t.valid) for t in report.traces.values())
    assert rows["/steer/human"] == rows["/steer/model"] == rows["/steer/error"] == n
    human = np.concatenate([t.human_steer for t in report.traces.values()])
    model = np.concatenate([t.pred_steer for t in report.traces.values()])
    assert np.allclose(values["/steer/error"], model - human)
    assert rows["/worst"] == len(report.worst) > 0 and rows["/camera/left"] == n


def test_sim_drive_view_has_map_path_interventions_and_camera(tmp_path):
    from driver.sim.evaluate_policy import SimDriveConfig, sim_drive

    result = sim_drive(SimDriveConfig(model="expert", out=str(tmp_path / "s"), tracks=1, max_seconds=3.0,
                                      media=False, view="file"))
    rows, values = read_rrd(tmp_path / "s" / "sim_drive.rrd")
    ep = result.episodes[0]
    name = f"/track_{ep.track.split}_{ep.track.seed}/map"
    assert rows[f"{name}/road"] == 1 and rows[f"{name}/path"] == 1 and rows[f"{name}/car"] == len(ep.cte)
    assert rows["/camera/left"] == -(-len(ep.cte) // 3)  # every third frame the controller saw
    assert np.allclose(values["/sim/cte"], ep.cte)


def test_drive_view_streams_ticks_without_blocking(tmp_path, drive_assets):  # noqa: F811
    from driver.vehicle.drive_config import DriveConfig
    from driver.vehicle.drive_loop import drive

    out = tmp_path / "drive.rrd"
    report = drive(DriveConfig(model=str(drive_assets["model"]), camera="sim:3", width=W, height=H, seconds=2.0,
                               record_dir="", camera_timeout_ms=2000.0, deadline_ms=5000.0, warmup=0,
                               view=str(out)))
    assert report.reason == "duration" and report.ticks > 0
    rows, values = read_rrd(out)
    assert rows["/commands/model_steer"] == rows["/latency/inference"] == rows["/health/lost_acks"] == report.ticks
    assert 1 <= rows["/camera/left"] <= report.ticks  # at most 5 Hz
    assert rows["/checks"] >= 1  # the 'duration' check that ended the session
    assert rows["/link/mode"] >= 1


def test_missing_rerun_says_how_to_install(monkeypatch):
    from driver.view import require_rerun

    monkeypatch.setitem(sys.modules, "rerun", None)
    with pytest.raises(DriverError, match=r"pip install 'driver\[view\]'"):
        require_rerun()


def test_sinks_parse_with_clear_errors():
    from driver.view.sink import ViewSink

    assert ViewSink.parse("web:8000") == ViewSink("web", port=8000)
    assert ViewSink.parse("file", "x/replay.rrd") == ViewSink("save", "x/replay.rrd")
    assert ViewSink.parse("rerun+http://10.0.0.5:9876/proxy").kind == "connect"
    with pytest.raises(ValueError, match="must be a .rrd file, spawn, web"):
        ViewSink.parse("movie.mp4")


def _free_port_pair() -> int:
    """A port P with P and P + 1 both free on every interface (the web viewer and Rerun's gRPC proxy)."""
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("0.0.0.0", 0))
            port = a.getsockname()[1]
            if port + 1 > 65535:
                continue
            try:
                b.bind(("0.0.0.0", port + 1))
            except OSError:
                continue
            return port


def _start_web_view(store) -> tuple[subprocess.Popen, int]:
    """``driver view --web`` on a free port pair, serving; another process may take a port between the check and
    the server's bind (the suite runs in parallel), so a server that stops with 'Address already in use' is
    started again on another pair, up to three times."""
    for _ in range(3):
        port = _free_port_pair()
        server = subprocess.Popen([sys.executable, "-m", "driver.cli", "view", str(store), "--web", "--port",
                                   str(port), "--every", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SAFETY_S
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return server, port
            if server.poll() is not None:
                break
            time.sleep(0.5)
        else:
            server.terminate()
            server.wait(timeout=SAFETY_S)
            raise AssertionError(f"driver view --web did not serve on port {port} within {SAFETY_S} s")
        log = server.stdout.read().decode()
        if "Address already in use" not in log:
            raise AssertionError(log)
    raise AssertionError(f"no free port pair after three tries: {log}")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it and runs this)")
def test_web_view_loads_in_headless_chromium(tmp_path, sim_store):  # noqa: F811
    server, port = _start_web_view(sim_store)
    try:
        url = f"http://127.0.0.1:{port}/?url=rerun%2Bhttp://127.0.0.1:{port + 1}/proxy"
        profile = tempfile.mkdtemp(prefix="chromium-")
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              "--no-first-run",
                              f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=SAFETY_S)
        shutil.rmtree(profile, ignore_errors=True)
        assert "<canvas" in dom.stdout and "rerun" in dom.stdout.lower(), dom.stdout[:2000] + dom.stderr[-2000:]
    finally:
        server.terminate()
        server.wait(timeout=SAFETY_S)
