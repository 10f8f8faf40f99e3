"""Per-stream image encoders: the names older code imports, kept for compatibility.

The trunks and their weight loading live in :mod:`mslightning.nn.trunks`.
:class:`ResNetStreamEncoder` is :class:`~mslightning.nn.trunks.ResNetTrunk` under its old name,
with its old signature (``name`` fourth).
"""

from __future__ import annotations

from pathlib import Path

from mslightning.nn.trunks import ResNetTrunk, adapt_conv1_weight
from mslightning.nn.trunks import _guess_resnet as _guess_resnet  # for code written against this module

__all__ = ["ResNetStreamEncoder", "adapt_conv1_weight"]


class ResNetStreamEncoder(ResNetTrunk):
    """A torchvision ResNet trunk for one stream: :class:`~mslightning.nn.ResNetTrunk` by its old name.

    Behaves exactly as :class:`~mslightning.nn.ResNetTrunk` (images ``(B, in_channels, H, W)``
    -> pooled features ``(B, out_features)``; torchvision parameter names; weight files and
    freeze modes); only the order of the parameters after ``weights_path`` is the old one, and
    errors name the class ``ResNetStreamEncoder``.

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
            ``arch``; see :meth:`~mslightning.nn.ImageTrunk.load_weights`.
        name: The stream's name, used only in error messages.
        frozen: See :class:`~mslightning.nn.ResNetTrunk`.
        freeze_batchnorm: See :class:`~mslightning.nn.ResNetTrunk`.

    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 3,
        weights_path: str | Path | None = None,
        name: str | None = None,
        *,
        frozen: str | None = None,
        freeze_batchnorm: bool = False,
    ) -> None:
        super().__init__(arch, in_channels, weights_path, frozen=frozen, freeze_batchnorm=freeze_batchnorm, name=name)
