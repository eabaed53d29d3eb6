"""Export parity (ONNX, TorchScript) for every architecture, the ORT policy backend, int8 and bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.store import Store
from driver.datasets.synthetic import write_synthetic_runs
from driver.export import (
    ExportError,
    OnnxExportConfig,
    QuantizeConfig,
    TorchScriptConfig,
    export_onnx,
    export_torchscript,
    load_onnx_model,
    load_step_model,
    load_torchscript_model,
    quantize_onnx,
)
from driver.export.common import check_parity, parity_inputs
from driver.models import InputSpec, create_model, list_models
from driver.policy import Policy
from driver.training.checkpoint import UNITS, model_payload, preprocess_info
from driver.training.config import TrainConfig

MODES = ("direct", "follow", "furtive", "play", "racing", "caffe")
TINY_SQUEEZE = {"stem_channels": 8, "base_width": 16, "width_increment": 16}
TINY_Z2 = {"conv1_channels": 8, "conv2_channels": 16, "fc_width": 32}
# Smallest-cost settings each family accepts (squeezenet needs >= ~48x64 for its 4 poolings; z2color and
# alexnet need ~64x96).
ARCH_SETUP = {
    "squeezenet": ((48, 64), TINY_SQUEEZE),
    "squeezenet_gru": ((48, 64), {**TINY_SQUEEZE, "hidden_size": 16}),
    "squeezenet_lstm": ((48, 64), {**TINY_SQUEEZE, "hidden_size": 16, "num_layers": 2}),
    "z2color": ((64, 96), TINY_Z2),
    "z2color_gru": ((64, 96), {**TINY_Z2, "hidden_size": 16}),
    "z2color_lstm": ((64, 96), {**TINY_Z2, "hidden_size": 16}),
    "alexnet": ((64, 96), {"fc_width": 32}),
    "pilotnet": ((64, 96), {}),
    "pilotnet_gru": ((64, 96), {"fc_width": 16, "hidden_size": 16}),
    "pilotnet_lstm": ((64, 96), {"fc_width": 16, "hidden_size": 16}),
}


@pytest.fixture(scope="session")
def store48(tmp_path_factory):
    """Three small stereo runs at 48x64 (the smallest squeezenet size), ingested."""
    runs = write_synthetic_runs(tmp_path_factory.mktemp("runs48"), 3, n_frames=80, height=48, width=64,
                                stereo=True, seed=5)
    out = tmp_path_factory.mktemp("store48") / "store.zarr"
    assert ingest(IngestConfig(sources=[str(p) for p in runs], out=str(out), shard_frames=64)).ok
    return out


def tiny_checkpoint(arch: str, cameras: tuple[str, ...] = ("left",), store=None, n_modes: int = 6) -> dict:
    (h, w), kwargs = ARCH_SETUP[arch]
    spec = InputSpec(height=h, width=w, cameras=len(cameras), stack=1, n_modes=n_modes, horizon=2)
    torch.manual_seed(0)
    model = create_model(arch, spec, **kwargs)
    config = TrainConfig(data=str(store or ""), arch=arch, arch_kwargs=kwargs, cameras="both" if len(cameras) == 2
                         else cameras[0], stack=1, clip_length=1, horizon=2, target_stride=1, channels_last=False,
                         batch_size=8)
    ckpt = {**model_payload(model), "preprocess": preprocess_info(spec, cameras, MODES[:n_modes]), "units": UNITS,
            "config": config.to_dict(), "path": f"<{arch}>"}
    if store is not None:
        runs = Store(store).runs
        ckpt["dataset"] = {"store": str(store), "train_runs": runs[:-1], "val_runs": runs[-1:]}
    return ckpt


def test_every_arch_is_covered():
    assert set(ARCH_SETUP) == set(list_models())


@pytest.mark.parametrize("arch", sorted(ARCH_SETUP))
def test_onnx_export_parity_and_state(arch, tmp_path):
    ckpt = tiny_checkpoint(arch)
    out = tmp_path / f"{arch}.onnx"
    report = export_onnx(ckpt, OnnxExportConfig(out=str(out), parity_steps=3, parity_sequences=1))
    assert report.max_abs_diff <= 1e-4 and report.frames == "synthetic frames"
    backend, meta = load_onnx_model(out, threads=1)
    assert meta["arch"] == arch and meta["preprocess"]["cameras"] == ["left"] and meta["units"] == UNITS
    model = create_model(arch, InputSpec(**ckpt["spec"]), **ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    assert backend.is_recurrent == model.is_recurrent
    seq = parity_inputs(ckpt, model, steps=4, sequences=1)[0][0]
    s_torch = s_ort = None
    with torch.no_grad():
        for frame, modes in seq:  # state carried over several steps must match, not just the outputs
            o_t, s_torch = model.step(frame, modes, s_torch)
            o_o, s_ort = backend.step(frame, modes, s_ort)
            assert torch.allclose(o_t, o_o, atol=1e-4)
            for a, b in zip(*(([s] if isinstance(s, torch.Tensor) else list(s or [])) for s in (s_torch, s_ort)),
                            strict=True):
                assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("arch", sorted(ARCH_SETUP))
def test_torchscript_export_parity(arch, tmp_path):
    out = tmp_path / f"{arch}.ts"
    report = export_torchscript(tiny_checkpoint(arch), TorchScriptConfig(out=str(out), parity_steps=3,
                                                                         parity_sequences=1))
    assert report.max_abs_diff <= 1e-4
    backend, meta = load_torchscript_model(out)
    assert meta["arch"] == arch and backend.is_recurrent == ("lstm" in arch or "gru" in arch)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # written atomically: no temp file left


def test_parity_failure_is_loud():
    ckpt = tiny_checkpoint("squeezenet")
    model = create_model("squeezenet", InputSpec(**ckpt["spec"]), **ckpt["arch_kwargs"]).eval()
    seqs, _ = parity_inputs(ckpt, model, steps=2, sequences=1)

    def off(frame, modes, state):
        out, state = model.step(frame, modes, state)
        return out + 1e-3, state

    with pytest.raises(ExportError, match="parity check failed"):
        check_parity(model.step, off, model, seqs, 1e-4, "x.onnx")


@pytest.mark.parametrize("arch", ["squeezenet", "squeezenet_gru"])
def test_ort_policy_matches_torch_policy(arch, tmp_path, store48):
    ckpt = tiny_checkpoint(arch, cameras=("left", "right"), store=store48)
    out = tmp_path / "m.onnx"
    report = export_onnx(ckpt, OnnxExportConfig(out=str(out), parity_steps=4, parity_sequences=1))
    assert report.frames.startswith("store")  # real frames from the checkpoint's store
    torch_policy = Policy(*load_step_model_from_ckpt(ckpt))
    ort_policy = Policy(*load_step_model(out, runtime="onnx", threads=1))
    rng = np.random.default_rng(0)
    for _ in range(5):
        left, right = (rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(2))
        a, b = torch_policy.act(left, right, "direct"), ort_policy.act(left, right, "direct")
        assert abs(a.steer_norm - b.steer_norm) < 1e-4 and abs(a.motor_norm - b.motor_norm) < 1e-4


def load_step_model_from_ckpt(ckpt):
    model = create_model(ckpt["arch"], InputSpec(**ckpt["spec"]), **ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def test_quantize_runs_and_reports(tmp_path, store48):
    ckpt = tiny_checkpoint("squeezenet", cameras=("left", "right"), store=store48)
    fp32 = tmp_path / "m.onnx"
    export_onnx(ckpt, OnnxExportConfig(out=str(fp32), parity_steps=2, parity_sequences=1))
    report = quantize_onnx(fp32, QuantizeConfig(out=str(tmp_path / "m.int8.onnx"), calibration_frames=16,
                                                bench_iters=5))
    assert report.steer_mae_fp32 is not None and report.steer_mae_int8 is not None
    assert report.int8_ms > 0 and report.fp32_ms > 0 and "store" in report.calibration
    backend, meta = load_onnx_model(report.path)
    assert meta["quantization"]["format"] == "QDQ"
    ops = {n.op_type for n in __import__("onnx").load(report.path).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


@pytest.mark.parametrize("fmt", ["onnx", "ts"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_bad_exported_file_names_the_file(fmt, damage, tmp_path):
    out = tmp_path / f"m.{fmt}"
    if fmt == "onnx":
        export_onnx(tiny_checkpoint("squeezenet"), OnnxExportConfig(out=str(out), parity_steps=1, parity_sequences=1))
    else:
        export_torchscript(tiny_checkpoint("squeezenet"), TorchScriptConfig(out=str(out), parity_steps=1,
                                                                            parity_sequences=1))
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 64)
    with pytest.raises(ExportError, match=f"m.{fmt}"):
        load_step_model(out, runtime="onnx" if fmt == "onnx" else "torch")


def test_runtime_is_validated(tmp_path):
    with pytest.raises(ValueError, match="runtime"):
        load_step_model(tmp_path, runtime="tflite")
    with pytest.raises(ValueError, match="opset"):
        OnnxExportConfig(out="x.onnx", opset=3)
