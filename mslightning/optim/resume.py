"""What a resume restores, reports or refuses, per named parameter group.

:func:`~mslightning.optim.configure_grouped_optimizers` records, in every optimizer param-group
dict, a plain-data description of how the group was configured (only ``None``, booleans,
numbers, strings, lists and string-keyed dicts, so checkpoints stay loadable with
``torch.load(weights_only=True)``):

* ``"configured"``: the group's hyper-parameters as built, before any schedule wrote to them:
  ``lr`` (after ``lr_scale``), ``weight_decay`` and every other option of the optimizer, plus
  ``max_grad_norm``.
* ``"schedule"``: ``None`` for a group without schedule or warm-up, else
  ``{"scheduler": ..., "interval": ..., "frequency": ..., "warmup": ...}`` (plus
  ``"warmup_start_factor"`` when ``warmup`` is set), where ``"scheduler"`` is ``None`` (warm-up
  only) or :func:`describe_scheduler` of the torch scheduler.

Both travel in the optimizer's state dict. When that state is loaded,
:func:`check_group_configuration` compares the checkpoint's descriptions with the current ones,
group by group: a different scheduler class (at any nesting level), or a scheduler added or
removed, raises ``ValueError``; any other difference is reported in one warning that says which
value is used after loading. Torch restores every group's hyper-parameters (and the
descriptions themselves) and every torch scheduler's arguments from the checkpoint; the
warm-up, ``interval`` and ``frequency`` come from the configuration. Checkpoints saved without
these descriptions are loaded without the comparison.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

__all__ = [
    "CONFIGURED_KEY",
    "SCHEDULE_KEY",
    "ChangedSetting",
    "check_group_configuration",
    "describe_configured",
    "describe_schedule",
    "describe_scheduler",
    "format_schedule",
]

CONFIGURED_KEY = "configured"
"""Param-group key holding the group's hyper-parameters as configured."""

SCHEDULE_KEY = "schedule"
"""Param-group key holding the description of the group's schedule."""

# Init arguments that are not configuration: the optimizer, and the step counter.
_NOT_CONFIGURATION = frozenset({"self", "optimizer", "last_epoch", "verbose"})

# Settings of a group's schedule that the configuration decides after a resume (the
# GroupLRScheduler and Lightning's scheduler config do not save them).
CONFIGURATION_WINS = ("warmup", "warmup_start_factor", "interval", "frequency")

_NOT_PLAIN = object()


def _plain(value: Any) -> Any:
    """``value`` as plain data, or ``_NOT_PLAIN``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, LRScheduler | ReduceLROnPlateau):
        return describe_scheduler(value)
    if isinstance(value, Counter):  # MultiStepLR keeps its milestones as a Counter
        return _plain(sorted(value.elements()))
    if isinstance(value, list | tuple):
        items = [_plain(item) for item in value]
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in items) else items
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        mapping = {key: _plain(item) for key, item in value.items()}
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in mapping.values()) else mapping
    return _NOT_PLAIN


def describe_scheduler(scheduler: LRScheduler | ReduceLROnPlateau) -> dict[str, Any]:
    """A plain-data description of a built torch scheduler: its class and init arguments.

    The arguments are read back from the scheduler: each parameter of the class's ``__init__``
    (except ``optimizer``, ``last_epoch`` and ``verbose``) that the scheduler keeps as an
    attribute of the same name, or with a leading underscore (``SequentialLR`` keeps
    ``_schedulers`` and ``_milestones``), and whose value is plain data. Sub-schedulers are
    described recursively; a ``Counter`` (``MultiStepLR``'s milestones) becomes a sorted list.
    Arguments kept under another name (``LambdaLR``'s ``lr_lambda``, ``ReduceLROnPlateau``'s
    ``min_lr``) or holding other objects are left out.

    Args:
        scheduler: The scheduler.

    Returns:
        ``{"class": "torch.optim.lr_scheduler.StepLR", "args": {"step_size": 2, "gamma": 0.5}}``.
    """
    cls = type(scheduler)
    args: dict[str, Any] = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name in _NOT_CONFIGURATION or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        for attribute in (name, "_" + name):
            if hasattr(scheduler, attribute):
                value = _plain(getattr(scheduler, attribute))
                if value is not _NOT_PLAIN:
                    args[name] = value
                break
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "args": args}


def describe_schedule(
    scheduler: LRScheduler | ReduceLROnPlateau | None,
    *,
    warmup: int,
    warmup_start_factor: float,
    interval: str,
    frequency: int,
) -> dict[str, Any]:
    """The plain-data description of one group's schedule, stored under ``"schedule"``.

    Args:
        scheduler: The group's torch scheduler, or ``None`` for warm-up only.
        warmup: The group's warm-up length in intervals.
        warmup_start_factor: The warm-up's first multiplier (recorded only when ``warmup > 0``).
        interval: ``"step"`` or ``"epoch"``.
        frequency: Step the schedule every ``frequency`` intervals.

    Returns:
        ``{"scheduler": describe_scheduler(scheduler) or None, "interval", "frequency",
        "warmup"[, "warmup_start_factor"]}``.
    """
    description: dict[str, Any] = {
        "scheduler": describe_scheduler(scheduler) if scheduler is not None else None,
        "interval": interval,
        "frequency": frequency,
        "warmup": warmup,
    }
    if warmup:
        description["warmup_start_factor"] = warmup_start_factor
    return description


def describe_configured(param_group: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The group's configured hyper-parameters, stored under ``"configured"``.

    Args:
        param_group: The optimizer param group, before any schedule wrote to it.
        defaults: The optimizer's ``defaults`` (every hyper-parameter it accepts).

    Returns:
        Every optimizer hyper-parameter of the group with a plain value, and ``max_grad_norm``.
    """
    configured: dict[str, Any] = {}
    for key in [*sorted(defaults), "max_grad_norm"]:
        if key in param_group:
            value = _plain(param_group[key])
            if value is not _NOT_PLAIN:
                configured[key] = value
    return configured


def _is_scheduler_description(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"class", "args"}


def _format_value(value: Any) -> str:
    if _is_scheduler_description(value):
        args = ", ".join(f"{key}={_format_value(item)}" for key, item in value["args"].items())
        return f"{value['class']}({args})"
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(item) for item in value) + "]"
    return repr(value)


