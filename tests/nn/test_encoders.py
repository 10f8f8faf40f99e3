import argparse
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision import models

from mslightning.nn import ResNetStreamEncoder, adapt_conv1_weight
from mslightning.nn.encoders import _guess_resnet


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


# --- Bad weights files: every one raises FileNotFoundError or ValueError, in this library's words,
# naming the stream and the path. ------------------------------------------------------------------


def _load_error(
    exc: type[Exception],
    path: Path,
    phrases: tuple[str, ...],
    *,
    name: str | None = "depth",
    arch: str = "resnet18",
    in_channels: int = 1,
) -> str:
    """Build an encoder from ``path``; check the error's exact type, its prefix and its phrases."""
    with pytest.raises(exc) as err:
        ResNetStreamEncoder(arch, in_channels, weights_path=path, name=name)
    assert type(err.value) is exc  # not a subclass such as IsADirectoryError or UnicodeDecodeError
    message = str(err.value)
    where = f"Weights for stream '{name}' ('{path}'): " if name is not None else f"Weights ('{path}'): "
    assert message.startswith(where), message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    return message


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights50") / "resnet50.pth"
    torch.save(models.resnet50(weights=None).state_dict(), path)
    return path


def test_bad_file_missing(tmp_path: Path) -> None:
    _load_error(FileNotFoundError, tmp_path / "nope.pth", ("no such file",))
    _load_error(FileNotFoundError, tmp_path / "nope.pth", ("no such file",), name=None)
    link = tmp_path / "link.pth"
    link.symlink_to(tmp_path / "gone.pth")
    _load_error(FileNotFoundError, link, ("symbolic link", "gone.pth"))


