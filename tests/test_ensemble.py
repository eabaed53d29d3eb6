"""Ensembles: `driver ensemble` writes a manifest; load_policy drives its members as one (mean output)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from driver.cli import main as cli_main
from driver.ensemble import EnsembleConfig, EnsembleError, EnsemblePolicy, file_sha256, write_ensemble
from driver.models import InputSpec, create_model
from driver.policy import NonFiniteOutput, load_policy
from driver.sim.closed_loop import ClosedLoopConfig, drive_closed_loop
from driver.sim.policy_controller import PolicyController
from driver.training.checkpoint import model_payload, preprocess_info, save_checkpoint
from driver.vehicle.drive_config import DriveConfig
from driver.vehicle.drive_loop import drive
from tests.test_drive_fixtures import H, W, make_checkpoint

SPEC = InputSpec(H, W, cameras=1, stack=1, n_modes=0, horizon=1)


def _constant(path, steer: float, motor: float, horizon: int = 1):
    """A real squeezenet checkpoint whose output is always (steer, motor) at every step."""
    spec = InputSpec(H, W, cameras=1, stack=1, n_modes=0, horizon=horizon)
    model = create_model("squeezenet", spec)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None
            and m.bias.numel() == spec.outputs][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([steer, motor] * horizon))
    save_checkpoint(path, {**model_payload(model), "config": {"channels_last": True},
                           "preprocess": preprocess_info(spec, ("left",), ())})
    return path


def _gru(path, seed: int, modes=("direct", "follow"), size=(H, W)):
    torch.manual_seed(seed)
    spec = InputSpec(*size, cameras=1, stack=1, n_modes=len(modes), horizon=2)
    model = create_model("squeezenet_gru", spec, hidden_size=8)
    save_checkpoint(path, {**model_payload(model), "config": {"channels_last": True},
                           "preprocess": preprocess_info(spec, ("left",), tuple(modes)),
                           "label_stats": {"mean_run_units": [40.0 + seed, 60.0]}})
    return path


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def test_the_ensemble_acts_as_the_mean_of_its_members_state_and_all(tmp_path):
    paths = [_gru(tmp_path / f"m{k}.pt", seed=k) for k in range(3)]
    manifest = write_ensemble(EnsembleConfig(members=[str(p) for p in paths], out=str(tmp_path / "e.json"))).path
    ensemble = load_policy(manifest)
    assert isinstance(ensemble, EnsemblePolicy) and ensemble.is_recurrent
    assert (ensemble.height, ensemble.width, ensemble.modes) == (H, W, ("direct", "follow"))
    assert ensemble.label_stats == {"mean_run_units": [41.0, 60.0]}  # the members' constant predictors averaged
    alone = [load_policy(p) for p in paths]
    for i, frame in enumerate(_frames(6)):
        if i == 4:  # a reset reaches every member
            ensemble.reset()
            for p in alone:
                p.reset()
        got = ensemble.act(frame, mode={"direct": 1, "follow": 1})
        raws = [p.act(frame, mode={"direct": 1, "follow": 1}).raw for p in alone]
        np.testing.assert_allclose(got.raw, np.mean(raws, axis=0), rtol=1e-5, atol=1e-6)
        assert got.raw.shape == (2, 2) and got.steer_norm == pytest.approx(float(np.clip(got.raw[0, 0], -1, 1)))


def test_constant_members_average_exactly_and_drive_the_sim(tmp_path):
    a = _constant(tmp_path / "a.pt", steer=0.5, motor=0.2)
    b = _constant(tmp_path / "b.pt", steer=-0.3, motor=0.4)
    ensemble = load_policy(write_ensemble(EnsembleConfig(members=[str(a), str(b)],
                                                         out=str(tmp_path / "sub" / "ab.json"))).path)
    action = ensemble.act(_frames(1)[0])
    assert (action.steer_norm, action.motor_norm) == pytest.approx((0.1, 0.3), abs=1e-6)
    cautious = load_policy(write_ensemble(EnsembleConfig(members=[str(a), str(b)], out=str(tmp_path / "c.json"),
                                                         motor_caution=1.5)).path)
    assert cautious.motor_caution == 1.5 and json.loads((tmp_path / "c.json").read_text())["motor_caution"] == 1.5
    action = cautious.act(_frames(1)[0])  # the members' motors 0.2 and 0.4: mean 0.3, spread 0.1
    assert (action.steer_norm, action.motor_norm) == pytest.approx((0.1, 0.3 - 1.5 * 0.1), abs=1e-6)
    for bad in (-0.1, 3.5, True, "1"):
        with pytest.raises(EnsembleError, match=r"motor_caution=.* must be a number in 0..3"):
            EnsembleConfig(members=[str(a), str(b)], motor_caution=bad)
    result = drive_closed_loop(PolicyController(ensemble), ClosedLoopConfig(tracks=[0], height=H, width=W,
                                                                            max_seconds=2.0, video_frames=0))
    assert result.summary()["elapsed_s"] == pytest.approx(2.0, abs=0.1)


def test_members_that_take_other_inputs_or_predict_other_horizons_are_refused(tmp_path):
    ok = _gru(tmp_path / "ok.pt", seed=0)
    for other, what in [(_gru(tmp_path / "modes.pt", 1, modes=("direct",)), "modes="),
                        (_gru(tmp_path / "size.pt", 1, size=(32, 48)), "height=32")]:
        with pytest.raises(EnsembleError, match=rf"member .*{other.name} has {what}.*must be fed the same inputs"):
            write_ensemble(EnsembleConfig(members=[str(ok), str(other)], out=str(tmp_path / "x.json")))
    h1, h3 = _constant(tmp_path / "h1.pt", 0, 0), _constant(tmp_path / "h3.pt", 0, 0, horizon=3)
    with pytest.raises(EnsembleError, match="different horizons"):
        write_ensemble(EnsembleConfig(members=[str(h1), str(h3)], out=str(tmp_path / "x.json")))
    assert not (tmp_path / "x.json").exists()  # nothing written for a refused ensemble
    for members, match in [([str(ok)], "needs 2 or more"), ([str(ok), str(ok)], "names one file twice"),
                           ([str(ok), str(tmp_path)], "is a folder"), ([str(ok), str(tmp_path / "no.pt")],
                                                                      "not found")]:
        with pytest.raises(ValueError, match=f"members: .*{match}"):
            EnsembleConfig(members=members)
    with pytest.raises(ValueError, match=r"out='e.yaml' must end in .json"):
        EnsembleConfig(members=[str(ok), str(h1)], out="e.yaml")


def test_a_changed_missing_or_foreign_manifest_member_is_named(tmp_path):
    a, b = make_checkpoint(tmp_path / "a.pt", seed=0), make_checkpoint(tmp_path / "b.pt", seed=1)
    manifest = tmp_path / "e.json"
    write_ensemble(EnsembleConfig(members=[str(a), str(b)], out=str(manifest)))
    doc = json.loads(manifest.read_text())
    assert [m["path"] for m in doc["members"]] == ["a.pt", "b.pt"]  # relative: the folder can move
    make_checkpoint(b, seed=2)  # retrained in place
    with pytest.raises(EnsembleError, match=r"e.json: member b.pt changed since the ensemble was written"):
        load_policy(manifest)
    b.unlink()
    with pytest.raises(EnsembleError, match=r"e.json: member b.pt not found"):
        load_policy(manifest)
    for text, match in [("{", "not JSON"), ('{"format": "x"}', "not an ensemble manifest"),
                        ('{"format": "driver-ensemble", "version": 9}', "version 9"),
                        ('{"format": "driver-ensemble", "version": 1, "members": []}', "2 or more"),
                        ('{"format": "driver-ensemble", "version": 1, "combine": "max", "members": []}', "combine"),
                        ('{"format": "driver-ensemble", "version": 1, "motor_caution": -1, "members": []}',
                         "motor_caution=-1 must be")]:
        manifest.write_text(text)
        with pytest.raises(EnsembleError, match=f"e.json: .*{match}"):
            load_policy(manifest)


def test_a_member_that_outputs_nan_stops_the_ensemble_and_resets_every_member(tmp_path):
    good, bad = make_checkpoint(tmp_path / "good.pt"), make_checkpoint(tmp_path / "nan.pt", nan=True)
    ensemble = EnsemblePolicy([load_policy(good), load_policy(bad)])  # loads: a single NaN model loads too
    with pytest.raises(NonFiniteOutput, match="member .*nan.pt"):
        ensemble.act(_frames(1)[0])
    assert all(m._state is None for m in ensemble.members)


def test_cli_writes_the_manifest_and_sim_drive_takes_it(tmp_path, capsys, caplog):
    # the commands through driver.cli.main in this process: a subprocess each would only add torch's import
    a, b = make_checkpoint(tmp_path / "a.pt", seed=0), make_checkpoint(tmp_path / "b.pt", seed=1)
    assert cli_main(["ensemble", str(a), str(b)]) == 0
    assert f"wrote {tmp_path / 'ensemble.json'}: an ensemble of 2 models" in capsys.readouterr().out
    assert cli_main(["sim", "drive", "--model", str(tmp_path / "ensemble.json"), "--tracks", "1", "--max-seconds",
                     "1", "--no-media", "--out", str(tmp_path / "drive")]) == 0
    summary = json.loads((tmp_path / "drive" / "summary.json").read_text())
    assert summary["elapsed_s"] > 0 and summary["pace"] is not None
    assert cli_main(["ensemble", str(a)]) == 2 and "an ensemble needs 2 or more" in caplog.text


def test_the_car_loop_drives_an_ensemble_and_stops_in_neutral_on_a_nan_member(tmp_path):
    good = [make_checkpoint(tmp_path / f"g{k}.pt", seed=k) for k in range(2)]
    nan = make_checkpoint(tmp_path / "nan.pt", nan=True)
    loose = {"camera_timeout_ms": 2000.0, "deadline_ms": 5000.0, "status_every_s": 60.0, "warmup": 0,
             "record_dir": "", "width": W, "height": H}
    ok = write_ensemble(EnsembleConfig(members=[str(p) for p in good], out=str(tmp_path / "ok.json"))).path
    report = drive(DriveConfig(model=ok, camera="sim:3", seconds=1.0, **loose))
    assert (report.exit_code, report.reason) == (0, "duration") and report.model_ticks == report.ticks > 0
    bad = tmp_path / "bad.json"  # written by hand: `driver ensemble` itself refuses a NaN member
    bad.write_text(json.dumps({"format": "driver-ensemble", "version": 1, "members": [
        {"path": p.name, "sha256": file_sha256(p)} for p in (good[0], nan)]}))
    report = drive(DriveConfig(model=str(bad), camera="sim:3", seconds=1.0, **loose))
    assert (report.exit_code, report.reason, report.commands_sent) == (1, "output_invalid", 0)
