"""Plain-language recommendations from per-stream evidence, with hysteresis.

:class:`Advisor` turns one epoch of :class:`EpochEvidence` (plain floats that are identical on
every rank) into a list of :class:`Recommendation` s. Each rule is evaluated per stream and
feeds a two-sided hysteresis (:class:`StreamThresholds`): a condition must hold for
``patience`` consecutive epochs before it is reported, and must then fail ``patience``
consecutive epochs, against a threshold relaxed by ``release``, before it is withdrawn. One
noisy epoch therefore neither raises nor clears advice.

Rules (``kind``), in the order they are judged and listed:

* ``not_learning`` (one recommendation for the model): every stream's accuracy, in training
  and validation, is within ``chance_margin`` of chance (1/K). The message names the cause the
  measurements support: every stream's update ratio below ``low_update_ratio`` -> raise every
  group's lr; updates in the normal range -> the lrs are not the cause, check the data pipeline;
  no measured update (the proxy) -> it says it cannot tell. Relative rules are not applied
  meanwhile.
* ``nonfinite`` (no patience): NaN/Inf gradients. When the inputs of the steps with NaN/Inf
  gradients were checked (``EpochEvidence.nonfinite_inputs``) and a stream's inputs held NaN/Inf,
  only that stream is named (check its inputs): the other streams' gradients turn NaN through
  the shared loss and are not told to check their own inputs. With finite inputs -> lower its
  ``lr``; inputs not checked -> it says the cause is undecided (inputs first, then the lr).
* ``not_optimized`` (no patience): it receives gradients but no optimizer holds its parameters.
* ``overfitting``: the stream's overfitting score (accuracy gap + loss gap) exceeds
  ``overfit_score`` -> raise the stream group's ``weight_decay`` or lower its ``lr``.
* ``too_fast`` (no patience), two ways:

  - a logged step moved the stream's weights by more than ``fast_update_ratio`` of their norm
    (``||dw||/||w||``, measured; far above the healthy range) -> lower its ``lr``. It stays
    reported while the weights it inflated stay ``weight_growth_ratio`` times larger than the
    others' (a blown-up stream's later updates look small next to its huge weights);
  - a part declared pretrained (``EpochEvidence.pretrained``) whose lr is above
    ``pretrained_lr_ratio`` times the largest lr of the fresh parts -> lower its ``lr``. A
    pretrained backbone's update ratio is tiny in absolute terms (1e-5 per step) even when it
    forgets its pretraining, so this rule is relative to the fresh parts, by design.

* ``dominant``: the stream's mean gradient norm is ``dominance_ratio`` times that of every
  other stream -> lower its ``lr`` (or normalise its inputs/features if they are on a larger
  scale).
* ``stalled``: its update ratio is below ``stall_update_ratio`` in absolute terms -> raise its
  ``lr`` (or check it is being optimised at all).
* ``slow``: its update ratio ``||dw||/||w||`` is below ``slow_ratio`` times the median of the
  others -> raise its ``lr``.
* ``weight_growth``: its weight norm grew (relative to the start of training)
  ``weight_growth_ratio`` times more than every other stream's -> raise its ``weight_decay``.
* ``frozen`` (information, no patience): the stream has no trainable parameter or received
  no gradient.

When no warning is active, one information closes the list:

* ``pending``: a condition held this epoch but not yet for ``patience`` epochs (e.g. every
  stream at chance after the first epoch). Not advice yet, and not "healthy".
* ``not_measured``: part of the epoch could not be checked: no optimizer step was logged
  (logging interval longer than the epoch), or the model returns per-stream predictions but no
  validation ran this epoch (overfitting unchecked). The message says what was not measured and
  what was fine.
* ``healthy``: everything this set-up can measure was measured this epoch, and is fine. What
  the set-up cannot measure at all (no per-stream predictions, parts in series, the proxy) is
  named in the message.

With ``track_updates=False`` the update ratio is the proxy ``lr * ||g|| / ||w||``
(``EpochEvidence.update_ratio_is_proxy``): the messages name it so, and the absolute rules
(``stalled``, ``too_fast`` by step size, the lr cause of ``not_learning``) are not applied to it,
since under adaptive optimizers (Adam) or momentum the proxy is orders of magnitude away from
the real update.

The rules that compare streams (``dominant``, ``slow``, ``weight_growth``) apply only when the
streams are peers (``EpochEvidence.compare_streams``): parallel encoders of one network, not
parts in series such as a pretrained backbone and its fresh head; and they compare a pretrained
stream only with pretrained ones, a fresh one only with fresh ones.

Root causes first: a stream that is overfitting is not also called ``slow`` (its gradients
vanish because it has fit the training set), nor ``dominant`` (its large gradients come from
fitting its shortcut), nor the reference for ``dominant``; while a stream is ``slow``/``stalled``,
no stream is called ``dominant`` (the slow stream's gradients stay large because it does not
move). A stream that moves ``too_fast`` comes before the relative rules: it is no reference for
``slow`` (next to it every other stream looks slow), no stream is called ``dominant`` meanwhile,
and its weight growth is blamed on its lr, not on weight decay. A stream that has *converged*
(training and validation accuracy at least ``converged_acc``) is not a problem: its small
gradients and updates are not ``slow`` or ``stalled``, and it is no yardstick for ``slow`` or
``dominant``. Each advice then names one knob in one direction, the stream, its param group and
the measured value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "INFO_KINDS",
    "KINDS",
    "Advisor",
    "EpochEvidence",
    "Recommendation",
    "StreamThresholds",
    "Verdict",
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

INFO_KINDS = ("pending", "not_measured", "healthy")
"""The closing information when no warning is active (exactly one of them)."""

ALL = "*"
"""The stream key of the model-wide ``not_learning`` condition."""

_IMMEDIATE = frozenset({"nonfinite", "not_optimized", "frozen", "too_fast"})

Conditions = dict[str, dict[str, tuple[bool | None, float | None]]]


@dataclass
class StreamThresholds:
    """Thresholds and hysteresis of :class:`~mslightning.callbacks.StreamMonitor`'s advice.

    Attributes:
        overfit_score: A stream whose overfitting score (train-val accuracy gap + val-train
            loss gap) exceeds this is overfitting (the predecessor's "significant": 1.0).
        dominance_ratio: A stream whose epoch-mean gradient norm is at least this many times
            every other stream's dominates the gradients. Healthy streams of different sizes,
            or one learning before the other, differ by up to ~4x (measured: SGD on the
            scenario suite); an un-normalised stream by 7x and more.
        slow_ratio: A stream whose epoch-mean update ratio ``||dw||/||w||`` is below this
            fraction of the other streams' median learns too slowly.
        stall_update_ratio: An update ratio below this (absolute) means the stream has stalled.
        low_update_ratio: Below this update ratio per step the weights barely move (the
            healthy range is ~1e-4 .. 1e-2): when every stream sits at chance accuracy *and*
            below it, the lrs are named as the cause of ``not_learning``.
        fast_update_ratio: One logged step whose update ratio exceeds this (absolute) means the
            stream's lr is too high. Healthy AdamW/SGD training stays well below: at most 0.06
            per step on the scenario suite's small CNNs (first steps included), 1e-5-1e-3 when
            fine-tuning.
        pretrained_lr_ratio: A part declared pretrained whose lr is above this fraction of the
            largest lr of the fresh parts moves too fast for a pretrained part (the textbook
            backbone lr is 1/10 of the head's; 1/2.6 per layer in discriminative fine-tuning).
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
    dominance_ratio: float = 5.0
    slow_ratio: float = 0.1
    stall_update_ratio: float = 1e-7
    low_update_ratio: float = 1e-4
    fast_update_ratio: float = 0.1
    pretrained_lr_ratio: float = 0.5
    converged_acc: float = 0.99
    chance_margin: float = 0.05
    weight_growth_ratio: float = 2.0
    patience: int = 2
    release: float = 0.8

    def __post_init__(self) -> None:
        positive = {
            "overfit_score": self.overfit_score,
            "stall_update_ratio": self.stall_update_ratio,
            "low_update_ratio": self.low_update_ratio,
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
        for name, value in (
            ("converged_acc", self.converged_acc),
            ("chance_margin", self.chance_margin),
            ("slow_ratio", self.slow_ratio),
            ("pretrained_lr_ratio", self.pretrained_lr_ratio),
        ):
            if not (isinstance(value, int | float) and 0 < value < 1):
                raise ValueError(f"StreamThresholds.{name} must be in (0, 1), got {value!r}.")
        if not self.stall_update_ratio < self.low_update_ratio < self.fast_update_ratio:
            raise ValueError(
                "StreamThresholds needs stall_update_ratio < low_update_ratio < fast_update_ratio, got "
                f"{self.stall_update_ratio!r}, {self.low_update_ratio!r} and {self.fast_update_ratio!r}."
            )
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"StreamThresholds.patience must be an int >= 1, got {self.patience!r}.")
        if not (isinstance(self.release, int | float) and 0 < self.release <= 1):
            raise ValueError(f"StreamThresholds.release must be in (0, 1], got {self.release!r}.")


@dataclass(frozen=True)
class Recommendation:
    """One piece of advice.

    Attributes:
        kind: The rule (see :data:`KINDS`) or the closing information (:data:`INFO_KINDS`).
        stream: The stream it names, or None for model-wide advice and information.
        message: The plain-language advice, naming the stream, the knob and the measured value.
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


@dataclass(frozen=True)
class Verdict:
    """Where one rule stands for one stream this epoch: a row of the verdict table.

    Attributes:
        kind: The rule (see :data:`KINDS`).
        stream: The stream, or ``"all"`` for the model-wide ``not_learning``.
        state: ``"ok"``, ``"ok (set aside: overfitting first)"`` (the value is past the threshold,
            but a root cause judged earlier explains it, see the module docstring),
            ``"information"`` (``frozen``), ``"pending (1 of 2 epochs)"`` (the condition held but
            not yet for ``patience`` epochs), ``"warning (3 epochs)"``, or ``"warning, clearing (1
            of 2 epochs)"`` (reported, and the condition failed for fewer than ``patience`` epochs).
        value: The measured value the rule compares, or None when it has none.
        threshold: The comparison, e.g. ``"> 1"`` (relaxed by ``release`` while reported).
        knob: What to change when it warns, e.g. ``"lr down"``.
    """

    kind: str
    stream: str
    state: str
    value: float | None
    threshold: str
    knob: str


# kind -> (comparison, StreamThresholds field, upward, knob); the value is the one the rule compares
_LIMITS: dict[str, tuple[str, str | None, bool, str]] = {
    "not_learning": ("score within", "chance_margin", True, "lr up, or check the data"),
    "nonfinite": (">", None, True, "check inputs, then lr down"),
    "not_optimized": ("", None, True, "add its parameters to an optimizer"),
    "overfitting": (">", "overfit_score", True, "weight_decay up or lr down"),
    "too_fast": (">", "fast_update_ratio", True, "lr down"),
    "dominant": (">=", "dominance_ratio", True, "lr down"),
    "stalled": ("<", "stall_update_ratio", False, "lr up"),
    "slow": ("<", "slow_ratio", False, "lr up"),
    "weight_growth": (">=", "weight_growth_ratio", True, "weight_decay up"),
    "frozen": ("", None, True, "none (information)"),
}


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
        nonfinite_inputs: NaN/Inf values in the stream's own inputs (``batch[0][stream]``),
            summed over the logged steps of the epoch whose gradients were not finite. A stream
            is present only if its inputs were checked on such a step (absent: no such step, or
            the batch does not map stream names to input tensors).
        pretrained: Parts declared pretrained (the module's ``pretrained_parts``); the others
            are fresh.
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
        score_label: What ``train_acc``/``val_acc`` measure, in words: ``"accuracy"``
            (classification), ``"pair accuracy"`` (ranking) or ``"correlation"`` (Poisson).
    """

    epoch: int
    streams: Sequence[str]
    grad_norm: Mapping[str, float] = field(default_factory=dict)
    update_ratio: Mapping[str, float] = field(default_factory=dict)
    max_update_ratio: Mapping[str, float] = field(default_factory=dict)
    weight_growth: Mapping[str, float] = field(default_factory=dict)
    nonfinite: Mapping[str, int] = field(default_factory=dict)
    nonfinite_inputs: Mapping[str, int] = field(default_factory=dict)
    pretrained: frozenset[str] = frozenset()
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
    score_label: str = "accuracy"


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
    if not names:
        return "no other stream"
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _input_culprits(ev: EpochEvidence) -> list[str]:
    """Streams whose own inputs held NaN/Inf on the steps where their gradients were not finite."""
    return [m for m in ev.streams if ev.nonfinite_inputs.get(m, 0) > 0 and ev.nonfinite.get(m, 0) > 0]


def _converged(ev: EpochEvidence, m: str, t: StreamThresholds) -> bool:
    return ev.train_acc.get(m, 0.0) >= t.converged_acc and ev.val_acc.get(m, 1.0) >= t.converged_acc


def _pretrained_lr_excess(ev: EpochEvidence, m: str, t: StreamThresholds) -> tuple[bool | None, str | None]:
    """Whether pretrained part ``m``'s lr is above ``pretrained_lr_ratio`` x the fresh parts' largest lr.

    Returns:
        ``(verdict, fresh part with the largest lr)``; the verdict is None when it cannot be
        decided (``m`` not pretrained, an lr unknown, or no fresh part to compare with).
    """
    if m not in ev.pretrained or m not in ev.lr:
        return None, None
    fresh = [(ev.lr[n], n) for n in ev.streams if n not in ev.pretrained and n in ev.lr and n not in ev.frozen]
    if not fresh:
        return None, None
    lr_fresh, name = max(fresh)
    return ev.lr[m] > t.pretrained_lr_ratio * lr_fresh, name


class Advisor:
    """Evaluates the rules each epoch and keeps their hysteresis state.

    Args:
        thresholds: Thresholds and hysteresis settings.
    """

    def __init__(self, thresholds: StreamThresholds) -> None:
        self.thresholds = thresholds
        self.flags: dict[str, _Flag] = {}
        self.verdicts: list[Verdict] = []
        """The latest epoch's verdict per rule and stream (rules that were judged, or are reported)."""

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

    def _limit(self, kind: str, stream: str) -> float | None:
        """The threshold the rule compares ``stream``'s value with now (relaxed while reported)."""
        _, field_name, upward, _ = _LIMITS[kind]
        if field_name is None:
            return 0.0 if kind == "nonfinite" else None
        limit = getattr(self.thresholds, field_name)
        return limit if kind == "not_learning" else self._relaxed(kind, stream, limit, upward)

    def _threshold_text(self, kind: str, stream: str, ev: EpochEvidence) -> str:
        comparison, limit = _LIMITS[kind][0], self._limit(kind, stream)
        if limit is None:
            return ""
        if kind == "not_learning":
            return f"{comparison} {_fmt(limit)} of chance"
        text = f"{comparison} {_fmt(limit)}"
        if kind == "too_fast" and stream in ev.pretrained:
            text += f", or lr > {_fmt(self.thresholds.pretrained_lr_ratio)}x the fresh parts'"
        return text

    def _set_aside(self, kind: str, stream: str, value: float | None, limit: float | None) -> str | None:
        """Why a value past its threshold is no warning: a root cause judged earlier explains it."""
        comparison = _LIMITS[kind][0]
        crossed = {">": lambda v, t: v > t, ">=": lambda v, t: v >= t, "<": lambda v, t: v < t}.get(comparison)
        if crossed is None or value is None or limit is None or not crossed(value, limit):
            return None
        earlier = [v for v in self.verdicts if v.kind != kind and not v.state.startswith("ok")]
        own = next((v.kind for v in earlier if v.stream == stream), None)
        if own is not None:
            return f"set aside: {own} first"
        other = next((v for v in earlier if v.kind in ("too_fast", "slow", "stalled")), None)
        if other is not None:
            return f"set aside while {other.stream} is {other.kind}"
        return "set aside: converged or compared with no peer"

    def _verdict(
        self, kind: str, stream: str, raw: bool | None, value: float | None, threshold: str, flag: _Flag
    ) -> Verdict:
        patience = 1 if kind in _IMMEDIATE else self.thresholds.patience
        set_aside = self._set_aside(kind, stream, value, self._limit(kind, stream)) if raw is False else None
        if kind == "frozen":
            state = "information" if flag.active else "ok"
        elif set_aside is not None and not flag.active:
            state = f"ok ({set_aside})"
        elif flag.active and raw is False:
            state = f"warning, clearing ({flag.off_streak} of {patience} epochs)"
        elif flag.active:
            state = f"warning ({max(flag.held, 1)} epoch{'s' if max(flag.held, 1) != 1 else ''})"
        elif raw:
            state = f"pending ({flag.on_streak} of {patience} epochs)"
        else:
            state = "ok"
        return Verdict(kind, "all" if stream == ALL else stream, state, value, threshold, _LIMITS[kind][3])

    def _conditions(self, ev: EpochEvidence) -> Conditions:
        """Raw condition and its value, per kind and stream.

        Rules are evaluated root cause first, so that a symptom of one problem is not reported
        as another problem with the opposite advice: a stream that memorised the training set
        has tiny gradients and updates (not ``slow``, and no reference for ``dominant``); a
        stream that cannot move (``slow``/``stalled``) keeps large gradients, so no stream is
        called ``dominant`` while one is slow - the ``slow`` advice names the knob - and a slow
        stream's weights, which barely change, are no reference for ``weight_growth``.
        """
        t = self.thresholds
        out: Conditions = {kind: {} for kind in KINDS}
        culprits = _input_culprits(ev)
        for m in ev.streams:
            count = ev.nonfinite.get(m, 0)
            if culprits:  # NaN/Inf inputs are the root cause; the other streams' NaN follow through the loss
                out["nonfinite"][m] = (m in culprits, float(ev.nonfinite_inputs.get(m, 0)))
            else:
                out["nonfinite"][m] = (count > 0, float(count))
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
        # a converged stream's vanishing gradients are success, a memorising one's are not an lr
        # problem: neither is slow, dominant or a yardstick for the others
        settled = overfitting | {m for m in learning if _converged(ev, m, t)}

        def peers(m: str, exclude: set[str]) -> list[str]:
            # pretrained and fresh parts move at different rates by design: compared only among their own kind
            return [n for n in learning if n != m and n not in exclude and (n in ev.pretrained) == (m in ev.pretrained)]

        for m in learning:
            u = ev.update_ratio.get(m)
            if u is None:
                continue
            if m in settled or m in fast:
                out["stalled"][m], out["slow"][m] = (False, u), (False, None)  # slow's value is a ratio to peers
                continue
            # the proxy's scale says nothing about the real update: no absolute verdict on it
            stalled = not ev.update_ratio_is_proxy and u < self._relaxed("stalled", m, t.stall_update_ratio, False)
            out["stalled"][m] = (None if ev.update_ratio_is_proxy else stalled, u)
            if not ev.compare_streams:
                continue
            other_u = [ev.update_ratio.get(n) for n in peers(m, settled | fast)]
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
            other_gn = [ev.grad_norm[n] for n in peers(m, settled) if n in ev.grad_norm]
            if gn is None or not other_gn or max(other_gn) <= 0:
                continue
            ratio = gn / max(other_gn)
            candidate = m not in settled and not slow and not fast
            out["dominant"][m] = (candidate and ratio >= self._relaxed("dominant", m, t.dominance_ratio, True), ratio)

        for m in learning:
            g = None if m in fast else ev.weight_growth.get(m)
            other_g = [ev.weight_growth[n] for n in peers(m, slow | fast) if n in ev.weight_growth]
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

    def _too_fast(self, ev: EpochEvidence, learning: Sequence[str], out: Conditions) -> set[str]:
        """Fill the ``too_fast`` conditions; return the streams that move (or moved) too fast."""
        t = self.thresholds
        for m in learning:
            largest = ev.max_update_ratio.get(m)
            raw: bool | None = None
            if largest is not None:
                raw = largest > self._relaxed("too_fast", m, t.fast_update_ratio, True)
                if not raw and self._is_active("too_fast", m):  # still carrying the weights it inflated
                    others = [ev.weight_growth[n] for n in learning if n != m and n in ev.weight_growth]
                    growth = ev.weight_growth.get(m)
                    reference = max(others) if others and ev.compare_streams else 1.0
                    raw = growth is not None and reference > 0 and growth >= t.weight_growth_ratio * reference
                if self._is_active("too_fast", m):  # the message names the largest step seen, not the latest
                    largest = max(largest, self.flags[f"too_fast/{m}"].value or 0.0)
            pretrained, _ = _pretrained_lr_excess(ev, m, t)
            if pretrained is not None:
                raw = bool(raw) or pretrained
            out["too_fast"][m] = (raw, largest)
        return {m for m in learning if out["too_fast"].get(m, (None,))[0] or self._is_active("too_fast", m)}

    def advise(self, ev: EpochEvidence) -> list[Recommendation]:
        """Update the hysteresis with one epoch of evidence and return the active advice.

        Args:
            ev: The epoch's evidence.

        Returns:
            Active recommendations, warnings first in :data:`KINDS` order, then information. If
            no warning is active, exactly one of :data:`INFO_KINDS` closes the list:
            ``pending`` when a condition held this epoch but is not reported yet,
            ``not_measured`` when part of the epoch could not be checked, else ``healthy``.
        """
        conditions = self._conditions(ev)
        recs: list[Recommendation] = []
        pending: list[tuple[str, str, _Flag]] = []
        self.verdicts = []
        for kind in KINDS:
            for m in [ALL] if kind == "not_learning" else ev.streams:
                raw, value = conditions[kind].get(m, (None, None))
                threshold = self._threshold_text(kind, m, ev)  # before the update: the threshold the rule used
                flag = self._update(kind, m, raw, value)
                if raw is not None or flag.active:
                    self.verdicts.append(self._verdict(kind, m, raw, value, threshold, flag))
                if flag.active:
                    severity: Literal["warning", "info"] = "info" if kind == "frozen" else "warning"
                    message = _MESSAGES[kind](ev, m, flag, self.thresholds)
                    recs.append(Recommendation(kind, None if m == ALL else m, message, severity, max(flag.held, 1)))
                elif raw:
                    pending.append((kind, m, flag))
        recs.sort(key=lambda r: r.severity == "info")  # stable: keeps KINDS order within
        if any(r.severity == "warning" for r in recs):
            return recs
        gaps = _not_measured(ev)
        if pending:
            recs.append(Recommendation("pending", None, _pending_message(ev, pending, self.thresholds, gaps), "info"))
        elif gaps:
            recs.append(Recommendation("not_measured", None, _not_measured_message(ev, gaps), "info"))
        else:
            recs.append(Recommendation("healthy", None, _healthy_message(ev, self.thresholds), "info"))
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


def _ratio_name(ev: EpochEvidence) -> str:
    return "lr*||g||/||w|| (a proxy: track_updates=False)" if ev.update_ratio_is_proxy else "||dw||/||w||"


def _same_kind_others(ev: EpochEvidence, m: str) -> list[str]:
    """The other streams a stream is compared with: pretrained with pretrained, fresh with fresh."""
    return [n for n in _others(ev, m) if (n in ev.pretrained) == (m in ev.pretrained)]


def _per_stream(values: Mapping[str, float], streams: Sequence[str]) -> str:
    return ", ".join(f"{m} {_fmt(values[m])}" for m in streams if m in values)


def _msg_overfitting(ev: EpochEvidence, m: str, flag: _Flag, t: StreamThresholds) -> str:
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


def _msg_dominant(ev: EpochEvidence, m: str, flag: _Flag, t: StreamThresholds) -> str:
    others = _others(ev, m)
    extra = f", OGM-GE discrepancy {_fmt(ev.discrepancy[m])}" if m in ev.discrepancy else ""
    return (
        f"{m} dominates the gradients (grad norm {_fmt(flag.value)}x that of "
        f"{_others_text(others)}{extra} {_for(flag)}): lower {_group(ev, m)} {_knob(ev, m, 'lr')}; "
        f"if {m}'s inputs or features are on a larger scale than the others', normalise them instead."
        + _shared_note(ev, m)
    )


def _msg_not_learning(ev: EpochEvidence, m: str, flag: _Flag, t: StreamThresholds) -> str:
    streams = [n for n in ev.streams if n in ev.train_acc]
    levels = set(ev.chance.values())
    level = levels.pop() if len(levels) == 1 else None  # one chance level for every stream: name it
    chance = "chance"
    if level is not None:
        chance = f"chance (1/{round(1 / level)} = {_fmt(level)})" if level > 0 else f"chance ({_fmt(level)})"
    head = (
        f"no stream learns: every stream's {ev.score_label} is at {chance} (train {_per_stream(ev.train_acc, streams)}"
        + (f"; val {_per_stream(ev.val_acc, streams)}" if ev.val_acc else "")
        + f") {_for(flag)}. "
    )
    measured = [n for n in streams if n in ev.update_ratio]
    updates = _per_stream(ev.update_ratio, measured)
    if ev.update_ratio_is_proxy or not measured:
        return head + (
            "Whether the lrs are too small cannot be told without the measured update (track_updates=False "
            "gives only the lr*||g||/||w|| proxy): check the data pipeline first (are the labels aligned with "
            "the inputs?), then raise the lrs."
        )
    if all(ev.update_ratio[n] < t.low_update_ratio for n in measured):
        lrs = ", ".join(f"{_group(ev, n)} {_fmt(ev.lr[n])}" for n in measured if n in ev.lr)
        return head + (
            f"The weights barely move: update ratio ||dw||/||w|| per step {updates}, below the healthy range "
            f"({_fmt(t.low_update_ratio)} .. 1e-2), so the lrs are too small: raise every group's lr"
            + (f" (now {lrs})" if lrs else "")
            + ", e.g. 10x at a time."
        )
    return head + (
        f"The weights move at a normal rate (update ratio ||dw||/||w|| per step {updates}), so the lrs are not "
        "the cause: check the data pipeline (are the labels aligned with the inputs, does each stream carry "
        "information about the label?)."
    )


def _msg_too_fast(ev: EpochEvidence, m: str, flag: _Flag, t: StreamThresholds) -> str:
    pretrained, fresh = _pretrained_lr_excess(ev, m, t)
    step = flag.value is not None and flag.value > t.fast_update_ratio * t.release
    if pretrained and fresh is not None and not step:
        lr, lr_fresh = ev.lr[m], ev.lr[fresh]
        updates = _per_stream(ev.update_ratio, [m, fresh])
        measured = f"; measured update ratio {_ratio_name(ev)} per step: {updates}" if updates else ""
        return (
            f"{m} moves too fast for a pretrained part: its lr {_fmt(lr)} is {_fmt(lr / lr_fresh)}x that of the "
            f"fresh {fresh} ({_fmt(lr_fresh)}){measured}. At the lr of a fresh part it is rewritten as fast as "
            f"the fresh part learns and forgets its pretraining: lower {_group(ev, m)} {_knob(ev, m, 'lr')}, "
            f"e.g. to 1/10 of {fresh}'s ({_fmt(lr_fresh / 10)})." + _shared_note(ev, m)
        )
    growth = ev.weight_growth.get(m)
    grown = f"; its weights are now x{_fmt(growth)} their size at the start" if growth is not None else ""
    others = [ev.grad_norm[n] for n in _others(ev, m) if n in ev.grad_norm]
    gn = ev.grad_norm.get(m)
    # large gradients at an lr no larger than the others' point at the scale of the inputs, not the lr
    lr_above = m in ev.lr and any(ev.lr[m] > ev.lr[n] for n in _others(ev, m) if n in ev.lr)
    scale = ""
    if (
        ev.compare_streams
        and not lr_above
        and gn is not None
        and others
        and max(others) > 0
        and gn >= t.dominance_ratio * max(others)
    ):
        scale = (
            f" Its gradients are also {_fmt(gn / max(others))}x the others': if {m}'s inputs or features are on a "
            "larger scale, normalising them is the lasting fix."
        )
    return (
        f"{m} moves too fast (largest update ratio ||dw||/||w|| of one step {_fmt(flag.value)}, the healthy range "
        f"being 1e-4 .. 1e-2{grown}): lower {_group(ev, m)} {_knob(ev, m, 'lr')}; "
        "warm-up or gradient clipping (ParamGroup max_grad_norm) also bound the first steps."
        + scale
        + _shared_note(ev, m)
    )


def _msg_slow(ev: EpochEvidence, m: str, flag: _Flag, t: StreamThresholds) -> str:
    others = _same_kind_others(ev, m)
    return (
        f"{m} learns slowly (update ratio {_ratio_name(ev)} {_fmt(ev.update_ratio.get(m))}, "
        f"{_fmt(flag.value)}x the median of {_others_text(others)} {_for(flag)}): raise "
        f"{_group(ev, m)} {_knob(ev, m, 'lr')}." + _shared_note(ev, m)
    )


def _msg_stalled(ev: EpochEvidence, m: str, flag: _Flag, t: StreamThresholds) -> str:
    return (
        f"{m} has stalled (update ratio ||dw||/||w|| {_fmt(ev.update_ratio.get(m))} "
        f"{_for(flag)}): raise {_group(ev, m)} {_knob(ev, m, 'lr')}, and check that its lr is "
        "not 0 and its parameters are in the optimizer." + _shared_note(ev, m)
    )


def _msg_weight_growth(ev: EpochEvidence, m: str, flag: _Flag, t: StreamThresholds) -> str:
    others = _same_kind_others(ev, m)
    return (
        f"{m} weights grow fastest (||w|| x{_fmt(ev.weight_growth.get(m))} since the start, "
        f"{_fmt(flag.value)}x the growth of {_others_text(others)} {_for(flag)}): raise "
        f"{_group(ev, m)} {_knob(ev, m, 'weight_decay')}." + _shared_note(ev, m)
    )


def _msg_nonfinite(ev: EpochEvidence, m: str, flag: _Flag, t: StreamThresholds) -> str:
    culprits = _input_culprits(ev)
    if m in culprits:
        followers = [f"{n} ({ev.nonfinite[n]})" for n in ev.streams if n not in culprits and ev.nonfinite.get(n, 0) > 0]
        follow = (
            f"; the NaN/Inf gradients of {_others_text(followers)} follow from them through the shared loss"
            if followers
            else ""
        )
        return (
            f"{m}'s inputs hold NaN/Inf values ({int(ev.nonfinite_inputs[m])} in the batches of the steps with "
            f"non-finite gradients this epoch; {int(ev.nonfinite.get(m, 0))} NaN/Inf gradient values in {m}{follow}): "
            f"check the {m} inputs (data pipeline, missing values, normalisation) - the lr is not the cause."
        )
    count = int(ev.nonfinite.get(m, 0))
    if m in ev.nonfinite_inputs:  # checked and finite: the optimisation diverged
        return (
            f"{m} has non-finite gradients ({count} NaN/Inf values this epoch) although its inputs on those steps "
            f"were finite: lower {_group(ev, m)} {_knob(ev, m, 'lr')}; gradient clipping (ParamGroup "
            "max_grad_norm) also bounds it." + _shared_note(ev, m)
        )
    return (
        f"{m} has non-finite gradients ({count} NaN/Inf values this epoch); its inputs could not be checked (the "
        "batch does not map stream names to input tensors), so the cause is undecided: check the "
        f"{m} inputs for NaN/Inf first; if they are finite, lower {_group(ev, m)} {_knob(ev, m, 'lr')}."
    )


def _msg_frozen(ev: EpochEvidence, m: str, flag: _Flag, t: StreamThresholds) -> str:
    return (
        f"{m} is frozen (no trainable parameter or no gradient this epoch): its weights do not "
        "change. Ignore this if intended; otherwise set requires_grad and check that its output "
        "reaches the loss."
    )


def _msg_not_optimized(ev: EpochEvidence, m: str, flag: _Flag, t: StreamThresholds) -> str:
    return (
        f"{m} receives gradients but none of its parameters is in an optimizer param group: add "
        "them in configure_optimizers (or a ParamGroup pattern)."
    )


_MESSAGES: dict[str, Callable[[EpochEvidence, str, _Flag, StreamThresholds], str]] = {
    "not_learning": _msg_not_learning,
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

_PENDING_VALUE = {
    "overfitting": "overfitting score {}",
    "dominant": "grad norm {}x the others'",
    "slow": "update ratio {}x the others' median",
    "stalled": "update ratio {}",
    "weight_growth": "weight growth {}x the others'",
}


def _not_measured(ev: EpochEvidence) -> list[str]:
    """What this epoch could not check, although the set-up can measure it."""
    gaps = []
    if not (ev.grad_norm or ev.update_ratio):
        gaps.append(
            "gradients and updates not measured: no optimizer step was logged in this epoch (log more often than "
            "once per epoch: log_every_n_steps below the steps per epoch)"
        )
    if ev.compare_streams and ev.predictions_seen and not ev.overfit_score:
        reason = "no validation ran this epoch" if not ev.val_acc else "validation returned no per-stream predictions"
        gaps.append(f"overfitting not measured: {reason} (the last verdict on it stands)")
    return gaps


def _measured_fine(ev: EpochEvidence) -> list[str]:
    details = []
    if ev.grad_norm:
        details.append("grad norm " + _per_stream(ev.grad_norm, list(ev.grad_norm)))
    if ev.update_ratio:
        details.append(f"update ratio {_ratio_name(ev)} " + _per_stream(ev.update_ratio, list(ev.update_ratio)))
    if ev.overfit_score:
        details.append("overfitting score " + _per_stream(ev.overfit_score, list(ev.overfit_score)))
    return details


def _pending_message(
    ev: EpochEvidence, pending: Sequence[tuple[str, str, _Flag]], t: StreamThresholds, gaps: Sequence[str]
) -> str:
    items = []
    for kind, m, flag in pending:
        held = f"{flag.on_streak} of {t.patience} epochs"
        if kind == "not_learning":
            items.append(
                f"every stream's {ev.score_label} at chance (train {_per_stream(ev.train_acc, ev.streams)}; {held})"
            )
        else:
            value = _PENDING_VALUE[kind].format(_fmt(flag.value)) + "; " if kind in _PENDING_VALUE else ""
            items.append(f"{kind} on {m} ({value}{held})")
    text = (
        "pending, not healthy: " + "; ".join(items) + f". Reported as advice if it holds {t.patience} epochs in a row."
    )
    return text + (" Also " + "; ".join(gaps) + "." if gaps else "")


def _not_measured_message(ev: EpochEvidence, gaps: Sequence[str]) -> str:
    fine = _measured_fine(ev)
    tail = f" What was measured is fine ({'; '.join(fine)})." if fine else ""
    return "not measured, so not called healthy: " + "; ".join(gaps) + "." + tail


def _healthy_message(ev: EpochEvidence, t: StreamThresholds) -> str:
    details = _measured_fine(ev)
    for m in sorted(ev.pretrained):
        _, fresh = _pretrained_lr_excess(ev, m, t)
        if fresh is not None:
            details.append(f"pretrained {m} at {_fmt(ev.lr[m] / ev.lr[fresh])}x the lr of the fresh {fresh}")
    # what this set-up cannot measure in any epoch: named, so that "healthy" never claims it
    if ev.update_ratio_is_proxy:
        details.append(
            "step size not measured: track_updates=False gives only the lr*||g||/||w|| proxy (too_fast and "
            "stalled not checked)"
        )
    if ev.compare_streams:
        if not ev.predictions_seen:
            details.append("overfitting not measured: the model returns no per-stream predictions")
        return "healthy: no stream is starving, dominating, memorising or diverging (" + "; ".join(details) + ")."
    # parts in series (backbone, head) have no predictions of their own and are not compared
    details.append(f"the parts {list(ev.streams)} are in series and not compared with each other")
    checked = "stalled, memorising or diverging" if ev.overfit_score else "stalled or diverging"
    return f"healthy: no part is {checked} (" + "; ".join(details) + ")."
