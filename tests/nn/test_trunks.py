"""Image trunks: torchvision oracles, freeze modes, VGG weight files, injection from a config.

torchvision networks are built with ``weights=None`` under a fixed seed and saved with
``torch.save``; each trunk loaded from that file must give torchvision's own pooled features.
The big VGG files are written once per module.
"""

import functools
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from jsonargparse import ArgumentParser
from torch import nn
from torchvision import models

from mslightning.nn import ImageTrunk, ResNetStreamEncoder, ResNetTrunk, VGGTrunk

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _randomised(arch: str, seed: int = 0) -> nn.Module:
    """A torchvision network with non-trivial BN statistics, standing in for ImageNet weights."""
    torch.manual_seed(seed)
    net = getattr(models, arch)(weights=None)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            # Default running stats (0, 1) and affine (1, 0) would hide a mis-loaded BN.
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


def _saved(net: nn.Module, directory: Path, arch: str) -> Path:
    path = directory / f"{arch}.pth"
    torch.save(net.state_dict(), path)
    return path


# --------------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_resnet_matches_torchvision(arch: str, tmp_path: Path) -> None:
    net = _randomised(arch)
    trunk = ResNetTrunk(arch, weights_path=_saved(net, tmp_path, arch)).eval()
    net.fc = nn.Identity()
    with torch.no_grad():
        expected, got = net(X), trunk(X)
    assert got.shape == (2, trunk.out_features) == (2, 512 if arch != "resnet50" else 2048)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module", params=["vgg16", "vgg16_bn"])
def vgg_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, nn.Module]:
    """(arch, state_dict file, the torchvision network) — one 528 MB file per arch and module."""
    arch = request.param
    net = _randomised(arch)
    return arch, _saved(net, tmp_path_factory.mktemp(arch), arch), net


def test_vgg_matches_torchvision(vgg_file: tuple[str, Path, nn.Module]) -> None:
    arch, path, net = vgg_file
    avg = VGGTrunk(arch, weights_path=path).eval()
    fc7 = VGGTrunk(arch, weights_path=path, pool="fc7").eval()
    assert (avg.out_features, fc7.out_features) == (512, 4096)
    # torchvision's names: a torchvision state_dict is the trunk's, less what it does not use
    assert set(avg.state_dict()) == {k for k in net.state_dict() if not k.startswith("classifier.")}
    assert set(fc7.state_dict()) == {k for k in net.state_dict() if not k.startswith("classifier.6.")}
    last = net.classifier[-1]
    net.classifier[-1] = nn.Identity()
    try:
        with torch.no_grad():
            expected_avg = torch.flatten(F.adaptive_avg_pool2d(net.features(X), 1), 1)
            expected_fc7 = net(X)  # AdaptiveAvgPool2d((7, 7)) makes 32 px work
            got_avg, got_fc7 = avg(X), fc7(X)
    finally:
        net.classifier[-1] = last
    assert got_avg.shape == (2, 512) and got_fc7.shape == (2, 4096)
    torch.testing.assert_close(got_avg, expected_avg, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_fc7, expected_fc7, atol=1e-5, rtol=0)


