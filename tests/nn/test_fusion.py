import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mslightning.nn import (
    AttentionFusion,
    ConcatFusion,
    Fusion,
    GatedFusion,
    MultiplicativeAdditionFusion,
    MultiplicativeFusion,
    StreamHeads,
    SumFusion,
    WeightedFusion,
)

STREAMS = ("rgb", "depth", "ir")
UNEQUAL = {"rgb": 6, "depth": 10, "ir": 4}
EQUAL = dict.fromkeys(STREAMS, 8)
BATCH = 4

# (class, options, needs equal widths, expected out_features as a function of N)
CASES: list[tuple[type[Fusion], dict[str, Any], bool, Any]] = [
    (ConcatFusion, {}, False, None),
    (SumFusion, {}, True, lambda n: 8),
    (SumFusion, {"dim": 5}, False, lambda n: 5),
    (WeightedFusion, {}, True, lambda n: 8),
    (WeightedFusion, {"dim": 5}, False, lambda n: 5),
    (GatedFusion, {}, True, lambda n: 8),
    (GatedFusion, {"dim": 5, "hidden": 7}, False, lambda n: 5),
    (MultiplicativeFusion, {}, True, lambda n: 8),
    (MultiplicativeFusion, {"dim": 5}, False, lambda n: 5),
    (MultiplicativeAdditionFusion, {"dim": 5}, False, lambda n: 10),
    (AttentionFusion, {"dim": 8, "num_heads": 2}, False, lambda n: 8),
    (AttentionFusion, {"num_heads": 2, "pool": "flatten", "norm_first": True}, True, lambda n: 8 * n),
]
CASE_IDS = [f"{cls.__name__}-{opts}" for cls, opts, _, _ in CASES]
INTERNALS = {WeightedFusion: "weight", GatedFusion: "gate", AttentionFusion: "attention"}


def _widths(n: int, equal: bool) -> dict[str, int]:
    source = EQUAL if equal else UNEQUAL
    return {name: source[name] for name in STREAMS[:n]}


def _features(widths: dict[str, int], seed: int = 0, grad: bool = False) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(BATCH, w, generator=gen).requires_grad_(grad) for name, w in widths.items()}


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize(("cls", "options", "equal", "out"), CASES, ids=CASE_IDS)
def test_forward_backward_internals(cls: type[Fusion], options: dict[str, Any], equal: bool, out: Any, n: int) -> None:
    torch.manual_seed(0)
    widths = _widths(n, equal)
    fusion = cls(widths, **options)
    assert fusion.stream_names == tuple(widths)
    expected_width = sum(widths.values()) if out is None else out(n)
    assert fusion.out_features == expected_width

    features = _features(widths, grad=True)
    fused = fusion(features)
    assert fused.shape == (BATCH, expected_width)
    # A random readout, so no gradient can cancel by symmetry (e.g. through a softmax).
    (fused * torch.randn_like(fused)).sum().backward()
    for name, x in features.items():
        assert x.grad is not None and x.grad.abs().sum() > 0, f"no gradient reaches {name!r}"

    internals = fusion.internals()
    if cls in INTERNALS:
        assert list(internals) == [INTERNALS[cls]]
        values = internals[INTERNALS[cls]]
        assert list(values) == list(widths)
        for value in values.values():
            assert value.ndim == 0 and torch.isfinite(value) and not value.requires_grad
        # Weights, gates and received attention are each a distribution over streams.
        assert math.isclose(float(sum(values.values())), 1.0, rel_tol=1e-5)
    else:
        assert internals == {}


@pytest.mark.parametrize(("cls", "options", "equal", "out"), CASES, ids=CASE_IDS)
def test_key_order_does_not_matter(cls: type[Fusion], options: dict[str, Any], equal: bool, out: Any) -> None:
    widths = _widths(3, equal)
    fusion = cls(widths, **options).eval()
    features = _features(widths)
    reversed_features = dict(reversed(list(features.items())))
    torch.testing.assert_close(fusion(reversed_features), fusion(features))


