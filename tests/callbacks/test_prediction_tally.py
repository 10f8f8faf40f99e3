"""PredictionTally against torchmetrics and torch, on tiny random batches, without a Trainer."""

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torchmetrics.functional import pearson_corrcoef
from torchmetrics.functional.classification import binary_accuracy, multiclass_accuracy

from mslightning.callbacks.prediction_tally import PredictionTally
from mslightning.streams import IGNORE_INDEX, ClassificationOutputs, PoissonOutputs, RankingOutputs

STREAMS = ("rgb", "depth")


def _batches(make, n=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [make(generator) for _ in range(n)]


@pytest.mark.parametrize("flush_every", [1, 2, 32])
def test_classification_equals_torchmetrics_over_the_epoch(flush_every):
    def make(g):
        target = torch.randint(0, 4, (7,), generator=g)
        target[0] = IGNORE_INDEX
        return ClassificationOutputs({s: torch.randn(7, 4, generator=g) for s in STREAMS}, target)

    batches = _batches(make)
    tally = PredictionTally(flush_every=flush_every)
    for outputs in batches:
        outputs.check(STREAMS)
        tally.update(outputs)
    result = tally.compute()
    target = torch.cat([o.target for o in batches])
    kept = target != IGNORE_INDEX
    for s in STREAMS:
        logits = torch.cat([o.predictions[s] for o in batches])
        acc = multiclass_accuracy(logits, target, num_classes=4, average="micro", ignore_index=IGNORE_INDEX)
        assert result[s]["score"].item() == pytest.approx(acc.item(), abs=1e-6)
        assert result[s]["loss"].item() == pytest.approx(F.cross_entropy(logits.double(), target).item(), rel=1e-6)
        true_prob = logits.double().softmax(1)[kept].gather(1, target[kept, None]).mean()
        assert result[s]["confidence"].item() == pytest.approx(true_prob.item(), rel=1e-6)
    assert tally.chance == {"rgb": 0.25, "depth": 0.25}


def test_binary_head_is_two_classes_zero_and_z():
    z = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    target = torch.tensor([1, 1, 0, 0])
    tally = PredictionTally()
    tally.update(ClassificationOutputs({"rgb": z}, target))
    result = tally.compute()["rgb"]
    assert result["score"].item() == pytest.approx(binary_accuracy(z.squeeze(1).sigmoid(), target).item())
    assert result["loss"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(z.squeeze(1), target.float()).item()
    )


def test_ranking_pair_accuracy_ignores_ties_and_log_loss_counts_all():
    def make(g):
        target = torch.rand(8, generator=g).round()
        target[:2] = 0.5  # ties
        target[2] = 0.7  # a soft preference for a
        return RankingOutputs({s: torch.randn(8, generator=g) for s in STREAMS}, target)

    batches = _batches(make)
    tally = PredictionTally(flush_every=2)
    for outputs in batches:
        outputs.check(STREAMS)
        tally.update(outputs)
    result = tally.compute()
    target = torch.cat([o.target for o in batches])
    decided = target != 0.5
    for s in STREAMS:
        z = torch.cat([o.predictions[s] for o in batches])
        acc = binary_accuracy(z[decided].sigmoid(), (target[decided] > 0.5).long(), threshold=0.5)
        assert result[s]["score"].item() == pytest.approx(acc.item(), abs=1e-6)
        log_loss = F.binary_cross_entropy_with_logits(z.double(), target.double())
        assert result[s]["loss"].item() == pytest.approx(log_loss.item(), rel=1e-6)
        p = z.double().sigmoid()
        preferred = torch.where(target > 0.5, p, 1 - p)[decided].mean()
        assert result[s]["confidence"].item() == pytest.approx(preferred.item(), rel=1e-6)
    assert tally.chance["rgb"] == 0.5


def test_poisson_correlation_per_neuron_over_every_bin_and_sessions():
    generator = torch.Generator().manual_seed(0)
    batches = []
    for i in range(6):
        session, neurons = ("s1", 3) if i % 2 else ("s2", 2)
        counts = torch.poisson(torch.full((2, 5, neurons), 2.0), generator=generator)
        rates = {s: torch.rand(2, 5, neurons, generator=generator) * 3 + 0.1 for s in STREAMS}
        mask = torch.ones(2, 5, neurons, dtype=torch.bool)
        mask[:, :1] = False  # burn-in bins are not scored
        batches.append(PoissonOutputs(rates, counts, mask=mask, session=session))
    tally = PredictionTally(flush_every=4)
    for outputs in batches:
        outputs.check(STREAMS)
        tally.update(outputs)
    result = tally.compute()
    for s in STREAMS:
        per_neuron, nll_sum, bins = [], 0.0, 0
        for session in ("s1", "s2"):
            own = [o for o in batches if o.session == session]
            x = torch.cat([o.predictions[s][o.mask].reshape(-1, o.target.shape[-1]) for o in own]).double()
            y = torch.cat([o.target[o.mask].reshape(-1, o.target.shape[-1]) for o in own]).double()
            per_neuron.append(pearson_corrcoef(x, y))
            nll_sum += F.poisson_nll_loss(x, y, log_input=False, eps=1e-8, reduction="sum").item()
            bins += y.numel()
        expected = torch.cat(per_neuron).mean()
        assert result[s]["score"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert result[s]["loss"].item() == pytest.approx(nll_sum / bins, rel=1e-5)
        assert result[s]["confidence"].item() == pytest.approx(max(expected.item(), 0.0), rel=1e-5)


def test_reduce_sum_combines_processes_and_reset_forgets():
    outputs = ClassificationOutputs({"rgb": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}, torch.tensor([0, 0]))
    tally = PredictionTally()
    tally.update(outputs)
    doubled = tally.compute(reduce_sum=lambda t: t * 2)  # two identical ranks
    assert doubled["rgb"]["score"].item() == pytest.approx(0.5)
    tally.reset()
    assert not tally.seen and tally.compute() == {}


def test_nothing_scored_is_nan_not_an_error():
    tally = PredictionTally()
    tally.update(ClassificationOutputs({"rgb": torch.randn(2, 3)}, torch.tensor([IGNORE_INDEX, IGNORE_INDEX])))
    assert tally.compute()["rgb"]["score"].isnan()


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (ClassificationOutputs({"rgb": torch.randn(3, 4)}, torch.zeros(2, dtype=torch.long)), "B = 2"),
        (ClassificationOutputs({"ir": torch.randn(2, 4)}, torch.zeros(2, dtype=torch.long)), "not monitored"),
        (RankingOutputs({"rgb": torch.randn(2, 3)}, torch.zeros(2)), r"\(B,\) or \(B, 1\)"),
        (RankingOutputs({"rgb": torch.randn(2)}, torch.zeros(2, dtype=torch.long)), "float probabilities"),
        (PoissonOutputs({"rgb": torch.rand(2, 3)}, torch.zeros(2, 4)), "target's shape"),
        (PoissonOutputs({"rgb": torch.rand(2, 3)}, torch.zeros(2, 3), mask=torch.ones(3, 3)), "mask"),
        (
            ClassificationOutputs({"rgb": torch.zeros(2, 4, dtype=torch.long)}, torch.zeros(2, dtype=torch.long)),
            "floating-point",
        ),
    ],
)
def test_bad_outputs_name_the_problem(outputs, message):
    with pytest.raises(ValueError, match=message):
        outputs.check(["rgb", "depth"])