def test_vgg_grey_input_adapts_the_first_conv(vgg_file: tuple[str, Path, nn.Module]) -> None:
    arch, path, _ = vgg_file
    rgb = VGGTrunk(arch, weights_path=path).eval()
    grey = VGGTrunk(arch, in_channels=1, weights_path=path).eval()
    assert grey.features[0].weight.shape == (64, 1, 3, 3)
    torch.testing.assert_close(grey.features[0].bias, rgb.features[0].bias, rtol=0, atol=0)
    plane = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(grey(plane), rgb(plane.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="VGGTrunk expects 1 channel, got 3"):
        grey(X)


def test_vgg_weights_of_the_other_variant_name_the_guess(vgg_file: tuple[str, Path, nn.Module]) -> None:
    arch, path, _ = vgg_file
    other = "vgg16" if arch == "vgg16_bn" else "vgg16_bn"
    with pytest.raises(ValueError) as err:
        VGGTrunk(other, weights_path=path, name="rgb")
    message = str(err.value)
    assert message.startswith(f"Weights for stream 'rgb' ('{path}'): "), message
    assert f"looks like {arch} weights, not {other}" in message
    assert f"arch='{arch}'" in message
    assert "unexpected keys" in message if arch == "vgg16_bn" else "missing keys" in message


# ------------------------------------------------------------------------ VGG weight files


def test_vgg_given_resnet_weights_names_resnet(tmp_path: Path) -> None:
    path = _saved(models.resnet18(weights=None), tmp_path, "resnet18")
    with pytest.raises(ValueError) as err:
        VGGTrunk("vgg11", weights_path=path, name="rgb")
    message = str(err.value)
    assert message.startswith(f"Weights for stream 'rgb' ('{path}'): ")
    assert "looks like resnet18 weights, which ResNetTrunk(arch='resnet18') builds" in message
    assert "missing keys (16): features.0.weight" in message
    assert "unexpected keys (122): conv1.weight" in message


def test_resnet_given_vgg_weights_names_vgg(tmp_path: Path) -> None:
    path = _saved(VGGTrunk("vgg11_bn"), tmp_path, "vgg11_bn_features")
    with pytest.raises(ValueError, match=r"looks like vgg11_bn weights, which VGGTrunk\(arch='vgg11_bn'\) builds"):
        ResNetTrunk(weights_path=path)


def test_vgg_weights_with_a_wrapper_prefix(tmp_path: Path) -> None:
    state = VGGTrunk("vgg13").state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    with pytest.raises(ValueError, match=r"carry the prefix 'module.' \(vgg13 weights saved from a wrapper"):
        VGGTrunk("vgg13", weights_path=path)


def test_vgg_fc7_needs_the_classifier(tmp_path: Path) -> None:
    path = _saved(VGGTrunk("vgg11"), tmp_path, "features_only")  # no classifier.* keys
    with (
        pytest.raises(ValueError, match=r"missing keys \(4\): classifier.0.weight, classifier.0.bias"),
        torch.device("meta"),  # no 120M-parameter classifier to initialise: the check fails before loading
    ):
        VGGTrunk("vgg11", weights_path=path, pool="fc7")


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        ("vgg11", "vgg11"),
        ("vgg13_bn", "vgg13_bn"),
        ("vgg16", "vgg16"),
        ("vgg19", "vgg19"),
        ("vgg19_bn", "vgg19_bn"),
        ("alexnet", None),  # features.<i> convolutions, but 11x11 and 5x5 kernels
        ("mobilenet_v2", None),
        ("resnet18", None),
    ],
)
def test_guess_vgg_from_keys_and_shapes(builder: str, expected: str | None) -> None:
    with torch.device("meta"):
        state = getattr(models, builder)(weights=None).state_dict()
    assert VGGTrunk._guess_arch(state) == expected


def test_vgg_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"Unknown arch 'vgg17'; valid archs are \['vgg11', 'vgg11_bn'"):
        VGGTrunk("vgg17")
    with pytest.raises(ValueError, match=r"stream 'rgb': pool must be one of \['avg', 'fc7'\], got 'max'"):
        VGGTrunk(pool="max", name="rgb")
    with pytest.raises(ValueError, match="frozen='fc' needs pool='fc7'"):
        VGGTrunk("vgg11", frozen="fc")


# ---------------------------------------------------------------------------- freeze modes


def _frozen_names(trunk: nn.Module) -> set[str]:
    return {name for name, p in trunk.named_parameters() if not p.requires_grad}


def _bn_stats(trunk: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trunk.state_dict().items() if k.endswith(("running_mean", "running_var"))}


RESNET_PREFIXES = {
    "stem": ("conv1.", "bn1."),
    "layer1": ("layer1.",),
    "layer2": ("layer2.",),
    "layer3": ("layer3.",),
    "layer4": ("layer4.",),
}


