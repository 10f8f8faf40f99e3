"""A LightningModule base whose optimizer, named groups and schedules all come from config."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch.optim import Optimizer
from typing_extensions import override

from mslightning.optim import (
    ParamGroup,
    clip_grad_norm_per_group,
    configure_grouped_optimizers,
    forbid_replaced_configure_optimizers,
)

__all__ = ["GroupedOptimizationModule"]


class GroupedOptimizationModule(pl.LightningModule):
    """Base class: ``configure_optimizers`` from an injected optimizer and named param groups.

    Subclasses implement :meth:`default_param_groups` (used when ``param_groups`` is ``None``)
    and, for :class:`~mslightning.callbacks.StreamMonitor`, set :attr:`stream_patterns`.
    Per-group ``max_grad_norm`` clipping runs in ``configure_gradient_clipping``, after AMP
    unscaling; the Trainer's own ``gradient_clip_val`` still applies afterwards to all groups.

    Args:
        optimizer: Builds the optimizer from param groups (YAML: ``class_path``/``init_args`` of
            any ``torch.optim`` class). Its ``lr``/``weight_decay`` are the defaults of groups
            that do not set their own.
        param_groups: The named groups; ``None`` uses :meth:`default_param_groups`. A group
            without ``params`` whose name is one of the default groups' names takes that
            default group's patterns, so ``{name: rgb, lr: 5.0e-4}`` is enough in YAML.
        no_weight_decay_on_norm_and_bias: Exempt biases and normalisation weights from weight
            decay in every group that does not decide for itself.
    """

    stream_patterns: dict[str, list[str]]
    """Stream name -> parameter-name patterns of that stream (read by StreamMonitor)."""

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        param_groups: list[ParamGroup] | None = None,
        no_weight_decay_on_norm_and_bias: bool = False,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.param_group_specs = param_groups
        self.no_weight_decay_on_norm_and_bias = no_weight_decay_on_norm_and_bias

    def default_param_groups(self) -> list[ParamGroup]:
        """The groups used when none are configured: a single catch-all group ``"all"``.

        Returns:
            The default group list; subclasses return one group per stream plus shared parts.
        """
        return [ParamGroup("all")]

    def resolved_param_groups(self) -> list[ParamGroup]:
        """The configured groups, with default patterns filled in by name.

        Returns:
            The groups :meth:`configure_optimizers` uses.
        """
        defaults = {group.name: group for group in self.default_param_groups()}
        if self.param_group_specs is None:
            return list(defaults.values())
        return [
            replace(group, params=defaults[group.name].params)
            if group.params is None and group.name in defaults and defaults[group.name].params is not None
            else group
            for group in self.param_group_specs
        ]

    @override
    def setup(self, stage: str) -> None:
        forbid_replaced_configure_optimizers(self)

    @override
    def configure_optimizers(self) -> Any:
        return configure_grouped_optimizers(
            self,
            self.optimizer_factory,
            self.resolved_param_groups(),
            no_weight_decay_on_norm_and_bias=self.no_weight_decay_on_norm_and_bias,
        )

    @override
    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        clip_grad_norm_per_group(optimizer)
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
