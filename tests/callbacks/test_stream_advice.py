import dataclasses

import pytest

from mslightning.callbacks import Advisor, EpochEvidence, StreamThresholds

STREAMS = ["rgb", "depth"]


def _evidence(epoch: int = 0, **kwargs) -> EpochEvidence:
    defaults = {
        "grad_norm": {"rgb": 1.0, "depth": 1.0},
        "update_ratio": {"rgb": 1e-3, "depth": 1e-3},
        "weight_growth": {"rgb": 1.0, "depth": 1.0},
        "nonfinite": {"rgb": 0, "depth": 0},
        "lr": {"rgb": 1e-3, "depth": 5e-4},
        "weight_decay": {"rgb": 1e-2, "depth": 3e-2},
        "group": {"rgb": "rgb", "depth": "depth"},
    }
    defaults.update(kwargs)
    return EpochEvidence(epoch=epoch, streams=STREAMS, **defaults)


def _kinds(recs) -> set[tuple[str, str | None]]:
    return {(r.kind, r.stream) for r in recs}


def test_healthy_message_when_nothing_is_wrong():
    recs = Advisor(StreamThresholds()).advise(_evidence(overfit_score={"rgb": 0.1, "depth": 0.2}))
    assert [r.kind for r in recs] == ["healthy"]
    assert recs[0].stream is None and recs[0].message.startswith("healthy")


def test_overfitting_needs_patience_and_names_stream_and_knobs():
    advisor = Advisor(StreamThresholds(patience=2))
    scores = {"rgb": 0.2, "depth": 3.5}
    first = advisor.advise(_evidence(0, overfit_score=scores, ogr={"depth": 2.1}))
    assert _kinds(first) == {("pending", None)}  # one epoch is not enough for advice, nor "healthy"
    assert "overfitting on depth (overfitting score 3.5; 1 of 2 epochs)" in first[0].message
    second = advisor.advise(_evidence(1, overfit_score=scores, ogr={"depth": 2.1}))
    (rec,) = [r for r in second if r.kind == "overfitting"]
    assert rec.stream == "depth" and rec.epochs == 2 and rec.severity == "warning"
    msg = rec.message
    assert msg.startswith("depth overfitting (score 3.5")
    assert "OGR 2.1" in msg and "for 2 epochs" in msg
    assert "the depth group's weight_decay (now 0.03)" in msg and "lr (now 0.0005)" in msg
    assert not any(r.kind == "healthy" for r in second)


def test_one_noisy_epoch_does_not_flip_the_advice():
    advisor = Advisor(StreamThresholds(patience=2, release=0.8))
    bad, noisy_good, good = {"rgb": 0.1, "depth": 2.0}, {"rgb": 0.1, "depth": 0.5}, {"rgb": 0.1, "depth": 0.2}
    advisor.advise(_evidence(0, overfit_score=bad))
    assert ("overfitting", "depth") in _kinds(advisor.advise(_evidence(1, overfit_score=bad)))
    # one good epoch: still reported
    assert ("overfitting", "depth") in _kinds(advisor.advise(_evidence(2, overfit_score=noisy_good)))
    # bad again, then a score between the release (0.8) and the threshold (1.0): stays
    assert ("overfitting", "depth") in _kinds(advisor.advise(_evidence(3, overfit_score=bad)))
    assert ("overfitting", "depth") in _kinds(advisor.advise(_evidence(4, overfit_score={"rgb": 0.1, "depth": 0.9})))
    # two good epochs in a row: withdrawn
    advisor.advise(_evidence(5, overfit_score=good))
    assert _kinds(advisor.advise(_evidence(6, overfit_score=good))) == {("healthy", None)}


def test_single_noisy_bad_epoch_is_not_reported():
    advisor = Advisor(StreamThresholds(patience=2))
    for epoch, score in enumerate([0.1, 2.0, 0.1, 2.0, 0.1]):
        recs = advisor.advise(_evidence(epoch, overfit_score={"rgb": 0.1, "depth": score}))
        # the bad epochs are named as pending: no advice, but not "healthy" either
        assert _kinds(recs) == {("pending" if score > 1 else "healthy", None)}


