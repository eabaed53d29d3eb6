"""Recipes that fit the data, baselines and health in training, and resume/failure behaviour of driver train."""

import dataclasses
import json
import logging
import math
import time

import numpy as np
import pytest
import torch

from driver.datasets.clips import ClipConfig, ClipDataset
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.run_writer import write_run
from driver.datasets.store import Store
from driver.datasets.synthetic import synthetic_segments
from driver.models import InputSpec, create_model
from driver.progress import Progress
from driver.training import TrainConfig, TrainingError, load_checkpoint, model_from_checkpoint, train
from driver.training.budget import paced_epochs
from driver.training.config import parse_budget
from driver.training.distributed import DistInfo
from driver.training.evaluate import LabelStats, _metrics, balance_factors, running_error_ratios, val_chains
from driver.training.health import HealthMonitor, blown_up
from driver.training.metrics import read_metrics
from driver.training.recipe import auto_lr, clip_config, resolve_data
from driver.training.setup import prepare
from driver.training.state import TrainingState
from driver.training.trainer import Trainer, _load_resume


@pytest.fixture(scope="module")
def mono50(tmp_path_factory):
    """Four mono 48x64 runs at 50 frames/s."""
    root = tmp_path_factory.mktemp("mono50")
    (root / "runs").mkdir()
    for i in range(4):
        segs = synthetic_segments(40 + i, n_frames=200, height=48, width=64, stereo=False, n_segments=1)
        for seg in segs:
            t = seg["left_timestamp"]
            seg["left_timestamp"] = t[0] + (t - t[0]) * 30.0 / 50.0
        write_run(root / "runs" / f"r{i}.h5", segs, {"direct": 1})
    assert ingest(IngestConfig(sources=[str(root / "runs")], out=str(root / "s.zarr"))).ok
    return root / "s.zarr"


def _tiny(store, out, **kw):
    base = {"data": str(store), "arch": "squeezenet_gru", "stack": 1, "batch_size": 4, "epochs": 1,
            "steps_per_epoch": 3, "out": str(out), "progress": False, "precision": "fp32", "val_fraction": 0.25,
            "precise_bn": 32, "arch_kwargs": {"hidden_size": 8, "base_width": 16, "width_increment": 16}}
    return TrainConfig(**{**base, **kw})


def test_seconds_become_frames_at_the_store_rate_and_cameras_default_to_the_store(mono50, tmp_path):
    r = train(_tiny(mono50, tmp_path, name="secs", clip_seconds=0.1, horizon_seconds=0.4,
                    target_stride_seconds=0.1))
    cfg = json.loads((r.run_dir / "config.json").read_text())
    assert (cfg["cameras"], cfg["clip_length"], cfg["target_stride"], cfg["horizon"]) == ("left", 5, 5, 5)
    assert cfg["lr"] == pytest.approx(auto_lr(4 * 5, 48, 64)) and cfg["warmup_steps"] == 0
    assert cfg["flip_scope"] == "run"  # a recurrent model's lanes see one world per run
    ck = load_checkpoint(r.last_checkpoint)
    assert ck["spec"]["horizon"] == 5 and ck["preprocess"]["cameras"] == ["left"]
    assert ck["label_stats"]["mean"][1] > 0  # the synthetic throttle is above neutral


def test_flip_scope_and_stack_auto_fit_recurrent_and_frame_models(mono50):
    store = Store(mono50)
    for arch, given, resolved in [("squeezenet_gru", "auto", "run"), ("z2color_lstm", "auto", "run"),
                                  ("pilotnet", "auto", "clip"), ("squeezenet", "auto", "clip"),
                                  ("squeezenet_gru", "clip", "clip"), ("pilotnet", "run", "run")]:
        cfg = resolve_data(TrainConfig(data=str(mono50), arch=arch, flip_scope=given), store, store.runs)
        assert cfg.flip_scope == resolved, (arch, given)
        assert clip_config(cfg).flip_scope == resolved
    # stack 0 (the default): one frame for recurrent models, the lab's previous + current for frame models
    for arch, given, resolved in [("squeezenet_gru", 0, 1), ("z2color_lstm", 0, 1), ("squeezenet", 0, 2),
                                  ("z2color", 0, 2), ("squeezenet_gru", 2, 2), ("squeezenet", 1, 1)]:
        cfg = resolve_data(TrainConfig(data=str(mono50), arch=arch, stack=given), store, store.runs)
        assert cfg.stack == clip_config(cfg).stack == resolved, (arch, given)
    with pytest.raises(ValueError, match="flip_scope='lanes' must be one of auto, clip, run"):
        TrainConfig(flip_scope="lanes")
    with pytest.raises(ValueError, match="stack=3 must be an integer in 0..2"):
        TrainConfig(stack=3)


