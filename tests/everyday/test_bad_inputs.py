"""Bad inputs, one table row each: every one fails early, with its type, naming the bad value.

CLI rows run ``mslightning.cli.main`` on the main config with tiny data: an option-parsing error
exits with status 2, an error raised by the library with status 1, each printing one
``... error: <message>``. Python rows call the API directly (``training_step`` on a hand-made
batch, constructors, weights files). Two rows are warnings that used to be silent.

    PRINT_BAD_INPUT_TABLE=1 pytest -s tests/everyday/test_bad_inputs.py

prints a Markdown table "case | error type | first line of the message" at the end (and
writes it to a file in pytest's temporary directory).
"""

from __future__ import annotations

import copy
import os
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from everyday_kit import MAIN_CONFIG, TINY, sha256

from mslightning.callbacks import ClassProbabilityWriter, NonFiniteGuard
from mslightning.cli import main
from mslightning.data import SyntheticStreamsDataModule
from mslightning.modules import MultiStreamClassifier
from mslightning.nn import ResNetStreamEncoder
from mslightning.optim import ParamGroup, named_param_groups

MAIN = ["--config", str(MAIN_CONFIG)]
FIT = ["fit", *MAIN, *TINY]
VALIDATE = ["validate", *MAIN, *TINY]
GROUP = "--model.init_args.param_groups"

# ------------------------------------------------------------------ the table for the report

RESULTS: list[tuple[str, str, str]] = []
"""(case id, error type or exit status, first line of the message), in the order the cases ran."""


def _record(case: str, kind: str, message: str) -> None:
    first = next((line.strip() for line in message.splitlines() if line.strip()), "(no message)")
    RESULTS.append((case, kind, first))


def bad_input_table() -> str:
    """The recorded outcomes as a Markdown table."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| case | error type | first line of the message |", "| --- | --- | --- |"]
    rows += [f"| {cell(case)} | {cell(kind)} | {cell(first)} |" for case, kind, first in RESULTS]
    return "\n".join(rows)


@pytest.fixture(autouse=True, scope="module")
def _print_table(tmp_path_factory):
    yield
    if os.environ.get("PRINT_BAD_INPUT_TABLE") and RESULTS:
        table = bad_input_table()
        path = tmp_path_factory.getbasetemp() / "bad_input_table.md"
        path.write_text(table + "\n")
        print(f"\n\n{table}\n\n(table written to {path})")


def _case_id(request: pytest.FixtureRequest) -> str:
    return request.node.callspec.id if hasattr(request.node, "callspec") else request.node.name


# ------------------------------------------------------------------ files the rows refer to


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path as the working directory, holding every small file a CLI row names (by relative path)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mslightning"])  # not pytest's own arguments (LightningCLI warns)
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.bin").write_bytes(random.Random(0).randbytes(512))
    torch.save({"head.weight": torch.zeros(4, 8), "head.bias": torch.zeros(4)}, tmp_path / "state_dict.pt")
    (tmp_path / "first.yaml").write_text(MAIN_CONFIG.read_text())
    (tmp_path / "second.yaml").write_text("model: {init_args: {param_groups: {depth: {lr: 1.0e-5}}}}\n")
    return tmp_path


def _error_message(stderr: str) -> str:
    """From the first ``... error: `` line of stderr to its end."""
    match = re.search(r"^.*?\berror: (.*)", stderr, flags=re.MULTILINE | re.DOTALL)
    return match.group(1) if match else stderr


def run_cli(case: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``main(args)``, expecting it to exit; record and return (status, message)."""
    try:
        main(args)
    except SystemExit as exit_:
        message = _error_message(capsys.readouterr().err)
        _record(case, f"exit {exit_.code}", message)
        return int(exit_.code or 0), message
    except Exception as error:  # not caught by main: a traceback for the user
        _record(case, f"{type(error).__name__} (uncaught, traceback)", str(error) or "(empty message)")
        raise
    _record(case, "no error", "")
    pytest.fail(f"accepted silently: {args[len(FIT) :]}")


# ------------------------------------------------------------------ CLI rows

PARSING, LIBRARY = 2, 1

