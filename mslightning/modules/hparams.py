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
from collections.abc import Mapping, MutableMapping
from pathlib import PurePath
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

__all__ = [
    "BOOKKEEPING",
    "NotPlainError",
    "canonical_config",
    "canonical_param_groups",
    "changed_settings",
    "paths_as_strings",
    "save_plain_hyperparameters",
    "signature_defaults",
    "to_plain",
]

LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"

BOOKKEEPING = ("_instantiator", "_class_path")
"""Hyper-parameters that do not describe the model (Lightning's and jsonargparse's bookkeeping)."""


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


def paths_as_strings(hparams: MutableMapping[str, Any]) -> None:
    """Replace every path among saved hyper-parameters by its string, in place.

    A datamodule built with a ``pathlib.Path`` (``NYUDepthV2DataModule(Path("nyu.mat"))``) would
    otherwise pickle the ``PosixPath`` into every checkpoint, and Lightning's own ``weights_only``
    load (``fit``/``validate`` with ``ckpt_path``) refuses it. Call after ``save_hyperparameters``.

    Args:
        hparams: A module's or datamodule's ``hparams``.
    """
    for key, value in hparams.items():
        if isinstance(value, PurePath):
            hparams[key] = str(value)


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


def signature_defaults(obj: Any) -> dict[str, Any]:
    """The default of every parameter that has one, of a class's ``__init__`` or of a function.

    Args:
        obj: A class or a callable.

    Returns:
        Parameter name -> default; ``{}`` where no signature can be read.
    """
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}


def canonical_config(value: Any) -> Any:
    """One form for equal configurations, so that hyper-parameters written differently compare equal.

    ``{"class_path": ...}`` entries get the class's own module path (``mslightning.nn.GatedFusion``
    and ``mslightning.nn.fusion.GatedFusion`` are one class) and lose init arguments equal to the
    class's defaults (LightningCLI writes every default, Python only what was given).

    Args:
        value: Plain data, as stored in ``hparams``.

    Returns:
        The canonical form of ``value``.
    """
    value = _as_dict(value)
    if isinstance(value, Mapping) and "class_path" in value:
        path = str(value["class_path"])
        module_name, _, attr = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
            path, defaults = f"{cls.__module__}.{cls.__qualname__}", signature_defaults(cls)
        except (ImportError, AttributeError, ValueError):
            defaults = {}
        init_args = {
            key: canonical_config(item)
            for key, item in (value.get("init_args") or {}).items()
            if not (key in defaults and canonical_config(item) == canonical_config(to_plain_or_none(defaults[key])))
        }
        return {"class_path": path, "init_args": init_args}
    if isinstance(value, Mapping):
        return {key: canonical_config(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [canonical_config(item) for item in value]
    return value


def canonical_param_groups(value: Any) -> Any:
    """Parameter groups (a list of named groups or a mapping name -> settings) as one canonical mapping.

    Args:
        value: Plain ``param_groups`` as stored in ``hparams``, or ``None``.

    Returns:
        Mapping name -> settings without the settings at :class:`~mslightning.optim.ParamGroup`'s
        defaults, each value in :func:`canonical_config` form; ``value`` itself if it is neither.
    """
    from mslightning.optim import ParamGroup  # optim does not depend on modules

    value = _as_dict(value)
    if isinstance(value, list) and all(isinstance(group, Mapping) and "name" in group for group in value):
        value = {group["name"]: group for group in value}
    if not isinstance(value, Mapping):
        return value
    defaults = {field.name: _field_default(field) for field in dataclasses.fields(ParamGroup)}
    return {
        name: {
            key: canonical_config(item)
            for key, item in _group_fields(settings).items()
            if key != "name" and item != defaults.get(key, dataclasses.MISSING)
        }
        for name, settings in value.items()
    }


def _as_dict(value: Any) -> Any:
    """Jsonargparse's ``Namespace`` (Lightning turns loaded hparams into them in place) as a dict."""
    return value.as_dict() if callable(getattr(value, "as_dict", None)) else value


def _group_fields(settings: Any) -> dict[str, Any]:
    """A group's fields, also from jsonargparse's ``{"class_path": ..., "init_args.<field>": ...}`` dump."""
    settings = dict(_as_dict(settings) or {})
    if "class_path" not in settings:
        return settings
    fields = dict(settings.get("init_args") or {})
    fields.update({key.removeprefix("init_args."): v for key, v in settings.items() if key.startswith("init_args.")})
    return fields


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def changed_settings(
    before: Mapping[str, Any], after: Mapping[str, Any], line: str = "{key}: {before!r} -> {after!r}"
) -> list[str]:
    """One line per setting that differs, by its dotted path, e.g. ``param_groups.rgb.lr: 0.002 -> 0.0001``.

    Args:
        before: Settings (nested mappings of plain data).
        after: The same settings, changed.
        line: Format of one line, with the fields ``key``, ``before`` and ``after``.

    Returns:
        ``"<path>: <before> -> <after>"`` for every leaf that differs (``<not set>`` where one
        side lacks it), in ``after``'s order.
    """
    old, new = _leaves(before), _leaves(after)
    missing = "<not set>"
    keys = [*new, *(key for key in old if key not in new)]
    return [
        line.format(key=key, before=old.get(key, missing), after=new.get(key, missing))
        for key in keys
        if old.get(key, missing) != new.get(key, missing)
    ]


def to_plain_or_none(value: Any) -> Any:
    """:func:`to_plain`, or ``None`` for a value without a plain form.

    Args:
        value: Any value.

    Returns:
        The plain form, or ``None``.
    """
    try:
        return to_plain(value)
    except NotPlainError:
        return None
