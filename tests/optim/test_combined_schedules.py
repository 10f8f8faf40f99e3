"""SequentialSchedule / ChainedSchedule: exactly torch's SequentialLR / ChainedScheduler, and writable in YAML."""

from functools import partial

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LRSchedulerCallable
from torch.optim.lr_scheduler import (
    ChainedScheduler,
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    SequentialLR,
    StepLR,
)

from mslightning.cli import MSLightningCLI
from mslightning.optim import ChainedSchedule, ParamGroup, SequentialSchedule, configure_grouped_optimizers

STEPS = 40


def decay(epoch: int) -> float:
    """An ``lr_lambda`` given in YAML by its import path."""
    return 0.9**epoch


def shrink(epoch: int) -> float:
    """A ``MultiplicativeLR`` factor given in YAML by its import path."""
    return 0.95


HERE = __name__  # the import path of this module, as the YAML below names its functions


def torch_trajectory(build, lr=0.1, steps=STEPS):
    """The lr of a one-group SGD optimizer under ``build(optimizer)``, before each step."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = build(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def torch_sequential(o):
    return SequentialLR(
        o,
        [LinearLR(o, start_factor=0.1, total_iters=3), CosineAnnealingLR(o, T_max=10), StepLR(o, step_size=4)],
        milestones=[3, 13],
    )


def torch_chained(o):
    return ChainedScheduler([StepLR(o, step_size=3, gamma=0.5), ExponentialLR(o, gamma=0.9)], optimizer=o)


SEQUENTIAL = partial(
    SequentialSchedule,
    schedulers=[
        partial(LinearLR, start_factor=0.1, total_iters=3),
        partial(CosineAnnealingLR, T_max=10),
        partial(StepLR, step_size=4),
    ],
    milestones=[3, 13],
)
CHAINED = partial(
    ChainedSchedule, schedulers=[partial(StepLR, step_size=3, gamma=0.5), partial(ExponentialLR, gamma=0.9)]
)


def grouped_trajectories(groups, steps=STEPS):
    model = torch.nn.ModuleDict({name: torch.nn.Linear(2, 2) for name in ("a", "b", "c")})
    (optimizer,), configs = configure_grouped_optimizers(model, partial(torch.optim.SGD, lr=0.1), groups)
    lrs = {pg["name"]: [] for pg in optimizer.param_groups}
    for _ in range(steps):
        for pg in optimizer.param_groups:
            lrs[pg["name"]].append(pg["lr"])
        optimizer.step()
        for config in configs:
            config["scheduler"].step()
    return lrs


def test_group_follows_torch_sequential_and_chained_exactly():
    groups = [
        ParamGroup("a", "a.*", scheduler=SEQUENTIAL),
        ParamGroup("b", "b.*", lr=0.3, scheduler=CHAINED),
        ParamGroup("c", lr=0.2, scheduler=partial(StepLR, step_size=1, gamma=0.5)),
    ]
    got = grouped_trajectories(groups)
    assert got["a"] == torch_trajectory(torch_sequential)
    assert got["b"] == torch_trajectory(torch_chained, lr=0.3)
    assert got["c"] == torch_trajectory(partial(StepLR, step_size=1, gamma=0.5), lr=0.2)
    # sanity: the three phases ran (warm-up, cosine, then from the base lr 10x down every 4)
    assert got["a"][:4] == pytest.approx([0.01, 0.04, 0.07, 0.1])
    assert got["a"][12] < got["a"][4] < 0.1
    assert got["a"][13:18] == pytest.approx([0.1] * 4 + [0.01])


def test_combined_schedules_build_on_the_optimizer_they_are_given():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sequential = SEQUENTIAL(optimizer)
    assert isinstance(sequential, SequentialLR)
    assert all(sub.optimizer is optimizer for sub in sequential._schedulers)
    assert isinstance(CHAINED(optimizer), ChainedScheduler)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedulers": [], "milestones": []}, r"SequentialSchedule needs at least one scheduler"),
        (
            {"schedulers": [partial(StepLR, step_size=1)] * 2, "milestones": [3, 5]},
            r"milestones \[3, 5\] must have one",
        ),
        ({"schedulers": [partial(StepLR, step_size=1)] * 3, "milestones": [5, 3]}, r"strictly increasing.*\[5, 3\]"),
        ({"schedulers": ["cosine"], "milestones": []}, r"schedulers\[0\] must be a callable.*'cosine'"),
    ],
)
def test_sequential_schedule_validation(kwargs, match):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=match):
        SequentialSchedule(optimizer, **kwargs)


CONFIG = f"""
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
      init_args: {{lr: 0.1}}
    param_groups:
      - name: rgb
        params: [encoders.rgb.*, aux_heads.rgb.*]
        scheduler:
          class_path: mslightning.optim.SequentialSchedule
          init_args:
            schedulers:
              - class_path: torch.optim.lr_scheduler.LinearLR
                init_args: {{start_factor: 0.1, total_iters: 3}}
              - class_path: torch.optim.lr_scheduler.CosineAnnealingLR
                init_args: {{T_max: 10}}
              - class_path: torch.optim.lr_scheduler.StepLR
                init_args: {{step_size: 4}}
            milestones: [3, 13]
      - name: depth
        params: [encoders.depth.*, aux_heads.depth.*]
        scheduler:
          class_path: torch.optim.lr_scheduler.LambdaLR
          init_args: {{lr_lambda: {HERE}.decay}}
      - name: head
        lr: 0.3
        scheduler:
          class_path: mslightning.optim.ChainedSchedule
          init_args:
            schedulers:
              - class_path: torch.optim.lr_scheduler.StepLR
                init_args: {{step_size: 3, gamma: 0.5}}
              - class_path: torch.optim.lr_scheduler.MultiplicativeLR
                init_args: {{lr_lambda: {HERE}.shrink}}