def test_missing_evidence_keeps_the_state():
    advisor = Advisor(StreamThresholds(patience=2))
    advisor.advise(_evidence(0, overfit_score={"rgb": 0.1, "depth": 2.0}))
    advisor.advise(_evidence(1))  # no validation this epoch
    recs = advisor.advise(_evidence(2, overfit_score={"rgb": 0.1, "depth": 2.0}))
    assert ("overfitting", "depth") in _kinds(recs)


def test_stream_without_update_ratio_is_skipped_not_an_error():
    # e.g. a stream whose weights are all 0 on its only logged step: no ratio that epoch
    advisor = Advisor(StreamThresholds(patience=1))
    recs = advisor.advise(_evidence(update_ratio={"rgb": 1e-3}))
    assert _kinds(recs) == {("healthy", None)}
    recs = advisor.advise(_evidence(1, update_ratio={"rgb": 1e-9}))
    assert ("stalled", "rgb") in _kinds(recs)


def test_dominant_gradients():
    advisor = Advisor(StreamThresholds(patience=1, dominance_ratio=3.0))
    recs = advisor.advise(_evidence(grad_norm={"rgb": 8.0, "depth": 1.0}, discrepancy={"rgb": 1.7}))
    (rec,) = [r for r in recs if r.kind == "dominant"]
    assert rec.stream == "rgb"
    assert "rgb dominates the gradients (grad norm 8x that of depth" in rec.message
    assert "OGM-GE discrepancy 1.7" in rec.message
    assert "lower the rgb group's lr (now 0.001); if rgb's inputs or features are on a larger scale" in rec.message


def test_gradient_norms_a_few_times_apart_are_not_dominance():
    # healthy streams of different sizes, or one learning first, differ by up to ~4x (measured under SGD)
    advisor = Advisor(StreamThresholds(patience=1))
    assert _kinds(advisor.advise(_evidence(grad_norm={"rgb": 0.76, "depth": 2.85}))) == {("healthy", None)}


def test_slow_stream_by_update_ratio():
    advisor = Advisor(StreamThresholds(patience=1))
    recs = advisor.advise(_evidence(update_ratio={"rgb": 1e-3, "depth": 1e-5}))
    (rec,) = [r for r in recs if r.kind == "slow"]
    assert rec.stream == "depth"
    assert "depth learns slowly" in rec.message and "raise the depth group's lr (now 0.0005)" in rec.message


def test_stalled_replaces_slow():
    advisor = Advisor(StreamThresholds(patience=1))
    recs = advisor.advise(_evidence(update_ratio={"rgb": 1e-3, "depth": 0.0}))
    assert ("stalled", "depth") in _kinds(recs) and ("slow", "depth") not in _kinds(recs)


def test_weight_growth():
    advisor = Advisor(StreamThresholds(patience=1))
    recs = advisor.advise(_evidence(weight_growth={"rgb": 3.0, "depth": 1.1}))
    (rec,) = [r for r in recs if r.kind == "weight_growth"]
    assert rec.stream == "rgb" and "raise the rgb group's weight_decay (now 0.01)" in rec.message


def test_immediate_rules_and_frozen_is_information():
    advisor = Advisor(StreamThresholds(patience=3))
    recs = advisor.advise(
        _evidence(
            nonfinite={"rgb": 12, "depth": 0},
            frozen=frozenset({"depth"}),
            grad_norm={"rgb": 1.0},
            update_ratio={"rgb": 1e-3},
        )
    )
    assert ("nonfinite", "rgb") in _kinds(recs) and ("frozen", "depth") in _kinds(recs)
    nonfinite = next(r for r in recs if r.kind == "nonfinite")
    assert "12 NaN/Inf" in nonfinite.message
    frozen = next(r for r in recs if r.kind == "frozen")
    assert frozen.severity == "info" and recs[-1] is frozen  # warnings first
    # a frozen stream is never "slow" or "dominated": those rules skip it
    assert not {k for k, s in _kinds(recs) if s == "depth"} - {"frozen"}


def test_frozen_alone_still_reads_healthy():
    recs = Advisor(StreamThresholds()).advise(_evidence(frozen=frozenset({"depth"}), grad_norm={"rgb": 1.0}))
    assert [r.kind for r in recs] == ["frozen", "healthy"]