def test_a_stereo_flag_on_mono_runs_names_the_flag_and_leaves_no_run_folder(mono50, tmp_path):
    with pytest.raises(ValueError, match="--cameras both needs a right camera .* use --cameras left"):
        train(_tiny(mono50, tmp_path, name="stereo", cameras="both"))
    with pytest.raises(ValueError, match="do not fit arch"):
        train(_tiny(mono50, tmp_path, name="badkw", arch_kwargs={"no_such": 1}))
    assert not (tmp_path / "stereo").exists() and not (tmp_path / "badkw").exists()


def test_validation_reports_baselines_per_run_and_picks_best_by_the_median(mono50, tmp_path):
    r = train(_tiny(mono50, tmp_path, name="val", val_fraction=0.5, steps_per_epoch=4, epochs=2))
    val = r.best_val
    assert set(val["runs"]) == set(json.loads((r.run_dir / "split.json").read_text())["val"]) and len(val["runs"]) == 2
    assert val["score"] == pytest.approx(float(np.median([x["score"] for x in val["runs"].values()])))
    for target in ("steer", "motor"):
        assert val[target]["const_mae"] > 0 and val[target]["r2"] is not None
    rows = read_metrics(r.run_dir / "val_runs.csv")
    assert len(rows) == 4 and {"steer_r2", "motor_const_mae"} <= set(rows[0])
    metrics = [x for x in read_metrics(r.run_dir / "metrics.csv") if x["split"] == "val"]
    assert metrics[0]["steer_const_mae"] and metrics[0]["score"]


def _sums(steer_err, motor_err, steer: np.ndarray, motor: np.ndarray, loss: float) -> np.ndarray:
    """evaluate()'s per-run sums (clips, loss, frames, then per target |e|, e², |c-y|, (c-y)², y, y²) of one
    run scored frame by frame, the constant predicting each target's mean."""
    row = [len(steer), loss * len(steer), len(steer)]
    for e, y in ((steer_err, steer), (motor_err, motor)):
        c = y.mean() - y
        row += [np.abs(e).sum(), (e * e).sum(), np.abs(c).sum(), (c * c).sum(), y.sum(), (y * y).sum()]
    return np.asarray(row, dtype=np.float64)


def test_the_score_weighs_each_targets_error_against_the_constant_not_the_loss():
    rng = np.random.default_rng(0)
    steer, motor = 50 + 10 * rng.standard_normal(500), 49 + 8 * rng.standard_normal(500)
    unit = rng.standard_normal((2, 500))
    unit = (unit - unit.mean(1, keepdims=True)) / unit.std(1, keepdims=True)  # mean 0, mean square 1
    const = (steer.mean() - steer, motor.mean() - motor)
    constant = _metrics(_sums(*const, steer, motor, 1.0)[None], ["run"], True, (1.0, 0.5))
    assert constant["score"] == pytest.approx(1.0)  # the constant predictor scores 1.0
    # a barely predictable throttle (MSE 58 of 64) and sharp steering (MSE 1) against better throttle (50) and
    # steering twice as far off (MSE 4): the normalised loss prefers the second, the score the first
    sharp = _sums(1.0 * unit[0], np.sqrt(58) * unit[1], steer, motor, (1 / 100 + 0.5 * 58 / 64) / 1.5)
    blunt = _sums(2.0 * unit[0], np.sqrt(50) * unit[1], steer, motor, (4 / 100 + 0.5 * 50 / 64) / 1.5)
    scores = [_metrics(r[None], ["run"], True, (1.0, 0.5)) for r in (sharp, blunt)]
    assert scores[0]["loss"] > scores[1]["loss"] and scores[0]["score"] < scores[1]["score"]
    ratios = np.log(2 / (steer.var() + 1)) + 0.5 * np.log(59 / (motor.var() + 1))  # (MSE + 1) / (const MSE + 1)
    assert scores[0]["score"] == pytest.approx(np.exp(ratios / 1.5))
    # the median over runs: a run where the driver lost control does not decide
    lost = _sums(30 * unit[0], 30 * unit[1], steer, motor, 9.0)
    three = _metrics(np.stack([sharp, lost, blunt]), ["a", "b", "c"], True, (1.0, 0.5))
    assert three["score"] == pytest.approx(three["runs"]["c"]["score"]) and three["runs"]["b"]["score"] > 1
    assert _metrics(sharp[None], ["run"], False, (1.0, 0.5))["score"] == pytest.approx(scores[0]["loss"])
    # a run saved with the loss as its score starts the comparison afresh on resume
    old = {"step": 5, "epoch": 0, "batch_in_epoch": 5, "best_val_loss": 0.3, "bad_validations": 0}
    assert TrainingState.from_checkpoint(old, 0, torch.device("cpu")).best_score == np.inf
    saved = TrainingState(best_score=0.2).to_dict()
    assert TrainingState.from_checkpoint(saved, 0, torch.device("cpu")).best_score == 0.2


