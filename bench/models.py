"""CPU speed of every registered model: batch-1 latency and training throughput, fp32 / channels_last / bf16.

For each architecture and each of three runtimes (eager fp32 NCHW, fp32 channels_last, channels_last + bf16
autocast) it measures

* latency: median ms of one batch-1 ``step`` (recurrent models carry their state between calls), eval mode;
* training: frames/s of forward + backward + AdamW at 64 frames per batch (recurrent: 8 clips x 8 frames),
  MSE against zero targets, from the median step time;

The three runtimes are timed in interleaved rounds, so load from other processes hits them alike.

and reports each as a fraction of the machine's GEMM peak, measured first in the same run (sgemm for fp32
rows, bf16 GEMM for bf16 rows). Training FLOPs are counted by FlopCounterMode over a real forward + backward
(no gradient for the input, so less than 3x the forward when the first conv dominates). Ratios are against
eager fp32 NCHW of the same run.

    python bench/models.py                      # all models, lab input 94x168x12, a few minutes on 2 cores
    python bench/models.py --archs squeezenet z2color --train-steps 8 --latency-iters 100
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from driver.models import InputSpec, count_parameters, create_model, flops_per_frame, list_models
from driver.models.summary import RNN_FLOP_FORMULAS

RUNTIMES = ("fp32", "channels_last", "channels_last+bf16")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--height", type=int, default=94)
    parser.add_argument("--width", type=int, default=168)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--stack", type=int, default=2)
    parser.add_argument("--latency-iters", type=int, default=60, help="timed batch-1 steps per runtime")
    parser.add_argument("--train-steps", type=int, default=3, help="timed optimizer steps per runtime")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the runtimes")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per runtime before timing")
    parser.add_argument("--batch", type=int, default=64, help="frames per training batch")
    parser.add_argument("--clip-steps", type=int, default=8, help="frames per clip for recurrent training")
    parser.add_argument("--gemm-size", type=int, default=4096, help="n of the n x n x n GEMM peak test")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser.parse_args()


def gemm_peak_gflops(size: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n x n matmul in ``dtype``."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def prepare(model: torch.nn.Module, tensor: torch.Tensor, runtime: str):
    """Move model and a (N, C, H, W) tensor to the runtime's memory format; return (tensor, autocast ctx)."""
    if runtime == "fp32":
        return tensor, torch.autocast("cpu", enabled=False)
    model.to(memory_format=torch.channels_last)
    tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor, torch.autocast("cpu", dtype=torch.bfloat16, enabled=runtime.endswith("bf16"))


def training_flops_per_frame(arch: str, spec: InputSpec) -> float:
    """Forward + backward FLOPs per frame, counted on a 2-frame batch (no input gradient, as in training)."""
    torch.manual_seed(0)
    model = create_model(arch, spec).train()
    clip = torch.zeros(1, 2, spec.channels, spec.height, spec.width)
    counter = FlopCounterMode(display=False, custom_mapping=RNN_FLOP_FORMULAS)
    with counter:
        out, _ = model(clip, torch.zeros(1, spec.n_modes))
        out.square().mean().backward()
    return counter.get_total_flops() / 2


def latency_runner(arch: str, spec: InputSpec, runtime: str):
    """A closure running one batch-1 ``step`` (carrying recurrent state) in eval mode."""
    torch.manual_seed(0)
    model = create_model(arch, spec).eval()
    frame, autocast = prepare(model, torch.rand(1, spec.channels, spec.height, spec.width) - 0.5, runtime)
    modes = torch.zeros(1, spec.n_modes)
    modes[:, 0] = 1.0
    state = [model.initial_state(1)]

    def run() -> None:
        with torch.inference_mode(), autocast:
            _, state[0] = model.step(frame, modes, state[0])

    return run, 1


def training_runner(arch: str, spec: InputSpec, runtime: str, batch: int, clip_steps: int):
    """A closure running one AdamW step on ``batch`` frames (recurrent: batch // clip_steps clips)."""
    torch.manual_seed(0)
    model = create_model(arch, spec).train()
    steps = clip_steps if model.is_recurrent else 1
    clips = max(1, batch // steps)
    frames = torch.rand(clips * steps, spec.channels, spec.height, spec.width) - 0.5
    frames, autocast = prepare(model, frames, runtime)
    clip = frames.view(clips, steps, spec.channels, spec.height, spec.width)  # keeps channels_last strides
    modes = torch.zeros(clips, spec.n_modes)
    modes[:, 0] = 1.0
    target = torch.zeros(clips, steps, spec.horizon, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> None:
        with autocast:
            out, _ = model(clip, modes)
        loss = F.mse_loss(out.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run, clips * steps


def interleaved_median_seconds(runners: dict, warmup: int, rounds: int, per_round: int) -> dict[str, float]:
    """Median seconds per call of each runner, timed in interleaved rounds so that load from other
    processes on a shared machine hits every runtime alike."""
    for run, _ in runners.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, (run, _) in runners.items():
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def machine_description() -> str:
    model_name = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        lines = lscpu.splitlines()
        model_name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{model_name}, {os.cpu_count()} logical CPUs, load average before the run {load}"


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = InputSpec(height=args.height, width=args.width, cameras=args.cameras, stack=args.stack)
    archs = args.archs or list_models()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {machine_description()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {spec}")
    peaks = {
        "fp32": gemm_peak_gflops(args.gemm_size, torch.float32),
        "bf16": gemm_peak_gflops(args.gemm_size, torch.bfloat16),
    }
    print(f"GEMM peak {args.gemm_size}^3: sgemm {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s\n")

    header = (
        "| arch | params | MFLOPs/frame | runtime | batch-1 ms | x vs fp32 | % peak | train frames/s "
        "| x vs fp32 | % peak |"
    )
    print(header)
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for arch in archs:
        probe = create_model(arch, spec)
        params, mflops = count_parameters(probe), flops_per_frame(probe, spec) / 1e6
        train_flops = training_flops_per_frame(arch, spec)
        latency_s = interleaved_median_seconds(
            {runtime: latency_runner(arch, spec, runtime) for runtime in RUNTIMES},
            args.warmup,
            args.rounds,
            max(1, args.latency_iters // args.rounds),
        )
        trainers = {runtime: training_runner(arch, spec, runtime, args.batch, args.clip_steps) for runtime in RUNTIMES}
        train_s = interleaved_median_seconds(
            trainers, args.warmup, args.rounds, max(1, args.train_steps // args.rounds)
        )
        base_latency = 1e3 * latency_s["fp32"]
        base_fps = trainers["fp32"][1] / train_s["fp32"]
        for runtime in RUNTIMES:
            latency = 1e3 * latency_s[runtime]
            fps = trainers[runtime][1] / train_s[runtime]
            peak = peaks["bf16" if runtime.endswith("bf16") else "fp32"] * 1e9
            latency_peak = 100 * mflops * 1e6 / (latency / 1e3) / peak
            train_peak = 100 * train_flops * fps / peak
            first = runtime == RUNTIMES[0]
            described = f"| {arch} | {params:,} | {mflops:.0f}" if first else "| | |"
            print(
                f"{described} | {runtime} | {latency:.2f} "
                f"| {base_latency / latency:.2f} | {latency_peak:.0f}% | {fps:.0f} | {fps / base_fps:.2f} "
                f"| {train_peak:.0f}% |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