def test_bad_file_directory(tmp_path: Path) -> None:
    (tmp_path / "resnet18.pth").touch()
    _load_error(ValueError, tmp_path, ("is a directory", "it holds resnet18.pth"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_bad_file_not_regular(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    _load_error(ValueError, fifo, ("not a regular file",))  # and no hang reading it


def test_bad_file_empty_path() -> None:
    with pytest.raises(ValueError, match=r"^Weights \(''\): the path is empty"):
        ResNetStreamEncoder(weights_path="")


def test_bad_file_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.touch()
    _load_error(ValueError, path, ("the file is empty (0 bytes)", "torch.save(model.state_dict(), path)"))


def test_bad_file_truncated(tmp_path: Path, resnet18_file: tuple[Path, nn.Module]) -> None:
    data = resnet18_file[0].read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    _load_error(ValueError, path, ("truncated or damaged",))
    # The legacy (pre-zip) torch.save format, cut short too.
    legacy = tmp_path / "legacy.pth"
    torch.save(nn.Conv2d(3, 8, 3).state_dict(), legacy, _use_new_zipfile_serialization=False)
    data = legacy.read_bytes()
    legacy.write_bytes(data[: len(data) - 100])
    _load_error(ValueError, legacy, ("truncated or damaged",), name=None)


def test_bad_file_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "random.pth"
    path.write_bytes(
        bytes([0xEF, 0x4B, 0xFD, 0x0D]) + torch.randint(0, 256, (4092,), dtype=torch.uint8).numpy().tobytes()
    )
    _load_error(ValueError, path, ("corrupt or not a file written by torch.save", "ef 4b fd 0d"))
    text = tmp_path / "text.pth"
    text.write_text("<!DOCTYPE html><html>404 Not Found</html>\n")
    _load_error(ValueError, text, ("is a text file", "<!DOCTYPE html>"), name=None)
    lfs = tmp_path / "lfs.pth"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 46830571\n")
    _load_error(ValueError, lfs, ("Git LFS pointer", "git lfs pull"))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*TorchScript archive:UserWarning")
def test_bad_file_other_formats(tmp_path: Path) -> None:
    if hasattr(torch.jit, "script"):
        script = tmp_path / "script.pt"
        torch.jit.save(torch.jit.script(nn.Conv2d(3, 4, 3)), script)
        _load_error(ValueError, script, ("TorchScript archive", "torch.jit.load(path).state_dict()"))
    pickled = tmp_path / "plain.pkl"
    pickled.write_bytes(pickle.dumps({"conv1.weight": [0.0]}, protocol=2))
    _load_error(ValueError, pickled, ("plain pickle",))
    header = json.dumps({"conv1.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    safetensors = tmp_path / "model.safetensors"
    safetensors.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    _load_error(ValueError, safetensors, ("safetensors file", "safetensors.torch.load_file(path)"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
def test_bad_file_pickled_model(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(models.resnet18(weights=None), path)
    message = _load_error(
        ValueError,
        path,
        (
            "whole pickled model (torchvision.models.resnet.ResNet)",
            "not a state_dict",
            "torch.save(model.state_dict(), path)",
        ),
    )
    assert "weights_only=True" in message
    # Protocol 4 (STACK_GLOBAL) and the legacy format are recognised too.
    small = nn.Sequential(nn.Conv2d(3, 4, 3))
    torch.save(small, tmp_path / "p4.pth", pickle_protocol=4)
    torch.save(small, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("p4.pth", "legacy.pth"):
        _load_error(ValueError, tmp_path / name, ("whole pickled model (torch.nn.modules.container.Sequential)",))


@pytest.fixture(scope="module")
def checkpoint_file(
    tmp_path_factory: pytest.TempPathFactory, resnet18_file: tuple[Path, nn.Module]
) -> tuple[Path, dict[str, object], nn.ModuleDict]:
    """A Lightning-style checkpoint of a two-stream model whose trunks were loaded from resnet18_file."""
    encoders = nn.ModuleDict(
        {
            "rgb": ResNetStreamEncoder("resnet18", 3, resnet18_file[0], name="rgb"),
            "depth": ResNetStreamEncoder("resnet18", 1, resnet18_file[0], name="depth"),
        }
    )
    state = {f"encoders.{k}": v for k, v in encoders.state_dict().items()}
    state["head.weight"] = torch.zeros(4, 1024)
    checkpoint = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": state,
        "optimizer_states": [{"state": {}, "param_groups": []}],
    }
    path = tmp_path_factory.mktemp("checkpoint") / "last.ckpt"
    torch.save(checkpoint, path)
    return path, checkpoint, encoders


def test_lightning_checkpoint_with_the_streams_trunk_is_loaded(
    tmp_path: Path, checkpoint_file: tuple[Path, dict[str, object], nn.ModuleDict]
) -> None:
    path, checkpoint, encoders = checkpoint_file
    for name, channels in (("depth", 1), ("rgb", 3)):
        encoder = ResNetStreamEncoder("resnet18", channels, path, name=name)
        expected = encoders[name].state_dict()
        for key, value in encoder.state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    # A whole mslightning model's state_dict (no checkpoint around it) works the same way.
    model_state = tmp_path / "model_state.pth"
    torch.save(checkpoint["state_dict"], model_state)
    encoder = ResNetStreamEncoder("resnet18", 1, model_state, name="depth")
    torch.testing.assert_close(encoder.conv1.weight, encoders["depth"].conv1.weight, rtol=0, atol=0)


def test_lightning_checkpoint_without_the_streams_trunk(
    tmp_path: Path, checkpoint_file: tuple[Path, dict[str, object], nn.ModuleDict]
) -> None:
    path, checkpoint, _ = checkpoint_file
    advice = ("is a Lightning checkpoint (epoch 3, global step 120)", "load_from_checkpoint")
    message = _load_error(ValueError, path, (*advice, "none for stream 'ir'", "['depth', 'rgb']"), name="ir")
    assert "k.removeprefix('encoders.depth.')" in message  # how to extract a trunk
    _load_error(ValueError, path, (*advice, "no stream name"), name=None)
    other = tmp_path / "other.ckpt"
    torch.save({"epoch": 0, "global_step": 0, "state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, other)
    _load_error(ValueError, other, (*advice[1:], "Lightning checkpoint", "no 'encoders.<stream>.*' keys"))
    model_state = tmp_path / "model_state.pth"
    torch.save(checkpoint["state_dict"], model_state)
    _load_error(ValueError, model_state, ("state_dict of a whole mslightning model", "none for stream 'ir'"), name="ir")


def test_lightning_checkpoint_a_safe_load_refuses(
    tmp_path: Path, checkpoint_file: tuple[Path, dict[str, object], nn.ModuleDict]
) -> None:
    # e.g. an old Lightning version's hyper-parameters: a class weights_only=True refuses
    checkpoint = {**checkpoint_file[1], "hyper_parameters": argparse.Namespace(lr=0.1)}
    path = tmp_path / "old.ckpt"
    torch.save(checkpoint, path)
    # load the model trusting the file, then save its state_dict: the encoder takes a whole model's state_dict
    advice = ("load_from_checkpoint(path, weights_only=False)", "torch.save(model.state_dict(), path)")
    _load_error(ValueError, path, ("is a Lightning checkpoint", "argparse.Namespace", *advice))


def test_lightning_checkpoint_trunk_of_another_arch(
    checkpoint_file: tuple[Path, dict[str, object], nn.ModuleDict],
) -> None:
    phrase = "the state_dict under 'encoders.depth.*' in the Lightning checkpoint looks like resnet18 weights"
    _load_error(ValueError, checkpoint_file[0], (phrase, "not resnet50"), arch="resnet50")


def test_state_dict_of_another_arch_names_it(
    tmp_path: Path, resnet50_file: Path, resnet18_file: tuple[Path, nn.Module]
) -> None:
    message = _load_error(
        ValueError,
        resnet50_file,
        (
            "looks like resnet50 weights, not resnet18",
            "arch='resnet50'",
            "unexpected keys (198): layer1.0.conv3.weight",
        ),
    )
    assert "mis-shaped keys (23): layer1.0.conv1.weight: file (64, 64, 1, 1) vs model (64, 64, 3, 3)" in message
    assert "(+193 more)" in message  # key lists are cut short
    assert len(message.splitlines()) == 3 and len(message) < 1000
    _load_error(ValueError, resnet18_file[0], ("looks like resnet18 weights, not resnet50",), arch="resnet50")


def test_state_dict_with_a_wrapper_prefix(tmp_path: Path, resnet18_file: tuple[Path, nn.Module]) -> None:
    state = torch.load(resnet18_file[0], weights_only=True)
    path = tmp_path / "dataparallel.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    _load_error(ValueError, path, ("carry the prefix 'module.'", "resnet18 weights", "k.removeprefix('module.')"))


def test_state_dict_of_no_resnet(tmp_path: Path) -> None:
    path = tmp_path / "linear.pth"
    torch.save(nn.Linear(3, 4).state_dict(), path)
    _load_error(ValueError, path, ("does not look like a torchvision ResNet's", "weight, bias"))


def test_conv1_with_an_unadaptable_channel_count(tmp_path: Path, resnet18_file: tuple[Path, nn.Module]) -> None:
    state = torch.load(resnet18_file[0], weights_only=True)
    state["conv1.weight"] = torch.zeros(64, 2, 7, 7)
    path = tmp_path / "two_channels.pth"
    torch.save(state, path)
    _load_error(
        ValueError,
        path,
        ("does not fit this resnet18 trunk with 1 input channel", "conv1.weight takes 2 input channels"),
    )


def test_state_dict_with_non_tensor_values(tmp_path: Path, resnet18_file: tuple[Path, nn.Module]) -> None:
    path = tmp_path / "values.pth"
    torch.save({"conv1.weight": torch.zeros(1), "note": "imagenet"}, path)
    _load_error(
        ValueError, path, ("does not hold a state_dict", "1 of its 2 entries is not name -> tensor", "'note': str")
    )
    nested = tmp_path / "nested.pth"
    torch.save({"model": torch.load(resnet18_file[0], weights_only=True), "optimizer": {"lr": 0.1}}, nested)
    _load_error(ValueError, nested, ("weights seem to be under 'model'", "torch.save(obj['model'], path)"))
    for i, obj in enumerate((torch.zeros(3), [1, 2, 3], {})):
        other = tmp_path / f"other{i}.pth"
        torch.save(obj, other)
        phrase = "the state_dict in the file is empty" if obj == {} else "does not hold a state_dict"
        _load_error(ValueError, other, (phrase,), name=None)


def test_load_names_the_stream_set_later(tmp_path: Path) -> None:
    encoder = ResNetStreamEncoder("resnet18", 1)
    encoder.name = "thermal"
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(ValueError, match=r"^Weights for stream 'thermal' \('.*empty\.pth'\): the file is empty"):
        encoder.load_torchvision_weights(str(path))


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        ("resnet18", "resnet18"),
        ("resnet34", "resnet34"),
        ("resnet50", "resnet50"),
        ("resnet101", "resnet101"),
        ("resnet152", "resnet152"),
        ("resnext50_32x4d", "a ResNeXt-50"),
        ("resnext101_64x4d", "a ResNeXt-101"),
        ("wide_resnet50_2", "a wide ResNet-50"),
        ("mobilenet_v2", None),
    ],
)
def test_guess_resnet_from_keys_and_shapes(builder: str, expected: str | None) -> None:
    with torch.device("meta"):
        state = getattr(models, builder)(weights=None).state_dict()
    guess = _guess_resnet(state)
    if expected is not None and expected.startswith("a "):  # a ResNet this module does not build, described
        assert guess is not None and guess.startswith(expected)
    else:
        assert guess == expected
