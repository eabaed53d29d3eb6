"""Benchmark the drive loop: capture → send latency and achieved rate with a video-file camera and the pty fake MCU.

    python bench/drive.py [--arch squeezenet_lstm] [--seconds 10] [--fps 30 60] [--mono] [--view SINK]

Builds the fake MCU (``make -C vehicle/firmware host``), writes a side-by-side stereo video at the model's
input size (no resize: the lab's 94×168 per camera), and runs ``drive()`` in-process against the MCU on a
pty, recording included, for each fps; with ``--view SINK`` (e.g. ``view.rrd``) each fps runs twice, without
and with the Rerun live view, alternating. Prints a markdown table for docs/benchmarks.md. The model is
untrained (latency does not depend on the weights).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import tty
from pathlib import Path

import cv2
import numpy as np
import torch
from driver.vehicle.drive_config import DriveConfig
from driver.vehicle.drive_loop import drive

from driver.models import LAB_MODES, InputSpec, create_model
from driver.training.checkpoint import model_payload, preprocess_info, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def build_mcu(build: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(ROOT / "vehicle" / "firmware"), "host", f"BUILD={build}"], check=True)
    return build / "host_mcu"


def start_mcu(binary: Path):
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen([str(binary), "--fd", str(master), "--rc", "1500,1500,1000"], pass_fds=[master],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    os.close(master)
    return proc, slave, os.ttyname(slave)


def write_video(path: Path, h: int, w: int, n: int, fps: float) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        img = np.stack([(127 + 120 * np.sin(xx / (9 + 4 * c) + yy / 13 + 0.3 * i)) for c in range(3)], -1)
        writer.write(img.astype(np.uint8))
    writer.release()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="squeezenet_lstm")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=float, nargs="+", default=[30.0, 60.0])
    ap.add_argument("--mono", action="store_true", help="one camera instead of the lab's stereo pair")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--view", default="", help="also run each fps with this Rerun live view sink (driver[view])")
    ap.add_argument("--repeat", type=int, default=1, help="runs per setting (alternating with and without --view)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cams = ("left",) if args.mono else ("left", "right")
    spec = InputSpec(cameras=len(cams))
    tmp = Path(tempfile.mkdtemp(prefix="bench_drive_"))
    torch.manual_seed(0)
    model = create_model(args.arch, spec)
    ckpt = tmp / "model.pt"
    save_checkpoint(ckpt, {**model_payload(model), "config": {"channels_last": True},
                           "preprocess": preprocess_info(spec, cams, LAB_MODES)})
    binary = build_mcu(tmp / "fw")
    rows = []
    views = ["", args.view] if args.view else [""]
    for fps in args.fps:
        video = tmp / f"v{fps:g}.avi"
        write_video(video, spec.height, spec.width * len(cams), int(fps * (args.seconds + 5)), fps)
        for _ in range(args.repeat):
            for view in views:
                proc, slave, port = start_mcu(binary)
                try:
                    sink = str(tmp / view) if view.endswith(".rrd") else view
                    report = drive(DriveConfig(port=port, model=str(ckpt), camera=f"file:{video}", fps=fps,
                                               side_by_side=not args.mono, seconds=args.seconds,
                                               record_dir=str(tmp / "runs"), threads=args.threads,
                                               camera_timeout_ms=2000, deadline_ms=10000, status_every_s=3600,
                                               gap_frames=10**5, view=sink))
                finally:
                    proc.stdin.close()
                    proc.wait(timeout=5)
                    os.close(slave)
                t = report.timings
                c2s, inf, over = t["capture_to_send"], t["inference"], t["overhead"]
                rows.append((f"{fps:g}" + (f" + view {view}" if view else ""), report.rate_hz, report.frames_skipped,
                             c2s.p50_ms, c2s.p99_ms, inf.p50_ms, inf.p99_ms, over.p50_ms, over.p99_ms,
                             t["ack_rtt"].p50_ms, inf.p50_ms / c2s.p50_ms * 100, report.reason, t["tick"].p99_ms))
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    print(f"\n`{' '.join([os.path.basename(sys.executable), *sys.argv])}` — {args.arch}, "
          f"{spec.height}×{spec.width} {'mono' if args.mono else 'stereo'}, torch {torch.__version__}, "
          f"{args.threads} thread(s); {cpu}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}\n")
    print("| camera fps | achieved Hz | frames skipped | capture→send p50/p99 ms | inference p50/p99 ms | "
          "overhead p50/p99 ms | ack RTT p50 ms | inference share (p50) | tick p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]} | {r[3]:.1f} / {r[4]:.1f} | {r[5]:.1f} / {r[6]:.1f} | "
              f"{r[7]:.2f} / {r[8]:.2f} | {r[9]:.2f} | {r[10]:.0f}% | {r[12]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
