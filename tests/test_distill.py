"""--teacher: the target mixes the labels with a teacher's output on the same input (members' states carried and
reset with the student's), training moves towards the teacher, a resume continues exactly, bad teachers are named."""

import contextlib
import json
import shutil
import subprocess
import sys

import pytest
import torch

from driver.ensemble import EnsembleConfig, write_ensemble
from driver.models import InputSpec, create_model
from driver.training import TrainConfig, load_checkpoint, train
from driver.training.checkpoint import model_from_checkpoint, model_payload, preprocess_info, save_checkpoint
from driver.training.distill import Teacher, TeacherError
from tests.test_train import ENV, _cfg, assert_same_model, kill_after_checkpoint, resume_run, store48  # noqa: F401

GRU_KW = {"hidden_size": 8, "base_width": 16, "width_increment": 16}


def _modes(store) -> tuple[str, ...]:
    """The mode names a model trained on ``store`` takes (from a 1-step run's checkpoint)."""
    r = train(_cfg(store, store.parent / "probe", arch="squeezenet", steps_per_epoch=1, name="probe",
                   arch_kwargs={"base_width": 16, "width_increment": 16}, precise_bn=0))
    return tuple(load_checkpoint(r.last_checkpoint)["preprocess"]["modes"])


@pytest.fixture(scope="module")
def modes48(store48):  # noqa: F811
    return _modes(store48)


def _save(path, model, modes, cameras=("left",)):
    save_checkpoint(path, {**model_payload(model), "config": {"channels_last": True},
                           "preprocess": preprocess_info(model.spec, cameras, modes)})
    return str(path)


def _gru(path, spec, modes, seed, **kw):
    torch.manual_seed(seed)
    return _save(path, create_model("squeezenet_gru", spec, **{**GRU_KW, **kw}), modes)


def _constant(path, spec, modes, steer, motor):
    """A squeezenet frame model whose output is (steer, motor) at every step whatever it sees."""
    model = create_model("squeezenet", spec, base_width=16, width_increment=16)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None
            and m.bias.numel() == spec.outputs][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([steer] * spec.horizon + [motor] * spec.horizon))
    return _save(path, model, modes)


def _teacher(path, spec, modes, weight=0.5, recurrent=True, speed=False):
    return Teacher(str(path), weight, spec, modes, ("left",), speed, recurrent, torch.device("cpu"), False)


def test_targets_mix_labels_with_the_members_mean_carrying_and_resetting_their_state(tmp_path):
    spec = InputSpec(48, 64, cameras=1, stack=1, n_modes=2, horizon=2)
    modes = ("direct", "follow")
    paths = [_gru(tmp_path / f"m{k}.pt", spec, modes, seed=k) for k in range(2)]
    manifest = write_ensemble(EnsembleConfig(members=paths, out=str(tmp_path / "e.json"), motor_caution=0.5)).path
    teacher = _teacher(manifest, spec, modes, weight=0.25)
    members = [load_checkpoint(p) for p in paths]
    nets = [model_from_checkpoint(m) for m in members]
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.rand(3, 2, 3, 48, 64, generator=g) - 0.5 for _ in range(2))
    m = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.rand(3, 2, 2, 2, generator=g)
    keep = torch.tensor([True, True, True])
    t1, carry = teacher.targets(x1, m, None, labels, None, keep, contextlib.nullcontext)
    keep2 = torch.tensor([False, True, True])  # lane 0 restarts
    t2, _ = teacher.targets(x2, m, None, labels, carry, keep2, contextlib.nullcontext)
    with torch.no_grad():
        outs1, states = zip(*(net(x1, m, None) for net in nets), strict=True)
        outs2 = []
        for net, s in zip(nets, states, strict=True):
            outs2.append(net(x2, m, s * keep2.float()[None, :, None])[0])
    for got, outs in ((t1, outs1), (t2, outs2)):
        stacked = torch.stack(outs)
        taught = stacked.mean(0)
        taught[..., 1] -= 0.5 * stacked[..., 1].std(0, unbiased=False)
        torch.testing.assert_close(got, 0.75 * labels + 0.25 * taught)
    assert not torch.allclose(t2[0], t1[0])  # the state mattered (and lane 0 restarted from zero)


