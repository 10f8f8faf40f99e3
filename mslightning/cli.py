"""The ``mslightning`` console script: LightningCLI for every mslightning module.

Usage::

    mslightning fit --config configs/dual_stream/synthetic.yaml
    mslightning validate --config configs/dual_stream/synthetic.yaml --ckpt_path best
    mslightning predict --config configs/dual_stream/synthetic.yaml --ckpt_path best
    mslightning fit --config configs/dual_stream/synthetic.yaml --print_config

What it adds to Lightning's ``LightningCLI``:

* **Every fit writes into its own run directory** (the logger's ``<save_dir>/<name>/version_N``,
  checkpoints in its ``checkpoints/``); ``validate``/``test``/``predict`` of one of its
  checkpoints write into ``version_N/<subcommand>_<K>`` (labelled, not posing as a new training
  run), and ``--ckpt_path best`` / ``--ckpt_path last`` in a new process mean the best / last
  checkpoint of the latest run of this config (the newest checkpoint under its logger's runs),
  printed before it is used. A ``ModelCheckpoint`` with an explicit ``dirpath`` that already
  holds checkpoints, and no version counter, is refused: it would overwrite them.
* **One source of truth for what the data defines**: the data's ``stream_channels``,
  ``num_classes``, ``sessions``, ``behaviour_dim``, ``frame_size`` and ``burn_in`` are linked to
  the model's arguments of the same meaning (``streams``, ``num_classes``, ...) when both have
  them; a model value written in the config that disagrees with the data is an error.
* **Errors in the library's own words**: a bad option prints one short message naming it, not
  jsonargparse's usage text; an error raised while building the model or data names the
  component and its class first. ``validate``/``test``/``predict`` without ``--ckpt_path``
  warn that the weights are untrained.

LightningCLI's ``--optimizer``/``--lr_scheduler`` shortcuts are deliberately not offered: they
would replace the modules' ``configure_optimizers`` and put every parameter into a single group.
Optimizers, named parameter groups and per-group schedules are configured under ``model:``.
"""

from __future__ import annotations

import glob
import inspect
import os
import re
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from mslightning.files import load_torch_file
from mslightning.modules.hparams import changed_settings, signature_defaults

__all__ = ["MSLightningCLI", "checkpoint_agreement", "find_run_checkpoint", "main"]

LINKS = {
    "stream_channels": "streams",
    "num_classes": "num_classes",
    "sessions": "sessions",
    "behaviour_dim": "behaviour_dim",
    "frame_size": "frame_size",
    "burn_in": "burn_in",
}
_CHECKPOINT_FILE = {"what": "checkpoint", "remedy": "Run `mslightning fit` again to write a new checkpoint"}
"""Datamodule attribute -> model argument, linked when the model is built."""

_JSONARGPARSE_NOISE = re.compile(
    r"^\s*(-\s*)?(Does not validate against any of the Union subtypes|Subtypes:|Given value type:|Given value:|"
    r"Expected a <class 'NoneType'>|Errors:)"
)


def condense_parser_error(message: str) -> str:
    """Shorten a jsonargparse error to one line per problem, prefixed by the option's dotted path.

    Args:
        message: jsonargparse's message, e.g. for ``--model.init_args.num_classes abc``.

    Returns:
        E.g. ``model.num_classes: Expected a <class 'int'>. Got value: abc``.
    """
    stack: list[tuple[int, str]] = []
    lines: list[str] = []
    for raw in message.splitlines():
        if not raw.strip() or _JSONARGPARSE_NOISE.match(raw):
            continue
        indent = len(raw) - len(raw.lstrip(" -"))
        text = raw.strip().lstrip("- ").strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', text)
        if key:
            stack.append((indent, key.group(1)))
            text = key.group(2)
        if not text or text.startswith("Problem with given class_path"):
            continue
        path = ".".join(name for _, name in stack)
        line = f"{path}: {text}" if path else text
        if line not in lines:
            lines.append(line)
    if any("expected one argument" in line for line in lines):
        lines.append("(a value that starts with '-' is written --option=-value)")
    return "\n".join(lines) or message


