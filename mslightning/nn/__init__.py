"""Pure-torch building blocks for multi-stream networks (no Lightning).

Image trunks map one stream's images to pooled features (one mechanism for every family),
:class:`MLPEncoder` one stream's vectors; fusions combine a mapping stream name -> features
into one vector; :class:`StreamHeads` classifies each stream alone; pair heads and losses
(:mod:`mslightning.nn.ranking`) learn a preference between two inputs.
"""

from mslightning.nn.cores import ResidualBlock, ResidualCore, RMSNorm2d, activation_gain
from mslightning.nn.encoders import MLPEncoder, ResNetStreamEncoder, adapt_conv1_weight
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
from mslightning.nn.modulators import ConcatModulator, FiLMModulator, Modulator
from mslightning.nn.poisson import MaskedPoissonLoss, response_mask
from mslightning.nn.ranking import (
    DifferenceHead,
    PairCrossEntropyLoss,
    PairHead,
    PairLoss,
    PairMarginLoss,
    RankNetLoss,
    ScoreHead,
)
from mslightning.nn.readouts import FactorisedReadout, GaussianReadout, Readout
from mslightning.nn.recurrent import ConvGRU, ConvGRUCell
from mslightning.nn.trunks import ImageTrunk, ResNetTrunk, VGGTrunk

__all__ = [
    "AttentionFusion",
    "ConcatFusion",
    "ConcatModulator",
    "ConvGRU",
    "ConvGRUCell",
    "DifferenceHead",
    "FactorisedReadout",
    "FiLMModulator",
    "Fusion",
    "GatedFusion",
    "GaussianReadout",
    "ImageTrunk",
    "MLPEncoder",
    "MaskedPoissonLoss",
    "Modulator",
    "MultiplicativeAdditionFusion",
    "MultiplicativeFusion",
    "PairCrossEntropyLoss",
    "PairHead",
    "PairLoss",
    "PairMarginLoss",
    "RMSNorm2d",
    "RankNetLoss",
    "Readout",
    "ResNetStreamEncoder",
    "ResNetTrunk",
    "ResidualBlock",
    "ResidualCore",
    "ScoreHead",
    "StreamHeads",
    "SumFusion",
    "VGGTrunk",
    "WeightedFusion",
    "activation_gain",
    "adapt_conv1_weight",
    "check_in_features",
    "check_stream_features",
    "response_mask",
]
