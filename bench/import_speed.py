"""Import speed (frames/s) against donkeycar's and LeRobot's own loaders, in one run, and the LeRobot round-trip PSNR.

    python bench/import_speed.py [--frames 2000] [--height 120] [--width 160]

Needs driver AND the libraries in one venv: the throwaway venv of tests/fixtures/make_fixtures.py plus
``pip install --no-deps -e .`` and driver's own dependencies (zarr h5py numcodecs crc32c
opencv-python-headless rich pyyaml). Never install LeRobot into the project's venv.

1. Simulator frames (``driver sim record``, one run) are written as a donkeycar tub by donkeycar's
   ``Tub`` writer and as a LeRobot v3 dataset (AV1, LeRobot's defaults) by ``LeRobotDataset``.
2. Tub: donkeycar's loader (``Tub`` records + ``load_image_sized``, what ``TubRecord.image()`` does) against
   ``driver ingest`` of the tub (decode + store write) and driver's decode alone.
3. LeRobot: LeRobot's loader cannot decode video here (torchcodec's PyPI wheel needs a CUDA torch;
   torchvision 0.28 has no VideoReader), so its table loading (``hf_dataset``) is timed and the video
   decoders are compared on the same MP4: PyAV (what driver uses) and OpenCV; then ``driver ingest``.
4. Round trip: the sim store -> ``export-dataset --to lerobot`` (AV1 crf 30, and H.264 crf 18) -> ingest;
   PSNR of every frame against the original.
Prints markdown for docs/benchmarks.md. Machine is shared: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def sim_frames(tmp: Path, n: int, h: int, w: int):
    from driver.datasets.ingest import IngestConfig, ingest
    from driver.sim.record import SimRecordConfig, record_runs

    paths = record_runs(SimRecordConfig(out=tmp / "runs", runs=1, seconds=n / 20.0, fps=20.0, height=h, width=w,
                                        seed=0, noise=0.1))
    store = tmp / "sim.zarr"
    assert ingest(IngestConfig(sources=[str(p) for p in paths], out=str(store))).ok
    from driver.datasets.store import Store

    s = Store(store)
    run = s.runs[0]
    return store, s.frames(run, "left").read(0, s.run_meta(run)["n_frames"]), s.series(run, "steer")


def write_tub(path: Path, frames, steer) -> None:
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(str(path), inputs=["cam/image_array", "user/angle", "user/throttle", "user/mode"],
              types=["image_array", "float", "float", "str"])
    for i, f in enumerate(frames):
        tub.write_record({"cam/image_array": f, "user/angle": float((steer[i] - 49) / 50), "user/throttle": 0.3,
                          "user/mode": "user"})
        time.sleep(0.001)  # distinct millisecond timestamps
    tub.close()


def write_lerobot(path: Path, frames, steer) -> None:
    from make_fixtures import _declare_torchvision_ops

    _declare_torchvision_ops()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    h, w = frames.shape[1:3]
    ds = LeRobotDataset.create(repo_id="bench/import", fps=20, root=path, use_videos=True, features={
        "observation.images.left": {"dtype": "video", "shape": (h, w, 3), "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["steer", "throttle"]}})
    for i, f in enumerate(frames):
        ds.add_frame({"observation.images.left": f, "action": np.array([(steer[i] - 49) / 50, 0.3], np.float32),
                      "task": "drive"})
    ds.save_episode()
    ds.finalize()


def donkey_load(path: Path, h: int, w: int) -> int:
    from donkeycar.parts.tub_v2 import Tub
    from donkeycar.utils import load_image_sized

    tub = Tub(str(path), read_only=True)
    n = 0
    for rec in tub:
        img = load_image_sized(os.path.join(path, "images", rec["cam/image_array"]), w, h, 3)
        n += img.shape[0] > 0
    tub.close()
    return n


def driver_tub_decode(path: Path) -> int:
    from driver.datasets.interop import load_mapping
    from driver.datasets.interop.tub import tub_sources

    src = tub_sources(path, load_mapping(None, "tub"))[0]
    info = src.inspect()
    out = np.empty((256, info.height, info.width, 3), np.uint8)
    for a in range(0, info.n_frames, 256):
        k = min(256, info.n_frames - a)
        info.reader.read("left", a, k, out[:k])
    info.reader.close()
    return info.n_frames


def ingest_frames(sources, out: Path, mapping=None) -> int:
    from driver.datasets.ingest import IngestConfig, ingest

    shutil.rmtree(out, ignore_errors=True)
    r = ingest(IngestConfig(sources=[str(s) for s in sources], out=str(out), mapping=mapping))
    assert r.ok, r.failures
    return sum(o.frames for o in r.outcomes)


def lerobot_table(path: Path) -> int:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("bench/import", root=path, download_videos=False)
    ds._ensure_hf_dataset_loaded()
    return sum(len(batch["index"]) for batch in ds.hf_dataset.with_format("numpy").iter(batch_size=256))


def pyav_decode(mp4: Path) -> int:
    import av

    with av.open(str(mp4)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        return sum(f.to_ndarray(format="rgb24").shape[0] > 0 for f in c.decode(s))


def opencv_decode(mp4: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(mp4))
    n = 0
    while True:
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    cap.release()
    return n


def psnr_round_trip(store: Path, tmp: Path, vcodec: str, crf: int) -> tuple[float, float, float]:
    from driver.datasets.interop.lerobot_export import LeRobotExportConfig, export_lerobot
    from driver.datasets.store import Store

    out = tmp / f"rt_{vcodec}"
    shutil.rmtree(out, ignore_errors=True)
    export_lerobot(LeRobotExportConfig(store=str(store), out=str(out), vcodec=vcodec, crf=crf))
    ingest_frames([out], tmp / f"rt_{vcodec}.zarr")
    a, b = Store(store), Store(tmp / f"rt_{vcodec}.zarr")
    run = a.runs[0]
    x = a.frames(run, "left").read(0, a.run_meta(run)["n_frames"]).astype(np.float64)
    y = b.frames(run, "left").read(0, len(x)).astype(np.float64)
    for name in ("steer", "motor", "state", "timestamp", "valid"):
        assert np.array_equal(a.series(run, name), b.series(run, name)), name
    mse = ((x - y) ** 2).mean(axis=(1, 2, 3))
    psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))
    bpf = sum(f.stat().st_size for f in (out / "videos").rglob("*.mp4")) / len(x)
    return float(psnr.mean()), float(psnr.min()), bpf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--width", type=int, default=160)
    args = ap.parse_args()
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_import_"))
    h, w = args.height, args.width
    store, frames, steer = sim_frames(tmp, args.frames, h, w)
    n = len(frames)
    write_tub(tmp / "tub", frames, steer)
    write_lerobot(tmp / "lerobot", frames, steer)
    mp4 = next((tmp / "lerobot" / "videos").rglob("*.mp4"))
    rows = []
    for name, fn in [("donkeycar: Tub + load_image_sized (its own loader)", lambda: donkey_load(tmp / "tub", h, w)),
                     ("driver: tub decode only (OpenCV, threads)", lambda: driver_tub_decode(tmp / "tub")),
                     ("driver: `driver ingest` of the tub (decode + store)", lambda: ingest_frames(
                         [tmp / "tub"], tmp / "t.zarr")),
                     ("LeRobot: hf_dataset table only (its video decode cannot run here)",
                      lambda: lerobot_table(tmp / "lerobot")),
                     ("PyAV decode of the AV1 MP4 (driver's decoder)", lambda: pyav_decode(mp4)),
                     ("OpenCV decode of the same MP4", lambda: opencv_decode(mp4)),
                     ("driver: `driver ingest` of the LeRobot dataset (decode + store)", lambda: ingest_frames(
                         [tmp / "lerobot"], tmp / "l.zarr"))]:
        got, secs = timed(fn)
        rows.append((name, got, secs))
    rt = [(codec, crf, *psnr_round_trip(store, tmp, codec, crf)) for codec, crf in (("libsvtav1", 30), ("libx264", 18))]
    shutil.rmtree(tmp, ignore_errors=True)
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    print(f"\n`{' '.join([os.path.basename(sys.executable), *sys.argv])}` — {n} sim frames {h}×{w}, 1 torch/OpenCV "
          f"thread; {cpu}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}\n")
    print("| loader | frames | s | frames/s |\n|---|---|---|---|")
    for name, got, secs in rows:
        print(f"| {name} | {got} | {secs:.2f} | {got / secs:,.0f} |")
    print("\n| round trip store -> LeRobot -> ingest | PSNR mean dB | PSNR min dB | video bytes/frame |")
    print("|---|---|---|---|")
    for codec, crf, mean, low, bpf in rt:
        print(f"| {codec} crf {crf} | {mean:.1f} | {low:.1f} | {bpf:,.0f} (raw {h * w * 3:,}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
