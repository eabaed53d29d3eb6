"""The data path, side by side in one run: readers, ClipDataset items with train defaults, DataLoader
batches, cold vs warm page cache, checksum cost and open files per worker.

    OMP_NUM_THREADS=1 python bench/loader.py [--frames 3000] [--seconds 2] [--rounds 4] [--workdir DIR]

Every reader gets the same frames and the same random clip starts. Warm: each reader runs first, then
all are timed round-robin in short slices, so that load from other processes hits them alike. Cold:
every file is evicted from the page cache (posix_fadvise DONTNEED, cached mappings closed) before each
reader's pass over the same clips; "dense" passes read 150 random clips (neighbours of later clips get
cached on the way), "sparse" passes read clips at least SPARSE_GAP frames apart (each clip's
surroundings uncached: random reads in a store far larger than memory). Prints markdown tables; ratios
come from this one run (docs/benchmarks.md).
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
from torch.utils.data import DataLoader, Dataset

from driver.datasets import storage
from driver.datasets.clips import ClipConfig, ClipDataset
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_writer import write_run
from driver.datasets.synthetic import render_stripe_frames, write_synthetic_runs

T, H, W = 10, 94, 168
SPARSE_GAP = 200  # frames between the clips of a sparse cold pass (> 8 MiB of read-around at 94x168)
TRAIN = ClipConfig(clip_length=8, stack=2, flip=0.5, horizon=10)  # driver train's defaults (TrainConfig)


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


def evict(work: Path):
    storage.close_all()  # pages our mappings hold cannot be evicted
    for root, _, files in os.walk(work):
        for f in files:
            storage.drop_from_page_cache(os.path.join(root, f))


class Readers:
    """Each reader: callable(start, out) filling out (2, T, H, W, 3) with both cameras' frames."""

    def __init__(self, work: Path):
        self.work = work

    def make(self, name):
        w = self.work
        if name.startswith("ours"):
            codec = name.split("-")[1]
            ds = ClipDataset(w / f"store_{codec}.zarr", ClipConfig(clip_length=T, horizon=1))
            readers = [ds.store.frames("run", c) for c in ("left", "right")]
            for r in readers:
                r.verify_checksums = not name.endswith("-nocrc")
                r.checksums = "always" if name.endswith("-always") else "first"
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


def rates(fns: dict, keys, seconds: float, rounds: int) -> dict[str, float]:
    """Calls per second of each fn(key), measured round-robin in ``rounds`` slices so that load from other
    processes on a shared machine hits every candidate alike."""
    for fn in fns.values():
        for k in keys[:100]:
            fn(int(k))  # warm the page cache and the reader
    calls, spent = dict.fromkeys(fns, 0), dict.fromkeys(fns, 0.0)
    pos = 0
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds / rounds:
                for k in keys[pos % len(keys) : pos % len(keys) + 25]:
                    fn(int(k))
                pos += 25
                calls[name] += 25
            spent[name] += time.perf_counter() - t0
    return {name: calls[name] / spent[name] for name in fns}


def cold_rates(fns: dict, starts, work: Path, rounds: int) -> dict[str, float]:
    """Clips per second with every file evicted from the page cache before each reader's pass."""
    spent = dict.fromkeys(fns, 0.0)
    per_round = np.array_split(starts, rounds)
    for part in per_round:
        for name, make in fns.items():
            evict(work)
            fn = make()
            t0 = time.perf_counter()
            for s in part:
                fn(int(s))
            spent[name] += time.perf_counter() - t0
    return {name: len(starts) / spent[name] for name in fns}


