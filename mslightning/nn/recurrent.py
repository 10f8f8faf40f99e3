"""Convolutional GRU: PyTorch's GRU equations with convolutions in place of matrix products.

:class:`ConvGRUCell` computes, for input ``x`` of shape ``(B, C_in, H, W)`` and state ``h`` of
shape ``(B, hidden, H, W)`` (``*`` a convolution, ``⊙`` the element-wise product; exactly the
equations of :class:`torch.nn.GRUCell`, Cho et al. 2014, with the reset gate applied to the
recurrent candidate term *after* its convolution as in cuDNN and PyTorch)::

    r  = σ(W_ir * x + b_ir + W_hr * h + b_hr)
    z  = σ(W_iz * x + b_iz + W_hz * h + b_hz)
    n  = tanh(W_in * x + b_in + r ⊙ (W_hn * h + b_hn))
    h' = (1 − z) ⊙ n + z ⊙ h

The six gate convolutions are *fused* into two: one convolution of ``x`` with ``3·hidden``
output channels (``r, z, n`` in that order, as ``GRUCell.weight_ih``) and one of ``h`` (as
``weight_hh``). With ``kernel_size=1`` on ``1×1`` maps the cell *is* ``GRUCell`` (the tests copy
its weights and compare). :class:`ConvGRU` runs a cell over ``(B, T, C_in, H, W)`` and computes
the input convolution of every time step in one call before the loop: only the recurrent
convolution is sequential.

Kernel sizes are odd, with ``'same'`` padding ``k // 2``: an even kernel cannot be centred and
``k // 2`` padding would shift the state by half a pixel every step (a predecessor's bug).

Options (all off by default, all applied identically in train and eval mode):

* ``gate_norm_groups=g``: GroupNorm on the gate pre-activations, separately for the input and
  the recurrent convolution, **per gate**: ``g`` groups within each of ``r``, ``z``, ``n`` (a
  ``GroupNorm(3g, 3·hidden)`` on the fused output, whose groups never straddle two gates), each
  with its own affine. The recurrent candidate keeps its structure:
  ``n = tanh(N_x(W_in * x) + r ⊙ N_h(W_hn * h))`` (``N`` the norm, biases inside the convs).
  ``g`` must divide ``hidden``; otherwise a ``ValueError`` names both numbers.
* ``learnable_h0``: a learned initial state ``(1, hidden, 1, 1)`` broadcast over batch and
  space (zeros at initialisation); otherwise the initial state is zeros.
* ``residual``: the cell's *output* is ``h' + P(x)`` with ``P`` the identity when
  ``C_in == hidden`` and a 1×1 convolution otherwise. The residual feeds the output only, never
  the recurrence: the state stays a GRU state, bounded by ``max(1, |h0|)``, and the next step
  receives ``h'``.
* ``groups``: grouped gate convolutions; hidden channel block ``i`` (of ``hidden / groups``) of
  every gate sees input channel block ``i`` only (the fused output is laid out group-major and
  reordered to gate-major, so gates never mix groups). Must divide ``C_in`` and ``hidden``.
* ``depthwise``: depthwise-separable gate convolutions, a depthwise ``k×k`` (no bias) then a
  pointwise ``1×1`` to ``3·hidden`` (grouped when ``groups > 1``).
* ``orthogonal_init``: orthogonal initialisation of the recurrent weights, block by block:
  every (gate, group) block of the channel-mixing recurrent weight, flattened to
  ``(hidden/groups, hidden/groups · k · k)``, gets orthonormal rows (Saxe et al. 2014). With
  ``depthwise`` that is the pointwise weight; the depthwise kernel keeps torch's default.
* ``hidden_clamp=c``: the new state is clamped to ``[-c, c]`` in train *and* eval mode (a
  predecessor clamped in training only, so evaluation saw states it never trained on). A GRU
  state already stays within ``max(1, |h0|)``; the clamp matters for ``c < 1`` or large
  initial states.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

__all__ = ["ConvGRU", "ConvGRUCell"]

GATES = ("r", "z", "n")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ConvGRUCell: {name} must be a positive int, got {value!r}.")
    return value


class ConvGRUCell(nn.Module):
    """One step of a convolutional GRU with fused gate convolutions (equations in the module doc).

    Args:
        in_channels: Channels ``C_in`` of the input ``x``.
        hidden_channels: Channels ``hidden`` of the state.
        kernel_size: Odd kernel size of the gate convolutions (``'same'`` padding).
        gate_norm_groups: GroupNorm groups *per gate* on the gate pre-activations of both
            convolutions; must divide ``hidden_channels``. ``None``: no norm.
        learnable_h0: Learn the initial state ``(1, hidden, 1, 1)`` instead of zeros.
        residual: Output ``h' + P(x)`` (``P`` identity or a 1×1 conv); the recurrence gets ``h'``.
        groups: Groups of the gate convolutions; must divide ``in_channels`` and ``hidden_channels``.
        depthwise: Depthwise-separable gate convolutions (depthwise ``k×k`` then pointwise ``1×1``).
        orthogonal_init: Orthogonal initialisation of each (gate, group) block of the recurrent weight.
        hidden_clamp: Clamp the new state to ``[-c, c]`` in every mode; ``None``: no clamp.
        bias: Biases in the gate convolutions (and the residual projection), as ``GRUCell(bias=...)``.

    Attributes:
        conv_x: Input gate convolution, ``C_in -> 3·hidden`` (an ``nn.Conv2d``, or an
            ``nn.Sequential`` of ``depthwise`` and ``pointwise`` convolutions).
        conv_h: Recurrent gate convolution, ``hidden -> 3·hidden`` (same kinds).
        norm_x, norm_h: ``nn.GroupNorm(3g, 3·hidden)`` or ``nn.Identity``.
        proj: The residual projection (``nn.Identity`` or 1×1 ``nn.Conv2d``), ``None`` without residual.
        h0: The learned initial state ``(1, hidden, 1, 1)``, ``None`` unless ``learnable_h0``.

    Raises:
        ValueError: For an even or non-positive kernel size, a ``gate_norm_groups`` or ``groups``
            that does not divide the channels, or a non-positive ``hidden_clamp``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
        gate_norm_groups: int | None = None,
        learnable_h0: bool = False,
        residual: bool = False,
        groups: int = 1,
        depthwise: bool = False,
        orthogonal_init: bool = False,
        hidden_clamp: float | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.hidden_channels = hidden = _positive_int(hidden_channels, "hidden_channels")
        self.kernel_size = _positive_int(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            raise ValueError(
                f"ConvGRUCell: kernel_size must be odd for 'same' padding, got {kernel_size}: an even kernel "
                f"with padding {kernel_size // 2} shifts the state by half a pixel every step."
            )
        self.groups = _positive_int(groups, "groups")
        for name, channels in (("in_channels", in_channels), ("hidden_channels", hidden)):
            if channels % groups:
                raise ValueError(f"ConvGRUCell: groups={groups} does not divide {name}={channels}.")
        if gate_norm_groups is not None:
            _positive_int(gate_norm_groups, "gate_norm_groups")
            if hidden % gate_norm_groups:
                raise ValueError(
                    f"ConvGRUCell: gate_norm_groups={gate_norm_groups} does not divide "
                    f"hidden_channels={hidden} (the groups are per gate)."
                )
        if hidden_clamp is not None and not hidden_clamp > 0:
            raise ValueError(f"ConvGRUCell: hidden_clamp must be > 0 or None, got {hidden_clamp!r}.")
        self.gate_norm_groups = gate_norm_groups
        self.depthwise = depthwise
        self.hidden_clamp = None if hidden_clamp is None else float(hidden_clamp)
        self.residual = residual

        self.conv_x = self._gate_conv(in_channels, bias)
        self.conv_h = self._gate_conv(hidden, bias)
        if gate_norm_groups is None:
            self.norm_x, self.norm_h = nn.Identity(), nn.Identity()
        else:
            self.norm_x = nn.GroupNorm(3 * gate_norm_groups, 3 * hidden)
            self.norm_h = nn.GroupNorm(3 * gate_norm_groups, 3 * hidden)
        self.proj: nn.Module | None = None
        if residual:
            same = in_channels == hidden
            self.proj = nn.Identity() if same else nn.Conv2d(in_channels, hidden, 1, bias=bias)
        self.h0 = nn.Parameter(torch.zeros(1, hidden, 1, 1)) if learnable_h0 else None
        if orthogonal_init:
            with torch.no_grad():
                for block in self.gate_blocks(self.recurrent_weight):
                    nn.init.orthogonal_(block.reshape(block.shape[0], -1))

    def _gate_conv(self, channels: int, bias: bool) -> nn.Module:
        k, out = self.kernel_size, 3 * self.hidden_channels
        if not self.depthwise:
            return nn.Conv2d(channels, out, k, padding=k // 2, groups=self.groups, bias=bias)
        return nn.Sequential(
            OrderedDict(
                depthwise=nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False),
                pointwise=nn.Conv2d(channels, out, 1, groups=self.groups, bias=bias),
            )
        )

    @property
    def recurrent_weight(self) -> Tensor:
        """The channel-mixing recurrent weight ``(3·hidden, hidden/groups, k', k')`` (``k' = 1`` if depthwise)."""
        return self.conv_h.pointwise.weight if self.depthwise else self.conv_h.weight

    def gate_blocks(self, weight: Tensor) -> list[Tensor]:
        """Views of a fused ``(3·hidden, ...)`` weight or bias, one per (gate, group) block.

        The fused output is laid out group-major: ``(group, gate, hidden/groups)``; with
        ``groups=1`` that is ``r, z, n`` as in ``GRUCell``.

        Args:
            weight: A ``(3·hidden, ...)`` tensor of ``conv_x`` or ``conv_h`` (mixing conv).

        Returns:
            ``3·groups`` views of shape ``(hidden/groups, ...)``, ordered group by group, then r, z, n.
        """
        return list(weight.split(self.hidden_channels // self.groups))

    def _to_gate_major(self, y: Tensor) -> Tensor:
        """Reorder a fused output ``(N, 3·hidden, H, W)`` from group-major to gate-major channels."""
        if self.groups == 1:
            return y
        n, _, height, width = y.shape
        per = self.hidden_channels // self.groups
        return y.view(n, self.groups, 3, per, height, width).transpose(1, 2).reshape(n, -1, height, width)

    def input_gates(self, x: Tensor) -> Tensor:
        """Input pre-activations ``W_i* * x + b_i*`` (normalised if configured).

        Args:
            x: ``(N, C_in, H, W)``; :class:`ConvGRU` passes all time steps at once.

        Returns:
            ``(N, 3·hidden, H, W)``, channels ``r, z, n``.
        """
        return self.norm_x(self._to_gate_major(self.conv_x(x)))

    def initial_state(self, x: Tensor) -> Tensor:
        """The state before the first step, for an input ``x`` of shape ``(B, C_in, H, W)``.

        Returns:
            ``(B, hidden, H, W)``: the learned ``h0`` broadcast, or zeros.
        """
        shape = (x.shape[0], self.hidden_channels, x.shape[-2], x.shape[-1])
        if self.h0 is None:
            return x.new_zeros(shape)
        return self.h0.to(x.dtype).expand(shape)

    def recur(self, gates_x: Tensor, h: Tensor) -> Tensor:
        """One recurrent update from precomputed input pre-activations.

        Args:
            gates_x: ``(B, 3·hidden, H, W)`` from :meth:`input_gates`.
            h: ``(B, hidden, H, W)``.

        Returns:
            The new state ``h'`` ``(B, hidden, H, W)`` (clamped if configured).
        """
        gates_h = self.norm_h(self._to_gate_major(self.conv_h(h)))
        xr, xz, xn = gates_x.chunk(3, dim=1)
        hr, hz, hn = gates_h.chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h_new = torch.lerp(n, h, z)  # (1 - z) n + z h
        if self.hidden_clamp is not None:
            h_new = h_new.clamp(-self.hidden_clamp, self.hidden_clamp)
        return h_new

    def output(self, x: Tensor, h_new: Tensor) -> Tensor:
        """The cell's output: ``h'`` plus ``P(x)`` with ``residual``, else ``h'`` itself.

        Args:
            x: ``(N, C_in, H, W)``.
            h_new: ``(N, hidden, H, W)``.

        Returns:
            ``(N, hidden, H, W)``.
        """
        return h_new if self.proj is None else h_new + self.proj(x)

    def check_input(self, x: Tensor, h: Tensor | None, owner: str = "ConvGRUCell") -> None:
        """Raise a ``ValueError`` naming the shapes if ``x`` (B, C_in, H, W) or ``h`` do not fit."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{owner}: x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        expected = (x.shape[0], self.hidden_channels, x.shape[2], x.shape[3])
        if h is not None and tuple(h.shape) != expected:
            raise ValueError(f"{owner}: h must be {expected} for x of shape {tuple(x.shape)}, got {tuple(h.shape)}.")

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step.

        Args:
            x: Input ``(B, C_in, H, W)``.
            h: State ``(B, hidden, H, W)``; ``None``: the initial state (learned ``h0`` or zeros).

        Returns:
            ``(output, h')``, both ``(B, hidden, H, W)``: ``h'`` is the new state to feed back,
            ``output`` is ``h' + P(x)`` with ``residual`` and ``h'`` itself otherwise.
        """
        self.check_input(x, h)
        if h is None:
            h = self.initial_state(x)
        h_new = self.recur(self.input_gates(x), h)
        return self.output(x, h_new), h_new

    def extra_repr(self) -> str:
        """The constructor's non-default options, for ``print(module)``."""
        options = [f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}"]
        for name in ("gate_norm_groups", "hidden_clamp"):
            if getattr(self, name) is not None:
                options.append(f"{name}={getattr(self, name)}")
        if self.groups != 1:
            options.append(f"groups={self.groups}")
        for name in ("depthwise", "residual"):
            if getattr(self, name):
                options.append(f"{name}=True")
        return ", ".join(options)


class ConvGRU(nn.Module):
    """A :class:`ConvGRUCell` run over a sequence ``(B, T, C_in, H, W)``.

    The input convolution (and residual projection) of all ``T`` steps is computed in one call
    on ``(B·T, C_in, H, W)`` before the loop; only the recurrent convolution runs step by step.
    The result equals calling the cell ``T`` times.

    Args:
        in_channels: Channels ``C_in`` of the input.
        hidden_channels: Channels ``hidden`` of the state.
        kernel_size: Odd kernel size.
        gate_norm_groups: See :class:`ConvGRUCell` (as all the options below).
        learnable_h0: Learn the initial state.
        residual: Output ``h' + P(x)``; the recurrence gets ``h'``.
        groups: Groups of the gate convolutions.
        depthwise: Depthwise-separable gate convolutions.
        orthogonal_init: Orthogonal recurrent weights.
        hidden_clamp: Clamp of the state in every mode.
        bias: Biases in the gate convolutions.

    Attributes:
        cell: The :class:`ConvGRUCell`.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
        gate_norm_groups: int | None = None,
        learnable_h0: bool = False,
        residual: bool = False,
        groups: int = 1,
        depthwise: bool = False,
        orthogonal_init: bool = False,
        hidden_clamp: float | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.cell = ConvGRUCell(
            in_channels,
            hidden_channels,
            kernel_size,
            gate_norm_groups=gate_norm_groups,
            learnable_h0=learnable_h0,
            residual=residual,
            groups=groups,
            depthwise=depthwise,
            orthogonal_init=orthogonal_init,
            hidden_clamp=hidden_clamp,
            bias=bias,
        )

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the sequence.

        Args:
            x: ``(B, T, C_in, H, W)`` with ``T >= 1``.
            h0: Initial state ``(B, hidden, H, W)``; ``None``: the cell's (learned ``h0`` or zeros).

        Returns:
            ``(outputs, h_last)``: every step's output ``(B, T, hidden, H, W)`` (the state, plus the
            residual projection with ``residual``) and the last state ``(B, hidden, H, W)``.

        Raises:
            ValueError: For an input that is not 5-d, an empty sequence, or mismatched channels.
        """
        cell = self.cell
        if x.ndim != 5 or x.shape[1] < 1 or x.shape[2] != cell.in_channels:
            raise ValueError(f"ConvGRU: x must be (B, T >= 1, C_in={cell.in_channels}, H, W), got {tuple(x.shape)}.")
        b, t = x.shape[:2]
        flat = x.reshape(b * t, *x.shape[2:])
        h = cell.initial_state(x[:, 0]) if h0 is None else h0
        cell.check_input(x[:, 0], h, owner="ConvGRU")
        gates_x = cell.input_gates(flat).view(b, t, -1, *x.shape[3:])
        states = []
        # unbind, not gates_x[:, step]: its backward stacks the T gradients once, where T slices
        # would each scatter into a zero tensor of the whole sequence's size.
        for gates in gates_x.unbind(1):
            h = cell.recur(gates, h)
            states.append(h)
        hidden = torch.stack(states, dim=1)
        if cell.proj is None:
            return hidden, h
        outputs = hidden + cell.proj(flat).view(b, t, -1, *x.shape[3:])
        return outputs, h