def test_not_optimized():
    recs = Advisor(StreamThresholds()).advise(_evidence(not_optimized=frozenset({"depth"})))
    assert ("not_optimized", "depth") in _kinds(recs)


def test_shared_group_note():
    advisor = Advisor(StreamThresholds(patience=1))
    recs = advisor.advise(
        _evidence(
            overfit_score={"rgb": 0.0, "depth": 2.0},
            group={"rgb": "all", "depth": "all"},
            shares_group_with={"rgb": ["depth"], "depth": ["rgb"]},
        )
    )
    (rec,) = [r for r in recs if r.kind == "overfitting"]
    assert "param group 'all''s (depth)" in rec.message
    assert "shares param group 'all' with rgb" in rec.message


def test_three_streams_dominance_needs_every_other_stream():
    advisor = Advisor(StreamThresholds(patience=1))
    ev = EpochEvidence(epoch=0, streams=["a", "b", "c"], grad_norm={"a": 12.0, "b": 1.0, "c": 4.0})
    assert not any(r.kind == "dominant" for r in advisor.advise(ev))
    ev = EpochEvidence(epoch=1, streams=["a", "b", "c"], grad_norm={"a": 12.0, "b": 1.0, "c": 2.0})
    (rec,) = [r for r in advisor.advise(ev) if r.kind == "dominant"]
    assert rec.stream == "a" and "b and c" in rec.message


