"""Does training still learn with this version's colour jitter? The demo's training (sim runs, squeezenet_gru,
colour jitter 0.5) with the current items, and with the items as the previous version built them (a numpy
Generator per item, float32 jitter about the whole clip's mean, truncated to uint8), same data and seed;
then validation loss and closed-loop autonomy in the sim on 6 held-out tracks.

    OMP_NUM_THREADS=1 python bench/jitter_training.py current [--steps 1200] [--workdir DIR]
    OMP_NUM_THREADS=1 python bench/jitter_training.py previous [--steps 1200] [--workdir DIR]

Prints one JSON line per variant (also written to WORKDIR/result_VARIANT.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from driver.datasets import clips
from driver.datasets.ingest import IngestConfig, ingest
from driver.sim.evaluate_policy import SimDriveConfig, sim_drive
from driver.sim.record import SimRecordConfig, record_runs
from driver.training import TrainConfig, train


def previous_item(self, index):
    """ClipDataset.__getitem__ as the previous version computed it."""
    index = int(index) % len(self)
    cfg = self.config
    r, s = int(self._run_index[index]), int(self._starts[index])
    run = self._runs[r]
    rng = np.random.default_rng([cfg.seed, self.epoch, index])
    flipped = cfg.flip > 0 and rng.random() < cfg.flip
    frames = self.read_frames(r, s, flipped=flipped)
    if cfg.color_jitter > 0:
        k = cfg.color_jitter
        brightness, contrast = rng.uniform(-40, 40) * k, 1.0 + rng.uniform(-0.5, 0.5) * k
        gains = 1.0 + rng.uniform(-0.2, 0.2, size=3) * k
        x = frames.astype(np.float32)
        mean = x.mean(dtype=np.float32)
        x = ((x - mean) * contrast + mean + brightness) * gains.astype(np.float32)
        frames = np.clip(x, 0, 255).astype(np.uint8)
    steps = s + self._target_offsets
    steer = -run.steer[steps] if flipped else run.steer[steps]
    target = np.stack([steer, run.motor[steps]], axis=-1).astype(np.float32)
    return {"frames": torch.from_numpy(frames), "target": torch.from_numpy(target),
            "modes": torch.from_numpy(run.modes.copy()), "run": torch.tensor(r), "start": torch.tensor(s),
            "flipped": torch.tensor(bool(flipped))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", choices=["current", "previous"])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--workdir", default="/tmp/driver_bench_jitter")
    args = ap.parse_args()
    work = Path(args.workdir)
    store = work / "store.zarr"
    if not store.exists():  # the demo's data: 32 sim runs of 15 s at 48x64
        paths = record_runs(SimRecordConfig(out=work / "runs", runs=32, seconds=15.0, height=48, width=64, seed=0))
        assert ingest(IngestConfig(sources=[str(p) for p in paths], out=str(store))).ok
    if args.variant == "previous":
        clips.ClipDataset.__getitem__ = previous_item
    out = work / f"train_{args.variant}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    run = train(TrainConfig(
        data=str(store), arch="squeezenet_gru", arch_kwargs={"hidden_size": 32}, cameras="left", stack=1,
        clip_length=4, horizon=1, target_stride=1, batch_size=16, epochs=4, steps_per_epoch=args.steps // 4,
        lr=1e-3, warmup_steps=100, color_jitter=0.5, val_fraction=0.15, out=str(out), name=args.variant, seed=0,
        progress=False))
    drive = sim_drive(SimDriveConfig(model=str(run.best_checkpoint or run.last_checkpoint),
                                     out=str(work / f"drive_{args.variant}"), tracks=6, seed=0, media=False))
    result = {"variant": args.variant, "steps": run.steps, "best_val": run.best_val, "train_s": time.time() - t0,
              "drive": drive.summary()}
    print(json.dumps(result, default=str))
    (work / f"result_{args.variant}.json").write_text(json.dumps(result, default=str, indent=1))


if __name__ == "__main__":
    main()
