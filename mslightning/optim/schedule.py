"""One learning-rate schedule per named parameter group, exactly as torch computes it.

Several torch schedulers stacked on one optimizer each rewrite *every* param group, so no group
follows its own trajectory. :class:`GroupLRScheduler` instead runs the user's torch scheduler on
a private one-group optimizer (a *probe*) whose single group starts from the target group's
hyper-parameters, and after each step copies the probe's ``lr`` (and ``momentum``/``betas``,
which ``OneCycleLR`` and ``CyclicLR`` also schedule) into the target group and its ``/no_decay``
sub-group. The target group therefore follows, step by step, exactly the trajectory the same
scheduler gives on a one-group optimizer, whatever the other groups do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from mslightning.optim.groups import SchedulerSpec, group_name_of
from mslightning.optim.resume import check_group_configuration, keep_configured_schedule_settings

__all__ = ["GroupLRScheduler"]

# Hyper-parameters a torch scheduler may write into its optimizer's groups.
SCHEDULED_KEYS = ("lr", "momentum", "betas")


class _ProbeOptimizer(Optimizer):
    """A one-group optimizer over a dummy tensor that only exists to be scheduled."""

    def __init__(self, hyper: dict[str, Any], defaults: dict[str, Any]) -> None:
        super().__init__([{"params": [torch.zeros(0, requires_grad=True)], **hyper}], dict(defaults))

    def step(self, closure: Any = None) -> None:
        return None


class GroupLRScheduler(LRScheduler):
    """Schedules one named parameter group of an optimizer with any torch scheduler.

    Lightning treats it like any ``LRScheduler`` (or, for a ``ReduceLROnPlateau`` schedule, give
    its config ``"reduce_on_plateau": True`` and a ``"monitor"``). Build it through
    :func:`mslightning.optim.configure_grouped_optimizers` rather than directly.

    Args:
        optimizer: The real optimizer whose groups carry ``"name"`` keys.
        group: The :class:`~mslightning.optim.ParamGroup` name to schedule; its ``/no_decay``
            sub-group follows the same schedule.
        scheduler: Builds the torch scheduler on a one-group optimizer, e.g.
            ``partial(CosineAnnealingWarmRestarts, T_0=4, T_mult=2)``.
        warmup: Steps of linear warm-up before ``scheduler`` starts at its own step 0.
        warmup_start_factor: The warm-up's first multiplier of the group's lr, in (0, 1].

    Raises:
        ValueError: If no param group of ``optimizer`` is named ``group``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        group: str,
        scheduler: SchedulerSpec | None = None,
        warmup: int = 0,
        warmup_start_factor: float = 0.01,
    ) -> None:
        # LRScheduler.__init__ is deliberately not called: it would write `initial_lr` into and
        # step every group of `optimizer`; all scheduling happens on the probe instead.
        self.optimizer = optimizer
        self.group = group
        self.group_indices = [
            i for i, pg in enumerate(optimizer.param_groups) if "name" in pg and group_name_of(pg) == group
        ]
        if not self.group_indices:
            names = [pg.get("name") for pg in optimizer.param_groups]
            raise ValueError(f"No param group of the optimizer is named {group!r}; its groups are {names}.")
        if warmup < 0 or not 0 < warmup_start_factor <= 1:
            raise ValueError(
                f"Group {group!r}: need warmup >= 0 and warmup_start_factor in (0, 1], "
                f"got {warmup!r} and {warmup_start_factor!r}."
            )
        first = optimizer.param_groups[self.group_indices[0]]
        hyper = {key: first[key] for key in SCHEDULED_KEYS if key in first}
        self.probe = _ProbeOptimizer(hyper, optimizer.defaults)
        self.base_lr = float(first["lr"])
        self.warmup = warmup
        self.warmup_start_factor = warmup_start_factor
        self.schedule = scheduler(self.probe) if scheduler is not None else None
        if self.schedule is not None and getattr(self.schedule, "optimizer", None) is not self.probe:
            raise ValueError(
                f"Group {group!r}: the scheduler factory must build its scheduler on the optimizer "
                "it is given (the group's one-group probe)."
            )
        self.is_plateau = isinstance(self.schedule, ReduceLROnPlateau)
        self.last_epoch = 0
        self._write_group_values()

    @property
    def warmup_factor(self) -> float | None:
        """The current warm-up multiplier, or ``None`` once warm-up is over."""
        if self.last_epoch >= self.warmup:
            return None
        return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * self.last_epoch / self.warmup

    def _write_group_values(self) -> None:
        values = {key: self.probe.param_groups[0][key] for key in SCHEDULED_KEYS if key in self.probe.param_groups[0]}
        factor = self.warmup_factor
        if factor is not None:
            values["lr"] = self.base_lr * factor
        for index in self.group_indices:
            self.optimizer.param_groups[index].update(values)
        self._last_lr = [self.optimizer.param_groups[i]["lr"] for i in self.group_indices]

    def step(self, metrics: float | torch.Tensor | None = None, epoch: int | None = None) -> None:
        """Advance the group's schedule by one interval.

        Args:
            metrics: The monitored value, required by a ``ReduceLROnPlateau`` schedule and
                ignored during warm-up.
            epoch: Unsupported (deprecated in torch); must be ``None``.

        Raises:
            ValueError: If a plateau schedule gets no metric, or ``epoch`` is given.
        """
        if epoch is not None:
            raise ValueError("GroupLRScheduler.step does not take an explicit epoch.")
        self.last_epoch += 1
        if self.schedule is not None and self.last_epoch > self.warmup:
            self.probe.step()  # keeps torch from warning that the scheduler stepped first
            if self.is_plateau:
                if metrics is None:
                    raise ValueError(f"Group {self.group!r} uses ReduceLROnPlateau and needs a metric to step.")
                self.schedule.step(metrics)
            else:
                self.schedule.step()
        self._write_group_values()

    def get_lr(self) -> list[float]:
        """The group's current learning rates, one per param group it writes."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this group's trajectory after a resume.

        Returns:
            The group name, step count, the torch scheduler's own state and the probe's
            hyper-parameters (chainable schedulers read the current lr from their group).
        """
        probe_group = {k: v for k, v in self.probe.param_groups[0].items() if k != "params"}
        return {
            "group": self.group,
            "last_epoch": self.last_epoch,
            "base_lr": self.base_lr,
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "probe_group": probe_group,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`.

        Args:
            state_dict: As returned by :meth:`state_dict`.

        Raises:
            ValueError: If the state belongs to a differently named group, or to a group with or
                without a schedule where this one differs.
        """
        if state_dict.get("group") != self.group:
            raise ValueError(
                f"This checkpoint's schedule belongs to parameter group {state_dict.get('group')!r}, "
                f"but the configuration schedules {self.group!r} at this position. The groups or "
                "their schedules were renamed, added, removed or reordered since the checkpoint."
            )
        if (state_dict["schedule"] is None) != (self.schedule is None):
            raise ValueError(
                f"Group {self.group!r}: the checkpoint and the configuration disagree on whether "
                "this group has a scheduler."
            )
        self.last_epoch = state_dict["last_epoch"]
        self.base_lr = state_dict["base_lr"]
        self.probe.param_groups[0].update(state_dict["probe_group"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state_dict["schedule"])
        self._last_lr = [self.optimizer.param_groups[i]["lr"] for i in self.group_indices]


def check_group_names(optimizer: Optimizer, saved_groups: Sequence[dict[str, Any]]) -> None:
    """Refuse to load optimizer state whose param groups are not the configured ones, in order.

    Lightning (and torch) restore param groups by position: without this check a checkpoint
    saved with groups ``[rgb, depth]`` would silently give rgb's moments and lr to depth after
    the configuration's order changed.

    Args:
        optimizer: The optimizer about to load state.
        saved_groups: The ``"param_groups"`` list of the state dict being loaded.

    Raises:
        ValueError: Naming both lists of group names when they differ.
    """
    current = [pg.get("name") for pg in optimizer.param_groups]
    saved = [pg.get("name") for pg in saved_groups]
    if current != saved:
        raise ValueError(
            "The checkpoint's optimizer parameter groups do not match the configured ones: "
            f"checkpoint has {saved}, configuration has {current}. Torch and Lightning restore "
            "groups by position, so loading would swap their state; restore the checkpoint's "
            "group configuration, or start a new run from the weights only."
        )


def _check_group_names_hook(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    check_group_names(optimizer, state_dict["param_groups"])
    check_group_configuration(optimizer, state_dict["param_groups"])
    return keep_configured_schedule_settings(optimizer, state_dict)


def guard_group_names_on_load(optimizer: Optimizer) -> Optimizer:
    """Make ``optimizer.load_state_dict`` check the checkpoint's groups against the configuration.

    Group names or order that differ raise ``ValueError`` (:func:`check_group_names`). Where
    both sides carry the descriptions written by
    :func:`~mslightning.optim.configure_grouped_optimizers`, a changed scheduler class or an
    added or removed schedule raises ``ValueError`` and any other changed setting is reported
    in a warning (:func:`~mslightning.optim.resume.check_group_configuration`).

    Args:
        optimizer: An optimizer whose param groups carry ``"name"`` keys.

    Returns:
        The same optimizer, with a load-state-dict pre-hook registered.
    """
    optimizer.register_load_state_dict_pre_hook(_check_group_names_hook)
    return optimizer
