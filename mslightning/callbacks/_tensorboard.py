"""TensorBoard helpers shared by the mslightning callbacks: writer lookup and one merged layout.

TensorBoard's custom-scalars dashboard reads only one layout per run, so every callback that
contributes charts implements :class:`LayoutProvider` and the last of them in the Trainer's
callback list writes the union of all their layouts (and the LightningModule's, first, when it
implements the protocol too), once, on rank zero.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

__all__ = [
    "Layout",
    "LayoutProvider",
    "TagOf",
    "multiline",
    "outputs_layout",
    "tag_of",
    "tensorboard_logger",
    "tensorboard_writer",
    "write_merged_layout",
]

Layout = dict[str, dict[str, list[Any]]]
"""``{category: {chart title: ["Multiline", [tag regex, ...]]}}`` as ``add_custom_scalars`` takes."""

TagOf = Callable[[str], str]
"""Logged key -> the tag TensorBoard shows it under (a logger may write a stream's keys to its own run)."""


@runtime_checkable
class LayoutProvider(Protocol):
    """A callback (or the LightningModule) that contributes charts to the custom-scalars dashboard."""

    def custom_scalar_layout(self, tag_of: TagOf | None = None) -> Layout:
        """The charts of what it logs; ``tag_of`` maps each logged key to its TensorBoard tag."""
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


def outputs_layout(category: str, charts: dict[str, list[str]], tag_of: TagOf | None = None) -> Layout:
    """A layout category of charts over exact logged keys, each key shown under its TensorBoard tag.

    Args:
        category: The category's title.
        charts: Chart title -> the logged keys drawn in it.
        tag_of: Key -> tag (see :func:`tag_of`); default: the key.

    Returns:
        ``{category: {chart: ["Multiline", [tag regex, ...]]}}``.
    """
    tag_of = tag_of or (lambda key: key)
    return {
        category: {
            title: multiline([f"^{re.escape(tag)}$" for tag in dict.fromkeys(tag_of(key) for key in keys)], regex=True)
            for title, keys in charts.items()
        }
    }


def tensorboard_logger(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The first attached TensorBoardLogger, on rank zero only.

    Args:
        trainer: The running Trainer.

    Returns:
        The logger, or None on other ranks or without a TensorBoardLogger.
    """
    if not trainer.is_global_zero:
        return None
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def tensorboard_writer(trainer: pl.Trainer) -> Any | None:
    """The SummaryWriter of the first attached TensorBoardLogger, on rank zero only.

    Args:
        trainer: The running Trainer.

    Returns:
        The writer, or None on other ranks or without a TensorBoardLogger.
    """
    logger = tensorboard_logger(trainer)
    return None if logger is None else logger.experiment


def tag_of(logger: Any) -> TagOf:
    """The tag a logged key gets from this logger (a stream's run drops the stream; else the key).

    Args:
        logger: A logger, e.g. :class:`~mslightning.loggers.StreamTensorBoardLogger`.

    Returns:
        Key -> tag.
    """
    split = getattr(logger, "split_key", None)
    return (lambda key: split(key)[1]) if callable(split) else (lambda key: key)


def has_tensorboard(trainer: pl.Trainer) -> bool:
    """Whether a TensorBoardLogger is attached (on any rank).

    Args:
        trainer: The running Trainer.

    Returns:
        True if one of ``trainer.loggers`` is a TensorBoardLogger.
    """
    return any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)


def write_merged_layout(trainer: pl.Trainer, caller: object) -> bool:
    """Write the union of all layout providers' layouts, once per fit, if ``caller`` is the last provider.

    Call this from every provider at the end of each epoch it handles (not from a hook Lightning
    replays when resuming): after a first epoch each provider knows what it logs (the task of the
    per-stream outputs, the fusion's internals), so charts of what the run does not measure are
    left out. Only the last provider in ``trainer.callbacks`` writes (its epoch's work comes after
    the others'), and only once per Trainer, so the run gets exactly one layout. A provider whose
    ``custom_scalar_layout`` takes no argument is called without one.

    Args:
        trainer: The running Trainer.
        caller: The callback calling.

    Returns:
        True if the layout was written here.
    """
    providers = [cb for cb in trainer.callbacks if isinstance(cb, LayoutProvider)]
    if not providers or providers[-1] is not caller or getattr(caller, "_layout_written_for", None) == id(trainer):
        return False
    logger = tensorboard_logger(trainer)
    if logger is None:
        return False
    caller._layout_written_for = id(trainer)  # type: ignore[attr-defined]
    if isinstance(trainer.lightning_module, LayoutProvider):  # the module's own metrics, charted first
        providers.insert(0, trainer.lightning_module)
    merged: Layout = {}
    tag = tag_of(logger)
    for provider in providers:
        takes_tag = bool(inspect.signature(provider.custom_scalar_layout).parameters)
        layout = provider.custom_scalar_layout(tag) if takes_tag else provider.custom_scalar_layout()
        for category, charts in layout.items():
            merged.setdefault(category, {}).update(charts)
    logger.experiment.add_custom_scalars(merged)
    return True
