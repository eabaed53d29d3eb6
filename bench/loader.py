"""Random T=10 stereo clip reads (94x168x3): our store vs h5py vs zarr-python vs a raw memmap.

    python bench/loader.py [--frames 3000] [--seconds 2] [--workdir /tmp/driver_bench_loader]

Every reader gets the same frames and the same random clip starts; warm page cache (each reader is
run once before timing). Single process, then a DataLoader with 2 workers (batch 32). Prints a
markdown table of clips/s and the ratio to the memmap ceiling.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import zarr
from driver.datasets.clips import ClipConfig, ClipDataset
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_writer import write_run
from driver.datasets.synthetic import render_stripe_frames
from torch.utils.data import DataLoader, Dataset

T, H, W = 10, 94, 168


def make_data(work: Path, n: int):
    rng = np.random.default_rng(0)
    steer = 49 + 40 * np.sin(np.arange(n) / 50)
    motor = np.full(n, 60.0)
    left = render_stripe_frames(steer, motor, H, W, rng)
    right = render_stripe_frames(steer, motor, H, W, rng, shift=-4)
    seg = {"left": left, "right": right, "steer": steer, "motor": motor, "state": np.ones(n),
           "left_timestamp": np.arange(n) / 30.0}
    write_run(work / "run.h5", [seg], {"direct": 1})
    for codec in ("none", "lz4"):
        ingest(IngestConfig(sources=[str(work / "run.h5")], out=str(work / f"store_{codec}.zarr"), codec=codec))
    for name, chunks in (("h5_chunked.h5", (1, H, W, 3)), ("h5_contig.h5", None)):
        with h5py.File(work / name, "w") as f:
            f.create_dataset("left", data=left, chunks=chunks)
            f.create_dataset("right", data=right, chunks=chunks)
    np.save(work / "left.npy", left)
    np.save(work / "right.npy", right)


class Readers:
    """Each reader: callable(start, out) filling out (2, T, H, W, 3) with both cameras' frames."""

    def __init__(self, work: Path):
        self.work = work
        self._h = {}

    def make(self, name):
        w = self.work
        if name == "ours-dataset":
            ds = ClipDataset(w / "store_none.zarr", ClipConfig(clip_length=T, horizon=1))
            return lambda s, out: ds[s % len(ds)]
        if name.startswith("ours"):
            codec = name.split("-")[1]
            ds = ClipDataset(w / f"store_{codec}.zarr", ClipConfig(clip_length=T, horizon=1))
            readers = [ds.store.frames("run", c) for c in ("left", "right")]
            return lambda s, out: [r.read(s, T, out[i]) for i, r in enumerate(readers)]
        if name.startswith("h5py"):
            f = h5py.File(w / ("h5_chunked.h5" if "chunked" in name else "h5_contig.h5"), "r")
            cams = [f["left"], f["right"]]
            return lambda s, out: [c.read_direct(out[i], np.s_[s : s + T]) for i, c in enumerate(cams)]
        if name == "zarr-python":
            g = zarr.open_group(w / "store_none.zarr", mode="r")["runs/run"]
            cams = [g["left"], g["right"]]

            def read(s, out):
                for i, c in enumerate(cams):
                    out[i] = c[s : s + T]
            return read
        if name == "memmap":
            cams = [np.load(w / f"{c}.npy", mmap_mode="r") for c in ("left", "right")]

            def read(s, out):
                for i, c in enumerate(cams):
                    np.copyto(out[i], c[s : s + T])
            return read
        raise ValueError(name)


def time_reader(fn, starts, seconds: float) -> float:
    out = np.empty((2, T, H, W, 3), np.uint8)
    for s in starts[:200]:
        fn(int(s), out)  # warm the page cache and the reader
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for s in starts[n % len(starts) : n % len(starts) + 100]:
            fn(int(s), out)
        n += 100
    return n / (time.perf_counter() - t0)


class ClipSet(Dataset):
    def __init__(self, readers, name, starts):
        self.readers, self.name, self.starts, self.fn = readers, name, starts, None

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        if self.fn is None:
            self.fn = self.readers.make(self.name)  # opened lazily in each worker
        out = np.empty((2, T, H, W, 3), np.uint8)
        self.fn(int(self.starts[i]), out)
        return torch.from_numpy(out)


def time_loader(readers, name, starts, seconds: float) -> float:
    loader = DataLoader(ClipSet(readers, name, starts), batch_size=32, shuffle=False, num_workers=2,
                        multiprocessing_context="fork", persistent_workers=True, prefetch_factor=4)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += len(batch)
        if time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--workdir", default="/tmp/driver_bench_loader")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    make_data(work, args.frames)
    starts = np.random.default_rng(1).integers(0, args.frames - T, 20000)
    readers = Readers(work)
    names = ["memmap", "ours-none", "ours-lz4", "ours-dataset", "h5py-chunked", "h5py-contiguous", "zarr-python"]
    single = {n: time_reader(readers.make(n), starts, args.seconds) for n in names}
    loader = {n: time_loader(readers, n, starts, args.seconds) for n in names if n != "zarr-python"}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; torch {torch.__version__}, "
          f"zarr {zarr.__version__}, h5py {h5py.__version__}; {args.frames} frames, T={T} stereo {H}x{W}")
    print("| reader | clips/s (1 process) | vs memmap | vs h5py chunked | clips/s (2 workers) | vs memmap |")
    print("|---|---|---|---|---|---|")
    for n in names:
        lw = loader.get(n)
        workers = "| |" if lw is None else f"| {lw:,.0f} | {lw / loader['memmap']:.2f} |"
        print(f"| {n} | {single[n]:,.0f} | {single[n] / single['memmap']:.2f} | "
              f"{single[n] / single['h5py-chunked']:.2f} {workers}")


if __name__ == "__main__":
    main()