def test_training_with_a_constant_teacher_moves_the_model_towards_it(store48, modes48, tmp_path):  # noqa: F811
    spec = InputSpec(48, 64, cameras=1, stack=1, n_modes=len(modes48), horizon=2)
    teacher = _constant(tmp_path / "t.pt", spec, modes48, steer=0.6, motor=-0.4)
    kw = {"arch": "squeezenet", "arch_kwargs": {"base_width": 16, "width_increment": 16}, "clip_length": 1,
          "steps_per_epoch": 30, "lr": 1e-2, "precise_bn": 0, "seed": 3}
    plain = train(_cfg(store48, tmp_path, name="plain", **kw))
    taught = train(_cfg(store48, tmp_path, name="taught", teacher=teacher, teacher_weight=1.0, **kw))
    ck = load_checkpoint(taught.last_checkpoint)
    assert ck["distill"]["weight"] == 1.0 and ck["distill"]["members"][0]["path"] == teacher
    frames = torch.rand(8, 1, 3, 48, 64, generator=torch.Generator().manual_seed(1)) - 0.5
    modes = torch.ones(8, len(modes48))

    def mean_output(run):
        with torch.no_grad():
            out, _ = model_from_checkpoint(load_checkpoint(run.last_checkpoint))(frames, modes, None)
        return out[:, :, 0].mean(0)  # (steer, motor) of the first predicted step

    far_plain = torch.dist(mean_output(plain), torch.tensor([0.6, -0.4])).item()
    far_taught = torch.dist(mean_output(taught), torch.tensor([0.6, -0.4])).item()
    assert far_taught < 0.5 * far_plain, (far_plain, far_taught)


def _train_cmd(store, out, name, *extra):
    return [sys.executable, "-m", "driver.cli", "train", "--data", str(store), "--arch", "squeezenet_gru",
            "--arch-kwargs", json.dumps(GRU_KW), "--cameras", "left", "--stack", "1", "--clip-length", "3",
            "--horizon", "2", "--batch-size", "4", "--epochs", "2", "--steps-per-epoch", "6",
            "--checkpoint-every", "2", "--val-every", "6", "--precision", "fp32", "--warmup-steps", "2",
            "--val-fraction", "0.25", "--precise-bn", "16", "--out", str(out), "--name", name, "--no-progress",
            "--threads", "1", *extra]


