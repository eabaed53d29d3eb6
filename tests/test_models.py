"""One test over every registered model (shape, finiteness, gradients, state), plus counts and registry."""

from __future__ import annotations

import json

import pytest
import torch

from driver.models import (
    InputSpec,
    count_parameters,
    create_model,
    detach_state,
    format_model_table,
    list_models,
    model_rows,
    register_model,
)
from driver.models.base import concat_mode_planes

# Small input for the all-models tests: AlexNet needs >= 63 px and Z2Color >= 53 px per side.
# 2 cameras x 1 frame (6 channels), an odd number of modes (exercises Z2Color's grouped-conv padding).
SMALL = InputSpec(height=64, width=72, cameras=2, stack=1, n_modes=3, horizon=3)
BATCH, STEPS = 2, 3

EXPECTED_ARCHS = [
    "alexnet",
    "pilotnet",
    "pilotnet_gru",
    "pilotnet_lstm",
    "squeezenet",
    "squeezenet_gru",
    "squeezenet_lstm",
    "z2color",
    "z2color_gru",
    "z2color_lstm",
]

# Parameter counts at the default InputSpec (94x168, 2 cameras x 2 frames, 6 modes, horizon 10).
PARAM_COUNTS_DEFAULT_SPEC = {
    "alexnet": 23_621_780,
    "pilotnet": 591_228,
    "pilotnet_gru": 676_548,
    "pilotnet_lstm": 705_988,
    "squeezenet": 738_036,
    "squeezenet_gru": 1_097_284,  # spatial pool (pool="avg", feature_norm="layer": 977,908, before issue 18)
    "squeezenet_lstm": 1_216_324,  # (pool="avg": 1,060,084)
    "z2color": 1_578_740,
    "z2color_gru": 1_818_612,
    "z2color_lstm": 1_900_788,
}

# Lab-faithful configurations and the counts of seed_lineage.md §2 (lab layers at 94x168x12), and the paper's.
LAB_PARAM_COUNTS = [
    ("z2color", InputSpec(), {}, 1_578_740),
    ("z2color", InputSpec(), {"lab": True}, 1_578_740),
    ("squeezenet", InputSpec(), {"lab": True}, 739_988),
    ("squeezenet", InputSpec(horizon=15), {"lab": True}, 745_118),  # the early 30-output variant
    ("alexnet", InputSpec(), {"lab": True}, 24_043_412),
    # PilotNet at the paper's 66x200 RGB input: 252,219 with its one output, + 11 for our (steer, motor)
    ("pilotnet", InputSpec(height=66, width=200, cameras=1, stack=1, n_modes=0, horizon=1), {}, 252_230),
]


def make_inputs(spec: InputSpec, batch: int = BATCH, steps: int = STEPS, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    clip = torch.rand(batch, steps, spec.channels, spec.height, spec.width, generator=generator) - 0.5
    modes = None
    if spec.n_modes:
        modes = torch.zeros(batch, spec.n_modes)
        modes[torch.arange(batch), torch.arange(batch) % spec.n_modes] = 1.0  # one-hot, a different mode each
    return clip, modes


def state_tensors(state) -> list[torch.Tensor]:
    if state is None:
        return []
    return [state] if isinstance(state, torch.Tensor) else list(state)


def build(arch: str, spec: InputSpec = SMALL, **kwargs):
    torch.manual_seed(0)
    return create_model(arch, spec, **kwargs)


def test_registry_lists_every_family():
    assert list_models() == EXPECTED_ARCHS


@pytest.mark.parametrize("arch", EXPECTED_ARCHS)
def test_forward_shape_finite_and_gradient_on_every_parameter(arch):
    model = build(arch)
    clip, modes = make_inputs(SMALL)
    out, state = model(clip, modes)
    assert out.shape == (BATCH, STEPS, SMALL.horizon, 2)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (state is not None) == model.is_recurrent
    loss = out.square().mean() + sum(part.square().mean() for part in state_tensors(state))
    loss.backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters())


@pytest.mark.parametrize("arch", EXPECTED_ARCHS)
def test_model_records_its_config_and_rebuilds(arch):
    model = build(arch, hidden_size=16) if arch.endswith(("_lstm", "_gru")) else build(arch)
    assert model.arch == arch
    assert model.spec == SMALL
    json.dumps(model.arch_kwargs)
    rebuilt = create_model(model.arch, InputSpec.from_dict(model.spec.to_dict()), **model.arch_kwargs)
    rebuilt.load_state_dict(model.state_dict())
    assert count_parameters(rebuilt) == count_parameters(model)