def sparse_cold_rates(fns: dict, n_frames: int, work: Path, passes: int) -> dict[str, float]:
    """Clips per second with the page cache dropped before each pass of clips SPARSE_GAP frames apart."""
    rng = np.random.default_rng(3)
    spent, clips = dict.fromkeys(fns, 0.0), 0
    for _ in range(passes):
        slots = rng.permutation(n_frames // SPARSE_GAP)
        starts = [int(k * SPARSE_GAP + rng.integers(1, SPARSE_GAP - T)) for k in slots]
        clips += len(starts)
        for name, make in fns.items():
            evict(work)
            fn = make()
            t0 = time.perf_counter()
            for s in starts:
                fn(s)
            spent[name] += time.perf_counter() - t0
    return {name: clips / spent[name] for name in fns}


def legacy_frames(ds: ClipDataset, index: int) -> np.ndarray:
    """The item frames as ClipDataset built them before (each camera read once per stacked view, then a
    numpy copy of a reversed-stride view to flip): the baseline of the speed-up."""
    cfg = ds.config
    r, s = ds.clip_run_and_start(index)
    out = np.empty((cfg.clip_length, cfg.views, H, W, 3), np.uint8)
    for c, cam in enumerate(cfg.cameras):
        reader = ds.store.frames(r, cam)
        for j in range(cfg.stack):
            reader.read(s - (cfg.stack - 1 - j), cfg.clip_length, out[:, j * len(cfg.cameras) + c])
    rng = np.random.default_rng([cfg.seed, ds.epoch, index])
    if cfg.flip > 0 and rng.random() < cfg.flip:
        order = np.arange(cfg.views).reshape(-1, 2)[:, ::-1].reshape(-1)
        out = np.ascontiguousarray(out[:, :, :, ::-1, :][:, order])
    return out


class MemmapItems(Dataset):
    """The memmap ceiling for an item: the same (T, V, H, W, 3) frames copied out of .npy memmaps."""

    def __init__(self, work: Path, ds: ClipDataset):
        self.work, self.ds, self.cams = work, ds, None

    def __len__(self):
        return len(self.ds)

    def item(self, i, out):
        if self.cams is None:
            self.cams = [np.load(self.work / f"{c}.npy", mmap_mode="r") for c in ("left", "right")]
        _, s = self.ds.clip_run_and_start(i)
        cfg = self.ds.config
        for j in range(cfg.stack):
            for c, cam in enumerate(self.cams):
                first = s - (cfg.stack - 1 - j)
                np.copyto(out[:, j * 2 + c], cam[first : first + cfg.clip_length])
        return out

    def __getitem__(self, i):
        cfg = self.ds.config
        return {"frames": torch.from_numpy(self.item(i, np.empty((cfg.clip_length, cfg.views, H, W, 3), np.uint8)))}


def loader_rate(ds, workers: int, seconds: float) -> float:
    kw = {"multiprocessing_context": "fork", "persistent_workers": True, "prefetch_factor": 4} if workers else {}
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0), **kw)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += len(batch["frames"])
        if time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0)


class FdProbe(Dataset):
    """Clips of a store; each item also reports how many descriptors its process holds."""

    def __init__(self, store):
        self.ds = ClipDataset(store, ClipConfig(clip_length=4, horizon=1))

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.ds[i]
        return len(os.listdir("/proc/self/fd"))


