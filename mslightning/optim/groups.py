"""Named parameter groups chosen by patterns on parameter names.

Every trainable parameter lands in exactly one named group; each group carries its own optimizer
options (``lr``, ``weight_decay``, ``momentum``, ``betas``, ...), its own learning-rate schedule
and its own gradient-clipping norm. See :class:`ParamGroup` and :func:`build_param_groups`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeAlias

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from mslightning.optim.patterns import as_pattern_list, assign_owners, describe_names, select_names

__all__ = [
    "GROUP_KEYS",
    "NO_DECAY_SUFFIX",
    "ParamGroup",
    "SchedulerSpec",
    "build_param_groups",
    "group_name_of",
    "is_no_decay_parameter",
    "named_param_groups",
]

NO_DECAY_SUFFIX = "/no_decay"
"""Appended to a group's name for its sub-group of biases and normalisation weights."""

GROUP_KEYS = ("name", "max_grad_norm", "schedule", "configured")
"""Keys mslightning adds to each optimizer param-group dict besides the optimizer's own options
(``"schedule"`` and ``"configured"`` describe the group's configuration for resume checks; see
:mod:`mslightning.optim.resume`)."""

SchedulerSpec: TypeAlias = Callable[[Optimizer], LRScheduler | ReduceLROnPlateau]
"""Builds a torch scheduler for a one-group optimizer (LightningCLI's ``LRSchedulerCallable``)."""


@dataclass
class ParamGroup:
    """One named group of parameters with its own optimizer options and schedule.

    In YAML (LightningCLI), a list of these is written as plain mappings::

        param_groups:
          - name: rgb
            params: encoders.rgb.*
            lr: 5.0e-4
            weight_decay: 1.0e-3
            scheduler:
              class_path: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
              init_args: {T_0: 4, T_mult: 2, eta_min: 1.0e-6}
          - name: head            # no ``params``: takes every parameter nobody else matched

    Attributes:
        name: The group's name; becomes the param-group dict's ``"name"``, so Lightning's
            ``LearningRateMonitor`` logs ``lr-<Optimizer>/<name>``. Left out when the group is
            a value of a mapping name -> group (:func:`named_param_groups`).
        params: Pattern(s) on ``named_parameters()`` names (fnmatch globs, or ``re:`` regexes;
            see :mod:`mslightning.optim.patterns`). ``None`` makes this the catch-all group that
            takes every trainable parameter no other group matched (at most one such group).
        lr: The group's learning rate. ``None`` uses the optimizer's ``lr``.
        lr_scale: Multiplies the optimizer's ``lr`` instead ("head 10x": ``lr_scale: 10``).
            Exclusive with ``lr``.
        weight_decay: The group's weight decay. ``None`` uses the optimizer's.
        options: Any other per-group option the optimizer accepts (``momentum``, ``betas``,
            ``eps``, ``nesterov``, ...). :func:`~mslightning.optim.configure_grouped_optimizers`
            refuses an option the optimizer does not accept (it would be stored and never used).
        scheduler: This group's schedule: a callable taking a one-group optimizer and returning a
            torch scheduler (in YAML: ``class_path``/``init_args`` of any
            ``torch.optim.lr_scheduler`` class). ``None`` keeps the lr constant.
        interval: When the schedule steps: after every optimizer ``"step"`` or every ``"epoch"``.
        frequency: Step the schedule every ``frequency`` intervals.
        monitor: The logged metric a ``ReduceLROnPlateau`` schedule watches (e.g. ``val/rgb/loss``).
        warmup: Number of intervals of linear warm-up from ``warmup_start_factor * lr`` to ``lr``
            before the schedule starts (the schedule then begins at its own step 0, exactly as
            ``SequentialLR([LinearLR, schedule], milestones=[warmup])`` would).
        warmup_start_factor: The warm-up's first multiplier, in (0, 1].
        max_grad_norm: Clip this group's gradients to this total L2 norm (after AMP unscaling),
            independently of the other groups. ``None`` disables. Takes effect only where
            ``configure_gradient_clipping`` calls :func:`~mslightning.optim.clip_grad_norm_per_group`
            (as :class:`~mslightning.modules.GroupedOptimizationModule` does);
            :func:`~mslightning.optim.configure_grouped_optimizers` refuses it otherwise.
        no_weight_decay_on_norm_and_bias: Put biases and normalisation weights (every parameter
            with fewer than two dimensions) into a sub-group ``<name>/no_decay`` with
            ``weight_decay=0`` that follows this group's schedule. ``None`` inherits the setting
            given to :func:`build_param_groups`.
    """

    name: str | None = None
    params: str | list[str] | None = None
    lr: float | None = None
    lr_scale: float | None = None
    weight_decay: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    scheduler: SchedulerSpec | None = None
    interval: Literal["step", "epoch"] = "epoch"
    frequency: int = 1
    monitor: str | None = None
    warmup: int = 0
    warmup_start_factor: float = 0.01
    max_grad_norm: float | None = None
    no_weight_decay_on_norm_and_bias: bool | None = None

    def __post_init__(self) -> None:
        if self.name is None:
            return  # a value of a mapping name -> group: validated once named (see `named_param_groups`)
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"A parameter group needs a non-empty name without '/', got {self.name!r}.")
        if self.params is not None:
            self.params = as_pattern_list(self.params)
        if self.lr is not None and self.lr_scale is not None:
            raise ValueError(f"Group {self.name!r}: give either lr or lr_scale, not both.")
        for key in ("lr", "lr_scale", "weight_decay", "max_grad_norm"):
            value = getattr(self, key)
            if value is not None and not value >= 0:
                raise ValueError(f"Group {self.name!r}: {key} must be >= 0, got {value!r}.")
        reserved = {"params", "lr", "weight_decay", *GROUP_KEYS} & set(self.options)
        if reserved:
            raise ValueError(
                f"Group {self.name!r}: set {sorted(reserved)} through the group's own fields, not through options."
            )
        if self.interval not in ("step", "epoch"):
            raise ValueError(f"Group {self.name!r}: interval must be 'step' or 'epoch', got {self.interval!r}.")
        if self.frequency < 1:
            raise ValueError(f"Group {self.name!r}: frequency must be >= 1, got {self.frequency!r}.")
        if self.warmup < 0:
            raise ValueError(f"Group {self.name!r}: warmup must be >= 0, got {self.warmup!r}.")
        if not 0 < self.warmup_start_factor <= 1:
            raise ValueError(
                f"Group {self.name!r}: warmup_start_factor must be in (0, 1], got {self.warmup_start_factor!r}."
            )
        if self.scheduler is not None and not callable(self.scheduler):
            raise ValueError(
                f"Group {self.name!r}: scheduler must be a callable taking an optimizer "
                f"(in YAML: class_path/init_args), got {self.scheduler!r}."
            )

    @property
    def is_catch_all(self) -> bool:
        """Whether this group takes every parameter no other group matched."""
        return self.params is None