def test_loss_balance_weighs_each_target_by_its_running_error_ratio(mono50, tmp_path):
    cfg = TrainConfig(steer_weight=1.0, motor_weight=0.5)
    assert balance_factors(cfg, (1.0, 1.0)) == pytest.approx((1.0, 1.0))  # at the constant predictor: as before
    b = balance_factors(cfg, (0.02, 0.9))  # steering nearly learned, throttle barely: steering's weight grows
    assert b[0] / b[1] == pytest.approx(0.9 / 0.02) and 1.0 * b[0] + 0.5 * b[1] == pytest.approx(1.5)
    stats = LabelStats((0.0, 0.0), (0.25, 0.04))
    out, target = torch.zeros(2, 3, 1, 2), torch.zeros(2, 3, 1, 2)
    target[..., 0], target[..., 1] = 0.5, 0.1  # squared errors 0.25 and 0.01: ratios 1.0 and 0.25
    assert running_error_ratios([1.0, 1.0], out, target, stats) == pytest.approx([1.0, 1.0 - 0.02 * 0.75])
    r = train(_tiny(mono50, tmp_path, name="bal", steps_per_epoch=3, epochs=1))  # on by default
    ratios = load_checkpoint(r.last_checkpoint)["training"]["error_ratios"]
    assert len(ratios) == 2 and ratios != [1.0, 1.0] and all(0 < x < 10 for x in ratios)
    saved = json.loads((r.run_dir / "config.json").read_text())
    assert saved["loss_balance"] is True
    del saved["loss_balance"]  # a run saved before the option trained without it, and resumes so
    (r.run_dir / "config.json").write_text(json.dumps(saved))
    assert _load_resume(r.run_dir, {})[0].loss_balance is False


def test_the_untrained_model_starts_at_the_constant_predictor(mono50, tmp_path):
    r = train(_tiny(mono50, tmp_path, name="mean", lr=1e-8, flip=0.0, steps_per_epoch=1, health_every=0,
                    speed_input="off", precise_bn=0))  # BatchNorm near its initial statistics: a black frame
    # then gives the GRU almost zero input, and the output is the head's bias
    ck = load_checkpoint(r.last_checkpoint)
    model = model_from_checkpoint(ck)
    out, _ = model(torch.zeros(1, 1, 3, 48, 64), torch.zeros(1, 6))
    mean = ck["label_stats"]["mean"]
    assert out[0, 0, 0].tolist() == pytest.approx(mean, abs=0.15)  # the bias holds the training mean


def test_not_learning_fails_when_asked_and_warns_by_default(mono50, tmp_path, caplog):
    kw = {"lr": 1e-8, "target_norm": False, "steps_per_epoch": 2, "learning_check_step": 1}
    with caplog.at_level(logging.WARNING, logger="driver.training"):
        train(_tiny(mono50, tmp_path, name="warn", **kw))
    assert "does not beat the constant predictor" in caplog.text
    with pytest.raises(TrainingError, match="does not beat the constant predictor.*not_learning=fail"):
        train(_tiny(mono50, tmp_path, name="fail", not_learning="fail", **kw))


