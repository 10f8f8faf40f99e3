"""Each stream's own prediction quality over an epoch, for any task of the per-stream output protocol.

:class:`PredictionTally` collects one stage's :class:`~mslightning.streams.StreamOutputs` over an
epoch and computes, per stream, the task's *score* (accuracy, pair accuracy or correlation), its
*loss* (cross-entropy, log loss or Poisson NLL) and its *confidence* in the right answer (for the
balance between streams), as exact sums over every sample of the epoch (never averages of batch
averages). It needs no Trainer: a ``reduce_sum`` function (e.g. ``trainer.strategy.reduce``)
combines the sums of several processes in one collective.

Cost: :meth:`PredictionTally.update` only keeps references to the (detached) predictions; the
arithmetic runs on every ``flush_every`` batches at once, so a training step pays a few
microseconds of Python, not a dozen small kernels per stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from mslightning.streams import (
    IGNORE_INDEX,
    ClassificationOutputs,
    PoissonOutputs,
    RankingOutputs,
    StreamOutputs,
    parse_stream_outputs,
)

__all__ = ["PredictionTally", "StreamScores", "read_step_outputs"]

StreamScores = dict[str, Tensor]
"""``{"score", "loss", "confidence"}`` -> float32 0-dim tensor, for one stream."""

_POISSON_EPS = 1e-8


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _classification_sums(logits: Tensor, target: Tensor, mask: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``[count, correct, cross-entropy sum, true-class probability sum]`` over the scored rows."""
    logits = logits.float()
    if logits.shape[1] == 1:  # one binary logit z: the two classes' logits are (0, z)
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    target = target.long()
    weight = (target != IGNORE_INDEX).to(dtype)  # weights, not indexing: no host sync
    log_probs = logits - logits.logsumexp(dim=1, keepdim=True)  # 3x faster than log_softmax for few classes on CPU
    true = log_probs.gather(1, target.clamp(min=0)[:, None]).squeeze(1).to(dtype)
    correct = (logits.argmax(dim=1) == target).to(dtype)
    return torch.stack([weight.sum(), (correct * weight).sum(), -(true * weight).sum(), (true.exp() * weight).sum()])