@pytest.mark.parametrize("frozen", [None, "stem", "layer1", "layer3", "layer4", "all"])
def test_resnet_frozen_requires_grad_pattern(frozen: str | None) -> None:
    trunk = ResNetTrunk(frozen=frozen)
    assert trunk.stages == ("stem", "layer1", "layer2", "layer3", "layer4")
    names = {name for name, _ in trunk.named_parameters()}
    if frozen is None:
        expected: set[str] = set()
    elif frozen == "all":
        expected = names
    else:
        stages = trunk.stages[: trunk.stages.index(frozen) + 1]
        expected = {n for n in names if n.startswith(sum((RESNET_PREFIXES[s] for s in stages), ()))}
    assert _frozen_names(trunk) == expected
    if frozen == "layer3":  # stem..layer3 only
        assert expected and all(not n.startswith("layer4.") for n in expected)
        assert any(n.startswith("conv1.") for n in expected)


@pytest.mark.parametrize(
    ("frozen", "freeze_batchnorm", "fixed"),
    [
        (None, False, ()),
        ("layer1", False, ("bn1.", "layer1.")),
        ("layer3", False, ("bn1.", "layer1.", "layer2.", "layer3.")),
        (None, True, ("",)),
        ("layer1", True, ("",)),
        ("all", False, ("",)),
    ],
)
def test_resnet_batchnorm_statistics(frozen: str | None, freeze_batchnorm: bool, fixed: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    trunk = ResNetTrunk(frozen=frozen, freeze_batchnorm=freeze_batchnorm)
    trunk.eval()
    trunk.train()  # train() after eval() keeps frozen BN in eval
    for name, module in trunk.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.training is not f"{name}.".startswith(fixed), name
    before = _bn_stats(trunk)
    trunk(torch.randn(4, 3, 32, 32))
    after = _bn_stats(trunk)
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same is key.startswith(fixed), key


def test_freeze_batchnorm_keeps_affine_weights_trainable() -> None:
    trunk = ResNetTrunk(freeze_batchnorm=True)
    assert all(p.requires_grad for p in trunk.parameters())
    assert trunk.freeze_batchnorm and trunk.frozen is None


def test_sgd_step_does_not_change_frozen_parameters() -> None:
    torch.manual_seed(0)
    trunk = ResNetTrunk(frozen="layer2").train()
    before = {k: v.detach().clone() for k, v in trunk.named_parameters()}
    optimizer = torch.optim.SGD(trunk.parameters(), lr=0.1)
    trunk(torch.randn(4, 3, 32, 32)).square().mean().backward()
    optimizer.step()
    for name, param in trunk.named_parameters():
        frozen = name.startswith(("conv1.", "bn1.", "layer1.", "layer2."))
        assert param.grad is None if frozen else param.grad is not None, name
        assert torch.equal(param, before[name]) is frozen, name


@pytest.mark.parametrize("assign", [False, True])
def test_frozen_parameters_stay_frozen_after_load_state_dict(assign: bool) -> None:
    trunk = ResNetTrunk(frozen="layer1")
    expected = _frozen_names(trunk)
    trunk.load_state_dict(ResNetTrunk().state_dict(), assign=assign)
    assert _frozen_names(trunk) == expected
    trunk.train()
    assert not trunk.layer1[0].bn1.training and trunk.layer2[0].bn1.training


def test_frozen_all_is_a_fixed_function() -> None:
    trunk = ResNetTrunk("resnet18", frozen="all").train()
    assert not any(module.training for module in trunk.modules())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(trunk(x), trunk(x), rtol=0, atol=0)


def test_bad_stage_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        ResNetTrunk(frozen="layer5", name="depth")
    message = str(err.value)
    assert message.startswith("stream 'depth': frozen='layer5'")
    for valid in ("None", "'all'", "'stem'", "'layer1'", "'layer4'"):
        assert valid in message
    with pytest.raises(ValueError, match=r"'block1', 'block2', 'block3', 'block4', 'block5', 'fc'"):
        VGGTrunk("vgg11", frozen="layer3", pool="fc7")
    with pytest.raises(ValueError, match="freeze_batchnorm must be True or False, got 'yes'"):
        ResNetTrunk(freeze_batchnorm="yes")  # type: ignore[arg-type]


def test_vgg_stage_freezing() -> None:
    trunk = VGGTrunk("vgg11_bn", frozen="block2")
    assert trunk.stages == ("block1", "block2", "block3", "block4", "block5")
    # vgg11_bn: block1 = features.0-3 (conv, bn, relu, pool), block2 = features.4-7
    frozen_layers = {int(name.split(".")[1]) for name in _frozen_names(trunk)}
    assert frozen_layers == {0, 1, 4, 5}
    trunk.train()
    assert [trunk.features[i].training for i in (1, 5, 9)] == [False, False, True]
    before = _bn_stats(trunk)
    trunk(torch.randn(2, 3, 32, 32))
    after = _bn_stats(trunk)
    assert {k for k in before if torch.equal(before[k], after[k])} == {
        f"features.{i}.{s}" for i in (1, 5) for s in ("running_mean", "running_var")
    }


def test_vgg_fc_stage_freezes_fc6_and_fc7() -> None:
    trunk = VGGTrunk("vgg11", frozen="fc", pool="fc7").train()
    assert trunk.stages[-1] == "fc"
    assert _frozen_names(trunk) == {name for name, _ in trunk.named_parameters()}
    assert not trunk.classifier.training  # a frozen stage is a fixed function: its dropout is off
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(trunk(x), trunk(x), rtol=0, atol=0)
    with torch.device("meta"):
        partly = VGGTrunk("vgg11", frozen="block5", pool="fc7")
    assert not any(name.startswith("classifier.") for name in _frozen_names(partly))


# ------------------------------------------------------------------------------- the API


def test_every_trunk_is_an_image_trunk_with_defaults() -> None:
    for trunk in (ResNetTrunk(), VGGTrunk("vgg11"), ResNetStreamEncoder()):
        assert isinstance(trunk, ImageTrunk)
        assert (trunk.in_channels, trunk.name, trunk.frozen, trunk.freeze_batchnorm) == (3, None, None, False)
    defaults = {cls: inspect.signature(cls).parameters["arch"].default for cls in (ResNetTrunk, VGGTrunk)}
    assert defaults == {ResNetTrunk: "resnet18", VGGTrunk: "vgg16"}


def test_resnet_stream_encoder_keeps_its_signature(tmp_path: Path) -> None:
    path = _saved(models.resnet18(weights=None), tmp_path, "resnet18")
    encoder = ResNetStreamEncoder("resnet18", 1, path, "depth", frozen="stem")  # name fourth, as before
    assert isinstance(encoder, ResNetTrunk) and encoder.name == "depth" and encoder.frozen == "stem"
    assert not encoder.conv1.weight.requires_grad
    encoder.load_torchvision_weights(path)  # the old method name
    with pytest.raises(ValueError, match="ResNetStreamEncoder expects 1 channel, got 3"):
        ResNetStreamEncoder("resnet18", 1)(X)


def test_trunk_injected_from_a_config_by_class_path() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--trunk", type=Callable[[], ImageTrunk], default=ResNetTrunk)
    config = parser.parse_string(
        "trunk: {class_path: mslightning.nn.VGGTrunk, init_args: {arch: vgg11_bn, frozen: block1, in_channels: 1}}"
    )
    factory = parser.instantiate(config).trunk
    trunk = factory()
    assert isinstance(trunk, VGGTrunk) and (trunk.arch, trunk.frozen, trunk.in_channels) == ("vgg11_bn", "block1", 1)
    resnet50 = functools.partial(ResNetTrunk, arch="resnet50")
    assert resnet50().out_features == 2048


def test_vgg_names_the_smallest_input_it_can_take() -> None:
    with torch.device("meta"):
        trunk = VGGTrunk("vgg11")
    with pytest.raises(ValueError, match=r"vgg11 halves its input five times and needs images of at least 32 x 32"):
        trunk(torch.zeros(1, 3, 16, 40, device="meta"))
