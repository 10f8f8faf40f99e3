from functools import partial

import pytest
import torch
from torch import nn

from mslightning.optim import ParamGroup, build_param_groups, clip_grad_norm_per_group, configure_grouped_optimizers
from mslightning.optim.patterns import matches_any, select_names


class TwoStream(nn.Module):
    def __init__(self):
        super().__init__()
        self.rgb_encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.depth_encoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        self.fusion = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)


def names_of(param_groups, model):
    lookup = {id(p): n for n, p in model.named_parameters()}
    return {pg["name"]: [lookup[id(p)] for p in pg["params"]] for pg in param_groups}


def test_pattern_language():
    assert matches_any("encoders.rgb.layer1.0.conv1.weight", "encoders.rgb.*")
    assert not matches_any("encoders.rgbd.conv1.weight", "encoders.rgb.*")
    assert matches_any("head.bias", ["*.weight", "*.bias"])
    assert matches_any("encoders.depth.layer3.1.bn2.weight", r"re:encoders\.(rgb|depth)\.layer[34]\..*")
    assert not matches_any("xencoders.depth.layer3.weight", r"re:encoders\..*")  # anchored
    assert select_names(["b.w", "a.w", "c.x"], "*.w") == ["b.w", "a.w"]
    with pytest.raises(ValueError, match="Invalid regular expression"):
        matches_any("a", "re:(")
    with pytest.raises(ValueError, match="empty"):
        select_names(["a"], [])


def test_stream_recipe_in_two_lines():
    """The predecessor's stream1_lr / stream2_lr / *_weight_decay recipe over a base lr / wd."""
    model = TwoStream()
    groups = [
        ParamGroup("rgb", "rgb_encoder.*", lr=5e-4, weight_decay=1e-3),
        ParamGroup("depth", "depth_encoder.*", lr=5e-5, weight_decay=5e-2),
        ParamGroup("shared"),
    ]
    out = configure_grouped_optimizers(model, partial(torch.optim.AdamW, lr=1e-4, weight_decay=2e-2), groups)
    optimizer = out["optimizer"]
    got = {pg["name"]: (pg["lr"], pg["weight_decay"]) for pg in optimizer.param_groups}
    assert got == {"rgb": (5e-4, 1e-3), "depth": (5e-5, 5e-2), "shared": (1e-4, 2e-2)}
    assert names_of(optimizer.param_groups, model)["shared"] == [
        "fusion.weight",
        "fusion.bias",
        "head.weight",
        "head.bias",
    ]


def test_backbone_1x_head_10x():
    model = TwoStream()
    groups = [ParamGroup("backbone", "*_encoder.*"), ParamGroup("head", ["fusion.*", "head.*"], lr_scale=10)]
    optimizer = configure_grouped_optimizers(model, partial(torch.optim.SGD, lr=0.01, momentum=0.9), groups)[
        "optimizer"
    ]
    assert [(pg["name"], pg["lr"], pg["momentum"]) for pg in optimizer.param_groups] == [
        ("backbone", 0.01, 0.9),
        ("head", pytest.approx(0.1), 0.9),
    ]


