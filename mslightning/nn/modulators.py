"""Behaviour modulators: mix a behaviour vector into the core's feature maps, per time step.

A modulator maps core features ``(B, T, C, H, W)`` and behaviour ``(B, T, D)`` (running speed,
pupil size, ... per frame) to features ``(B, T, C_out, H, W)`` for the ConvGRU, and declares
``out_channels`` (from ``in_channels`` at construction) so the ConvGRU can be sized.

* :class:`ConcatModulator` embeds the behaviour with a small MLP and appends the embedding as
  ``E`` constant extra channels (``C_out = C + E``): the ConvGRU learns what to do with it.
* :class:`FiLMModulator` scales and shifts every channel by the embedding (Perez et al., AAAI 2018,
  https://arxiv.org/abs/1709.07871): ``features * (1 + γ) + β``, ``C_out = C``. ``γ`` and ``β`` come
  from a zero-initialised last layer, so it starts as the identity; ``1 + γ`` is unbounded in both
  directions, so behaviour can suppress a channel (gain < 1), not only amplify it (a flaw of a
  modulator whose gain was ``1 + softplus(·) >= 1``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["ConcatModulator", "FiLMModulator", "Modulator"]


class Modulator(nn.Module):
    """Base class: input checks and the behaviour MLP ``D -> hidden -> act -> out`` (or one Linear).

    Args:
        in_channels: ``C`` of the features.
        behaviour_dim: ``D``.
        embedding_out: Width of the MLP's output.
        hidden: Width of the MLP's hidden layer; None for a single ``Linear(D, embedding_out)``.
        activation: Zero-argument factory of the hidden activation.

    Attributes:
        out_channels: ``C_out`` of the output features.
        embedding: The MLP, ``(..., D) -> (..., embedding_out)``.

    Raises:
        ValueError: For non-positive sizes.
    """

    out_channels: int

    def __init__(
        self,
        in_channels: int,
        behaviour_dim: int,
        embedding_out: int,
        hidden: int | None = 64,
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        sizes = {"in_channels": in_channels, "behaviour_dim": behaviour_dim, "embedding size": embedding_out}
        if hidden is not None:
            sizes["hidden"] = hidden
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        self.in_channels = in_channels
        self.behaviour_dim = behaviour_dim
        if hidden is None:
            self.embedding: nn.Module = nn.Linear(behaviour_dim, embedding_out)
        else:
            self.embedding = nn.Sequential(
                nn.Linear(behaviour_dim, hidden), activation(), nn.Linear(hidden, embedding_out)
            )

    @property
    def last_layer(self) -> nn.Linear:
        """The MLP's output layer."""
        return self.embedding[-1] if isinstance(self.embedding, nn.Sequential) else self.embedding

    def check(self, features: Tensor, behaviour: Tensor) -> None:
        """Raise a ValueError naming both shapes unless they are ``(B, T, C, H, W)`` and ``(B, T, D)``.

        Args:
            features: ``(B, T, C, H, W)``, ``C = in_channels``.
            behaviour: ``(B, T, D)``, ``D = behaviour_dim``, same ``B`` and ``T``.
        """
        if (
            features.ndim != 5
            or behaviour.ndim != 3
            or features.shape[:2] != behaviour.shape[:2]
            or features.shape[2] != self.in_channels
            or behaviour.shape[2] != self.behaviour_dim
        ):
            raise ValueError(
                f"{type(self).__name__} expects features (B, T, {self.in_channels}, H, W) and behaviour "
                f"(B, T, {self.behaviour_dim}) with the same B and T, got features {tuple(features.shape)} and "
                f"behaviour {tuple(behaviour.shape)}."
            )


class ConcatModulator(Modulator):
    """Append a behaviour embedding, tiled over space, as extra channels: ``C_out = C + E``.

    ``out[:, :, :C] = features``; ``out[:, :, C:] = MLP(behaviour)`` ``(B, T, E)`` repeated at every
    pixel.

    Args:
        in_channels: ``C``.
        behaviour_dim: ``D``.
        embedding_dim: ``E``.
        hidden: Hidden width of the MLP; None for one Linear layer.
        activation: Zero-argument factory of the hidden activation.
    """

    def __init__(
        self,
        in_channels: int,
        behaviour_dim: int,
        embedding_dim: int = 32,
        hidden: int | None = 64,
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__(in_channels, behaviour_dim, embedding_dim, hidden, activation)
        self.embedding_dim = embedding_dim
        self.out_channels = in_channels + embedding_dim

    def forward(self, features: Tensor, behaviour: Tensor) -> Tensor:
        """``(B, T, C, H, W)``, ``(B, T, D)`` -> ``(B, T, C + E, H, W)``."""
        self.check(features, behaviour)
        b, t, _, h, w = features.shape
        embedded = self.embedding(behaviour).to(features.dtype)  # (B, T, E)
        tiled = embedded[..., None, None].expand(b, t, self.embedding_dim, h, w)
        return torch.cat([features, tiled], dim=2)


class FiLMModulator(Modulator):
    """Per-channel gain and shift from the behaviour: ``features * (1 + γ) + β``, ``C_out = C``.

    ``[γ, β] = MLP(behaviour)`` ``(B, T, 2C)``, the same at every pixel. The MLP's last layer
    (weights and bias) starts at zero, so the modulator starts as the identity and behaviour enters
    gradually (as adaLN-Zero in Peebles & Xie, ICCV 2023, https://arxiv.org/abs/2212.09748). The
    gain ``1 + γ`` is not bounded: below 1 suppresses a channel, above 1 amplifies it, below 0 flips
    its sign (FiLM allows this too).

    Args:
        in_channels: ``C``.
        behaviour_dim: ``D``.
        hidden: Hidden width of the MLP; None for one (zero-initialised) Linear layer.
        activation: Zero-argument factory of the hidden activation.
    """

    def __init__(
        self,
        in_channels: int,
        behaviour_dim: int,
        hidden: int | None = 64,
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__(in_channels, behaviour_dim, 2 * in_channels, hidden, activation)
        self.out_channels = in_channels
        nn.init.zeros_(self.last_layer.weight)
        nn.init.zeros_(self.last_layer.bias)

    def gain_and_shift(self, behaviour: Tensor) -> tuple[Tensor, Tensor]:
        """The gain ``1 + γ`` and the shift ``β``, each ``(B, T, C)``, for behaviour ``(B, T, D)``."""
        gamma, beta = self.embedding(behaviour).chunk(2, dim=-1)
        return 1.0 + gamma, beta

    def forward(self, features: Tensor, behaviour: Tensor) -> Tensor:
        """``(B, T, C, H, W)``, ``(B, T, D)`` -> ``(B, T, C, H, W)``."""
        self.check(features, behaviour)
        gain, shift = self.gain_and_shift(behaviour)
        return features * gain.to(features.dtype)[..., None, None] + shift.to(features.dtype)[..., None, None]