def test_changing_task_within_a_run_is_an_error():
    tally = PredictionTally()
    tally.update(ClassificationOutputs({"rgb": torch.randn(2, 3)}, torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="changed task"):
        tally.update(RankingOutputs({"rgb": torch.randn(2)}, torch.tensor([1.0, 0.0])))


def test_nan_in_unrecorded_bins_is_ignored():
    counts = torch.tensor([[1.0, 2.0], [0.0, 3.0], [4.0, 1.0], [float("nan"), float("nan")]])
    rates = torch.tensor([[1.5, 2.0], [0.5, 2.5], [3.0, 1.5], [float("nan"), 1.0]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [False, False]])
    tally = PredictionTally()
    tally.update(PoissonOutputs({"rgb": rates}, counts, mask=mask))
    expected = PredictionTally()
    expected.update(PoissonOutputs({"rgb": rates[:3]}, counts[:3]))
    got, want = tally.compute()["rgb"], expected.compute()["rgb"]
    for name in ("score", "loss"):
        assert got[name].item() == pytest.approx(want[name].item(), rel=1e-6)


def test_processes_that_saw_different_sessions_agree_on_the_sums():
    def batch(session, neurons, seed):
        g = torch.Generator().manual_seed(seed)
        counts = torch.poisson(torch.full((2, 4, neurons), 2.0), generator=g)
        return PoissonOutputs({"rgb": torch.rand(2, 4, neurons, generator=g) + 0.1}, counts, session=session)

    rank_batches = [[batch("a", 3, 0), batch("b", 2, 1)], [batch("b", 2, 2)]]  # rank 1 never saw session a
    tallies = [PredictionTally(), PredictionTally()]
    for tally, batches in zip(tallies, rank_batches, strict=True):
        for b in batches:
            tally.update(b)
    states = [
        (t.task, {k: tuple(v.shape) for k, v in t._sums.items()} if t._flush() is None else {}, t.chance)
        for t in tallies
    ]
    flats = []
    tallies[1].compute(reduce_sum=lambda t: flats.append(t) or t, gather=lambda _: states)
    combined = tallies[0].compute(reduce_sum=lambda t: t + flats[0], gather=lambda _: states)
    single = PredictionTally()
    for b in [*rank_batches[0], *rank_batches[1]]:
        single.update(b)
    expected = single.compute()
    for name in ("score", "loss"):
        assert combined["rgb"][name].item() == pytest.approx(expected["rgb"][name].item(), rel=1e-6)
    empty = PredictionTally()  # a process without any batch still takes part and gets the same keys
    assert empty.compute(reduce_sum=lambda t: t + flats[0] * 0, gather=lambda _: states)["rgb"]["score"].isnan()


@pytest.mark.parametrize("kwargs", [{"flush_every": 0}, {"max_pending_elements": -1}, {"flush_every": True}])
def test_bad_tally_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be an int >= 1"):
        PredictionTally(**kwargs)
