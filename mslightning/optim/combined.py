"""Combined schedules (torch's ``SequentialLR`` and ``ChainedScheduler``) writable in YAML.

Torch's ``SequentialLR`` and ``ChainedScheduler`` take schedulers already built on the same
optimizer, so they cannot be given as one ``class_path`` the way ``StepLR`` can. These two
subclasses take the sub-schedules as factories instead and build them on the optimizer they
are given, so they work as a :class:`~mslightning.optim.ParamGroup` ``scheduler``::

    scheduler:
      class_path: mslightning.optim.SequentialSchedule
      init_args:
        schedulers:
          - class_path: torch.optim.lr_scheduler.LinearLR
            init_args: {start_factor: 0.1, total_iters: 3}
          - class_path: torch.optim.lr_scheduler.CosineAnnealingLR
            init_args: {T_max: 20}
        milestones: [3]
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ChainedScheduler, SequentialLR

from mslightning.optim.groups import SchedulerSpec

__all__ = ["ChainedSchedule", "SequentialSchedule"]


def _check_factories(kind: str, schedulers: Sequence[SchedulerSpec]) -> list[SchedulerSpec]:
    factories = list(schedulers)
    if not factories:
        raise ValueError(f"{kind} needs at least one scheduler in `schedulers`, got none.")
    for index, factory in enumerate(factories):
        if not callable(factory):
            raise ValueError(
                f"{kind}: schedulers[{index}] must be a callable taking an optimizer "
                f"(in YAML: class_path/init_args of a torch.optim.lr_scheduler class), got {factory!r}."
            )
    return factories


class SequentialSchedule(SequentialLR):
    """Torch's ``SequentialLR`` built from scheduler factories: one schedule after another.

    ``SequentialSchedule(opt, schedulers, milestones)`` is
    ``SequentialLR(opt, [f(opt) for f in schedulers], milestones)``, with the sub-schedulers
    built in the given order. Being a scheduler class whose first argument is the optimizer, it
    is a scheduler factory itself: ``partial(SequentialSchedule, schedulers=[...],
    milestones=[...])`` in Python, ``class_path``/``init_args`` in YAML.

    Args:
        optimizer: The optimizer to schedule.
        schedulers: Factories taking an optimizer and returning a torch scheduler (in YAML:
            ``class_path``/``init_args`` of a ``torch.optim.lr_scheduler`` class).
        milestones: The steps at which the next scheduler takes over; one fewer than
            ``schedulers``, strictly increasing, positive.
        last_epoch: As for ``SequentialLR``.

    Raises:
        ValueError: If ``schedulers`` is empty or holds a non-callable, or ``milestones`` does not
            fit ``schedulers``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: list[SchedulerSpec],
        milestones: list[int],
        last_epoch: int = -1,
    ) -> None:
        factories = _check_factories("SequentialSchedule", schedulers)
        milestones = list(milestones)
        if len(milestones) != len(factories) - 1:
            raise ValueError(
                f"SequentialSchedule: milestones {milestones} must have one entry fewer than "
                f"schedulers ({len(factories)} given), i.e. {len(factories) - 1}."
            )
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones) or any(
            a >= b for a, b in pairwise(milestones)
        ):
            raise ValueError(
                f"SequentialSchedule: milestones must be strictly increasing positive integers, got {milestones}."
            )
        built = [factory(optimizer) for factory in factories]
        super().__init__(optimizer, built, milestones, last_epoch)  # type: ignore[arg-type]


class ChainedSchedule(ChainedScheduler):
    """Torch's ``ChainedScheduler`` built from scheduler factories: all step together.

    ``ChainedSchedule(opt, schedulers)`` is ``ChainedScheduler([f(opt) for f in schedulers],
    optimizer=opt)``: every step, each sub-scheduler steps in turn, so their multiplicative
    effects combine. Like :class:`SequentialSchedule`, it is a scheduler factory itself.

    Args:
        optimizer: The optimizer to schedule.
        schedulers: Factories taking an optimizer and returning a torch scheduler (in YAML:
            ``class_path``/``init_args`` of a ``torch.optim.lr_scheduler`` class).

    Raises:
        ValueError: If ``schedulers`` is empty or holds a non-callable.
    """

    def __init__(self, optimizer: Optimizer, schedulers: list[SchedulerSpec]) -> None:
        built = [factory(optimizer) for factory in _check_factories("ChainedSchedule", schedulers)]
        super().__init__(built, optimizer=optimizer)  # type: ignore[arg-type]