@pytest.mark.parametrize("arch", EXPECTED_ARCHS)
def test_modes_condition_the_output(arch):
    model = build(arch).eval()
    clip, modes = make_inputs(SMALL, batch=1)
    with torch.no_grad():
        out_direct, _ = model(clip, torch.tensor([[1.0, 0.0, 0.0]]))
        out_follow, _ = model(clip, torch.tensor([[0.0, 1.0, 0.0]]))
        out_none, _ = model(clip, None)
        out_zeros, _ = model(clip, torch.zeros(1, 3))
    assert not torch.allclose(out_direct, out_follow)
    torch.testing.assert_close(out_none, out_zeros)  # modes=None means "no mode set"


@pytest.mark.parametrize("arch", EXPECTED_ARCHS)
def test_without_modes_and_single_step_horizon(arch):
    spec = InputSpec(height=64, width=64, cameras=1, stack=1, n_modes=0, horizon=1)
    model = build(arch, spec).eval()
    clip, modes = make_inputs(spec, batch=1, steps=2)
    assert modes is None
    with torch.no_grad():
        out, _ = model(clip, None)
    assert out.shape == (1, 2, 1, 2)


@pytest.mark.parametrize("arch", EXPECTED_ARCHS)
def test_step_frame_by_frame_equals_clip_forward(arch):
    model = build(arch).eval()
    clip, modes = make_inputs(SMALL, steps=4)
    with torch.no_grad():
        clip_out, clip_state = model(clip, modes)
        state = model.initial_state(BATCH)
        step_outs = []
        for index in range(clip.shape[1]):
            frame_out, state = model.step(clip[:, index], modes, state)
            step_outs.append(frame_out)
        first_half, half_state = model(clip[:, :2], modes)
        second_half, resumed_state = model(clip[:, 2:], modes, detach_state(half_state))
    torch.testing.assert_close(torch.stack(step_outs, dim=1), clip_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat([first_half, second_half], dim=1), clip_out, atol=1e-5, rtol=1e-4)
    for stepped, whole, resumed in zip(
        state_tensors(state), state_tensors(clip_state), state_tensors(resumed_state), strict=True
    ):
        torch.testing.assert_close(stepped, whole, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(resumed, whole, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", [arch for arch in EXPECTED_ARCHS if arch.endswith(("_lstm", "_gru"))])
def test_recurrent_state_has_memory_and_detaches(arch):
    model = build(arch, hidden_size=8, num_layers=2).eval()
    assert model.is_recurrent
    state = model.initial_state(BATCH)
    parts = state_tensors(state)
    assert len(parts) == (2 if arch.endswith("_lstm") else 1)
    assert all(part.shape == (2, BATCH, 8) for part in parts)
    clip, modes = make_inputs(SMALL, steps=2)
    with torch.no_grad():
        fresh, _ = model.step(clip[:, 1], modes, None)
        _, after_first = model.step(clip[:, 0], modes, None)
        remembered, _ = model.step(clip[:, 1], modes, after_first)
    assert not torch.allclose(fresh, remembered)  # the previous frame changes the prediction
    model.train()
    _, state = model(clip, modes)
    assert all(part.requires_grad for part in state_tensors(state))
    assert not any(part.requires_grad for part in state_tensors(detach_state(state)))
    assert detach_state(None) is None


@pytest.mark.parametrize("arch", EXPECTED_ARCHS)
def test_channels_last_and_bf16_autocast(arch):
    model = build(arch).eval().to(memory_format=torch.channels_last)
    clip, modes = make_inputs(SMALL, batch=2, steps=1)
    frame = clip[:, 0].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference, _ = model.step(clip[:, 0], modes)
        channels_last, _ = model.step(frame, modes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, state = model.step(frame, modes)
    torch.testing.assert_close(channels_last, reference, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(bf16.float()).all()
    assert (bf16.float() - reference).abs().max() <= 0.05 * reference.abs().max() + 0.05
    assert all(part.dtype == torch.float32 for part in state_tensors(state))  # RNN state stays fp32


def test_mode_planes_keep_channels_last_and_values():
    features = torch.rand(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    modes = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    joined = concat_mode_planes(features, modes, planes=4)
    assert joined.shape == (2, 12, 5, 7)
    assert joined.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(joined[:, :8], features)
    assert (joined[1, 9] == 0.5).all() and (joined[0, 8] == 1.0).all() and (joined[:, 10:] == 0).all()


@pytest.mark.parametrize("arch", EXPECTED_ARCHS)
def test_param_counts_at_default_spec(arch):
    assert count_parameters(build(arch, InputSpec())) == PARAM_COUNTS_DEFAULT_SPEC[arch]


@pytest.mark.parametrize(("arch", "spec", "kwargs", "expected"), LAB_PARAM_COUNTS)
def test_lab_faithful_param_counts(arch, spec, kwargs, expected):
    assert count_parameters(build(arch, spec, **kwargs)) == expected


@pytest.mark.parametrize("size", [(94, 168), (96, 96), (120, 160)])
def test_dataset_image_sizes(size):
    spec = InputSpec(height=size[0], width=size[1], cameras=1, stack=2, n_modes=6, horizon=10)
    for arch in ("z2color", "squeezenet", "alexnet", "pilotnet"):
        model = build(arch, spec).eval()
        clip, modes = make_inputs(spec, batch=1, steps=1)
        with torch.no_grad():
            out, _ = model(clip, modes)
        assert out.shape == (1, 1, 10, 2)


@pytest.mark.parametrize("bypass", ["none", "simple", "complex"])
def test_squeezenet_design_knobs(bypass):
    model = build("squeezenet", SMALL, bypass=bypass, squeeze_ratio=0.25, pct_3x3=0.25, base_width=64)
    widths = [
        (fire.squeeze.out_channels, fire.expand1x1.out_channels, fire.expand3x3.out_channels)
        for fire in model.features.fires
    ]
    assert widths[0] == (16, 48, 16) and widths[-1] == (112, 336, 112)
    clip, modes = make_inputs(SMALL)
    out, _ = model(clip, modes)
    assert torch.isfinite(out).all()
    # Simple bypass goes around every Fire whose input and output widths match (with base_width=64 that
    # includes the first one, 64 -> 64); complex adds a 1x1 conv around all the others.
    expected = {"none": [], "simple": ["0", "1", "3", "5", "7"], "complex": list("01234567")}[bypass]
    assert sorted(model.features.bypasses) == expected


def test_squeezenet_bypass_parameter_costs():
    plain = build("squeezenet", SMALL, bypass="none")
    simple = build("squeezenet", SMALL, bypass="simple")
    complex_ = build("squeezenet", SMALL, bypass="complex")
    assert sorted(simple.features.bypasses) == ["1", "3", "5", "7"]  # lab widths: 128,128,256,256,...
    assert count_parameters(simple) == count_parameters(plain) < count_parameters(complex_)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="valid models: alexnet, pilotnet, pilotnet_gru, pilotnet_lstm, sq") as err:
        create_model("resnet50")
    assert all(name in str(err.value) for name in EXPECTED_ARCHS)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("z2color")(lambda spec: None)


def test_bad_arch_kwargs_raise():
    with pytest.raises(ValueError, match="JSON"):
        create_model("squeezenet", SMALL, bypass={1, 2})
    with pytest.raises(ValueError, match="bypass"):
        create_model("squeezenet", SMALL, bypass="dense")
    with pytest.raises(ValueError, match="mode_planes"):
        create_model("squeezenet", SMALL, mode_planes=2)
    with pytest.raises(TypeError):
        create_model("z2color", SMALL, no_such_knob=1)


def test_input_too_small_names_the_stage():
    create_model("pilotnet", InputSpec(height=61, width=61))  # its documented minimum
    with pytest.raises(ValueError, match="pilotnet: input 60x61 is too small, the feature map after conv5"):
        create_model("pilotnet", InputSpec(height=60, width=61))
    with pytest.raises(ValueError, match="alexnet: input 48x64 is too small"):
        create_model("alexnet", InputSpec(height=48, width=64))
    with pytest.raises(ValueError, match="pilotnet_gru: input 48x64 is too small, the feature map after conv5"):
        create_model("pilotnet_gru", InputSpec(height=48, width=64))


def test_pilotnet_recurrent_encoder_is_pilotnets_layers():
    """pilotnet_gru's encoder is PilotNet's normalisation, convolutions and ReLU(fc 100), modes included."""
    spec = InputSpec(height=66, width=200, cameras=1, stack=1, n_modes=2, horizon=1)
    torch.manual_seed(0)
    frame_model = create_model("pilotnet", spec)
    recurrent = create_model("pilotnet_gru", spec, hidden_size=8)
    recurrent.encoder.features.load_state_dict(frame_model.features.state_dict())
    recurrent.encoder.fc[0].load_state_dict(frame_model.classifier[0].state_dict())
    frames = torch.rand(3, 3, 66, 200) - 0.5
    modes = torch.eye(2)[[0, 1, 1]]
    with torch.no_grad():
        flat = frame_model.features(frames * 2.0)
        expected = torch.relu(frame_model.classifier[0](torch.cat([flat, modes], 1)))
        assert flat.shape == (3, 1152)  # the paper's 64x1x18 at 66x200
        assert torch.equal(recurrent.encoder(frames, modes), expected)
    assert recurrent.encoder.out_features == 100


def test_wrong_input_shapes_raise():
    model = build("squeezenet")
    clip, modes = make_inputs(SMALL)
    with pytest.raises(ValueError, match="clip of shape"):
        model(clip[:, :, :3], modes)
    with pytest.raises(ValueError, match="modes of shape"):
        model(clip, modes[:, :2])


@pytest.mark.parametrize(
    ("field", "value"),
    [("height", 0), ("cameras", 9), ("stack", 0), ("n_modes", -1), ("horizon", 0), ("width", 1.5)],
)
def test_input_spec_validation_names_field(field, value):
    with pytest.raises(ValueError, match=f"InputSpec.{field}"):
        InputSpec(**{field: value})


def test_input_spec_channels_and_round_trip():
    spec = InputSpec()
    assert spec.channels == 12 and spec.outputs == 20
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown InputSpec fields"):
        InputSpec.from_dict({"heigth": 3})


def test_model_rows_and_table():
    spec = InputSpec(height=64, width=64, cameras=1, stack=1, n_modes=2, horizon=2)
    rows = model_rows(spec)
    assert [row["arch"] for row in rows] == EXPECTED_ARCHS
    for row in rows:
        assert set(row) >= {"arch", "params", "mflops_per_frame", "recurrent"}
        assert row["params"] > 0 and row["mflops_per_frame"] > 0
    by_arch = {row["arch"]: row for row in rows}
    assert by_arch["squeezenet_lstm"]["mflops_per_frame"] > by_arch["squeezenet"]["mflops_per_frame"] * 0.9
    table = format_model_table(rows)
    assert "squeezenet_lstm" in table and "MFLOPs/frame" in table
    too_small = model_rows(InputSpec(height=48, width=48))
    assert {row["arch"] for row in too_small if row["params"] is None} >= {"alexnet", "pilotnet", "z2color"}
    assert "input too small" in format_model_table(too_small)


def assert_steps_like_forward(model, clip, modes):
    """Stepping ``model`` frame by frame from zero state gives its clip forward's outputs."""
    with torch.no_grad():
        whole, _ = model(clip, modes)
        state, steps = None, []
        for t in range(clip.shape[1]):
            out, state = model.step(clip[:, t], modes, state)
            steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), whole, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["squeezenet_gru", "squeezenet_lstm"])
def test_spatial_encoder_pool_keeps_the_layout_and_steps_like_forward(arch):
    model = build(arch, SMALL, pool="spatial", spatial_channels=4, hidden_size=8).eval()
    h, w = model.encoder.features.feature_size
    assert model.encoder.out_features == 4 * h * w and model.arch_kwargs["pool"] == "spatial"
    assert_steps_like_forward(model, *make_inputs(SMALL, steps=3))
    with pytest.raises(ValueError, match="pool='max' is not one of"):
        build(arch, SMALL, pool="max")
    old = build(arch, InputSpec(), pool="avg", feature_norm="layer")  # the layers before issue 18
    assert count_parameters(old) == {"squeezenet_gru": 977_908, "squeezenet_lstm": 1_060_084}[arch]


@pytest.mark.parametrize("arch", ["squeezenet_gru", "z2color_lstm"])
def test_head_skip_reads_the_frame_past_the_rnn(arch):
    """``head_skip``: a linear map of the frame's normed features adds to the head, the clip forward still
    equals stepping, and the skip is what separates the two models' outputs (zeroed, they agree)."""
    plain = build(arch, SMALL, hidden_size=8).eval()
    skip = build(arch, SMALL, hidden_size=8, head_skip=True).eval()
    rnn_in = plain.rnn.input_size
    assert count_parameters(skip) - count_parameters(plain) == (rnn_in + 1) * SMALL.outputs
    assert skip.arch_kwargs["head_skip"] is True and plain.arch_kwargs["head_skip"] is False
    clip, modes = make_inputs(SMALL, steps=3)
    assert_steps_like_forward(skip, clip, modes)
    with torch.no_grad():
        missing, unexpected = skip.load_state_dict(plain.state_dict(), strict=False)  # the same RNN and head
        assert sorted(missing) == ["skip.bias", "skip.weight"] and not unexpected
        assert not torch.allclose(skip(clip, modes)[0], plain(clip, modes)[0])
        skip.skip.weight.zero_()
        skip.skip.bias.zero_()
        torch.testing.assert_close(skip(clip, modes)[0], plain(clip, modes)[0])
    rebuilt = create_model(arch, SMALL, **skip.arch_kwargs)
    assert rebuilt.skip is not None
    with pytest.raises(ValueError, match="head_skip='yes' must be true or false"):
        build(arch, SMALL, head_skip="yes")


def assert_rebuilds_and_steps_like_forward(arch, model):
    """``model``'s clip forward equals stepping, and ``create_model`` rebuilds it from its recorded ``arch_kwargs``
    into the same layers (strict load, the same output). Returns the (clip, modes) it checked with."""
    clip, modes = make_inputs(SMALL, steps=3)
    assert_steps_like_forward(model, clip, modes)
    rebuilt = create_model(arch, SMALL, **model.arch_kwargs).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(clip, modes)[0], model(clip, modes)[0])
    return clip, modes


@pytest.mark.parametrize("arch", ["pilotnet_gru", "z2color_gru"])
def test_skip_widths_make_the_skip_path_an_mlp(arch):
    """``skip_widths`` with ``head_skip``: Linear + ReLU layers of those widths before the skip's linear map
    (over ``pilotnet_gru``'s fc 100, PilotNet's own classifier), recorded so the checkpoint rebuilds it; the clip
    forward still equals stepping, and the skip's MLP alone carries the frame past the RNN."""
    linear = build(arch, SMALL, hidden_size=8, head_skip=True).eval()
    mlp = build(arch, SMALL, hidden_size=8, head_skip=True, skip_widths=[5, 3]).eval()
    rnn_in = linear.rnn.input_size
    assert linear.skip_layers is None and "skip_widths" not in linear.arch_kwargs
    added = (rnn_in * 5 + 5) + (5 * 3 + 3) + (3 - rnn_in) * SMALL.outputs
    assert count_parameters(mlp) - count_parameters(linear) == added
    assert mlp.skip.in_features == 3 and list(mlp.arch_kwargs["skip_widths"]) == [5, 3]
    clip, modes = assert_rebuilds_and_steps_like_forward(arch, mlp)
    with torch.no_grad():
        for layer in (mlp.head, mlp.rnn):  # the RNN's path silent: the output is the skip's MLP of each frame
            for weight in layer.parameters():
                weight.zero_()
        single = torch.cat([mlp(clip[:, t:t + 1], modes)[0] for t in range(clip.shape[1])], 1)
        torch.testing.assert_close(mlp(clip, modes)[0], single)  # no memory: frame by frame from zero state
        assert not torch.allclose(single[:, :1], single[:, 1:2])  # and it reads each frame
    with pytest.raises(ValueError, match=r"skip_widths=\[5\] shapes the skip path: it needs head_skip=true"):
        build(arch, SMALL, skip_widths=[5])
    with pytest.raises(ValueError, match="skip_widths=\\[0\\] must be a list of layer widths, each 1..4096"):
        build(arch, SMALL, head_skip=True, skip_widths=[0])


@pytest.mark.parametrize("arch", ["pilotnet_gru", "squeezenet_lstm"])
def test_head_widths_put_an_mlp_between_the_rnn_and_the_output(arch):
    """``head_widths``: Linear + ReLU layers of those widths before the final linear map (``head`` stays the
    last layer), recorded in ``arch_kwargs`` so the checkpoint rebuilds it; none by default (the same
    parameters as before the knob), and the clip forward still equals stepping."""
    plain = build(arch, SMALL, hidden_size=8).eval()
    mlp = build(arch, SMALL, hidden_size=8, head_widths=[5, 3]).eval()
    assert plain.head_layers is None and "head_widths" not in plain.arch_kwargs
    assert count_parameters(mlp) - count_parameters(plain) == (8 * 5 + 5) + (5 * 3 + 3) + (3 - 8) * SMALL.outputs
    assert mlp.head.in_features == 3 and list(mlp.arch_kwargs["head_widths"]) == [5, 3]
    clip, modes = assert_rebuilds_and_steps_like_forward(arch, mlp)
    with torch.no_grad():
        mlp.head_layers[-2].weight.zero_()  # the last hidden layer silent: the output no longer reads the input
        mlp.head_layers[-2].bias.zero_()
        out = mlp(clip, modes)[0]
        torch.testing.assert_close(out, out[:1, :1].expand_as(out))
        assert not torch.allclose(plain(clip, modes)[0], plain(clip, modes)[0][:1, :1].expand_as(out))
    for bad in ([0], [5, -1], "50", [2.5], [True]):
        with pytest.raises(ValueError, match="must be a list of layer widths, each 1..4096"):
            build(arch, SMALL, head_widths=bad)
