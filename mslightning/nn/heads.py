"""Per-stream auxiliary classifiers.

An auxiliary head classifies from one stream's features alone. Its loss gives every encoder a
direct training signal (so a fast stream cannot starve a slow one through the fusion), and
its accuracy tells a monitor how much each stream knows on its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from torch import Tensor, nn

from mslightning.nn.fusion import check_in_features, check_stream_features

__all__ = ["StreamHeads"]


class StreamHeads(nn.ModuleDict):
    """One ``Dropout -> Linear`` classifier per stream, held in a ``ModuleDict``.

    ``heads[stream]`` is an ``nn.Sequential`` with children ``dropout`` and ``linear``, so the
    parameters are named ``<attr>.<stream>.linear.weight`` and a pattern like
    ``"aux_heads.depth.*"`` selects one stream's head.

    Example:
        >>> import torch
        >>> from mslightning.nn import StreamHeads
        >>> heads = StreamHeads({"rgb": 512, "depth": 512}, num_classes=10)
        >>> logits = heads({"rgb": torch.zeros(4, 512), "depth": torch.zeros(4, 512)})
        >>> {name: tuple(x.shape) for name, x in logits.items()}
        {'rgb': (4, 10), 'depth': (4, 10)}

    Args:
        in_features: Stream name -> feature width ``F_m``, in stream order.
        num_classes: Number of classes ``K``.
        dropout: Dropout probability before each linear layer, in ``[0, 1)``.

    Raises:
        ValueError: For an invalid ``in_features``, ``num_classes < 1`` or ``dropout``
            outside ``[0, 1)``.

    """

    def __init__(self, in_features: Mapping[str, int], num_classes: int, dropout: float = 0.0) -> None:
        in_features = check_in_features(in_features, type(self).__name__)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"StreamHeads: num_classes must be a positive int, got {num_classes!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"StreamHeads: dropout must be in [0, 1), got {dropout!r}.")
        super().__init__(
            {
                name: nn.Sequential(OrderedDict(dropout=nn.Dropout(dropout), linear=nn.Linear(width, num_classes)))
                for name, width in in_features.items()
            }
        )
        self.in_features = in_features
        self.stream_names: tuple[str, ...] = tuple(in_features)
        self.num_classes = num_classes

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Classify each stream from its own features.

        Args:
            features: Stream name -> ``(B, F_m)``; exactly the configured streams.

        Returns:
            Stream name -> logits ``(B, K)``, in stream order.

        Raises:
            ValueError: Naming missing/unexpected streams or a wrong feature shape.

        """
        tensors = check_stream_features(features, self.in_features, type(self).__name__)
        return {name: self[name](x) for name, x in zip(self.stream_names, tensors, strict=True)}