@pytest.mark.slow
def test_a_distilled_run_resumes_exactly_and_refuses_a_changed_teacher(store48, modes48, tmp_path):  # noqa: F811
    spec = InputSpec(48, 64, cameras=1, stack=1, n_modes=len(modes48), horizon=2)
    paths = [_gru(tmp_path / f"m{k}.pt", spec, modes48, seed=k) for k in range(2)]
    manifest = write_ensemble(EnsembleConfig(members=paths, out=str(tmp_path / "e.json"))).path
    extra = ("--teacher", manifest, "--teacher-weight", "0.7")
    full = subprocess.run(_train_cmd(store48, tmp_path, "full", *extra), env=ENV, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    # killed after a checkpoint, then resumed: the same weights as the uninterrupted run
    ckpt = kill_after_checkpoint(_train_cmd(store48, tmp_path, "killed", *extra), tmp_path / "killed")
    saved = load_checkpoint(ckpt)["training"]
    assert 0 < saved["step"] < 12, "the run finished before it was killed"
    assert len(saved["teacher_carry"][0]) == 2  # both members' states travel
    more = resume_run(tmp_path / "killed")
    assert more.returncode == 0, more.stderr
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(ckpt)
    assert a["training"]["step"] == b["training"]["step"] == 12
    assert_same_model(a, b, f"after a kill at step {saved['step']}")
    # a member replaced by another model: the run's targets would change, so the resume is refused
    shutil.copy(_gru(tmp_path / "other.pt", spec, modes48, seed=9), paths[1])
    write_ensemble(EnsembleConfig(members=paths, out=manifest))
    again = resume_run(tmp_path / "killed", "--epochs", "3")
    assert again.returncode != 0 and "now has other files or contents" in again.stderr


def test_bad_teachers_are_named(store48, modes48, tmp_path):  # noqa: F811
    spec = InputSpec(48, 64, cameras=1, stack=1, n_modes=len(modes48), horizon=2)
    with pytest.raises(ValueError, match="teacher_weight=0 would ignore"):
        TrainConfig(teacher="t.pt", teacher_weight=0.0)
    with pytest.raises(ValueError, match=r"teacher_weight=1\.5 must be"):
        TrainConfig(teacher_weight=1.5)
    with pytest.raises(TeacherError, match="missing.pt: file not found"):
        _teacher(tmp_path / "missing.pt", spec, modes48)
    with pytest.raises(TeacherError, match="a folder; name the checkpoint"):
        _teacher(tmp_path, spec, modes48)
    other = InputSpec(48, 64, cameras=1, stack=1, n_modes=len(modes48), horizon=1)
    with pytest.raises(TeacherError, match=r"h1\.pt: input .* does not match the student's"):
        _teacher(_gru(tmp_path / "h1.pt", other, modes48, seed=0), spec, modes48)
    with pytest.raises(TeacherError, match=r"modes.pt: trained on cameras \['left'\] and modes \['x'"):
        _teacher(_gru(tmp_path / "modes.pt", InputSpec(48, 64, 1, 1, 1, 2), ("x",), seed=0),
                 InputSpec(48, 64, 1, 1, 1, 2), ("y",))
    gru = _gru(tmp_path / "gru.pt", spec, modes48, seed=0)
    with pytest.raises(TeacherError, match="gru.pt: is recurrent but the student"):
        _teacher(gru, spec, modes48, recurrent=False)
    with pytest.raises(TeacherError, match="speed.pt: reads the car's speed; .*--speed-input on"):
        _teacher(_gru(tmp_path / "speed.pt", spec, modes48, seed=0, speed_input=True), spec, modes48)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read")
    manifest = tmp_path / "e.json"
    manifest.write_text(json.dumps({"format": "driver-ensemble", "version": 1, "members": [
        {"path": "gru.pt", "sha256": _sha(gru)}, {"path": "m.onnx", "sha256": _sha(onnx)}]}))
    with pytest.raises(TeacherError, match=r"member .*m.onnx is not a checkpoint \(.pt\)"):
        _teacher(manifest, spec, modes48)
    # through driver train: the run folder is not left behind
    with pytest.raises(TeacherError, match="h1.pt: input"):
        train(_cfg(store48, tmp_path / "runs", arch="squeezenet_gru", arch_kwargs=GRU_KW, name="bad",
                   teacher=str(tmp_path / "h1.pt")))
    assert not (tmp_path / "runs" / "bad").exists()


def _sha(path):
    from driver.ensemble import file_sha256

    return file_sha256(path)


def test_budget_calibration_times_the_teachers_passes(store48, modes48, tmp_path):  # noqa: F811
    from driver.training.budget import seconds_per_step
    from driver.training.distributed import DistInfo
    from driver.training.setup import prepare

    spec = InputSpec(48, 64, cameras=1, stack=1, n_modes=len(modes48), horizon=2)
    cfg = _cfg(store48, tmp_path, arch="squeezenet_gru", arch_kwargs=GRU_KW,
               teacher=_gru(tmp_path / "t.pt", spec, modes48, seed=0))
    setup = prepare(cfg, DistInfo(), fresh=True)
    calls = []
    targets = setup.teacher.targets
    setup.teacher.targets = lambda *a: calls.append(1) or targets(*a)
    before = {k: v.clone() for k, v in setup.model.state_dict().items()}
    assert seconds_per_step(setup, budget_s=10.0) > 0
    assert len(calls) >= 4  # every timed step (and the warm-up) ran the teacher
    assert all(torch.equal(before[k], v) for k, v in setup.model.state_dict().items())
