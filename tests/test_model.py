import numpy as np
import pytest
import torch
from torch import nn

from bcdi_gapfill.nn.model import CONFIGS, PatchUNet, UNetConfig, _SpaceToBatchConv3d, build_model, receptive_field

SMALL = {"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill_iterations": 20}


@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
def test_space_to_batch_conv_equals_dilated_conv(dilation):
    x = torch.randn(2, 3, 31, 32, 29)
    fast = _SpaceToBatchConv3d(3, 5, 3, dilation)
    ref = nn.Conv3d(3, 5, 3, dilation=dilation, padding="same")
    ref.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_paper_configuration_layers():
    model = build_model("paper")
    cfg = model.config
    assert list(cfg.filters) == [32, 64, 128, 256] and cfg.head == "sigmoid" and cfg.sigmoid_slope == 1.5
    first = model.encoders[0].body[0]
    assert [b.rate if hasattr(b, "rate") else b.dilation[0] for b in first.branches] == [4, 3, 2, 1]
    second = model.encoders[1].body[0]
    assert [b.dilation[0] for b in second.branches] == [3, 2, 2, 1] and second.branches[0].kernel_size == (2, 2, 2)
    finals = [m for m in model.final if isinstance(m, nn.Conv3d)]
    assert [m.out_channels for m in finals] == [24, 12, 6] and [m.kernel_size[0] for m in finals] == [4, 3, 2]
    # The authors' decoder: the 2^3 bottleneck alone to 478 channels, then the pooled skips of
    # encoder blocks 3, 2, 1 (128, 33 + 64, 1 + 32 channels) concatenated before 222, 96, 32.
    assert [(d.in_channels, d.out_channels, d.kernel_size[0]) for d in model.decoders] == \
        [(256, 478, 2), (478 + 128, 222, 2), (222 + 97, 96, 2), (96 + 33, 32, 2)]
    assert cfg.init == "glorot"
    x = torch.rand(2, 1, 32, 32, 32)
    gap = torch.zeros(2, 1, 32, 32, 32, dtype=torch.bool)
    with torch.no_grad():
        out = model.eval()(x, gap)
    assert out.shape == (2, 1, 32, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_bad_init_or_decoder_filters_are_refused():
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        build_model({**SMALL, "init": "xavier"})
    with pytest.raises(ValueError, match="one entry per encoder block"):
        build_model({**SMALL, "decoder_filters": [8, 8]})


def test_glorot_init_matches_keras_bounds():
    model = build_model({**SMALL, "init": "glorot"})
    conv = model.encoders[2].body[0]
    fan_in, fan_out = conv.weight[0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert float(conv.weight.abs().max()) <= bound and float(conv.weight.abs().max()) > 0.9 * bound
    assert float(conv.bias.abs().max()) == 0


def test_one_channel_model_needs_gap():
    with pytest.raises(ValueError, match="gap mask"):
        build_model("paper")(torch.rand(1, 1, 32, 32, 32))


@pytest.mark.parametrize("name", ["gapfill", "paper"])
def test_receptive_field_covers_window(name):
    cfg = CONFIGS[name]
    model = build_model(UNetConfig(**{**cfg.to_dict(), "prefill": "zero"}))
    rf = receptive_field(model)
    # The centre voxel sees at least +-12 voxels on every axis: across a 12-pixel gap and beyond.
    for axis in range(3):
        seen = np.nonzero(rf.any(dim=tuple(a for a in range(3) if a != axis)).numpy())[0]
        assert seen.min() <= 16 - 12 and seen.max() >= 16 + 12


def test_residual_head_starts_as_the_biharmonic_prefill():
    model = build_model(SMALL).eval()
    x = torch.rand(2, 2, 32, 32, 32)
    x[:, 1] = 0
    x[:, 1, :, :, 13:19] = 1
    x[:, 0] *= 1 - x[:, 1]
    gap = x[:, 1:2] > 0.5
    out = model(x)
    prefill = model.prefill(x[:, :1], gap)
    torch.testing.assert_close(out, prefill.clamp(0, 1))
    torch.testing.assert_close(out[~gap], x[:, :1][~gap])
    assert float((out[gap] - 0).abs().mean()) > 0  # the gap is filled, not left at zero


def test_build_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown model configuration"):
        build_model("nope")


def test_config_round_trip():
    cfg = CONFIGS["gapfill"]
    model = build_model(cfg.to_dict())
    assert isinstance(model, PatchUNet) and model.config.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("name", ["gapfill", "paper"])
def test_forward_returns_the_head_logits_on_request(name):
    model = build_model(CONFIGS[name]).train()
    x = torch.rand(2, model.config.in_channels, 32, 32, 32)
    gap = torch.zeros(2, 1, 32, 32, 32, dtype=torch.bool)
    gap[..., 14:20] = True
    if model.config.in_channels > 1:
        x[:, 1] = gap[:, 0].float()
    with torch.no_grad():
        out, logits = model(x, gap, return_logits=True)
        torch.testing.assert_close(out, model(x, gap))
    if model.config.head == "sigmoid":
        torch.testing.assert_close(out, torch.sigmoid(model.config.sigmoid_slope * logits))
    else:
        # Residual head: zero-initialised, so its logits start at 0 and the output is the prefill.
        assert float(logits.abs().max()) == 0.0


@pytest.mark.parametrize("cap", [1.0, 1.6])
def test_output_cap_bounds_the_residual_head_at_inference(cap):
    torch.manual_seed(0)
    model = build_model({"filters": [4, 8, 8, 8], "final_filters": [4, 4, 4], "prefill": "zero",
                         "output_cap": cap}).eval()
    with torch.no_grad():
        model.head.bias.fill_(5.0)  # a correction of +tanh(5) ~ +1 everywhere
    x = torch.zeros((1, 2, 32, 32, 32))
    base = torch.full((1, 1, 32, 32, 32), 0.9)
    base[..., :4] = 1.8  # where a whole-array base is brighter than the cap it is kept
    out = model(x, torch.zeros((1, 1, 32, 32, 32), dtype=torch.bool), base=base)
    assert float(out[..., 8:].max()) == pytest.approx(cap)
    assert float(out[..., :4].min()) == pytest.approx(1.8)