def format_schedule(description: Mapping[str, Any] | None) -> str:
    """A one-line rendering of a ``"schedule"`` description for messages.

    Args:
        description: As made by :func:`describe_schedule`, or ``None``.

    Returns:
        E.g. ``"torch.optim.lr_scheduler.StepLR(step_size=2, gamma=0.5), stepped every 1 epoch"``
        or ``"no schedule"``.
    """
    if description is None:
        return "no schedule"
    scheduler = description.get("scheduler")
    text = _format_value(scheduler) if scheduler is not None else "linear warm-up only"
    text += f", stepped every {description.get('frequency')} {description.get('interval')}"
    if description.get("warmup"):
        text += (
            f", after {description['warmup']} intervals of warm-up from {description.get('warmup_start_factor')!r} x lr"
        )
    return text


def _skeleton(value: Any) -> Any:
    """The scheduler classes in a description, nested as they are, with every argument blanked."""
    if _is_scheduler_description(value):
        return (value["class"], tuple((key, _skeleton(item)) for key, item in sorted(value["args"].items())))
    if isinstance(value, list) and any(_is_scheduler_description(item) for item in value):
        return tuple(_skeleton(item) for item in value)
    return None


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Scheduler arguments by dotted path (``schedulers[1].T_max``), down to plain leaves."""
    if _is_scheduler_description(value):
        flat: dict[str, Any] = {}
        for key, item in value["args"].items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
        return flat
    if isinstance(value, list) and any(_is_scheduler_description(item) for item in value):
        flat = {}
        for index, item in enumerate(value):
            flat.update(_flatten(item, f"{prefix}[{index}]"))
        return flat
    return {prefix: value}


def _same(a: Any, b: Any) -> bool:
    """Equal as configuration values: ``1 == 1.0``, ``nan == nan``, but ``True != 1``."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


class _Unset:
    """Stands for a setting one side does not have; shown as ``not set``."""

    def __repr__(self) -> str:
        return "not set"


_UNSET = _Unset()


@dataclass(frozen=True)
class ChangedSetting:
    """One setting of one group that differs between a checkpoint and the configuration.

    Attributes:
        group: The optimizer param group's name (``"rgb"``, ``"rgb/no_decay"``).
        setting: The setting: a hyper-parameter (``"weight_decay"``), ``"scheduler <arg>"``, or
            one of ``"warmup"``, ``"warmup_start_factor"``, ``"interval"``, ``"frequency"``.
        checkpoint: The checkpoint's value (a placeholder shown as ``not set`` if absent there).
        configuration: The configuration's value (likewise).
        used: ``"checkpoint"`` or ``"configuration"``: whose value is in effect after loading.
    """

    group: str
    setting: str
    checkpoint: Any
    configuration: Any
    used: str

    def describe(self) -> str:
        """One line for the warning.

        Returns:
            E.g. ``"group 'rgb': weight_decay: checkpoint 0.01, configuration 0.05 -> 0.01 is used
            (the checkpoint's)"``.
        """
        value = self.checkpoint if self.used == "checkpoint" else self.configuration
        return (
            f"group {self.group!r}: {self.setting}: checkpoint {_format_value(self.checkpoint)}, "
            f"configuration {_format_value(self.configuration)} -> {_format_value(value)} is used "
            f"(the {self.used}'s)"
        )


def _differences(
    group: str, saved: Mapping[str, Any], current: Mapping[str, Any], used: str, prefix: str = ""
) -> list[ChangedSetting]:
    changes = []
    for key in [*current, *(key for key in saved if key not in current)]:
        a, b = saved.get(key, _UNSET), current.get(key, _UNSET)
        if a is _UNSET or b is _UNSET or not _same(a, b):
            changes.append(ChangedSetting(group, prefix + key, a, b, used))
    return changes


