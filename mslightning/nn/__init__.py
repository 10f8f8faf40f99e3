"""Pure-torch building blocks for multi-stream networks (no Lightning).

Encoders map one stream's input to pooled features; fusions combine a mapping
stream name -> features into one vector; :class:`StreamHeads` classifies each stream alone.
"""

from mslightning.nn.encoders import ResNetStreamEncoder, adapt_conv1_weight
from mslightning.nn.fusion import (
    AttentionFusion,
    ConcatFusion,
    Fusion,
    GatedFusion,
    MultiplicativeAdditionFusion,
    MultiplicativeFusion,
    SumFusion,
    WeightedFusion,
    check_in_features,
    check_stream_features,
)
from mslightning.nn.heads import StreamHeads
from mslightning.nn.trunks import ImageTrunk, ResNetTrunk, VGGTrunk

__all__ = [
    "AttentionFusion",
    "ConcatFusion",
    "Fusion",
    "GatedFusion",
    "ImageTrunk",
    "MultiplicativeAdditionFusion",
    "MultiplicativeFusion",
    "ResNetStreamEncoder",
    "ResNetTrunk",
    "StreamHeads",
    "SumFusion",
    "VGGTrunk",
    "WeightedFusion",
    "adapt_conv1_weight",
    "check_in_features",
    "check_stream_features",
]
