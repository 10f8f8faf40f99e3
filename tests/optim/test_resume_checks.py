"""A resume with a changed group configuration: refused, reported, or silent when unchanged.

Every scenario fits 2 epochs with a checkpoint, then resumes with a real Trainer
(``trainer.fit(model, ckpt_path=...)``) under a changed configuration.
"""

import warnings
from dataclasses import replace
from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LambdaLR,
    LinearLR,
    StepLR,
)

from mslightning.demos import TinyStreamsDataModule, TinyStreamsModel
from mslightning.optim import ParamGroup, SequentialSchedule, check_group_configuration, configure_grouped_optimizers

WARNING_START = "The checkpoint's parameter-group settings differ from the configuration"


def groups(**changes):
    """The run's groups; ``changes`` maps a group name to the fields to replace on it."""
    base = [
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
    return [replace(group, **changes.get(group.name, {})) for group in base]


class Record(Callback):
    """Each group's lr and weight_decay at every training batch, and the schedulers at the end."""

    def __init__(self):
        self.rows = []
        self.schedulers = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append({pg["name"]: (pg["lr"], pg["weight_decay"]) for pg in trainer.optimizers[0].param_groups})

    def on_train_end(self, trainer, pl_module):
        self.schedulers = {c.scheduler.group: c.scheduler for c in trainer.lr_scheduler_configs}
        self.max_grad_norms = {pg["name"]: pg["max_grad_norm"] for pg in trainer.optimizers[0].param_groups}


def fit(root, max_epochs, param_groups, ckpt_path=None):
    seed_everything(0)
    model = TinyStreamsModel(
        optimizer=partial(torch.optim.AdamW, lr=0.01), param_groups=param_groups, no_weight_decay_on_norm_and_bias=True
    )
    record = Record()
    trainer = Trainer(
        default_root_dir=root,
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True), record],
    )
    trainer.fit(model, TinyStreamsDataModule(), ckpt_path=ckpt_path)
    return record


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("first")
    fit(root, 2, groups())
    return root / "ckpt" / "last.ckpt"