def test_every_trainable_parameter_in_exactly_one_group_and_frozen_skipped():
    model = TwoStream()
    model.depth_encoder[1].weight.requires_grad_(False)
    param_groups = build_param_groups(
        model, [ParamGroup("rgb", "rgb_*"), ParamGroup("depth", "depth_*"), ParamGroup("rest")]
    )
    grouped = [id(p) for pg in param_groups for p in pg["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(grouped) == len(set(grouped))
    assert "depth_encoder.1.weight" not in names_of(param_groups, model)["depth"]


def test_overlap_names_parameter_and_both_groups():
    with pytest.raises(ValueError) as err:
        build_param_groups(
            TwoStream(), [ParamGroup("a", "rgb_encoder.*"), ParamGroup("b", "*.0.weight"), ParamGroup("rest")]
        )
    message = str(err.value)
    assert "'rgb_encoder.0.weight'" in message and "'a'" in message and "'b'" in message
    assert "rgb_encoder.*" in message and "*.0.weight" in message


def test_group_matching_nothing_lists_patterns_and_parameters():
    with pytest.raises(ValueError) as err:
        build_param_groups(TwoStream(), [ParamGroup("rgb", "encoders.rgb.*"), ParamGroup("rest")])
    message = str(err.value)
    assert "'rgb'" in message and "encoders.rgb.*" in message and "rgb_encoder.0.weight" in message


def test_group_matching_only_frozen_parameters_says_so():
    model = TwoStream()
    model.head.requires_grad_(False)
    with pytest.raises(ValueError, match="only frozen parameters.*head.weight"):
        build_param_groups(model, [ParamGroup("head", "head.*"), ParamGroup("rest")])


def test_leftover_without_catch_all_lists_them():
    with pytest.raises(ValueError) as err:
        build_param_groups(TwoStream(), [ParamGroup("rgb", "rgb_encoder.*"), ParamGroup("depth", "depth_encoder.*")])
    message = str(err.value)
    assert "4 trainable parameter(s) match no group" in message and "'fusion.weight'" in message
    assert "catch-all" in message


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ([ParamGroup("a", "rgb_*"), ParamGroup("a")], "unique"),
        ([ParamGroup("a"), ParamGroup("b")], "catch-all"),
        ([ParamGroup("a", "*"), ParamGroup("b")], "receives no parameter"),
    ],
)
def test_bad_group_sets(groups, match):
    with pytest.raises(ValueError, match=match):
        build_param_groups(TwoStream(), groups)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": ""}, "non-empty name"),
        ({"name": "a/b"}, "without '/'"),
        ({"name": "a", "lr": 1.0, "lr_scale": 2.0}, "either lr or lr_scale"),
        ({"name": "a", "lr": -1.0}, "lr must be >= 0"),
        ({"name": "a", "interval": "batch"}, "interval"),
        ({"name": "a", "options": {"lr": 1.0}}, "own fields"),
        ({"name": "a", "warmup_start_factor": 0.0}, "warmup_start_factor"),
        ({"name": "a", "params": []}, "empty list"),
        ({"name": "a", "scheduler": "cosine"}, "callable"),
    ],
)
def test_param_group_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParamGroup(**kwargs)


def test_factory_that_drops_groups_is_refused():
    with pytest.raises(ValueError, match="did not keep the named param groups"):
        configure_grouped_optimizers(
            TwoStream(), lambda groups: torch.optim.SGD(TwoStream().parameters(), lr=0.1), [ParamGroup("all")]
        )


def test_per_group_clipping_matches_torch_on_each_group_alone():
    torch.manual_seed(0)
    model = TwoStream()
    groups = [
        ParamGroup("rgb", "rgb_encoder.*", max_grad_norm=5.0),
        ParamGroup("depth", "depth_encoder.*"),
        ParamGroup("fusion", ["fusion.*", "head.*"], max_grad_norm=1.0),
    ]
    optimizer = configure_grouped_optimizers(
        model, partial(torch.optim.SGD, lr=0.1), groups, no_weight_decay_on_norm_and_bias=True
    )["optimizer"]
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 10
    expected = {}
    for name, prefixes in {"rgb": ("rgb_encoder",), "fusion": ("fusion", "head")}.items():
        grads = [p.grad.clone() for n, p in model.named_parameters() if n.startswith(prefixes)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        expected[name] = norm
    depth_before = [p.grad.clone() for p in model.depth_encoder.parameters()]
    norms = clip_grad_norm_per_group(optimizer)
    assert set(norms) == {"rgb", "fusion"}
    for name, prefixes, max_norm in [("rgb", ("rgb_encoder",), 5.0), ("fusion", ("fusion", "head"), 1.0)]:
        torch.testing.assert_close(norms[name], expected[name])
        after = torch.linalg.vector_norm(
            torch.stack(
                [torch.linalg.vector_norm(p.grad) for n, p in model.named_parameters() if n.startswith(prefixes)]
            )
        )
        torch.testing.assert_close(after, torch.tensor(max_norm), rtol=1e-4, atol=0)
    for before, p in zip(depth_before, model.depth_encoder.parameters(), strict=True):
        assert torch.equal(before, p.grad)