CLI_CASES = [
    # the model
    pytest.param(
        [*FIT, "--model.init_args.backbone", "resnet19"],
        LIBRARY,
        ["model (mslightning.modules.classifier.MultiStreamClassifier)", "stream 'rgb'", "'resnet19'", "resnet18"],
        id="cli-backbone-resnet19",
    ),
    pytest.param(
        [*FIT, "--model.init_args.num_classes", "abc"],
        PARSING,
        ["model.num_classes", "abc"],
        id="cli-num_classes-abc",
    ),
    pytest.param(
        [*FIT, "--model.init_args.num_classes", "7"],
        LIBRARY,
        ["model.num_classes=7", "num_classes=4"],
        id="cli-num_classes-disagrees-with-data",
    ),
    pytest.param(
        [*FIT, "--model.init_args.streams", '{"rgb": 3, "ir": 1}'],
        LIBRARY,
        ["model.streams=", "'ir': 1", "stream_channels=", "'depth': 1"],
        id="cli-streams-disagree-with-data",
    ),
    pytest.param(
        [*FIT, "--model.init_args.fusion", "mslightning.nn.NoSuchFusion"],
        PARSING,
        ["model.fusion", "mslightning.nn.NoSuchFusion"],
        id="cli-fusion-bogus-class-path",
    ),
    pytest.param(
        [*FIT, "--model.init_args.weights", '{"rgb": "no_such_weights.pth"}'],
        LIBRARY,
        ["stream 'rgb'", "'no_such_weights.pth'", "no such file"],
        id="cli-weights-missing-file",
    ),
    pytest.param(
        [*FIT, "--model.init_args.weights", '{"rgb": "a_dir"}'],
        LIBRARY,
        ["stream 'rgb'", "'a_dir'", "directory"],
        id="cli-weights-directory",
    ),
    pytest.param(
        [*FIT, "--model.init_args.weights", '{"depth": "random.bin"}'],
        LIBRARY,
        ["stream 'depth'", "'random.bin'", "corrupt"],
        id="cli-weights-random-bytes",
    ),
    # parameter groups and the optimizer
    pytest.param(
        [*FIT, f"{GROUP}.rgb.lr=-1e-3"],
        LIBRARY,
        ["Group 'rgb'", "lr must be >= 0", "-0.001"],
        id="cli-group-negative-lr",
    ),
    pytest.param(
        [*FIT, f"{GROUP}.rgb.lr", "-1e-3"],
        PARSING,
        ["lr", "-1e-3"],
        id="cli-group-negative-lr-as-separate-argument",
        marks=pytest.mark.xfail(
            strict=True,
            reason="unclear message: argparse takes '-1e-3' for an option and says only "
            "'argument --model: expected one argument'",
        ),
    ),
    pytest.param(
        [*FIT, f"{GROUP}.rgb.lrr", "1e-3"],
        PARSING,
        ["model.param_groups", "'lrr'", "rgb.lrr"],
        id="cli-group-unknown-field-lrr",
    ),
    pytest.param(
        [*FIT, f"{GROUP}.rgb.options", '{"momentun": 0.9}'],
        LIBRARY,
        ["Group 'rgb'", "'momentun'", "AdamW"],
        id="cli-group-option-typo-momentun",
    ),
    pytest.param(
        [*FIT, f"{GROUP}.rgb.options", '{"momentum": 0.9}'],
        LIBRARY,
        ["Group 'rgb'", "'momentum'", "AdamW"],
        id="cli-group-option-momentum-on-AdamW",
    ),
    pytest.param(
        [
            *FIT,
            "--model.init_args.optimizer",
            "torch.optim.SGD",
            "--model.init_args.optimizer.lr",
            "0.1",
            f"{GROUP}.rgb.options",
            '{"betas": [0.9, 0.99]}',
        ],
        LIBRARY,
        ["Group 'rgb'", "'betas'", "SGD"],
        id="cli-group-option-betas-on-SGD",
    ),
    pytest.param(
        [*FIT, f"{GROUP}.rgb.params", "encoders.ir.*"],
        LIBRARY,
        ["'rgb'", "encoders.ir.*", "matches no trainable parameter"],
        id="cli-group-params-match-nothing",
    ),
    pytest.param(
        [*FIT, f"{GROUP}.depth.scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"],
        LIBRARY,
        ["Group 'depth'", "ReduceLROnPlateau", "monitor"],
        id="cli-group-plateau-without-monitor",
    ),
    pytest.param(
        ["fit", "--config", "first.yaml", "--config", "second.yaml", *TINY],
        LIBRARY,
        ["second.yaml", "first.yaml", "['rgb', 'fusion', 'head']"],
        id="cli-second-config-drops-groups",
    ),
    # the trainer and the config file
    pytest.param(
        [*FIT, "--trainer.max_epochz", "1"],
        PARSING,
        ["unrecognized arguments", "--trainer.max_epochz"],
        id="cli-unknown-trainer-option",
    ),
    pytest.param(  # argparse would take an abbreviation silently: --trainer.max_epochs
        [*FIT, "--trainer.max_epoch", "1"],
        PARSING,
        ["unrecognized arguments", "--trainer.max_epoch"],
        id="cli-abbreviated-trainer-option",
    ),
    pytest.param(
        ["fit", "--config", "no_such_config.yaml"],
        PARSING,
        ["config", "no_such_config.yaml", "does not exist"],
        id="cli-missing-config-file",
    ),
    # the data
    pytest.param(
        [*FIT, "--data.init_args.batch_size", "0"],
        LIBRARY,
        ["data (mslightning.data.synthetic.SyntheticStreamsDataModule)", "batch_size", "got 0"],
        id="cli-batch_size-0",
    ),
    pytest.param(
        [*FIT, "--data.init_args.signal", '{"rgb": 0.3, "ir": 1.0}'],
        LIBRARY,
        ["signal", "'ir'", "['rgb', 'depth']"],
        id="cli-signal-unknown-stream",
    ),
    pytest.param(
        [*FIT, "--data.init_args.shortcut_stream", "ir"],
        LIBRARY,
        ["shortcut_stream", "'ir'", "['rgb', 'depth']"],
        id="cli-shortcut_stream-unknown",
    ),
    pytest.param(
        [*FIT, "--data.init_args.image_size", "4"],
        LIBRARY,
        ["image_size", "got 4"],
        id="cli-image_size-4",
    ),
    pytest.param(
        [*FIT, "--data.init_args.train_size", "4"],
        LIBRARY,
        ["train_size=4", "batch_size=8", "drop_last"],
        id="cli-train_size-below-batch_size",
    ),
    pytest.param(
        [*FIT, "--data.init_args.streams", '{"rgb": 3, "de.pth": 1}', "--data.init_args.signal", "null"],
        LIBRARY,
        ["streams", "'de.pth'", "letters, digits"],
        id="cli-stream-name-with-dot",
    ),
    pytest.param(
        [*FIT, "--data.init_args.streams", '{"rgb": 3, "de/pth": 1}', "--data.init_args.signal", "null"],
        LIBRARY,
        ["streams", "'de/pth'", "letters, digits"],
        id="cli-stream-name-with-slash",
    ),
    # --ckpt_path
    pytest.param(
        [*VALIDATE, "--ckpt_path", "bset"],
        LIBRARY,
        ["'bset'", "no such file", "`best` and `last`"],
        id="cli-ckpt_path-typo-of-best",
    ),
    pytest.param(
        [*VALIDATE, "--ckpt_path", "no_such.ckpt"],
        LIBRARY,
        ["--ckpt_path", "'no_such.ckpt'", "no such file"],
        id="cli-ckpt_path-missing-file",
    ),
    pytest.param(
        [*VALIDATE, "--ckpt_path", "a_dir"],
        LIBRARY,
        ["--ckpt_path", "'a_dir'", "directory"],
        id="cli-ckpt_path-directory",
    ),
    pytest.param(
        [*VALIDATE, "--ckpt_path", "empty.ckpt"],
        LIBRARY,
        ["--ckpt_path", "'empty.ckpt'", "empty"],
        id="cli-ckpt_path-empty-file",
    ),
    pytest.param(
        [*VALIDATE, "--ckpt_path", "random.bin"],
        LIBRARY,
        ["--ckpt_path", "'random.bin'", "not a readable checkpoint"],
        id="cli-ckpt_path-random-bytes",
    ),
    pytest.param(
        [*VALIDATE, "--ckpt_path", "state_dict.pt"],
        LIBRARY,
        ["--ckpt_path", "'state_dict.pt'", "not a Lightning checkpoint", "weights"],
        id="cli-ckpt_path-bare-state_dict",
    ),
    pytest.param(
        [*VALIDATE, "--ckpt_path", "best"],
        LIBRARY,
        ["--ckpt_path best", "no checkpoint found", "logs/dual_stream_synthetic"],
        id="cli-ckpt_path-best-before-any-run",
    ),
    pytest.param(
        [*VALIDATE, "--ckpt_path", "last"],
        LIBRARY,
        ["--ckpt_path last", "no checkpoint found", "logs/dual_stream_synthetic"],
        id="cli-ckpt_path-last-before-any-run",
    ),
]


