"""Every YAML in configs/ runs through the real `mslightning` CLI and round-trips --print_config."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter

from mslightning.cli import MSLightningCLI, checkpoint_agreement, main
from mslightning.data import make_synthetic_photo_triage, make_synthetic_recordings, write_nyu_mat
from mslightning.modules import MultiStreamClassifier
from mslightning.nn import MLPEncoder

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


TINY_RECORDINGS = {"size": 16, "neurons": [6, 4], "frames": 3000}
TINY_TRIAGE = {"series_per_source": 1, "photos_per_series": 3, "crop_size": 24}
SMALL_TRIAGE = [
    "--data.init_args.image_size",
    "16",
    "--data.init_args.batch_size",
    "4",
    "--data.init_args.num_workers",
    "0",
]


def _small_args(config: Path, tmp_path: Path) -> list[str]:
    """Arguments that shrink a config's data (and skip pretrained files) by its datamodule class."""
    data = yaml.safe_load(config.read_text())["data"]["class_path"].rsplit(".", 1)[-1]
    if data == "SyntheticStreamsDataModule":
        return SMALL_DATA
    if data == "SyntheticPhotoTriageDataModule":
        tiny = [f"--data.init_args.{key}={value}" for key, value in TINY_TRIAGE.items()]
        return [*tiny, *SMALL_TRIAGE, "--data.init_args.root", str(tmp_path / "synthetic_triage")]
    if data == "PhotoTriageDataModule":  # a directory in the official layout
        root = make_synthetic_photo_triage(tmp_path / "photo_triage", **TINY_TRIAGE)
        # no pretrained file here (YAML null: jsonargparse reads a dotted `... weights_path null` as 'None')
        no_file = [
            "--config",
            str(_write(tmp_path / "no_weights.yaml", "model: {init_args: {trunk: {init_args: {weights_path: null}}}}")),
        ]
        return ["--data.init_args.root", str(root), *SMALL_TRIAGE, "--data.init_args.image_size", "32", *no_file]
    if data in ("SyntheticRecordingsDataModule", "RecordingsDataModule"):
        windows = ["--data.init_args.window", "12", "--data.init_args.burn_in", "4", "--data.init_args.batch_size", "2"]
        small = [*windows, "--data.init_args.num_workers", "0"]
        if data == "SyntheticRecordingsDataModule":
            tiny = [f"--data.init_args.{key}={json.dumps(value)}" for key, value in TINY_RECORDINGS.items()]
            return [*tiny, "--data.init_args.path", str(tmp_path / "recordings.h5"), *small]
        path = make_synthetic_recordings(tmp_path / "recordings.h5", **TINY_RECORDINGS)  # the documented layout
        return ["--data.init_args.path", str(path), *small]
    if data == "NYUDepthV2DataModule":  # a mini file in the real MATLAB v7.3 layout
        rng = np.random.default_rng(0)
        scenes = ["kitchen", "bedroom", "office", "study"] * 4
        path = write_nyu_mat(
            tmp_path / "nyu.mat",
            rng.integers(0, 256, (16, 12, 16, 3), dtype=np.uint8),
            rng.uniform(0.5, 5, (16, 12, 16)),
            scenes,
            [f"{scene}_{i:04d}" for i, scene in enumerate(scenes)],
        )
        small = ["--data.init_args.image_size", "[12, 16]", "--data.init_args.batch_size", "4"]
        return ["--data.init_args.path", str(path), *small, "--data.init_args.num_workers", "0"]
    if data == "FeatureStreamsDataModule":  # a mini feature file in the documented layout
        return [
            "--data.init_args.path",
            str(write_features(tmp_path / "features.npz")),
            "--data.init_args.batch_size",
            "8",
        ]
    raise AssertionError(f"{config}: no small-data arguments for {data}")


