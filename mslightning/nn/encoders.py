"""Per-stream encoders: :class:`MLPEncoder` for vector streams, and the old image-encoder names.

A stream encoder maps one stream's batch to pooled features ``(B, out_features)`` and declares
``out_features``, so fusions and heads can be sized before any data is seen. Image streams use
the trunks of :mod:`mslightning.nn.trunks`; a *vector* stream (an audio or text embedding,
per-expert features, any ``(B, D)`` input) uses :class:`MLPEncoder`.

:class:`ResNetStreamEncoder` is :class:`~mslightning.nn.trunks.ResNetTrunk` under its old name,
with its old signature (``name`` fourth).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from torch import Tensor, nn

from mslightning.nn.trunks import ResNetTrunk, adapt_conv1_weight
from mslightning.nn.trunks import _guess_resnet as _guess_resnet  # for code written against this module

__all__ = ["MLPEncoder", "ResNetStreamEncoder", "adapt_conv1_weight"]

_NORMS = ("layer", None)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class MLPEncoder(nn.Module):
    """A multilayer perceptron for one vector stream: ``(B, in_features)`` -> ``(B, out_features)``.

    Each width in ``hidden`` adds a block ``Linear -> LayerNorm -> ReLU -> Dropout`` (parameters
    ``blocks.<i>.linear.*``, ``blocks.<i>.norm.*``); a final ``Linear`` (``output.*``) gives the
    features that the fusion and the auxiliary heads read. ``hidden=()`` makes the encoder one
    linear projection. The default norm is a LayerNorm, which normalises each sample on its own,
    so the encoder behaves the same for a batch of one and in eval mode (a BatchNorm would not).

    Models build it from a factory called with the stream's width, ``factory(in_features)``: in
    YAML ``encoders: {audio: {class_path: mslightning.nn.MLPEncoder, init_args: {hidden: [256]}}}``
    (the model supplies ``in_features``), in Python ``functools.partial(MLPEncoder, hidden=(256,))``.

    Example:
        >>> import torch
        >>> from mslightning.nn import MLPEncoder
        >>> encoder = MLPEncoder(40, hidden=(64,), out_features=32, name="audio")
        >>> encoder(torch.zeros(8, 40)).shape
        torch.Size([8, 32])

    Args:
        in_features: Width ``D`` of the stream's vectors.
        hidden: Width of each hidden layer, input side first; empty for a single linear layer.
        out_features: Width of the features it returns.
        dropout: Dropout probability after each hidden layer's activation, in ``[0, 1)``.
        norm: ``"layer"`` (LayerNorm after each hidden linear layer) or ``None`` (no norm).
        name: The stream's name, used only in error messages. The owning model sets it when
            it is ``None`` (``encoder.name = "audio"``).

    Attributes:
        in_features: The width ``forward`` accepts.
        hidden: The hidden widths, as a tuple.
        out_features: Width of the features.
        name: The stream's name or ``None``.
        input_ndim: 2: the encoder takes ``(B, D)`` batches (an image trunk's is 4); the
            classifier reads it to tell a vector stream from an image stream in its input checks.

    Raises:
        ValueError: For a width that is not a positive int (naming which), ``hidden`` that is not
            a sequence of widths, ``dropout`` outside ``[0, 1)`` or an unknown ``norm``.

    """

    input_ndim: ClassVar[int] = 2

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256,),
        out_features: int = 128,
        dropout: float = 0.0,
        norm: str | None = "layer",
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        who = self._who()
        if not _positive_int(in_features):
            raise ValueError(f"{who}: in_features must be a positive int (the stream's width D), got {in_features!r}.")
        if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence):
            raise ValueError(
                f"{who}: hidden must be a sequence of widths, e.g. [256] (or [] for none), got {hidden!r}."
            )
        for index, width in enumerate(hidden):
            if not _positive_int(width):
                raise ValueError(
                    f"{who}: hidden[{index}] must be a positive int, got {width!r} (hidden={list(hidden)})."
                )
        if not _positive_int(out_features):
            raise ValueError(f"{who}: out_features must be a positive int, got {out_features!r}.")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"{who}: dropout must be in [0, 1), got {dropout!r}.")
        if norm not in _NORMS:
            raise ValueError(f"{who}: norm must be 'layer' or None, got {norm!r}.")
        self.in_features = in_features
        self.hidden = tuple(hidden)
        self.out_features = out_features
        blocks = []
        width = in_features
        for next_width in self.hidden:
            layers = OrderedDict(linear=nn.Linear(width, next_width))
            if norm == "layer":
                layers["norm"] = nn.LayerNorm(next_width)
            layers["activation"] = nn.ReLU()
            layers["dropout"] = nn.Dropout(dropout)
            blocks.append(nn.Sequential(layers))
            width = next_width
        self.blocks = nn.Sequential(*blocks)
        self.output = nn.Linear(width, out_features)

    def _who(self) -> str:
        """``stream '<name>'``, or the class name when the encoder has no name."""
        return f"stream '{self.name}'" if self.name is not None else type(self).__name__

    def forward(self, x: Tensor) -> Tensor:
        """Encode a batch of vectors.

        Args:
            x: Vectors, shape ``(B, in_features)``.

        Returns:
            Features, shape ``(B, out_features)``.

        Raises:
            ValueError: If ``x`` is not 2-D with ``in_features`` columns (naming the stream).

        """
        if x.ndim != 2 or x.shape[1] != self.in_features:
            hint = " (an image batch: image streams need an image trunk, not an MLPEncoder)" if x.ndim == 4 else ""
            raise ValueError(
                f"{self._who()} expects vectors (B, {self.in_features}), got shape {tuple(x.shape)}{hint}."
            )
        return self.output(self.blocks(x))


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
