"""Benchmark the drive loop under load: p50/p99 of the overhead beyond inference, with the car-computer options.

    python bench/drive.py [--seconds 10] [--load 2] [--rounds 2] [--runtime onnx] [--arch squeezenet_lstm]
                          [--view SINK]

Builds the fake MCU (``make -C vehicle/firmware host``), writes a side-by-side stereo MJPG video at the model's
input size, exports an untrained model to ONNX (``--runtime torch``: the checkpoint itself) and runs ``drive()``
in-process against the MCU on a pty, recording on, 30 fps. Each setting runs with no extra load and with
``--load`` busy processes (``while True`` loops, unpinned, as other work on a car computer), the settings
interleaved over ``--rounds`` rounds so machine drift hits them alike:

* ``plain``: the defaults: Python's own garbage collector, no pinning, normal priority
* ``gc``: ``--gc between-ticks`` (collection right after each tick's CMD is out)
* ``cpu``: ``--cpus N`` (the drive's threads on one CPU, the busy processes anywhere)
* ``cpu+rt``: ``--cpus N --realtime`` (and SCHED_FIFO, if permitted)
* ``view``: with ``--view SINK`` (e.g. ``view.rrd``), the defaults plus the Rerun live view (driver[view])

Prints a markdown table for docs/benchmarks.md: capture→send, inference and overhead (capture→send minus
inference) per setting: the median over rounds of each round's p50, the worst round's p99 and max.
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

from driver.vehicle.drive_config import DriveConfig
from driver.vehicle.drive_loop import drive
from driver.vehicle.fake_mcu import build_host_mcu

SETTINGS = {  # cpus filled in from --cpu
    "plain": {},
    "gc": {"gc": "between-ticks"},
    "cpu": {},
    "cpu+rt": {"realtime": True},
}


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


def make_model(tmp: Path, arch: str, stereo: bool, runtime: str) -> tuple[Path, tuple[int, int, int]]:
    import torch

    from driver.models import LAB_MODES, InputSpec, create_model
    from driver.training.checkpoint import model_payload, preprocess_info, save_checkpoint

    cams = ("left", "right") if stereo else ("left",)
    spec = InputSpec(cameras=len(cams))
    torch.manual_seed(0)
    model = create_model(arch, spec)
    ckpt = tmp / "model.pt"
    save_checkpoint(ckpt, {**model_payload(model), "config": {"channels_last": True},
                           "preprocess": preprocess_info(spec, cams, LAB_MODES)})
    if runtime == "torch":
        return ckpt, (spec.height, spec.width, len(cams))
    from driver.export.onnx_export import OnnxExportConfig, export_onnx

    export_onnx(str(ckpt), OnnxExportConfig(out=str(tmp / "model.onnx"), parity_steps=2, parity_sequences=1))
    return tmp / "model.onnx", (spec.height, spec.width, len(cams))


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def run_setting(binary, model, video, fps, seconds, runtime, overrides, tmp, stereo) -> dict:
    proc, slave, port = start_mcu(binary)
    try:
        report = drive(DriveConfig(port=port, model=str(model), camera=f"file:{video}", fps=fps, seconds=seconds,
                                   side_by_side=stereo, record_dir=str(tmp / "runs"), threads=1, runtime=runtime,
                                   camera_timeout_ms=2000, deadline_ms=10000, status_every_s=3600,
                                   gap_frames=10**5, max_lost_acks=10**5, **overrides))
    finally:
        proc.stdin.close()
        proc.wait(timeout=5)
        os.close(slave)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="squeezenet_lstm")
    ap.add_argument("--mono", action="store_true", help="one camera instead of the lab's stereo pair")
    ap.add_argument("--runtime", choices=("onnx", "torch"), default="onnx", help="default onnx: the car path")
    ap.add_argument("--seconds", type=float, default=10.0, help="per setting and round")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--load", type=int, default=2, help="busy processes for the loaded runs (default 2)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpu", type=int, default=None, help="the CPU cpu+rt pins to (default: the last one)")
    ap.add_argument("--view", default="", help="also run the defaults with this Rerun live view sink")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    stereo = not args.mono
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    SETTINGS["cpu"]["cpus"] = SETTINGS["cpu+rt"]["cpus"] = str(cpu)
    if args.view:
        SETTINGS["view"] = {"view": args.view}
    tmp = Path(tempfile.mkdtemp(prefix="bench_drive_"))
    model, (h, w, cams) = make_model(tmp, args.arch, stereo, args.runtime)
    binary = build_host_mcu(tmp / "fw")
    video = tmp / "v.avi"
    write_video(video, h, w * cams, int(args.fps * (args.seconds + 5)), args.fps)
    samples: dict[tuple[str, int], list] = {}
    realtime = {}
    for _ in range(args.rounds):
        for load in (0, args.load):
            loaders = busy(load)
            try:
                for name, overrides in SETTINGS.items():
                    report = run_setting(binary, model, video, args.fps, args.seconds, args.runtime, overrides, tmp,
                                         stereo)
                    samples.setdefault((name, load), []).append(report)
                    realtime[name] = report.realtime
            finally:
                for p in loaders:
                    p.kill()
                    p.wait()
    with open("/proc/cpuinfo") as f:
        cpu_name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    print(f"\n`{' '.join(['python', *sys.argv])}` — {args.arch} {h}×{w} {'stereo' if stereo else 'mono'} on "
          f"{args.runtime}, {args.fps:g} fps, recording on; {cpu_name}, {os.cpu_count()} cores, load avg "
          f"{os.getloadavg()[0]:.1f} at the end; cpu+rt SCHED_FIFO {'granted' if realtime.get('cpu+rt') else 'refused'}"
          "\n")
    print("| setting | busy processes | ticks | achieved Hz | capture→send p50/p99 ms | inference p50/p99 ms | "
          "overhead p50/p99 ms | overhead max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, load), reports in samples.items():
        def stat(stage: str, reports=reports) -> tuple[float, float, float]:
            ts = [r.timings[stage] for r in reports]
            return (float(np.median([t.p50_ms for t in ts])), max(t.p99_ms for t in ts), max(t.max_ms for t in ts))

        c2s, inf, over = stat("capture_to_send"), stat("inference"), stat("overhead")
        hz = sum(r.ticks for r in reports) / sum(r.seconds for r in reports)
        print(f"| {name} | {load} | {sum(r.ticks for r in reports)} | {hz:.1f} | {c2s[0]:.1f} / {c2s[1]:.1f} | "
              f"{inf[0]:.1f} / {inf[1]:.1f} | {over[0]:.2f} / {over[1]:.2f} | {over[2]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
