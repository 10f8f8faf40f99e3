"""Per-stream image encoders.

A stream encoder maps one stream's images ``(B, C, H, W)`` to a pooled feature vector
``(B, out_features)`` and declares ``out_features`` so a fusion can be sized before any data
is seen. :class:`ResNetStreamEncoder` is a torchvision ResNet trunk whose first convolution
takes the stream's own channel count (3 for RGB, 1 for depth, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models

__all__ = ["ResNetStreamEncoder", "adapt_conv1_weight"]

_ARCHS: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
    "resnet152": models.resnet152,
}

_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")


def adapt_conv1_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt an RGB first-convolution kernel to another number of input channels.

    Every new input channel gets the mean of the RGB filters, scaled by ``3 / in_channels``:
    ``W'[:, j] = (3 / in_channels) * mean_c W[:, c]``. For an image whose channels are all equal
    (a grey image, or a depth map repeated to 3 channels) the response is then exactly the RGB
    network's response, whatever ``in_channels`` is, so the statistics that ``bn1`` and every
    later layer were trained on are kept. This is the argument of I3D's filter "inflation"
    (Carreira & Zisserman, CVPR 2017, https://arxiv.org/abs/1705.07750, Sec. 2.1: repeat the
    2D filters and rescale so a "boring" video gives the image response), applied along the
    channel axis instead of time; timm's ``adapt_input_conv`` uses the same 3 / in_channels
    rescaling.

    Args:
        weight: The pretrained kernel, shape ``(out_channels, 3, kH, kW)``.
        in_channels: The stream's channel count, >= 1.

    Returns:
        The adapted kernel, shape ``(out_channels, in_channels, kH, kW)``, same dtype.

    Raises:
        ValueError: If ``weight`` is not a 4-D kernel with 3 input channels, or ``in_channels``
            is not positive.

    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"Expected an RGB conv1 kernel of shape (out, 3, kH, kW), got {tuple(weight.shape)}.")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
    if in_channels == 3:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True) * (3.0 / in_channels)
    return mean.repeat(1, in_channels, 1, 1)


class ResNetStreamEncoder(nn.Module):
    """A torchvision ResNet trunk for one stream: images in, pooled features out.

    The submodules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` … ``layer4``), so a
    torchvision ResNet ``state_dict`` (without ``fc.*``) loads with ``load_state_dict``, and
    parameter-name patterns such as ``"encoders.rgb.layer4.*"`` select what they would select
    in torchvision. The network is always built with ``weights=None``: nothing is downloaded.

    Example:
        >>> import torch
        >>> from mslightning.nn import ResNetStreamEncoder
        >>> enc = ResNetStreamEncoder("resnet18", in_channels=1, name="depth")
        >>> enc(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 512])

    Args:
        arch: One of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"``,
            ``"resnet152"``.
        in_channels: Channels of this stream's images (3 for RGB, 1 for depth, ...).
        weights_path: Optional path to a torchvision ImageNet ``state_dict`` of the same
            ``arch`` saved with ``torch.save``. ``fc.*`` entries are ignored; when
            ``in_channels != 3`` the ``conv1`` kernel is adapted with
            :func:`adapt_conv1_weight`.
        name: The stream's name, used only in error messages. The owning module may set the
            attribute later (``encoder.name = "depth"``).

    Attributes:
        out_features: Width of the pooled features (512 for resnet18/34, 2048 for 50/101/152).
        in_channels: The channel count ``forward`` accepts.
        name: The stream's name or ``None``.

    Raises:
        ValueError: For an unknown ``arch``, a non-positive ``in_channels``, or a state_dict
            that does not fit the trunk (the missing/unexpected/mis-shaped keys are named).
        FileNotFoundError: If ``weights_path`` does not exist.

    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 3,
        weights_path: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"Unknown arch {arch!r}; valid archs are {sorted(_ARCHS)}.")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
        self.arch = arch
        self.in_channels = in_channels
        self.name = name

        resnet = _ARCHS[arch](weights=None)
        if in_channels != 3:
            old = resnet.conv1
            resnet.conv1 = nn.Conv2d(
                in_channels,
                old.out_channels,
                kernel_size=old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                bias=False,
            )
            # Same init torchvision gives every conv, so a fresh encoder is a fresh ResNet.
            nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
        for child in _TRUNK:
            setattr(self, child, getattr(resnet, child))
        self.out_features: int = resnet.fc.in_features

        if weights_path is not None:
            self.load_torchvision_weights(weights_path)

    def load_torchvision_weights(self, path: str | Path) -> None:
        """Initialise the trunk from a torchvision ResNet ``state_dict`` file on local disk.

        The file is read with ``torch.load(..., weights_only=True)``; ``fc.*`` entries are
        dropped and ``conv1.weight`` is adapted to ``in_channels`` when it has 3 input channels
        and the stream does not.

        Args:
            path: A file written by ``torch.save(resnet.state_dict(), path)``.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the file is not a state_dict, or its keys or shapes do not fit this
                trunk; the message names the missing, unexpected and mis-shaped keys.

        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ResNet weights file not found: '{path}'.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(
                f"'{path}' does not hold a state_dict (a mapping of name -> tensor); got {type(state).__name__}."
            )
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        conv1 = state.get("conv1.weight")
        if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] == 3 != self.in_channels:
            state["conv1.weight"] = adapt_conv1_weight(conv1, self.in_channels)

        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mis_shaped = sorted(
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in set(own) & set(state)
            if state[k].shape != own[k].shape
        )
        if missing or unexpected or mis_shaped:
            raise ValueError(
                f"State dict in '{path}' does not fit a {self.arch} trunk with "
                f"{self.in_channels} input channel(s): missing keys {missing}, "
                f"unexpected keys {unexpected}, mis-shaped keys {mis_shaped}."
            )
        self.load_state_dict(state)

    def forward(self, x: Tensor) -> Tensor:
        """Encode a batch of this stream's images.

        Args:
            x: Images, shape ``(B, in_channels, H, W)``.

        Returns:
            Globally average-pooled features, shape ``(B, out_features)``.

        Raises:
            ValueError: If ``x`` is not 4-D or has the wrong channel count.

        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            who = f"stream '{self.name}'" if self.name is not None else type(self).__name__
            plural = "" if self.in_channels == 1 else "s"
            got = f"{x.shape[1]}" if x.ndim == 4 else f"a {x.ndim}-D tensor"
            raise ValueError(
                f"{who} expects {self.in_channels} channel{plural}, got {got} "
                f"(input shape {tuple(x.shape)}, expected (B, {self.in_channels}, H, W))."
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)
