"""Fusion modules: combine one pooled feature vector per stream into one vector.

Every fusion is constructed as ``SomeFusion(in_features, **options)``: ``in_features`` maps
stream name -> feature width *in stream order* and is supplied at runtime by the owning
model (it knows its encoders' ``out_features``); the options come from the YAML
``class_path``/``init_args``. ``forward`` takes a mapping stream name -> ``(B, F_m)`` and
returns ``(B, out_features)``. Any number of streams >= 1 works; the streams are looped over,
never spelled out.

Fusions that project take ``dim``: the width of a per-stream ``nn.Linear`` applied to every
stream before combining (held in ``projections[stream]``, so parameter patterns such as
``"fusion.projections.depth.*"`` can put it in the depth stream's group). ``dim=None`` means
no projection (``nn.Identity``), which requires all streams to have the same width. Projecting
every stream, rather than only the ones whose width differs, keeps the streams symmetric: no
stream gets a learned map that another lacks.

``internals()`` returns what a monitor should watch: metric name -> stream name -> 0-dim
detached tensor, read lazily so ``forward`` never synchronises with the host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import reduce
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from mslightning.streams import check_stream_name

__all__ = [
    "AttentionFusion",
    "ConcatFusion",
    "Fusion",
    "GatedFusion",
    "MultiplicativeAdditionFusion",
    "MultiplicativeFusion",
    "SumFusion",
    "WeightedFusion",
    "check_in_features",
    "check_stream_features",
]


def check_in_features(in_features: Mapping[str, int], owner: str = "Fusion") -> dict[str, int]:
    """Validate a stream name -> feature width mapping.

    Args:
        in_features: Stream name -> width, in stream order.
        owner: Who is asking, for the error message.

    Returns:
        A plain ``dict`` copy, order preserved.

    Raises:
        ValueError: If the mapping is empty, a name is not a non-empty string, or a width is
            not a positive int.

    """
    if not isinstance(in_features, Mapping) or not in_features:
        raise ValueError(f"{owner} needs a non-empty mapping stream name -> feature width, got {in_features!r}.")
    for name, width in in_features.items():
        check_stream_name(name, owner)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{owner}: stream '{name}' feature width must be a positive int, got {width!r}.")
    return dict(in_features)


def check_stream_features(
    features: Mapping[str, Tensor], in_features: Mapping[str, int], owner: str = "Fusion"
) -> list[Tensor]:
    """Check per-stream features against the configured streams and widths.

    Args:
        features: Stream name -> features of shape ``(B, F_m)``; any key order.
        in_features: The configured stream name -> width ``F_m``, in stream order.
        owner: Who is asking, for the error message.

    Returns:
        The feature tensors in the configured stream order.

    Raises:
        ValueError: Naming the missing or unexpected streams, a stream whose features are not
            2-D or have the wrong width, or the batch sizes when streams disagree.

    """
    if not isinstance(features, Mapping):
        raise ValueError(f"{owner} expects a mapping stream name -> features (B, F), got {type(features).__name__}.")
    if features.keys() != in_features.keys():
        missing = [name for name in in_features if name not in features]
        unexpected = [name for name in features if name not in in_features]
        raise ValueError(
            f"{owner} is configured for streams {list(in_features)}; features are missing "
            f"stream(s) {missing} and have unexpected stream(s) {unexpected}."
        )
    tensors = []
    for name, width in in_features.items():
        x = features[name]
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"{owner}: stream '{name}' features must have shape (B, {width}), got {tuple(x.shape)}.")
        tensors.append(x)
    batch_sizes = {name: x.shape[0] for name, x in zip(in_features, tensors, strict=True)}
    if len(set(batch_sizes.values())) > 1:
        raise ValueError(f"{owner}: streams disagree on batch size: {batch_sizes}.")
    return tensors


def _check_positive(owner: str, **values: int | None) -> None:
    for key, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{owner}: {key} must be a positive int or None, got {value!r}.")


def _check_dropout(owner: str, dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner}: dropout must be in [0, 1), got {dropout!r}.")


class Fusion(nn.Module):
    """Base class: validates the configured streams and the features passed to ``forward``.

    Subclasses set ``out_features`` and implement ``forward``; they call
    :meth:`stream_tensors` to get the features in stream order.

    Args:
        in_features: Stream name -> feature width ``F_m``, in stream order.

    Attributes:
        in_features: The validated mapping.
        stream_names: The stream names, in order.
        out_features: Width of the fused output.

    """

    out_features: int

    def __init__(self, in_features: Mapping[str, int]) -> None:
        super().__init__()
        self.in_features = check_in_features(in_features, type(self).__name__)
        self.stream_names: tuple[str, ...] = tuple(self.in_features)

    def stream_tensors(self, features: Mapping[str, Tensor]) -> list[Tensor]:
        """Validate ``features`` and return them in stream order.

        Args:
            features: Stream name -> ``(B, F_m)``.

        Returns:
            One ``(B, F_m)`` tensor per stream, in ``stream_names`` order.

        """
        return check_stream_features(features, self.in_features, type(self).__name__)

    def internals(self) -> dict[str, dict[str, Tensor]]:
        """Quantities worth monitoring, per stream.

        Returns:
            Metric name -> stream name -> 0-dim detached tensor; ``{}`` when the fusion has
            nothing to report (the default) or has not run a forward pass yet.

        """
        return {}

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fuse per-stream features.

        Args:
            features: Stream name -> ``(B, F_m)``.

        Returns:
            Fused features, shape ``(B, out_features)``.

        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        """Show the stream widths and output width in ``print(model)``."""
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _ProjectingFusion(Fusion):
    """A fusion that maps every stream to a common width ``dim`` first (see module docs)."""

    def __init__(self, in_features: Mapping[str, int], dim: int | None) -> None:
        super().__init__(in_features)
        owner = type(self).__name__
        _check_positive(owner, dim=dim)
        if dim is None:
            widths = set(self.in_features.values())
            if len(widths) > 1:
                raise ValueError(
                    f"{owner}: streams have different widths {self.in_features}; pass dim=<int> "
                    "to project every stream to a common width."
                )
            self.dim: int = widths.pop()
            self.projections = nn.ModuleDict({name: nn.Identity() for name in self.stream_names})
        else:
            self.dim = dim
            self.projections = nn.ModuleDict({name: nn.Linear(width, dim) for name, width in self.in_features.items()})

    def project(self, features: Mapping[str, Tensor]) -> list[Tensor]:
        """Validate and project the features.

        Args:
            features: Stream name -> ``(B, F_m)``.

        Returns:
            One ``(B, dim)`` tensor per stream, in stream order.

        """
        tensors = self.stream_tensors(features)
        return [self.projections[name](x) for name, x in zip(self.stream_names, tensors, strict=True)]


class ConcatFusion(Fusion):
    """Concatenate the streams' features; no parameters.

    ``out_features = sum(in_features.values())``; the output is ``[f_1, ..., f_N]`` in stream
    order.

    Args:
        in_features: Stream name -> feature width ``F_m``, in stream order.

    """

    def __init__(self, in_features: Mapping[str, int]) -> None:
        super().__init__(in_features)
        self.out_features = sum(self.in_features.values())

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Concatenate.

        Args:
            features: Stream name -> ``(B, F_m)``.

        Returns:
            ``(B, sum_m F_m)``.

        """
        return torch.cat(self.stream_tensors(features), dim=1)


