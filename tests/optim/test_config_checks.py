"""Settings that would silently do nothing are refused: unknown group options, clipping that never runs,
and per-group clipping on an optimizer whose named groups were collapsed by LightningCLI's --optimizer."""

from functools import partial

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from torch import nn

from mslightning.demos import TinyStreamsDataModule, TinyStreamsModel
from mslightning.optim import ParamGroup, clip_grad_norm_per_group, configure_grouped_optimizers


def two_layers():
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))


GROUPS = [ParamGroup("first", "0.*"), ParamGroup("rest")]


@pytest.mark.parametrize(
    ("optimizer_cls", "options", "bad"),
    [
        (torch.optim.AdamW, {"momentum": 0.9}, "option 'momentum'"),
        (torch.optim.SGD, {"betas": (0.9, 0.99)}, "option 'betas'"),
        (torch.optim.SGD, {"momentum": 0.9, "momentun": 0.9}, "option 'momentun'"),
    ],
)
def test_group_option_the_optimizer_does_not_accept(optimizer_cls, options, bad):
    groups = [ParamGroup("first", "0.*", options=options), ParamGroup("rest")]
    with pytest.raises(ValueError) as err:
        configure_grouped_optimizers(two_layers(), partial(optimizer_cls, lr=0.1), groups)
    message = str(err.value)
    accepted = sorted(optimizer_cls([nn.Parameter(torch.zeros(1))], lr=0.1).defaults)
    assert message.startswith(f"Group 'first': {bad} is not a hyper-parameter of {optimizer_cls.__name__},")
    assert f"{optimizer_cls.__name__} accepts: {accepted}." in message


def test_group_weight_decay_on_an_optimizer_without_it():
    groups = [ParamGroup("first", "0.*", weight_decay=0.1), ParamGroup("rest")]
    with pytest.raises(ValueError, match=r"^Group 'first': field 'weight_decay' is not a hyper-parameter of Rprop"):
        configure_grouped_optimizers(two_layers(), partial(torch.optim.Rprop, lr=0.1), groups)


def test_accepted_options_are_applied():
    groups = [ParamGroup("first", "0.*", options={"momentum": 0.5, "nesterov": True}), ParamGroup("rest")]
    optimizer = configure_grouped_optimizers(two_layers(), partial(torch.optim.SGD, lr=0.1, momentum=0.9), groups)[
        "optimizer"
    ]
    assert [(pg["momentum"], pg["nesterov"]) for pg in optimizer.param_groups] == [(0.5, True), (0.9, False)]


class PlainModule(LightningModule):
    """Uses the groups but keeps Lightning's configure_gradient_clipping."""

    def __init__(self, groups, automatic=True):
        super().__init__()
        self.layers = two_layers()
        self.groups = groups
        self.automatic_optimization = automatic

    def training_step(self, batch, batch_idx):
        loss = self.layers(batch[0]).sum()
        if not self.automatic_optimization:
            self.manual_backward(loss)
            self.optimizers().step()
            return None
        return loss

    def configure_optimizers(self):
        return configure_grouped_optimizers(self, partial(torch.optim.SGD, lr=0.1), self.groups)


class ClippingModule(PlainModule):
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_grad_norm_per_group(optimizer)


CLIPPED = [ParamGroup("first", "layers.0.*", max_grad_norm=1.0), ParamGroup("rest")]


def fit(module):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    return trainer


def test_max_grad_norm_without_clipping_hook_is_refused_at_fit_start():
    module = PlainModule(CLIPPED)
    with pytest.raises(ValueError) as err:
        fit(module)
    message = str(err.value)
    assert message.startswith(
        "Group 'first' sets max_grad_norm=1.0, but PlainModule does not override configure_gradient_clipping,"
    )
    assert "GroupedOptimizationModule" in message and "clip_grad_norm_per_group(optimizer)" in message
    assert module.global_step == 0


def test_max_grad_norm_with_manual_optimization_is_refused():
    with pytest.raises(ValueError) as err:
        fit(ClippingModule(CLIPPED, automatic=False))
    assert str(err.value).startswith(
        "Group 'first' sets max_grad_norm=1.0, but ClippingModule uses manual optimization "
        "(automatic_optimization is False)"
    )


def test_max_grad_norm_accepted_where_it_runs_and_manual_without_it():
    assert fit(ClippingModule(CLIPPED)).global_step == 2
    assert (
        fit(ClippingModule([ParamGroup("first", "layers.0.*"), ParamGroup("rest")], automatic=False)).global_step == 2
    )
    # a plain nn.Module (no Lightning hooks to inspect) is not checked
    configure_grouped_optimizers(two_layers(), partial(torch.optim.SGD, lr=0.1), [ParamGroup("all", max_grad_norm=1.0)])


def test_clipping_an_optimizer_without_named_groups_is_refused():
    optimizer = torch.optim.Adam(two_layers().parameters(), lr=0.1)
    with pytest.raises(RuntimeError) as err:
        clip_grad_norm_per_group(optimizer)
    message = str(err.value)
    assert message.startswith("clip_grad_norm_per_group got an optimizer (Adam) whose 1 param group(s) have no 'name'")
    assert "forbid_replaced_configure_optimizers(self)" in message and "`mslightning` command" in message


class NoSetupGuard(TinyStreamsModel):
    """A grouped module that forgot forbid_replaced_configure_optimizers in setup."""

    def setup(self, stage):
        pass


def test_plain_lightning_cli_optimizer_is_caught_by_clipping(tmp_path):
    args = [
        "fit",
        "--optimizer",
        "torch.optim.Adam",
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    with pytest.raises(
        RuntimeError, match=r"^clip_grad_norm_per_group got an optimizer \(Adam\) whose 1 param group\(s\) have no"
    ):
        LightningCLI(NoSetupGuard, TinyStreamsDataModule, args=args)
