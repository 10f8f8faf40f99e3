"""Convolutional cores: one video frame in, a feature map out (the ConvGRU family's first stage).

A core maps frames ``(B, C, H, W)`` to a feature map ``(B, C_out, H', W')`` and declares
``out_channels`` and :meth:`ResidualCore.output_shape`, so a modulator, a ConvGRU and the
per-session readouts can be sized before any data is seen (a readout needs ``(C, H, W)``).

:class:`ResidualCore` is a stack of residual blocks (He et al., CVPR 2016,
https://arxiv.org/abs/1512.03385) with

* :class:`RMSNorm2d` (Zhang & Sennrich, NeurIPS 2019, https://arxiv.org/abs/1910.07467), with a
  learnable per-channel scale and shift, or BatchNorm, or no norm;
* the last norm of every residual branch zero-initialised, so every block starts as its shortcut
  (the identity where the shapes match; Goyal et al. 2017, https://arxiv.org/abs/1706.02677,
  Sec. 5.1). Unlike the predecessor, which looked for a ``weight`` attribute that its RMSNorm did
  not have and so silently zeroed nothing, the scale is found by type and a test checks it;
* a weight initialisation that keeps the forward variance for the activation actually used
  (:func:`activation_gain`), not ReLU's or leaky ReLU's gain for a SiLU network;
* optional depthwise-separable convolutions (Chollet, CVPR 2017, https://arxiv.org/abs/1610.02357)
  or weight normalisation of the standard convolutions (Salimans & Kingma, NeurIPS 2016,
  https://arxiv.org/abs/1602.07868), never both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

__all__ = ["RMSNorm2d", "ResidualBlock", "ResidualCore", "activation_gain"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}
_NORMS = ("rms", "batch", None)


class RMSNorm2d(nn.Module):
    """Root-mean-square norm over the channels of every pixel, with a learnable scale and shift.

    For ``x`` of shape ``(B, C, H, W)``, at every batch element ``b`` and pixel ``(h, w)``::

        y[b, c, h, w] = x[b, c, h, w] / sqrt(mean_c' x[b, c', h, w]**2 + eps) * gamma[c] + beta[c]

    i.e. the statistic is taken over dim 1 (channels) only, per pixel, like a LayerNorm over
    channels without the mean subtraction; nothing is shared across the batch or across space,
    so the output of a sample does not depend on its batch. The mean square is computed in
    float32 (autocast-safe) and the result cast back to the input's dtype.

    Args:
        num_channels: ``C``.
        eps: Added to the mean square.
        affine: Learn ``gamma`` (init 1) and ``beta`` (init 0), each ``(C,)``.

    Raises:
        ValueError: For ``num_channels < 1`` or ``eps <= 0``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}.")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}.")
        self.num_channels = num_channels
        self.eps = eps
        if affine:
            self.gamma = nn.Parameter(torch.ones(num_channels))
            self.beta = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("gamma", None)
            self.register_parameter("beta", None)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``(B, C, H, W)``; returns ``(B, C, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"RMSNorm2d({self.num_channels}) expects (B, {self.num_channels}, H, W), got {tuple(x.shape)}."
            )
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(dim=1, keepdim=True) + self.eps)
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        """Channels, eps and affine, for ``repr``."""
        return f"{self.num_channels}, eps={self.eps}, affine={self.gamma is not None}"


@cache
def _gain_of(activation: type[nn.Module]) -> float:
    z = torch.linspace(-12.0, 12.0, 240_001, dtype=torch.float64)
    density = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    with torch.no_grad():
        second_moment = torch.trapezoid(activation()(z) ** 2 * density, z).item()
    return 1.0 / math.sqrt(second_moment)


def activation_gain(activation: Callable[[], nn.Module]) -> float:
    """The Kaiming gain of an activation: ``1 / sqrt(E[φ(z)²])`` for ``z ~ N(0, 1)``.

    He et al. (ICCV 2015, https://arxiv.org/abs/1502.01852, Eq. 7-10) show that a convolution
    with zero-mean weights of variance ``gain² / fan_in`` whose input is ``φ(y)``, ``y`` of unit
    variance, has an output of variance ``gain² · E[φ(y)²]``; the forward variance is kept for
    ``gain² = 1 / E[φ(z)²]``. For ReLU ``E = 1/2`` gives the familiar ``sqrt(2)``; for SiLU
    ``E ≈ 0.3558`` gives ``≈ 1.677`` (the predecessor's leaky-ReLU gain with ``a = 0.01`` is
    ``≈ 1.414``, ReLU's, and starts a SiLU network with activations shrinking layer by layer).
    The expectation is computed by quadrature on ``[-12, 12]``, so any injected activation gets
    its own gain (the same idea as the signal-propagation gammas of Brock et al., ICLR 2021,
    https://arxiv.org/abs/2101.08692, which use the variance instead of the second moment
    because their weights are standardised to zero mean per output).

    Args:
        activation: A zero-argument factory of the activation module (``nn.SiLU``).

    Returns:
        The gain, a float.
    """
    if isinstance(activation, type):
        return _gain_of(activation)
    return _gain_of.__wrapped__(activation)