def test_state_dict_round_trip_keeps_hysteresis():
    advisor = Advisor(StreamThresholds(patience=2))
    advisor.advise(_evidence(0, overfit_score={"rgb": 0.1, "depth": 2.0}))
    restored = Advisor(StreamThresholds(patience=2))
    restored.load_state_dict(advisor.state_dict())
    recs = restored.advise(_evidence(1, overfit_score={"rgb": 0.1, "depth": 2.0}))
    assert ("overfitting", "depth") in _kinds(recs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overfit_score": 0}, "overfit_score"),
        ({"dominance_ratio": 1.0}, "dominance_ratio"),
        ({"slow_ratio": 1.5}, "slow_ratio"),
        ({"stall_update_ratio": -1.0}, "stall_update_ratio"),
        ({"weight_growth_ratio": float("inf")}, "weight_growth_ratio"),
        ({"pretrained_lr_ratio": 1.0}, "pretrained_lr_ratio"),
        ({"low_update_ratio": 0.5}, "low_update_ratio"),
        ({"low_update_ratio": 1e-8}, "low_update_ratio"),
        ({"patience": 0}, "patience"),
        ({"release": 0.0}, "release"),
    ],
)
def test_thresholds_validate(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamThresholds(**kwargs)


def test_memorising_stream_is_not_called_slow_nor_the_reference_for_dominance():
    advisor = Advisor(StreamThresholds(patience=1))
    recs = advisor.advise(
        _evidence(
            overfit_score={"rgb": 0.1, "depth": 5.0},
            update_ratio={"rgb": 1e-3, "depth": 1e-6},  # depth fit its training set: tiny updates
            grad_norm={"rgb": 1.0, "depth": 1e-4},
        )
    )
    assert _kinds(recs) == {("overfitting", "depth")}


def test_slow_stream_makes_no_stream_dominant():
    advisor = Advisor(StreamThresholds(patience=1))
    # depth cannot move (lr too small) and keeps large gradients; rgb learns
    recs = advisor.advise(_evidence(update_ratio={"rgb": 1e-3, "depth": 1e-5}, grad_norm={"rgb": 1.0, "depth": 6.0}))
    assert _kinds(recs) == {("slow", "depth")}
    recs = advisor.advise(_evidence(update_ratio={"rgb": 1e-3, "depth": 1e-5}, grad_norm={"rgb": 6.0, "depth": 1.0}))
    assert _kinds(recs) == {("slow", "depth")}


def test_parts_in_series_are_not_compared_with_each_other():
    """A fine-tuned backbone at 1/10 of the head's lr: no 'slow'/'dominant' between backbone and head."""
    parts = ["backbone", "head"]
    evidence = {
        "streams": parts,
        "grad_norm": {"backbone": 40.0, "head": 1.0},
        "update_ratio": {"backbone": 1e-5, "head": 1e-3},
        "weight_growth": {"backbone": 1.0, "head": 3.0},
        "lr": {"backbone": 1e-5, "head": 1e-4},
        "group": {"backbone": "backbone", "head": "head"},
    }
    peers = Advisor(StreamThresholds(patience=1))
    compared = _kinds(peers.advise(EpochEvidence(epoch=0, **evidence)))
    assert ("slow", "backbone") in compared  # as peers, the 100x smaller update ratio would be "slow"
    in_series = Advisor(StreamThresholds(patience=1))
    recs = in_series.advise(EpochEvidence(epoch=0, compare_streams=False, **evidence))
    assert [r.kind for r in recs] == ["healthy"]
    assert "not compared with each other" in recs[0].message
    # the per-part rules still apply
    stalled = dict(evidence, update_ratio={"backbone": 1e-9, "head": 1e-3})
    recs = Advisor(StreamThresholds(patience=1)).advise(EpochEvidence(epoch=0, compare_streams=False, **stalled))
    assert _kinds(recs) == {("stalled", "backbone")}


def test_the_proxy_is_named_and_not_judged_in_absolute_terms():
    advisor = Advisor(StreamThresholds(patience=1))
    # Adam with track_updates=False: lr*||g||/||w|| can be tiny whatever the real update
    recs = advisor.advise(_evidence(update_ratio={"rgb": 1e-3, "depth": 7e-8}, update_ratio_is_proxy=True))
    assert ("stalled", "depth") not in _kinds(recs)
    (rec,) = [r for r in recs if r.kind == "slow"]
    assert rec.stream == "depth"
    assert "update ratio lr*||g||/||w|| (a proxy: track_updates=False) 7e-08" in rec.message


def test_no_step_measured_is_not_healthy():
    recs = Advisor(StreamThresholds()).advise(_evidence(grad_norm={}, update_ratio={}, weight_growth={}))
    assert [r.kind for r in recs] == ["not_measured"]
    assert recs[0].severity == "info" and "no optimizer step was logged" in recs[0].message


def test_a_step_far_too_large_says_lower_the_lr_of_that_stream_at_once():
    advisor = Advisor(StreamThresholds(patience=2))
    # rgb at a far too high lr: one huge step, then large gradients and inflated weights
    evidence = {
        "max_update_ratio": {"rgb": 0.47, "depth": 0.02},
        "update_ratio": {"rgb": 0.05, "depth": 1e-3},
        "grad_norm": {"rgb": 40.0, "depth": 1.0},
        "weight_growth": {"rgb": 12.0, "depth": 1.05},
    }
    recs = advisor.advise(_evidence(0, **evidence))
    assert _kinds(recs) == {("too_fast", "rgb")}  # not dominant, not "depth learns slowly", not weight_decay
    (rec,) = recs
    assert rec.severity == "warning"
    assert rec.message.startswith("rgb moves too fast (largest update ratio ||dw||/||w|| of one step 0.47, the")
    assert "weights are now x12" in rec.message and "lower the rgb group's lr (now 0.001)" in rec.message
    # later steps look small next to the inflated weights: still the same root cause while they stay inflated
    later = {**evidence, "max_update_ratio": {"rgb": 2e-3, "depth": 0.02}, "update_ratio": {"rgb": 1e-3, "depth": 1e-3}}
    for epoch in (1, 2, 3):
        (rec,) = advisor.advise(_evidence(epoch, **later))
        assert (rec.kind, rec.stream) == ("too_fast", "rgb") and "of one step 0.47," in rec.message
    # once the weights are back in line, the advice is withdrawn (after the patience)
    settled = {**later, "weight_growth": {"rgb": 1.1, "depth": 1.05}, "grad_norm": {"rgb": 1.0, "depth": 1.0}}
    advisor.advise(_evidence(4, **settled))
    assert _kinds(advisor.advise(_evidence(5, **settled))) == {("healthy", None)}


def test_too_fast_applies_to_parts_in_series_and_three_streams():
    series = _evidence(max_update_ratio={"rgb": 1e-3, "depth": 0.3}, compare_streams=False)
    assert _kinds(Advisor(StreamThresholds()).advise(series)) == {("too_fast", "depth")}
    three = EpochEvidence(
        epoch=0,
        streams=["a", "b", "c"],
        grad_norm={"a": 1.0, "b": 1.0, "c": 9.0},
        update_ratio={"a": 1e-3, "b": 2e-3, "c": 0.2},
        max_update_ratio={"a": 0.01, "b": 0.02, "c": 0.6},
    )
    assert _kinds(Advisor(StreamThresholds()).advise(three)) == {("too_fast", "c")}


def test_healthy_step_sizes_are_not_too_fast():
    recs = Advisor(StreamThresholds(patience=1)).advise(_evidence(max_update_ratio={"rgb": 0.021, "depth": 0.019}))
    assert [r.kind for r in recs] == ["healthy"]


def test_fast_threshold_must_be_above_the_stall_threshold():
    with pytest.raises(ValueError, match="fast_update_ratio"):
        StreamThresholds(fast_update_ratio=1e-8)


def test_every_stream_at_chance_says_nothing_learns():
    advisor = Advisor(StreamThresholds(patience=2))
    at_chance = {
        "train_acc": {"rgb": 0.26, "depth": 0.24},
        "val_acc": {"rgb": 0.25, "depth": 0.27},
        "chance": {"rgb": 0.25, "depth": 0.25},
        "update_ratio": {"rgb": 1e-3, "depth": 1e-5},  # would read "depth learns slowly" otherwise
        "predictions_seen": True,
    }
    (first,) = advisor.advise(_evidence(0, **at_chance))  # patience: not advice yet, and never "healthy"
    assert (first.kind, first.severity) == ("pending", "info")
    assert "every stream's accuracy at chance (train rgb 0.26, depth 0.24; 1 of 2 epochs)" in first.message
    (rec,) = advisor.advise(_evidence(1, **at_chance))
    assert (rec.kind, rec.stream, rec.severity) == ("not_learning", None, "warning")
    assert rec.message.startswith("no stream learns: every stream's accuracy is at chance (1/4 = 0.25)")
    # rgb's weights move at a normal rate: the lrs are not the cause, the data are
    assert "the lrs are not the cause: check the data pipeline" in rec.message
    assert "raise" not in rec.message
    # one stream above chance: that is not "nothing learns"
    one_learns = {**at_chance, "train_acc": {"rgb": 0.6, "depth": 0.24}, "val_acc": {"rgb": 0.55, "depth": 0.27}}
    fresh = Advisor(StreamThresholds(patience=1))
    assert ("not_learning", None) not in _kinds(fresh.advise(_evidence(0, **one_learns)))


def test_a_converged_stream_is_not_a_problem_nor_a_yardstick():
    advisor = Advisor(StreamThresholds(patience=1))
    # rgb solved its part: tiny gradients and updates; depth still learning normally
    evidence = {
        "train_acc": {"rgb": 1.0, "depth": 0.7},
        "val_acc": {"rgb": 0.995, "depth": 0.65},
        "chance": {"rgb": 0.25, "depth": 0.25},
        "grad_norm": {"rgb": 0.004, "depth": 1.0},
        "update_ratio": {"rgb": 2e-6, "depth": 1e-3},
        "overfit_score": {"rgb": 0.01, "depth": 0.1},
        "predictions_seen": True,
    }
    assert _kinds(advisor.advise(_evidence(0, **evidence))) == {("healthy", None)}


def test_overfitting_not_measured_names_the_right_reason():
    # the model returns per-stream predictions, but no validation ran this epoch: not "healthy"
    (seen,) = Advisor(StreamThresholds()).advise(_evidence(predictions_seen=True, train_acc={"rgb": 0.6}))
    assert (seen.kind, seen.severity) == ("not_measured", "info")
    assert seen.message.startswith("not measured, so not called healthy: overfitting not measured: no validation")
    assert "What was measured is fine (grad norm rgb 1, depth 1" in seen.message
    # a model without per-stream predictions can never measure it: healthy, and the message says so
    (unseen,) = Advisor(StreamThresholds()).advise(_evidence())
    assert unseen.kind == "healthy"
    assert "overfitting not measured: the model returns no per-stream predictions" in unseen.message


def test_no_step_logged_but_validation_ran_says_what_was_measured():
    ev = _evidence(
        grad_norm={},
        update_ratio={},
        weight_growth={},
        predictions_seen=True,
        overfit_score={"rgb": 0.1, "depth": 0.2},
        val_acc={"rgb": 0.7, "depth": 0.6},
    )
    (rec,) = Advisor(StreamThresholds()).advise(ev)
    assert rec.kind == "not_measured"
    assert "gradients and updates not measured: no optimizer step was logged in this epoch" in rec.message
    assert "What was measured is fine (overfitting score rgb 0.1, depth 0.2)" in rec.message


def test_lrs_far_too_small_are_named_as_the_cause_of_not_learning():
    advisor = Advisor(StreamThresholds(patience=1))
    at_chance = {
        "train_acc": {"rgb": 0.27, "depth": 0.24},
        "val_acc": {"rgb": 0.24, "depth": 0.25},
        "chance": {"rgb": 0.25, "depth": 0.25},
        "update_ratio": {"rgb": 2.1e-5, "depth": 2.2e-5},  # measured: Adam at 1/1000 of a healthy lr
        "lr": {"rgb": 3e-6, "depth": 3e-6},
        "predictions_seen": True,
    }
    (rec,) = advisor.advise(_evidence(**at_chance))
    assert rec.kind == "not_learning" and rec.stream is None
    assert "update ratio ||dw||/||w|| per step rgb 2.1e-05, depth 2.2e-05, below the healthy range" in rec.message
    assert "raise every group's lr (now the rgb group's 3e-06, the depth group's 3e-06)" in rec.message
    assert "data pipeline" not in rec.message
    # the proxy cannot tell whether the lrs are too small: it says so
    (proxy,) = Advisor(StreamThresholds(patience=1)).advise(_evidence(update_ratio_is_proxy=True, **at_chance))
    assert proxy.kind == "not_learning" and "cannot be told without the measured update" in proxy.message


def test_nan_inputs_of_one_stream_name_only_that_stream():
    # depth's inputs hold NaN on the bad steps; rgb's gradients turn NaN through the shared loss
    ev = _evidence(nonfinite={"rgb": 120, "depth": 40}, nonfinite_inputs={"rgb": 0, "depth": 3})
    recs = Advisor(StreamThresholds()).advise(ev)
    assert _kinds(recs) == {("nonfinite", "depth")}
    (rec,) = recs
    assert rec.message.startswith("depth's inputs hold NaN/Inf values (3 in the batches of the steps")
    assert "the NaN/Inf gradients of rgb (120) follow from them through the shared loss" in rec.message
    assert "check the depth inputs" in rec.message and "check the rgb inputs" not in rec.message


def test_nonfinite_gradients_with_finite_inputs_blame_the_lr():
    ev = _evidence(nonfinite={"rgb": 12, "depth": 0}, nonfinite_inputs={"rgb": 0, "depth": 0})
    (rec,) = Advisor(StreamThresholds()).advise(ev)
    assert (rec.kind, rec.stream) == ("nonfinite", "rgb")
    assert "its inputs on those steps were finite: lower the rgb group's lr (now 0.001)" in rec.message
    assert "check the rgb inputs" not in rec.message


def test_nonfinite_gradients_with_unchecked_inputs_say_the_cause_is_undecided():
    (rec,) = Advisor(StreamThresholds()).advise(_evidence(nonfinite={"rgb": 12, "depth": 0}))
    assert (rec.kind, rec.stream) == ("nonfinite", "rgb")
    assert "the cause is undecided: check the rgb inputs for NaN/Inf first" in rec.message


FINETUNE = {
    "streams": ["backbone", "head"],
    "compare_streams": False,
    "pretrained": frozenset({"backbone"}),
    "grad_norm": {"backbone": 0.24, "head": 1.3},
    "group": {"backbone": "backbone", "head": "head"},
}


def test_a_pretrained_part_at_the_fresh_parts_lr_moves_too_fast():
    # measured (SGD, one lr 1e-4): the backbone's update ratio is tiny in absolute terms
    ev = EpochEvidence(
        epoch=0,
        lr={"backbone": 1e-4, "head": 1e-4},
        update_ratio={"backbone": 1.4e-5, "head": 1.7e-4},
        max_update_ratio={"backbone": 2.2e-5, "head": 2.6e-4},
        **FINETUNE,
    )
    recs = Advisor(StreamThresholds()).advise(ev)
    assert _kinds(recs) == {("too_fast", "backbone")}
    (rec,) = recs
    assert rec.message.startswith("backbone moves too fast for a pretrained part: its lr 0.0001 is 1x that of")
    assert "update ratio ||dw||/||w|| per step: backbone 1.4e-05, head 0.00017" in rec.message
    assert "lower the backbone group's lr (now 0.0001), e.g. to 1/10 of head's (1e-05)" in rec.message


def test_a_pretrained_part_well_below_the_fresh_lr_is_healthy():
    ev = EpochEvidence(
        epoch=0, lr={"backbone": 1e-5, "head": 1e-4}, update_ratio={"backbone": 2e-6, "head": 1.7e-4}, **FINETUNE
    )
    (rec,) = Advisor(StreamThresholds()).advise(ev)
    assert rec.kind == "healthy" and "pretrained backbone at 0.1x the lr of the fresh head" in rec.message
    # the rule needs a fresh part to compare with: everything pretrained is not judged
    both = dict(FINETUNE, pretrained=frozenset({"backbone", "head"}))
    ev = EpochEvidence(epoch=0, lr={"backbone": 1e-4, "head": 1e-4}, update_ratio={"backbone": 2e-6}, **both)
    assert [r.kind for r in Advisor(StreamThresholds()).advise(ev)] == ["healthy"]


def test_pretrained_and_fresh_peer_streams_are_not_compared_for_slowness():
    # a pretrained rgb branch at 1/10 of the fresh depth branch's lr: by design, not "slow"
    ev = _evidence(
        pretrained=frozenset({"rgb"}),
        lr={"rgb": 1e-4, "depth": 1e-3},
        update_ratio={"rgb": 1e-5, "depth": 1e-3},
        weight_growth={"rgb": 1.0, "depth": 3.0},
    )
    assert _kinds(Advisor(StreamThresholds(patience=1)).advise(ev)) == {("healthy", None)}


def test_an_overfitting_stream_is_not_also_dominant():
    # depth memorises a shortcut: its large gradients come from fitting it
    advisor = Advisor(StreamThresholds(patience=1))
    recs = advisor.advise(_evidence(overfit_score={"rgb": 0.0, "depth": 1.5}, grad_norm={"rgb": 1.0, "depth": 6.0}))
    assert _kinds(recs) == {("overfitting", "depth")}


def test_three_streams_with_one_converged():
    # rgb solved its part: its tiny gradients are no yardstick, and it is not slow
    ev = EpochEvidence(
        epoch=0,
        streams=["rgb", "depth", "ir"],
        grad_norm={"rgb": 0.014, "depth": 2.6, "ir": 2.7},
        update_ratio={"rgb": 3.6e-4, "depth": 0.019, "ir": 0.023},
        train_acc={"rgb": 1.0, "depth": 0.79, "ir": 0.72},
        val_acc={"rgb": 1.0, "depth": 0.81, "ir": 0.87},
        chance={"rgb": 0.25, "depth": 0.25, "ir": 0.25},
        overfit_score={"rgb": 0.0, "depth": -0.06, "ir": -0.4},
        predictions_seen=True,
    )
    assert [r.kind for r in Advisor(StreamThresholds(patience=1)).advise(ev)] == ["healthy"]


def test_the_proxy_is_named_in_the_healthy_message():
    (rec,) = Advisor(StreamThresholds()).advise(_evidence(update_ratio_is_proxy=True))
    assert rec.kind == "healthy"
    assert "step size not measured: track_updates=False gives only the lr*||g||/||w|| proxy" in rec.message


def test_too_fast_from_large_input_scale_points_at_normalisation():
    # SGD, depth input x100: one step moved depth's weights 89x their norm, its gradients 6e4x rgb's
    ev = _evidence(
        max_update_ratio={"rgb": 0.016, "depth": 89.0},
        grad_norm={"rgb": 0.47, "depth": 3.0e4},
        weight_growth={"rgb": 1.0, "depth": 4.2e4},
    )
    (rec,) = Advisor(StreamThresholds()).advise(ev)
    assert (rec.kind, rec.stream) == ("too_fast", "depth")
    assert "lower the depth group's lr (now 0.0005)" in rec.message
    assert "if depth's inputs or features are on a larger scale, normalising them" in rec.message
    # the same gradients at a 100x larger lr than rgb's: the lr explains them, no hint at the inputs
    (rec,) = Advisor(StreamThresholds()).advise(dataclasses.replace(ev, lr={"rgb": 1e-3, "depth": 0.1}))
    assert (rec.kind, rec.stream) == ("too_fast", "depth") and "normalising" not in rec.message


def _cell(advisor, kind, stream="depth"):
    (verdict,) = [v for v in advisor.verdicts if v.kind == kind and v.stream == stream]
    return verdict


def test_verdicts_show_pending_warning_and_clearing_with_the_threshold_in_use():
    advisor = Advisor(StreamThresholds(patience=2, release=0.8))
    states = []
    for epoch, score in enumerate([1.5, 1.6, 0.5, 0.5]):
        advisor.advise(_evidence(epoch, overfit_score={"rgb": 0.1, "depth": score}))
        verdict = _cell(advisor, "overfitting")
        states.append((verdict.state, verdict.value, verdict.threshold))
        assert verdict.knob == "weight_decay up or lr down"
    assert states == [
        ("pending (1 of 2 epochs)", 1.5, "> 1"),
        ("warning (2 epochs)", 1.6, "> 1"),
        ("warning, clearing (1 of 2 epochs)", 0.5, "> 0.8"),  # relaxed while reported
        ("ok", 0.5, "> 0.8"),
    ]
    assert _cell(advisor, "overfitting", "rgb").state == "ok"


def test_a_value_past_its_threshold_explained_by_a_root_cause_is_set_aside_not_ok():
    advisor = Advisor(StreamThresholds(patience=1))
    advisor.advise(_evidence(0, overfit_score={"rgb": 0.1, "depth": 3.0}, grad_norm={"rgb": 1.0, "depth": 9.0}))
    assert _cell(advisor, "overfitting").state.startswith("warning")
    dominant = _cell(advisor, "dominant")
    assert dominant.value == pytest.approx(9.0) and dominant.threshold == ">= 5"
    assert dominant.state == "ok (set aside: overfitting first)"  # not a bare "ok" next to 9 >= 5
    # rgb is not judged: its only peer is set aside as the reference
    assert not [v for v in advisor.verdicts if v.kind == "dominant" and v.stream == "rgb"]


def test_verdict_table_is_rule_by_stream_with_warnings_in_bold():
    from mslightning.callbacks.monitor_metrics import markdown_table, verdict_records, verdict_rows

    advisor = Advisor(StreamThresholds(patience=1))
    advisor.advise(_evidence(0, overfit_score={"rgb": 0.1, "depth": 3.0}))
    header, rows = verdict_rows(advisor.verdicts, STREAMS)
    assert header == ["rule", "threshold", "knob", "rgb", "depth"]  # no empty "all" column
    overfitting = next(row for row in rows if row[0] == "overfitting")
    assert overfitting == ["overfitting", "> 1", "weight_decay up or lr down", "ok: 0.1", "warning (1 epoch): 3"]
    assert not [row for row in rows if row[0] in ("frozen", "not_optimized")]  # ok with nothing to show
    table = markdown_table(header, rows)
    assert "| **warning (1 epoch): 3** |" in table and table.splitlines()[1] == "|---|---|---|---|---|"
    long_header, records = verdict_records(advisor.verdicts)
    assert long_header == ["stream", "rule", "state", "value", "threshold", "knob"]
    assert records[0][:3] == ["depth", "overfitting", "warning (1 epoch)"]  # warnings first