@pytest.mark.parametrize(("args", "status", "needles"), CLI_CASES)
def test_cli_bad_input(args, status, needles, workdir, capsys, request):
    code, message = run_cli(_case_id(request), args, capsys)
    assert code == status, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "Traceback" not in message


def test_cli_checkpoint_dirpath_with_earlier_checkpoints_is_refused(workdir, capsys):
    old = workdir / "checkpoints" / "best.ckpt"
    old.parent.mkdir()
    old.write_bytes(b"an earlier run's checkpoint")
    before = sha256(old)
    (workdir / "fixed_dirpath.yaml").write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {dirpath: checkpoints, filename: best, enable_version_counter: false}\n"
    )
    case = "cli-checkpoint-dirpath-holds-ckpt-no-version-counter"
    code, message = run_cli(case, ["fit", *MAIN, "--config", "fixed_dirpath.yaml", *TINY], capsys)
    assert code == LIBRARY
    for needle in ("ModelCheckpoint(dirpath=", "checkpoints'", "best.ckpt", "enable_version_counter"):
        assert needle in message, f"{needle!r} not in {message!r}"
    assert sha256(old) == before
    assert sorted(p.name for p in old.parent.iterdir()) == ["best.ckpt"]
    assert not list(workdir.glob("logs/*/version_*/checkpoints/*.ckpt")), "refused, yet it trained"