def test_oracles_without_projection() -> None:
    widths = _widths(3, equal=True)
    f = _features(widths)
    a, b, c = f.values()
    torch.testing.assert_close(ConcatFusion(widths)(f), torch.cat([a, b, c], dim=1))
    torch.testing.assert_close(SumFusion(widths)(f), a + b + c)
    torch.testing.assert_close(MultiplicativeFusion(widths)(f), a * b * c)
    torch.testing.assert_close(MultiplicativeAdditionFusion(widths)(f), torch.cat([a * b * c, a + b + c], dim=1))
    # Zero-initialised logits and gates start both fusions at the plain mean.
    torch.testing.assert_close(WeightedFusion(widths)(f), (a + b + c) / 3)
    torch.testing.assert_close(GatedFusion(widths)(f), (a + b + c) / 3)


def test_sum_with_projection_oracle() -> None:
    widths = _widths(2, equal=False)
    fusion = SumFusion(widths, dim=5)
    f = _features(widths)
    expected = sum(
        nn.functional.linear(f[name], fusion.projections[name].weight, fusion.projections[name].bias) for name in widths
    )
    torch.testing.assert_close(fusion(f), expected)
    assert {n for n, _ in fusion.named_parameters()} == {
        "projections.rgb.weight",
        "projections.rgb.bias",
        "projections.depth.weight",
        "projections.depth.bias",
    }


def test_weighted_fusion_weights() -> None:
    widths = _widths(2, equal=True)
    fusion = WeightedFusion(widths)
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([math.log(3.0), 0.0]))
    f = _features(widths)
    torch.testing.assert_close(fusion(f), 0.75 * f["rgb"] + 0.25 * f["depth"])
    weights = fusion.internals()["weight"]
    torch.testing.assert_close(weights["rgb"], torch.tensor(0.75))
    torch.testing.assert_close(weights["depth"], torch.tensor(0.25))


def test_gated_fusion_oracle_and_internals() -> None:
    torch.manual_seed(0)
    widths = _widths(3, equal=True)
    fusion = GatedFusion(widths)
    assert fusion.internals() == {}
    nn.init.normal_(fusion.gate.weight)
    f = _features(widths)
    gates = torch.softmax(fusion.gate(torch.cat(list(f.values()), dim=1)), dim=1)
    expected = sum(gates[:, i : i + 1] * x for i, x in enumerate(f.values()))
    torch.testing.assert_close(fusion(f), expected)
    mean_gates = fusion.internals()["gate"]
    for i, name in enumerate(widths):
        torch.testing.assert_close(mean_gates[name], gates[:, i].mean().detach())


@pytest.mark.parametrize("norm_first", [False, True])
def test_attention_weights_match_multihead_attention(norm_first: bool) -> None:
    torch.manual_seed(0)
    widths = _widths(3, equal=False)
    fusion = AttentionFusion(widths, dim=8, num_heads=2, norm_first=norm_first).eval()
    assert fusion.internals() == {}
    f = _features(widths)
    fused = fusion(f)

    layer = fusion.encoder_layer
    tokens = torch.stack([fusion.projections[n](f[n]) for n in widths], dim=1)
    tokens = tokens + fusion.stream_embedding
    torch.testing.assert_close(fused, layer(tokens).mean(dim=1))
    x = layer.norm1(tokens) if norm_first else tokens
    _, expected = layer.self_attn(x, x, x, need_weights=True, average_attn_weights=True)
    torch.testing.assert_close(fusion.attention_weights(), expected.detach())
    received = fusion.internals()["attention"]
    for i, name in enumerate(widths):
        torch.testing.assert_close(received[name], expected[:, :, i].mean().detach())


