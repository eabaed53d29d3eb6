"""Screenshots of the Rerun views for docs/view.md, taken by Rerun's own viewer (headless, software renderer).

    python bench/view_screenshots.py [--out docs/img]

Records two simulator runs, ingests them, and writes the four views (``driver view``, ``driver replay
--view`` with an untrained SqueezeNet, ``driver sim drive --view`` with the expert, ``driver drive --view``
on the sim camera), then opens each .rrd in a headless viewer (``ViewerClient.spawn(headless=True)``),
moves the time cursor and saves a screenshot, downscaled to a small JPEG. Needs the ``rerun`` binary of
rerun-sdk on PATH (the venv's bin) and a Vulkan driver (Mesa's lavapipe works).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_recordings(tmp: Path) -> dict[str, tuple[Path, str, int]]:
    from driver.datasets.ingest import IngestConfig, ingest
    from driver.sim.evaluate_policy import SimDriveConfig, sim_drive
    from driver.sim.record import SimRecordConfig, record_runs
    from driver.sim.replay import ReplayConfig, replay
    from driver.vehicle.drive_config import DriveConfig
    from driver.vehicle.drive_loop import drive
    from driver.view.store_view import ViewConfig, view_store
    from tests.test_replay import make_checkpoint

    paths = record_runs(SimRecordConfig(out=tmp / "runs", runs=2, seconds=6, height=48, width=64, seed=0, noise=0.1,
                                        stereo=True))
    store = tmp / "store.zarr"
    assert ingest(IngestConfig(sources=[str(p) for p in paths], out=str(store))).ok
    view_store(ViewConfig(store=str(store), sink=str(tmp / "store.rrd")))
    ckpt = make_checkpoint(tmp / "model.pt", "squeezenet")
    replay(ReplayConfig(model=ckpt, data=str(store), out=str(tmp / "replay"), video=False, plots=False, view="file"))
    sim_drive(SimDriveConfig(model="expert", out=str(tmp / "sim"), tracks=1, max_seconds=20, media=False,
                             view="file", split="eval"))
    drive(DriveConfig(model=ckpt, camera="sim:2", width=64, height=48, seconds=4.0, record_dir="", warmup=0,
                      view=str(tmp / "drive.rrd")))
    return {"store": (tmp / "store.rrd", "frame", 120), "replay": (tmp / "replay" / "replay.rrd", "frame", 120),
            "sim_drive": (tmp / "sim" / "sim_drive.rrd", "step", 300), "drive": (tmp / "drive.rrd", "tick", 60)}


def screenshot(rrd: Path, timeline: str, at: int, out: Path, port: int) -> None:
    from rerun.experimental import ViewerClient

    client = ViewerClient.spawn(headless=True, port=port, hide_welcome_screen=True)
    try:
        client.open(str(rrd))
        time.sleep(8)  # let the viewer load the whole recording
        client.set_time(timeline, sequence=at)
        time.sleep(3)
        png = out.with_suffix(".png")
        client.save_screenshot(str(png))
    finally:
        client.quit()
    img = cv2.imread(str(png))
    small = cv2.resize(img, (1280, int(img.shape[0] * 1280 / img.shape[1])), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out), small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    png.unlink()
    print(f"{out}: {out.stat().st_size / 1e3:.0f} kB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = ap.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv's rerun
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="view_shots_"))
    try:
        for i, (name, (rrd, timeline, at)) in enumerate(make_recordings(tmp).items()):
            screenshot(rrd, timeline, at, out / f"view_{name}.jpg", 9877 + 2 * i)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
