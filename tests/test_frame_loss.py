"""--frame-loss: a recurrent model's per-frame head reads each frame alone, adds nothing to the driving output,
is trained only by its own loss, and is refused for frame models."""

from __future__ import annotations

import pytest
import torch

from driver.models import count_parameters, create_model
from driver.training import load_checkpoint, model_from_checkpoint, train
from tests.test_models import SMALL, build, make_inputs
from tests.test_train import _cfg, store48  # noqa: F401  (module-scoped store fixture)

TINY = {"hidden_size": 8, "base_width": 16, "width_increment": 16}


@pytest.mark.parametrize("arch", ["squeezenet_gru", "z2color_lstm"])
def test_frame_head_reads_each_frame_alone_and_leaves_the_output_alone(arch):
    plain = build(arch, SMALL, hidden_size=8).eval()
    model = build(arch, SMALL, hidden_size=8, frame_head=True).eval()
    assert count_parameters(model) - count_parameters(plain) == (model.rnn.input_size + 1) * SMALL.outputs
    assert model.arch_kwargs["frame_head"] is True and plain.arch_kwargs["frame_head"] is False
    clip, modes = make_inputs(SMALL, steps=3)
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
        assert sorted(missing) == ["frame_head.bias", "frame_head.weight"] and not unexpected
        out, state, framewise = model(clip, modes, frame_outputs=True)
        plain_out, plain_state = plain(clip, modes)
        torch.testing.assert_close(out, plain_out)  # the driving output and state are the plain model's
        torch.testing.assert_close(state, plain_state)
        assert framewise.shape == out.shape
        for t in range(clip.shape[1]):  # frame t's reading is the same alone, from any state
            _, _, alone = model(clip[:, t:t + 1], modes, state=plain_state, frame_outputs=True)
            torch.testing.assert_close(alone[:, 0], framewise[:, t], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="frame_outputs=True needs a model built with frame_head=True"):
        plain(clip, modes, frame_outputs=True)
    with pytest.raises(ValueError, match="frame_head='yes' must be true or false"):
        build(arch, SMALL, frame_head="yes")


def test_frame_loss_trains_the_frame_head_and_the_checkpoint_rebuilds(store48, tmp_path):  # noqa: F811
    # the same model (its head built in both runs) with and without the loss: only the loss moves the head
    common = {"arch": "squeezenet_gru", "steps_per_epoch": 4, "lr": 1e-2}
    on = load_checkpoint(train(_cfg(store48, tmp_path, name="on", frame_loss=1.0, arch_kwargs=TINY,
                                    **common)).last_checkpoint)
    off = load_checkpoint(train(_cfg(store48, tmp_path, name="off", arch_kwargs={**TINY, "frame_head": True},
                                     **common)).last_checkpoint)
    assert on["arch_kwargs"]["frame_head"] is True and on["config"]["frame_loss"] == 1.0
    model = model_from_checkpoint(on)  # rebuilds with its head
    torch.manual_seed(0)  # the trainer's seed: the head's initial weights
    initial = create_model("squeezenet_gru", model.spec, **off["arch_kwargs"]).frame_head.weight.detach()
    assert torch.equal(off["model"]["frame_head.weight"], initial)  # no loss, no gradient: as initialised
    assert not torch.equal(on["model"]["frame_head.weight"], initial)
    clip, modes = make_inputs(model.spec, batch=1, steps=2)
    with torch.no_grad():
        out, _ = model.eval()(clip, modes)  # drives as any recurrent model, the head unread
    assert out.shape == (1, 2, model.spec.horizon, 2) and torch.isfinite(out).all()


def test_frame_loss_is_for_recurrent_models(store48, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="--frame-loss 1.0: arch 'pilotnet' reads each frame on its own"):
        train(_cfg(store48, tmp_path, arch="pilotnet", frame_loss=1.0))
    with pytest.raises(ValueError, match=r"frame_loss=-1 must be a number in 0.0..100.0"):
        _cfg(store48, tmp_path, arch="squeezenet_gru", frame_loss=-1)
