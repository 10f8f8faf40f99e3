"""fit -> validate/test/predict -> reload -> re-run, through the real CLI and the Python API."""

import csv
import os
import warnings
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from everyday_kit import MAIN_CONFIG, TINY, sha256

from mslightning.cli import MSLightningCLI, checkpoint_agreement, find_run_checkpoint, main
from mslightning.data import SyntheticStreamsDataModule
from mslightning.modules import MultiStreamClassifier
from mslightning.nn import GatedFusion
from mslightning.optim import ParamGroup


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny fit of the main job, in a working directory of its own."""
    workdir = tmp_path_factory.mktemp("everyday")
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        MSLightningCLI(args=["fit", "--config", str(MAIN_CONFIG), *TINY])
        yield workdir
    finally:
        os.chdir(previous)


@pytest.fixture
def in_run_dir(run_dir, monkeypatch):
    monkeypatch.chdir(run_dir)
    return run_dir


def test_every_fit_gets_its_own_run_directory(in_run_dir):
    first = in_run_dir / "logs/dual_stream_synthetic/version_0/checkpoints"
    before = {p.name: sha256(p) for p in first.glob("*.ckpt")}
    assert set(before) == {"best.ckpt", "last.ckpt"}
    second = MSLightningCLI(args=["fit", "--config", str(MAIN_CONFIG), *TINY, "--trainer.limit_train_batches", "1"])
    assert Path(second.trainer.checkpoint_callback.best_model_path).parent.parent.name == "version_1"
    assert {p.name: sha256(p) for p in first.glob("*.ckpt")} == before
    assert (in_run_dir / "logs/dual_stream_synthetic/version_0/config.yaml").exists()


def test_predict_writes_the_run_directory_file(in_run_dir, caplog):
    cli = MSLightningCLI(args=["predict", "--config", str(MAIN_CONFIG), *TINY, "--ckpt_path", "last"])
    path = Path(cli.trainer.log_dir) / "predictions.csv"
    assert cli.config_init.predict.return_predictions is False  # the writer has them; no copy in memory
    assert f"Predictions (16 rows): {path}" in caplog.text
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["index", "target", "predicted", "prob_0", "prob_1", "prob_2", "prob_3"]
    assert [int(r["index"]) for r in rows] == list(range(16))
    test_targets = cli.datamodule.test_set.targets.tolist()
    assert [int(r["target"]) for r in rows] == test_targets
    probabilities = torch.tensor([[float(r[f"prob_{k}"]) for k in range(4)] for r in rows])
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(16), atol=1e-5, rtol=0)
    assert [int(r["predicted"]) for r in rows] == probabilities.argmax(dim=1).tolist()
    # the same probabilities as the module computes in Python from the same checkpoint
    model = MultiStreamClassifier.load_from_checkpoint(cli.config_init.predict.ckpt_path).eval()
    inputs, _ = next(iter(cli.datamodule.predict_dataloader()))
    with torch.no_grad():
        expected = model.predict_step(inputs, 0)
    torch.testing.assert_close(probabilities[:8], expected, atol=1e-5, rtol=0)


def test_cli_checkpoint_reloads_without_arguments(in_run_dir, recwarn):
    best = in_run_dir / "logs/dual_stream_synthetic/version_0/checkpoints/best.ckpt"
    checkpoint = torch.load(best, weights_only=True)  # plain data only
    model = MultiStreamClassifier.load_from_checkpoint(best)
    assert not [w for w in recwarn if "other settings" in str(w.message)]  # same model, different spelling
    assert type(model.fusion).__name__ == "WeightedFusion" and model.streams == {"rgb": 3, "depth": 1}
    assert [g.name for g in model.resolved_param_groups()] == ["rgb", "depth", "fusion", "head"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, checkpoint["state_dict"][name], rtol=0, atol=0)


def test_best_without_a_run_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(MAIN_CONFIG), *TINY, "--ckpt_path", "best"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "--ckpt_path best: no checkpoint found for this configuration" in err and "Run `fit` first" in err
    assert "ModelCheckpoint is not configured" not in err


def test_python_checkpoint_round_trips(tmp_path):
    model = MultiStreamClassifier(
        streams={"rgb": 3, "depth": 1},
        num_classes=4,
        fusion=partial(GatedFusion, dim=16),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        param_groups=[
            ParamGroup("rgb", lr=0.1, scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=2)),
            ParamGroup("depth"),
            ParamGroup("fusion"),
            ParamGroup("head", lr_scale=10),
        ],
    )
    data = SyntheticStreamsDataModule(image_size=16, train_size=16, val_size=8, test_size=8, batch_size=8)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    path = tmp_path / "python.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["fusion"] == {
        "class_path": "mslightning.nn.fusion.GatedFusion",
        "init_args": {"dim": 16},
    }
    loaded = MultiStreamClassifier.load_from_checkpoint(path)
    assert type(loaded.fusion).__name__ == "GatedFusion" and loaded.fusion.out_features == 16
    assert [(g.name, g.lr, g.lr_scale) for g in loaded.param_group_specs] == [
        ("rgb", 0.1, None),
        ("depth", None, None),
        ("fusion", None, None),
        ("head", None, 10),
    ]
    optimizer = loaded.configure_optimizers()[0][0]
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, loaded.state_dict()[name], rtol=0, atol=0)
    # and the reloaded model resumes fitting from the same checkpoint
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(loaded, data, ckpt_path=path)
    assert trainer.current_epoch == 2


def test_second_config_cannot_silently_drop_groups(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    override = tmp_path / "override.yaml"
    override.write_text("model:\n  init_args:\n    param_groups:\n      depth: {lr: 1.0e-5}\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(MAIN_CONFIG), "--config", str(override), *TINY])
    err = capsys.readouterr().err
    assert f"{override} sets model param_groups, which replaces those of {MAIN_CONFIG}" in err
    assert "dropping ['rgb', 'fusion', 'head']" in err and "--model.init_args.param_groups.depth.lr 1e-5" in err
    # one group's value, by name, from the command line
    cli = MSLightningCLI(
        args=["--config", str(MAIN_CONFIG), *TINY, "--model.init_args.param_groups.depth.lr", "1e-5"], run=False
    )
    optimizer = cli.model.configure_optimizers()[0][0]
    lrs = {pg["name"]: pg["lr"] for pg in optimizer.param_groups}
    assert lrs["depth"] == 1e-5 and lrs["rgb"] == 2e-3 and lrs["fusion"] == 3e-3


def _python_twin_of_the_main_job(aux_weight):
    """The main config's model, built in Python (compact hparams where the CLI wrote every default)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR

    from mslightning.nn import WeightedFusion

    return MultiStreamClassifier(
        streams={"rgb": 3, "depth": 1},
        num_classes=4,
        fusion=partial(WeightedFusion, dim=128),
        aux_weight=aux_weight,
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-2),
        no_weight_decay_on_norm_and_bias=True,
        param_groups={
            "rgb": ParamGroup(lr=2e-3),
            "depth": ParamGroup(),
            "fusion": ParamGroup(lr=3e-3),
            "head": ParamGroup(lr=3e-3, interval="step", warmup=10, scheduler=partial(CosineAnnealingLR, T_max=60)),
        },
    )


