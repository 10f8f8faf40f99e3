"""Plain-language recommendations from per-stream evidence, with hysteresis.

:class:`Advisor` turns one epoch of :class:`EpochEvidence` (plain floats that are identical on
every rank) into a list of :class:`Recommendation` s. Each rule is evaluated per stream and
feeds a two-sided hysteresis (:class:`StreamThresholds`): a condition must hold for
``patience`` consecutive epochs before it is reported, and must then fail ``patience``
consecutive epochs, against a threshold relaxed by ``release``, before it is withdrawn. One
noisy epoch therefore neither raises nor clears advice.

Rules (``kind``):

* ``overfitting``: the stream's overfitting score (accuracy gap + loss gap) exceeds
  ``overfit_score`` -> raise the stream group's ``weight_decay`` or lower its ``lr``.
* ``not_learning`` (one recommendation for the model): every stream's accuracy, in training
  and validation, is within ``chance_margin`` of chance (1/K) -> check the data pipeline
  (labels aligned with inputs) and the lrs. Relative rules are not applied meanwhile.
* ``too_fast`` (no patience): a logged step moved the stream's weights by more than
  ``fast_update_ratio`` of their norm (``||dw||/||w||``, measured) -> lower its ``lr``. It stays
  reported while the weights it inflated stay ``weight_growth_ratio`` times larger than the
  others' (a blown-up stream's later updates look small next to its huge weights).
* ``dominant``: the stream's mean gradient norm is ``dominance_ratio`` times that of every
  other stream -> lower its ``lr`` or raise the others'.
* ``slow``: its update ratio ``||dw||/||w||`` is below ``slow_ratio`` times the median of the
  others -> raise its ``lr``.
* ``stalled``: its update ratio is below ``stall_update_ratio`` in absolute terms -> raise its
  ``lr`` (or check it is being optimised at all).
* ``weight_growth``: its weight norm grew (relative to the start of training)
  ``weight_growth_ratio`` times more than every other stream's -> raise its ``weight_decay``.
* ``nonfinite`` (no patience): NaN/Inf gradients -> lower the ``lr``, clip, check inputs.
* ``frozen`` (information, no patience): the stream has no trainable parameters or received
  no gradient.
* ``not_optimized`` (no patience): it receives gradients but no optimizer holds its parameters.
* ``healthy``: emitted when no warning is active and the epoch's steps were measured;
  ``not_measured`` (information) instead when no optimizer step was logged in the epoch, so
  that "healthy" always means "measured, and fine".

With ``track_updates=False`` the update ratio is the proxy ``lr * ||g|| / ||w||``
(``EpochEvidence.update_ratio_is_proxy``): the messages name it so, and the absolute rule
``stalled`` is not applied to it, since under adaptive optimizers (Adam) the proxy is orders of
magnitude away from the real update.

The three rules that compare streams (``dominant``, ``slow``, ``weight_growth``) apply only
when the streams are peers (``EpochEvidence.compare_streams``): parallel encoders of one
network, not parts in series such as a pretrained backbone and its fresh head.

Root causes first: a stream that is overfitting is not also called ``slow`` (its gradients
vanish because it has fit the training set) nor used as the reference for ``dominant``; while a
stream is ``slow``/``stalled``, no stream is called ``dominant`` (the slow stream's gradients stay
large because it does not move). A stream that moves ``too_fast`` comes before the relative
rules: it is no reference for ``slow`` (next to it every other stream looks slow), no stream is
called ``dominant`` meanwhile, and its weight growth is blamed on its lr, not on weight decay.
A stream that has *converged* (training and validation accuracy at least ``converged_acc``) is
not a problem: its small gradients and updates are not ``slow`` or ``stalled``, and it is no
yardstick for ``slow`` or ``dominant``. Each advice then names one knob in one direction.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "KINDS",
    "Advisor",
    "EpochEvidence",
    "Recommendation",
    "StreamThresholds",
]

KINDS = (
    "not_learning",
    "nonfinite",
    "not_optimized",
    "overfitting",
    "too_fast",
    "dominant",
    "stalled",
    "slow",
    "weight_growth",
    "frozen",
)
"""Rule kinds, in the order their recommendations are listed."""

ALL = "*"
"""The stream key of the model-wide ``not_learning`` condition."""

_IMMEDIATE = frozenset({"nonfinite", "not_optimized", "frozen", "too_fast"})


@dataclass
class StreamThresholds:
    """Thresholds and hysteresis of :class:`~mslightning.callbacks.StreamMonitor`'s advice.

    Attributes:
        overfit_score: A stream whose overfitting score (train-val accuracy gap + val-train
            loss gap) exceeds this is overfitting (the predecessor's "significant": 1.0).
        dominance_ratio: A stream whose epoch-mean gradient norm is at least this many times
            every other stream's dominates the gradients.
        slow_ratio: A stream whose epoch-mean update ratio ``||dw||/||w||`` is below this
            fraction of the other streams' median learns too slowly.
        stall_update_ratio: An update ratio below this (absolute) means the stream has stalled.
        fast_update_ratio: One logged step whose update ratio exceeds this (absolute) means the
            stream's lr is too high. Healthy AdamW/SGD training stays well below: 0.007-0.02
            per step on the scenario suite's small CNNs at lr 3e-3, 1e-5-1e-4 when fine-tuning.
        weight_growth_ratio: A stream whose weight norm grew (``||w_t|| / ||w_0||``) this many
            times more than every other stream's grows too fast.
        converged_acc: A stream whose training accuracy (and validation accuracy, when measured)
            are at least this has converged: it is exempt from the update rules and no yardstick
            for the others.
        chance_margin: Every stream's accuracy within this of chance (1/K) means nothing learns.
        patience: Consecutive epochs a condition must hold before it is reported, and must
            fail before the report is withdrawn.
        release: While reported, a condition is judged against its threshold relaxed by this
            factor (``overfit_score * release``, ``slow_ratio / release``, ...), in (0, 1].
    """

    overfit_score: float = 1.0
    dominance_ratio: float = 3.0
    slow_ratio: float = 0.1
    stall_update_ratio: float = 1e-7
    fast_update_ratio: float = 0.1
    converged_acc: float = 0.99
    chance_margin: float = 0.05
    weight_growth_ratio: float = 2.0
    patience: int = 2
    release: float = 0.8

    def __post_init__(self) -> None:
        positive = {
            "overfit_score": self.overfit_score,
            "stall_update_ratio": self.stall_update_ratio,
            "fast_update_ratio": self.fast_update_ratio,
        }
        for name, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"StreamThresholds.{name} must be a finite number > 0, got {value!r}.")
        for name, value in (
            ("dominance_ratio", self.dominance_ratio),
            ("weight_growth_ratio", self.weight_growth_ratio),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 1):
                raise ValueError(f"StreamThresholds.{name} must be a finite number > 1, got {value!r}.")
        for name, value in (("converged_acc", self.converged_acc), ("chance_margin", self.chance_margin)):
            if not (isinstance(value, int | float) and 0 < value < 1):
                raise ValueError(f"StreamThresholds.{name} must be in (0, 1), got {value!r}.")
        if self.fast_update_ratio <= self.stall_update_ratio:
            raise ValueError(
                f"StreamThresholds.fast_update_ratio ({self.fast_update_ratio!r}) must be above "
                f"stall_update_ratio ({self.stall_update_ratio!r})."
            )
        if not (isinstance(self.slow_ratio, int | float) and 0 < self.slow_ratio < 1):
            raise ValueError(f"StreamThresholds.slow_ratio must be in (0, 1), got {self.slow_ratio!r}.")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"StreamThresholds.patience must be an int >= 1, got {self.patience!r}.")
        if not (isinstance(self.release, int | float) and 0 < self.release <= 1):
            raise ValueError(f"StreamThresholds.release must be in (0, 1], got {self.release!r}.")


@dataclass(frozen=True)
class Recommendation:
    """One piece of advice.

    Attributes:
        kind: The rule (see :data:`KINDS`) or ``"healthy"``.
        stream: The stream it names, or None for ``healthy``.
        message: The plain-language advice, naming the stream and the knob.
        severity: ``"warning"`` (act on it) or ``"info"``.
        epochs: For how many consecutive epochs the condition has held.
    """

    kind: str
    stream: str | None
    message: str
    severity: Literal["warning", "info"] = "warning"
    epochs: int = 1

    def __str__(self) -> str:
        return self.message


@dataclass
class EpochEvidence:
    """Everything the rules read about one epoch; plain floats, identical on every rank.

    Step-level quantities are means over the epoch's logged optimizer steps; a stream missing
    from a mapping means "not measured this epoch" (the rule keeps its state).

    Attributes:
        epoch: The epoch index.
        streams: Stream names in order.
        grad_norm: Mean gradient L2 norm.
        update_ratio: Mean ``||dw|| / ||w||`` (or the ``lr * ||g|| / ||w||`` proxy, see
            ``update_ratio_is_proxy``).
        weight_growth: ``||w|| / ||w_at_start||``.
        nonfinite: Number of NaN/Inf gradient values seen this epoch.
        frozen: Streams with no trainable parameter or no gradient this epoch.
        not_optimized: Streams with gradients whose parameters no optimizer holds.
        overfit_score: Overfitting score (needs per-stream predictions).
        acc_gap: Train minus validation score.
        ogr: Overfitting-to-generalisation ratio.
        discrepancy: OGM-GE discrepancy ratio.
        lr: Current lr of the stream's (main) param group.
        weight_decay: Current weight decay of that group.
        group: Display name of that group.
        shares_group_with: Other streams whose parameters sit in the same group.
        compare_streams: Whether the streams are peers to compare (``dominant``, ``slow``,
            ``weight_growth``); False for parts in series such as a backbone and a head.
        max_update_ratio: Largest measured ``||dw|| / ||w||`` of one logged step (absent with
            the proxy).
        train_acc: Each stream's own training score this epoch (per-stream output protocol): its
            accuracy, pair accuracy or correlation (see ``score_label``).
        val_acc: Its validation score, when validation ran this epoch.
        chance: Its chance-level score (1/K, 0.5 for pairs, 0 for a correlation).
        predictions_seen: Whether the model returned per-stream predictions at all.
        update_ratio_is_proxy: ``update_ratio`` holds the proxy ``lr * ||g|| / ||w||``
            (``track_updates=False``), not the measured update.
        nonfinite_inputs: NaN/Inf values found in each stream's own batch inputs on the steps
            whose gradients were not finite.
        score_label: What ``train_acc``/``val_acc`` measure, in words: ``"accuracy"``
            (classification), ``"pair accuracy"`` (ranking) or ``"correlation"`` (Poisson).
        pretrained: Parts declared pretrained (the module's ``pretrained_parts``).
    """

    epoch: int
    streams: Sequence[str]
    grad_norm: Mapping[str, float] = field(default_factory=dict)
    update_ratio: Mapping[str, float] = field(default_factory=dict)
    max_update_ratio: Mapping[str, float] = field(default_factory=dict)
    weight_growth: Mapping[str, float] = field(default_factory=dict)
    nonfinite: Mapping[str, int] = field(default_factory=dict)
    frozen: frozenset[str] = frozenset()
    not_optimized: frozenset[str] = frozenset()
    overfit_score: Mapping[str, float] = field(default_factory=dict)
    acc_gap: Mapping[str, float] = field(default_factory=dict)
    ogr: Mapping[str, float] = field(default_factory=dict)
    discrepancy: Mapping[str, float] = field(default_factory=dict)
    lr: Mapping[str, float] = field(default_factory=dict)
    weight_decay: Mapping[str, float] = field(default_factory=dict)
    group: Mapping[str, str] = field(default_factory=dict)
    shares_group_with: Mapping[str, Sequence[str]] = field(default_factory=dict)
    compare_streams: bool = True
    train_acc: Mapping[str, float] = field(default_factory=dict)
    val_acc: Mapping[str, float] = field(default_factory=dict)
    chance: Mapping[str, float] = field(default_factory=dict)
    predictions_seen: bool = False
    update_ratio_is_proxy: bool = False
    nonfinite_inputs: Mapping[str, int] = field(default_factory=dict)
    score_label: str = "accuracy"
    pretrained: frozenset[str] = frozenset()


@dataclass
class _Flag:
    """Hysteresis state of one (kind, stream) condition."""

    active: bool = False
    on_streak: int = 0
    off_streak: int = 0
    held: int = 0
    value: float | None = None


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}"


def _others_text(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


class Advisor:
    """Evaluates the rules each epoch and keeps their hysteresis state.

    Args:
        thresholds: Thresholds and hysteresis settings.
    """

    def __init__(self, thresholds: StreamThresholds) -> None:
        self.thresholds = thresholds
        self.flags: dict[str, _Flag] = {}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The hysteresis state, as plain Python data.

        Returns:
            ``{"flags": {"<kind>/<stream>": {...}}}``.
        """
        return {"flags": {key: asdict(flag) for key, flag in self.flags.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the hysteresis state saved by :meth:`state_dict`.

        Args:
            state: What :meth:`state_dict` returned.
        """
        self.flags = {key: _Flag(**flag) for key, flag in state.get("flags", {}).items()}

    # ------------------------------------------------------------------ rules

    def _update(self, kind: str, stream: str, raw: bool | None, value: float | None) -> _Flag:
        flag = self.flags.setdefault(f"{kind}/{stream}", _Flag())
        if raw is None:  # no evidence this epoch: keep the state
            return flag
        patience = 1 if kind in _IMMEDIATE else self.thresholds.patience
        if raw:
            flag.on_streak += 1
            flag.off_streak = 0
            flag.value = value
            if not flag.active and flag.on_streak >= patience:
                flag.active = True
                flag.held = flag.on_streak
            elif flag.active:
                flag.held += 1
        else:
            flag.off_streak += 1
            flag.on_streak = 0
            if flag.active:
                if flag.off_streak >= patience:
                    flag.active, flag.held = False, 0
                else:
                    flag.held += 1
        return flag

    def _is_active(self, kind: str, stream: str) -> bool:
        flag = self.flags.get(f"{kind}/{stream}")
        return flag is not None and flag.active

    def _relaxed(self, kind: str, stream: str, threshold: float, upward: bool) -> float:
        """The threshold, relaxed by ``release`` while the condition is reported (hysteresis)."""
        if not self._is_active(kind, stream):
            return threshold
        return threshold * self.thresholds.release if upward else threshold / self.thresholds.release

    def _conditions(self, ev: EpochEvidence) -> dict[str, dict[str, tuple[bool | None, float | None]]]:
        """Raw condition and its value, per kind and stream.

        Rules are evaluated root cause first, so that a symptom of one problem is not reported
        as another problem with the opposite advice: a stream that memorised the training set
        has tiny gradients and updates (not ``slow``, and no reference for ``dominant``); a
        stream that cannot move (``slow``/``stalled``) keeps large gradients, so no stream is
        called ``dominant`` while one is slow - the ``slow`` advice names the knob - and a slow
        stream's weights, which barely change, are no reference for ``weight_growth``.
        """
        t = self.thresholds
        out: dict[str, dict[str, tuple[bool | None, float | None]]] = {kind: {} for kind in KINDS}
        for m in ev.streams:
            out["nonfinite"][m] = (ev.nonfinite.get(m, 0) > 0, float(ev.nonfinite.get(m, 0)))
            out["frozen"][m] = (m in ev.frozen, None)
            out["not_optimized"][m] = (m in ev.not_optimized, None)
            score = ev.overfit_score.get(m)
            raw = None if score is None else score > self._relaxed("overfitting", m, t.overfit_score, True)
            out["overfitting"][m] = (raw, score)
        overfitting = {m for m in ev.streams if out["overfitting"][m][0] or self._is_active("overfitting", m)}
        learning = [m for m in ev.streams if m not in ev.frozen and m not in ev.not_optimized]
        fast = self._too_fast(ev, learning, out)  # a concrete root cause, before "nothing learns"
        at_chance = self._at_chance(ev, learning)
        out["not_learning"][ALL] = (at_chance and not fast if at_chance is not None else None, None)
        if out["not_learning"][ALL][0] or self._is_active("not_learning", ALL):
            return out  # nothing to compare while nothing learns
        # a converged stream's vanishing gradients are success: treated like a memorising one below
        overfitting |= {
            m
            for m in learning
            if ev.train_acc.get(m, 0.0) >= t.converged_acc and ev.val_acc.get(m, 1.0) >= t.converged_acc
        }

        for m in learning:
            u = ev.update_ratio.get(m)
            if u is None:
                continue
            if m in overfitting or m in fast:  # small updates of a memorising stream: not an lr problem
                out["stalled"][m] = out["slow"][m] = (False, u)
                continue
            # the proxy's scale says nothing about the real update: no absolute verdict on it
            stalled = not ev.update_ratio_is_proxy and u < self._relaxed("stalled", m, t.stall_update_ratio, False)
            out["stalled"][m] = (None if ev.update_ratio_is_proxy else stalled, u)
            if not ev.compare_streams:
                continue
            other_u = [ev.update_ratio.get(n) for n in learning if n != m and n not in overfitting | fast]
            other_u = [v for v in other_u if v is not None and v > 0]
            if other_u:
                ratio = u / statistics.median(other_u)
                out["slow"][m] = (not stalled and ratio < self._relaxed("slow", m, t.slow_ratio, False), ratio)
        slow = {m for m in learning if out["slow"].get(m, (None,))[0] or out["stalled"].get(m, (None,))[0]}
        slow |= {m for m in learning if self._is_active("slow", m) or self._is_active("stalled", m)}

        if not ev.compare_streams:
            return out
        for m in learning:
            gn = ev.grad_norm.get(m)
            other_gn = [ev.grad_norm[n] for n in learning if n != m and n not in overfitting and n in ev.grad_norm]
            if gn is None or not other_gn or max(other_gn) <= 0:
                continue
            ratio = gn / max(other_gn)
            raw = not slow and not fast and ratio >= self._relaxed("dominant", m, t.dominance_ratio, True)
            out["dominant"][m] = (raw, ratio)

        for m in learning:
            g = None if m in fast else ev.weight_growth.get(m)
            other_g = [
                ev.weight_growth[n] for n in learning if n != m and n not in slow | fast and n in ev.weight_growth
            ]
            if g is not None and other_g and max(other_g) > 0:
                ratio = g / max(other_g)
                out["weight_growth"][m] = (
                    ratio >= self._relaxed("weight_growth", m, t.weight_growth_ratio, True),
                    ratio,
                )
        return out

    def _at_chance(self, ev: EpochEvidence, learning: Sequence[str]) -> bool | None:
        """True if every learning stream's measured accuracy is within ``chance_margin`` of chance."""
        measured = [m for m in learning if m in ev.train_acc and m in ev.chance]
        if not learning or len(measured) < len(learning):
            return None
        margin = self.thresholds.chance_margin
        accuracies = [(ev.train_acc[m], ev.val_acc.get(m, ev.train_acc[m]), ev.chance[m]) for m in measured]
        return all(train <= chance + margin and val <= chance + margin for train, val, chance in accuracies)

    def _too_fast(
        self, ev: EpochEvidence, learning: Sequence[str], out: dict[str, dict[str, tuple[bool | None, float | None]]]
    ) -> set[str]:
        """Fill the ``too_fast`` conditions; return the streams that move (or moved) too fast."""
        t = self.thresholds
        for m in learning:
            largest = ev.max_update_ratio.get(m)
            if largest is None:
                continue
            raw = largest > self._relaxed("too_fast", m, t.fast_update_ratio, True)
            if not raw and self._is_active("too_fast", m):  # still carrying the weights it inflated
                others = [ev.weight_growth[n] for n in learning if n != m and n in ev.weight_growth]
                growth = ev.weight_growth.get(m)
                reference = max(others) if others and ev.compare_streams else 1.0
                raw = growth is not None and reference > 0 and growth >= t.weight_growth_ratio * reference
            if self._is_active("too_fast", m):  # the message names the largest step seen, not the latest
                largest = max(largest, self.flags[f"too_fast/{m}"].value or 0.0)
            out["too_fast"][m] = (raw, largest)
        return {m for m in learning if out["too_fast"].get(m, (None,))[0] or self._is_active("too_fast", m)}

    def advise(self, ev: EpochEvidence) -> list[Recommendation]:
        """Update the hysteresis with one epoch of evidence and return the active advice.

        Args:
            ev: The epoch's evidence.

        Returns:
            Active recommendations, warnings first in :data:`KINDS` order, then information;
            if no warning is active, a single ``healthy`` recommendation (after any
            information), or ``not_measured`` when the epoch has no step measurements.
        """
        conditions = self._conditions(ev)
        recs: list[Recommendation] = []
        for kind in KINDS:
            if kind == "not_learning":
                raw, _ = conditions[kind].get(ALL, (None, None))
                flag = self._update(kind, ALL, raw, None)
                if flag.active:
                    recs.append(Recommendation(kind, None, _msg_not_learning(ev, flag), "warning", max(flag.held, 1)))
                continue
            for m in ev.streams:
                raw, value = conditions[kind].get(m, (None, None))
                flag = self._update(kind, m, raw, value)
                if flag.active:
                    severity: Literal["warning", "info"] = "info" if kind == "frozen" else "warning"
                    recs.append(Recommendation(kind, m, _MESSAGES[kind](ev, m, flag), severity, max(flag.held, 1)))
        recs.sort(key=lambda r: r.severity == "info")  # stable: keeps KINDS order within
        if not any(r.severity == "warning" for r in recs):
            if ev.grad_norm or ev.update_ratio:
                recs.append(Recommendation("healthy", None, _healthy_message(ev), "info", 1))
            else:
                recs.append(Recommendation("not_measured", None, _NOT_MEASURED, "info", 1))
        return recs


# ---------------------------------------------------------------------- messages


def _group(ev: EpochEvidence, m: str) -> str:
    name = ev.group.get(m)
    if name is None:
        return f"{m}'s"
    return f"the {m} group's" if name == m else f"param group {name!r}'s ({m})"


def _knob(ev: EpochEvidence, m: str, knob: Literal["lr", "weight_decay"]) -> str:
    value = (ev.lr if knob == "lr" else ev.weight_decay).get(m)
    now = f" (now {_fmt(value)})" if value is not None else ""
    return f"{knob}{now}"


def _shared_note(ev: EpochEvidence, m: str) -> str:
    shared = list(ev.shares_group_with.get(m, ()))
    if not shared:
        return ""
    return (
        f" Note: {m} shares param group {ev.group.get(m)!r} with {_others_text(shared)}; give {m} "
        "its own group (e.g. mslightning.optim.ParamGroup) to change it alone."
    )


def _for(flag: _Flag) -> str:
    held = max(flag.held, 1)
    return f"for {held} epoch{'s' if held != 1 else ''}"


def _others(ev: EpochEvidence, m: str) -> list[str]:
    return [n for n in ev.streams if n != m and n not in ev.frozen]


def _msg_overfitting(ev: EpochEvidence, m: str, flag: _Flag) -> str:
    parts = [f"score {_fmt(ev.overfit_score.get(m))}"]
    if m in ev.acc_gap:
        parts.append(f"acc gap {_fmt(ev.acc_gap[m])}")
    if m in ev.ogr:
        parts.append(f"OGR {_fmt(ev.ogr[m])}")
    return (
        f"{m} overfitting ({', '.join(parts)} {_for(flag)}): raise {_group(ev, m)} "
        f"{_knob(ev, m, 'weight_decay')} or lower its {_knob(ev, m, 'lr')}; stronger {m} "
        f"augmentation or dropout also helps." + _shared_note(ev, m)
    )


def _msg_dominant(ev: EpochEvidence, m: str, flag: _Flag) -> str:
    others = _others(ev, m)
    extra = f", OGM-GE discrepancy {_fmt(ev.discrepancy[m])}" if m in ev.discrepancy else ""
    return (
        f"{m} dominates the gradients (grad norm {_fmt(flag.value)}x that of "
        f"{_others_text(others)}{extra} {_for(flag)}): lower {_group(ev, m)} {_knob(ev, m, 'lr')} "
        f"or raise the lr of {_others_text(others)}; if {m}'s inputs or features are on a larger scale than "
        "the others', normalise them." + _shared_note(ev, m)
    )


def _ratio_name(ev: EpochEvidence) -> str:
    return "lr*||g||/||w|| (a proxy: track_updates=False)" if ev.update_ratio_is_proxy else "||dw||/||w||"


def _msg_not_learning(ev: EpochEvidence, flag: _Flag) -> str:
    accuracies = ", ".join(f"{m} {_fmt(ev.train_acc[m])}" for m in ev.streams if m in ev.train_acc)
    classes = sorted({round(1 / c) for c in ev.chance.values() if c > 0})
    chance = "chance" if len(classes) != 1 else f"chance (1/{classes[0]} = {_fmt(1 / classes[0])})"
    return (
        f"no stream learns: every stream's accuracy is at {chance} (train {accuracies}) {_for(flag)}. Check the "
        "data pipeline (are the labels aligned with the inputs, are the inputs normalised?) and the learning rates "
        "(a far too small lr leaves every stream where it started)."
    )


def _msg_too_fast(ev: EpochEvidence, m: str, flag: _Flag) -> str:
    growth = ev.weight_growth.get(m)
    grown = f"; its weights are now x{_fmt(growth)} their size at the start" if growth is not None else ""
    return (
        f"{m} moves too fast (a step moved its weights by {_fmt(flag.value)} of their norm, update ratio "
        f"||dw||/||w||{grown}): lower {_group(ev, m)} {_knob(ev, m, 'lr')}; "
        "warm-up or gradient clipping (ParamGroup max_grad_norm) also bound the first steps." + _shared_note(ev, m)
    )


def _msg_slow(ev: EpochEvidence, m: str, flag: _Flag) -> str:
    others = _others(ev, m)
    return (
        f"{m} learns slowly (update ratio {_ratio_name(ev)} {_fmt(ev.update_ratio.get(m))}, "
        f"{_fmt(flag.value)}x the median of {_others_text(others)} {_for(flag)}): raise "
        f"{_group(ev, m)} {_knob(ev, m, 'lr')}." + _shared_note(ev, m)
    )


def _msg_stalled(ev: EpochEvidence, m: str, flag: _Flag) -> str:
    return (
        f"{m} has stalled (update ratio ||dw||/||w|| {_fmt(ev.update_ratio.get(m))} "
        f"{_for(flag)}): raise {_group(ev, m)} {_knob(ev, m, 'lr')}, and check that its lr is "
        "not 0 and its parameters are in the optimizer." + _shared_note(ev, m)
    )


def _msg_weight_growth(ev: EpochEvidence, m: str, flag: _Flag) -> str:
    others = _others(ev, m)
    return (
        f"{m} weights grow fastest (||w|| x{_fmt(ev.weight_growth.get(m))} since the start, "
        f"{_fmt(flag.value)}x the growth of {_others_text(others)} {_for(flag)}): raise "
        f"{_group(ev, m)} {_knob(ev, m, 'weight_decay')}." + _shared_note(ev, m)
    )


def _msg_nonfinite(ev: EpochEvidence, m: str, flag: _Flag) -> str:
    return (
        f"{m} has non-finite gradients ({int(flag.value or 0)} NaN/Inf values this epoch): lower "
        f"{_group(ev, m)} {_knob(ev, m, 'lr')}, clip its gradients (ParamGroup max_grad_norm), "
        f"and check the {m} inputs for NaN/Inf."
    )


def _msg_frozen(ev: EpochEvidence, m: str, flag: _Flag) -> str:
    return (
        f"{m} is frozen (no trainable parameter or no gradient this epoch): its weights do not "
        "change. Ignore this if intended; otherwise set requires_grad and check that its output "
        "reaches the loss."
    )


def _msg_not_optimized(ev: EpochEvidence, m: str, flag: _Flag) -> str:
    return (
        f"{m} receives gradients but none of its parameters is in an optimizer param group: add "
        "them in configure_optimizers (or a ParamGroup pattern)."
    )


_MESSAGES: dict[str, Callable[[EpochEvidence, str, _Flag], str]] = {
    "overfitting": _msg_overfitting,
    "too_fast": _msg_too_fast,
    "dominant": _msg_dominant,
    "slow": _msg_slow,
    "stalled": _msg_stalled,
    "weight_growth": _msg_weight_growth,
    "nonfinite": _msg_nonfinite,
    "frozen": _msg_frozen,
    "not_optimized": _msg_not_optimized,
}


_NOT_MEASURED = (
    "not measured: no optimizer step was logged in this epoch, so no stream could be checked; log more "
    "often than once per epoch (Trainer log_every_n_steps below the steps per epoch)."
)


def _healthy_message(ev: EpochEvidence) -> str:
    details = []
    if ev.grad_norm:
        details.append("grad norm " + ", ".join(f"{m} {_fmt(v)}" for m, v in ev.grad_norm.items()))
    if ev.overfit_score:
        details.append("overfitting score " + ", ".join(f"{m} {_fmt(v)}" for m, v in ev.overfit_score.items()))
    if ev.compare_streams:
        if not ev.overfit_score:
            reason = "no validation this epoch" if ev.predictions_seen else "no per-stream predictions"
            details.append(f"overfitting not measured ({reason})")
        return "healthy: no stream is starving, dominating, memorising or diverging (" + "; ".join(details) + ")."
    # parts in series (backbone, head) have no predictions of their own and are not compared
    details.append(f"the parts {list(ev.streams)} are in series and not compared with each other")
    checked = "stalled, memorising or diverging" if ev.overfit_score else "stalled or diverging"
    return f"healthy: no part is {checked} (" + "; ".join(details) + ")."