def check_group_configuration(
    optimizer: Optimizer, saved_groups: Sequence[Mapping[str, Any]], *, warn: bool = True
) -> list[ChangedSetting]:
    """Compare a checkpoint's group descriptions with the optimizer's, before loading.

    Groups are compared by position (their names and order must already match; see
    :func:`~mslightning.optim.check_group_names`). A group whose ``"schedule"`` or
    ``"configured"`` description is missing on either side (a checkpoint from before these
    descriptions, or an optimizer not built by ``configure_grouped_optimizers``) is skipped for
    that description. The learning rate a schedule wrote during training is not compared: only
    the build-time descriptions are.

    Args:
        optimizer: The optimizer about to load state.
        saved_groups: The ``"param_groups"`` list of the state dict being loaded.
        warn: Emit the warning listing the changed settings (on rank zero).

    Returns:
        The settings that differ, in group order.

    Raises:
        ValueError: If a group's scheduler class differs (at any nesting level), or a scheduler
            or the whole schedule was added or removed: a scheduler's saved state cannot be
            loaded into another scheduler, and Lightning restores schedulers by position.
    """
    changes: list[ChangedSetting] = []
    schedules_seen: set[str] = set()
    for current, saved in zip(optimizer.param_groups, saved_groups, strict=False):
        name = str(current.get("name"))
        parent = name.split("/", 1)[0]
        if CONFIGURED_KEY in current and CONFIGURED_KEY in saved:
            changes += _differences(name, saved[CONFIGURED_KEY], current[CONFIGURED_KEY], "checkpoint")
        if SCHEDULE_KEY not in current or SCHEDULE_KEY not in saved or parent in schedules_seen:
            continue
        schedules_seen.add(parent)  # a /no_decay sub-group shares its parent's schedule
        now, before = current[SCHEDULE_KEY], saved[SCHEDULE_KEY]
        if (now is None) != (before is None) or (
            now is not None and _skeleton(now.get("scheduler")) != _skeleton(before.get("scheduler"))
        ):
            raise ValueError(
                f"Group {parent!r} has a different schedule than in the checkpoint: the checkpoint "
                f"has {format_schedule(before)}; the configuration has {format_schedule(now)}. A "
                "scheduler's saved state cannot be loaded into a different scheduler (or none), and "
                "Lightning restores schedulers by position. Restore the checkpoint's scheduler for "
                "this group, or start a new run from the model weights only."
            )
        if now is None:
            continue
        changes += _differences(
            parent,
            {key: value for key, value in before.items() if key != "scheduler"},
            {key: value for key, value in now.items() if key != "scheduler"},
            "configuration",
        )
        if now.get("scheduler") is not None:
            changes += _differences(
                parent,
                _flatten(before["scheduler"], ""),
                _flatten(now["scheduler"], ""),
                "checkpoint",
                prefix="scheduler ",
            )
    if changes and warn:
        rank_zero_warn(
            f"The checkpoint's parameter-group settings differ from the configuration in "
            f"{len(changes)} place(s); after loading, each uses the value shown:\n"
            + "\n".join("  " + change.describe() for change in changes)
            + "\nTorch restores each group's hyper-parameters (lr, weight_decay, betas, momentum, ..., "
            "and max_grad_norm) and each torch scheduler's arguments from the checkpoint; the "
            "warm-up, interval and frequency come from the configuration. To train with every "
            "configured value, start a new run from the model weights only; to silence this "
            "warning, put the checkpoint's values back into the configuration.",
            category=UserWarning,
        )
    return changes


def keep_configured_schedule_settings(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state_dict`` whose ``"schedule"`` descriptions carry the configured warm-up etc.

    Torch replaces each param-group dict with the checkpoint's, descriptions included. The
    warm-up, ``interval`` and ``frequency`` in effect after loading are the configuration's, so
    the loaded descriptions get those, keeping the next checkpoint truthful.

    Args:
        optimizer: The optimizer about to load ``state_dict``.
        state_dict: The optimizer state dict being loaded (not modified).

    Returns:
        ``state_dict`` itself when there is nothing to update, else a shallow copy with new
        param-group dicts where needed.
    """
    groups = list(state_dict["param_groups"])
    changed = False
    for index, (current, saved) in enumerate(zip(optimizer.param_groups, groups, strict=False)):
        now, before = current.get(SCHEDULE_KEY), saved.get(SCHEDULE_KEY)
        if not isinstance(now, Mapping) or not isinstance(before, Mapping):
            continue
        merged = {key: value for key, value in before.items() if key not in CONFIGURATION_WINS}
        merged.update({key: now[key] for key in CONFIGURATION_WINS if key in now})
        if merged != before:
            groups[index] = {**saved, SCHEDULE_KEY: merged}
            changed = True
    return {**state_dict, "param_groups": groups} if changed else state_dict
