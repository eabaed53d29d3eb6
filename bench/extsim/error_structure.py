"""Where a checkpoint's steering error lies on the held-out runs: slow or fast, and how much the state gives.

    python bench/extsim/error_structure.py --work W W/train/default/best.pt W/train/pilotnet/best.pt

Drives each checkpoint through every held-out run of ``W/test.zarr`` frame by frame with ``driver.Policy``
(the mode input and the car's speed as ``driver replay`` gives them) and prints, for steering in run units:

- R² (as the benchmark's open-loop column) and the MSE;
- the error's autocorrelation at 1, 3 and 8 frames, and the share of the MSE in its slow part (the error
  averaged over a moving 1 s window): a model that holds a wrong belief for a while has slow error, one
  that misreads single frames has fast error;
- for recurrent checkpoints, R² with the state forgotten every K frames (``--reset-every``): how much of the
  steering the carried state adds over the frames of the last K.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from driver.datasets.series import stored_speed_name
from driver.datasets.store import Store
from driver.policy import Policy, load_policy
from driver.sim.replay import resolve_mode

LAGS = (1, 3, 8)


def predict_steer(policy: Policy, store: Store, run: str, reset_every: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, human) steering of every frame of ``run``; the policy is reset at the run's start and, with
    ``reset_every`` K > 0, every K frames."""
    meta = store.run_meta(run)
    n = int(meta["n_frames"])
    mode = resolve_mode(policy, meta.get("labels", {}), None)
    speed = store.series(run, stored_speed_name(meta)).astype(np.float64) if policy.speed_input else None
    frames = store.frames(run, "left").read(0, n)
    pred = np.zeros(n)
    for i in range(n):
        if i == 0 or (reset_every and i % reset_every == 0):
            policy.reset()
        pred[i] = policy.act(frames[i], mode=mode, speed=None if speed is None else speed[i]).steer
    return pred, store.series(run, "steer").astype(np.float64)


def error_structure(errors: list[np.ndarray], fps: float) -> dict[str, float]:
    """Autocorrelation of the per-run errors at ``LAGS`` (mean over runs) and the slow (1 s mean) share of MSE."""
    window = max(1, round(fps))
    slow = np.concatenate([np.convolve(e, np.ones(window) / window, mode="same") for e in errors])
    mse = float(np.mean(np.concatenate(errors) ** 2))
    out = {f"autocorr_{k}": float(np.mean([np.corrcoef(e[:-k], e[k:])[0, 1] for e in errors])) for k in LAGS}
    return {**out, "slow_share": float(np.mean(slow ** 2) / mse)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="the benchmark's work folder (holds test.zarr)")
    ap.add_argument("--reset-every", type=int, nargs="*", default=[1, 5, 15],
                    help="for recurrent checkpoints: also score with the state forgotten every K frames")
    ap.add_argument("checkpoints", nargs="+", help="checkpoint files to score")
    a = ap.parse_args(argv)
    store = Store(str(Path(a.work) / "test.zarr"))
    fps = float(np.median([1.0 / np.median(np.diff(store.series(r, "timestamp"))) for r in store.runs]))
    print("| checkpoint | steer R² | MSE | autocorr 1 / 3 / 8 frames | slow (1 s) share of MSE | R² with the state "
          "forgotten every K frames |")
    print("|---|---:|---:|---|---:|---|")
    for ckpt in a.checkpoints:
        policy = load_policy(ckpt, threads=1)
        pairs = [predict_steer(policy, store, r) for r in store.runs]
        human = np.concatenate([h for _, h in pairs])
        errors = [p - h for p, h in pairs]
        mse = float(np.mean(np.concatenate(errors) ** 2))
        s = error_structure(errors, fps)
        resets = "-"
        if policy.is_recurrent:
            scores = []
            for k in a.reset_every:
                e = np.concatenate([p - h for p, h in (predict_steer(policy, store, r, k) for r in store.runs)])
                scores.append(f"K={k}: {1 - np.mean(e ** 2) / np.var(human):.3f}")
            resets = ", ".join(scores)
        autocorr = " / ".join(f"{s['autocorr_' + str(k)]:.2f}" for k in LAGS)
        print(f"| {ckpt} | {1 - mse / np.var(human):.4f} | {mse:.2f} | {autocorr} | {s['slow_share']:.2f} | {resets} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
