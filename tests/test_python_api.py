"""The public Python API: the docs example runs, the policy matches replay and the model, errors are named."""

import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

import driver
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.synthetic import write_synthetic_runs
from driver.models import InputSpec, create_model
from driver.preprocess import frames_to_input
from driver.training.checkpoint import CheckpointError, model_payload, preprocess_info, save_checkpoint

DOC = Path(__file__).parent.parent / "docs" / "python-api.md"


@pytest.mark.slow
def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")  # as `python example.py` runs it, in this process
    out = capsys.readouterr().out
    assert "validation steer MAE" in out and "mean |offset| driving itself" in out


def _checkpoint(tmp_path, arch, spec, cameras=("left",), seed=0):
    torch.manual_seed(seed)
    model = create_model(arch, spec, **({"hidden_size": 8} if "gru" in arch else {}))
    path = tmp_path / f"{arch}.pt"
    modes = ("direct", "follow", "furtive", "play", "racing", "caffe")[: spec.n_modes]
    save_checkpoint(path, {**model_payload(model), "config": {"channels_last": True},
                           "preprocess": preprocess_info(spec, cameras, modes)})
    return path, model.eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    write_synthetic_runs(root / "runs", 2, n_frames=60, height=48, width=64, stereo=True)
    assert ingest(IngestConfig(sources=[str(root / "runs")], out=str(root / "s.zarr"))).ok
    return root / "s.zarr"


def test_open_store(store):
    s = driver.open_store(store)
    assert s.runs == ["run_000", "run_001"] and s.labels("run_000")["direct"] == 1
    assert s.frames("run_000")[2:5].shape == (3, 48, 64, 3)
    assert np.array_equal(s.frames("run_000", "right")[4], s.frames("run_000", "right")[4:5][0])
    assert s.series("run_001", "steer").shape == (60,)
    assert len(s.clips(driver.ClipConfig(clip_length=2, horizon=1))) > 0


def test_recurrent_policy_steps_equal_the_clip_forward(store, tmp_path):
    spec = InputSpec(48, 64, cameras=2, stack=2, n_modes=6, horizon=3)
    path, model = _checkpoint(tmp_path, "squeezenet_gru", spec, cameras=("left", "right"))
    policy = driver.load_policy(path, threads=1)
    s = driver.open_store(store)
    left, right = s.frames("run_000")[0:6], s.frames("run_000", "right")[0:6]
    policy.reset()
    actions = [policy.act(left[i], right=right[i], mode="direct") for i in range(6)]
    # the same frames through the model's clip forward: views [L t-1, R t-1, L t, R t], first frame duplicated
    prev = np.concatenate([left[:1], left[:-1]]), np.concatenate([right[:1], right[:-1]])
    views = np.stack([prev[0], prev[1], left, right], axis=1)  # (T, 4, H, W, 3)
    x = frames_to_input(torch.from_numpy(views)[None])
    modes = torch.zeros(1, 6)
    modes[0, 0] = 1
    with torch.no_grad():
        out, _ = model(x, modes)
    expected = out[0].clamp(-1, 1).numpy()  # (T, horizon, 2)
    got = np.stack([a.horizon for a in actions])
    assert np.allclose(got, expected, atol=1e-5)
    a = actions[-1]
    assert -1000 <= a.steer_permille <= 1000 and a.latency_s > 0
    policy.reset()
    assert np.allclose(policy.act(left[0], right=right[0], mode="direct").horizon, expected[0], atol=1e-5)


@pytest.mark.slow
def test_policy_matches_replay(store, tmp_path):
    from driver.sim.replay import ReplayConfig, replay

    spec = InputSpec(48, 64, cameras=1, stack=1, n_modes=6, horizon=1)
    path, _ = _checkpoint(tmp_path, "squeezenet_gru", spec)
    report = replay(ReplayConfig(model=str(path), data=str(store), runs=["run_000"], out=str(tmp_path / "r"),
                                 video=False, mode="direct"))
    trace = report.traces["run_000"]
    s = driver.open_store(store)
    policy = driver.load_policy(path)
    frames = s.frames("run_000")[:]
    segments = s.run_meta("run_000")["segments"]
    preds = []
    for seg in segments:
        policy.reset()
        preds += [policy.act(frames[i], mode="direct").steer for i in range(seg["start"], seg["start"] + seg["length"])]
    gaps = np.flatnonzero(np.diff(s.series("run_000", "timestamp")) >= 0.1)
    head = gaps[0] + 1 if len(gaps) else len(preds)  # identical up to the first timestamp gap reset
    assert np.allclose(np.array(preds)[:head], trace.pred_steer[:head], atol=1e-4)


def test_policy_errors_are_named(tmp_path):
    spec = InputSpec(48, 64, cameras=2, stack=1, n_modes=6, horizon=1)
    path, _ = _checkpoint(tmp_path, "squeezenet", spec, cameras=("left", "right"))
    policy = driver.load_policy(path)
    frame = np.zeros((96, 128, 3), np.uint8)
    with pytest.raises(ValueError, match="stereo model: pass right="):
        policy.act(frame)
    with pytest.raises(ValueError, match=r"frame has dtype float32"):
        policy.act(frame.astype(np.float32), right=frame)
    with pytest.raises(ValueError, match=r"right has shape \(96, 128\)"):
        policy.act(frame, right=frame[..., 0])
    with pytest.raises(TypeError, match="frame must be a numpy array"):
        policy.act([[0]], right=frame)
    with pytest.raises(ValueError, match="mode='cruise' is not one of"):
        policy.act(frame, right=frame, mode="cruise")
    a = policy.act(np.zeros((376, 672, 3), np.uint8), right=np.zeros((376, 672, 3), np.uint8))  # any size
    assert 0 <= a.steer <= 99
    with pytest.raises(ValueError, match="missing.pt: model file not found"):
        driver.load_policy(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="bad.pt: not a loadable checkpoint"):
        driver.load_policy(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="runtime='tensorrt' must be one of auto, torch, onnx"):
        driver.load_policy(path, runtime="tensorrt")
