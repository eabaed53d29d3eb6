"""Training throughput through the real `driver train` path: eager fp32 vs our defaults, and data wait.

    python bench/train.py [--steps 30] [--batch-size 32] [--workdir /tmp/driver_bench_train]

Builds one synthetic store at the lab's input (94x168 stereo, 2-frame stacking), then trains
squeezenet and squeezenet_lstm for a fixed number of steps with (a) fp32, NCHW and (b) the defaults
(bf16 autocast + channels_last on CPU), all in one run. Prints frames/s (one sample = one frame; a
recurrent clip of T frames counts T) and the share of step time spent waiting for data.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
from pathlib import Path

import torch

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.synthetic import write_synthetic_runs
from driver.training import TrainConfig, train


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workdir", default="/tmp/driver_bench_train")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    write_synthetic_runs(work / "runs", 4, n_frames=600, height=94, width=168, stereo=True)
    store = work / "store.zarr"
    ingest(IngestConfig(sources=[str(work / "runs")], out=str(store)))
    rows = []
    for arch, clip, batch in (("squeezenet", 1, args.batch_size), ("squeezenet_lstm", 8, max(1, args.batch_size // 8))):
        modes = (("eager fp32 NCHW", "fp32", False), ("defaults (bf16 + channels_last)", "auto", True))
        for label, precision, cl in modes:
            r = train(TrainConfig(data=str(store), arch=arch, cameras="both", stack=2, clip_length=clip, horizon=10,
                                  batch_size=batch, epochs=1, steps_per_epoch=args.steps, precision=precision,
                                  channels_last=cl, device=args.device, out=str(work / "t"), name=f"{arch}-{precision}",
                                  progress=False, val_fraction=0.25, warmup_steps=0))
            rows.append((arch, label, batch, clip, r.samples_per_s, r.data_wait))
    cpu = platform.processor() or platform.machine()
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else f"CPU ({cpu})"
    print(f"device: {dev}, {os.cpu_count()} cpus, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{args.steps} steps each")
    print("| arch | mode | batch x T | frames/s | vs fp32 | data wait |")
    print("|---|---|---|---|---|---|")
    for i, (arch, label, batch, clip, sps, wait) in enumerate(rows):
        base = rows[i - i % 2][4]
        print(f"| {arch} | {label} | {batch} x {clip} | {sps:,.0f} | {sps / base:.2f} | {100 * wait:.1f}% |")


if __name__ == "__main__":
    main()
