"""Training metrics: a CSV file, TensorBoard event files, and PNG loss curves at the end."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger(__name__)

COLUMNS = ("step", "epoch", "split", "loss", "steer_mae", "motor_mae", "lr", "samples_per_s", "data_wait")


class MetricsLog:
    """Appends rows to ``metrics.csv`` (kept across resumes) and mirrors them to TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir = run_dir
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self._tb = None
        if enabled:
            new = not self.path.exists()
            self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS)
            if new:
                self._csv.writeheader()
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but never fail training for the logger
                log.warning("tensorboard is not installed: no event files (pip install tensorboard)")

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint we resume from (they will be redone)."""
        if not self.enabled or not self.path.exists():
            return
        self._file.close()
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS)

    def write(self, step: int, epoch: int, split: str, **values: float) -> None:
        if not self.enabled:
            return
        row = {"step": step, "epoch": epoch, "split": split, **{k: f"{v:.6g}" for k, v in values.items()}}
        self._csv.writerow(row)
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def plot_curves(run_dir: Path) -> Path | None:
    """loss.png: training and validation loss, and validation steering MAE, against steps."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "train"]
    val = [(int(r["step"]), float(r["loss"]), float(r["steer_mae"])) for r in rows if r["split"] == "val"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        a.plot(*zip(*train, strict=True), label="train", lw=1)
    if val:
        a.plot([v[0] for v in val], [v[1] for v in val], "o-", label="val")
        b.plot([v[0] for v in val], [v[2] for v in val], "o-", color="C2")
    a.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    a.legend()
    b.set(xlabel="step", ylabel="run units (0..99)", title="validation steering MAE")
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def summary_table(result):
    """A rich Table of a finished training: steps, throughput, best/final validation, checkpoints."""
    from rich.table import Table

    t = Table(title=f"training {result.stopped}: {result.run_dir}", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("steps / epochs", f"{result.steps:,} / {result.epochs}")
    t.add_row("throughput", f"{result.samples_per_s:,.0f} frames/s, data wait {100 * result.data_wait:.1f}%")
    for name, val in (("best val", result.best_val), ("final val", result.final_val)):
        if val:
            t.add_row(name, f"loss {val['loss']:.4f}, steer MAE {val['steer_mae']:.2f}, "
                            f"motor MAE {val['motor_mae']:.2f} (run units)")
    t.add_row("checkpoints", f"{result.last_checkpoint}" + (f", {result.best_checkpoint}" if result.best_checkpoint
                                                            else ""))
    return t
