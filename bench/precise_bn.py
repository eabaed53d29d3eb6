"""A checkpoint's held-out error with its moving-average BatchNorm statistics and with precise ones.

    python bench/precise_bn.py --model runs/train/x/last.pt --data test.zarr --out /tmp/precise_bn

Recomputes the checkpoint's BatchNorm running statistics on ``--clips`` random clips of its own training runs
(``driver.training.precise_bn``, as ``driver train --precise-bn`` does before each validation), writes the
copy beside the original into ``--out``, replays both on ``--data`` with ``driver replay`` and prints the
error and R² per target (run units, first predicted step). Only the BatchNorm buffers differ between the two.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driver.cli import main as driver_main
from driver.datasets.clips import ClipDataset
from driver.training import load_checkpoint, model_from_checkpoint
from driver.training.checkpoint import save_checkpoint
from driver.training.config import TrainConfig
from driver.training.distributed import DistInfo
from driver.training.precise_bn import recompute_batchnorm
from driver.training.recipe import clip_config
from driver.training.setup import autocast_for


def precise_copy(model_path: Path, out: Path, clips: int) -> Path:
    ck = load_checkpoint(model_path)
    cfg = TrainConfig.from_dict({**ck["config"], "precise_bn": clips})
    model = model_from_checkpoint(ck)
    data = ClipDataset(ck["dataset"]["store"], clip_config(cfg, train=True), runs=list(ck["dataset"]["train_runs"]))
    used = recompute_batchnorm(model, data, cfg, "cpu", autocast_for(cfg, torch.device("cpu"))[0], DistInfo(),
                               ck.get("training", {}).get("step", 0))
    if not used:
        raise SystemExit(f"{model_path}: the model has no BatchNorm layer (or --clips is 0): nothing to compare")
    path = out / f"{model_path.stem}_precise_bn.pt"
    save_checkpoint(path, {**ck, "model": model.state_dict()})
    return path


def replay(model: Path, data: str, out: Path) -> dict:
    if driver_main(["replay", "--model", str(model), "--data", data, "--out", str(out), "--no-video"]) != 0:
        raise SystemExit(f"driver replay failed for {model}")
    return json.loads((out / "report.json").read_text(encoding="utf-8"))["overall"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a recurrent checkpoint (.pt)")
    p.add_argument("--data", required=True, help="held-out store to replay")
    p.add_argument("--out", type=Path, required=True, help="folder for the copy and both replays")
    p.add_argument("--clips", type=int, default=512, help="random training clips for the statistics")
    args = p.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {"moving average (as trained)": replay(args.model, args.data, args.out / "moving"),
            f"precise ({args.clips} training clips)": replay(precise_copy(args.model, args.out, args.clips),
                                                            args.data, args.out / "precise")}
    print(f"{args.model} on {args.data}")
    print("| BatchNorm statistics | steer MSE | steer R² | throttle MSE | throttle R² |\n|---|---:|---:|---:|---:|")
    for name, o in rows.items():
        print(f"| {name} | {o['steer']['mse']:.2f} | {o['steer']['r2']:.3f} | {o['throttle']['mse']:.2f} | "
              f"{o['throttle']['r2']:.3f} |")


if __name__ == "__main__":
    main()