def test_health_statistics_are_logged_and_blowups_named(mono50, tmp_path):
    r = train(_tiny(mono50, tmp_path, name="health", health_every=1, steps_per_epoch=2))
    rows = read_metrics(r.run_dir / "health.csv")
    layers = {x["layer"] for x in rows}
    assert {"norm", "norm.input", "rnn", "head", "encoder.features.stem.0"} <= layers
    assert all(float(x["grad_norm"]) >= 0 for x in rows if x["grad_norm"])
    model = create_model("squeezenet_gru", InputSpec(48, 64, 1, 1, 0, 1), hidden_size=8)
    with torch.no_grad():
        model.encoder.features.fires[7].expand3x3.bias[:2] = 5000.0  # two exploding channels
    monitor = HealthMonitor(model, None)
    monitor.start()
    model(torch.rand(2, 2, 3, 48, 64) - 0.5)
    problems = blown_up(monitor.finish(1), None, "bf16")
    assert any(p.startswith("encoder.features.fires.7.expand3x3") for p in problems), problems
    monitor.close()
    rows = {"few": {"act_max": 4012.0, "channel_ratio": 1300.0}, "huge": {"act_max": 10368.0, "channel_ratio": 5.0},
            "grown": {"act_max": 1440.0, "channel_ratio": 3.0}}  # grew 86x before a per-channel norm: harmless
    first = {"few": 40.0, "huge": 212.0, "grown": 16.7}
    assert blown_up(rows, first, "fp16") == [
        "few: largest activation 4,012, 100x its first value, largest channel 1,300x the median channel",
        "huge: largest activation 10,368, 49x its first value, largest channel 5x the median channel"]
    # bf16 and fp32 lose no precision at 10,368 (fp16 overflows at 65,504): only the few channels, divergence
    # and non-finite values are named there
    assert [p.split(":")[0] for p in blown_up(rows, first, "bf16")] == ["few"]
    rows |= {"diverged": {"act_max": 2.5e6, "channel_ratio": 2.0}, "nan": {"act_max": math.nan, "channel_ratio": 1.0}}
    assert [p.split(":")[0] for p in blown_up(rows, first, "fp32")] == ["few", "diverged", "nan"]


@pytest.mark.slow
def test_pacing_fits_the_epochs_to_the_time_left():
    # 8 epochs of 100 steps planned; at step 200 the speed so far decides how many fit the time left
    assert paced_epochs(8, 100, 200, 1.0, 600 / 0.95) == 8  # on plan
    assert paced_epochs(8, 100, 200, 1.0, 620 / 0.95) == 8  # within 5%: no change
    assert paced_epochs(8, 100, 200, 0.5, 600 / 0.95) == 14  # the machine got faster: 1,200 more steps fit
    assert paced_epochs(8, 100, 200, 2.0, 600 / 0.95) == 5  # slower: 300 more steps, whole epochs
    assert paced_epochs(8, 100, 200, 5.0, 10.0) == 2  # the time is up: never fewer than the epochs done
    assert paced_epochs(8, 100, 200, 1.0, -5.0) == 2


def test_budget_sizes_the_run(mono50, tmp_path):
    assert parse_budget("20m") == 1200 and parse_budget("1h30m") == 5400 and parse_budget("90s") == 90
    with pytest.raises(ValueError, match="budget='soon' must be a duration"):
        TrainConfig(data="x", budget="soon")
    r = train(_tiny(mono50, tmp_path, name="budget", budget="10s", steps_per_epoch=0, epochs=1))
    cfg = json.loads((r.run_dir / "config.json").read_text())
    planned = cfg["steps_per_epoch"] * cfg["epochs"]
    assert planned >= 1 and cfg["val_every"] > 0  # a machine too busy for a 10-s run still plans a step
    assert r.steps == planned if r.stopped == "completed" else r.steps < planned  # a busier machine: "budget"
    assert 0 <= cfg["warmup_steps"] <= 100 and r.stopped in ("completed", "budget")
    assert cfg["epochs"] >= min(2, planned)  # split into epochs so that pacing can re-plan at their ends