def is_no_decay_parameter(name: str, param: torch.Tensor) -> bool:
    """Whether a parameter is conventionally exempt from weight decay.

    Biases and the affine weights of normalisation layers are one-dimensional; decaying them
    only shrinks scales and offsets that carry no capacity to overfit (the rule timm uses).

    Args:
        name: The parameter's name.
        param: The parameter.

    Returns:
        True for biases and parameters with fewer than two dimensions.
    """
    return param.ndim <= 1 or name.endswith(".bias")


def group_name_of(param_group: Mapping[str, Any]) -> str:
    """The :class:`ParamGroup` name an optimizer param group was built from.

    Args:
        param_group: A dict from ``optimizer.param_groups``.

    Returns:
        ``"rgb"`` for both ``"rgb"`` and its sub-group ``"rgb/no_decay"``.
    """
    return str(param_group["name"]).removesuffix(NO_DECAY_SUFFIX)


def named_param_groups(groups: Mapping[str, ParamGroup] | Sequence[ParamGroup]) -> list[ParamGroup]:
    """Normalise groups given as a list or as a mapping name -> group into a named list.

    The mapping form is what YAML configs use (``param_groups: {rgb: {lr: 5.0e-4}}``): every
    group is addressable by name from the command line (``--model.init_args.param_groups.rgb.lr 1e-3``).

    Args:
        groups: A sequence of named groups, or a mapping name -> group whose ``name`` is
            ``None`` or equal to its key.

    Returns:
        The groups as a list, in order, each with its name set.

    Raises:
        ValueError: If a listed group has no name, or a mapped group's name differs from its key.
    """
    if isinstance(groups, Mapping):
        named = []
        for key, group in groups.items():
            if group.name is not None and group.name != key:
                raise ValueError(f"Parameter group {key!r} sets a different name {group.name!r}; leave `name` out.")
            named.append(replace(group, name=key))
        return named
    for position, group in enumerate(groups):
        if group.name is None:
            raise ValueError(f"Parameter group #{position} (patterns {group.params}) has no name; give it one.")
    return list(groups)


