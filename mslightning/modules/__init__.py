"""LightningModules for multi-stream networks: classification and Siamese pairwise ranking."""

from mslightning.modules.base import GroupedOptimizationModule
from mslightning.modules.classifier import DualStreamClassifier, MultiStreamClassifier
from mslightning.modules.pathways import PathwayReport, pathway_report, shapley_values
from mslightning.modules.siamese import SiameseRanker, check_pair_batch, check_series_batch

__all__ = [
    "DualStreamClassifier",
    "GroupedOptimizationModule",
    "MultiStreamClassifier",
    "PathwayReport",
    "SiameseRanker",
    "check_pair_batch",
    "check_series_batch",
    "pathway_report",
    "shapley_values",
]
