"""Benchmark the thread policy: `driver demo` with torch's default thread count vs `--threads 0` (auto).

    python bench/demo_threads.py [--busy 2] [--rounds 2] [--runs 6] [--seconds 10] [--steps 300] [--eval-tracks 1]

Runs a small `driver demo` as a subprocess per setting, the settings interleaved over ``--rounds`` so
machine drift hits them alike, with ``--busy`` extra busy processes (``while True`` loops, as other work on
a shared machine) running throughout:

* ``torch default``: ``--threads N`` with N = the logical CPUs (what torch picks when nobody sets it)
* ``auto``: ``--threads 0``, driver's policy (physical cores minus loader workers; 1 on a busy machine)

For each it reports wall time and CPU time (user + system of the demo and its children, from
``resource.getrusage(RUSAGE_CHILDREN)``); the ratios to ``auto`` within one run are what to compare on a
shared machine. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def run_demo(workdir: str, threads: int, args: argparse.Namespace) -> tuple[float, float]:
    """Wall and CPU seconds of one `driver demo` subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "driver.cli", "demo", "--workdir", workdir, "--runs", str(args.runs),
                    "--seconds", str(args.seconds), "--steps", str(args.steps), "--eval-tracks",
                    str(args.eval_tracks), "--jobs", "1", "--threads", str(threads)],
                   check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=2, help="extra busy processes during the runs")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-tracks", type=int, default=1)
    args = p.parse_args()
    settings = {"torch default": os.cpu_count() or 1, "auto": 0}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
    try:
        time.sleep(60 if args.busy else 0)  # let the 1-minute load average see them
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for name, threads in settings.items():
                    results[name].append(run_demo(os.path.join(tmp, f"{r}_{threads}"), threads, args))
                    print(f"round {r} {name}: wall {results[name][-1][0]:.1f} s, CPU {results[name][-1][1]:.1f} s",
                          file=sys.stderr)
    finally:
        for b in busy:
            b.kill()
            b.wait()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, {args.busy} extra busy "
          f"processes, load average {load:.1f} when the runs started; medians of {args.rounds} interleaved rounds\n")
    print("| setting | threads | wall s | CPU s | wall vs auto | CPU vs auto |")
    print("|---|---|---|---|---|---|")
    auto_wall = statistics.median(w for w, _ in results["auto"])
    auto_cpu = statistics.median(c for _, c in results["auto"])
    for name, threads in settings.items():
        wall = statistics.median(w for w, _ in results[name])
        cpu = statistics.median(c for _, c in results[name])
        print(f"| {name} | {threads or 'auto'} | {wall:.1f} | {cpu:.1f} | {wall / auto_wall:.2f}x | "
              f"{cpu / auto_cpu:.2f}x |")


if __name__ == "__main__":
    main()
