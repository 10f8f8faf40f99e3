import math

import pytest
import torch
from torch import nn

from mslightning.nn.cores import ResidualBlock, ResidualCore, RMSNorm2d, activation_gain


def test_rmsnorm2d_normalises_over_channels_per_pixel():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4) * 3 + 1
    norm = RMSNorm2d(5, eps=1e-6)
    with torch.no_grad():
        norm.gamma.copy_(torch.arange(1.0, 6.0))
        norm.beta.copy_(torch.linspace(-1, 1, 5))
    expected = x / (x.pow(2).mean(1, keepdim=True) + 1e-6).sqrt() * norm.gamma.view(1, -1, 1, 1) + norm.beta.view(
        1, -1, 1, 1
    )
    torch.testing.assert_close(norm(x), expected)
    # one sample's output does not depend on the rest of the batch
    torch.testing.assert_close(norm(x[:1]), norm(x)[:1])
    with pytest.raises(ValueError, match=r"\(B, 5, H, W\)"):
        norm(torch.randn(2, 4, 3, 3))


def test_activation_gain_matches_kaiming_for_relu_and_silu():
    assert activation_gain(nn.ReLU) == pytest.approx(math.sqrt(2), rel=1e-5)
    assert activation_gain(nn.Identity) == pytest.approx(1.0, rel=1e-5)
    assert activation_gain(nn.SiLU) == pytest.approx(1.6765, rel=1e-3)


@pytest.mark.parametrize("strides", [1, [1, 2, 2], [2, 1, 3]])
@pytest.mark.parametrize("size", [(16, 16), (15, 9)])
def test_output_shape_matches_forward(strides, size):
    core = ResidualCore(in_channels=2, channels=[4, 6, 8], strides=strides)
    out = core(torch.randn(3, 2, *size))
    assert out.shape == (3, *core.output_shape(*size))
    assert core.out_channels == 8


@pytest.mark.parametrize("norm", ["rms", "batch", None])
@pytest.mark.parametrize(("depthwise", "weight_norm"), [(False, False), (True, False), (False, True)])
def test_blocks_start_as_their_shortcut(norm, depthwise, weight_norm):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 7)
    same = ResidualBlock(4, 4, norm=norm, depthwise=depthwise, weight_norm=weight_norm).eval()
    torch.testing.assert_close(same(x), x)  # the identity
    wider = ResidualBlock(4, 6, stride=2, norm=norm, depthwise=depthwise, weight_norm=weight_norm).eval()
    torch.testing.assert_close(wider(x), wider.shortcut(x))
    assert not torch.isnan(wider(x)).any()


def test_branch_last_norm_scale_is_zero_and_learns():
    core = ResidualCore(channels=[4, 4], norm="rms")
    for block in core.blocks:
        last = block.branch[-1]
        assert isinstance(last, RMSNorm2d)
        assert torch.count_nonzero(last.gamma) == 0
    core(torch.randn(2, 1, 8, 8)).square().mean().backward()
    assert core.blocks[0].branch[-1].gamma.grad.abs().sum() > 0


def test_silu_gain_keeps_the_second_moment_of_one_layer():
    """He et al.'s argument: unit-variance Gaussian in, SiLU, conv with the gain: unit second moment out."""
    torch.manual_seed(0)
    x = torch.randn(64, 256, 8, 8)
    conv = nn.Conv2d(256, 256, 1, bias=False)

    def second_moment(gain):
        nn.init.normal_(conv.weight, std=gain / math.sqrt(256))
        return conv(nn.functional.silu(x)).pow(2).mean().item()

    assert second_moment(activation_gain(nn.SiLU)) == pytest.approx(1.0, abs=0.05)
    assert second_moment(math.sqrt(2)) == pytest.approx(2 * 0.3558, abs=0.05)  # ReLU's gain shrinks it


def test_weight_norm_parametrises_standard_convs():
    core = ResidualCore(channels=[4], weight_norm=True)
    names = [n for n, _ in core.named_parameters()]
    assert any("parametrizations.weight.original0" in n for n in names)
    assert not any(n.endswith("conv.weight") for n in names)


def test_depthwise_has_fewer_parameters():
    standard = ResidualCore(channels=[32, 32])
    separable = ResidualCore(channels=[32, 32], depthwise=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separable) < count(standard) / 3
    assert separable(torch.randn(1, 1, 8, 8)).shape == (1, 32, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 4}, "odd"),
        ({"kernel_size": 0}, "odd"),
        ({"depthwise": True, "weight_norm": True}, "standard convolutions only"),
        ({"norm": "layer"}, "'layer'"),
        ({"activation": "tanhh"}, "'tanhh'"),
        ({"channels": []}, "channels"),
        ({"strides": [1, 2]}, "one per block"),
    ],
)
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResidualCore(**kwargs)


def test_wrong_input_names_the_shape():
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        ResidualCore(in_channels=1, channels=[4])(torch.randn(2, 3, 8, 8))


def test_injected_activation_and_gradients_reach_the_stem():
    core = ResidualCore(channels=[4, 8], activation=nn.Mish, norm="batch")
    core(torch.randn(2, 1, 8, 8)).sum().backward()
    assert core.stem[0].weight.grad.abs().sum() > 0


def test_configurable_from_yaml_with_a_named_or_imported_activation():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(ResidualCore, "core")
    for activation, expected in (("relu", nn.ReLU), ("torch.nn.Mish", nn.Mish)):
        args = ["--core.channels=[8, 16]", "--core.strides=[1, 2]", f"--core.activation={activation}"]
        config = parser.parse_args(args)
        core = parser.instantiate_classes(config).core
        assert isinstance(core.stem[-1], expected)
        assert core.output_shape(10, 10) == (16, 5, 5)
