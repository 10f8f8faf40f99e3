"""Lightning glue: ``configure_optimizers`` and per-group gradient clipping for any module."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mslightning.optim.groups import ParamGroup, build_param_groups, group_name_of
from mslightning.optim.resume import CONFIGURED_KEY, SCHEDULE_KEY, describe_configured, describe_schedule
from mslightning.optim.schedule import GroupLRScheduler, guard_group_names_on_load

__all__ = [
    "OptimizerFactory",
    "clip_grad_norm_per_group",
    "configure_grouped_optimizers",
    "forbid_replaced_configure_optimizers",
]

OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
"""Builds an optimizer from param groups (LightningCLI's ``OptimizerCallable``)."""


def configure_grouped_optimizers(
    module: torch.nn.Module,
    optimizer: OptimizerFactory,
    groups: Sequence[ParamGroup],
    *,
    no_weight_decay_on_norm_and_bias: bool = False,
) -> dict[str, Any] | tuple[list[Optimizer], list[dict[str, Any]]]:
    """Build a grouped optimizer with one schedule per group, in the form Lightning expects.

    Call it from ``configure_optimizers``::

        def configure_optimizers(self):
            return configure_grouped_optimizers(self, self.hparams.optimizer, self.param_groups)

    Args:
        module: The model whose ``named_parameters()`` are grouped.
        optimizer: Builds the optimizer from param-group dicts, e.g.
            ``partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-2)``; its ``lr`` and
            ``weight_decay`` are the defaults for groups that do not set their own.
        groups: The named groups (see :class:`~mslightning.optim.ParamGroup`).
        no_weight_decay_on_norm_and_bias: Default for the groups' no-decay sub-group option.

    Each optimizer param group also gets ``"schedule"`` and ``"configured"``: plain-data
    descriptions of the group's schedule and configured hyper-parameters, which travel in
    checkpoints so that loading optimizer state refuses a changed scheduler and reports other
    changed settings (see :mod:`mslightning.optim.resume`).

    Returns:
        ``{"optimizer": opt}`` when no group is scheduled, else ``([opt], [scheduler configs])``
        with one Lightning scheduler config per scheduled group (its ``interval``,
        ``frequency`` and, for ``ReduceLROnPlateau``, ``monitor``).

    Raises:
        ValueError: For bad groups (see :func:`~mslightning.optim.build_param_groups`); a group
            option the optimizer does not accept; a group ``max_grad_norm`` on a LightningModule
            that would never clip (it does not override ``configure_gradient_clipping``, or uses
            manual optimization); a ``ReduceLROnPlateau`` group without ``monitor``; or a factory
            that rejects groups.
    """
    _check_clipping_runs(module, groups)
    param_groups = build_param_groups(module, groups, no_weight_decay_on_norm_and_bias=no_weight_decay_on_norm_and_bias)
    opt = optimizer(param_groups)
    if len(opt.param_groups) != len(param_groups) or any(
        pg.get("name") != spec["name"] for pg, spec in zip(opt.param_groups, param_groups, strict=False)
    ):
        raise ValueError(
            "The optimizer factory did not keep the named param groups it was given; it must pass "
            "its first argument to the torch optimizer as the params (e.g. partial(AdamW, lr=...))."
        )
    base_lr = opt.defaults.get("lr")
    for spec in groups:
        if spec.lr_scale is None:
            continue
        if not isinstance(base_lr, float | int):
            raise ValueError(f"Group {spec.name!r} uses lr_scale but the optimizer has no numeric default lr.")
        for pg in opt.param_groups:
            if group_name_of(pg) == spec.name:
                pg["lr"] = base_lr * spec.lr_scale
    _check_options_accepted(opt, groups)
    for pg in opt.param_groups:  # before any schedule writes to the groups
        pg[CONFIGURED_KEY] = describe_configured(pg, opt.defaults)
        pg[SCHEDULE_KEY] = None
    guard_group_names_on_load(opt)

    scheduler_configs: list[dict[str, Any]] = []
    for spec in groups:
        if spec.scheduler is None and spec.warmup == 0:
            continue
        if not any(group_name_of(pg) == spec.name for pg in opt.param_groups):
            continue  # unreachable unless every parameter of the group is frozen
        scheduler = GroupLRScheduler(opt, spec.name, spec.scheduler, spec.warmup, spec.warmup_start_factor)
        description = describe_schedule(
            scheduler.schedule,
            warmup=spec.warmup,
            warmup_start_factor=spec.warmup_start_factor,
            interval=spec.interval,
            frequency=spec.frequency,
        )
        for index in scheduler.group_indices:
            opt.param_groups[index][SCHEDULE_KEY] = description
        config: dict[str, Any] = {
            "scheduler": scheduler,
            "interval": spec.interval,
            "frequency": spec.frequency,
            # One shared name keeps LearningRateMonitor's keys `lr-<Optimizer>/<group>` instead of
            # numbering every scheduler of the optimizer as a separate optimizer.
            "name": f"lr-{type(opt).__name__}",
        }
        if isinstance(scheduler.schedule, ReduceLROnPlateau):
            if spec.monitor is None:
                raise ValueError(
                    f"Group {spec.name!r} uses ReduceLROnPlateau; set its `monitor` to the logged "
                    "metric it should watch (e.g. 'val/loss')."
                )
            config.update(reduce_on_plateau=True, monitor=spec.monitor)
        elif spec.monitor is not None:
            raise ValueError(
                f"Group {spec.name!r} sets monitor={spec.monitor!r} but its scheduler is not ReduceLROnPlateau."
            )
        scheduler_configs.append(config)
    if not scheduler_configs:
        return {"optimizer": opt}
    return [opt], scheduler_configs


def _check_options_accepted(opt: Optimizer, groups: Sequence[ParamGroup]) -> None:
    """Refuse group options the optimizer does not accept: torch would store and never use them."""
    accepted = sorted(opt.defaults)
    for spec in groups:
        named = [(key, "options") for key in spec.options]
        if spec.weight_decay is not None:
            named.append(("weight_decay", "weight_decay"))
        for key, origin in named:
            if key not in opt.defaults:
                where = f"option {key!r}" if origin == "options" else f"field {key!r}"
                raise ValueError(
                    f"Group {spec.name!r}: {where} is not a hyper-parameter of {type(opt).__name__}, "
                    f"so torch would store it in the param group and never use it. "
                    f"{type(opt).__name__} accepts: {accepted}. Fix the spelling, or remove it for this optimizer."
                )


def _check_clipping_runs(module: torch.nn.Module, groups: Sequence[ParamGroup]) -> None:
    """Refuse a group ``max_grad_norm`` that Lightning would never apply."""
    clipped = [spec for spec in groups if spec.max_grad_norm is not None]
    if not clipped or not isinstance(module, pl.LightningModule):
        return
    spec = clipped[0]
    what = f"Group {spec.name!r} sets max_grad_norm={spec.max_grad_norm!r}"
    cls = type(module).__name__
    if not module.automatic_optimization:
        raise ValueError(
            f"{what}, but {cls} uses manual optimization (automatic_optimization is False), where "
            "Lightning never calls configure_gradient_clipping, so this group's gradients would "
            "never be clipped. Remove max_grad_norm from the groups and clip in training_step, "
            "between self.manual_backward(loss) and optimizer.step()."
        )
    overridden = (
        "configure_gradient_clipping" in vars(module)
        or type(module).configure_gradient_clipping is not pl.LightningModule.configure_gradient_clipping
    )
    if not overridden:
        raise ValueError(
            f"{what}, but {cls} does not override configure_gradient_clipping, so "
            "clip_grad_norm_per_group never runs and this group's gradients would never be "
            "clipped. Subclass mslightning.modules.GroupedOptimizationModule, or override "
            "configure_gradient_clipping to call mslightning.optim.clip_grad_norm_per_group(optimizer) "
            "(then super().configure_gradient_clipping(...) for the Trainer's own clipping)."
        )


def clip_grad_norm_per_group(optimizer: Optimizer) -> dict[str, torch.Tensor]:
    """Clip each named group's gradients to its own ``max_grad_norm``.

    A group and its ``/no_decay`` sub-group are clipped together, as the one group the user
    configured. Call it where Lightning clips (``configure_gradient_clipping``), which runs after
    AMP unscaling and before the optimizer step.

    Args:
        optimizer: An optimizer built by :func:`configure_grouped_optimizers`.

    Returns:
        The total gradient norm before clipping, per clipped group name (0-dim tensors).

    Raises:
        RuntimeError: If no param group of ``optimizer`` has a ``"name"``: it was not built by
            :func:`configure_grouped_optimizers` (e.g. LightningCLI's ``--optimizer`` replaced
            ``configure_optimizers``), so no group's ``max_grad_norm`` could apply.
    """
    if not any("name" in pg for pg in optimizer.param_groups):
        raise RuntimeError(
            f"clip_grad_norm_per_group got an optimizer ({type(optimizer).__name__}) whose "
            f"{len(optimizer.param_groups)} param group(s) have no 'name', so it was not built by "
            "configure_grouped_optimizers: e.g. LightningCLI's --optimizer replaced "
            "configure_optimizers and collapsed the named groups (and their max_grad_norm) into "
            "one. Call mslightning.optim.forbid_replaced_configure_optimizers(self) in the module's "
            "setup to stop at the start instead, or run with the `mslightning` command, which has "
            "no --optimizer."
        )
    clipped: dict[str, list[torch.Tensor]] = {}
    max_norms: dict[str, float] = {}
    for pg in optimizer.param_groups:
        max_norm = pg.get("max_grad_norm")
        if max_norm is None or "name" not in pg:
            continue
        name = group_name_of(pg)
        max_norms[name] = max_norm
        clipped.setdefault(name, []).extend(p for p in pg["params"] if p.grad is not None)
    return {
        name: torch.nn.utils.clip_grad_norm_(params, max_norms[name], foreach=True)
        for name, params in clipped.items()
        if params
    }


def forbid_replaced_configure_optimizers(module: pl.LightningModule) -> None:
    """Fail loudly if LightningCLI's ``--optimizer`` replaced the module's grouped optimizers.

    LightningCLI's ``auto_configure_optimizers`` swaps ``configure_optimizers`` for one that puts
    ``model.parameters()`` into a single group, silently dropping every named group, schedule and
    clipping norm. It does so by setting an instance attribute, which this detects.

    Args:
        module: The LightningModule, typically from its ``setup`` hook.

    Raises:
        RuntimeError: If ``configure_optimizers`` was replaced on the instance.
    """
    if "configure_optimizers" in vars(module):
        raise RuntimeError(
            f"{type(module).__name__}.configure_optimizers was replaced (LightningCLI's --optimizer/"
            "--lr_scheduler do this), which would collapse its named parameter groups into one. "
            "Configure the optimizer as `model.optimizer` and the groups as `model.param_groups` "
            "instead, or run with `mslightning`, which does not offer --optimizer."
        )
