"""LightningModules for multi-stream networks."""

from mslightning.modules.base import GroupedOptimizationModule
from mslightning.modules.classifier import DualStreamClassifier, MultiStreamClassifier
from mslightning.modules.pathways import PathwayReport, pathway_report, shapley_values

__all__ = [
    "DualStreamClassifier",
    "GroupedOptimizationModule",
    "MultiStreamClassifier",
    "PathwayReport",
    "pathway_report",
    "shapley_values",
]
