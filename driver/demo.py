"""`driver demo`: the main job on an embedded default, no data needed.

Today it runs the data path end to end: synthetic lab-format runs are written, ingested into a store
(the real `driver ingest`), described, split by run, read through the clip loader and a DataLoader,
preprocessed by the shared preprocessing function and fed to a recurrent SqueezeNet controller. Each
stage is timed and a short report is written to ``WORKDIR/report.md``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from driver.datasets.clips import ClipConfig, ClipDataset
from driver.datasets.info import describe_store
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.sampling import SteerBalancedSampler, split_runs
from driver.datasets.synthetic import write_synthetic_runs
from driver.models import InputSpec, create_model
from driver.preprocess import frames_to_input

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    workdir: str = "demo_out"
    runs: int = 6
    frames: int = 900
    jobs: int = 2
    seed: int = 0
    clip_length: int = 10
    batches: int = 20

    def __post_init__(self):
        if not 2 <= self.runs <= 1000:
            raise ValueError(f"runs={self.runs} must be in 2..1000 (one run at least is held out)")
        if not 100 <= self.frames <= 100_000:
            raise ValueError(f"frames={self.frames} must be in 100..100000 per run")


def run_demo(config: DemoConfig) -> str:
    """Run every stage; return the report text (also written to WORKDIR/report.md)."""
    work = Path(config.workdir)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    paths = write_synthetic_runs(work / "runs", config.runs, config.frames, seed=config.seed)
    timings["write runs"] = time.perf_counter() - t
    log.info("wrote %d synthetic runs to %s", len(paths), work / "runs")

    store_path = work / "store.zarr"
    report = ingest(IngestConfig(sources=[str(p) for p in paths], out=str(store_path), jobs=config.jobs))
    timings["ingest"] = report.seconds
    if not report.ok:
        raise RuntimeError("; ".join(o.error for o in report.failures))
    summary = describe_store(store_path)

    train_runs, val_runs = split_runs([r["name"] for r in summary.runs], 0.2, seed=config.seed)
    clip = ClipConfig(clip_length=config.clip_length, stack=2, horizon=10, flip=0.5, seed=config.seed)
    train = ClipDataset(store_path, clip, runs=train_runs)
    val = ClipDataset(store_path, ClipConfig(clip_length=config.clip_length, stack=2, horizon=10), runs=val_runs)
    sampler = SteerBalancedSampler(train.high_steer(), num_samples=config.batches * 8, seed=config.seed)
    loader = DataLoader(train, batch_size=8, sampler=sampler, num_workers=0)

    torch.manual_seed(config.seed)
    spec = InputSpec(height=summary.runs[0]["height"], width=summary.runs[0]["width"], cameras=2, stack=2,
                     n_modes=len(clip.modes), horizon=clip.horizon)
    model = create_model("squeezenet_lstm", spec).to(memory_format=torch.channels_last).eval()
    t = time.perf_counter()
    n_clips, mse = 0, 0.0
    with torch.no_grad():
        for batch in loader:
            x = frames_to_input(batch["frames"])
            out, _ = model(x, batch["modes"])
            mse += torch.mean((out - batch["target"]) ** 2).item() * len(x)
            n_clips += len(x)
    timings["load + forward"] = time.perf_counter() - t

    text = "\n".join([
        "# driver demo report",
        "",
        f"- runs: {len(summary.runs)} synthetic ({config.frames} frames each), "
        f"{summary.frames:,} frames, {summary.valid:,} valid ({100 * summary.valid / summary.frames:.1f}%)",
        f"- store: {store_path} ({summary.disk_bytes / 1e6:.1f} MB), "
        f"resolution {', '.join(summary.resolutions)}",
        f"- split by run: train {train_runs} ({len(train):,} clips), val {val_runs} ({len(val):,} clips)",
        f"- clips: T={clip.clip_length}, stereo, 2-frame stacking, horizon {clip.horizon}, flip p={clip.flip}, "
        "steer-balanced sampling",
        f"- model: squeezenet_lstm ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"input {tuple(x.shape[1:])}, output {tuple(out.shape[1:])}",
        f"- untrained MSE on {n_clips} balanced clips: {mse / max(n_clips, 1):.4f} "
        "(training arrives with `driver train`)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in timings.items()],
        "",
    ])
    (work / "report.md").write_text(text, encoding="utf-8")
    log.info("report written to %s", work / "report.md")
    print(text)  # noqa: T201 - the demo's report is its output
    return text
