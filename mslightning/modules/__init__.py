"""LightningModules for multi-stream networks.

Multi-stream classification, Siamese pairwise ranking, and neural responses to video modulated by
behaviour (ConvGRU).
"""

from mslightning.modules.base import GroupedOptimizationModule, StagedSteps
from mslightning.modules.classifier import DualStreamClassifier, MultiStreamClassifier
from mslightning.modules.modulation import ModulatedResponseModel
from mslightning.modules.pathways import PathwayReport, pathway_report, shapley_values
from mslightning.modules.siamese import SiameseRanker, check_pair_batch, check_series_batch

__all__ = [
    "DualStreamClassifier",
    "GroupedOptimizationModule",
    "ModulatedResponseModel",
    "MultiStreamClassifier",
    "PathwayReport",
    "SiameseRanker",
    "StagedSteps",
    "check_pair_batch",
    "check_series_batch",
    "pathway_report",
    "shapley_values",
]