@pytest.mark.slow
def test_resume_keeps_best_val_extends_epochs_and_warns_on_other_flags(mono50, tmp_path, caplog):
    first = train(_tiny(mono50, tmp_path, name="res", steps_per_epoch=3, epochs=1))
    with caplog.at_level(logging.WARNING, logger="driver.training"):
        again = train(resume=first.run_dir, overrides={"lr": 0.5, "epochs": None})
    assert "already complete" in caplog.text and "ignored: --lr" in caplog.text
    assert again.best_val == first.best_val and again.samples_per_s is None and again.steps == 3
    longer = train(resume=first.run_dir, overrides={"epochs": 2})
    assert longer.steps == 6 and longer.epochs == 2 and longer.best_val
    with pytest.raises(ValueError, match="a resume can only extend"):
        train(resume=first.run_dir, overrides={"epochs": 1})


def test_old_recurrent_checkpoints_keep_loading(tmp_path):
    spec = InputSpec(48, 64, 1, 1, 6, 1)
    old = create_model("squeezenet_gru", spec, hidden_size=8, feature_norm="layer", pool="avg")  # before issue 18
    ckpt = {"arch": "squeezenet_gru", "spec": spec.to_dict(), "arch_kwargs": {"hidden_size": 8},  # knobs not recorded
            "model": old.state_dict()}
    model = model_from_checkpoint(ckpt)
    assert isinstance(model.norm, torch.nn.LayerNorm) and isinstance(model.encoder.pool[0], torch.nn.AdaptiveAvgPool2d)
    new = create_model("squeezenet_gru", spec, hidden_size=8).arch_kwargs
    assert (new["feature_norm"], new["pool"]) == ("batch", "spatial")  # recorded, so they rebuild the same


def test_progress_prints_lines_without_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="driver.progress"), \
            Progress("train", total=10, done=2, tty=False, every_s=0.0) as p:
        p.update(5, loss="loss 0.1234")
    assert "train 5/10 (50%)" in caplog.text and "ETA" in caplog.text and "loss 0.1234" in caplog.text


def test_cli_resume_of_a_finished_run_says_so(mono50, tmp_path, capsys, caplog):
    from driver.cli import main

    r = train(_tiny(mono50, tmp_path, name="cli"))
    assert main(["train", "--resume", str(r.run_dir), "--lr", "0.1"]) == 0  # in this process: no torch import
    out = capsys.readouterr().out
    assert "ignored: --lr" in caplog.text and "already complete" in caplog.text
    assert "no steps run in this process" in out and "0 frames/s" not in out


def test_recurrent_validation_walks_each_stretch_clip_after_clip(mono50):
    ds = ClipDataset(mono50, ClipConfig(clip_length=5, horizon=1, cameras=("left",)))
    runs, starts = ds.clip_index()
    chains = val_chains(ds, max_clips=40, world=1, rank=0)
    assert 0 < sum(map(len, chains)) <= 40 and {int(runs[c[0]]) for c in chains} == set(range(len(ds.runs)))
    for chain in chains:
        assert all(runs[a] == runs[b] and starts[b] == starts[a] + 5 for a, b in zip(chain, chain[1:], strict=False))
    whole = val_chains(ds, max_clips=10**6, world=1, rank=0)
    assert sum(map(len, whole)) >= len(ds) // 5 - len(whole)  # every stretch walked to its end
    halves = val_chains(ds, 10**6, 2, 0), val_chains(ds, 10**6, 2, 1)
    assert sorted(map(tuple, halves[0] + halves[1])) == sorted(map(tuple, whole))  # split across ranks


