"""driver train: every arch steps, learning happens, resume is exact, bad input is named. (Data-parallel training,
2 gloo ranks under torchrun, is tests/test_remote_training.py's first test.)"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from driver.cli import main as cli_main
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.store import StoreError, create_store
from driver.datasets.synthetic import write_synthetic_runs
from driver.models import list_models
from driver.training import CheckpointError, TrainConfig, TrainingError, load_checkpoint, model_from_checkpoint, train
from tests.limits import SAFETY_S

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _store(root, n_runs, h, w, stereo=False, frames=120, seed=0):
    write_synthetic_runs(root / "runs", n_runs, n_frames=frames, height=h, width=w, stereo=stereo, seed=seed)
    out = root / "s.zarr"
    assert ingest(IngestConfig(sources=[str(root / "runs")], out=str(out))).ok
    return out


@pytest.fixture(scope="module")
def store64(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("s64"), 3, 64, 96)


@pytest.fixture(scope="module")
def store48(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("s48"), 4, 48, 64, frames=160, seed=1)


def _cfg(store, out, **kw):
    base = {"data": str(store), "cameras": "left", "stack": 1, "clip_length": 2, "horizon": 2, "target_stride": 1,
            "batch_size": 4, "epochs": 1, "steps_per_epoch": 2, "out": str(out), "progress": False,
            "warmup_steps": 0, "precision": "fp32", "val_fraction": 0.34, "precise_bn": 32}
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", list_models())
def test_every_arch_trains_a_few_steps(store64, tmp_path, arch):
    # small widths: AlexNet's default 4096-wide head is 21 M parameters here, 6 CPU-s of checkpoint writing
    kwargs = {"hidden_size": 16} if "lstm" in arch or "gru" in arch else {"fc_width": 256} if arch == "alexnet" else {}
    r = train(_cfg(store64, tmp_path, arch=arch, arch_kwargs=kwargs, precision="auto", stack=2, name=arch))
    assert r.steps == 2 and r.final_val["clips"] > 0
    ck = load_checkpoint(r.last_checkpoint)
    assert ck["arch"] == arch and ck["config"]["arch"] == arch
    assert ck["preprocess"]["height"] == 64 and ck["units"]["neutral"] == 49.0
    assert len(ck["dataset"]["fingerprint"]) == 64
    model = model_from_checkpoint(ck)  # no other file needed
    assert model.spec.channels == 6 and model.is_recurrent == ("lstm" in arch or "gru" in arch)
    assert (r.run_dir / "metrics.csv").exists() and (r.run_dir / "loss.png").exists()
    assert any((r.run_dir / "tensorboard").iterdir())


@pytest.mark.slow
def test_loss_decreases_on_a_learnable_task(store48, tmp_path):
    cfg = _cfg(store48, tmp_path, arch="squeezenet", arch_kwargs={"base_width": 32, "width_increment": 16},
               clip_length=1, horizon=1, batch_size=16, epochs=3, steps_per_epoch=40, lr=3e-3, name="learn",
               flip=0.0, val_runs=["run_003"], motor_weight=0.0)  # the stripe gives the steering away
    r = train(cfg)
    rows = [x for x in _rows(r.run_dir) if x["split"] == "val"]
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.6 * first, rows
    assert r.best_val["steer_mae"] < 12.0 and r.best_val["steer"]["r2"] > 0.6  # run units
    assert r.best_val["steer"]["mae"] < 0.6 * r.best_val["steer"]["const_mae"]  # beats the constant predictor


def _rows(run_dir):
    import csv

    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _train_cmd(store, out, name, *extra):
    return [sys.executable, "-m", "driver.cli", "train", "--data", str(store), "--arch", "squeezenet_gru",
            "--arch-kwargs", '{"hidden_size": 8, "base_width": 16, "width_increment": 16}', "--cameras",
            "left", "--stack", "2", "--clip-length", "3",
            "--horizon", "2", "--batch-size", "4", "--epochs", "3", "--steps-per-epoch", "8",
            "--checkpoint-every", "2", "--val-every", "5", "--precision", "bf16", "--warmup-steps", "4",
            "--val-fraction", "0.25", "--precise-bn", "32", "--out", str(out), "--name", name, "--no-progress",
            *extra]


def kill_after_checkpoint(cmd: list[str], run_dir) -> object:
    """Start the training ``cmd``, SIGKILL it soon after its first ``last.pt`` in ``run_dir``; that path."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "last.pt"
    deadline = time.time() + SAFETY_S
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return ckpt


def resume_run(run_dir, *extra: str) -> subprocess.CompletedProcess:
    """``driver train --resume run_dir`` in a process of its own (asserted only by the caller)."""
    return subprocess.run([sys.executable, "-m", "driver.cli", "train", "--resume", str(run_dir), *extra],
                          env=ENV, capture_output=True, text=True)


