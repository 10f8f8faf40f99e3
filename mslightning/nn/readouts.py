"""Readouts: a feature map in, one positive firing rate per neuron out (one readout per session).

A readout maps features ``(B, C, H, W)`` (in the ConvGRU family, the hidden state of every time
step, time folded into the batch) to rates ``(B, N)`` for the ``N`` neurons of one recording
session. Every readout here

* is sized from the core's ``in_shape = (C, H, W)`` and the session's neuron count at construction;
* ends in a positive output nonlinearity plus a floor ``min_rate`` (:class:`Readout`), so rates are
  strictly positive even where the nonlinearity underflows in float32 and a Poisson
  log-likelihood stays finite;
* has per-neuron feature weights ``features`` ``(C, N)`` and a bias ``(N,)``, whose L1 norm
  :meth:`Readout.regularizer` returns unweighted (the model chooses the weight), and
  :meth:`Readout.initialize_bias` which sets the bias so every neuron starts at its mean rate.

:class:`GaussianReadout` reads each neuron's features at one learned position (Lurz et al.,
ICLR 2021, https://openreview.net/forum?id=Tp7kI90Htd, the "Gaussian readout" of
neuralpredictors); :class:`FactorisedReadout` uses a learned spatial mask per neuron (Klindt et
al., NeurIPS 2017, https://arxiv.org/abs/1711.02653).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

__all__ = ["FactorisedReadout", "GaussianReadout", "Readout"]


def _inverse_softplus(rate: Tensor) -> Tensor:
    # softplus(x) = log(1 + e^x)  <=>  x = log(e^r - 1) = r + log(1 - e^-r)
    return rate + torch.log(-torch.expm1(-rate))


def _elu1(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


def _inverse_elu1(rate: Tensor) -> Tensor:
    return torch.where(rate >= 1.0, rate - 1.0, torch.log(rate))


_OUTPUTS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "softplus": (F.softplus, _inverse_softplus),
    "elu1": (_elu1, _inverse_elu1),
    "exp": (torch.exp, torch.log),
}


class Readout(nn.Module):
    """What every readout shares: sizes, feature weights, bias, the positive output, L1, bias init.

    ``rate = output(drive) + min_rate`` where ``drive`` is the readout's linear prediction
    ``(B, N)`` (bias included). The output nonlinearity, by name:

    * ``"softplus"`` (default): ``log(1 + e^x)``; linear for large drive, so a rate does not explode
      with its drive (open-retina's choice);
    * ``"elu1"``: ``ELU(x) + 1``, ``e^x`` below 0 and ``x + 1`` above (neuralpredictors' choice);
    * ``"exp"``: ``e^x``, the canonical Poisson GLM link (can overflow for large drive).

    Each saturates to 0 in float32 for a drive below about -100, so ``min_rate`` (default
    ``1e-6`` spikes per bin) is added: ``log(rate)`` is finite whatever the drive.

    Args:
        in_shape: ``(C, H, W)`` of the features.
        neurons: ``N``, the session's neuron count.
        bias: Learn a per-neuron bias (init 0; see :meth:`initialize_bias`).
        output: ``"softplus"``, ``"elu1"`` or ``"exp"``.
        min_rate: The floor added to every rate, >= 0.

    Raises:
        ValueError: For a shape that is not three positive ints, ``neurons < 1``, an unknown output
            name or a negative ``min_rate``.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        neurons: int,
        bias: bool = True,
        output: str = "softplus",
        min_rate: float = 1e-6,
    ) -> None:
        super().__init__()
        in_shape = tuple(in_shape)
        if len(in_shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in in_shape):
            raise ValueError(f"in_shape must be (C, H, W), three ints >= 1, got {in_shape!r}.")
        if isinstance(neurons, bool) or not isinstance(neurons, int) or neurons < 1:
            raise ValueError(f"neurons must be an int >= 1, got {neurons!r}.")
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {sorted(_OUTPUTS)}, got {output!r}.")
        if not min_rate >= 0:
            raise ValueError(f"min_rate must be >= 0, got {min_rate!r}.")
        self.in_shape: tuple[int, int, int] = in_shape  # type: ignore[assignment]
        self.neurons = neurons
        self.output = output
        self.min_rate = float(min_rate)
        channels = in_shape[0]
        # unit-variance drive for unit-variance, uncorrelated features
        self.features = nn.Parameter(torch.randn(channels, neurons) / math.sqrt(channels))
        self.bias = nn.Parameter(torch.zeros(neurons)) if bias else None
        # persisted: a model restored from a checkpoint does not start its learnt bias over
        self.register_buffer("bias_initialized", torch.tensor(False))

    def rate(self, drive: Tensor) -> Tensor:
        """The positive output: ``output(drive) + min_rate``, same shape as ``drive``."""
        return _OUTPUTS[self.output][0](drive) + self.min_rate

    def regularizer(self, reduction: str = "sum") -> Tensor:
        """The L1 norm of the feature weights, unweighted (the model multiplies by its own weight).

        Args:
            reduction: ``"sum"`` (``Σ |features|``) or ``"mean"`` (divided by ``C * N``, so sessions
                with different neuron counts are penalised alike per weight).

        Returns:
            A scalar tensor.
        """
        if reduction == "sum":
            return self.features.abs().sum()
        if reduction == "mean":
            return self.features.abs().mean()
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")

    @torch.no_grad()
    def initialize_bias(self, mean_rates: Tensor) -> None:
        """Set the bias so that a neuron with zero drive from the features fires at its mean rate.

        ``bias = output⁻¹(mean_rate - min_rate)``, the rate clamped to at least ``min_rate`` above the
        floor so a silent neuron gets a large negative, finite bias. Sets the ``bias_initialized``
        buffer (saved with the state dict), so callers can tell a fresh readout from a trained one.

        Args:
            mean_rates: ``(N,)`` mean responses (spikes per bin) over the training set.

        Raises:
            ValueError: Without a bias, or for ``mean_rates`` of another shape.
        """
        if self.bias is None:
            raise ValueError("this readout was built with bias=False; there is no bias to initialise.")
        mean_rates = torch.as_tensor(mean_rates, dtype=torch.float64)
        if mean_rates.shape != (self.neurons,):
            raise ValueError(f"mean_rates must be ({self.neurons},), got {tuple(mean_rates.shape)}.")
        floor = max(self.min_rate, 1e-8)
        target = (mean_rates - self.min_rate).clamp_min(floor)
        self.bias.copy_(_OUTPUTS[self.output][1](target).to(self.bias))
        self.bias_initialized.fill_(True)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A state dict from before the flag existed holds a trained bias: it is not to be started over.
        state_dict.setdefault(prefix + "bias_initialized", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check(self, x: Tensor, spatial: bool) -> None:
        expected = self.in_shape if spatial else self.in_shape[:1]
        got = tuple(x.shape[1 : 1 + len(expected)])
        if x.ndim != 4 or got != expected:
            want = f"(B, {', '.join(map(str, self.in_shape))})" if spatial else f"(B, {self.in_shape[0]}, H, W)"
            raise ValueError(f"{type(self).__name__} expects features {want}, got {tuple(x.shape)}.")

    def extra_repr(self) -> str:
        """Shape, neurons and output, for ``repr``."""
        return f"in_shape={self.in_shape}, neurons={self.neurons}, output={self.output!r}"


class GaussianReadout(Readout):
    """Each neuron reads the features at one learned position, jittered by a learned spread in training.

    Per neuron ``n``: a position ``μ_n = tanh(m_n) ∈ (-1, 1)²`` (``mu``, ``(N, 2)``, ``[:, 0]`` the
    x / width coordinate and ``[:, 1]`` the y / height coordinate, as ``F.grid_sample`` reads them)
    and a spread ``σ_n`` (``sigma``, ``(N, 2)``, one per axis). The raw parameter ``m`` is free, so no
    value of it and no optimizer step can place a neuron outside the feature map; ``tanh`` was
    chosen over clamping because a clamped position at the border has zero gradient and is stuck
    there for good (``tanh`` only slows it down).

    In training (or with ``sample=True``) every batch element and neuron gets its own position
    ``μ + σ ⊙ ε``, ``ε ~ N(0, I)``, clamped to ``[-1, 1]``: the readout learns where to look while
    the spread shrinks (Lurz et al. 2021). In eval (or ``sample=False``) it reads at ``μ``: the
    output is deterministic. ``σ`` is stored with its sign (``ε`` is symmetric, so only ``|σ|``
    matters; ``sigma`` returns ``|σ|``).

    Features are read by bilinear interpolation, ``F.grid_sample(..., align_corners=True)``: ``-1``
    and ``1`` are the centres of the first and last pixels, so every position in ``[-1, 1]²`` lies
    between pixel centres and nothing is read from the zero padding; pixel ``(i, j)`` of an
    ``H x W`` map sits at ``(x, y) = (-1 + 2j / (W - 1), -1 + 2i / (H - 1))``. As positions are
    relative, the readout accepts any ``H x W`` with ``C`` channels.

    Args:
        in_shape: ``(C, H, W)`` of the features.
        neurons: ``N``.
        init_mu_range: Initial positions uniform in ``[-init_mu_range, init_mu_range]²``, in ``(0, 1)``.
        init_sigma: Initial spread (grid units, the map is 2 wide), > 0.
        bias: Learn a per-neuron bias.
        output: The positive output nonlinearity (:class:`Readout`).
        min_rate: The floor added to every rate.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        neurons: int,
        init_mu_range: float = 0.5,
        init_sigma: float = 0.2,
        bias: bool = True,
        output: str = "softplus",
        min_rate: float = 1e-6,
    ) -> None:
        super().__init__(in_shape, neurons, bias=bias, output=output, min_rate=min_rate)
        if not 0 < init_mu_range < 1:
            raise ValueError(f"init_mu_range must be in (0, 1), got {init_mu_range!r}.")
        if not init_sigma > 0:
            raise ValueError(f"init_sigma must be > 0, got {init_sigma!r}.")
        self.mu_raw = nn.Parameter(torch.atanh(torch.empty(neurons, 2).uniform_(-init_mu_range, init_mu_range)))
        self.sigma_raw = nn.Parameter(torch.full((neurons, 2), float(init_sigma)))

    @property
    def mu(self) -> Tensor:
        """Mean positions ``(N, 2)`` in ``(-1, 1)``, ``(x, y)``."""
        return torch.tanh(self.mu_raw)

    @property
    def sigma(self) -> Tensor:
        """Spreads ``(N, 2)``, >= 0."""
        return self.sigma_raw.abs()

    def grid(self, batch_size: int, sample: bool) -> Tensor:
        """The positions read: ``(B, N, 2)`` in ``[-1, 1]``, sampled or the means.

        Args:
            batch_size: ``B``.
            sample: Draw ``μ + σ ⊙ ε`` (clamped to ``[-1, 1]``) instead of ``μ``.

        Returns:
            ``(B, N, 2)``, ``(x, y)`` last.
        """
        mu = self.mu.unsqueeze(0).expand(batch_size, -1, -1)
        if not sample:
            return mu
        eps = torch.randn_like(mu)
        return (mu + self.sigma * eps).clamp(-1.0, 1.0)

    def forward(self, x: Tensor, sample: bool | None = None) -> Tensor:
        """Rates for features ``x`` ``(B, C, H, W)``.

        Args:
            x: ``(B, C, H, W)``.
            sample: Jitter the positions; default ``self.training``.

        Returns:
            Rates ``(B, N)``, > 0.
        """
        self._check(x, spatial=False)
        sample = self.training if sample is None else sample
        grid = self.grid(x.shape[0], sample).to(x.dtype).unsqueeze(2)  # (B, N, 1, 2)
        read = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)  # (B, C, N, 1)
        drive = torch.einsum("bcn,cn->bn", read.squeeze(-1), self.features.to(x.dtype))
        if self.bias is not None:
            drive = drive + self.bias.to(x.dtype)
        return self.rate(drive)


class FactorisedReadout(Readout):
    """A spatial mask ``(N, H, W)`` times feature weights ``(C, N)`` per neuron.

    ``drive[b, n] = Σ_{c,h,w} x[b, c, h, w] · mask[n, h, w] · features[c, n] + bias[n]``.

    The mask's scale and the feature weights' scale trade off freely, so the mask is constrained:

    * ``"softmax"`` (default): ``mask[n] = softmax(raw[n])`` over the ``H * W`` pixels, positive and
      summing to 1 — a weighted mean of the features, the scale living in ``features``;
    * ``"l2"``: ``mask[n] = raw[n] / ||raw[n]||₂``, signed with unit norm (neuralpredictors'
      ``normalize=True``);
    * ``"none"``: ``mask = raw``, unconstrained.

    Args:
        in_shape: ``(C, H, W)`` of the features (the mask fixes ``H x W``).
        neurons: ``N``.
        spatial: ``"softmax"``, ``"l2"`` or ``"none"``.
        bias: Learn a per-neuron bias.
        output: The positive output nonlinearity (:class:`Readout`).
        min_rate: The floor added to every rate.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        neurons: int,
        spatial: str = "softmax",
        bias: bool = True,
        output: str = "softplus",
        min_rate: float = 1e-6,
    ) -> None:
        super().__init__(in_shape, neurons, bias=bias, output=output, min_rate=min_rate)
        if spatial not in ("softmax", "l2", "none"):
            raise ValueError(f"spatial must be 'softmax', 'l2' or 'none', got {spatial!r}.")
        self.spatial = spatial
        _, height, width = self.in_shape
        self.mask_raw = nn.Parameter(torch.randn(neurons, height, width) / math.sqrt(height * width))

    @property
    def mask(self) -> Tensor:
        """The constrained spatial mask ``(N, H, W)``."""
        if self.spatial == "softmax":
            return self.mask_raw.flatten(1).softmax(dim=1).view_as(self.mask_raw)
        if self.spatial == "l2":
            return self.mask_raw / self.mask_raw.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        return self.mask_raw

    def forward(self, x: Tensor) -> Tensor:
        """Rates for features ``x`` ``(B, C, H, W)`` (exactly ``in_shape``); returns ``(B, N)``, > 0."""
        self._check(x, spatial=True)
        pooled = torch.einsum("bchw,nhw->bcn", x, self.mask.to(x.dtype))
        drive = torch.einsum("bcn,cn->bn", pooled, self.features.to(x.dtype))
        if self.bias is not None:
            drive = drive + self.bias.to(x.dtype)
        return self.rate(drive)