class MSLightningArgumentParser(LightningArgumentParser):
    """LightningCLI's parser: no abbreviated options, and a short error (no usage wall) on bad input.

    Args:
        *args: Passed to :class:`~lightning.pytorch.cli.LightningArgumentParser`.
        **kwargs: Passed on; ``allow_abbrev`` is ``False`` (``--trainer.max_epoch`` silently
            meaning ``--trainer.max_epochs`` hides typos).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print the condensed error and exit with status 2 (jsonargparse's debug mode raises).

        Args:
            message: What is wrong.
            ex: The exception behind it.
        """
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {condense_parser_error(message)}\n(see `{prog} --help` for the options)\n")
        sys.exit(2)


def _comparable(value: Any) -> Any:
    """A linked value in a form that compares equal however it was written (YAML list vs tuple)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


def _component_of(error: BaseException) -> str | None:
    """``"model"``/``"data"``/... for the outermost Lightning object whose ``__init__`` raised."""
    kinds = (
        (pl.LightningModule, "model"),
        (pl.LightningDataModule, "data"),
        (Callback, "trainer.callbacks"),
        (Logger, "trainer.logger"),
    )
    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        for kind, name in kinds:
            if isinstance(owner, kind):
                return f"{name} ({type(owner).__module__}.{type(owner).__qualname__})"
    return None


def _root_cause(error: BaseException) -> BaseException:
    """The first exception in ``error``'s chain raised outside jsonargparse."""
    seen = error
    while seen is not None:
        tb = seen.__traceback__
        frames = list(traceback.walk_tb(tb))
        if frames and "jsonargparse" not in frames[-1][0].f_code.co_filename:
            return seen
        seen = seen.__cause__
    return error