def assert_same_model(a: dict, b: dict, what: str) -> None:
    """Two checkpoints hold bit-identical model weights."""
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs {what}"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--ema", "0.9"]], ids=["trained", "weight-average"])
def test_resume_after_kill_equals_uninterrupted(store48, tmp_path, extra):
    # the uninterrupted reference trains in this process (torch is imported already); the run that is killed,
    # and its resume, in processes of their own. One thread in each (OMP_NUM_THREADS caps the automatic count).
    # With --ema the checkpoint's model is the weight average and the trained weights travel beside it
    assert cli_main(_train_cmd(store48, tmp_path, "full", "--threads", "1", *extra)[3:]) == 0
    ckpt = kill_after_checkpoint(_train_cmd(store48, tmp_path, "killed", *extra), tmp_path / "killed")
    step = load_checkpoint(ckpt)["training"]["step"]
    assert 0 < step < 24, "the run finished before it was killed"
    resumed = resume_run(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(ckpt)
    assert a["training"]["step"] == b["training"]["step"] == 24
    assert_same_model(a, b, f"after a kill at step {step}")
    assert ("trained_model" in b["training"]) == bool(extra)
    for k in a["training"].get("trained_model", {}):
        assert torch.equal(a["training"]["trained_model"][k], b["training"]["trained_model"][k]), k
    def val_rows(run):
        rows = _rows(tmp_path / run)
        return [(r["step"], r["loss"], r["steer_mae"], r["motor_mae"]) for r in rows if r["split"] == "val"]

    assert val_rows("full") == val_rows("killed") and len(val_rows("full")) == 4  # steps 5, 10, 15, 20
    def train_rows(run):  # the losses logged every 10 steps, the first one after the resume included
        return [(r["step"], r["loss"]) for r in _rows(tmp_path / run) if r["split"] == "train"]

    assert train_rows("full") == train_rows("killed") and len(train_rows("full")) >= 5  # 8, 10, 16, 20, 24


def test_bad_input_is_named(store64, tmp_path):
    with pytest.raises(StoreError, match="not a store"):
        train(_cfg(tmp_path / "nowhere", tmp_path, arch="squeezenet"))
    create_store(tmp_path / "empty.zarr")
    with pytest.raises(StoreError, match="holds no runs"):
        train(_cfg(tmp_path / "empty.zarr", tmp_path, arch="squeezenet"))
    with pytest.raises(StoreError, match="no run matches include_labels"):
        train(_cfg(store64, tmp_path, arch="squeezenet", include_labels=["snow"]))
    with pytest.raises(StoreError, match="no clips of length 64"):
        train(_cfg(store64, tmp_path, arch="squeezenet", clip_length=64, horizon=90))
    with pytest.raises(ValueError, match="arch='resnet' is not a known model; choose one of"):
        train(_cfg(store64, tmp_path, arch="resnet"))
    with pytest.raises(ValueError, match=r"batch_size=0 must be an integer in 1\.\.65536"):
        _cfg(store64, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"data": "x", "learning_rate": 1})


def test_nan_loss_stops_cleanly(store64, tmp_path):
    cfg = _cfg(store64, tmp_path, arch="squeezenet", optimizer="sgd", lr=10.0, momentum=0.99, grad_clip=0.0,
               epochs=4, steps_per_epoch=10, batch_size=8, name="nan", clip_length=1)
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at step \d+"):
        train(cfg)


def test_checkpoint_of_another_image_size_is_refused(store64, store48, tmp_path):
    r = train(_cfg(store64, tmp_path, arch="squeezenet", name="a"))
    cfg = json.loads((r.run_dir / "config.json").read_text())
    cfg["data"] = str(store48)  # the run's data replaced by 48x64 frames
    (r.run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match the data"):
        train(resume=r.run_dir)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt: not a loadable checkpoint"):
        load_checkpoint(bad)


@pytest.mark.slow
def test_disk_full_keeps_the_last_good_checkpoint(store64, tmp_path):
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))\n"
        "from driver.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    cmd = [sys.executable, "-c", code, "train", "--data", str(store64), "--arch", "squeezenet",
           "--arch-kwargs", '{"base_width": 16}', "--cameras", "left", "--stack", "1", "--clip-length", "1",
           "--horizon", "1", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2",
           "--out", str(tmp_path), "--name", "full", "--no-progress", "--precision", "fp32"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 2
    assert "could not write checkpoint" in r.stderr
    assert not list(tmp_path.rglob("*.tmp"))
    if (tmp_path / "full" / "last.pt").exists():
        assert "the previous checkpoint is intact" in r.stderr and "--resume" in r.stderr
    else:  # the first checkpoint failed: nothing to resume, no half-made run folder left behind
        assert "no checkpoint was saved" in r.stderr and not (tmp_path / "full").exists()


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    with pytest.raises((StoreError, ValueError)):
        train(_cfg(tmp_path / "missing.zarr", tmp_path / "out", arch="squeezenet", name="never"))
    assert not (tmp_path / "out" / "never").exists()
