"""Hyper-parameters as plain data, so checkpoints reload with ``weights_only`` and no extra arguments.

A module built in Python receives callables (``partial(GatedFusion, dim=128)``,
``partial(torch.optim.AdamW, lr=1e-4)``) and :class:`~mslightning.optim.ParamGroup` objects.
Pickling those into a checkpoint breaks ``torch.load(weights_only=True)``; leaving them out
breaks ``load_from_checkpoint``. Instead they are written the way LightningCLI writes its own
config — ``{"class_path": ..., "init_args": {...}}`` — and the checkpoint names Lightning's
own ``instantiate_module`` as the instantiator, so ``load_from_checkpoint(path)`` rebuilds the
module through jsonargparse exactly as the CLI would, from plain data only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

__all__ = ["NotPlainError", "save_plain_hyperparameters", "to_plain"]

LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


class NotPlainError(ValueError):
    """Raised when a value cannot be written as plain data."""


def _import_path(obj: Any) -> str:
    path = f"{obj.__module__}.{obj.__qualname__}"
    module_name, _, attr = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise NotPlainError(f"{path} is not importable") from err
    if found is not obj:
        raise NotPlainError(f"{path} does not import as the same object")
    return path


def to_plain(value: Any) -> Any:
    """Convert a constructor argument into plain data (what a LightningCLI YAML would hold).

    Args:
        value: ``None``, a number, string, path, mapping, sequence, an importable class or
            function, a ``functools.partial`` of one with keyword arguments, or a dataclass
            (e.g. :class:`~mslightning.optim.ParamGroup`).

    Returns:
        The same value built from ``dict``, ``list``, ``str``, numbers, ``bool`` and ``None``;
        classes and partials become ``{"class_path": ..., "init_args": {...}}``; a dataclass
        becomes a mapping of its fields that differ from their defaults.

    Raises:
        NotPlainError: For a lambda, a local class, a partial with positional arguments, or any
            other object with no plain form.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_plain(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if getattr(value, field.name) != _field_default(field)
        }
    if isinstance(value, functools.partial):
        func, args = value.func, value.args
        if args and inspect.isclass(args[-1]) and func.__module__.startswith("jsonargparse"):
            # jsonargparse's callable for a class_path: partial(<its caller>, <instantiator>, cls, **init_args)
            func, args = args[-1], ()
        if args:
            raise NotPlainError(f"partial({func!r}, ...) has positional arguments")
        plain: dict[str, Any] = {"class_path": _import_path(func)}
        if value.keywords:
            plain["init_args"] = to_plain(value.keywords)
        return plain
    if inspect.isclass(value) or inspect.isfunction(value):
        return {"class_path": _import_path(value)}
    raise NotPlainError(f"{type(value).__name__} {value!r} has no plain form")


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def save_plain_hyperparameters(module: pl.LightningModule, init_args: Mapping[str, Any]) -> list[str]:
    """Save a module's constructor arguments as plain, reloadable hyper-parameters.

    Under LightningCLI the CLI has already supplied the plain config, and it is used as is.
    Otherwise every argument is converted with :func:`to_plain`; the checkpoint then names
    Lightning's ``instantiate_module`` as instantiator, so ``load_from_checkpoint(path)``
    needs no extra argument.

    Args:
        module: The module whose ``hparams`` are set.
        init_args: Constructor argument name -> value, as the caller received them.

    Returns:
        The names of arguments that have no plain form and were left out; they must be passed
        to ``load_from_checkpoint`` again.
    """
    if _given_hyperparameters.get() is not None:
        module.save_hyperparameters()
        return []
    plain: dict[str, Any] = {}
    skipped = []
    for name, value in init_args.items():
        try:
            plain[name] = to_plain(value)
        except NotPlainError:
            skipped.append(name)
    plain.update(_class_path=_import_path(type(module)), _instantiator=LIGHTNING_INSTANTIATOR)
    module.save_hyperparameters(plain)
    return skipped