# ------------------------------------------------------------------ Python API rows

B = 4


@dataclass
class Context:
    """What a Python row may use: a fresh copy of a built model, a working directory, fixtures."""

    model: MultiStreamClassifier
    tmp: Path
    request: pytest.FixtureRequest


def _batch(rgb=(B, 3, 16, 16), depth=(B, 1, 16, 16), target=None, dtype=torch.float32, extra=None):
    inputs = {name: torch.zeros(shape, dtype=dtype) for name, shape in (("rgb", rgb), ("depth", depth)) if shape}
    inputs.update(extra or {})
    return inputs, torch.zeros(B, dtype=torch.long) if target is None else target


def _train(batch) -> Callable[[Context], Any]:
    return lambda ctx: ctx.model.training_step(batch, 0)


def _encoder_weights(make_file: Callable[[Path], Path]) -> Callable[[Context], Any]:
    """Build a 1-channel resnet18 trunk for stream 'thermal' from the file ``make_file`` writes."""
    return lambda ctx: ResNetStreamEncoder("resnet18", 1, make_file(ctx), name="thermal")


def _pickled_module(ctx: Context) -> Path:
    torch.save(ResNetStreamEncoder("resnet18", 1), "pickled_module.pt")
    return Path("pickled_module.pt")  # relative to the working directory, ctx.tmp


def _lightning_checkpoint(ctx: Context) -> Path:
    return ctx.request.getfixturevalue("trained_checkpoint")  # trunks for 'rgb' and 'depth' only


def _resnet50_state_dict(ctx: Context) -> Path:
    torch.save(torchvision.models.resnet50().state_dict(), "resnet50.pth")
    return Path("resnet50.pth")


def _truncated(ctx: Context) -> Path:
    torch.save(torchvision.models.resnet18().state_dict(), "whole.pth")
    Path("truncated.pth").write_bytes(Path("whole.pth").read_bytes()[:5000])
    return Path("truncated.pth")


