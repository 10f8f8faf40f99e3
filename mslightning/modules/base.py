"""A LightningModule base whose optimizer, named groups and schedules all come from config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from mslightning.callbacks.nonfinite import NonFiniteGuard
from mslightning.modules.hparams import (
    BOOKKEEPING,
    canonical_config,
    canonical_param_groups,
    changed_settings,
    save_plain_hyperparameters,
)
from mslightning.optim import (
    ParamGroup,
    clip_grad_norm_per_group,
    configure_grouped_optimizers,
    forbid_replaced_configure_optimizers,
    named_param_groups,
    select_names,
)
from mslightning.optim.patterns import describe_names

__all__ = ["GroupedOptimizationModule", "StagedSteps"]

ParamGroups = dict[str, ParamGroup] | list[ParamGroup]
"""Named groups as a mapping name -> group (YAML's form) or as a list of named groups."""


class GroupedOptimizationModule(pl.LightningModule):
    """Base class: ``configure_optimizers`` from an injected optimizer and named param groups.

    Subclasses implement :meth:`default_param_groups` (used when ``param_groups`` is ``None``)
    and, for :class:`~mslightning.callbacks.StreamMonitor`, set :attr:`stream_patterns`. They
    call :meth:`save_init_arguments` with their constructor arguments, so that every checkpoint
    reloads with ``load_from_checkpoint(path)`` alone and with ``weights_only`` loading.

    What the base adds to every subclass:

    * Per-group ``max_grad_norm`` clipping in ``configure_gradient_clipping``, after AMP
      unscaling; the Trainer's own ``gradient_clip_val`` still applies afterwards to all groups.
    * A :class:`~mslightning.callbacks.NonFiniteGuard` (``configure_callbacks``) unless the
      Trainer has one: a NaN/Inf loss stops ``fit`` before the step; no checkpoint holds
      non-finite weights.
    * A warning when ``validate``/``test``/``predict`` runs on weights that were neither trained
      nor loaded (no ``ckpt_path``), and, when a checkpoint is loaded into a module configured
      differently, a warning listing each setting whose value differs.

    Args:
        optimizer: Builds the optimizer from param groups (YAML: ``class_path``/``init_args`` of
            any ``torch.optim`` class). Its ``lr``/``weight_decay`` are the defaults of groups
            that do not set their own.
        param_groups: The named groups, as a mapping name -> group (in YAML,
            ``param_groups: {rgb: {lr: 5.0e-4}, depth: {...}}``, so that
            ``--model.init_args.param_groups.rgb.lr`` addresses one group) or as a list of named groups;
            ``None`` uses :meth:`default_param_groups`. A group without ``params`` whose name is
            one of the default groups' names takes that default group's patterns, so
            ``rgb: {lr: 5.0e-4}`` is enough. A default group whose part has no trainable
            parameter (e.g. ``fusion`` with a parameter-free fusion) is left out, with a note.
        no_weight_decay_on_norm_and_bias: Exempt biases and normalisation weights from weight
            decay in every group that does not decide for itself.
    """

    stream_patterns: dict[str, list[str]]
    """Stream name -> parameter-name patterns of that stream (read by StreamMonitor)."""

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        param_groups: ParamGroups | None = None,
        no_weight_decay_on_norm_and_bias: bool = False,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.param_group_specs = None if param_groups is None else named_param_groups(param_groups)
        self.no_weight_decay_on_norm_and_bias = no_weight_decay_on_norm_and_bias
        self.loss_terms: dict[str, torch.Tensor] = {}
        """The current training step's loss terms (name -> 0-dim tensor), read by NonFiniteGuard."""
        self.weights_are_trained = False
        """Whether the weights were trained (fit) or loaded (a checkpoint or a state_dict)."""
        self.register_load_state_dict_post_hook(_mark_loaded)

    def save_init_arguments(self, init_args: Mapping[str, Any]) -> None:
        """Save the constructor arguments as plain hyper-parameters (see :mod:`~mslightning.modules.hparams`).

        Args:
            init_args: Constructor argument name -> value, e.g. ``locals()`` filtered to them.
        """
        skipped = save_plain_hyperparameters(self, init_args)
        if skipped:
            rank_zero_warn(
                f"{type(self).__name__}: {skipped} cannot be stored in the checkpoint as plain data (a lambda or a "
                "local class?); pass them to load_from_checkpoint again, or use importable classes/partials."
            )

    def default_param_groups(self) -> list[ParamGroup]:
        """The groups used when none are configured: one per declared part, else one catch-all group.

        Returns:
            One group per entry of :attr:`stream_patterns` (named like the part) when the module
            declares it, plus a catch-all group ``"other"`` when some trainable parameter belongs
            to no declared part; else a single catch-all group ``"all"``. Subclasses with shared
            parts add their own groups.
        """
        declared = getattr(self, "stream_patterns", None)
        if not declared:
            return [ParamGroup("all")]
        groups = [ParamGroup(name, patterns) for name, patterns in declared.items()]
        trainable = [name for name, p in self.named_parameters() if p.requires_grad]
        covered = {name for patterns in declared.values() for name in select_names(trainable, patterns)}
        if any(name not in covered for name in trainable):
            groups.append(ParamGroup("other"))  # parameters outside the declared parts keep a group
        return groups

    def resolved_param_groups(self) -> list[ParamGroup]:
        """The configured groups, with default patterns filled in by name and empty parts left out.

        Returns:
            The groups :meth:`configure_optimizers` uses.
        """
        trainable = [name for name, p in self.named_parameters() if p.requires_grad]
        defaults = {group.name: group for group in self.default_param_groups()}
        empty = {
            name
            for name, group in defaults.items()
            if group.params is not None and not select_names(trainable, group.params)
        }
        if self.param_group_specs is None:
            return [group for name, group in defaults.items() if name not in empty]
        resolved = []
        for group in self.param_group_specs:
            default = defaults.get(group.name)
            if group.params is None and default is not None and default.params is not None:
                if group.name in empty:
                    rank_zero_info(
                        f"{type(self).__name__}: parameter group {group.name!r} is skipped: its part "
                        f"({default.params}) has no trainable parameter in this configuration."
                    )
                    continue
                group = replace(group, params=default.params)
            resolved.append(group)
        self._warn_about_stray_catch_all(resolved, defaults, trainable)
        return resolved

    def _warn_about_stray_catch_all(
        self, groups: list[ParamGroup], defaults: Mapping[str, ParamGroup], trainable: list[str]
    ) -> None:
        """A configured group without ``params`` that names no part takes whatever is left: say what.

        E.g. ``depth: {}`` after the data's ``depth`` stream was renamed ``thermal``: without this
        note, ``depth`` would silently take the ``thermal`` encoder.
        """
        stray = [g for g in groups if g.params is None and g.name not in defaults]
        if not stray or all(default.params is None for default in defaults.values()):
            return
        claimed = {name for g in groups if g.params is not None for name in select_names(trainable, g.params)}
        leftover = [name for name in trainable if name not in claimed]
        rank_zero_warn(
            f"{type(self).__name__}: parameter group {stray[0].name!r} has no `params` and names no part of the model "
            f"({[name for name, d in defaults.items() if d.params is not None]}), so it takes every parameter no "
            f"other group matched: {describe_names(leftover, 4)} ({len(leftover)} parameters). Name it after a "
            "part, or give it `params`."
        )

    @override
    def setup(self, stage: str) -> None:
        forbid_replaced_configure_optimizers(self)

    @override
    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        trainer_callbacks = self.trainer.callbacks if self._trainer is not None else []
        if any(isinstance(callback, NonFiniteGuard) for callback in trainer_callbacks):
            return []
        return [NonFiniteGuard()]

    @override
    def configure_optimizers(self) -> Any:
        return configure_grouped_optimizers(
            self,
            self.optimizer_factory,
            self.resolved_param_groups(),
            no_weight_decay_on_norm_and_bias=self.no_weight_decay_on_norm_and_bias,
        )

    @override
    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        clip_grad_norm_per_group(optimizer)
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    @override
    def on_fit_start(self) -> None:
        self.weights_are_trained = True

    def _warn_if_untrained(self, stage: str) -> None:
        if not self.weights_are_trained:
            rank_zero_warn(
                f"{stage} runs on freshly initialised, untrained weights of {type(self).__name__}: no checkpoint "
                "was loaded. Pass --ckpt_path (a path, or `best`/`last` for the latest run's checkpoints), or "
                "build the model with load_from_checkpoint(path)."
            )

    @override
    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self._warn_if_untrained("validate")

    @override
    def on_test_start(self) -> None:
        self._warn_if_untrained("test")

    @override
    def on_predict_start(self) -> None:
        self._warn_if_untrained("predict")

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters") or {}
        current = dict(self.hparams)
        keys = sorted(set(saved) & set(current) - set(BOOKKEEPING))

        def canonical(hparams: Mapping[str, Any]) -> dict[str, Any]:
            return {
                key: (canonical_param_groups if key == "param_groups" else canonical_config)(hparams[key])
                for key in keys
            }

        line = "{key}: checkpoint {before!r}, now {after!r}"
        changed = changed_settings(canonical(saved), canonical(current), line)
        if changed:
            rank_zero_warn(
                f"{type(self).__name__}: the checkpoint was made with other settings than this model's. The weights "
                "(and, when resuming fit, the optimizer's per-group hyper-parameters) come from the checkpoint; "
                "every other setting is this model's:\n  " + "\n  ".join(changed)
            )


class StagedSteps:
    """Mixin: the train/val/test steps and epoch ends, each routed to one stage-aware method.

    The families compute the same things in every stage, so a module implements
    ``_shared_step(batch, stage)`` (``stage``: ``"train"``, ``"val"`` or ``"test"``) and,
    when it logs epoch metrics itself, ``_log_epoch_metrics(stage)``; this mixin (listed before
    the LightningModule base) provides the six Lightning hooks that call them.
    """

    def _shared_step(self, batch: Any, stage: str) -> Any:
        raise NotImplementedError

    def _log_epoch_metrics(self, stage: str) -> None:
        """Log a stage's epoch metrics; nothing by default."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        """Lightning hook: ``_shared_step(batch, "train")``."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        """Lightning hook: ``_shared_step(batch, "val")``."""
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        """Lightning hook: ``_shared_step(batch, "test")``."""
        return self._shared_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        """Lightning hook: ``_log_epoch_metrics("train")``."""
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        """Lightning hook: ``_log_epoch_metrics("val")``."""
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        """Lightning hook: ``_log_epoch_metrics("test")``."""
        self._log_epoch_metrics("test")


def _mark_loaded(module: torch.nn.Module, incompatible_keys: Any) -> None:
    if isinstance(module, GroupedOptimizationModule):
        module.weights_are_trained = True
