"""`driver ingest` against the disk's own ceiling, in one run: read + write + fsync of the same bytes.

    OMP_NUM_THREADS=1 python bench/ingest.py [--runs 4] [--frames 1500] [--rounds 2] [--workdir DIR]

The ceiling copies every source file (sequential 8 MiB reads, writes, one fsync per file) into a fresh
folder: what any ingest must at least do. Ingest writes a fresh store from the same sources at
--jobs 1 and 2 in threads (the default workers) and at --jobs 2 in spawned processes (--workers
processes); "previous path" writes the same frames through zarr-python's encoder (the ingest before
direct shard writes) with the sha256 read first. Before every measurement the sources are evicted from
the page cache (posix_fadvise DONTNEED), so each one reads from the disk. Rounds interleave the
measurements; the table gives the median MB/s of each, its ratio to the ceiling with as many streams
and to the better of the two ceilings (the disk's best; on a shared disk the 2-stream copy is sometimes
the slower), and the CPU seconds it used (user + system, this process and its worker processes): on a
machine whose cores are busy with other work, CPU time turns into wall time; then each round's MB/s.
Also measured: what hashing the sources alone costs (sha256, which ingest records for every run), how
long a spawned ingest worker takes to start, and what a run costs besides its bytes (runs of 10 frames).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import zarr

from driver.datasets import storage
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.layout import create_frames_array
from driver.datasets.run_format import inspect_run, open_run_file
from driver.datasets.run_ingest import file_sha256
from driver.datasets.synthetic import write_synthetic_runs

BLOCK = 8 * 2**20


def copy_fsync(src: Path, dst: Path) -> None:
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
        while block := f.read(BLOCK):
            g.write(block)
        os.fsync(g.fileno())


def ceiling(sources: list[Path], out: Path, jobs: int) -> None:
    out.mkdir()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda s: copy_fsync(s, out / s.name), sources))
    storage.fsync_dir(out)


def previous_path(sources: list[Path], out: Path) -> None:
    """Frames through zarr-python, one whole shard per write, after a sha256 pass: the former ingest."""
    group = zarr.open_group(out, mode="w")
    for src in sources:
        file_sha256(str(src))
        info = inspect_run(str(src))
        run = group.create_group(src.stem)
        with open_run_file(src) as h5:
            for cam in info.cameras:
                arr = create_frames_array(run, cam, info.n_frames, info.height, info.width, 512, "none")
                frames = np.concatenate([h5["segments"][seg.name][cam][()] for seg in info.segments])
                for a in range(0, info.n_frames, 512):
                    arr[a : a + 512] = frames[a : a + 512]
    storage.fsync_tree(out)


def _import_ingest_worker() -> None:
    import driver.datasets.ingest_workers  # noqa: F401 - what an ingest worker process imports before its first run


def worker_start_seconds() -> float:
    """Seconds from asking for a spawned worker to it having imported the ingest code (--workers processes)."""
    t0 = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        pool.submit(_import_ingest_worker).result()
    return time.perf_counter() - t0


def fixed_seconds_per_run(runs: Path, out: Path) -> float:
    """Seconds per run of ingesting runs of 10 frames (--jobs 1): what a run costs besides its bytes."""
    t0 = time.perf_counter()
    report = ingest(IngestConfig(sources=[str(runs)], out=str(out), jobs=1))
    seconds = time.perf_counter() - t0
    assert report.ok, report
    shutil.rmtree(out)
    return seconds / len(report.outcomes)


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/driver_bench_ingest")
    args = ap.parse_args()
    load_at_start = os.getloadavg()[0]
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    sources = write_synthetic_runs(work / "runs", args.runs, n_frames=args.frames, height=94, width=168,
                                   stereo=True, seed=0)
    total = sum(p.stat().st_size for p in sources)
    one, two = "ceiling: read + write + fsync, 1 stream", "ceiling: read + write + fsync, 2 streams"
    cases = {  # name: (what to run, the ceiling it is compared with)
        one: (lambda out: ceiling(sources, out, 1), one),
        "driver ingest --jobs 1": (lambda out: ingest(IngestConfig(sources=[str(work / "runs")], out=str(out),
                                                                   jobs=1)), one),
        two: (lambda out: ceiling(sources, out, 2), two),
        "driver ingest --jobs 2": (lambda out: ingest(IngestConfig(sources=[str(work / "runs")], out=str(out),
                                                                   jobs=2)), two),
        "driver ingest --jobs 2 --workers processes": (
            lambda out: ingest(IngestConfig(sources=[str(work / "runs")], out=str(out), jobs=2,
                                            workers="processes")), two),
        "previous path (zarr-python encoder, hash first)": (lambda out: previous_path(sources, out), one),
        "sha256 of the sources alone (1 stream)": (lambda out: [file_sha256(str(p)) for p in sources], one),
    }
    rates: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    starts, fixed = [], []
    write_synthetic_runs(work / "tiny", 8, n_frames=10, height=94, width=168, stereo=True, seed=1)
    for r in range(args.rounds):
        starts.append(worker_start_seconds())
        fixed.append(fixed_seconds_per_run(work / "tiny", work / f"tiny_out_{r}"))
        for name, (run, _) in cases.items():
            out = work / f"out_{r}_{abs(hash(name))}"
            for p in sources:
                storage.drop_from_page_cache(p)
            c0, t0 = cpu_seconds(), time.perf_counter()
            report = run(out)
            seconds = time.perf_counter() - t0
            cpu[name].append(cpu_seconds() - c0)
            assert not hasattr(report, "ok") or report.ok, report
            rates[name].append(total / seconds / 1e6)
            shutil.rmtree(out, ignore_errors=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load average "
          f"{load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (shared); zarr {zarr.__version__}, "
          f"numpy {np.__version__}; {args.runs} stereo runs x {args.frames} frames 94x168 = {total / 1e6:.0f} MB; "
          f"median of {args.rounds} rounds")
    best = max(statistics.median(rates[one]), statistics.median(rates[two]))  # the disk's best, 1 or 2 streams
    print("| what | MB/s | vs ceiling (same streams) | vs best ceiling | CPU s |")
    print("|---|---|---|---|---|")
    for name, (_, ref) in cases.items():
        mbs, ref_mbs = statistics.median(rates[name]), statistics.median(rates[ref])
        print(f"| {name} | {mbs:,.0f} | {mbs / ref_mbs:.2f} | {mbs / best:.2f} | {statistics.median(cpu[name]):.2f} |")
    for name in cases:
        print(f"  {name}, MB/s by round: {', '.join(f'{x:.0f}' for x in rates[name])}")
    one_job = total / 1e6 / statistics.median(rates["driver ingest --jobs 1"])
    print(f"a spawned ingest worker starts (Python + imports) in {statistics.median(starts):.2f} s (median of "
          f"{len(starts)}); the whole ingest at --jobs 1 takes {one_job:.2f} s")
    per_run = total / 1e6 / statistics.median(rates["driver ingest --jobs 1"]) / args.runs
    print(f"fixed cost of a run (8 runs x 10 frames, --jobs 1): {statistics.median(fixed) * 1e3:.0f} ms per run "
          f"(median of {len(fixed)}), against {per_run:.2f} s per run above")


if __name__ == "__main__":
    main()
