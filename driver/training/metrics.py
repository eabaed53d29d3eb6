"""Training metrics: CSV files, TensorBoard event files, PNG loss curves, and the tables printed at the end.

- ``metrics.csv``: ``train`` rows every 10 steps (mean loss since the last row) and ``val`` rows at each
  validation (pooled over held-out runs, with the constant predictor's error and R² per target);
  ``drive`` rows at each closed-loop drive (``--eval-closed-loop``): the drive score (pace × autonomy / 100),
  autonomy and pace beside the validation loss and score of the same step;
- ``val_runs.csv``: one row per held-out run at each validation;
- ``health.csv``: per-layer statistics (:mod:`driver.training.health`).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

COLUMNS = ("step", "epoch", "split", "loss", "score", "steer_mae", "steer_const_mae", "steer_r2", "motor_mae",
           "motor_const_mae", "motor_r2", "lr", "samples_per_s", "data_wait", "drive_score", "drive_autonomy",
           "drive_pace")
RUN_COLUMNS = ("step", "run", "frames", "loss", "score", "steer_mae", "steer_const_mae", "steer_r2", "motor_mae",
               "motor_const_mae", "motor_r2")


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


class CsvLog:
    """Rows appended to one CSV file (flushed each time), kept across resumes; ``enabled=False`` writes nothing."""

    def __init__(self, path: Path, columns: tuple[str, ...], enabled: bool = True):
        self.path, self.columns, self.enabled = path, columns, enabled

    def write(self, rows: list[dict]) -> None:
        if not self.enabled or not rows:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerows([{k: _fmt(v) for k, v in r.items()} for r in rows])

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint we resume from (they will be redone)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [r for r in read_metrics(self.path) if int(r["step"]) <= step]
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)


def val_columns(val: dict) -> dict:
    """The flat CSV/TensorBoard values of a validation result (pooled or one run's)."""
    out = {"loss": val["loss"], "score": val.get("score")}
    for t in ("steer", "motor"):
        m = val[t]
        out |= {f"{t}_mae": m["mae"], f"{t}_const_mae": m["const_mae"], f"{t}_r2": m["r2"]}
    return out


class MetricsLog:
    """``metrics.csv`` and ``val_runs.csv`` (kept across resumes), mirrored to TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir = run_dir
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self._main = CsvLog(self.path, COLUMNS, enabled)
        self._runs = CsvLog(run_dir / "val_runs.csv", RUN_COLUMNS, enabled)
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but never fail training for the logger
                log.warning("tensorboard is not installed: no event files (pip install tensorboard)")

    def truncate_after(self, step: int) -> None:
        self._main.truncate_after(step)
        self._runs.truncate_after(step)

    def write(self, step: int, epoch: int, split: str, **values: float | None) -> None:
        self._main.write([{"step": step, "epoch": epoch, "split": split, **values}])
        if self.tb is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def write_validation(self, step: int, epoch: int, val: dict) -> None:
        self.write(step, epoch, "val", **val_columns(val))
        self._runs.write([{"step": step, "run": run, "frames": r["frames"], **val_columns(r)}
                          for run, r in val["runs"].items()])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def plot_curves(run_dir: Path) -> Path | None:
    """loss.png: training and validation loss (1.0 = the constant predictor with target_norm) with the validation
    score that chooses best.pt (1.0 = the constant predictor), and validation steering and throttle error beside
    the constant predictor's, against steps."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        a.plot(*zip(*train, strict=True), label="train", lw=1)
    if val:
        steps = [int(r["step"]) for r in val]
        a.plot(steps, [float(r["loss"]) for r in val], "o-", label="val")
        a.plot(steps, [float(r["score"]) if r.get("score") else math.nan for r in val], "s--", ms=3,
               label="val score (chooses best.pt)")
        for target, color in (("steer", "C2"), ("motor", "C3")):
            b.plot(steps, [float(r[f"{target}_mae"]) for r in val], "o-", color=color, label=f"{target} model")
            const = [float(r[f"{target}_const_mae"]) if r.get(f"{target}_const_mae") else math.nan for r in val]
            b.plot(steps, const, "--", color=color, label=f"{target} constant")
        b.legend(fontsize=8)
    a.set(xlabel="step", ylabel="loss, score", yscale="log", title="loss and validation score")
    a.legend()
    b.set(xlabel="step", ylabel="run units (0..99)", title="validation MAE vs the constant predictor")
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _num(v, nd: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def _target_text(m: dict) -> str:
    return f"MAE {_num(m['mae'])} (constant {_num(m['const_mae'])}), R² {_num(m['r2'])}"


def summary_table(result):
    """A rich Table of a finished training: steps, throughput, best/final validation, checkpoints."""
    from rich.table import Table

    t = Table(title=f"training {result.stopped}: {result.run_dir}", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("steps / epochs", f"{result.steps:,} / {result.epochs}")
    if result.samples_per_s is not None:
        t.add_row("throughput", f"{result.samples_per_s:,.0f} frames/s, data wait {100 * result.data_wait:.1f}%")
    else:
        t.add_row("throughput", "- (no steps run in this process)")
    for name, val in (("best val", result.best_val), ("final val", result.final_val)):
        if val and "steer" in val:
            t.add_row(name, f"loss {val['loss']:.4f}, score {_num(val.get('score'), 4)} (error ratio)"
                            + (f" (step {val['step']:,})" if "step" in val else ""))
            t.add_row("  steer", _target_text(val["steer"]) + " run units")
            t.add_row("  throttle", _target_text(val["motor"]) + " run units")
        elif val:  # older checkpoints
            t.add_row(name, f"loss {val['loss']:.4f}, steer MAE {val['steer_mae']:.2f}, motor MAE "
                            f"{val['motor_mae']:.2f} (run units)")
    t.add_row("checkpoints", f"{result.last_checkpoint}" + (f", {result.best_checkpoint}" if result.best_checkpoint
                                                            else ""))
    return t


def runs_table(val: dict, title: str = "validation per held-out run (run units, first predicted step)"):
    """A rich Table: one row per held-out run, model vs constant predictor per target, and R²."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("run", "frames", "score", "steer MAE", "const", "R²", "throttle MAE", "const", "R²"):
        t.add_column(col, justify="left" if col == "run" else "right", overflow="fold")
    for run, r in sorted(val.get("runs", {}).items()):
        cells = [_num(r[t][k]) for t in ("steer", "motor") for k in ("mae", "const_mae", "r2")]
        t.add_row(run, f"{r['frames']:,}", _num(r.get("score"), 4), *cells)
    return t
