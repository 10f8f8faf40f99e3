"""Each group's lr must follow the torch scheduler's one-group trajectory exactly."""

from functools import partial

import pytest
import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LinearLR,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from mslightning.optim import GroupLRScheduler, ParamGroup, configure_grouped_optimizers

STEPS = 240


def warmup_cosine(optimizer):
    return SequentialLR(
        optimizer,
        [LinearLR(optimizer, start_factor=0.1, total_iters=10), CosineAnnealingLR(optimizer, T_max=100)],
        milestones=[10],
    )


SCHEDULES = {
    "experts": (1e-2, partial(CosineAnnealingWarmRestarts, T_0=4, T_mult=2, eta_min=1e-5)),
    "fusion": (3e-2, partial(CosineAnnealingLR, T_max=50, eta_min=1e-4)),
    "step": (1e-1, partial(StepLR, step_size=7, gamma=0.5)),
    "onecycle": (1e-3, partial(OneCycleLR, max_lr=0.1, total_steps=STEPS + 1)),
    "warmcos": (5e-3, warmup_cosine),
}


def one_group_trajectory(optimizer_cls, lr, factory, steps, **opt_kwargs):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = optimizer_cls([param], lr=lr, **opt_kwargs)
    scheduler = factory(optimizer)
    trajectory = []
    for _ in range(steps):
        trajectory.append(
            {k: optimizer.param_groups[0][k] for k in ("lr", "betas", "momentum") if k in optimizer.param_groups[0]}
        )
        optimizer.step()
        scheduler.step()
    return trajectory


def five_group_model():
    return torch.nn.ModuleDict({name: torch.nn.Linear(4, 4) for name in [*SCHEDULES, "head"]})


@pytest.mark.parametrize("optimizer_cls", [torch.optim.AdamW, torch.optim.SGD])
def test_every_group_follows_its_own_torch_trajectory(optimizer_cls):
    model = five_group_model()
    groups = [ParamGroup(n, f"{n}.*", lr=lr, scheduler=f, interval="step") for n, (lr, f) in SCHEDULES.items()]
    groups.append(ParamGroup("head", lr=7e-4))  # catch-all, constant
    extra = {"momentum": 0.9} if optimizer_cls is torch.optim.SGD else {}
    optimizers, configs = configure_grouped_optimizers(model, partial(optimizer_cls, lr=1.0, **extra), groups)
    (optimizer,) = optimizers
    assert [pg["name"] for pg in optimizer.param_groups] == [*SCHEDULES, "head"]
    expected = {n: one_group_trajectory(optimizer_cls, lr, f, STEPS, **extra) for n, (lr, f) in SCHEDULES.items()}

    # the groups' schedules advance all together, as in Lightning
    observed = {n: [] for n in SCHEDULES}
    head_lrs = []
    for _ in range(STEPS):
        for index, name in enumerate(SCHEDULES):
            group = optimizer.param_groups[index]
            observed[name].append({k: group[k] for k in ("lr", "betas", "momentum") if k in group})
        head_lrs.append(optimizer.param_groups[-1]["lr"])
        optimizer.step()
        for config in configs:
            config["scheduler"].step()

    for name in SCHEDULES:
        got = torch.tensor([row["lr"] for row in observed[name]], dtype=torch.float64)
        want = torch.tensor([row["lr"] for row in expected[name]], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0, msg=f"group {name} lr diverged")
        # OneCycleLR also schedules momentum / beta1; those must follow as well
        assert [row.get("betas", row.get("momentum")) for row in observed[name]] == [
            row.get("betas", row.get("momentum")) for row in expected[name]
        ]
    assert set(head_lrs) == {7e-4}
    # the warm restarts really restarted (sanity: the oracle is not constant)
    lrs = [row["lr"] for row in expected["experts"]]
    assert lrs[4] == pytest.approx(1e-2) and lrs[3] < lrs[0]


def test_stacked_torch_schedulers_do_not_do_this():
    """Why the mechanism exists: two torch schedulers on one optimizer both write every group."""
    model = five_group_model()
    optimizer = torch.optim.SGD(
        [{"params": model["experts"].parameters(), "lr": 1e-2}, {"params": model["fusion"].parameters(), "lr": 3e-2}]
    )
    first = StepLR(optimizer, step_size=1, gamma=0.5)
    second = CosineAnnealingLR(optimizer, T_max=10)
    for _ in range(3):
        optimizer.step()
        first.step()
        second.step()
    alone = one_group_trajectory(torch.optim.SGD, 1e-2, partial(StepLR, step_size=1, gamma=0.5), 4)
    assert optimizer.param_groups[0]["lr"] != pytest.approx(alone[3]["lr"])


@pytest.mark.parametrize("warmup", [1, 5])
def test_warmup_equals_sequential_linear_then_schedule(warmup):
    model = five_group_model()
    main = partial(CosineAnnealingWarmRestarts, T_0=3, T_mult=2)
    groups = [
        ParamGroup("experts", "experts.*", lr=0.2, scheduler=main, warmup=warmup, warmup_start_factor=0.05),
        ParamGroup("rest", lr=0.1),
    ]
    (optimizer,), (config,) = configure_grouped_optimizers(model, partial(torch.optim.SGD, lr=0.1), groups)

    def oracle(o):
        return SequentialLR(o, [LinearLR(o, start_factor=0.05, total_iters=warmup), main(o)], milestones=[warmup])

    want = [row["lr"] for row in one_group_trajectory(torch.optim.SGD, 0.2, oracle, 60)]
    got = []
    for _ in range(60):
        got.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        config["scheduler"].step()
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-10, atol=1e-12)
    assert optimizer.param_groups[1]["lr"] == 0.1


