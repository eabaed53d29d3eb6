"""Model choice by driving: checkpoints scored by pace × autonomy on held-out sim worlds, during training too."""

import json

import pytest
import torch

from driver.datasets.ingest import IngestConfig, ingest
from driver.models import InputSpec, create_model
from driver.sim.model_choice import DriveEvalConfig, parse_tracks, pick_best, rank_disagreement
from driver.sim.record import SimRecordConfig, record_runs
from driver.training import TrainConfig, load_checkpoint, train
from driver.training.checkpoint import model_payload, preprocess_info, save_checkpoint
from driver.training.metrics import read_metrics

SPEC = InputSpec(48, 64, cameras=1, stack=1, n_modes=0, horizon=1)


def _constant_checkpoint(path, steer: float, motor: float):
    """A real squeezenet checkpoint whose output is always (steer, motor): output layer weights 0, bias set."""
    model = create_model("squeezenet", SPEC)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
            and m.bias is not None and m.bias.numel() == SPEC.outputs][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([steer, motor]))
    save_checkpoint(path, {**model_payload(model), "config": {"channels_last": True},
                           "preprocess": preprocess_info(SPEC, ("left",), ())})
    return path


@pytest.mark.slow
def test_closed_loop_choice_picks_the_better_driving_checkpoint(tmp_path):
    # "swerves" is faster (higher pace) but leaves the road again and again; "steady" keeps to it.
    swerves = _constant_checkpoint(tmp_path / "swerves.pt", steer=1.0, motor=0.6)
    steady = _constant_checkpoint(tmp_path / "steady.pt", steer=0.0, motor=0.3)
    config = DriveEvalConfig(tracks=1, fps=30.0, height=48, width=64, seconds=4.0)
    best, scores = pick_best([swerves, steady], config)
    assert best == steady
    assert scores[0]["drive_pace"] > scores[1]["drive_pace"]  # pace alone would choose the wrong one
    assert scores[0]["drive_autonomy"] < 99 and scores[1]["drive_autonomy"] == pytest.approx(100.0)
    assert scores[1]["drive_score"] > scores[0]["drive_score"] >= 0
    assert pick_best([steady, swerves], config)[0] == steady  # the order does not matter


def test_rank_disagreement_and_track_parsing():
    assert rank_disagreement([(1.0, 0.5), (2.0, 0.4), (3.0, 0.3)]) == (0, 3)  # lower loss drives better
    assert rank_disagreement([(1.0, 0.3), (2.0, 0.5)]) == (1, 1)
    assert parse_tracks("3") == 3 and parse_tracks("1, 4,7") == [1, 4, 7]
    for bad in ("", "x", "-1", "0", "1,-2"):
        with pytest.raises(ValueError, match="eval_closed_loop="):
            parse_tracks(bad)
    with pytest.raises(ValueError, match="every=5 needs eval_closed_loop"):
        TrainConfig(every=5)
    with pytest.raises(ValueError, match="eval_closed_loop='a,b'"):
        TrainConfig(eval_closed_loop="a,b")


@pytest.mark.slow
def test_training_keeps_best_pt_by_driving_and_logs_both_scores(tmp_path):
    record_runs(SimRecordConfig(out=tmp_path / "runs", runs=3, seconds=4, height=48, width=64))
    store = tmp_path / "s.zarr"
    assert ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=str(store))).ok
    r = train(TrainConfig(data=str(store), arch="squeezenet_gru", arch_kwargs={"hidden_size": 8}, stack=1,
                          clip_length=3, horizon=1, batch_size=4, epochs=1, steps_per_epoch=4, out=str(tmp_path),
                          name="drive", progress=False, precision="fp32", val_fraction=0.34, warmup_steps=0,
                          eval_closed_loop="1", every=2, eval_seconds=3.0))
    rows = read_metrics(r.run_dir / "metrics.csv")
    drives = [x for x in rows if x["split"] == "drive"]
    assert [int(x["step"]) for x in drives] == [2, 4]
    assert all(x["loss"] and x["score"] and x["drive_score"] and x["drive_pace"] for x in drives)  # both beside
    scores = [float(x["drive_score"]) for x in drives]
    best = load_checkpoint(r.best_checkpoint)["metrics"]
    assert best["step"] == [2, 4][scores.index(max(scores))]  # the first of equals
    assert best["drive_score"] == pytest.approx(max(scores), rel=1e-5)
    choice = json.loads((r.run_dir / "model_choice.json").read_text())
    assert choice == r.model_choice and choice["drives"] == 2 and choice["pairs"] == 1
    assert choice["best_by_driving_step"] == best["step"]
    assert choice["discordant_pairs"] == rank_disagreement([(h["val_score"], h["drive_score"])
                                                            for h in choice["history"]])[0]