@pytest.mark.parametrize(("aux_weight", "reported"), [(0.5, []), (0.25, ["aux_weight: checkpoint 0.5, now 0.25"])])
def test_loading_a_cli_checkpoint_reports_only_real_differences(in_run_dir, aux_weight, reported):
    best = in_run_dir / "logs/dual_stream_synthetic/version_0/checkpoints/best.ckpt"
    data = SyntheticStreamsDataModule(image_size=16, train_size=16, val_size=8, batch_size=8)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, limit_val_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.validate(_python_twin_of_the_main_job(aux_weight), data, ckpt_path=best, verbose=False)
    messages = [str(w.message) for w in caught if "other settings" in str(w.message)]
    assert [line.strip() for m in messages for line in m.splitlines()[1:]] == reported


def test_streams_and_classes_written_once_also_with_fixed_classes(capsys):
    cli = MSLightningCLI(
        MultiStreamClassifier,
        SyntheticStreamsDataModule,
        run=False,
        args=["--data.num_classes", "5", "--data.streams", '{"a": 2, "b": 1}', "--data.image_size", "16"],
    )
    assert cli.model.num_classes == 5 and cli.model.streams == {"a": 2, "b": 1}
    with pytest.raises(SystemExit):  # with fixed classes jsonargparse itself refuses a linked value
        MSLightningCLI(MultiStreamClassifier, SyntheticStreamsDataModule, run=False, args=["--model.num_classes", "3"])
    assert 'Linked "model.num_classes" must be given via "data.num_classes"' in capsys.readouterr().err


