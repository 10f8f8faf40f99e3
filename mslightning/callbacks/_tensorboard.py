"""TensorBoard helpers shared by the mslightning callbacks: writer lookup and one merged layout.

TensorBoard's custom-scalars dashboard reads only one layout per run, so every callback that
contributes charts implements :class:`LayoutProvider` and the first of them in the Trainer's
callback list writes the union of all their layouts, once, on rank zero.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

__all__ = ["Layout", "LayoutProvider", "multiline", "tensorboard_writer", "write_merged_layout"]

Layout = dict[str, dict[str, list[Any]]]
"""``{category: {chart title: ["Multiline", [tag regex, ...]]}}`` as ``add_custom_scalars`` takes."""


@runtime_checkable
class LayoutProvider(Protocol):
    """A callback that contributes charts to the custom-scalars dashboard."""

    def custom_scalar_layout(self) -> Layout:
        """The charts this callback logs."""
        ...


def multiline(tags: Iterable[str], *, regex: bool = False) -> list[Any]:
    """A multi-line chart entry of a custom-scalars layout.

    Args:
        tags: Exact scalar tags (escaped here) or, with ``regex=True``, regular expressions.
        regex: Whether ``tags`` are already regular expressions.

    Returns:
        ``["Multiline", [regex, ...]]``.
    """
    return ["Multiline", [tag if regex else re.escape(tag) for tag in tags]]


def tensorboard_writer(trainer: pl.Trainer) -> Any | None:
    """The SummaryWriter of the first attached TensorBoardLogger, on rank zero only.

    Args:
        trainer: The running Trainer.

    Returns:
        The writer, or None on other ranks or without a TensorBoardLogger.
    """
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def has_tensorboard(trainer: pl.Trainer) -> bool:
    """Whether a TensorBoardLogger is attached (on any rank).

    Args:
        trainer: The running Trainer.

    Returns:
        True if one of ``trainer.loggers`` is a TensorBoardLogger.
    """
    return any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)


def write_merged_layout(trainer: pl.Trainer, caller: object) -> bool:
    """Write the union of all layout providers' layouts if ``caller`` is the first provider.

    Call this from every provider's ``on_train_start``; only the first provider in
    ``trainer.callbacks`` writes, so the run gets exactly one layout.

    Args:
        trainer: The running Trainer.
        caller: The callback calling.

    Returns:
        True if the layout was written here.
    """
    providers = [cb for cb in trainer.callbacks if isinstance(cb, LayoutProvider)]
    if not providers or providers[0] is not caller:
        return False
    writer = tensorboard_writer(trainer)
    if writer is None:
        return False
    merged: Layout = {}
    for provider in providers:
        for category, charts in provider.custom_scalar_layout().items():
            merged.setdefault(category, {}).update(charts)
    writer.add_custom_scalars(merged)
    return True