def _conv_init(conv: nn.Conv2d, gain: float) -> None:
    """Zero-mean normal weights with std ``gain / sqrt(fan_in)``; zero bias."""
    fan_in = conv.weight[0].numel()  # (C_in / groups) * kH * kW
    nn.init.normal_(conv.weight, std=gain / math.sqrt(fan_in))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _norm_scale(norm: nn.Module) -> Tensor:
    """The learnable per-channel scale of a norm built here (RMSNorm2d's gamma, BatchNorm's weight)."""
    if isinstance(norm, RMSNorm2d):
        return norm.gamma
    if isinstance(norm, nn.BatchNorm2d):
        return norm.weight
    raise TypeError(f"no known scale on {type(norm).__name__}")  # pragma: no cover - only built norms


class ResidualBlock(nn.Module):
    """``y = shortcut(x) + branch(x)``, the branch starting at zero.

    ``branch = conv(k, stride) -> norm -> act -> conv(k) -> norm``; ``shortcut`` is the identity
    when the channels and the stride allow it, else a 1x1 convolution (with the stride) and a norm,
    as torchvision's ResNet does. There is no activation after the sum (as in ConvNeXt), so a block
    whose branch is zero is exactly its shortcut. The branch's last norm has its scale set to zero
    (its shift is already zero); without a norm the branch's last convolution is zeroed instead (its
    weight-norm magnitude ``g`` when weight normalisation is on).

    With ``depthwise=True`` each k x k convolution is depthwise (``groups = C_in``) followed by a
    1x1 pointwise one, with no norm or activation in between (Chollet 2017, Sec. 4.7, found none
    best); the 1x1 shortcut stays a standard convolution.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: Odd, so ``kernel_size // 2`` padding keeps the centre aligned.
        stride: Of the branch's first convolution (and the shortcut).
        norm: ``"rms"`` (:class:`RMSNorm2d`), ``"batch"`` (``nn.BatchNorm2d``) or None.
        activation: Zero-argument factory of the activation module.
        depthwise: Depthwise-separable convolutions.
        weight_norm: Weight normalisation of the standard convolutions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm: str | None = "rms",
        activation: Callable[[], nn.Module] = nn.SiLU,
        depthwise: bool = False,
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        _check_options(kernel_size, norm, depthwise, weight_norm)
        gain = activation_gain(activation)
        conv = _ConvFactory(kernel_size, norm, depthwise, weight_norm)
        self.branch = nn.Sequential(
            *conv(in_channels, out_channels, stride, gain=1.0),
            *_norm(norm, out_channels),
            activation(),
            *conv(out_channels, out_channels, 1, gain=gain),
            *_norm(norm, out_channels),
        )
        if in_channels == out_channels and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            projection = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=norm is None)
            _conv_init(projection, 1.0)
            if weight_norm:
                projection = _weight_norm(projection)
            self.shortcut = nn.Sequential(projection, *_norm(norm, out_channels))
        last = self.branch[-1]
        with torch.no_grad():
            if norm is not None:
                _norm_scale(last).zero_()
            elif weight_norm:
                last.parametrizations.weight.original0.zero_()  # g; v keeps its direction
            else:
                last.weight.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W) -> (B, C_out, H', W')``."""
        return self.shortcut(x) + self.branch(x)


class _ConvFactory:
    """Builds the k x k convolution(s) of a block, initialised for the activation before them."""

    def __init__(self, kernel_size: int, norm: str | None, depthwise: bool, weight_norm: bool) -> None:
        self.kernel_size, self.bias, self.depthwise, self.weight_norm = (
            kernel_size,
            norm is None,
            depthwise,
            weight_norm,
        )

    def __call__(self, c_in: int, c_out: int, stride: int, gain: float) -> list[nn.Module]:
        k, pad = self.kernel_size, self.kernel_size // 2
        if self.depthwise:
            dw = nn.Conv2d(c_in, c_in, k, stride=stride, padding=pad, groups=c_in, bias=False)
            pw = nn.Conv2d(c_in, c_out, 1, bias=self.bias)
            _conv_init(dw, gain)  # the depthwise conv reads the activated signal
            _conv_init(pw, 1.0)
            return [dw, pw]
        conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=self.bias)
        _conv_init(conv, gain)
        return [_weight_norm(conv) if self.weight_norm else conv]


def _norm(norm: str | None, channels: int) -> list[nn.Module]:
    if norm == "rms":
        return [RMSNorm2d(channels)]
    if norm == "batch":
        return [nn.BatchNorm2d(channels)]
    return []


def _check_options(kernel_size: int, norm: str | None, depthwise: bool, weight_norm: bool) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be an odd int >= 1, got {kernel_size!r}: an even kernel with kernel_size // 2 "
            "padding shifts the feature map by half a pixel and changes its size."
        )
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of 'rms', 'batch' or None, got {norm!r}.")
    if depthwise and weight_norm:
        raise ValueError(
            "weight_norm=True is for standard convolutions only, but depthwise=True was also given: "
            "a depthwise filter has a single input channel, so normalising each filter's 3x3 weights to "
            "a learned length leaves almost no freedom. Choose one of depthwise or weight_norm."
        )


