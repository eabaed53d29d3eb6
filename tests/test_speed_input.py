"""Speed as a model input: the car's measured speed (m/s, the run's encoder series) beside the frames.

A speed model is trained from a real store (synthetic runs with an ``encoder`` series), checkpointed and run
through the Policy with speed; a model that does not use speed is not broken by its absence (or presence).
"""

import numpy as np
import pytest
import torch

from driver.datasets.clips import ClipConfig, ClipDataset
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_writer import write_run
from driver.datasets.store import Store, StoreError
from driver.datasets.synthetic import synthetic_segments
from driver.errors import SpeedRequired
from driver.export.compress import CompressConfig, compress_checkpoint
from driver.export.onnx_export import OnnxExportConfig, export_onnx
from driver.export.quantize import QuantizeConfig, quantize_onnx
from driver.export.torchscript import TorchScriptConfig, export_torchscript
from driver.models import InputSpec, create_model
from driver.policy import Policy, load_policy
from driver.sim.replay import replay_run
from driver.training import TrainConfig, load_checkpoint, train
from driver.training.checkpoint import model_payload, preprocess_info

SPEC = InputSpec(48, 64, cameras=1, stack=1, n_modes=0, horizon=1)


def _store(root, extras=True):
    (root / "runs").mkdir(parents=True)
    for i in range(3):
        segs = synthetic_segments(10 + i, n_frames=90, height=48, width=64, stereo=False, n_segments=1,
                                  extras=extras)
        write_run(root / "runs" / f"r{i}.h5", segs, {"direct": 1})
    assert ingest(IngestConfig(sources=[str(root / "runs")], out=str(root / "s.zarr"))).ok
    return root / "s.zarr"


@pytest.fixture(scope="module")
def with_speed(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("speed"))


@pytest.fixture(scope="module")
def without_speed(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("nospeed"), extras=False)


def _cfg(store, out, **kw):
    base = {"data": str(store), "arch": "squeezenet_gru", "arch_kwargs": {"hidden_size": 8}, "cameras": "left",
            "stack": 1, "clip_length": 3, "horizon": 1, "batch_size": 4, "epochs": 1, "steps_per_epoch": 2,
            "out": str(out), "progress": False, "precision": "fp32", "val_fraction": 0.34, "warmup_steps": 0}
    return TrainConfig(**{**base, **kw})


def _policy(model) -> Policy:
    ckpt = {**model_payload(model), "config": {"channels_last": False},
            "preprocess": preprocess_info(model.spec, ("left",), ())}
    return Policy(model.eval(), ckpt)