def test_checkpoints_carry_batchnorm_statistics_of_random_training_clips(mono50, tmp_path):
    from driver.training.distributed import DistInfo
    from driver.training.precise_bn import batchnorm_layers, recompute_batchnorm
    from driver.training.recipe import clip_config
    from driver.training.setup import autocast_for

    def stats(model):
        return [b.clone() for m in batchnorm_layers(model) for b in (m.running_mean, m.running_var)]

    def recomputed(run):  # the statistics the trainer's last recomputation must have left in last.pt
        ck = load_checkpoint(run.last_checkpoint)
        cfg = TrainConfig.from_dict({**ck["config"], "precise_bn": 48})
        model = model_from_checkpoint(ck)
        weights = {k: v.clone() for k, v in model.named_parameters()}
        ds = ClipDataset(ck["dataset"]["store"], clip_config(cfg, train=True), runs=list(ck["dataset"]["train_runs"]))
        autocast = autocast_for(cfg, torch.device("cpu"))[0]
        assert recompute_batchnorm(model, ds, cfg, "cpu", autocast, DistInfo(), ck["training"]["step"]) == 48
        assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())  # only the buffers change
        assert not model.training and all(m.momentum == 0.1 for m in batchnorm_layers(model))
        return stats(model_from_checkpoint(ck)), stats(model)

    kw = {"flip": 0.0, "steps_per_epoch": 6, "val_every": 4, "health_every": 0}
    saved, again = recomputed(train(_tiny(mono50, tmp_path, name="precise", precise_bn=48, **kw)))
    assert len(saved) == 2 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(saved, again, strict=True))
    saved, again = recomputed(train(_tiny(mono50, tmp_path, name="ema", precise_bn=0, **kw)))
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(saved, again, strict=True))  # the moving average
    frame_model = create_model("squeezenet", InputSpec(48, 64, 1, 1, 6, 1))
    assert not batchnorm_layers(frame_model)  # nothing to recompute: frame models carry no BatchNorm


def test_training_plans_follow_the_configured_curriculum(mono50, tmp_path):
    cfg = TrainConfig(data=str(mono50), arch="squeezenet_gru", arch_kwargs={"hidden_size": 8}, clip_length=3,
                      horizon=1, batch_size=4, random_clip_epochs=1, out=str(tmp_path), progress=False,
                      precision="fp32")
    plans = prepare(cfg, DistInfo(), fresh=True).plans
    assert plans.plan(0).reset.all() and not plans.plan(1).reset[1:].all()  # random clips, then walking lanes
    with pytest.raises(ValueError, match="random_clip_share=0.5 and random_clip_epochs=1: give the curriculum"):
        prepare(dataclasses.replace(cfg, random_clip_share=0.5), DistInfo(), fresh=True)


def test_curriculum_share_follows_a_budget_until_the_lanes_start(mono50, tmp_path):
    """--random-clip-share: resolved into epochs of the planned run, moved with each re-planned budget while
    random clips are drawn, fixed once the lanes walk (and written to config.json, which a resume reads)."""
    cfg = TrainConfig(data=str(mono50), arch="squeezenet_gru", arch_kwargs={"hidden_size": 8}, clip_length=3,
                      horizon=1, batch_size=4, epochs=10, steps_per_epoch=2, random_clip_share=0.5,
                      out=str(tmp_path), progress=False, precision="fp32")
    setup = prepare(cfg, DistInfo(), fresh=True)
    assert setup.config.random_clip_epochs == 5 and setup.plans.random_clip_epochs == 5
    (tmp_path / "run").mkdir()
    trainer = Trainer(setup, tmp_path / "run", None, time.perf_counter(), pace=True)

    def pace_at(epoch: int, steps_that_fit: float) -> int:
        """Re-plan at the end of ``epoch`` epochs, trained at 100 s a step (so that a stall of this process
        moves nothing), with time for ``steps_that_fit``."""
        now, step_s = time.perf_counter(), 100.0
        trainer.state.epoch, trainer.state.step, trainer.loop_start_step = epoch, 2 * epoch, 0
        trainer.loop_started = now - 2 * epoch * step_s
        trainer.deadline = now + (steps_that_fit - 2 * epoch) * step_s / 0.95
        trainer._pace(Progress("train", 1, enabled=False))
        saved = json.loads((tmp_path / "run" / "config.json").read_text())["random_clip_epochs"]
        assert setup.plans.random_clip_epochs == trainer.cfg.random_clip_epochs == saved
        return trainer.cfg.random_clip_epochs

    assert pace_at(2, 40.5) == 10 and trainer.cfg.epochs == 20  # more time: the curriculum stretches with it
    assert pace_at(4, 12.5) == 4 and trainer.cfg.epochs == 6  # less: it ends now (never before the epochs done)
    assert pace_at(5, 60.5) == 4 and trainer.cfg.epochs == 30  # the lanes walk: no going back to random clips
