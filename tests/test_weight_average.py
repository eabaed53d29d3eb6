"""--ema: the moving average of the weights follows the hand-computed recurrence, is what training validates and
saves, and survives a resume (tests/test_train.py's kill-and-resume test runs with --ema too)."""

import pytest
import torch
from torch import nn

from driver.training import TrainConfig, load_checkpoint, train
from driver.training.weight_average import WeightAverage
from tests.test_train import _cfg, store48  # noqa: F401  (the fixture)


def test_average_follows_the_recurrence_with_its_warmup():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    average = WeightAverage(model, decay=0.9)
    expected = 0.0
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    average.model[0].weight.data.fill_(0.0)
    for n, value in enumerate([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]):
        with torch.no_grad():
            model[0].weight.fill_(value)
            model[1].num_batches_tracked.fill_(n + 1)
        keep = min(0.9, (1 + n) / (10 + n))  # the first updates follow the weights closely
        expected = keep * expected + (1 - keep) * value
        average.update(model)
        assert average.model[0].weight.item() == pytest.approx(expected, rel=1e-6)
        assert average.model[1].num_batches_tracked.item() == n + 1  # integer buffers are copied
    assert average.updates == 6 and 0 < expected < 8.0
    assert not any(p.requires_grad for p in average.model.parameters())


def test_decay_out_of_range_is_named():
    with pytest.raises(ValueError, match=r"ema=1\.5 must be"):
        TrainConfig(ema=1.5)
    with pytest.raises(ValueError, match=r"ema=1\.0 must be in \(0, 1\)"):
        WeightAverage(nn.Linear(1, 1), 1.0)


def test_training_validates_and_saves_the_average(store48, tmp_path):  # noqa: F811
    r = train(_cfg(store48, tmp_path, arch="squeezenet_gru", name="ema", ema=0.9, steps_per_epoch=6, lr=1e-2,
                   arch_kwargs={"hidden_size": 8, "base_width": 16, "width_increment": 16}))
    ck = load_checkpoint(r.last_checkpoint)
    trained, saved = ck["training"]["trained_model"], ck["model"]
    assert ck["training"]["weight_average"] == {"updates": 6, "decay": 0.9}
    weights = [k for k in saved if k.endswith("weight")]
    assert weights and set(trained) == set(saved)
    assert any(not torch.equal(trained[k], saved[k]) for k in weights)  # the average, not the trained weights
    best = load_checkpoint(r.best_checkpoint)
    assert all(torch.equal(best["model"][k], saved[k]) for k in saved)  # one validation: best is the last
