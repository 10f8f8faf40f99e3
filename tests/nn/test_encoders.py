from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision import models

from mslightning.nn import ResNetStreamEncoder, adapt_conv1_weight


def _randomised_resnet(arch: str = "resnet18", seed: int = 0) -> nn.Module:
    """A torchvision ResNet with non-trivial BN statistics, standing in for ImageNet weights."""
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


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    net = _randomised_resnet("resnet18")
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_matches_torchvision_resnet18(resnet18_file: tuple[Path, nn.Module]) -> None:
    path, reference = resnet18_file
    reference.fc = nn.Identity()
    encoder = ResNetStreamEncoder("resnet18", in_channels=3, weights_path=path).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
        got = encoder(x)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_state_dict_names_are_torchvision_names() -> None:
    encoder = ResNetStreamEncoder("resnet18")
    torchvision_names = {k for k in models.resnet18(weights=None).state_dict() if "fc." not in k}
    assert set(encoder.state_dict()) == torchvision_names


@pytest.mark.parametrize(("arch", "width"), [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_out_features(arch: str, width: int) -> None:
    encoder = ResNetStreamEncoder(arch, in_channels=2).eval()
    assert encoder.out_features == width
    with torch.no_grad():
        assert encoder(torch.randn(2, 2, 16, 16)).shape == (2, width)


@pytest.mark.parametrize("in_channels", [1, 2, 4])
def test_adapted_conv1_keeps_response_to_channel_constant_image(
    resnet18_file: tuple[Path, nn.Module], in_channels: int
) -> None:
    path, _ = resnet18_file
    rgb = ResNetStreamEncoder("resnet18", in_channels=3, weights_path=path).eval()
    other = ResNetStreamEncoder("resnet18", in_channels=in_channels, weights_path=path).eval()
    assert other.conv1.weight.shape[1] == in_channels
    plane = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = rgb(plane.expand(-1, 3, -1, -1))
        got = other(plane.expand(-1, in_channels, -1, -1))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_adapt_conv1_weight_rule() -> None:
    weight = torch.randn(8, 3, 3, 3)
    adapted = adapt_conv1_weight(weight, 2)
    torch.testing.assert_close(adapted, weight.mean(1, keepdim=True).repeat(1, 2, 1, 1) * 1.5)
    plane = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(
        F.conv2d(plane.expand(-1, 2, -1, -1), adapted), F.conv2d(plane.expand(-1, 3, -1, -1), weight)
    )
    with pytest.raises(ValueError, match=r"\(8, 4, 3, 3\)"):
        adapt_conv1_weight(torch.randn(8, 4, 3, 3), 1)


def test_unknown_arch_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="resnet19") as err:
        ResNetStreamEncoder("resnet19")
    assert "resnet18" in str(err.value)
    assert "resnet50" in str(err.value)


def test_bad_in_channels() -> None:
    with pytest.raises(ValueError, match="in_channels must be a positive int, got 0"):
        ResNetStreamEncoder(in_channels=0)


def test_missing_weights_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ResNetStreamEncoder(weights_path=path)


def test_state_dict_of_other_arch_names_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="unexpected keys") as err:
        ResNetStreamEncoder("resnet18", weights_path=path)
    # resnet34's layer1 has three blocks, resnet18's two.
    assert "layer1.2.conv1.weight" in str(err.value)


def test_state_dict_with_missing_and_misshaped_keys(tmp_path: Path, resnet18_file: tuple[Path, nn.Module]) -> None:
    state = torch.load(resnet18_file[0], weights_only=True)
    del state["layer4.1.bn2.weight"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing keys") as err:
        ResNetStreamEncoder("resnet18", weights_path=path)
    assert "layer4.1.bn2.weight" in str(err.value)
    assert "layer1.0.conv1.weight: file (64, 64, 1, 1) vs model (64, 64, 3, 3)" in str(err.value)


def test_file_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        ResNetStreamEncoder(weights_path=path)


def test_wrong_channel_count_names_stream() -> None:
    encoder = ResNetStreamEncoder(in_channels=1, name="depth")
    with pytest.raises(ValueError, match="stream 'depth' expects 1 channel, got 3"):
        encoder(torch.zeros(1, 3, 16, 16))
    encoder.name = None
    with pytest.raises(ValueError, match="ResNetStreamEncoder expects 1 channel, got 3"):
        encoder(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="got a 3-D tensor"):
        encoder(torch.zeros(1, 16, 16))