def _assign(
    named_params: Sequence[tuple[str, nn.Parameter]], groups: Sequence[ParamGroup]
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Assign each trainable parameter to exactly one group, or raise naming the problem."""
    names = [group.name for group in groups]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"Parameter group names must be unique; repeated: {duplicated}.")
    catch_alls = [group.name for group in groups if group.is_catch_all]
    if len(catch_alls) > 1:
        raise ValueError(
            f"At most one group may omit `params` (the catch-all); got {catch_alls}. Give all but one of them patterns."
        )

    trainable_names = [name for name, param in named_params if param.requires_grad]
    frozen_names = [name for name, param in named_params if not param.requires_grad]
    by_name = dict(named_params)
    patterned = {group.name: group.params for group in groups if not group.is_catch_all}
    matched = assign_owners(trainable_names, patterned, "group")  # type: ignore[arg-type]
    for group in groups:
        if group.is_catch_all or matched[group.name]:
            continue
        frozen_matched = select_names(frozen_names, group.params)  # type: ignore[arg-type]
        detail = (
            f"it matches only frozen parameters ({describe_names(frozen_matched)})"
            if frozen_matched
            else f"trainable parameters include {describe_names(trainable_names)}"
        )
        raise ValueError(
            f"Parameter group {group.name!r} with patterns {group.params} matches no trainable parameter; {detail}."
        )
    members: dict[str, list[tuple[str, nn.Parameter]]] = {
        group.name: [(name, by_name[name]) for name in matched.get(group.name, [])] for group in groups
    }
    owned = {name for names in matched.values() for name in names}

    leftover = [name for name in trainable_names if name not in owned]
    if leftover:
        if not catch_alls:
            all_patterns = {group.name: group.params for group in groups}
            raise ValueError(
                f"{len(leftover)} trainable parameter(s) match no group: {describe_names(leftover)}. "
                f"Group patterns: {all_patterns}. Add a pattern, or a catch-all group without "
                "`params` (e.g. ParamGroup('rest'))."
            )
        members[catch_alls[0]] = [(name, by_name[name]) for name in leftover]
    elif catch_alls:
        raise ValueError(
            f"The catch-all group {catch_alls[0]!r} receives no parameter: every trainable "
            "parameter is already matched by another group. Remove it."
        )
    return members


def build_param_groups(
    named_params: nn.Module | Iterable[tuple[str, nn.Parameter]],
    groups: Sequence[ParamGroup],
    *,
    no_weight_decay_on_norm_and_bias: bool = False,
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into named optimizer param groups.

    Frozen parameters (``requires_grad=False``) are skipped. Learning rates given as ``lr_scale``
    are resolved later by :func:`mslightning.optim.configure_grouped_optimizers`, once the
    optimizer's base ``lr`` is known; this function leaves those groups without ``"lr"``.

    Args:
        named_params: A module, or ``(name, parameter)`` pairs as from ``named_parameters()``.
        groups: The group specifications, in the order the optimizer will hold them.
        no_weight_decay_on_norm_and_bias: Default for groups that do not set
            ``no_weight_decay_on_norm_and_bias`` themselves.

    Returns:
        Param-group dicts for ``torch.optim`` constructors, each with ``"params"`` and ``"name"``
        (plus the group's options). A group with the no-decay option is followed by its
        ``"<name>/no_decay"`` sub-group when it has such parameters.

    Raises:
        ValueError: If a parameter is matched by two groups, a group matches nothing, trainable
            parameters are left over without a catch-all group, or names repeat.
    """
    if not groups:
        raise ValueError("Expected at least one ParamGroup, got none.")
    groups = named_param_groups(groups)
    if isinstance(named_params, nn.Module):
        named_params = named_params.named_parameters()
    members = _assign(list(named_params), groups)

    param_groups: list[dict[str, Any]] = []
    for group in groups:
        options: dict[str, Any] = dict(group.options)
        if group.lr is not None:
            options["lr"] = group.lr
        if group.weight_decay is not None:
            options["weight_decay"] = group.weight_decay
        options["max_grad_norm"] = group.max_grad_norm
        split = group.no_weight_decay_on_norm_and_bias
        if split is None:
            split = no_weight_decay_on_norm_and_bias
        pairs = members[group.name]
        decayed = [p for n, p in pairs if not (split and is_no_decay_parameter(n, p))]
        exempt = [p for n, p in pairs if split and is_no_decay_parameter(n, p)]
        if decayed:
            param_groups.append({"params": decayed, "name": group.name, **options})
        if exempt:
            param_groups.append(
                {"params": exempt, "name": group.name + NO_DECAY_SUFFIX, **options, "weight_decay": 0.0}
            )
    return param_groups
