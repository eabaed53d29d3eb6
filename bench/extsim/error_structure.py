"""Where a checkpoint's steering error lies on the held-out runs: slow or fast, and how much the state gives.

    python bench/extsim/error_structure.py --work W W/train/default/best.pt W/train/pilotnet/best.pt

Drives each checkpoint through every held-out run of ``W/test.zarr`` frame by frame with ``driver.Policy``
(the mode input and the car's speed as ``driver replay`` gives them) and prints, for steering in run units:

- R² (as the benchmark's open-loop column) and the MSE;
- the error's autocorrelation at 1, 3 and 8 frames, and the share of the MSE in its slow part (the error
  averaged over a moving 1 s window): a model that holds a wrong belief for a while has slow error, one
  that misreads single frames has fast error;
- for recurrent checkpoints, R² with the state forgotten every K frames (``--reset-every``): how much of the
  steering the carried state adds over the frames of the last K;
- the shift (in frames, -4..4) that best aligns the prediction with the human's steering and the R² there: a
  model whose output lags the road matches the label of frames before (a negative shift) better than its own;
  and the slope of the human's steering on the prediction (below 1: the prediction overshoots; above 1: it is
  too timid);
- for checkpoints trained with ``--frame-loss``, R² of the per-frame head alone (each frame's encoder
  reading, no state): how well the encoder reads a single picture.

With ``--pairs`` it also prints, for every two checkpoints, how alike their steering errors are (their
correlation over all held-out frames) and the R² of the mean of their two predictions: two models that err
in the same places gain little by averaging, two that err apart gain much.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from torch import nn

from driver.datasets.store import Store
from driver.policy import Policy, load_policy
from driver.sim.replay import replay_run
from driver.training.recipe import store_frame_rate

LAGS = (1, 3, 8)
SHIFTS = range(-4, 5)


class ForgetfulPolicy:
    """A :class:`Policy` whose recurrent state is forgotten every ``every`` frames (0 = never): the same
    frames, modes and speed as ``driver replay`` gives it, through :func:`replay_run` itself."""

    def __init__(self, policy: Policy, every: int):
        self.policy, self.every, self.count = policy, every, 0

    def __getattr__(self, name: str):
        return getattr(self.policy, name)

    def reset(self) -> None:
        self.count = 0
        self.policy.reset()

    def act(self, *args, **kwargs):
        if self.every and self.count and self.count % self.every == 0:
            self.policy.reset()
        self.count += 1
        return self.policy.act(*args, **kwargs)


def predict_steer(policy: Policy, store: Store, run: str, reset_every: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, human) steering of every frame of ``run`` as ``driver replay`` drives it; with
    ``reset_every`` K > 0 the state is also forgotten every K frames."""
    trace = replay_run(ForgetfulPolicy(policy, reset_every), store, run)
    return trace.pred_steer, trace.human_steer


def frame_head_policy(ckpt: str) -> Policy:
    """The checkpoint's policy with its per-frame head as the output: the RNN's head zeroed and the frame head
    in the skip's place (``out = head(hidden) + skip(features)``), so the output is ``frame_head(features)``."""
    policy = load_policy(ckpt, threads=1)
    model = policy.model
    model.skip, model.skip_layers = model.frame_head, None
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return policy


def error_structure(errors: list[np.ndarray], fps: float) -> dict[str, float]:
    """Autocorrelation of the per-run errors at ``LAGS`` (mean over runs) and the slow (1 s mean) share of MSE."""
    window = max(1, round(fps))
    slow = np.concatenate([np.convolve(e, np.ones(window) / window, mode="same") for e in errors])
    mse = float(np.mean(np.concatenate(errors) ** 2))
    out = {f"autocorr_{k}": float(np.mean([np.corrcoef(e[:-k], e[k:])[0, 1] for e in errors])) for k in LAGS}
    return {**out, "slow_share": float(np.mean(slow ** 2) / mse)}


def best_shift(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, float]:
    """The shift k (frames) whose R² of prediction[t] against human[t + k] is highest over all runs, and that R²
    (the same frames for every k: each run's first and last ``max(SHIFTS)`` frames left out)."""
    edge = max(abs(k) for k in SHIFTS)
    scores = {}
    for k in SHIFTS:
        pred = np.concatenate([p[edge:len(p) - edge] for p, _ in pairs])
        human = np.concatenate([h[edge + k:len(h) - edge + k] for _, h in pairs])
        scores[k] = 1 - np.mean((pred - human) ** 2) / np.var(human)
    k = max(scores, key=scores.get)
    return k, float(scores[k])


def print_pairs(names: list[str], preds: list[np.ndarray], human: np.ndarray) -> None:
    """For every two checkpoints: the correlation of their steering errors and the R² of their mean prediction."""
    print("\n| checkpoint | checkpoint | error correlation | R² of the two averaged |\n|---|---|---:|---:|")
    for i, j in itertools.combinations(range(len(names)), 2):
        corr = np.corrcoef(preds[i] - human, preds[j] - human)[0, 1]
        mean = (preds[i] + preds[j]) / 2
        print(f"| {names[i]} | {names[j]} | {corr:.3f} | {1 - np.mean((mean - human) ** 2) / np.var(human):.4f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="the benchmark's work folder (holds test.zarr)")
    ap.add_argument("--reset-every", type=lambda v: [int(k) for k in v.split(",") if k], default=[1, 5, 15],
                    help="for recurrent checkpoints: also score with the state forgotten every K frames, "
                         "comma-separated (default 1,5,15)")
    ap.add_argument("--pairs", action="store_true", help="also compare the errors of every two checkpoints")
    ap.add_argument("checkpoints", nargs="+", help="checkpoint files to score")
    a = ap.parse_args(argv)
    store = Store(str(Path(a.work) / "test.zarr"))
    fps = store_frame_rate(store, store.runs)
    print("| checkpoint | steer R² | MSE | autocorr 1 / 3 / 8 frames | slow (1 s) share of MSE | R² with the state "
          "forgotten every K frames | best shift: R² | slope | frame head R² |")
    print("|---|---:|---:|---|---:|---|---|---:|---:|")
    preds = []
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
            resets = ", ".join(scores) or "-"
        frame = "-"
        if getattr(policy.model, "frame_head", None) is not None:
            reading = frame_head_policy(ckpt)
            e = np.concatenate([p - h for p, h in (predict_steer(reading, store, r) for r in store.runs)])
            frame = f"{1 - np.mean(e ** 2) / np.var(human):.4f}"
        autocorr = " / ".join(f"{s['autocorr_' + str(k)]:.2f}" for k in LAGS)
        shift, shifted = best_shift(pairs)
        pred = np.concatenate([p for p, _ in pairs])
        preds.append(pred)
        slope = float(np.cov(pred, human)[0, 1] / np.var(pred, ddof=1))
        print(f"| {ckpt} | {1 - mse / np.var(human):.4f} | {mse:.2f} | {autocorr} | {s['slow_share']:.2f} | {resets} "
              f"| {shift:+d}: {shifted:.4f} | {slope:.3f} | {frame} |", flush=True)
    if a.pairs:
        print_pairs(a.checkpoints, preds, human)
    return 0


if __name__ == "__main__":
    sys.exit(main())
