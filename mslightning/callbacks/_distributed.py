"""The collectives the callbacks need, from the Trainer's strategy (no-ops on one process)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

__all__ = ["collectives", "mean_over_ranks", "sum_over_ranks"]


def collectives(
    trainer: pl.Trainer,
) -> tuple[Callable[[Tensor], Tensor] | None, Callable[[Any], list[Any]] | None]:
    """``(reduce_sum, gather)`` for :meth:`PredictionTally.compute`, or ``(None, None)`` on one process.

    Args:
        trainer: The running Trainer.

    Returns:
        A function summing a tensor over processes, and one collecting a picklable object from
        every process.
    """
    if trainer.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None, None

    def gather(obj: Any) -> list[Any]:
        everyone: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(everyone, obj)
        return everyone

    return (lambda t: trainer.strategy.reduce(t, reduce_op="sum")), gather


def sum_over_ranks(trainer: pl.Trainer, counts: Sequence[int]) -> list[int]:
    """Integer counts summed over processes (every process must pass as many).

    Args:
        trainer: The running Trainer.
        counts: This process's counts.

    Returns:
        The totals, in order (the counts themselves on one process).
    """
    if trainer.world_size == 1 or not counts:
        return list(counts)
    total = trainer.strategy.reduce(torch.tensor(counts, device=trainer.strategy.root_device), reduce_op="sum")
    return [int(v) for v in total.tolist()]


def mean_over_ranks(trainer: pl.Trainer, values: Sequence[Tensor]) -> list[Tensor]:
    """0-dim tensors averaged over processes, with one collective.

    Args:
        trainer: The running Trainer.
        values: This process's values.

    Returns:
        The means, in order (0-dim tensors).
    """
    if not values:
        return []
    return list(trainer.strategy.reduce(torch.stack(list(values)), reduce_op="mean").unbind())