data:
  class_path: mslightning.demos.TinyStreamsDataModule
"""


def test_combined_and_lambda_schedules_from_cli_yaml(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    cli = MSLightningCLI(args=["--config", str(config), "--trainer.default_root_dir", str(tmp_path)], run=False)
    (optimizer,), configs = cli.model.configure_optimizers()
    lrs = {pg["name"]: [] for pg in optimizer.param_groups}
    for _ in range(STEPS):
        for pg in optimizer.param_groups:
            lrs[pg["name"]].append(pg["lr"])
        optimizer.step()
        for scheduler_config in configs:
            scheduler_config["scheduler"].step()
    assert lrs["rgb"] == torch_trajectory(torch_sequential)
    assert lrs["depth"] == torch_trajectory(partial(LambdaLR, lr_lambda=decay))
    assert lrs["head"] == torch_trajectory(
        lambda o: ChainedScheduler([StepLR(o, step_size=3, gamma=0.5), MultiplicativeLR(o, lr_lambda=shrink)]), lr=0.3
    )
    # and it trains
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step > 0


class Holder:
    """The smallest consumer of a scheduler factory, as LightningCLI types it."""

    def __init__(self, scheduler: LRSchedulerCallable) -> None:
        self.scheduler = scheduler


def test_sequential_schedule_through_jsonargparse_round_trip():
    spec = {
        "scheduler": {
            "class_path": "mslightning.optim.SequentialSchedule",
            "init_args": {
                "schedulers": [
                    {
                        "class_path": "torch.optim.lr_scheduler.LinearLR",
                        "init_args": {"start_factor": 0.1, "total_iters": 3},
                    },
                    {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": 10}},
                    {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 4}},
                ],
                "milestones": [3, 13],
            },
        }
    }
    parser = ArgumentParser()
    parser.add_class_arguments(Holder, "holder")
    parsed = parser.parse_object({"holder": spec})
    dumped = parser.dump(parsed)
    assert parser.parse_object(yaml.safe_load(dumped)) == parsed
    factory = parser.instantiate_classes(parsed).holder.scheduler
    assert torch_trajectory(factory) == torch_trajectory(torch_sequential)