class ResidualCore(nn.Module):
    """A stem and one residual block per entry of ``channels``: frames to a feature map.

    ``stem = conv(k) -> norm -> act`` maps ``in_channels`` to ``channels[0]``; block ``i`` maps
    ``channels[i - 1]`` (``channels[0]`` for the first) to ``channels[i]`` with stride
    ``strides[i]`` (:class:`ResidualBlock`). All convolutions pad by ``kernel_size // 2``, so with
    the default ``strides=1`` the feature map keeps the input's ``H x W`` (what a readout wants:
    one feature vector per pixel of the stimulus); a stride ``s`` maps a size ``n`` to
    ``(n - 1) // s + 1`` (:meth:`output_shape`).

    Initialisation: every convolution whose input is the activation's output gets zero-mean
    normal weights with std ``activation_gain(activation) / sqrt(fan_in)`` (:func:`activation_gain`:
    ≈ 1.677 for SiLU, ``sqrt(2)`` for ReLU); those that read the raw input or the residual stream get
    gain 1. The branches' last norms start at zero, so at initialisation the core is the stem
    followed by the blocks' shortcuts.

    Args:
        in_channels: Channels of a frame (1 for grey movies).
        channels: Output channels of each block, e.g. ``[64, 128, 256]``; ``out_channels`` is the last.
        kernel_size: Odd kernel size of every k x k convolution.
        strides: One stride per block, or one int for every block (default 1: no downsampling).
        norm: ``"rms"`` (:class:`RMSNorm2d`), ``"batch"`` (``nn.BatchNorm2d``) or None (convolutions
            then have biases).
        activation: ``"silu"``, ``"relu"``, ``"gelu"`` or a zero-argument factory of a module
            (``torch.nn.Mish``); its gain is computed for the initialisation.
        depthwise: Depthwise-separable k x k convolutions in the blocks (the stem stays standard).
        weight_norm: Weight normalisation (``torch.nn.utils.parametrizations.weight_norm``) of every
            convolution; standard convolutions only.

    Raises:
        ValueError: For an even or non-positive kernel, an empty or non-positive channel list, strides
            of the wrong length or below 1, an unknown norm or activation name, or ``depthwise`` with
            ``weight_norm``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256),
        kernel_size: int = 3,
        strides: int | Sequence[int] = 1,
        norm: str | None = "rms",
        activation: Callable[[], nn.Module] | str = "silu",
        depthwise: bool = False,
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        _check_options(kernel_size, norm, depthwise, weight_norm)
        channels = list(channels)
        if (
            in_channels < 1
            or not channels
            or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels)
        ):
            raise ValueError(
                "in_channels must be >= 1 and channels a non-empty list of ints >= 1, got "
                f"in_channels={in_channels!r}, channels={channels!r}."
            )
        strides = [strides] * len(channels) if isinstance(strides, int) else list(strides)
        if len(strides) != len(channels) or any(s < 1 for s in strides):
            raise ValueError(f"strides must be an int >= 1 or one per block ({len(channels)}), got {strides!r}.")
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(
                    f"activation must be one of {sorted(_ACTIVATIONS)} or a module factory, got {activation!r}."
                )
            activation = _ACTIVATIONS[activation]
        self.in_channels = in_channels
        self.channels = channels
        self.kernel_size = kernel_size
        self.strides = strides
        stem = nn.Conv2d(in_channels, channels[0], kernel_size, padding=kernel_size // 2, bias=norm is None)
        _conv_init(stem, 1.0)
        self.stem = nn.Sequential(_weight_norm(stem) if weight_norm else stem, *_norm(norm, channels[0]), activation())
        widths = [channels[0], *channels]
        self.blocks = nn.Sequential(
            *(
                ResidualBlock(
                    widths[i], widths[i + 1], kernel_size, strides[i], norm, activation, depthwise, weight_norm
                )
                for i in range(len(channels))
            )
        )

    @property
    def out_channels(self) -> int:
        """Channels of the output feature map."""
        return self.channels[-1]

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """The output ``(C_out, H', W')`` for frames of ``height x width`` (a readout's ``in_shape``).

        Args:
            height: ``H`` of the input frames.
            width: ``W`` of the input frames.

        Returns:
            ``(out_channels, H', W')``, each stride ``s`` mapping ``n`` to ``(n - 1) // s + 1``.
        """
        for s in self.strides:
            height, width = (height - 1) // s + 1, (width - 1) // s + 1
        return self.out_channels, height, width

    def forward(self, x: Tensor) -> Tensor:
        """Frames ``(B, in_channels, H, W)`` to features ``(B, out_channels, H', W')``.

        Raises:
            ValueError: For an input that is not ``(B, in_channels, H, W)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResidualCore expects frames (B, {self.in_channels}, H, W), got {tuple(x.shape)}; "
                "fold time into the batch first: (B, T, C, H, W) -> (B * T, C, H, W)."
            )
        return self.blocks(self.stem(x))
