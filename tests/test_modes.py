"""One behavioural-mode input: training, Policy.act and replay feed the model the same mode vector."""

import numpy as np
import pytest
import torch

from driver.datasets.clips import ClipConfig, ClipDataset
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.modes import MODES, mode_vector
from driver.datasets.run_writer import write_run
from driver.datasets.store import Store
from driver.datasets.synthetic import synthetic_segments
from driver.models import InputSpec, create_model
from driver.policy import Policy
from driver.sim.replay import replay_run
from driver.training.checkpoint import model_payload, preprocess_info


@pytest.fixture(scope="module")
def two_label_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    segs = synthetic_segments(5, n_frames=40, height=48, width=64, stereo=False, n_segments=1)
    (root / "runs").mkdir()
    write_run(root / "runs" / "two.h5", segs, {"direct": 1, "racing": 1, "sim": 1, "follow": 0})
    assert ingest(IngestConfig(sources=[str(root / "runs")], out=str(root / "s.zarr"))).ok
    return Store(root / "s.zarr")


class _Recorder(torch.nn.Module):
    """Wraps a model and records the mode tensor of every step call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []
        self.is_recurrent = model.is_recurrent

    def step(self, frame, modes, state):
        self.seen.append(None if modes is None else modes.clone())
        return self.model.step(frame, modes, state)


def _policy(spec):
    model = create_model("squeezenet_gru", spec, hidden_size=8)
    ckpt = {**model_payload(model), "config": {"channels_last": False},
            "preprocess": preprocess_info(spec, ("left",), MODES)}
    return Policy(_Recorder(model), ckpt)


def test_mode_vector_takes_labels_sets_and_names():
    assert mode_vector({"direct": 1, "racing": 1, "sim": 1, "play": 0}).tolist() == [1, 0, 0, 0, 1, 0]
    assert mode_vector({"racing", "direct"}).tolist() == [1, 0, 0, 0, 1, 0]
    assert mode_vector("follow").tolist() == [0, 1, 0, 0, 0, 0]
    assert mode_vector(None).tolist() == [0] * 6


def test_policy_act_reproduces_the_training_mode_input(two_label_store):
    train_input = ClipDataset(two_label_store, ClipConfig(cameras=("left",), horizon=1))[0]["modes"]
    assert train_input.tolist() == [1, 0, 0, 0, 1, 0]  # both mode labels switched on, "sim" ignored
    spec = InputSpec(height=48, width=64, cameras=1, stack=1, n_modes=len(MODES), horizon=1)
    policy = _policy(spec)
    frame = two_label_store.frames("two", "left")[0]
    policy.act(frame, mode=two_label_store.labels("two"))  # a run's labels
    policy.act(frame, mode={"direct", "racing"})  # the same as a set
    for seen in policy.model.seen:
        torch.testing.assert_close(seen[0], train_input)
    policy.model.seen.clear()
    trace = replay_run(policy, two_label_store, "two")  # replay conditions on the run's labels
    assert trace.mode == ("direct", "racing")
    assert len(policy.model.seen) == 40 and all(torch.equal(m[0], train_input) for m in policy.model.seen)


def test_a_single_mode_name_still_works_and_unknown_names_fail(two_label_store):
    spec = InputSpec(height=48, width=64, cameras=1, stack=1, n_modes=len(MODES), horizon=1)
    policy = _policy(spec)
    frame = np.zeros((48, 64, 3), np.uint8)
    policy.act(frame, mode="direct")
    assert policy.model.seen[-1][0].tolist() == [1, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="mode='cruise' is not one of"):
        policy.act(frame, mode="cruise")
