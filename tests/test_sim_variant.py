"""World variants: deterministic, split like tracks, and they change road width, look and camera mount."""

from __future__ import annotations

import numpy as np
import pytest

from driver.sim.track import LANE_WIDTHS, make_track
from driver.sim.variant import CAMERA_HEIGHT_M, CAMERA_PITCH_DEG, make_variant, make_world


def test_variants_are_deterministic_and_split_like_tracks():
    assert make_variant(4, "train") == make_variant(4, "train")
    train = [make_variant(s, "train") for s in range(20)]
    evals = [make_variant(s, "eval") for s in range(20)]
    assert {v.style for v in train}.isdisjoint({v.style for v in evals})  # no eval look is a training look
    for v in train + evals:
        assert LANE_WIDTHS[0] <= v.lane_width <= LANE_WIDTHS[1]
        assert CAMERA_HEIGHT_M[0] <= v.camera.height_m <= CAMERA_HEIGHT_M[1]
        assert CAMERA_PITCH_DEG[0] <= v.camera.pitch_deg <= CAMERA_PITCH_DEG[1]
    assert len({round(v.lane_width, 6) for v in train}) == 20 and len({v.camera.pitch_deg for v in train}) == 20
    assert any(v.style.n_shadows for v in train) and any(v.style.seam_period for v in train)


def test_a_track_in_another_variant_keeps_its_geometry_and_takes_the_variant():
    own = make_world(2, "eval")
    other = make_world(2, "eval", variant=9, variant_split="eval")
    assert own.name == "eval/2" and other.name == "eval/2@eval/9"
    assert np.array_equal(own.track.xy, other.track.xy)
    assert own.track.lane_width == make_track(2, "eval").lane_width == own.variant.lane_width
    assert other.track.lane_width == make_variant(9, "eval").lane_width != own.track.lane_width
    pose = own.track.point_at(3.0)
    a1 = own.renderer(48, 64, seed=0).render(*pose)[0]
    a2 = own.renderer(48, 64, seed=0).render(*pose)[0]
    b = other.renderer(48, 64, seed=0).render(*pose)[0]
    assert np.array_equal(a1, a2)  # same world, same seed: same bytes
    assert np.abs(a1.astype(int) - b.astype(int)).mean() > 5  # another variant looks different


def test_bad_variant_split_names_the_choices():
    with pytest.raises(ValueError, match="split='test' must be one of train, eval"):
        make_variant(0, "test")
    with pytest.raises(ValueError, match="lane_width=5.0 must be in 0.2..3 m"):
        make_track(0, "train", lane_width=5.0)