def _frames(n=5, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, 48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("arch", ["squeezenet", "squeezenet_gru"])
def test_a_model_without_speed_input_is_not_broken_by_speed_or_its_absence(arch):
    torch.manual_seed(0)
    model = create_model(arch, SPEC, **({"hidden_size": 8} if arch.endswith("gru") else {})).eval()
    assert not model.speed_input
    clip = torch.rand(2, 3, 3, 48, 64) - 0.5
    with torch.no_grad():
        plain, _ = model(clip)
        given, _ = model(clip, speed=torch.full((2, 3), 2.0))
    torch.testing.assert_close(plain, given)
    a, b = _policy(model), _policy(model)
    for frame in _frames():
        assert a.act(frame).raw.tolist() == b.act(frame, speed=1.5).raw.tolist()


def test_a_speed_model_reads_the_speed_and_requires_it():
    torch.manual_seed(0)
    model = create_model("squeezenet_gru", SPEC, hidden_size=8, speed_input=True).eval()
    clip = torch.rand(1, 4, 3, 48, 64) - 0.5
    with torch.no_grad():
        slow, _ = model(clip, speed=torch.zeros(1, 4))
        fast, _ = model(clip, speed=torch.full((1, 4), 3.0))
        assert not torch.allclose(slow, fast)  # the speed reaches the output
        with pytest.raises(SpeedRequired, match="speed_input"):
            model(clip)
        with pytest.raises(SpeedRequired, match=r"expected speed of shape \(1, 4\)"):
            model(clip, speed=torch.zeros(4))
        state, stepped = None, []
        for t in range(4):  # forward over a clip equals step by step, speed included
            out, state = model.step(clip[:, t], None, state, speed=torch.full((1,), 3.0))
            stepped.append(out)
    torch.testing.assert_close(torch.stack(stepped, 1), fast)
    policy = _policy(model)
    assert policy.speed_input
    with pytest.raises(SpeedRequired, match="pass speed="):
        policy.act(_frames(1)[0])
    with pytest.raises(ValueError, match="speed=nan"):
        policy.act(_frames(1)[0], speed=float("nan"))


def test_clip_items_carry_the_runs_speed_series(with_speed):
    store = Store(with_speed)
    ds = ClipDataset(store, ClipConfig(clip_length=3, frame_stride=2, cameras=("left",), horizon=1, speed=True))
    item = ds[5]
    run, start = ds.clip_run_and_start(5)
    expected = store.series(run, "encoder")[start + np.arange(3) * 2]
    np.testing.assert_allclose(item["speed"].numpy(), expected, rtol=1e-6)
    assert "speed" not in ClipDataset(store, ClipConfig(clip_length=3, cameras=("left",), horizon=1))[5]


def test_speed_model_round_trip_train_checkpoint_policy_replay(with_speed, tmp_path):
    r = train(_cfg(with_speed, tmp_path, name="auto", speed_input="auto"))  # auto: every run has an encoder series
    ck = load_checkpoint(r.best_checkpoint or r.last_checkpoint)
    assert ck["config"]["speed_input"] == "on" and ck["arch_kwargs"]["speed_input"] is True
    policy = load_policy(r.last_checkpoint)
    assert policy.speed_input
    actions = [policy.act(frame, speed=s) for frame, s in zip(_frames(), [0.0, 0.5, 1.0, 1.5, 2.0], strict=True)]
    assert all(np.isfinite(a.raw).all() for a in actions)
    with pytest.raises(SpeedRequired):
        policy.act(_frames(1)[0])
    store = Store(with_speed)
    trace = replay_run(load_policy(r.last_checkpoint), store, store.runs[0])  # speed from the run's series
    assert len(trace.pred_motor) == store.run_meta(store.runs[0])["n_frames"]
    torch_policy = load_policy(r.last_checkpoint)
    for name, export, cfg in (("m.onnx", export_onnx, OnnxExportConfig), ("m.ts", export_torchscript,
                                                                          TorchScriptConfig)):
        export(str(r.last_checkpoint), cfg(out=str(tmp_path / name)))  # parity-checked with speed
        exported = load_policy(tmp_path / name)
        assert exported.speed_input
        torch_policy.reset()
        for frame, s in zip(_frames(), [0.0, 0.5, 1.0, 1.5, 2.0], strict=True):
            np.testing.assert_allclose(exported.act(frame, speed=s).raw, torch_policy.act(frame, speed=s).raw,
                                       atol=1e-4)
        with pytest.raises(SpeedRequired):
            exported.act(_frames(1)[0])
    # int8 and Deep Compression carry the speed too: calibrated and fine-tuned on the runs' own speed series
    report = quantize_onnx(tmp_path / "m.onnx", QuantizeConfig(out=str(tmp_path / "q.onnx"), calibration_frames=16,
                                                               bench_iters=0))
    assert report.calibration.startswith("16 frames from store") and report.steer_mae_int8 is not None
    int8 = load_policy(tmp_path / "q.onnx")
    compressed = compress_checkpoint(str(r.last_checkpoint), CompressConfig(
        out=str(tmp_path / "m.dcz"), density=0.5, bits=4, min_prune_numel=256, prune_rounds=1, prune_steps=2,
        centroid_steps=2, kmeans_iters=5))
    dcz = load_policy(compressed.path)
    for policy in (int8, dcz):
        assert policy.speed_input
        slow = policy.act(_frames(1)[0], speed=0.0).raw
        policy.reset()
        fast = policy.act(_frames(1)[0], speed=3.0).raw
        assert np.isfinite(slow).all() and not np.array_equal(slow, fast)  # the speed reaches the output
        with pytest.raises(SpeedRequired):
            policy.act(_frames(1)[0])
    off = train(_cfg(with_speed, tmp_path, name="off", speed_input="off"))
    assert load_checkpoint(off.last_checkpoint)["config"]["speed_input"] == "off"
    assert not load_policy(off.last_checkpoint).speed_input


def test_speed_input_choices_are_checked_against_the_runs_and_the_arch(with_speed, without_speed, tmp_path):
    r = train(_cfg(without_speed, tmp_path, name="auto_off", speed_input="auto"))  # auto: no speed series -> off
    assert load_checkpoint(r.last_checkpoint)["config"]["speed_input"] == "off"
    with pytest.raises(ValueError, match="run 'r0' has no speed series"):
        train(_cfg(without_speed, tmp_path, name="on", speed_input="on"))
    with pytest.raises(ValueError, match="arch 'squeezenet' does not take the car's speed"):
        train(_cfg(with_speed, tmp_path, name="frame", arch="squeezenet", arch_kwargs={}, speed_input="on"))
    with pytest.raises(ValueError, match="speed_input='fast' must be one of auto, on, off"):
        _cfg(with_speed, tmp_path, speed_input="fast")
    with pytest.raises(StoreError, match="run 'r0' has no speed series"):
        ClipDataset(Store(without_speed), ClipConfig(clip_length=2, cameras=("left",), horizon=1, speed=True))


def test_sim_closed_loop_feeds_a_speed_model_the_cars_speed_through_the_view_wrapper():
    from driver.sim.closed_loop import ClosedLoopConfig, drive_closed_loop
    from driver.sim.policy_controller import PolicyController
    from driver.view.sim_view import ViewedController

    model = create_model("squeezenet_gru", SPEC, hidden_size=8, speed_input=True)
    seen = []
    policy = _policy(model)
    act = policy.act

    def recording_act(frame, right=None, mode=None, speed=None):
        seen.append(speed)
        return act(frame, right, mode, speed=speed)

    policy.act = recording_act
    controller = ViewedController(PolicyController(policy), every=10)
    drive_closed_loop(controller, ClosedLoopConfig(tracks=1, height=48, width=64, max_seconds=2.0, reference=False,
                                                   video_frames=0))
    assert len(seen) == 60 and seen[0] == 0.0 and all(s is not None and s >= 0 for s in seen)