def fds_per_worker(work: Path, runs: int, clips: int = 3000) -> tuple[int, int]:
    """(shard files in the store, most descriptors any of 2 workers held) after reading clips from all runs."""
    store = work / f"fd_store_{runs}.zarr"
    if not store.exists():
        src = work / f"fd_runs_{runs}"
        write_synthetic_runs(src, runs, n_frames=1024, height=24, width=32, seed=runs)
        ingest(IngestConfig(sources=[str(src)], out=str(store), shard_frames=32))
    shard_files = sum(len(files) for root, _, files in os.walk(store) if "/c/" in root + "/")
    ds = FdProbe(store)
    idx = np.random.default_rng(0).integers(0, len(ds.ds), clips)
    loader = DataLoader(torch.utils.data.Subset(ds, idx.tolist()), batch_size=50, num_workers=2,
                        multiprocessing_context="fork")
    return shard_files, max(int(b.max()) for b in loader)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per candidate")
    ap.add_argument("--rounds", type=int, default=4, help="round-robin slices (and cold passes) per candidate")
    ap.add_argument("--workdir", default="/tmp/driver_bench_loader")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    make_data(work, args.frames)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load average "
          f"{os.getloadavg()[0]:.1f} (shared); torch {torch.__version__}, zarr {zarr.__version__}, "
          f"h5py {h5py.__version__}; {args.frames} frames, {H}x{W}")

    starts = np.random.default_rng(1).integers(1, args.frames - T, 20000)
    readers = Readers(work)
    names = ["memmap", "ours-none", "ours-none-always", "ours-none-nocrc", "ours-lz4", "h5py-chunked",
             "h5py-contiguous", "zarr-python"]
    out = np.empty((2, T, H, W, 3), np.uint8)

    def clip_reader(name):
        fn = readers.make(name)
        return lambda s: fn(s, out)

    warm = rates({n: clip_reader(n) for n in names}, starts, args.seconds * len(names), args.rounds)
    cold_names = ("memmap", "ours-none", "ours-lz4", "h5py-chunked", "h5py-contiguous")
    cold_makers = {n: (lambda n=n: clip_reader(n)) for n in cold_names}
    cold = cold_rates(cold_makers, starts[:600], work, args.rounds)
    sparse = sparse_cold_rates(cold_makers, args.frames, work, 8 * args.rounds)
    print(f"\nReaders: random T={T} stereo clips, 1 process")
    print("| reader | warm clips/s | vs memmap | vs h5py chunked | cold dense clips/s | vs h5py chunked "
          "| cold sparse clips/s | vs h5py chunked |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        cols = "".join(f"| {c[n]:,.0f} | {c[n] / c['h5py-chunked']:.2f} " if n in c else "| | "
                       for c in (cold, sparse))
        print(f"| {n} | {warm[n]:,.0f} | {warm[n] / warm['memmap']:.2f} | {warm[n] / warm['h5py-chunked']:.2f} "
              f"{cols}|")
    print(f"checksum cost: reads with checksums 'first' (the default) run at "
          f"{warm['ours-none'] / warm['ours-none-nocrc']:.2f}x the same reads without checks, with 'always' at "
          f"{warm['ours-none-always'] / warm['ours-none-nocrc']:.2f}x")

    ds = ClipDataset(work / "store_none.zarr", TRAIN)
    jit = ClipDataset(work / "store_none.zarr", ClipConfig(**{**TRAIN.__dict__, "color_jitter": 0.5}))
    always = ClipDataset(work / "store_none.zarr", TRAIN)
    for cam in ("left", "right"):
        always.store.frames("run", cam).checksums = "always"
    mm = MemmapItems(work, ds)
    buf = np.empty((TRAIN.clip_length, TRAIN.views, H, W, 3), np.uint8)
    idx = np.random.default_rng(2).integers(0, len(ds), 20000)
    shape = (TRAIN.clip_length, TRAIN.views, H, W, 3)
    items = rates({
        "memmap, same frames, new output array (ceiling)": lambda i: mm.item(i, np.empty(shape, np.uint8)),
        "memmap, same frames, output reused": lambda i: mm.item(i, buf),
        "ClipDataset, train defaults": lambda i: ds[i],
        "ClipDataset, defaults + colour jitter 0.5": lambda i: jit[i],
        "ClipDataset, train defaults, checksums always": lambda i: always[i],
        "previous frame path (2 reads per camera, numpy flip)": lambda i: legacy_frames(ds, i),
    }, idx, args.seconds * 5, args.rounds)
    print(f"\nItems: T={TRAIN.clip_length}, stack {TRAIN.stack}, stereo (V={TRAIN.views}), flip {TRAIN.flip}, "
          "1 process")
    print("| item | items/s | vs memmap |")
    print("|---|---|---|")
    ceiling = items["memmap, same frames, new output array (ceiling)"]
    for n, r in items.items():
        print(f"| {n} | {r:,.0f} | {r / ceiling:.2f} |")

    print("\nDataLoader: batch 32, shuffled, fork workers")
    print("| dataset | workers | items/s | vs memmap items |")
    print("|---|---|---|---|")
    for workers in (0, 2):
        got = {"memmap items": [], "ClipDataset, train defaults": []}
        for _ in range(2):  # alternate, twice
            for n, d in (("memmap items", mm), ("ClipDataset, train defaults", ds)):
                got[n].append(loader_rate(d, workers, args.seconds))
        m = sum(got["memmap items"]) / 2
        for n, values in got.items():
            r = sum(values) / 2
            print(f"| {n} | {workers} | {r:,.0f} | {r / m:.2f} |")

    print(f"\nOpen files per DataLoader worker (limit {storage.max_open_files()} shard files per process)")
    print("| runs | shard files in store | most fds in a worker |")
    print("|---|---|---|")
    for runs in (1, 4, 16):
        files, fds = fds_per_worker(work, runs)
        print(f"| {runs} | {files} | {fds} |")


if __name__ == "__main__":
    main()
