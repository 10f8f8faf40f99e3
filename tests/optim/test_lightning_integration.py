"""Per-group schedules inside a real Trainer: LearningRateMonitor keys, resume, clipping, CLI."""

from functools import partial

import pytest
import torch
import yaml
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.lr_scheduler import CosineAnnealingLR, CosineAnnealingWarmRestarts, ReduceLROnPlateau, StepLR

from mslightning.cli import MSLightningCLI, main
from mslightning.demos import TinyStreamsDataModule, TinyStreamsModel
from mslightning.optim import ParamGroup

BATCHES_PER_EPOCH = 4  # 64 train samples / batch 16


def trainer(tmp_path, **kwargs):
    defaults = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


def groups():
    return [
        ParamGroup(
            "rgb",
            ["encoders.rgb.*", "aux_heads.rgb.*"],
            lr=0.05,
            scheduler=partial(CosineAnnealingWarmRestarts, T_0=3, T_mult=2),
            interval="step",
        ),
        ParamGroup(
            "depth",
            ["encoders.depth.*", "aux_heads.depth.*"],
            lr=0.02,
            scheduler=partial(StepLR, step_size=1, gamma=0.7),
            interval="epoch",
        ),
        ParamGroup(
            "head",
            lr=0.01,
            warmup=5,
            warmup_start_factor=0.2,
            scheduler=partial(CosineAnnealingLR, T_max=20),
            interval="step",
            max_grad_norm=0.5,
        ),
    ]


def oracle(factory, lr, steps):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = factory(optimizer)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


class RecordLR(Callback):
    """Records each group's lr at every optimizer step, and the optimizer-step gradient norms."""

    def __init__(self):
        self.lrs, self.head_grad_norms = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append({pg["name"]: pg["lr"] for pg in trainer.optimizers[0].param_groups})

    def on_fit_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        head = [p for pg in optimizer.param_groups if pg["name"] == "head" for p in pg["params"]]

        def record(opt, args, kwargs):  # Lightning runs the closure inside step(): read grads after it
            self.head_grad_norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in head])).item())

        optimizer.register_step_post_hook(record)


def test_learning_rate_monitor_keys_and_values_from_event_files(tmp_path):
    seed_everything(0)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    model = TinyStreamsModel(optimizer=partial(torch.optim.SGD, lr=0.1), param_groups=groups())
    recorder = RecordLR()
    trainer(
        tmp_path,
        max_epochs=3,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[LearningRateMonitor(logging_interval="step"), recorder],
    ).fit(model, TinyStreamsDataModule())
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    lr_tags = sorted(tag for tag in events.Tags()["scalars"] if tag.startswith("lr-"))
    assert lr_tags == ["lr-SGD/depth", "lr-SGD/head", "lr-SGD/rgb"]
    steps = 3 * BATCHES_PER_EPOCH
    logged = {tag.split("/")[1]: [e.value for e in events.Scalars(tag)] for tag in lr_tags}
    want_rgb = oracle(partial(CosineAnnealingWarmRestarts, T_0=3, T_mult=2), 0.05, steps)
    want_depth = [v for v in oracle(partial(StepLR, step_size=1, gamma=0.7), 0.02, 3) for _ in range(BATCHES_PER_EPOCH)]
    assert logged["rgb"] == pytest.approx(want_rgb, rel=1e-6)  # event files store float32
    assert logged["depth"] == pytest.approx(want_depth, rel=1e-6)
    assert [row["rgb"] for row in recorder.lrs] == pytest.approx(want_rgb, rel=1e-12)
    assert [row["depth"] for row in recorder.lrs] == pytest.approx(want_depth, rel=1e-12)
    assert recorder.lrs[0]["head"] == pytest.approx(0.01 * 0.2)  # warm-up starts low
    # per-group clipping in the real loop: the head group never exceeds its norm at the step
    assert max(recorder.head_grad_norms) <= 0.5 * (1 + 1e-5)


def test_plateau_per_group_in_trainer(tmp_path):
    seed_everything(0)
    plateau = partial(ReduceLROnPlateau, mode="max", factor=0.1, patience=0)  # "max" on a loss: always reduces
    param_groups = [
        ParamGroup("rgb", ["encoders.rgb.*", "aux_heads.rgb.*"], lr=0.01, scheduler=plateau, monitor="val/rgb/loss"),
        ParamGroup(
            "depth",
            ["encoders.depth.*", "aux_heads.depth.*"],
            lr=0.01,
            scheduler=partial(ReduceLROnPlateau, mode="min", factor=0.1, patience=100),
            monitor="val/depth/loss",
        ),
        ParamGroup("head", lr=0.01),
    ]
    model = TinyStreamsModel(optimizer=partial(torch.optim.SGD, lr=0.01), param_groups=param_groups)
    fit = trainer(tmp_path, max_epochs=3)
    fit.fit(model, TinyStreamsDataModule())
    lrs = {pg["name"]: pg["lr"] for pg in fit.optimizers[0].param_groups}
    assert lrs["depth"] == lrs["head"] == 0.01
    assert lrs["rgb"] < 0.01 * 0.1**1.5  # reduced at least twice