def _ranking_sums(logits: Tensor, target: Tensor, mask: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``[pairs, decided pairs, correct, log-loss sum, preferred-item probability sum]``."""
    z = logits.reshape(-1).float()
    t = target.reshape(-1).float()
    decided = (t != 0.5).to(dtype)
    a_preferred = t > 0.5
    correct = ((z > 0) == a_preferred).to(dtype) * decided
    log_loss = F.binary_cross_entropy_with_logits(z, t, reduction="none").to(dtype)
    p = torch.sigmoid(z).to(dtype)
    preferred = torch.where(a_preferred, p, 1 - p) * decided
    return torch.stack([torch.ones_like(p).sum(), decided.sum(), correct.sum(), log_loss.sum(), preferred.sum()])


def _poisson_sums(rates: Tensor, counts: Tensor, mask: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Per neuron ``[bins, sum x, sum y, sum xy, sum x^2, sum y^2, NLL sum]``, shape (7, N)."""
    neurons = rates.shape[-1]
    x = rates.reshape(-1, neurons).to(dtype)
    y = counts.reshape(-1, neurons).to(dtype)
    recorded = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.reshape(-1, neurons).bool()
    zero = torch.zeros((), dtype=dtype, device=x.device)
    x, y = torch.where(recorded, x, zero), torch.where(recorded, y, zero)  # unrecorded bins add nothing, NaN or not
    m = recorded.to(dtype)
    nll = torch.where(recorded, x - y * torch.log(x.clamp(min=_POISSON_EPS)), zero)
    return torch.stack([m.sum(0), x.sum(0), y.sum(0), (x * y).sum(0), (x * x).sum(0), (y * y).sum(0), nll.sum(0)])


def _pearson(sums: Tensor) -> Tensor:
    """Per-neuron Pearson correlation from :func:`_poisson_sums` (NaN where a variance is 0)."""
    n, sx, sy, sxy, sxx, syy, _ = sums
    cov = n * sxy - sx * sy
    var_x, var_y = n * sxx - sx * sx, n * syy - sy * sy
    defined = (var_x > 0) & (var_y > 0)
    return torch.where(defined, cov / (var_x * var_y).clamp(min=1e-300).sqrt(), torch.full_like(cov, float("nan")))


def _classification_scores(parts: Sequence[Tensor]) -> dict[str, Tensor]:
    count, correct, cross_entropy, true_prob = sum(parts)
    return {"score": correct / count, "loss": cross_entropy / count, "confidence": true_prob / count}


def _ranking_scores(parts: Sequence[Tensor]) -> dict[str, Tensor]:
    pairs, decided, correct, log_loss, preferred = sum(parts)
    return {"score": correct / decided, "loss": log_loss / pairs, "confidence": preferred / decided}


def _poisson_scores(parts: Sequence[Tensor]) -> dict[str, Tensor]:
    per_neuron = torch.cat([_pearson(p) for p in parts])  # every neuron of every session
    defined = ~per_neuron.isnan()
    corr = torch.where(defined, per_neuron, torch.zeros_like(per_neuron)).sum() / defined.sum()
    nll = sum(p[6].sum() for p in parts) / sum(p[0].sum() for p in parts)
    return {"score": corr, "loss": nll, "confidence": corr.clamp(min=0)}


_TASK_MATH: dict[type[StreamOutputs], tuple[Callable[..., Tensor], Callable[[Sequence[Tensor]], dict[str, Tensor]]]] = {
    ClassificationOutputs: (_classification_sums, _classification_scores),
    RankingOutputs: (_ranking_sums, _ranking_scores),
    PoissonOutputs: (_poisson_sums, _poisson_scores),
}
"""Per task: the batch sums ``(prediction, target, mask, dtype)`` and the epoch scores from their totals."""


_Pending = tuple[dict[str, Tensor], Tensor, Tensor | None, str | None]  # predictions, target, mask, session
Note = tuple[str, dict[str, Any]]
"""A one-time note: its key in :data:`~mslightning.callbacks.monitor_metrics.NOTES` and its details."""


def read_step_outputs(
    outputs: Any, streams: Sequence[str], checked: set[Any] | None = None
) -> tuple[StreamOutputs | None, list[Note]]:
    """The monitored streams' outputs of one step, checked, and what to tell the user about them.

    Args:
        outputs: What ``training_step``/``validation_step`` returned.
        streams: The monitored streams; predictions of other streams (another monitor's) are
            left out.
        checked: Layouts (task, names, shapes, dtypes) already checked; a batch with one of them
            is not checked again (the per-batch cost), a new one is checked and added.

    Returns:
        The outputs to tally (None: nothing to score) and the notes: ``"protocol"`` (no
        per-stream outputs), ``"other"`` (unmonitored streams left out), ``"soft"`` (float
        classification targets, skipped), ``"missing"`` (monitored streams without a prediction).

    Raises:
        ValueError: For malformed outputs (:meth:`StreamOutputs.check`).
    """
    parsed = parse_stream_outputs(outputs)
    if parsed is None:
        return None, [("protocol", {"streams": list(streams)})]
    notes: list[Note] = []
    other = [s for s in parsed.predictions if s not in streams]
    if other:  # e.g. a second monitor watching other streams of the same model
        notes.append(("other", {"streams": other, "monitored": list(streams)}))
        parsed = replace(parsed, predictions={s: p for s, p in parsed.predictions.items() if s not in other})
    if not parsed.predictions:
        return None, notes
    if isinstance(parsed, ClassificationOutputs) and getattr(parsed.target, "is_floating_point", bool)():
        return None, [*notes, ("soft", {"shape": tuple(parsed.target.shape)})]
    mask = getattr(parsed, "mask", None)
    layout = (
        type(parsed),
        getattr(parsed.target, "shape", None),
        getattr(parsed.target, "dtype", None),
        None if mask is None else mask.shape,
        tuple((s, getattr(p, "shape", None), getattr(p, "dtype", None)) for s, p in parsed.predictions.items()),
    )
    if checked is None or layout not in checked:
        parsed.check(streams)
        if checked is not None and len(checked) < 64:
            checked.add(layout)
    missing = [s for s in streams if s not in parsed.predictions]
    if missing:
        notes.append(("missing", {"streams": missing}))
    return parsed, notes


class PredictionTally:
    """Per-stream sums of one stage's predictions over an epoch (one task per tally).

    Args:
        flush_every: Batches kept before their sums are computed together (>= 1).
        max_pending_elements: Also compute them once the kept predictions and targets hold this
            many elements (large Poisson outputs are not held for 32 batches).

    Raises:
        ValueError: For a bad ``flush_every`` or ``max_pending_elements``.
    """

    def __init__(self, flush_every: int = 32, max_pending_elements: int = 1 << 22) -> None:
        for name, value in (("flush_every", flush_every), ("max_pending_elements", max_pending_elements)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        self.flush_every = flush_every
        self.max_pending_elements = max_pending_elements
        self.task: type[StreamOutputs] | None = None
        """The task of the outputs seen (set by the first update)."""
        self.chance: dict[str, float] = {}
        """Stream -> the score a prediction that knows nothing gets."""
        self._pending: list[_Pending] = []
        self._pending_elements = 0
        self._sums: dict[tuple[str, str | None], Tensor] = {}

    @property
    def seen(self) -> bool:
        """Whether any batch was added since the last reset."""
        return bool(self._pending or self._sums)

    def reset(self) -> None:
        """Forget the epoch."""
        self._pending.clear()
        self._pending_elements = 0
        self._sums.clear()

    def update(self, outputs: StreamOutputs) -> None:
        """Add one batch (already checked with :meth:`StreamOutputs.check`).

        Args:
            outputs: The batch's per-stream outputs.

        Raises:
            ValueError: If the task differs from the one seen before.
        """
        if self.task is None:
            self.task = type(outputs)
        elif type(outputs) is not self.task:
            raise ValueError(
                f"The per-stream outputs changed task within a run: {self.task.__name__} before, "
                f"{type(outputs).__name__} now."
            )
        for stream, prediction in outputs.predictions.items():
            if stream not in self.chance:
                self.chance[stream] = outputs.chance(prediction)
        mask = getattr(outputs, "mask", None)
        # plain detached references: no graph kept alive, no dataclass rebuilt per batch
        predictions = {s: p.detach() for s, p in outputs.predictions.items()}
        target = outputs.target.detach()
        self._pending.append(
            (predictions, target, None if mask is None else mask.detach(), getattr(outputs, "session", None))
        )
        self._pending_elements += target.numel() * (len(predictions) + 1)
        if len(self._pending) >= self.flush_every or self._pending_elements >= self.max_pending_elements:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        batches, self._pending, self._pending_elements = self._pending, [], 0
        sessions: dict[str | None, list[_Pending]] = {}
        for batch in batches:
            sessions.setdefault(batch[3], []).append(batch)
        for session, group in sessions.items():
            for stream in dict.fromkeys(s for predictions, *_ in group for s in predictions):
                members = [b for b in group if stream in b[0]]
                target = torch.cat([b[1] for b in members])
                prediction = torch.cat([b[0][stream] for b in members])
                mask = None
                if any(b[2] is not None for b in members):
                    mask = torch.cat(
                        [torch.ones_like(b[1], dtype=torch.bool) if b[2] is None else b[2].bool() for b in members]
                    )
                sums = self._sums_of(prediction, target, mask, _accumulation_dtype(target.device))
                key = (stream, session)
                self._sums[key] = sums if key not in self._sums else self._sums[key] + sums

    def _sums_of(self, prediction: Tensor, target: Tensor, mask: Tensor | None, dtype: torch.dtype) -> Tensor:
        if self.task not in _TASK_MATH:
            raise TypeError(f"No tally for per-stream outputs of type {getattr(self.task, '__name__', self.task)}.")
        return _TASK_MATH[self.task][0](prediction, target, mask, dtype)

    def compute(
        self,
        reduce_sum: Callable[[Tensor], Tensor] | None = None,
        gather: Callable[[Any], list[Any]] | None = None,
    ) -> dict[str, StreamScores]:
        """The epoch's score, loss and confidence per stream.

        Args:
            reduce_sum: Sums a tensor over processes (e.g.
                ``lambda t: trainer.strategy.reduce(t, reduce_op="sum")``). None: this process only.
            gather: Collects one picklable object from every process (e.g.
                ``torch.distributed.all_gather_object``). Given with ``reduce_sum``, the processes
                first agree on the streams and sessions that any of them saw (a process that saw
                none of a session's batches adds zeros), so the sums line up; every process must
                call ``compute``, also one that saw no batch.

        Returns:
            Stream -> ``{"score", "loss", "confidence"}`` float32 0-dim tensors on the
            predictions' device (NaN where nothing was scored: all targets ignored, all pairs
            tied, no neuron with variance); no device-to-host transfer.
        """
        self._flush()
        shapes = {key: tuple(value.shape) for key, value in self._sums.items()}
        if gather is not None:
            seen = gather((self.task, shapes, self.chance))
            for task, their_shapes, their_chance in seen:
                self.task = self.task or task
                shapes.update(their_shapes)
                for stream, chance in their_chance.items():
                    self.chance.setdefault(stream, chance)
        if not shapes:
            return {}
        keys = sorted(shapes, key=lambda k: (k[0], "" if k[1] is None else k[1]))
        like = next(iter(self._sums.values()), None)
        device = like.device if like is not None else None
        dtype = like.dtype if like is not None else torch.float64
        flat = torch.cat(
            [
                self._sums[k].reshape(-1)
                if k in self._sums
                else torch.zeros(math.prod(shapes[k]), dtype=dtype, device=device)
                for k in keys
            ]
        )
        if reduce_sum is not None:
            flat = reduce_sum(flat)
        by_stream: dict[str, list[Tensor]] = {}
        offset = 0
        for key in keys:
            size = math.prod(shapes[key])
            by_stream.setdefault(key[0], []).append(flat[offset : offset + size].reshape(shapes[key]))
            offset += size
        return {
            stream: {name: value.float().reshape(()) for name, value in self._finalize(parts).items()}
            for stream, parts in by_stream.items()
        }

    def _finalize(self, parts: Sequence[Tensor]) -> dict[str, Tensor]:
        assert self.task is not None
        return _TASK_MATH[self.task][1](parts)