def write_features(path: Path, n: int = 48) -> Path:
    """The layout of configs/dual_stream/features.yaml: two vector streams and labels, no split array."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    np.savez(path, audio=rng.normal(size=(n, 6)) + labels[:, None], text=rng.normal(size=(n, 4)), labels=labels)
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CONFIG_GROUPS = {"dual_stream/features.yaml": {"audio", "text", "head"}}
FAMILY_GROUPS = {
    "MultiStreamClassifier": {"rgb", "depth", "head"},
    "SiameseRanker": {"backbone", "head"},
    "ModulatedResponseModel": {"core", "modulator", "readout"},
}


def test_configs_exist():
    assert {p.relative_to(CONFIGS[0].parents[1]).as_posix() for p in CONFIGS} >= {
        "dual_stream/synthetic.yaml",
        "dual_stream/nyu_recipe.yaml",
        "dual_stream/nyu_rgbd.yaml",
        "dual_stream/features.yaml",
        "siamese/synthetic.yaml",
        "siamese/photo_triage_resnet50.yaml",
        "siamese/photo_triage_vgg16.yaml",
        "convgru/synthetic.yaml",
        "convgru/visioncore_recipe.yaml",
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
    small = _small_args(config, tmp_path)
    cli = MSLightningCLI(args=["fit", "--config", str(config), "--trainer.fast_dev_run", "1", *small])
    assert cli.trainer.state.finished
    names = [pg["name"] for pg in cli.trainer.optimizers[0].param_groups]
    expected = CONFIG_GROUPS.get(
        config.relative_to(config.parents[1]).as_posix(), FAMILY_GROUPS[type(cli.model).__name__]
    )
    assert expected <= {n.split("/")[0] for n in names}


@pytest.mark.parametrize(
    ("name", "run", "monitored"),
    [
        ("dual_stream/synthetic.yaml", "dual_stream_synthetic", "val/fused/acc"),
        ("dual_stream/nyu_rgbd.yaml", "dual_stream_nyu_rgbd", "val/fused/acc"),  # on a mini file
        ("siamese/synthetic.yaml", "siamese_synthetic", "val/pair_acc"),
        ("convgru/synthetic.yaml", "convgru_synthetic", "val/corr"),
    ],
)
def test_main_job_validate_reproduces_checkpoint_metrics_and_predict_writes(
    name, run, monitored, tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    config = next(p for p in CONFIGS if p.relative_to(p.parents[1]).as_posix() == name)
    small = [
        *_small_args(config, tmp_path),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
    ]
    fit = MSLightningCLI(args=["fit", "--config", str(config), *small])
    best = Path(fit.trainer.checkpoint_callback.best_model_path).resolve()
    assert best == tmp_path / f"logs/{run}/version_0/checkpoints/best.ckpt" and best.exists()
    recorded = float(fit.trainer.checkpoint_callback.best_model_score)
    assert "tensorboard --logdir logs" in caplog.text
    # `best` in a new CLI process: the best checkpoint of the latest run, printed, then validated
    validate = MSLightningCLI(args=["validate", "--config", str(config), "--ckpt_path", "best", *small])
    assert f"--ckpt_path best: using logs/{run}/version_0/checkpoints/best.ckpt" in caplog.text
    assert float(validate.trainer.callback_metrics[monitored]) == pytest.approx(recorded)
    (line,) = checkpoint_agreement(best, best, validate.trainer.callback_metrics)
    assert line.startswith(f"{monitored}: checkpoint recorded") and line in caplog.text
    assert torch.load(best, weights_only=True)["state_dict"]
    predict = MSLightningCLI(args=["predict", "--config", str(config), "--ckpt_path", "best", *small])
    (writer,) = [c for c in predict.trainer.callbacks if isinstance(c, BasePredictionWriter)]
    rows = list(csv.DictReader(writer.path.open()))
    # written beside the training run it evaluates, labelled as a prediction (not a new version_N)
    assert rows and writer.path.resolve().parent == tmp_path / "logs" / run / "version_0" / "predict_0"
    assert (tmp_path / "logs" / run / "version_0" / "validate_0").is_dir()
    assert sorted(p.name for p in (tmp_path / "logs" / run).iterdir()) == ["version_0"]
    if run == "siamese_synthetic":
        assert list(rows[0]) == ["series", "index", "score", "predicted_rank", "true_rank"]
        for series in {row["series"] for row in rows}:
            ranks = sorted(int(row["predicted_rank"]) for row in rows if row["series"] == series)
            assert ranks == list(range(1, len(ranks) + 1))
    if run == "convgru_synthetic":
        assert list(rows[0]) == ["session", "time_bin", "neuron", "rate", "response"]
        assert {row["session"] for row in rows} == {"s1", "s2"}
        assert all(float(row["rate"]) > 0 for row in rows)


def test_features_config_runs_on_a_feature_file_and_its_checkpoint_reloads(tmp_path, monkeypatch):
    """The vector-stream config through the real command line: fast_dev_run, then a short fit and a reload."""
    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).parents[2] / "configs" / "dual_stream" / "features.yaml")
    data = ["--data.init_args.path", str(write_features(tmp_path / "features.npz")), "--data.init_args.batch_size", "8"]
    main(["fit", "--config", config, *data, "--trainer.fast_dev_run", "true"])
    quiet = [
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
    ]
    fit = MSLightningCLI(args=["fit", "--config", config, *data, *quiet])
    assert fit.model.streams == {"audio": 6, "text": 4} and fit.model.num_classes == 3
    best = Path(fit.trainer.checkpoint_callback.best_model_path)
    assert best == Path("logs/dual_stream_features/version_0/checkpoints/best.ckpt")
    restored = MultiStreamClassifier.load_from_checkpoint(best)  # the CLI's hparams: a mapping of class_path configs
    for name, width in {"audio": 6, "text": 4}.items():
        encoder = restored.encoders[name]
        assert isinstance(encoder, MLPEncoder) and (encoder.in_features, encoder.hidden) == (width, (256,))
    state = fit.model.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in restored.state_dict().items())
    validate = MSLightningCLI(args=["validate", "--config", config, *data, *quiet, "--ckpt_path", "best"])
    assert float(validate.trainer.callback_metrics["val/fused/acc"]) == pytest.approx(
        float(fit.trainer.checkpoint_callback.best_model_score)
    )