def test_last_is_the_latest_epoch_and_best_the_monitored_one(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    fit = MSLightningCLI(args=["fit", "--config", str(MAIN_CONFIG), *TINY, "--trainer.max_epochs", "3"])
    checkpoints = tmp_path / "logs/dual_stream_synthetic/version_0/checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 2
    runs = ["logs/dual_stream_synthetic/*/checkpoints"]
    assert find_run_checkpoint(runs, "last").resolve() == checkpoints / "last.ckpt"
    best = find_run_checkpoint(runs, "best").resolve()
    assert best == Path(fit.trainer.checkpoint_callback.best_model_path).resolve() == checkpoints / "best.ckpt"
    # `last` is not a monitored checkpoint: validating it reports no recorded score
    validate = MSLightningCLI(args=["validate", "--config", str(MAIN_CONFIG), *TINY, "--ckpt_path", "last"])
    assert (
        checkpoint_agreement(
            checkpoints / "last.ckpt",
            "logs/dual_stream_synthetic/version_0/checkpoints/last.ckpt",
            validate.trainer.callback_metrics,
        )
        == []
    )
    assert "checkpoint recorded" not in caplog.text


def test_a_bug_in_user_code_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'width'"):
        main(["fit", "--config", str(MAIN_CONFIG), *TINY, "--model", "everyday_kit.BuggyModel"])


def test_a_parameter_free_fusion_skips_its_group_with_a_note(caplog):
    cli = MSLightningCLI(
        args=["--config", str(MAIN_CONFIG), *TINY, "--model.init_args.fusion", "mslightning.nn.ConcatFusion"], run=False
    )
    optimizer = cli.model.configure_optimizers()[0][0]
    assert [pg["name"] for pg in optimizer.param_groups if "/" not in pg["name"]] == ["rgb", "depth", "head"]
    assert "parameter group 'fusion' is skipped: its part (['fusion.*']) has no trainable parameter" in caplog.text


def test_a_group_left_from_a_renamed_stream_is_named(recwarn):
    model = MultiStreamClassifier(
        streams={"rgb": 3, "thermal": 1},
        param_groups={"rgb": ParamGroup(lr=1e-3), "depth": ParamGroup(), "fusion": ParamGroup(), "head": ParamGroup()},
    )
    assert [g.name for g in model.resolved_param_groups()] == ["rgb", "depth", "head"]
    (warning,) = [str(w.message) for w in recwarn if "names no part" in str(w.message)]
    assert "parameter group 'depth' has no `params`" in warning and "'encoders.thermal.conv1.weight'" in warning


def test_a_checkpoint_whose_streams_do_not_fit_the_data(in_run_dir, capsys):
    best = "logs/dual_stream_synthetic/version_0/checkpoints/best.ckpt"
    with pytest.raises(SystemExit):
        main(
            ["validate", "--config", str(MAIN_CONFIG), *TINY, "--ckpt_path", best, "--data.init_args.num_classes", "5"]
        )
    err = capsys.readouterr().err
    assert f"the checkpoint '{best}' was trained with num_classes=4, but the data has num_classes=5" in err


def test_predict_without_a_writer_says_so(in_run_dir):
    args = [
        "predict",
        "--model",
        "mslightning.modules.MultiStreamClassifier",
        "--data",
        "mslightning.data.SyntheticStreamsDataModule",
    ]
    args += ["--data.init_args.image_size", "16", "--data.init_args.test_size", "8", "--trainer.logger", "false"]
    with pytest.warns(UserWarning, match="predict has no prediction writer"):
        last = "logs/dual_stream_synthetic/version_0/checkpoints/last.ckpt"
        MSLightningCLI(args=[*args, "--ckpt_path", last, "--trainer.enable_progress_bar", "false"])


def test_evaluations_are_written_as_evaluations_not_as_new_training_runs(in_run_dir):
    runs = in_run_dir / "logs/dual_stream_synthetic"
    before = sorted(p.name for p in runs.iterdir() if p.name.startswith("version_"))
    checkpoint = runs / before[0] / "checkpoints/last.ckpt"
    MSLightningCLI(args=["test", "--config", str(MAIN_CONFIG), *TINY, "--ckpt_path", str(checkpoint)])
    evaluation = runs / before[0] / "test_0"  # beside the training run whose checkpoint it tested
    assert any(evaluation.glob("events.out.tfevents.*"))
    MSLightningCLI(args=["test", "--config", str(MAIN_CONFIG), *TINY, "--ckpt_path", str(checkpoint)])
    assert (runs / before[0] / "test_1").is_dir()  # a second evaluation does not write into the first
    MSLightningCLI(args=["validate", "--config", str(MAIN_CONFIG), *TINY])  # untrained weights: no run to join
    assert (runs / "validate_0").is_dir()
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith("version_")) == before
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(evaluation))
    acc.Reload()
    (label,) = acc.Tensors("evaluation/text_summary")
    assert f"`mslightning test` of checkpoint {checkpoint}" in label.tensor_proto.string_val[0].decode()