API_CASES = [
    # the first batch of a stage, checked before any torch op
    pytest.param(
        _train(_batch(target=torch.tensor([0, 1, 2, 4]))),
        ValueError,
        ["num_classes=4", "[0, 4]"],
        id="api-labels-reach-num_classes",
    ),
    pytest.param(
        _train(_batch(target=torch.tensor([0, -1, 2, 3]))),
        ValueError,
        ["labels include -1", "[0, 3]"],
        id="api-negative-labels",
    ),
    pytest.param(
        _train(_batch(target=torch.tensor([0.0, 1.0, 2.0, 3.0]))),
        ValueError,
        ["torch.float32", "(4,)", "int64 class indices"],
        id="api-float-targets",
    ),
    pytest.param(
        _train(_batch(target=torch.tensor([[0], [1], [2], [3]]))),
        ValueError,
        ["(4, 1)", "squeeze(1)"],
        id="api-targets-B-by-1",
    ),
    pytest.param(
        _train(_batch(target=torch.eye(4, dtype=torch.long))),
        ValueError,
        ["(4, 4)", "argmax(1)"],
        id="api-one-hot-targets",
    ),
    pytest.param(
        _train(_batch(dtype=torch.uint8)),
        ValueError,
        ["Stream 'rgb'", "torch.uint8"],
        id="api-uint8-images",
    ),
    pytest.param(
        _train(_batch(dtype=torch.float64)),
        ValueError,
        ["Stream 'rgb'", "torch.float32", "torch.float64"],
        id="api-float64-images-for-a-float32-model",
    ),
    pytest.param(
        _train(_batch(target=torch.zeros(B, dtype=torch.int32))),
        ValueError,
        ["torch.int32", "int64", "target.long()"],
        id="api-int32-targets",
    ),
    pytest.param(
        _train(_batch(depth=None)),
        ValueError,
        ["missing ['depth']", "['rgb', 'depth']"],
        id="api-missing-stream",
    ),
    pytest.param(
        _train(_batch(extra={"ir": torch.zeros(B, 1, 16, 16)})),
        ValueError,
        ["unexpected ['ir']", "['rgb', 'depth']"],
        id="api-extra-stream",
    ),
    pytest.param(
        _train(_batch(depth=(B, 3, 16, 16))),
        ValueError,
        ["Stream 'depth'", "expects 1 channel", "has 3", "(4, 3, 16, 16)"],
        id="api-wrong-channel-count",
    ),
    pytest.param(
        _train(_batch()[0]),
        ValueError,
        ["(inputs, target)", "got a dict"],
        id="api-batch-not-a-tuple",
    ),
    pytest.param(
        lambda ctx: ctx.model.predict_step(_batch(rgb=(B, 1, 16, 16))[0], 0),
        ValueError,
        ["Stream 'rgb'", "expects 3 channel", "has 1"],
        id="api-predict_step-wrong-channels",
    ),
    # constructors
    pytest.param(
        lambda ctx: MultiStreamClassifier(streams={"rgb": 3, "fusion": 1}),
        ValueError,
        ["['fusion']", "shared parts"],
        id="api-stream-named-like-a-shared-part",
    ),
    pytest.param(
        lambda ctx: MultiStreamClassifier(num_classes=1),
        ValueError,
        ["num_classes", "got 1"],
        id="api-num_classes-1",
    ),
    pytest.param(
        lambda ctx: MultiStreamClassifier(label_smoothing=1.5),
        ValueError,
        ["label_smoothing", "1.5"],
        id="api-label_smoothing-1.5",
    ),
    pytest.param(
        lambda ctx: MultiStreamClassifier(dropout=1.0),
        ValueError,
        ["dropout", "1.0"],
        id="api-dropout-1.0",
    ),
    pytest.param(
        lambda ctx: MultiStreamClassifier(aux_weight=-1),
        ValueError,
        ["aux_weight", "-1"],
        id="api-aux_weight-negative",
    ),
    pytest.param(
        lambda ctx: MultiStreamClassifier(streams={}),
        ValueError,
        ["streams", "{}"],
        id="api-streams-empty",
    ),
    pytest.param(
        lambda ctx: MultiStreamClassifier(streams={"a.b": 3}),
        ValueError,
        ["streams", "'a.b'", "letters, digits"],
        id="api-stream-name-with-dot",
    ),
    pytest.param(
        lambda ctx: MultiStreamClassifier(backbone={"rgb": "resnet18"}),
        ValueError,
        ["backbone", "['rgb', 'depth']", "['rgb']"],
        id="api-backbone-mapping-misses-depth",
    ),
    pytest.param(
        lambda ctx: ParamGroup("a/b"),
        ValueError,
        ["'a/b'", "'/'"],
        id="api-ParamGroup-name-with-slash",
    ),
    pytest.param(
        lambda ctx: ParamGroup("x", lr=1, lr_scale=2),
        ValueError,
        ["'x'", "lr", "lr_scale"],
        id="api-ParamGroup-lr-and-lr_scale",
    ),
    pytest.param(
        lambda ctx: named_param_groups({"rgb": ParamGroup("depth")}),
        ValueError,
        ["'rgb'", "'depth'"],
        id="api-named_param_groups-name-differs-from-key",
    ),
    pytest.param(
        lambda ctx: ClassProbabilityWriter(filename="x.txt"),
        ValueError,
        ["ClassProbabilityWriter", "'x.txt'", ".csv"],
        id="api-ClassProbabilityWriter-not-csv",
    ),
    pytest.param(
        lambda ctx: NonFiniteGuard(check_loss=False, check_parameters=False),
        ValueError,
        ["check_loss=False", "check_parameters=False"],
        id="api-NonFiniteGuard-checks-nothing",
    ),
    pytest.param(
        lambda ctx: SyntheticStreamsDataModule(signal={"rgb": float("nan")}),
        ValueError,
        ["signal['rgb']", "nan"],
        id="api-signal-nan",
    ),
    # weights files for a trunk (messages being reworded: type, path and stream only)
    pytest.param(
        _encoder_weights(_pickled_module),
        ValueError,
        ["'thermal'", "pickled_module.pt"],
        id="api-encoder-weights-pickled-module",
    ),
    pytest.param(
        _encoder_weights(_lightning_checkpoint),
        ValueError,
        ["'thermal'", "trained.ckpt"],
        id="api-encoder-weights-lightning-checkpoint",
    ),
    pytest.param(
        _encoder_weights(_resnet50_state_dict),
        ValueError,
        ["'thermal'", "resnet50.pth"],
        id="api-encoder-weights-resnet50-for-resnet18",
    ),
    pytest.param(
        _encoder_weights(_truncated),
        ValueError,
        ["'thermal'", "truncated.pth"],
        id="api-encoder-weights-truncated",
    ),
]


