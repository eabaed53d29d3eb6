"""Fuzz every file format driver reads, longer than the suite does: counts per outcome, time and peak memory.

    python bench/fuzz_loaders.py [--cases 2000] [--seed 1] [--formats dcz onnx ...]

The harness is tests/loader_fuzz.py (the suite runs a few hundred cases per format with seed 14). A case
passes when the loader loads the mutant or raises its own error with one line naming the file; every other
ending (another exception, a leaked warning, anything printed) is a failure and is printed. Each format runs
in its own process, so its peak memory is its own. Prints a markdown table for docs/benchmarks.md; exit 1 on
any failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.loader_fuzz import FORMATS, build_formats, fuzz  # noqa: E402


def run_format(name: str, cases: int, seed: int) -> tuple[str, int]:
    """One format in this process: its table row and its failure count."""
    import torch

    torch.set_num_threads(1)
    formats = {f.name: f for f in build_formats(Path(tempfile.mkdtemp(prefix="fuzz_loaders_")))}
    fmt = formats[name]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    outcome = fuzz(fmt, cases, seed)
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for f in outcome.failures[:10]:
        print(f"FAILURE {name}: {f}", file=sys.stderr)
    top = ", ".join(f"{k} ({n})" for k, n in outcome.refused.most_common(2))
    return (f"| {name} | {outcome.cases} | {outcome.loaded} | {sum(outcome.refused.values())} | "
            f"{len(outcome.failures)} | {1000 * seconds / outcome.cases:.1f} | {rss_mb:.0f} "
            f"(+{max(0.0, rss_mb - base_rss):.0f}) | {top} |"), len(outcome.failures)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=2000, help="mutants per format (default 2000)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the mutations (default 1; the suite uses 14)")
    ap.add_argument("--formats", nargs="*", default=None, help="only these formats (default: all)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one format, print its row
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    if args.one:
        row, failures = run_format(args.one, args.cases, args.seed)
        print(f"ROW {row}")
        return 1 if failures else 0
    names = args.formats or FORMATS
    rows, failed = [], False
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--cases", str(args.cases), "--seed",
                              str(args.seed)], capture_output=True, text=True)
        sys.stderr.write("".join(line + "\n" for line in out.stderr.splitlines() if line.startswith("FAILURE")))
        row = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
        if not row:
            sys.stderr.write(out.stderr[-3000:])
        rows.append(row[0] if row else f"| {name} | crashed (exit {out.returncode}) | | | | | | |")
        failed = failed or out.returncode != 0
    import torch

    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    print(f"\n`python bench/fuzz_loaders.py --cases {args.cases} --seed {args.seed}` — torch {torch.__version__}; "
          f"{cpu}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}\n")
    print("| format | cases | loaded | refused (one line, file named) | failures | ms/case | peak RSS MB "
          "(+ during the cases) | most common refusals |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
