"""Epoch plans of recurrent lanes: lanes walk consecutive clips, ``lane_jump`` moves them at random, and
``random_clip_epochs`` draws independent clips first."""

from __future__ import annotations

import numpy as np

from driver.datasets.clips import ClipConfig, ClipDataset
from driver.training.batches import PlanMaker, curriculum_epochs


def _walked(ds: ClipDataset, plan) -> np.ndarray:
    """(steps-1, B) bool: the lane's clip at step k+1 starts right where its clip at step k ended (same run)."""
    runs, starts = ds.clip_index()
    step = ds.config.clip_length * ds.config.frame_stride
    now, nxt = plan.indices[:-1], plan.indices[1:]
    return (runs[nxt] == runs[now]) & (starts[nxt] == starts[now] + step)


def test_lanes_walk_their_runs_and_jump_only_where_reset(small_store):
    ds = ClipDataset(small_store, ClipConfig(clip_length=3))
    still = PlanMaker(ds, 4, 60, recurrent=True, balance=False, zero_state_prob=0.0, seed=0).plan(0)
    walked = _walked(ds, still)
    assert walked.mean() > 0.7  # a run's end (every ~50 clips here) is the only reason to jump
    assert np.array_equal(~walked, still.reset[1:])  # every jump starts from zero state, and nothing else does
    same = PlanMaker(ds, 4, 60, recurrent=True, balance=False, zero_state_prob=0.0, seed=0, lane_jump=0.0).plan(0)
    assert np.array_equal(same.indices, still.indices)  # lane_jump=0 draws nothing: old plans stay as they were

    jumpy = PlanMaker(ds, 4, 60, recurrent=True, balance=False, zero_state_prob=0.0, seed=0, lane_jump=0.5).plan(0)
    walked = _walked(ds, jumpy)
    assert 0.4 < jumpy.reset[1:].mean() < 0.75  # about half of the lanes jump each step (more at runs' ends)
    assert not (~walked & ~jumpy.reset[1:]).any() and jumpy.reset[0].all()  # every jump starts from zero state
    always = PlanMaker(ds, 4, 60, recurrent=True, balance=False, zero_state_prob=0.0, seed=0, lane_jump=1.0).plan(0)
    assert always.reset.all()  # every step a fresh random clip: frame-model sampling with carried state off


def test_random_clip_epochs_draw_independent_clips_then_lanes_walk(small_store):
    ds = ClipDataset(small_store, ClipConfig(clip_length=3))
    maker = PlanMaker(ds, 4, 60, recurrent=True, balance=False, zero_state_prob=0.0, seed=0, random_clip_epochs=2)
    walking = PlanMaker(ds, 4, 60, recurrent=True, balance=False, zero_state_prob=0.0, seed=0)
    for epoch in (0, 1):  # the curriculum's epochs: every clip from zero state, consecutive steps not walked
        first = maker.plan(epoch)
        assert first.reset.all() and _walked(ds, first).mean() < 0.2
    assert np.array_equal(maker.plan(2).indices, walking.plan(2).indices)  # then the lanes walk, as without it
    assert np.array_equal(maker.plan(2).reset, walking.plan(2).reset)
    assert np.array_equal(maker.plan(0).indices, maker.plan(0).indices)  # deterministic: a resume skips exactly


def test_curriculum_share_is_a_count_of_the_planned_epochs_that_never_goes_back():
    assert curriculum_epochs(0.5, 60) == 30 and curriculum_epochs(0.0, 60) == 0 and curriculum_epochs(1.0, 7) == 7
    assert curriculum_epochs(0.5, 80, done=10, switch=30) == 40  # re-planned longer while drawing random clips
    assert curriculum_epochs(0.5, 30, done=20, switch=30) == 20  # shorter: the lanes start at the next epoch
    assert curriculum_epochs(0.5, 80, done=31, switch=30) == 30  # the lanes have started: it stays
