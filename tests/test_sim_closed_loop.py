"""Closed-loop evaluation: the expert drives ~100%, a no-steering controller fails, the formula, media."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from driver.sim.closed_loop import (
    ClosedLoopConfig,
    ClosedLoopResult,
    ExpertController,
    autonomy_percent,
    count_interventions,
    drive_closed_loop,
    write_closed_loop_media,
)


class Straight:
    """A controller that never steers."""

    def __init__(self):
        self.resets = 0
        self.shapes = []

    def reset(self):
        self.resets += 1

    def act(self, left, right):
        self.shapes.append((left.shape, None if right is None else right.shape))
        return 0.0, 0.5


def test_autonomy_formula_matches_pilotnet():
    assert autonomy_percent(10, 600) == pytest.approx(90.0)  # PilotNet's worked example
    assert autonomy_percent(0, 12.0) == 100.0
    assert autonomy_percent(3, 12.0) == pytest.approx(-50.0)  # goes negative
    with pytest.raises(ValueError):
        autonomy_percent(1, 0.0)


def test_count_interventions_on_a_synthetic_cte_sequence():
    cte = np.array([0.0, 0.1, 0.35, 0.4, 0.1, -0.2, -0.31, -0.1, 0.0, 0.5])
    assert count_interventions(cte, 0.3) == 3
    assert count_interventions(cte, 1.0) == 0
    assert count_interventions(np.array([0.9, 0.9]), 0.3) == 1


@pytest.fixture(scope="module")
def expert_result():
    cfg = ClosedLoopConfig(tracks=[0, 1, 2], split="eval", laps=1.0, height=48, width=64, video_frames=20)
    return drive_closed_loop(ExpertController(), cfg)


def test_expert_scores_near_100_on_held_out_tracks(expert_result):
    assert expert_result.autonomy >= 98.0
    for ep in expert_result.episodes:
        assert ep.laps >= 1.0 and ep.autonomy >= 98.0
        assert len(ep.path) == len(ep.cte) > 0
    s = expert_result.summary()
    assert s["interventions"] == 0 and s["mean_abs_cte_m"] < 0.05 and s["mean_speed_mps"] > 0.8


def test_noisy_expert_still_drives():
    cfg = ClosedLoopConfig(tracks=[3], laps=1.0, height=24, width=32, video_frames=0)
    assert drive_closed_loop(ExpertController(noise=0.15), cfg).autonomy >= 90.0


def test_no_steering_controller_scores_badly():
    ctrl = Straight()
    res = drive_closed_loop(ctrl, ClosedLoopConfig(tracks=[0, 1], max_seconds=20, stereo=True, height=32, width=48))
    assert res.autonomy < 50.0 and res.interventions > 2
    assert ctrl.resets == res.interventions + 2  # one reset per track and one per intervention
    assert ctrl.shapes[0] == ((32, 48, 3), (32, 48, 3))
    assert res.episodes[0].intervention_xy.shape == (res.episodes[0].interventions, 2)
    assert res.interventions_per_km > 0


def test_fixed_threshold_and_result_totals():
    res = drive_closed_loop(Straight(), ClosedLoopConfig(tracks=[0], max_seconds=5, cte_threshold=0.5,
                                                         height=24, width=32, video_frames=0))
    ep = res.episodes[0]
    assert ep.threshold == 0.5
    assert isinstance(res, ClosedLoopResult) and res.elapsed_s == pytest.approx(5.0)
    assert res.autonomy == pytest.approx((1 - ep.interventions * 6 / 5.0) * 100)


def test_media_png_and_mp4_open(expert_result, tmp_path):
    files = write_closed_loop_media(expert_result, tmp_path)
    pngs = [f for f in files if f.suffix == ".png"]
    mp4s = [f for f in files if f.suffix == ".mp4"]
    assert len(pngs) == len(mp4s) == 3
    img = cv2.imread(str(pngs[0]))
    assert img is not None and img.shape[0] > 100
    cap = cv2.VideoCapture(str(mp4s[0]))
    assert cap.isOpened()
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n += 1
        assert frame.shape[1] >= 320
    cap.release()
    assert n == 20


def test_config_validation():
    with pytest.raises(ValueError, match="cte_threshold=9"):
        ClosedLoopConfig(cte_threshold=9)
    with pytest.raises(ValueError, match="split='x'"):
        ClosedLoopConfig(split="x")
