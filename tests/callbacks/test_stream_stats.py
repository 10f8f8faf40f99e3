import math

import pytest
import torch

from mslightning.callbacks.stream_stats import (
    conditional_learning_speed,
    count_nonfinite,
    discrepancy_ratios,
    foreach_norms,
    grad_stats,
    overfitting_score,
    overfitting_to_generalization_ratio,
    safe_ratio,
    total_norm,
    update_norm,
    weight_stats,
)


def _tensors(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for shape in [(4, 3, 3, 3), (4,), (7, 5), (1,)]]


def test_foreach_norms_match_linalg_per_tensor():
    tensors = _tensors()
    expected = torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors]).float()
    torch.testing.assert_close(foreach_norms(tensors), expected, rtol=1e-6, atol=0)


def test_foreach_norms_mixed_and_low_precision_dtypes_are_float32():
    tensors = _tensors()
    mixed = [tensors[0].bfloat16(), tensors[1], tensors[2].half(), tensors[3].double()]
    norms = foreach_norms(mixed)
    assert norms.dtype == torch.float32
    expected = torch.stack([torch.linalg.vector_norm(t.double()) for t in mixed]).float()
    torch.testing.assert_close(norms, expected, rtol=1e-3, atol=0)


def test_foreach_norms_rejects_empty():
    with pytest.raises(ValueError, match="at least one tensor"):
        foreach_norms([])


def test_grad_stats_equal_norm_and_abs_max_of_the_concatenation():
    grads = _tensors()
    grads[2][3, 1] = -50.0  # the largest |g| is negative
    flat = torch.cat([g.double().flatten() for g in grads])
    norm, abs_max = grad_stats(grads)
    assert norm.item() == pytest.approx(torch.linalg.vector_norm(flat).item(), rel=1e-6)
    assert abs_max.item() == 50.0


def test_grad_stats_empty_stream_is_zero_and_nonfinite_propagates():
    norm, abs_max = grad_stats([])
    assert norm.item() == 0.0 and abs_max.item() == 0.0
    grads = _tensors()
    grads[1][0] = float("nan")
    norm, abs_max = grad_stats(grads)
    assert math.isnan(norm.item()) and math.isnan(abs_max.item())
    grads = _tensors()
    grads[0][0, 0, 0, 0] = float("-inf")
    assert not math.isfinite(grad_stats(grads)[1].item())


def test_grad_stats_sparse_gradient():
    dense = torch.zeros(5, 3)
    dense[1] = torch.tensor([3.0, 0.0, -4.0])
    norm, abs_max = grad_stats([dense.to_sparse()])
    assert norm.item() == pytest.approx(5.0) and abs_max.item() == 4.0


def test_weight_stats_norm_and_sum():
    weights = _tensors(1)
    flat = torch.cat([w.double().flatten() for w in weights])
    norm, total = weight_stats(weights)
    assert norm.item() == pytest.approx(torch.linalg.vector_norm(flat).item(), rel=1e-6)
    assert total.item() == pytest.approx(flat.sum().item(), rel=1e-5, abs=1e-5)


def test_update_norm_is_norm_of_the_difference():
    before = _tensors(2)
    after = [b + 0.01 * d for b, d in zip(before, _tensors(3), strict=True)]
    expected = torch.linalg.vector_norm(
        torch.cat([(a - b).double().flatten() for a, b in zip(after, before, strict=True)])
    )
    scratch = [b.clone() for b in before]
    assert update_norm(scratch, after).item() == pytest.approx(expected.item(), rel=1e-4)
    assert update_norm([], []).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_update_norm_is_accurate_on_large_tensors_with_remainders(dtype):
    # large tensors are reduced one by one (row norms + remainder), small ones with foreach
    gen = torch.Generator().manual_seed(1)
    shapes = [(256, 256, 3, 3), (40_000,), (1 << 15,), (7, 3), (0,)]
    before = [torch.rand(*s, generator=gen).to(dtype) for s in shapes]
    after = [b + (1e-2 * torch.randn(b.shape, generator=gen)).to(dtype) for b in before]
    rel = 1e-5 if dtype == torch.bfloat16 else 1e-6  # bf16 rows accumulate in float32
    assert total_norm(after).item() == pytest.approx(
        torch.linalg.vector_norm(torch.cat([a.double().flatten() for a in after])).item(), rel=rel
    )
    expected = torch.linalg.vector_norm(
        torch.cat([(a.double() - b.double()).flatten() for a, b in zip(after, before, strict=True)])
    ).item()
    scratch = [b.clone() for b in before]
    assert update_norm(scratch, after).item() == pytest.approx(expected, rel=rel)
    for difference, a, b in zip(scratch, after, before, strict=True):  # scratch holds before - after
        torch.testing.assert_close(difference, b - a)