class SumFusion(_ProjectingFusion):
    """Sum of the (projected) streams: ``sum_m P_m(f_m)``.

    Args:
        in_features: Stream name -> feature width ``F_m``, in stream order.
        dim: Width of the per-stream ``nn.Linear`` projections ``P_m``; ``None`` for no
            projection (all widths must then be equal). ``out_features = dim``.

    """

    def __init__(self, in_features: Mapping[str, int], dim: int | None = None) -> None:
        super().__init__(in_features, dim)
        self.out_features = self.dim

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Sum.

        Args:
            features: Stream name -> ``(B, F_m)``.

        Returns:
            ``(B, dim)``.

        """
        return reduce(torch.add, self.project(features))


class WeightedFusion(_ProjectingFusion):
    """Learned convex combination: ``sum_m w_m P_m(f_m)`` with ``w = softmax(logits)``.

    One scalar weight per stream, shared by all samples; the logits start at zero, i.e. at the
    plain mean. The softmax keeps the weights positive and summing to one, so a weight that
    drifts towards 0 reads directly as "the fusion is ignoring this stream".

    Args:
        in_features: Stream name -> feature width ``F_m``, in stream order.
        dim: Width of the per-stream projections ``P_m``; ``None`` for none (equal widths).
            ``out_features = dim``.

    Internals:
        ``{"weight": {stream: w_m}}``.

    """

    def __init__(self, in_features: Mapping[str, int], dim: int | None = None) -> None:
        super().__init__(in_features, dim)
        self.out_features = self.dim
        self.logits = nn.Parameter(torch.zeros(len(self.stream_names)))

    def stream_weights(self) -> Tensor:
        """Return the current weights, shape ``(N,)``, in stream order, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Weighted sum.

        Args:
            features: Stream name -> ``(B, F_m)``.

        Returns:
            ``(B, dim)``.

        """
        stacked = torch.stack(self.project(features), dim=1)  # (B, N, dim)
        return torch.einsum("bnd,n->bd", stacked, self.stream_weights())

    def internals(self) -> dict[str, dict[str, Tensor]]:
        """Return ``{"weight": {stream: w_m}}``, the softmax weights (0-dim, detached)."""
        weights = self.stream_weights().detach()
        return {"weight": dict(zip(self.stream_names, weights.unbind(0), strict=True))}


class GatedFusion(_ProjectingFusion):
    """Per-sample gates over the streams: ``sum_m g_m(x) P_m(f_m)``, ``g = softmax(G([f_1..f_N]))``.

    The gate network ``G`` sees the concatenated (unprojected) features, so it can weigh a
    stream by how informative it looks for *this* sample; the softmax over streams generalises
    the two-modality sigmoid gate of Gated Multimodal Units (Arevalo et al., 2017,
    https://arxiv.org/abs/1702.01992) to N streams. The last gate layer starts at zero, so
    training starts from the plain mean of the streams.

    Args:
        in_features: Stream name -> feature width ``F_m``, in stream order.
        dim: Width of the per-stream projections ``P_m``; ``None`` for none (equal widths).
            ``out_features = dim``.
        hidden: ``None`` for a linear gate ``Linear(sum F_m, N)``; an int for a one-hidden-layer
            gate ``Linear(sum F_m, hidden) -> ReLU -> Linear(hidden, N)``.

    Internals:
        ``{"gate": {stream: mean gate over the batch of the last forward}}``.

    """

    def __init__(self, in_features: Mapping[str, int], dim: int | None = None, hidden: int | None = None) -> None:
        super().__init__(in_features, dim)
        _check_positive(type(self).__name__, hidden=hidden)
        self.out_features = self.dim
        total, n = sum(self.in_features.values()), len(self.stream_names)
        last = nn.Linear(total if hidden is None else hidden, n)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.gate = last if hidden is None else nn.Sequential(nn.Linear(total, hidden), nn.ReLU(), last)
        self._last_gates: Tensor | None = None

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Gated sum.

        Args:
            features: Stream name -> ``(B, F_m)``.

        Returns:
            ``(B, dim)``.

        """
        tensors = self.stream_tensors(features)
        gates = torch.softmax(self.gate(torch.cat(tensors, dim=1)), dim=1)  # (B, N)
        # Keep a reference only; reducing here would cost a kernel on every step, not just
        # on the steps a monitor reads it.
        self._last_gates = gates.detach()
        projected = torch.stack(
            [self.projections[name](x) for name, x in zip(self.stream_names, tensors, strict=True)],
            dim=1,
        )  # (B, N, dim)
        return torch.einsum("bnd,bn->bd", projected, gates)

    def internals(self) -> dict[str, dict[str, Tensor]]:
        """Return ``{"gate": {stream: mean gate}}`` over the last forward batch, or ``{}``."""
        if self._last_gates is None:
            return {}
        means = self._last_gates.float().mean(dim=0)
        return {"gate": dict(zip(self.stream_names, means.unbind(0), strict=True))}


class MultiplicativeFusion(_ProjectingFusion):
    """Elementwise product of the (projected) streams: ``prod_m P_m(f_m)``.

    A feature is large only where every stream agrees, so the fused vector models
    interactions a sum cannot; the gradient reaching one stream is scaled by the others.

    Args:
        in_features: Stream name -> feature width ``F_m``, in stream order.
        dim: Width of the per-stream projections ``P_m``; ``None`` for none (equal widths).
            ``out_features = dim``.

    """

    def __init__(self, in_features: Mapping[str, int], dim: int | None = None) -> None:
        super().__init__(in_features, dim)
        self.out_features = self.dim

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Product.

        Args:
            features: Stream name -> ``(B, F_m)``.

        Returns:
            ``(B, dim)``.

        """
        return reduce(torch.mul, self.project(features))


class MultiplicativeAdditionFusion(_ProjectingFusion):
    """Product and sum of the (projected) streams, side by side: ``[prod P_m(f_m), sum P_m(f_m)]``.

    The sum keeps a path along which each stream's gradient does not depend on the others
    (a product alone can starve a stream whose partner is near zero); the product adds the
    interaction terms. The two halves are concatenated rather than passed through a further
    ``nn.Linear``: the classifier head that follows is linear already, and two linear maps in
    a row add parameters, not capacity.

    Args:
        in_features: Stream name -> feature width ``F_m``, in stream order.
        dim: Width of the per-stream projections ``P_m``; ``None`` for none (equal widths).
            ``out_features = 2 * dim``.

    """

    def __init__(self, in_features: Mapping[str, int], dim: int | None = None) -> None:
        super().__init__(in_features, dim)
        self.out_features = 2 * self.dim

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Product and sum, concatenated.

        Args:
            features: Stream name -> ``(B, F_m)``.

        Returns:
            ``(B, 2 * dim)``: product first, then sum.

        """
        projected = self.project(features)
        return torch.cat([reduce(torch.mul, projected), reduce(torch.add, projected)], dim=1)


class AttentionFusion(_ProjectingFusion):
    """Self-attention across streams, one token per stream.

    Token ``t_m = P_m(f_m) + e_m`` with a learned stream embedding ``e_m`` (so the layer knows
    which stream a token came from, as position embeddings do in a ViT), then one
    ``nn.TransformerEncoderLayer(batch_first=True)`` over the ``N`` tokens, then ``pool``:
    ``"mean"`` averages the output tokens (``out_features = dim``, independent of ``N``);
    ``"flatten"`` concatenates them in stream order (``out_features = N * dim``, keeps which
    stream said what).

    Args:
        in_features: Stream name -> feature width ``F_m``, in stream order.
        dim: Token width, i.e. width of the projections ``P_m``; ``None`` for no projection
            (equal widths). Must be divisible by ``num_heads``.
        num_heads: Attention heads.
        dim_feedforward: Hidden width of the layer's MLP; ``None`` for ``2 * dim``.
        dropout: Dropout inside the transformer layer, in ``[0, 1)``.
        pool: ``"mean"`` or ``"flatten"``.
        norm_first: Pre-norm (``True``) or post-norm (``False``, torch's default) layer.

    Internals:
        ``{"attention": {stream: attention the stream's token received}}``: the softmax
        attention weights of the last forward (before dropout), averaged over batch, heads
        and querying tokens; the values sum to 1 over streams.

    """

    def __init__(
        self,
        in_features: Mapping[str, int],
        dim: int | None = None,
        num_heads: int = 4,
        dim_feedforward: int | None = None,
        dropout: float = 0.0,
        pool: Literal["mean", "flatten"] = "mean",
        norm_first: bool = False,
    ) -> None:
        super().__init__(in_features, dim)
        owner = type(self).__name__
        _check_positive(owner, num_heads=num_heads, dim_feedforward=dim_feedforward)
        _check_dropout(owner, dropout)
        if self.dim % num_heads:
            raise ValueError(f"{owner}: dim={self.dim} must be divisible by num_heads={num_heads}.")
        if pool not in ("mean", "flatten"):
            raise ValueError(f"{owner}: pool must be 'mean' or 'flatten', got {pool!r}.")
        self.pool = pool
        n = len(self.stream_names)
        self.out_features = self.dim if pool == "mean" else n * self.dim
        self.stream_embedding = nn.Parameter(torch.empty(n, self.dim))
        # ViT's position-embedding init: small enough not to swamp the projected features.
        nn.init.trunc_normal_(self.stream_embedding, std=0.02)
        self.encoder_layer = nn.TransformerEncoderLayer(
            d_model=self.dim,
            nhead=num_heads,
            dim_feedforward=2 * self.dim if dim_feedforward is None else dim_feedforward,
            dropout=dropout,
            batch_first=True,
            norm_first=norm_first,
        )
        self._last_tokens: Tensor | None = None

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Attend across streams and pool.

        Args:
            features: Stream name -> ``(B, F_m)``.

        Returns:
            ``(B, dim)`` for ``pool="mean"``, ``(B, N * dim)`` for ``pool="flatten"``.

        """
        tokens = torch.stack(self.project(features), dim=1) + self.stream_embedding  # (B, N, dim)
        # The attention weights are recomputed from these only when internals() is called.
        self._last_tokens = tokens.detach()
        out = self.encoder_layer(tokens)
        return out.mean(dim=1) if self.pool == "mean" else out.flatten(1)

    @torch.no_grad()
    def attention_weights(self) -> Tensor | None:
        """Head-averaged attention weights of the last forward, before dropout.

        Returns:
            ``(B, N_query, N_key)`` weights whose rows sum to 1, or ``None`` before the first
            forward. Equal to ``nn.MultiheadAttention(..., need_weights=True,
            average_attn_weights=True)`` in eval mode.

        """
        if self._last_tokens is None:
            return None
        layer = self.encoder_layer
        x = layer.norm1(self._last_tokens) if layer.norm_first else self._last_tokens
        attn = layer.self_attn
        q, k, _ = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        b, n, d = q.shape
        h = attn.num_heads
        q = q.reshape(b, n, h, d // h).transpose(1, 2)  # (B, h, N, d_h)
        k = k.reshape(b, n, h, d // h).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // h)
        return torch.softmax(scores.float(), dim=-1).mean(dim=1)

    def internals(self) -> dict[str, dict[str, Tensor]]:
        """Return ``{"attention": {stream: mean attention received}}``, or ``{}``."""
        weights = self.attention_weights()
        if weights is None:
            return {}
        received = weights.mean(dim=(0, 1))  # (N,)
        return {"attention": dict(zip(self.stream_names, received.unbind(0), strict=True))}
