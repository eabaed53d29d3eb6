"""Batch-1 step latency of one controller across runtimes, next to the FLOP-bound limit of this machine.

Rows: eager fp32 NCHW, eager fp32 channels_last, ONNX Runtime fp32 (``dynamo=False`` export, all graph
optimisations), ONNX Runtime static int8 (QDQ, per-channel, calibrated on synthetic frames: a speed check,
not an accuracy claim). Columns: 1 and 2 threads. The limit is FLOPs per frame / the sgemm peak measured
here (torch.mm 2048^3, best of several) for the same thread count; int8 rows use the same fp32 bound, since
the machine's int8 peak is not measured, so their "% of bound" can exceed 100. Runtimes are timed in
interleaved rounds so load from other processes hits them alike.

    python bench/infer.py                                   # squeezenet 94x168 mono, about 2 minutes
    python bench/infer.py --arch squeezenet --height 48 --width 64 --iters 300
    python bench/infer.py --checkpoint runs/train/sq/best.pt
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from driver.export import OnnxExportConfig, QuantizeConfig, export_onnx, load_onnx_model, quantize_onnx
from driver.models import InputSpec, create_model
from driver.models.summary import flops_per_frame
from driver.training.checkpoint import UNITS, load_checkpoint, model_from_checkpoint, model_payload, preprocess_info


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_time(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def checkpoint_for(args: argparse.Namespace) -> dict:
    if args.checkpoint:
        return load_checkpoint(args.checkpoint)
    spec = InputSpec(height=args.height, width=args.width, cameras=args.cameras, stack=args.stack,
                     n_modes=6, horizon=args.horizon)
    torch.manual_seed(0)
    model = create_model(args.arch, spec)
    cams = ("left", "right")[: args.cameras]
    return {**model_payload(model), "preprocess": preprocess_info(spec, cams, ("direct",) * 6), "units": UNITS,
            "config": {}}


def runners(ckpt: dict, workdir: Path) -> dict:
    """name -> (threads -> step callable)."""
    model = model_from_checkpoint(ckpt).float().eval()
    spec = model.spec
    frame = torch.randn(1, spec.channels, spec.height, spec.width)
    modes = torch.zeros(1, spec.n_modes) if spec.n_modes else None
    state = model.initial_state(1)
    cl_model = create_model(ckpt["arch"], spec, **ckpt["arch_kwargs"]).eval()
    cl_model.load_state_dict(model.state_dict())
    cl_model = cl_model.to(memory_format=torch.channels_last)
    cl_frame = frame.contiguous(memory_format=torch.channels_last)
    fp32_path, int8_path = workdir / "m.onnx", workdir / "m.int8.onnx"
    export_onnx(ckpt, OnnxExportConfig(out=str(fp32_path), parity_steps=2, parity_sequences=1))
    quantize_onnx(fp32_path, QuantizeConfig(out=str(int8_path), calibration_frames=64, bench_iters=0))

    def eager(m, x):
        return lambda threads: (lambda: m.step(x, modes, state))

    def ort(path):
        def make(threads):
            backend, _ = load_onnx_model(path, threads=threads)
            feed = backend.feeds(frame, modes, state)
            return lambda: backend.session.run(None, feed)
        return make

    return {"eager fp32 NCHW": eager(model, frame), "eager fp32 channels_last": eager(cl_model, cl_frame),
            "ORT fp32": ort(fp32_path), "ORT int8 (static QDQ per-channel)": ort(int8_path)}, model


@torch.no_grad()
def measure(make_by_name: dict, threads: int, iters: int, rounds: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    fns = {name: make(threads) for name, make in make_by_name.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(10):
            fn()
    for _ in range(rounds):  # interleaved rounds
        for name, fn in fns.items():
            for _ in range(iters // rounds):
                times[name].append(_time(fn))
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="", help="a trained checkpoint (default: a fresh --arch model)")
    p.add_argument("--arch", default="squeezenet")
    p.add_argument("--height", type=int, default=94)
    p.add_argument("--width", type=int, default=168)
    p.add_argument("--cameras", type=int, default=1)
    p.add_argument("--stack", type=int, default=1)
    p.add_argument("--horizon", type=int, default=10)
    p.add_argument("--iters", type=int, default=300, help="timed steps per runtime and thread count")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ckpt = checkpoint_for(args)
    with tempfile.TemporaryDirectory() as tmp:
        make_by_name, model = runners(ckpt, Path(tmp))
        flops = flops_per_frame(model, model.spec)
        peaks = {t: sgemm_gflops(t) for t in args.threads}
        results = {t: measure(make_by_name, t, args.iters, args.rounds) for t in args.threads}
    s = model.spec
    print(f"{ckpt['arch']} {s.channels}x{s.height}x{s.width}: {flops / 1e6:.1f} MFLOP per step; "
          + ", ".join(f"sgemm {peaks[t]:.0f} GFLOP/s on {t} thread(s)" for t in args.threads))
    head = " | ".join(f"{t} thr ms | % of bound" for t in args.threads)
    print(f"| runtime | {head} |")
    print("|---|" + "---|---|" * len(args.threads))
    for name in make_by_name:
        cells = []
        for t in args.threads:
            bound = flops / (peaks[t] * 1e9) * 1e3
            cells.append(f"{results[t][name]:.2f} | {100 * bound / results[t][name]:.0f}%")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| FLOP-bound limit (fp32 sgemm peak) | " + " | ".join(
        f"{flops / (peaks[t] * 1e9) * 1e3:.2f} | 100%" for t in args.threads) + " |")


if __name__ == "__main__":
    main()
