"""Procedural tracks: geometry, splits, and the cross-track query."""

from __future__ import annotations

import numpy as np
import pytest

from driver.sim.track import MIN_RADIUS, make_track


@pytest.fixture(scope="module")
def track():
    return make_track(3, "train")


def test_track_is_deterministic_and_splits_differ():
    a, b = make_track(5, "train"), make_track(5, "train")
    assert np.array_equal(a.xy, b.xy) and a.lane_width == b.lane_width
    assert not np.allclose(make_track(5, "eval").xy[:10], a.xy[:10])


@pytest.mark.parametrize("seed", range(4))
def test_track_geometry_in_range(seed):
    tr = make_track(seed, "eval")
    assert 20 <= tr.length <= 60
    assert 0.6 <= tr.lane_width <= 1.2
    assert np.abs(tr.curvature).max() <= 1 / MIN_RADIUS + 1e-9
    step = np.linalg.norm(np.diff(tr.xy, axis=0), axis=1)
    assert np.allclose(step, tr.ds, rtol=0.05)  # uniform arc length
    assert abs(np.abs(tr.curvature).sum() * tr.ds) >= 2 * np.pi - 0.3  # a closed loop turns at least once


def test_locate_recovers_signed_offset_and_progress(track):
    rng = np.random.default_rng(0)
    for _ in range(100):
        i = int(rng.integers(len(track.s)))
        off = float(rng.uniform(-1.0, 1.0))
        h = track.heading[i]
        x, y = track.xy[i, 0] - off * np.sin(h), track.xy[i, 1] + off * np.cos(h)  # + off = left
        loc = track.locate(x, y)
        assert loc.lateral == pytest.approx(off, abs=1e-6)
        assert min(abs(loc.progress - track.s[i]), track.length - abs(loc.progress - track.s[i])) < 1e-6


def test_point_at_wraps(track):
    assert np.allclose(track.point_at(1.0)[:2], track.point_at(1.0 + track.length)[:2])


def test_lateral_raster_matches_locate(track):
    x, y, h = track.point_at(7.0)
    px, py = x - 0.3 * np.sin(h), y + 0.3 * np.cos(h)
    row, col = track.world_to_cell(px, py)
    assert track.lateral_raster[int(row), int(col)] == pytest.approx(0.3, abs=0.03)


def test_bad_split_names_the_choices():
    with pytest.raises(ValueError, match="split='test' must be one of train, eval"):
        make_track(0, "test")
