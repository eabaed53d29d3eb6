"""Held-out R² per target of any checkpoints of a benchmark work folder (``run_benchmark.py --work W``).

    python bench/extsim/heldout_r2.py --work W W/train/default/best.pt W/train/default/last.pt

Replays each checkpoint on ``W/test.zarr`` with ``driver replay`` (as the benchmark's open-loop stage does)
and prints steering (to four places) and throttle R² (run units, first predicted step), pooled and the range
over the held-out runs, and the training step the checkpoint holds. Used to compare the checkpoint a validation
rule chose (``best.pt``) with the last one (``last.pt``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.extsim.run_benchmark import BenchConfig, stage_replay, valid_labels
from bench.extsim.scores import fmt
from driver.training import load_checkpoint


def checkpoint_step(path: Path) -> int | None:
    ckpt = load_checkpoint(path)
    return ckpt.get("metrics", {}).get("step", ckpt.get("training", {}).get("step"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="the benchmark's work folder (holds test.zarr)")
    ap.add_argument("checkpoints", nargs="+", help="checkpoint files to score")
    a = ap.parse_args(argv)
    cfg = BenchConfig(work=a.work)
    test = valid_labels(cfg.root / "test.zarr")
    print("| checkpoint | step | steer R² | throttle R² | steer R² per run | throttle R² per run |")
    print("|---|---:|---:|---:|---:|---:|")
    for ckpt in map(Path, a.checkpoints):
        name = f"heldout_{ckpt.parent.name}_{ckpt.stem}"
        r = stage_replay(cfg, name, str(ckpt), test)
        runs = r["per_run"].values()
        span = {t: f"{fmt(min(x[t] for x in runs))}–{fmt(max(x[t] for x in runs))}" for t in ("steer", "motor")}
        print(f"| {ckpt} | {checkpoint_step(ckpt)} | {fmt(r['overall']['steer'], 4)} | {fmt(r['overall']['motor'])} "
              f"| {span['steer']} | {span['motor']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