def test_count_nonfinite_counts_nan_and_both_infinities():
    tensors = _tensors()
    tensors[0][0, 0, 0, :2] = float("nan")
    tensors[2][1, 1] = float("inf")
    tensors[3][0] = float("-inf")
    assert count_nonfinite(tensors).item() == 4
    assert count_nonfinite([]).item() == 0


def test_safe_ratio():
    assert safe_ratio(3.0, 2.0) == 1.5
    assert safe_ratio(1.0, 0.0) is None
    assert safe_ratio(float("nan"), 1.0) is None
    assert safe_ratio(1.0, float("inf")) is None


def test_overfitting_score_is_the_predecessors_sum():
    # the predecessor's documented example: acc gap 0.94, loss gap 3.21 -> 4.15
    assert overfitting_score(0.94, 3.21) == pytest.approx(4.15)


def test_ogr_follows_wang_et_al():
    # O: 0.5 -> 0.9 (dO = 0.4); L_val: 1.5 -> 1.3 (dG = 0.2) -> OGR = 2
    assert overfitting_to_generalization_ratio(1.0, 1.5, 0.4, 1.3) == pytest.approx(2.0)
    # generalising while the gap shrinks: dO = -0.2, dG = 0.4 -> 0.5
    assert overfitting_to_generalization_ratio(1.0, 1.5, 0.8, 1.1) == pytest.approx(0.5)
    assert overfitting_to_generalization_ratio(1.0, 1.5, 0.5, 1.5) is None  # dG = 0
    assert overfitting_to_generalization_ratio(1.0, float("nan"), 0.5, 1.5) is None


def test_ogr_is_undefined_when_the_val_loss_change_is_tiny_relative_to_the_losses():
    # measured: a stream at 100% validation accuracy, losses ~0.002-0.02, dG 6e-5 -> |dO/dG| = 237
    assert overfitting_to_generalization_ratio(0.0195, 0.001861, 0.0049, 0.0018) is None
    # the same absolute dG on losses of order 1 is just as undefined; 3% of the loss is a real change
    assert overfitting_to_generalization_ratio(0.66, 0.6006, 0.6557, 0.59999) is None
    assert overfitting_to_generalization_ratio(1.0, 1.0, 0.9, 0.97) == pytest.approx(0.07 / 0.03)
    assert overfitting_to_generalization_ratio(1.0, 1.0, 0.9, 0.97, rel_tol=0.05) is None
    # what the rule lets through is bounded by 2 / rel_tol
    assert overfitting_to_generalization_ratio(0.0, 1.0, 1.0, 0.979) <= 2 / 0.02
    assert overfitting_to_generalization_ratio(0.0, 0.0, 0.0, 0.0) is None


def test_discrepancy_ratio_two_streams_is_the_papers_ratio():
    ratios = discrepancy_ratios({"rgb": 0.8, "depth": 0.4})
    assert ratios == pytest.approx({"rgb": 2.0, "depth": 0.5})


def test_discrepancy_ratio_n_streams_against_mean_of_others():
    ratios = discrepancy_ratios({"a": 0.9, "b": 0.3, "c": 0.6})
    assert ratios["a"] == pytest.approx(0.9 / 0.45)
    assert ratios["b"] == pytest.approx(0.3 / 0.75)
    assert discrepancy_ratios({"only": 0.5}) == {}
    assert "a" not in discrepancy_ratios({"a": 0.5, "b": 0.0})


def test_conditional_learning_speed():
    assert conditional_learning_speed(100.0, 1.0) == pytest.approx(2.0)
    assert conditional_learning_speed(1.0, 10.0) == pytest.approx(-1.0)
    assert conditional_learning_speed(0.0, 1.0) is None
    assert conditional_learning_speed(1.0, float("inf")) is None


def test_total_norm_is_accurate_on_resnet_sized_tensors():
    # a plain float32 CPU norm of ~2.4M elements is off by ~1e-5..1e-4; chunking fixes that
    gen = torch.Generator().manual_seed(0)
    big = [torch.rand(512, 512, 3, 3, generator=gen), torch.rand(1000, generator=gen)]
    exact = torch.linalg.vector_norm(torch.cat([t.double().flatten() for t in big])).item()
    assert total_norm(big).item() == pytest.approx(exact, rel=1e-6)
    assert total_norm([]).item() == 0.0