@pytest.fixture(scope="module")
def built_model():
    return MultiStreamClassifier(num_classes=4)


@pytest.mark.parametrize(("call", "error_type", "needles"), API_CASES)
def test_api_bad_input(call, error_type, needles, built_model, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    # a copy: a stage whose first batch passed would not be checked again
    ctx = Context(copy.deepcopy(built_model), tmp_path, request)
    case = _case_id(request)
    try:
        call(ctx)
    except Exception as error:
        _record(case, type(error).__name__, str(error))
        assert type(error) is error_type, f"{type(error).__name__}: {error}"
        for needle in needles:
            assert needle in str(error), f"{needle!r} not in {str(error)!r}"
    else:
        _record(case, "no error", "")
        pytest.fail("accepted silently")


# ------------------------------------------------------------------ no longer silent: warnings


def _tiny_data() -> SyntheticStreamsDataModule:
    return SyntheticStreamsDataModule(image_size=16, train_size=8, val_size=8, test_size=8, batch_size=8)


def _trainer(root: Path) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A Lightning checkpoint of MultiStreamClassifier(aux_weight=0.5) after one training batch."""
    root = tmp_path_factory.mktemp("trained")
    trainer = _trainer(root)
    trainer.fit(MultiStreamClassifier(num_classes=4, aux_weight=0.5), datamodule=_tiny_data())
    path = root / "trained.ckpt"
    trainer.save_checkpoint(path)
    return path


def _record_warning(case: str, records: pytest.WarningsRecorder, pattern: str) -> None:
    hit = next(w for w in records if re.search(pattern, str(w.message)))
    message = str(hit.message)
    first = message.strip().splitlines()[0]
    matched = next((line.strip() for line in message.splitlines() if re.search(pattern, line)), first)
    _record(case, hit.category.__name__ + " (warning)", first if matched == first else f"{first} [...] {matched}")


def test_validate_without_ckpt_path_warns_untrained(workdir, capsys):
    pattern = r"validate runs on freshly initialised, untrained weights of MultiStreamClassifier.*--ckpt_path"
    with pytest.warns(UserWarning, match=pattern) as records:
        main(VALIDATE)
    _record_warning("cli-validate-without-ckpt_path", records, pattern)


def test_checkpoint_into_differently_configured_model_warns(trained_checkpoint, tmp_path):
    pattern = r"aux_weight: checkpoint 0\.5, now 0\.25"
    model = MultiStreamClassifier(num_classes=4, aux_weight=0.25)
    with pytest.warns(UserWarning, match=pattern) as records:
        _trainer(tmp_path).validate(model, datamodule=_tiny_data(), ckpt_path=trained_checkpoint)
    _record_warning("api-checkpoint-into-other-aux_weight", records, pattern)
    message = next(str(w.message) for w in records if re.search(pattern, str(w.message)))
    assert "other settings" in message