def test_missing_and_unexpected_stream_named() -> None:
    fusion = ConcatFusion({"rgb": 4, "depth": 4})
    with pytest.raises(ValueError, match=r"missing stream\(s\) \['depth'\]"):
        fusion({"rgb": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match=r"unexpected stream\(s\) \['ir'\]"):
        fusion({"rgb": torch.zeros(2, 4), "depth": torch.zeros(2, 4), "ir": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="got Tensor"):
        fusion(torch.zeros(2, 8))


@pytest.mark.parametrize(("cls", "options", "equal", "out"), CASES, ids=CASE_IDS)
def test_wrong_width_named(cls: type[Fusion], options: dict[str, Any], equal: bool, out: Any) -> None:
    widths = _widths(2, equal)
    fusion = cls(widths, **options)
    features = _features(widths)
    features["depth"] = torch.zeros(BATCH, widths["depth"] + 1)
    shape = f"\\(B, {widths['depth']}\\), got \\({BATCH}, {widths['depth'] + 1}\\)"
    with pytest.raises(ValueError, match=f"stream 'depth' features must have shape {shape}"):
        fusion(features)


def test_batch_size_mismatch_named() -> None:
    fusion = SumFusion({"rgb": 4, "depth": 4})
    with pytest.raises(ValueError, match="disagree on batch size: {'rgb': 2, 'depth': 3}"):
        fusion({"rgb": torch.zeros(2, 4), "depth": torch.zeros(3, 4)})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ConcatFusion({}), "non-empty mapping"),
        (lambda: ConcatFusion({"rgb": 0}), "stream 'rgb' feature width must be a positive int, got 0"),
        (lambda: ConcatFusion({"": 3}), "stream name '' is not valid"),
        (lambda: SumFusion({"rgb": 4, "depth": 6}), "pass dim=<int>"),
        (lambda: GatedFusion({"rgb": 4}, dim=0), "dim must be a positive int or None, got 0"),
        (lambda: GatedFusion({"rgb": 4}, hidden=-1), "hidden must be a positive int or None, got -1"),
        (lambda: AttentionFusion({"rgb": 6}, num_heads=4), "dim=6 must be divisible by num_heads=4"),
        (lambda: AttentionFusion({"rgb": 8}, pool="max"), "pool must be 'mean' or 'flatten', got 'max'"),
        (lambda: AttentionFusion({"rgb": 8}, dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_construction(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_fusion_from_class_path() -> None:
    # The YAML contract: the owner passes in_features positionally, the config the rest.
    from lightning.pytorch.cli import instantiate_class

    fusion = instantiate_class(
        ({"rgb": 6, "depth": 10},),
        {"class_path": "mslightning.nn.GatedFusion", "init_args": {"dim": 4, "hidden": 3}},
    )
    assert isinstance(fusion, GatedFusion)
    assert fusion.out_features == 4


def test_stream_heads() -> None:
    widths = _widths(3, equal=False)
    heads = StreamHeads(widths, num_classes=5, dropout=0.5).eval()
    f = _features(widths)
    logits = heads(f)
    assert list(logits) == list(widths)
    for name, x in f.items():
        linear = heads[name].linear
        torch.testing.assert_close(logits[name], nn.functional.linear(x, linear.weight, linear.bias))
    assert "depth.linear.weight" in dict(heads.named_parameters())
    heads.train()
    torch.manual_seed(0)
    # Dropout with p=0.5 is active in training mode: some logits must change.
    assert not torch.allclose(heads(f)["rgb"], logits["rgb"])


def test_stream_heads_bad_input() -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        StreamHeads({"rgb": 4}, num_classes=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        StreamHeads({"rgb": 4}, num_classes=2, dropout=1.5)
    heads = StreamHeads({"rgb": 4, "depth": 4}, num_classes=2)
    with pytest.raises(ValueError, match=r"missing stream\(s\) \['depth'\]"):
        heads({"rgb": torch.zeros(1, 4)})