def run_fit(tmp_path, max_epochs, ckpt_path=None, callbacks=(), param_groups=None):
    seed_everything(0)
    model = TinyStreamsModel(
        optimizer=partial(torch.optim.AdamW, lr=0.01),
        param_groups=param_groups or groups(),
        no_weight_decay_on_norm_and_bias=True,
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1, every_n_epochs=1)
    fit = trainer(tmp_path, max_epochs=max_epochs, callbacks=[checkpoint, *callbacks], enable_checkpointing=True)
    fit.fit(model, TinyStreamsDataModule(), ckpt_path=ckpt_path)
    return model, fit


def test_resume_mid_warm_restart_reproduces_trajectory_and_weights(tmp_path):
    full_lrs = RecordLR()
    full_model, _ = run_fit(tmp_path / "full", 6, callbacks=[full_lrs])
    # rgb restarts after 3 and 3+6 steps: stopping after epoch 2 (step 8) is mid-cycle
    _first_half, _ = run_fit(tmp_path / "split", 2)
    ckpt = tmp_path / "split" / "ckpt" / "last.ckpt"
    resumed_lrs = RecordLR()
    resumed_model, _ = run_fit(tmp_path / "resumed", 6, ckpt_path=ckpt, callbacks=[resumed_lrs])
    assert resumed_lrs.lrs == full_lrs.lrs[2 * BATCHES_PER_EPOCH :]
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_with_reordered_groups_is_refused(tmp_path):
    run_fit(tmp_path / "a", 1)
    ckpt = tmp_path / "a" / "ckpt" / "last.ckpt"
    swapped = groups()
    swapped[0], swapped[1] = swapped[1], swapped[0]  # same sizes: torch alone would not notice
    with pytest.raises(ValueError, match=r"checkpoint has \['rgb'.*configuration has \['depth'"):
        run_fit(tmp_path / "b", 2, ckpt_path=ckpt, param_groups=swapped)
    assert ckpt.exists()


CONFIG = """
trainer:
  max_epochs: 1
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
model:
  class_path: mslightning.demos.TinyStreamsModel
  init_args:
    optimizer:
      class_path: torch.optim.SGD
      init_args: {lr: 0.1, momentum: 0.9}
    param_groups:
      - name: rgb
        params: [encoders.rgb.*, aux_heads.rgb.*]
        lr: 0.5
        weight_decay: 0.001
        interval: step
        warmup: 2
        max_grad_norm: 5.0
        scheduler:
          class_path: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
          init_args: {T_0: 4, T_mult: 2, eta_min: 1.0e-5}
      - name: depth
        params: "re:(encoders|aux_heads)\\\\.depth\\\\..*"
        options: {momentum: 0.5, nesterov: true}
        scheduler:
          class_path: torch.optim.lr_scheduler.ReduceLROnPlateau
          init_args: {factor: 0.5, patience: 2}
        monitor: val/depth/loss
      - name: head
        lr_scale: 10
data:
  class_path: mslightning.demos.TinyStreamsDataModule
"""


def test_cli_yaml_round_trip_and_fit(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    round_trip = tmp_path / "printed.yaml"
    round_trip.write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(round_trip), "--print_config"])
    assert capsys.readouterr().out == printed
    parsed = yaml.safe_load(printed)["model"]["init_args"]["param_groups"]
    assert [g["name"] for g in parsed] == ["rgb", "depth", "head"]
    assert parsed[0]["scheduler"]["init_args"]["T_mult"] == 2

    cli = MSLightningCLI(args=["fit", "--config", str(round_trip), "--trainer.default_root_dir", str(tmp_path)])
    groups_after = {pg["name"]: pg for pg in cli.trainer.optimizers[0].param_groups}
    assert groups_after["head"]["lr"] == pytest.approx(1.0)
    assert groups_after["depth"]["nesterov"] is True and groups_after["rgb"]["max_grad_norm"] == 5.0
    assert {c.monitor for c in cli.trainer.lr_scheduler_configs} == {None, "val/depth/loss"}


def test_cli_has_no_optimizer_shortcut(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--optimizer", "torch.optim.Adam"])
    assert exit_info.value.code != 0
    with pytest.raises(ValueError, match="never auto-configures"):
        MSLightningCLI(args=["fit"], auto_configure_optimizers=True)


def test_plain_lightning_cli_optimizer_override_fails_loudly(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    args = [
        "fit",
        "--optimizer",
        "torch.optim.Adam",
        "--optimizer.lr",
        "0.1",
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    with pytest.raises(RuntimeError, match="collapse its named parameter groups"):
        LightningCLI(TinyStreamsModel, TinyStreamsDataModule, args=args)
