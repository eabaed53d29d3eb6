"""`driver quantize`: static int8 for ONNX Runtime (QDQ, per-channel weights), calibrated on store frames.

    report = quantize_onnx("sq.onnx", QuantizeConfig(out="sq.int8.onnx"))
    report.steer_mae_fp32, report.steer_mae_int8, report.speedup

Calibration feeds real frames from the model's store (its training runs; held-out runs are kept for the
report), run through the fp32 model in sequence so recurrent models calibrate on realistic states; a model
that takes the car's speed gets the runs' own speed series beside them. ONNX
Runtime's QDQ quantizer picks the ops: Conv and Gemm/MatMul get int8 weights, and the ops between them
(Concat, MaxPool, Relu, LayerNorm, ...) pass int8 activations; LSTM/GRU and the state stay float32.
The int8 file keeps the metadata.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from driver.export.loading import model_kind
from driver.export.meta import ExportError
from driver.export.ort_backend import OrtStepModel, read_onnx
from driver.threads import apply_threads, check_threads

log = logging.getLogger(__name__)


@dataclass
class QuantizeConfig:
    """``driver quantize``: each field's trailing comment is its flag's help."""

    out: str = ""  # the int8 .onnx to write (empty: beside the model, NAME.int8.onnx)
    calibration_frames: int = 256  # frames from the model's training runs the activation ranges are calibrated on
    calibration_method: str = "minmax"  # minmax, entropy or percentile
    per_channel: bool = True  # per-channel weight scales (--no-per-channel: one per tensor)
    bench_iters: int = 200  # batch-1 steps timed for the fp32 vs int8 report (0: skip)
    threads: int = 1  # compute threads, ONNX Runtime's too (1: the car's batch-1 latency; 0 = auto)
    seed: int = 0  # calibration frame order

    def __post_init__(self) -> None:
        if not 8 <= self.calibration_frames <= 100_000:
            raise ValueError(f"calibration_frames={self.calibration_frames} must be in 8..100000")
        if self.calibration_method not in ("minmax", "entropy", "percentile"):
            raise ValueError(f"calibration_method={self.calibration_method!r} must be minmax, entropy or percentile")
        if not 0 <= self.bench_iters <= 100_000:
            raise ValueError(f"bench_iters={self.bench_iters} must be in 0..100000")
        check_threads(self.threads)


@dataclass
class QuantizeReport:
    path: str
    fp32_bytes: int
    int8_bytes: int
    calibration: str
    max_abs_diff: float  # int8 vs fp32 outputs on the calibration-free parity frames
    steer_mae_fp32: float | None
    steer_mae_int8: float | None
    fp32_ms: float
    int8_ms: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms if self.int8_ms else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


class _Reader:
    """onnxruntime CalibrationDataReader over precomputed input dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def calibration_feeds(fp32: OrtStepModel, meta: dict, frames: int, seed: int) -> tuple[list[dict], str]:
    """Input dicts for calibration: sequences of store frames with the fp32 model's own carried state (and the
    runs' speed, for a speed-input model)."""
    from driver.export.common import parity_inputs_with_speed
    from driver.models import create_model

    model = create_model(meta["arch"], fp32.spec, **meta.get("arch_kwargs", {}))
    ckpt = {**meta, "dataset": {**meta.get("dataset", {}), "val_runs": meta.get("dataset", {}).get("train_runs")}}
    steps = 8 if fp32.is_recurrent else 1
    seqs, speeds, source = parity_inputs_with_speed(ckpt, model, steps=steps, sequences=max(1, frames // steps),
                                                    seed=seed)
    feeds = []
    for s, seq in enumerate(seqs):
        state = None
        for t, (frame, modes) in enumerate(seq):
            speed = speeds[s, t : t + 1] if speeds is not None else None
            feeds.append(fp32.feeds(frame, modes, state, speed))
            _, state = fp32.step(frame, modes, state, speed)
    return feeds, source


def step_latency_ms(model: OrtStepModel, iters: int, warmup: int = 20) -> float:
    """Median batch-1 step latency in ms on zero inputs."""
    spec = model.spec
    frame = np.zeros((1, spec.channels, spec.height, spec.width), np.float32)
    feed = model.feeds(frame, None, None, np.zeros(1, np.float32) if model.speed_input else None)
    for _ in range(warmup):
        model.session.run(None, feed)
    times = []
    for _ in range(max(iters, 1)):
        t0 = time.perf_counter()
        model.session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def quantize_onnx(source: str | os.PathLike, config: QuantizeConfig) -> QuantizeReport:
    """Statically quantize an exported fp32 ``.onnx`` to ``config.out`` and report accuracy and speed."""
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from driver.atomic_write import write_atomic
    from driver.export.common import heldout_metrics
    from driver.export.onnx_export import set_metadata

    if not config.out:
        raise ValueError("out is empty: name the int8 .onnx file to write")
    kind = model_kind(source)
    if kind != "onnx":
        stem = Path(source).with_suffix("")
        raise ExportError(f"{source}: quantize takes an exported .onnx model, not a {kind}; export it first: "
                          f"`driver export {source} --out {stem}.onnx`, then `driver quantize {stem}.onnx`")
    threads = apply_threads(config.threads)
    proto, meta = read_onnx(source)
    fp32 = OrtStepModel(proto.SerializeToString(), meta, threads=threads, name=str(source))
    feeds, calib_source = calibration_feeds(fp32, meta, config.calibration_frames, config.seed)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration_method]
    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(out), _Reader(feeds), quant_format=QuantFormat.QDQ,
                            per_channel=config.per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=method)
        except Exception as e:  # ORT's quantizer raises assorted types on unsupported graphs
            raise ExportError(f"{source}: static int8 quantization failed ({type(e).__name__}: {e})") from e
        q = onnx.load(str(out))
    meta_q = {**meta, "quantization": {"format": "QDQ", "weights": "int8 per-channel" if config.per_channel
                                       else "int8 per-tensor", "activations": "uint8",
                                       "calibration": f"{len(feeds)} frames from {calib_source}",
                                       "method": config.calibration_method}}
    set_metadata(q, meta_q)
    data = q.SerializeToString()
    write_atomic(config.out, data)
    int8 = OrtStepModel(data, meta_q, threads=threads, name=config.out)

    frame = torch.from_numpy(feeds[-1]["frame"])
    modes = torch.from_numpy(feeds[-1]["modes"]) if "modes" in feeds[-1] else None
    speed = torch.from_numpy(feeds[-1]["speed"]) if "speed" in feeds[-1] else None
    diff = float((fp32.step(frame, modes, None, speed)[0] - int8.step(frame, modes, None, speed)[0]).abs().max())
    ckpt = {**meta, "config": meta.get("source_config", {})}
    m32 = heldout_metrics(fp32, ckpt) if ckpt["config"] else {}
    m8 = heldout_metrics(int8, ckpt) if ckpt["config"] else {}
    fp32_ms = step_latency_ms(fp32, config.bench_iters) if config.bench_iters else 0.0
    int8_ms = step_latency_ms(int8, config.bench_iters) if config.bench_iters else 0.0
    report = QuantizeReport(config.out, len(proto.SerializeToString()), len(data),
                            meta_q["quantization"]["calibration"], diff, m32.get("steer_mae"), m8.get("steer_mae"),
                            fp32_ms, int8_ms)
    log.info("quantized %s -> %s: %.0f -> %.0f KB, steer MAE %s -> %s, %.2f -> %.2f ms (%.2fx)", source, config.out,
             report.fp32_bytes / 1e3, report.int8_bytes / 1e3, report.steer_mae_fp32, report.steer_mae_int8,
             fp32_ms, int8_ms, report.speedup)
    return report
