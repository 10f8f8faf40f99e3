"""LightningModules for multi-stream networks."""

from mslightning.modules.base import GroupedOptimizationModule

__all__ = ["GroupedOptimizationModule"]