def test_plateau_reduces_only_its_own_group():
    model = five_group_model()
    plateau = partial(ReduceLROnPlateau, mode="min", factor=0.5, patience=1)
    groups = [
        ParamGroup("experts", "experts.*", lr=1e-2, scheduler=plateau, monitor="val/experts/loss"),
        ParamGroup("fusion", "fusion.*", lr=1e-2, scheduler=plateau, monitor="val/fusion/loss"),
        ParamGroup("rest", lr=1e-2),
    ]
    (optimizer,), configs = configure_grouped_optimizers(model, partial(torch.optim.AdamW, lr=1e-2), groups)
    assert [c["monitor"] for c in configs] == ["val/experts/loss", "val/fusion/loss"]
    assert all(c["reduce_on_plateau"] for c in configs)
    experts_losses = [1.0, 1.0, 1.0, 1.0, 1.0]  # stalls -> reduced
    fusion_losses = [1.0, 0.9, 0.8, 0.7, 0.6]  # improves -> untouched
    oracle = ReduceLROnPlateau(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2), factor=0.5, patience=1)
    for experts_loss, fusion_loss in zip(experts_losses, fusion_losses, strict=True):
        configs[0]["scheduler"].step(experts_loss)
        configs[1]["scheduler"].step(fusion_loss)
        oracle.step(experts_loss)
    assert optimizer.param_groups[0]["lr"] == oracle.optimizer.param_groups[0]["lr"] < 1e-2
    assert optimizer.param_groups[1]["lr"] == 1e-2
    assert optimizer.param_groups[2]["lr"] == 1e-2
    with pytest.raises(ValueError, match="needs a metric"):
        configs[0]["scheduler"].step()


def test_plateau_without_monitor_is_an_error():
    model = five_group_model()
    groups = [ParamGroup("experts", "experts.*", scheduler=ReduceLROnPlateau), ParamGroup("rest")]
    with pytest.raises(ValueError, match="monitor"):
        configure_grouped_optimizers(model, partial(torch.optim.AdamW, lr=1e-2), groups)


def test_no_decay_subgroup_follows_parent_schedule():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    groups = [
        ParamGroup("trunk", ["0.*", "1.*"], lr=0.1, scheduler=partial(StepLR, step_size=1, gamma=0.5)),
        ParamGroup("head", lr=0.3),
    ]
    (optimizer,), (config,) = configure_grouped_optimizers(
        model, partial(torch.optim.AdamW, lr=0.1, weight_decay=0.05), groups, no_weight_decay_on_norm_and_bias=True
    )
    names = [pg["name"] for pg in optimizer.param_groups]
    assert names == ["trunk", "trunk/no_decay", "head", "head/no_decay"]
    assert [pg["weight_decay"] for pg in optimizer.param_groups] == [0.05, 0.0, 0.05, 0.0]
    assert len(optimizer.param_groups[1]["params"]) == 3  # linear bias, bn weight, bn bias
    for _ in range(3):
        config["scheduler"].step()
    assert optimizer.param_groups[0]["lr"] == optimizer.param_groups[1]["lr"] == pytest.approx(0.1 / 8)
    assert optimizer.param_groups[2]["lr"] == optimizer.param_groups[3]["lr"] == 0.3


def test_scheduler_state_round_trip_continues_trajectory():
    model = five_group_model()
    factory = partial(CosineAnnealingWarmRestarts, T_0=4, T_mult=2)

    def build():
        groups = [ParamGroup("experts", "experts.*", lr=0.1, scheduler=factory, warmup=2), ParamGroup("rest")]
        (opt,), (cfg,) = configure_grouped_optimizers(model, partial(torch.optim.SGD, lr=0.1), groups)
        return opt, cfg["scheduler"]

    opt, sched = build()
    for _ in range(9):
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    tail = []
    for _ in range(10):
        sched.step()
        tail.append(opt.param_groups[0]["lr"])
    opt2, sched2 = build()
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    resumed = []
    for _ in range(10):
        sched2.step()
        resumed.append(opt2.param_groups[0]["lr"])
    assert resumed == tail


def test_scheduler_state_of_other_group_is_refused():
    model = five_group_model()
    groups = [ParamGroup("experts", "experts.*", scheduler=partial(StepLR, step_size=2)), ParamGroup("rest")]
    (_opt,), (cfg,) = configure_grouped_optimizers(model, partial(torch.optim.SGD, lr=0.1), groups)
    state = cfg["scheduler"].state_dict()
    state["group"] = "fusion"
    with pytest.raises(ValueError, match="'fusion'.*'experts'"):
        cfg["scheduler"].load_state_dict(state)


def test_unknown_group_name():
    optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "name": "a"}], lr=0.1)
    with pytest.raises(ValueError, match="'b'.*\\['a'\\]"):
        GroupLRScheduler(optimizer, "b", partial(StepLR, step_size=1))