class MSLightningCLI(LightningCLI):
    """LightningCLI for mslightning: run directories, ``best``/``last`` checkpoints, links, clear errors.

    Args:
        *args: Passed to :class:`~lightning.pytorch.cli.LightningCLI`.
        **kwargs: Passed to :class:`~lightning.pytorch.cli.LightningCLI`; ``model_class`` and
            ``datamodule_class`` default to any LightningModule / LightningDataModule in
            subclass mode, and ``auto_configure_optimizers`` is always ``False``.

    Raises:
        ValueError: If ``auto_configure_optimizers=True`` is requested; for a model setting
            that disagrees with the data; for an error while building the model, data or
            callbacks (re-raised with the component named first); for ``--ckpt_path`` naming
            no readable checkpoint.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._checkpoint: Mapping[str, Any] | None = None
        self._written_links: set[str] = set()
        self._links_origin = ""  # where linked model values came from when not from the config
        if kwargs.get("auto_configure_optimizers"):
            raise ValueError(
                "MSLightningCLI never auto-configures optimizers: that would collapse the named "
                "parameter groups into one. Configure `model.optimizer` and `model.param_groups`."
            )
        kwargs["auto_configure_optimizers"] = False
        if not args and "model_class" not in kwargs:
            kwargs.update(model_class=pl.LightningModule, subclass_mode_model=True)
        if len(args) < 2 and "datamodule_class" not in kwargs:
            kwargs.update(datamodule_class=pl.LightningDataModule, subclass_mode_data=True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", MSLightningArgumentParser)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the data's stream channels and class count to the model.

        Args:
            parser: The subcommand's parser.
        """
        if self.subclass_mode_model:
            targets = {source: f"model.init_args.{target}" for source, target in LINKS.items()}
        else:  # a fixed model class: link only the arguments it has
            accepted = inspect.signature(self._model_class.__init__).parameters
            targets = {source: f"model.{target}" for source, target in LINKS.items() if target in accepted}
        for source, target in targets.items():
            parser.link_arguments(f"data.{source}", target, apply_on="instantiate")

    # ------------------------------------------------------------------ parsing and building

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then refuse config files whose ``param_groups`` would be replaced unseen.

        Args:
            parser: The main parser.
            args: The command line.
        """
        super().parse_arguments(parser, args)
        config = self.config.get(str(self.config.get("subcommand"))) or self.config
        paths = [str(path) for path in (config.get("config") or []) if path is not None]
        _check_param_group_overrides(paths)
        command_line = [str(a) for a in (sys.argv[1:] if args is None else args if isinstance(args, list) else [])]
        self._written_links = {
            target
            for target in LINKS.values()
            if any(re.match(rf"--model\.(init_args\.)?{target}(=|$)", arg) for arg in command_line)
            or any(target in _model_section_of(path)[1] for path in paths)
        }

    def instantiate_classes(self) -> None:
        """Build model, data, callbacks and trainer; errors name the component first.

        Raises:
            ValueError: A ``ValueError``, ``TypeError`` or ``FileNotFoundError`` raised while
                building is raised again as the same type with the component named first (other
                errors, bugs, pass through untouched); a model setting that disagrees with the data.
        """
        try:
            super().instantiate_classes()
        except Exception as error:
            root = _root_cause(error)
            if not isinstance(root, ValueError | FileNotFoundError | TypeError):
                raise root from error  # a bug: its own type and traceback, not jsonargparse's wrapper
            component = _component_of(root) or "configuration"
            named = type(root)(f"{component}: {root}")
            named.mslightning_root = root  # main() decides from the root whose message this is
            raise named from root
        self._check_links()

    def _check_links(self) -> None:
        """A model value written in the config must agree with the data it is linked to."""
        if self.datamodule is None:
            return
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        model_config = config.get("model") or {}
        model_args = (model_config.get("init_args") or {}) if self.subclass_mode_model else model_config
        defaults = signature_defaults(type(self.model))
        for source, target in LINKS.items():
            data_value = getattr(self.datamodule, source, None)
            written = model_args.get(target) if hasattr(model_args, "get") else None
            if data_value is None or written is None:
                continue
            if target not in self._written_links and written == defaults.get(target):
                continue
            written, data_value = _comparable(written), _comparable(data_value)
            if written != data_value:
                if self._links_origin:
                    raise ValueError(
                        f"{self._links_origin} was trained with {target}={written!r}, but the data has "
                        f"{source}={data_value!r}. Use data like the checkpoint's, or train a new model."
                    )
                raise ValueError(
                    f"model.{target}={written!r} disagrees with the data's {source}={data_value!r}. The model takes "
                    f"{target} from the data: remove model.{target} from the config (write it once, under data)."
                )

    # ------------------------------------------------------------------ checkpoints

    def _parse_ckpt_path(self) -> None:
        """Resolve ``best``/``last``, check the file, and report settings the checkpoint overrides.

        Lightning's CLI applies the checkpoint's hyper-parameters over the configuration when
        ``--ckpt_path`` is given; every value that changes that way is listed in a warning.

        Raises:
            FileNotFoundError: If ``best``/``last`` finds no run, or the path does not exist.
            ValueError: If the path is not a readable Lightning checkpoint.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path in ("best", "last"):
            resolved = find_run_checkpoint(_run_dirs_from_config(config.get("trainer")), ckpt_path)
            rank_zero_info(f"--ckpt_path {ckpt_path}: using {resolved}")
            config["ckpt_path"] = ckpt_path = str(resolved)
        self._checkpoint = None
        special = ("hpc", "registry")
        if ckpt_path and ckpt_path not in special and not Path(ckpt_path).exists() and not Path(ckpt_path).suffix:
            raise FileNotFoundError(
                f"--ckpt_path '{ckpt_path}': no such file; the latest run's checkpoints are `best` and `last`."
            )
        if ckpt_path and ckpt_path not in ("hpc", "registry"):
            self._checkpoint = check_checkpoint_file(ckpt_path)
        before = _plain_model_args(self.parser, self.config)
        super()._parse_ckpt_path()
        after = _plain_model_args(self.parser, self.config)
        linked = set(LINKS.values())  # filled in from the data when the model is built
        changed = changed_settings(
            {k: v for k, v in before.items() if k not in linked}, {k: v for k, v in after.items() if k not in linked}
        )
        saved = (self._checkpoint or {}).get("hyper_parameters") or {}
        from_checkpoint = {key for key in linked if saved.get(key) is not None}
        if from_checkpoint:  # the model is rebuilt with the checkpoint's values: they must fit the data
            self._written_links |= from_checkpoint
            self._links_origin = f"the checkpoint '{ckpt_path}'"
        if changed:
            rank_zero_warn(
                f"--ckpt_path {ckpt_path}: these model settings differ from the configuration; the checkpoint's "
                "values are used (Lightning rebuilds the model as it was saved):\n  " + "\n  ".join(changed)
            )

    def _warn_untrained(self) -> None:
        from mslightning.modules.base import GroupedOptimizationModule  # such modules warn themselves

        if self.config_init[self.subcommand].get("ckpt_path") is None and not isinstance(
            self.model, GroupedOptimizationModule
        ):
            rank_zero_warn(
                f"{self.subcommand} without --ckpt_path runs on the model's freshly initialised weights; pass "
                "--ckpt_path <path>, or `best`/`last` for the latest run's checkpoints."
            )

    def before_fit(self) -> None:
        """Refuse to overwrite an earlier run's checkpoints."""
        for callback in self.trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
                continue
            existing = sorted(Path(callback.dirpath).glob("*.ckpt"))
            resuming = self._checkpoint is not None and Path(self.config_init.fit.ckpt_path).resolve() in {
                p.resolve() for p in existing
            }
            if existing and not callback._enable_version_counter and not resuming:
                raise ValueError(
                    f"ModelCheckpoint(dirpath='{callback.dirpath}') already holds checkpoints of an earlier run "
                    f"({', '.join(p.name for p in existing[:3])}{' ...' if len(existing) > 3 else ''}) and "
                    "enable_version_counter is off, so this run would overwrite them. Leave dirpath out (each "
                    "run then writes into its own run directory), or choose a new dirpath."
                )

    def _label_evaluation_run(self) -> None:
        """Write an evaluation where it does not pose as a training run.

        With ``--ckpt_path`` inside a run (``<save_dir>/<name>/<version>/checkpoints/``) each
        TensorBoard or CSV logger writes into ``<version>/<subcommand>_<K>`` (TensorBoard shows the
        run ``version_3/validate_0`` beside the training run it evaluates; a second validation is
        ``validate_1``); otherwise into ``<subcommand>_<K>``, never into the next ``version_<N>``.
        A logger given an explicit ``version`` is left alone.
        """
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        checkpoint = Path(ckpt_path).resolve() if ckpt_path else None
        for logger in self.trainer.loggers:
            if not isinstance(logger, TensorBoardLogger | CSVLogger) or logger._version is not None:
                continue
            root = Path(logger.root_dir).resolve()
            in_run = checkpoint is not None and checkpoint.parent.name == "checkpoints" and len(checkpoint.parents) > 2
            base = f"{checkpoint.parents[1].name}/" if in_run and checkpoint.parents[2] == root else ""
            taken = {p.name for p in (root / base).glob(f"{self.subcommand}_*")} if (root / base).is_dir() else set()
            index = next(k for k in range(len(taken) + 1) if f"{self.subcommand}_{k}" not in taken)
            logger._version = f"{base}{self.subcommand}_{index}"  # read when the run directory is first used

    def _note_evaluation(self) -> None:
        """Say in the evaluation's TensorBoard run what it evaluated (its values are at step 0 of that run)."""
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        what = f"checkpoint {ckpt_path}" if ckpt_path else "untrained weights (no --ckpt_path)"
        if self._checkpoint is not None:
            what += f", saved at epoch {self._checkpoint.get('epoch')}, step {self._checkpoint.get('global_step')}"
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and self.trainer.is_global_zero:
                logger.experiment.add_text("evaluation", f"`mslightning {self.subcommand}` of {what}", 0)
                logger.experiment.flush()

    def before_validate(self) -> None:
        """Warn when the weights are untrained (no ``--ckpt_path``); label the evaluation run."""
        self._warn_untrained()
        self._label_evaluation_run()

    def before_test(self) -> None:
        """Warn when the weights are untrained (no ``--ckpt_path``); label the evaluation run."""
        self._warn_untrained()
        self._label_evaluation_run()

    def before_predict(self) -> None:
        """Warn when the weights are untrained; label the run; with a prediction writer, keep no copy in memory."""
        self._warn_untrained()
        self._label_evaluation_run()
        config = self.config_init[self.subcommand]
        if not any(isinstance(callback, BasePredictionWriter) for callback in self.trainer.callbacks):
            rank_zero_warn(
                "predict has no prediction writer, so its predictions are computed and then dropped; add one to "
                "trainer.callbacks, e.g. `class_path: mslightning.callbacks.ClassProbabilityWriter`."
            )
        elif config.get("return_predictions") is None:
            config["return_predictions"] = False

    def _report_logs(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                rank_zero_info(
                    f"\nTensorBoard logs: {logger.log_dir}\n  open them with:  tensorboard --logdir {logger.root_dir}\n"
                )
        checkpoint = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        if checkpoint:
            rank_zero_info(f"Best checkpoint: {checkpoint}\n  reuse it with:  --ckpt_path best\n")

    def after_fit(self) -> None:
        """Tell the user where the TensorBoard logs and the best checkpoint are."""
        self._report_logs()

    def after_test(self) -> None:
        """Label the evaluation run."""
        self._note_evaluation()

    def after_predict(self) -> None:
        """Label the evaluation run."""
        self._note_evaluation()

    def after_validate(self) -> None:
        """Label the evaluation run; compare the metrics with what the checkpoint recorded when it was saved."""
        self._note_evaluation()
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if self._checkpoint is None or not ckpt_path:
            return
        for line in checkpoint_agreement(self._checkpoint, ckpt_path, self.trainer.callback_metrics):
            rank_zero_info(line)


def _model_section_of(path: str) -> tuple[str | None, Mapping[str, Any]]:
    """The model class_path and arguments a config file writes (``None``/``{}`` where it writes none)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None, {}
    model = (loaded or {}).get("model") if isinstance(loaded, Mapping) else None
    if not isinstance(model, Mapping):
        return None, {}
    init_args = model.get("init_args") if isinstance(model.get("init_args"), Mapping) else model
    return model.get("class_path"), init_args


def _param_groups_of(path: str) -> tuple[str | None, dict[str, Any] | None]:
    """The model class_path and param_groups a config file sets (``None`` where it sets none)."""
    class_path, init_args = _model_section_of(path)
    groups = init_args.get("param_groups")
    if isinstance(groups, list):
        groups = {str(g.get("name", f"#{i}")): g for i, g in enumerate(groups) if isinstance(g, Mapping)}
    return class_path, dict(groups) if isinstance(groups, Mapping) else None


def _check_param_group_overrides(paths: list[str]) -> None:
    """A later config's ``param_groups`` replaces an earlier one's: refuse when that drops settings."""
    earlier: tuple[str, dict[str, Any]] | None = None
    model_class = None
    for path in paths:
        class_path, groups = _param_groups_of(path)
        if class_path is not None and class_path != model_class:
            earlier, model_class = None, class_path  # another model class: its arguments start afresh
        if groups is None:
            continue
        if earlier is not None:
            first_path, first = earlier
            lost = [name for name in first if name not in groups]
            lost += [
                f"{name}.{key}"
                for name, settings in first.items()
                if name in groups and isinstance(settings, Mapping)
                for key in settings
                if not isinstance(groups[name], Mapping) or key not in groups[name]
            ]
            if lost:
                raise ValueError(
                    f"{path} sets model param_groups, which replaces those of {first_path} as a whole (YAML values "
                    f"are not merged), dropping {lost}. Repeat every group and setting in {path}, or change "
                    "single settings on the command line, e.g. --model.init_args.param_groups.depth.lr 1e-5."
                )
        earlier = (path, groups)


def _plain_model_args(parser: LightningArgumentParser, config: Any) -> dict[str, Any]:
    subcommand = config.get("subcommand")
    dumped = yaml.safe_load(parser.dump(config, skip_link_targets=False, skip_validation=True))
    model = (dumped.get(subcommand) if subcommand else dumped or {}).get("model") or {}
    return {**(model.get("init_args") or {}), **(model.get("dict_kwargs") or {})} if isinstance(model, dict) else {}


def _run_dirs_from_config(trainer: Any) -> list[str]:
    """Where the runs of a configuration keep checkpoints (glob patterns), read from its ``trainer`` section.

    An explicit ``ModelCheckpoint.dirpath``; else the first logger's runs
    (``<save_dir>/<name>/*/checkpoints``, Lightning's defaults where the logger sets none):
    the layout of ``TensorBoardLogger`` and ``CSVLogger``; loggers that name runs otherwise
    (WandB, MLflow) need an explicit path.
    """
    trainer = trainer or {}
    explicit = [
        str(callback["init_args"]["dirpath"])
        for callback in trainer.get("callbacks") or []
        if hasattr(callback, "get")
        and "ModelCheckpoint" in str(callback.get("class_path"))
        and (callback.get("init_args") or {}).get("dirpath")
    ]
    root = Path(trainer.get("default_root_dir") or ".")
    logger = trainer.get("logger")
    first = logger[0] if isinstance(logger, list) and logger else logger  # Lightning checkpoints by the first
    if first is False or first == []:
        return [*explicit, str(root / "checkpoints")]
    args = (first.get("init_args") or {}) if hasattr(first, "get") else {}
    save_dir = Path(args.get("save_dir") or root)
    name = args.get("name", "lightning_logs")
    return [*explicit, str((save_dir / name if name else save_dir) / "*" / "checkpoints")]


def find_run_checkpoint(run_dirs: list[str], which: str) -> Path:
    """The best or last checkpoint of the latest run of a configuration.

    The latest run is the run directory (``<save_dir>/<name>/version_N/checkpoints``, or a
    ``ModelCheckpoint``'s explicit ``dirpath``) holding the most recently written checkpoint.
    ``last`` is that checkpoint; ``best`` is the ``best_model_path`` recorded in it by a
    ``ModelCheckpoint`` with a ``monitor``.

    Args:
        run_dirs: Checkpoint directories of the configuration's runs, as glob patterns such
            as ``"logs/dual_stream_synthetic/*/checkpoints"`` (from its logger and checkpoint
            callbacks).
        which: ``"best"`` or ``"last"``.

    Returns:
        The checkpoint's path.

    Raises:
        FileNotFoundError: If no run of this configuration has a checkpoint, the latest run
            has no monitored checkpoint (``best``), or the recorded best file is gone.
    """
    checkpoints = [Path(path) for pattern in run_dirs for path in glob.glob(os.path.join(pattern, "*.ckpt"))]
    if not checkpoints:
        raise FileNotFoundError(
            f"--ckpt_path {which}: no checkpoint found for this configuration (looked in {run_dirs}). Run `fit` "
            "first, or give the checkpoint's path."
        )
    newest = max(checkpoints, key=lambda p: p.stat().st_mtime_ns)
    if which == "last":
        return newest
    state = load_torch_file(newest, f"--ckpt_path best: the latest checkpoint '{newest}'", **_CHECKPOINT_FILE)
    for key, callback_state in ((state.get("callbacks") or {}) if isinstance(state, Mapping) else {}).items():
        monitored = key.startswith(ModelCheckpoint.__name__) and callback_state.get("monitor")
        best = callback_state.get("best_model_path") if monitored else None
        if best:
            for candidate in (Path(best), newest.parent / Path(best).name):
                if candidate.exists():
                    return candidate
            raise FileNotFoundError(f"--ckpt_path best: the run's best checkpoint '{best}' no longer exists.")
    raise FileNotFoundError(
        f"--ckpt_path best: the latest run ('{newest.parent}') has no ModelCheckpoint with a `monitor`, so it has "
        "no best checkpoint; use --ckpt_path last, or give the checkpoint's path."
    )


def check_checkpoint_file(path: str | Path) -> Mapping[str, Any]:
    """Fail early, naming the path, when ``--ckpt_path`` is not a readable Lightning checkpoint.

    Args:
        path: The checkpoint path.

    Returns:
        The checkpoint, loaded safely (``weights_only``, memory-mapped).

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If it is a directory, empty, truncated, corrupt, or not a Lightning checkpoint.
    """
    state = load_torch_file(path, f"--ckpt_path '{path}'", **_CHECKPOINT_FILE)
    if not isinstance(state, Mapping) or "state_dict" not in state:
        raise ValueError(
            f"--ckpt_path '{path}' is not a Lightning checkpoint (no 'state_dict' entry); a bare model state_dict "
            "belongs in the model's weights option, not in --ckpt_path."
        )
    return state


def checkpoint_agreement(
    checkpoint: str | Path | Mapping[str, Any], ckpt_path: str | Path, metrics: Mapping[str, Any]
) -> list[str]:
    """Lines comparing the score a checkpoint was saved with to freshly computed metrics.

    The score is the one a monitoring ``ModelCheckpoint`` recorded for this very file (its
    ``best_k_models`` entry), so a checkpoint saved for another reason (periodic, last) is not
    compared.

    Args:
        checkpoint: The loaded checkpoint, or its path.
        ckpt_path: The checkpoint's path, as it was given.
        metrics: The metrics just computed (``trainer.callback_metrics``).

    Returns:
        One line per monitored metric found in both, e.g.
        ``"val/fused/acc: checkpoint recorded 0.8320, validation now 0.8320"``.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_torch_file(checkpoint, f"--ckpt_path '{checkpoint}'", **_CHECKPOINT_FILE)
    this_file = Path(ckpt_path).resolve()
    lines = []
    for key, state in (checkpoint.get("callbacks") or {}).items():
        monitor = state.get("monitor") if key.startswith(ModelCheckpoint.__name__) else None
        if monitor not in metrics:
            continue
        for path, score in (state.get("best_k_models") or {}).items():
            if Path(path).resolve() == this_file:
                recorded, now = float(score), float(metrics[monitor])
                lines.append(f"{monitor}: checkpoint recorded {recorded:.4f}, validation now {now:.4f}")
                break
    return lines


def _library_error(error: BaseException) -> bool:
    """Whether ``error`` was raised by mslightning itself (its message is meant for the user)."""
    frames = list(traceback.walk_tb(error.__traceback__))
    package = str(Path(__file__).parent)
    return bool(frames) and frames[-1][0].f_code.co_filename.startswith(package)


def main(args: list[str] | None = None) -> None:
    """Run the ``mslightning`` command line.

    Errors raised by mslightning (bad configuration, files, data, non-finite training) and
    Lightning's own configuration errors (``MisconfigurationException``) are printed as one
    message, without a traceback (set ``MSLIGHTNING_TRACEBACK=1`` to see it), and the command
    exits with status 1. Other errors keep their traceback.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    try:
        MSLightningCLI(args=args)
    except (ValueError, FileNotFoundError, TypeError, RuntimeError, MisconfigurationException) as error:
        ours = _library_error(getattr(error, "mslightning_root", error))
        if os.environ.get("MSLIGHTNING_TRACEBACK") or not (ours or isinstance(error, MisconfigurationException)):
            raise
        # on a line of its own: a progress bar may still be on the current one
        sys.stderr.write(f"\nmslightning: error: {error}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