def resume(tmp_path, checkpoint, param_groups):
    """Resume to epoch 4 and return the recorder and our warnings (Lightning's own are ignored)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = fit(tmp_path, 4, param_groups, ckpt_path=checkpoint)
    ours = [str(w.message) for w in caught if str(w.message).startswith(WARNING_START)]
    return record, ours


def test_identical_configuration_resumes_without_warning(tmp_path, checkpoint):
    # rgb's and head's lr changed every step and depth's every epoch before the checkpoint:
    # a scheduled lr is not a changed setting
    _, ours = resume(tmp_path, checkpoint, groups())
    assert ours == []


def test_switched_scheduler_class_is_refused(tmp_path, checkpoint):
    changed = groups(depth={"scheduler": partial(CosineAnnealingLR, T_max=5)})
    with pytest.raises(ValueError) as err:
        fit(tmp_path, 4, changed, ckpt_path=checkpoint)
    message = str(err.value)
    assert message.startswith("Group 'depth' has a different schedule than in the checkpoint")
    assert "torch.optim.lr_scheduler.StepLR(step_size=1, gamma=0.7)" in message
    assert "torch.optim.lr_scheduler.CosineAnnealingLR(T_max=5, eta_min=0.0)" in message


@pytest.mark.parametrize(
    ("head_changes", "configured_text"),
    [
        ({"scheduler": None, "warmup": 0}, "the configuration has no schedule"),
        ({"scheduler": None}, "the configuration has linear warm-up only"),
    ],
)
def test_removed_scheduler_of_last_group_is_refused(tmp_path, checkpoint, head_changes, configured_text):
    # Lightning alone would zip the saved schedulers with the configured ones and drop the last
    with pytest.raises(ValueError) as err:
        fit(tmp_path, 4, groups(head=head_changes), ckpt_path=checkpoint)
    message = str(err.value)
    assert message.startswith("Group 'head' has a different schedule than in the checkpoint")
    assert "torch.optim.lr_scheduler.CosineAnnealingLR(T_max=20, eta_min=0.0)" in message
    assert configured_text in message


def test_changed_scheduler_argument_is_reported_and_the_checkpoints_is_used(tmp_path, checkpoint):
    reference, _ = resume(tmp_path / "same", checkpoint, groups())
    record, ours = resume(
        tmp_path / "changed", checkpoint, groups(head={"scheduler": partial(CosineAnnealingLR, T_max=40)})
    )
    (message,) = ours
    assert "group 'head': scheduler T_max: checkpoint 20, configuration 40 -> 20 is used (the checkpoint's)" in message
    assert len(message.splitlines()) == 3  # first line, one row, the explanation
    # what actually happened: the restored scheduler kept T_max=20 and the lrs are the unchanged run's
    assert record.schedulers["head"].schedule.T_max == 20
    assert record.rows == reference.rows


def test_changed_hyper_parameters_are_reported_and_the_checkpoints_are_used(tmp_path, checkpoint):
    changed = groups(rgb={"weight_decay": 0.05, "options": {"betas": (0.8, 0.99)}}, head={"max_grad_norm": 2.0})
    record, ours = resume(tmp_path, checkpoint, changed)
    (message,) = ours
    assert message.splitlines()[0] == (
        "The checkpoint's parameter-group settings differ from the configuration in 5 place(s); "
        "after loading, each uses the value shown:"
    )
    assert (
        "group 'rgb': weight_decay: checkpoint 0.01, configuration 0.05 -> 0.01 is used (the checkpoint's)" in message
    )
    assert "group 'rgb': betas: checkpoint [0.9, 0.999], configuration [0.8, 0.99] -> [0.9, 0.999] is used" in message
    # the /no_decay sub-group shares the options but keeps weight_decay 0 in both
    assert "group 'rgb/no_decay': betas: checkpoint [0.9, 0.999], configuration [0.8, 0.99]" in message
    assert "group 'rgb/no_decay': weight_decay" not in message
    assert "group 'head': max_grad_norm: checkpoint 0.5, configuration 2.0 -> 0.5 is used" in message
    assert "group 'head/no_decay': max_grad_norm: checkpoint 0.5, configuration 2.0" in message
    # what actually happened: torch restored the checkpoint's hyper-parameters
    assert {row["rgb"][1] for row in record.rows} == {0.01}
    assert record.max_grad_norms["head"] == record.max_grad_norms["head/no_decay"] == 0.5


def test_changed_warmup_is_reported_and_the_configurations_is_used(tmp_path, checkpoint):
    record, ours = resume(tmp_path, checkpoint, groups(head={"warmup": 3}))
    (message,) = ours
    assert "group 'head': warmup: checkpoint 5, configuration 3 -> 3 is used (the configuration's)" in message
    assert "warmup_start_factor" not in message  # unchanged
    assert record.schedulers["head"].warmup == 3
    # the next checkpoint describes what was in effect, and loads with weights_only=True
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    head = next(pg for pg in saved["optimizer_states"][0]["param_groups"] if pg["name"] == "head")
    assert head["schedule"]["warmup"] == 3
    assert head["schedule"]["scheduler"] == {
        "class": "torch.optim.lr_scheduler.CosineAnnealingLR",
        "args": {"T_max": 20, "eta_min": 0.0},
    }


def test_checkpoint_without_descriptions_still_loads(tmp_path, checkpoint):
    state = torch.load(checkpoint, weights_only=False)
    for pg in state["optimizer_states"][0]["param_groups"]:
        del pg["schedule"], pg["configured"]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    record, ours = resume(tmp_path / "resumed", old, groups(head={"scheduler": partial(CosineAnnealingLR, T_max=40)}))
    assert ours == []  # nothing to compare against
    assert len(record.rows) == 2 * 4
    swapped = groups()
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(ValueError, match=r"checkpoint has \['rgb'"):  # names are still checked
        fit(tmp_path / "swapped", 4, swapped, ckpt_path=old)


def test_nested_scheduler_class_change_is_refused_and_milestone_change_reported():
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)})

    def build(first, milestone):
        schedule = partial(SequentialSchedule, schedulers=[first, partial(StepLR, step_size=2)], milestones=[milestone])
        return configure_grouped_optimizers(
            model, partial(torch.optim.SGD, lr=0.1), [ParamGroup("a", "a.*", scheduler=schedule), ParamGroup("b")]
        )[0][0]

    saved = build(partial(LinearLR, total_iters=3), 3).state_dict()
    with pytest.raises(ValueError) as err:
        build(partial(ConstantLR, total_iters=3), 3).load_state_dict(saved)
    assert "torch.optim.lr_scheduler.LinearLR(" in str(err.value)
    assert "torch.optim.lr_scheduler.ConstantLR(" in str(err.value)
    changed = build(partial(LinearLR, total_iters=3), 4)
    (change,) = check_group_configuration(changed, saved["param_groups"], warn=False)
    assert (change.group, change.setting, change.checkpoint, change.configuration, change.used) == (
        "a",
        "scheduler milestones",
        [3],
        [4],
        "checkpoint",
    )
    with pytest.warns(UserWarning, match=r"scheduler milestones: checkpoint \[3\], configuration \[4\]"):
        changed.load_state_dict(saved)


def halve(epoch):
    return 0.5**epoch


def third(epoch):
    return (1 / 3) ** epoch


def test_lr_lambda_is_not_compared_and_the_configured_function_is_used():
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)})

    def build(function):
        groups = [ParamGroup("a", "a.*", scheduler=partial(LambdaLR, lr_lambda=function)), ParamGroup("b")]
        (optimizer,), (config,) = configure_grouped_optimizers(model, partial(torch.optim.SGD, lr=0.1), groups)
        return optimizer, config["scheduler"]

    optimizer, scheduler = build(halve)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    saved_optimizer, saved_scheduler = optimizer.state_dict(), scheduler.state_dict()
    optimizer, scheduler = build(third)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.load_state_dict(saved_optimizer)
    scheduler.load_state_dict(saved_scheduler)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.1 * third(3)


def test_warmup_added_lists_the_start_factor_as_not_set_in_the_checkpoint():
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)})

    def build(warmup):
        groups = [ParamGroup("a", "a.*", scheduler=partial(StepLR, step_size=2), warmup=warmup), ParamGroup("b")]
        return configure_grouped_optimizers(model, partial(torch.optim.SGD, lr=0.1), groups)[0][0]

    saved = build(0).state_dict()
    rows = [change.describe() for change in check_group_configuration(build(3), saved["param_groups"], warn=False)]
    assert rows == [
        "group 'a': warmup: checkpoint 0, configuration 3 -> 3 is used (the configuration's)",
        "group 'a': warmup_start_factor: checkpoint not set, configuration 0.01 -> 0.01 is used (the configuration's)",
    ]
