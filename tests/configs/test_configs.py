"""Every YAML in configs/ runs through the real `mslightning` CLI and round-trips --print_config."""

from pathlib import Path

import pytest
import torch

from mslightning.cli import MSLightningCLI, checkpoint_agreement, main

CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml"))
# Keep every config's model and trainer; shrink only the data so each run takes seconds.
SMALL_DATA = [
    "--data.init_args.image_size",
    "16",
    "--data.init_args.train_size",
    "16",
    "--data.init_args.val_size",
    "8",
    "--data.init_args.test_size",
    "8",
    "--data.init_args.batch_size",
    "8",
]


def test_configs_exist():
    assert {p.relative_to(CONFIGS[0].parents[1]).as_posix() for p in CONFIGS} >= {
        "dual_stream/synthetic.yaml",
        "dual_stream/nyu_recipe.yaml",
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_print_config_round_trips(config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "printed.yaml"), "--print_config"])
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_config_fits(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs write logs/ relative to the working directory
    cli = MSLightningCLI(args=["fit", "--config", str(config), "--trainer.fast_dev_run", "1", *SMALL_DATA])
    assert cli.trainer.state.finished
    names = [pg["name"] for pg in cli.trainer.optimizers[0].param_groups]
    assert {"rgb", "depth", "head"} <= {n.split("/")[0] for n in names}


def test_main_job_validate_reproduces_checkpoint_metrics(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    config = next(p for p in CONFIGS if p.name == "synthetic.yaml")
    small = [
        *SMALL_DATA,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
    ]
    fit = MSLightningCLI(args=["fit", "--config", str(config), *small])
    best = Path(fit.trainer.checkpoint_callback.best_model_path).resolve()
    assert best == tmp_path / "logs/dual_stream_synthetic/version_0/checkpoints/best.ckpt" and best.exists()
    recorded = float(fit.trainer.checkpoint_callback.best_model_score)
    assert "tensorboard --logdir logs" in caplog.text
    # `best` in a new CLI process: the best checkpoint of the latest run, printed, then validated
    validate = MSLightningCLI(args=["validate", "--config", str(config), "--ckpt_path", "best", *small])
    assert "--ckpt_path best: using logs/dual_stream_synthetic/version_0/checkpoints/best.ckpt" in caplog.text
    assert float(validate.trainer.callback_metrics["val/fused/acc"]) == pytest.approx(recorded)
    (line,) = checkpoint_agreement(best, best, validate.trainer.callback_metrics)
    assert line.startswith("val/fused/acc: checkpoint recorded") and line in caplog.text
    assert torch.load(best, weights_only=True)["state_dict"]
