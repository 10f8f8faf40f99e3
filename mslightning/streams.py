"""What a stream is: its name rule, the parameters it owns, its per-stream outputs, its batches.

A *stream* is one named input of a multi-stream network (``rgb``, ``depth``, ...). Names come
from the user and end up in module and parameter names (``encoders.rgb.*``: torch forbids ``.``
there), TensorBoard tags (``streams/grad_norm/rgb``) and group names, so one rule applies
everywhere (:data:`STREAM_NAME_PATTERN`): letters, digits, ``_`` and ``-``.

A stream owns the parameters that parameter-name patterns select (:func:`stream_patterns_of`,
:func:`match_streams`; the pattern language is :mod:`mslightning.optim.patterns`), each parameter
at most one stream. A module that wants its streams watched separately returns, from its
training and validation steps, each stream's own prediction through the *per-stream output
protocol*: :class:`ClassificationOutputs`, :class:`RankingOutputs` or :class:`PoissonOutputs`
under the key ``"stream_outputs"`` (:func:`parse_stream_outputs`).

The batch contract of every classification datamodule and module is ``(inputs, target)``:
``inputs`` maps each stream name to a floating-point tensor ``(B, C_m, H, W)`` (or ``(B, D_m)``
for a vector stream), ``target`` is an integer tensor ``(B,)`` of class indices in
``[0, num_classes)``. :func:`check_classification_batch` verifies all of that on a batch and
names what disagrees, before torch would fail with a less helpful message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mslightning.optim.patterns import Patterns, as_pattern_list, assign_owners, describe_names

__all__ = [
    "IGNORE_INDEX",
    "STREAM_NAME_PATTERN",
    "STREAM_OUTPUTS_KEY",
    "ClassificationOutputs",
    "PoissonOutputs",
    "RankingOutputs",
    "StreamOutputs",
    "check_classification_batch",
    "check_stream_inputs",
    "check_stream_name",
    "check_stream_patterns",
    "check_streams",
    "match_streams",
    "parse_stream_outputs",
    "stream_pairs",
    "stream_patterns_of",
]

STREAM_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
"""What a stream name may be: letters, digits, ``_`` and ``-`` (matched in full)."""


def check_stream_name(name: Any, origin: str = "streams") -> str:
    """Validate one stream name.

    Args:
        name: The candidate name.
        origin: Where the name came from, for the message (e.g. ``"model.streams"``).

    Returns:
        The name, unchanged.

    Raises:
        ValueError: If ``name`` does not match :data:`STREAM_NAME_PATTERN`.
    """
    if not isinstance(name, str) or not STREAM_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{origin}: stream name {name!r} is not valid: use letters, digits, '_' and '-' (stream names "
            "become parts of parameter names and TensorBoard tags)."
        )
    return name


def check_streams(streams: Any, origin: str = "streams") -> dict[str, int]:
    """Validate a stream name -> channel count (or feature width) mapping.

    Args:
        streams: E.g. ``{"rgb": 3, "depth": 1}``.
        origin: Where the mapping came from, for the message.

    Returns:
        A new ``dict`` with the same items, in order.

    Raises:
        ValueError: If ``streams`` is not a non-empty mapping, a name breaks the name rule, or a
            channel count is not a positive integer.
    """
    if not isinstance(streams, Mapping) or not streams:
        raise ValueError(f"{origin} must map at least one stream name to its channel count, got {streams!r}.")
    for name, channels in streams.items():
        check_stream_name(name, origin)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"{origin}[{name!r}] (channels) must be a positive integer, got {channels!r}.")
    return dict(streams)


def check_stream_inputs(
    inputs: Any,
    streams: Mapping[str, int],
    owner: str = "The model",
    dtype: torch.dtype | None = None,
    ndims: Mapping[str, int | None] | None = None,
) -> None:
    """Check a batch's inputs against a model's streams: names, dtype, rank and channel count.

    Args:
        inputs: Stream name -> ``(B, C_m, ...)`` floating-point tensor (``(B, D_m)`` for a vector stream).
        streams: The model's stream name -> channel count (feature width ``D_m`` for a vector stream).
        owner: Who checks, for the message (e.g. ``"MultiStreamClassifier"``).
        dtype: The model's floating-point dtype; inputs of another one (float64 data for a
            float32 model) are refused. ``None`` skips this check.
        ndims: Stream name -> the number of dimensions its batches have: 4 for images
            ``(B, C, H, W)``, 2 for vectors ``(B, D)`` (an encoder's ``input_ndim``). Streams
            not listed, or listed as ``None``, are checked for their channel count only.

    Raises:
        ValueError: For inputs that are not a mapping, a missing or unexpected stream, a
            non-floating-point tensor (e.g. uint8 images), one of another dtype than the model's,
            an image where the model expects a vector or the reverse, a wrong channel count, or
            streams with different batch sizes.
    """
    if not isinstance(inputs, Mapping):
        raise ValueError(f"{owner} expects inputs as a mapping stream name -> tensor, got {type(inputs).__name__}.")
    missing = [name for name in streams if name not in inputs]
    unexpected = [name for name in inputs if name not in streams]
    if missing or unexpected:
        raise ValueError(
            f"{owner} has streams {list(streams)} but the data's batch has {list(inputs)} "
            f"(missing {missing}, unexpected {unexpected}). Use the same stream names in model and data."
        )
    sizes = {}
    for name, channels in streams.items():
        x = inputs[name]
        if not isinstance(x, Tensor):
            raise ValueError(f"Stream {name!r}: expected a tensor, got {type(x).__name__}.")
        if not x.is_floating_point():
            raise ValueError(
                f"Stream {name!r}: expected floating-point inputs, got {x.dtype} (shape {tuple(x.shape)}). "
                "Convert and scale the data first, e.g. uint8 images with `x.float() / 255`."
            )
        if dtype is not None and x.dtype != dtype:
            raise ValueError(
                f"Stream {name!r}: the model computes in {dtype} but the data is {x.dtype} "
                f"(shape {tuple(x.shape)}); convert the data, e.g. `x.to({str(dtype).removeprefix('torch.')})`."
            )
        ndim = (ndims or {}).get(name)
        if ndim is not None and x.ndim != ndim:
            raise ValueError(_rank_message(name, channels, ndim, tuple(x.shape), owner))
        if x.ndim < 2 or x.shape[1] != channels:
            got = x.shape[1] if x.ndim >= 2 else f"a {x.ndim}-D tensor"
            unit = "feature(s)" if ndim == 2 else "channel(s)"
            raise ValueError(
                f"Stream {name!r}: the model expects {channels} {unit} but the data has {got} "
                f"(shape {tuple(x.shape)}). Make the model's and the data's `streams` agree."
            )
        sizes[name] = x.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"The streams of one batch must have the same batch size, got {sizes}.")


def _rank_message(name: str, channels: int, ndim: int, shape: tuple[int, ...], owner: str) -> str:
    """Why a stream's batch has the wrong number of dimensions, in words (vector vs image)."""
    got = {2: "vectors", 4: "images"}.get(len(shape), f"a {len(shape)}-D tensor")
    if ndim == 2:
        expected = f"a vector stream: {owner} expects vectors (B, {channels})"
        remedy = "For image data leave the stream out of the model's `encoders` (it then gets a `backbone` trunk)."
    elif ndim == 4:
        expected = f"an image stream: {owner} expects images (B, {channels}, H, W)"
        remedy = f"For vector data give the stream a vector encoder: `encoders: {{{name}: mslightning.nn.MLPEncoder}}`."
    else:
        expected = f"a stream of {ndim}-D batches: {owner} expects (B, {channels}, ...) with {ndim} dimensions"
        remedy = "Make the model's encoder and the data agree."
    return f"Stream {name!r} is {expected}, but the data has {got} of shape {shape}. {remedy}"


def check_classification_batch(
    batch: Any,
    streams: Mapping[str, int],
    num_classes: int,
    owner: str = "The model",
    dtype: torch.dtype | None = None,
    ndims: Mapping[str, int | None] | None = None,
) -> None:
    """Check one ``(inputs, target)`` batch against a classifier's streams and class count.

    Meant for the first batch of a run: it reads the target's minimum and maximum (one small
    device-to-host transfer), so do not call it on every step.

    Args:
        batch: ``(inputs, target)`` with ``inputs`` stream name -> ``(B, C_m, ...)`` floating
            point and ``target`` ``(B,)`` integer class indices.
        streams: The model's stream name -> channel count.
        num_classes: The model's class count K.
        owner: Who checks, for the message (e.g. ``"MultiStreamClassifier"``).
        dtype: The model's floating-point dtype (see :func:`check_stream_inputs`).
        ndims: Stream name -> dimensions of its batches (see :func:`check_stream_inputs`).

    Raises:
        ValueError: Naming the disagreement: not a pair, any problem of
            :func:`check_stream_inputs`, a target that is not ``(B,)`` integers (floats,
            one-hot, ``(B, 1)``), a batch-size mismatch, or labels outside ``[0, num_classes)``.
    """
    if not isinstance(batch, list | tuple) or len(batch) != 2:
        length = f" of length {len(batch)}" if isinstance(batch, list | tuple) else ""
        raise ValueError(
            f"{owner} expects batches (inputs, target) with inputs a mapping stream name -> tensor, "
            f"got a {type(batch).__name__}{length}."
        )
    inputs, target = batch
    check_stream_inputs(inputs, streams, owner, dtype, ndims)
    if not isinstance(target, Tensor):
        raise ValueError(f"{owner} expects the target as a tensor of class indices, got {type(target).__name__}.")
    if target.dtype != torch.int64 or target.ndim != 1:
        raise ValueError(
            f"{owner} expects the target as (B,) int64 class indices, got {target.dtype} of shape "
            f"{tuple(target.shape)}. Soft, one-hot or (B, 1) targets are not class indices, and cross-entropy "
            "takes int64 only: use `target.argmax(1)`, `target.squeeze(1)` or `target.long()`."
        )
    batch_size = next(iter(inputs.values())).shape[0]
    if target.shape[0] != batch_size:
        raise ValueError(f"The inputs hold {batch_size} samples but the target {target.shape[0]}.")
    if target.numel():
        low, high = torch.aminmax(target)
        low, high = int(low), int(high)
        if low < 0:
            raise ValueError(
                f"{owner}: the data's labels include {low}; labels are class indices in [0, {num_classes - 1}]. "
                "Check how the dataset encodes its classes (e.g. -1 for 'unlabelled' must be filtered out)."
            )
        if high >= num_classes:
            raise ValueError(
                f"{owner} has num_classes={num_classes} but the data's labels range over [{low}, {high}]; "
                f"labels must lie in [0, {num_classes - 1}]. Make the model's num_classes and the data agree."
            )


def stream_pairs(streams: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of streams in declaration order.

    Args:
        streams: Stream names.

    Returns:
        ``[(a, b), ...]`` with a before b; named ``<a>_vs_<b>`` in logged keys.
    """
    return [(a, b) for i, a in enumerate(streams) for b in streams[i + 1 :]]


# ---------------------------------------------------------------------- the parameters a stream owns


def check_stream_patterns(streams: Any, origin: str = "streams") -> dict[str, list[str]]:
    """Validate a stream name -> parameter-name pattern(s) mapping.

    Args:
        streams: E.g. ``{"rgb": "rgb_net.*", "depth": ["depth_net.*", "depth_head.*"]}``.
        origin: Where the mapping came from, for the message.

    Returns:
        Stream name -> list of patterns, in order.

    Raises:
        ValueError: If ``streams`` is not a non-empty mapping, a name breaks the name rule, or a
            pattern is empty or not a string.
    """
    if not isinstance(streams, Mapping) or not streams:
        raise ValueError(
            f"{origin} must be a non-empty mapping stream name -> parameter-name pattern(s), got {streams!r}."
        )
    resolved = {}
    for name, patterns in streams.items():
        check_stream_name(name, origin)
        try:
            resolved[name] = as_pattern_list(patterns)
        except ValueError as err:
            raise ValueError(f"{origin}[{name!r}]: {err}") from err
    return resolved


def stream_patterns_of(
    module: nn.Module, streams: Mapping[str, Patterns] | None = None, owner: str = "StreamMonitor"
) -> dict[str, list[str]]:
    """The streams to watch: ``streams`` if given, else the module's own ``stream_patterns``.

    Args:
        module: The model; its ``stream_patterns`` attribute declares its parts once.
        streams: An explicit stream -> pattern(s) mapping, or None.
        owner: Who asks, for the message.

    Returns:
        Stream name -> list of patterns.

    Raises:
        ValueError: If neither is given (naming the module's parameters), or the mapping is invalid.
    """
    if streams is not None:
        return check_stream_patterns(streams, "streams")
    declared = getattr(module, "stream_patterns", None)
    if declared is None:
        names = [name for name, _ in module.named_parameters()]
        raise ValueError(
            f"{owner} needs streams: pass {owner}(streams={{'rgb': 'rgb_net.*', ...}}) or give "
            f"{type(module).__name__} a `stream_patterns` attribute (stream name -> patterns). "
            f"Its parameters are named {describe_names(names)}."
        )
    return check_stream_patterns(declared, f"{type(module).__name__}.stream_patterns")


def match_streams(
    module: nn.Module, patterns: Mapping[str, list[str]], owner: str = "StreamMonitor"
) -> dict[str, list[str]]:
    """Each stream's parameter names; every parameter belongs to at most one stream.

    Args:
        module: The model.
        patterns: Stream name -> patterns (from :func:`stream_patterns_of`).
        owner: Who asks, for the message.

    Returns:
        Stream name -> the names of the parameters it owns, in ``named_parameters()`` order.

    Raises:
        ValueError: If a stream matches no parameter (naming the module's parameters) or a parameter
            is matched by two streams (naming both).
    """
    names = [name for name, _ in module.named_parameters()]
    try:
        matched = assign_owners(names, patterns, "stream")
    except ValueError as err:
        raise ValueError(f"{owner}: {err}") from err
    empty = [stream for stream, owned in matched.items() if not owned]
    if empty:
        details = "; ".join(f"{s!r} -> {patterns[s]}" for s in empty)
        raise ValueError(
            f"{owner}: stream(s) {details} match no parameter of {type(module).__name__}. "
            f"Its parameters are named {describe_names(names)}."
        )
    return matched


# ---------------------------------------------------------------------- the per-stream output protocol

STREAM_OUTPUTS_KEY = "stream_outputs"
"""The key of a step's output dict that holds its :class:`StreamOutputs`."""

IGNORE_INDEX = -100
"""Classification targets equal to this (``torch.nn.functional.cross_entropy``'s default) are not scored."""


def _shape(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


@dataclass(frozen=True)
class StreamOutputs:
    """One batch's per-stream predictions and the target they predict; see the three tasks below.

    A training or validation step returns it next to the loss,
    ``{"loss": loss, "stream_outputs": ClassificationOutputs(predictions={...}, target=y)}``, and
    :class:`~mslightning.callbacks.StreamMonitor` scores each stream's own prediction over the
    epoch: a quality *score* (higher is better), a *loss*, and a *confidence* in the right answer
    for the balance between streams. Predictions may be detached; they are read, never trained.

    Attributes:
        predictions: Stream name -> that stream's own prediction (shape per task).
        target: What every stream predicts (shape per task).
    """

    predictions: Mapping[str, Tensor]
    target: Tensor

    score_name: ClassVar[str] = ""
    """The name of its quality score in logged keys (``train_<score_name>/<stream>``)."""
    score_label: ClassVar[str] = ""
    """The score in words, for messages."""
    confidence_name: ClassVar[str] = ""
    """The name of its confidence in logged keys."""

    def check(self, streams: Sequence[str] | None = None) -> None:
        """Validate the shapes and dtypes against each other and against the monitored streams.

        Args:
            streams: The monitored stream names; a prediction for another stream is an error.

        Raises:
            ValueError: Naming the stream, what was expected and what came.
        """
        if not isinstance(self.predictions, Mapping) or not self.predictions:
            raise ValueError(
                f"{type(self).__name__}.predictions must map stream name -> prediction tensor, "
                f"got {_shape(self.predictions)}."
            )
        if not isinstance(self.target, Tensor):
            raise ValueError(f"{type(self).__name__}.target must be a tensor, got {type(self.target).__name__}.")
        if streams is not None:
            unknown = [name for name in self.predictions if name not in streams]
            if unknown:
                raise ValueError(
                    f"{type(self).__name__}.predictions has stream(s) {unknown} that are not monitored; the "
                    f"monitored streams are {list(streams)}."
                )
        for name, prediction in self.predictions.items():
            if not isinstance(prediction, Tensor) or not prediction.is_floating_point():
                raise ValueError(
                    f"{type(self).__name__}.predictions[{name!r}] must be a floating-point tensor, got "
                    f"{getattr(prediction, 'dtype', type(prediction).__name__)}."
                )
            self._check_prediction(name, prediction)

    def _check_prediction(self, name: str, prediction: Tensor) -> None:
        raise NotImplementedError

    def chance(self, prediction: Tensor) -> float:
        """The score of a prediction that knows nothing (what ``not_learning`` compares with).

        Args:
            prediction: One stream's prediction (its shape may tell the number of classes).

        Returns:
            The chance-level score.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class ClassificationOutputs(StreamOutputs):
    """Per-stream class logits.

    Score: accuracy (``acc``). Loss: cross-entropy. Confidence: the softmax probability of the
    true class (``true_class_score``, the OGM-GE score). Targets equal to :data:`IGNORE_INDEX`
    are left out.

    Attributes:
        predictions: Stream -> logits ``(B, K)``, or ``(B, 1)`` for a binary head (one logit ``z``:
            classes 0 and 1 with logits ``(0, z)``).
        target: ``(B,)`` integer class indices in ``[0, K)`` (or ``-100``).
    """

    score_name: ClassVar[str] = "acc"
    score_label: ClassVar[str] = "accuracy"
    confidence_name: ClassVar[str] = "true_class_score"

    def _check_prediction(self, name: str, prediction: Tensor) -> None:
        if self.target.ndim != 1 or self.target.is_floating_point():
            raise ValueError(
                f"ClassificationOutputs.target must be (B,) integer class indices, got {self.target.dtype} "
                f"{_shape(self.target)}."
            )
        if prediction.ndim != 2 or prediction.shape[0] != self.target.shape[0]:
            raise ValueError(
                f"ClassificationOutputs.predictions[{name!r}] must be (B, K) logits with B = {self.target.shape[0]} "
                f"(from the target), got {_shape(prediction)}."
            )

    def chance(self, prediction: Tensor) -> float:  # noqa: D102
        return 1.0 / max(prediction.shape[-1], 2)


@dataclass(frozen=True)
class RankingOutputs(StreamOutputs):
    """Per-stream pairwise preferences: whether each stream prefers item a to item b.

    Score: pair accuracy (``pair_acc``) over the pairs that are not ties. Loss: the log loss of
    ``sigmoid(z)`` against the target probability (binary cross-entropy with logits).
    Confidence: the probability the stream gives to the preferred item (``preferred_prob``).

    Attributes:
        predictions: Stream -> logits ``(B,)`` (or ``(B, 1)``) of "a is preferred to b".
        target: ``(B,)`` float probability that a is preferred (1 or 0 for a hard label, the
            share of votes for a soft one); exactly 0.5 is a tie, left out of the pair accuracy.
    """

    score_name: ClassVar[str] = "pair_acc"
    score_label: ClassVar[str] = "pair accuracy"
    confidence_name: ClassVar[str] = "preferred_prob"

    def _check_prediction(self, name: str, prediction: Tensor) -> None:
        if self.target.ndim != 1 or not self.target.is_floating_point():
            raise ValueError(
                f"RankingOutputs.target must be (B,) float probabilities that a is preferred, got "
                f"{self.target.dtype} {_shape(self.target)}."
            )
        if prediction.reshape(prediction.shape[0], -1).shape[1] != 1 or prediction.shape[0] != self.target.shape[0]:
            raise ValueError(
                f"RankingOutputs.predictions[{name!r}] must be (B,) or (B, 1) logits with B = {self.target.shape[0]}, "
                f"got {_shape(prediction)}."
            )

    def chance(self, prediction: Tensor) -> float:  # noqa: D102
        return 0.5


@dataclass(frozen=True)
class PoissonOutputs(StreamOutputs):
    """Per-stream predicted spike counts (or rates per bin) of recorded neurons.

    Score: the Pearson correlation of prediction and response per neuron over every bin of the
    epoch, averaged over neurons (``corr``). Loss: the Poisson negative log-likelihood per bin,
    ``mean(pred - y * log(pred))`` (without the ``log(y!)`` constant). Confidence: the correlation
    clipped at 0.

    Attributes:
        predictions: Stream -> non-negative predictions ``(B, ..., N)`` (last axis: neurons).
        target: Observed counts, the same shape.
        mask: Optional bool tensor of that shape: False marks bins without a recording.
        session: Which recording the neurons belong to (models with one readout per session
            score each session's neurons separately); None for one set of neurons.
    """

    mask: Tensor | None = None
    session: str | None = None

    score_name: ClassVar[str] = "corr"
    score_label: ClassVar[str] = "correlation"
    confidence_name: ClassVar[str] = "corr_clipped"

    def _check_prediction(self, name: str, prediction: Tensor) -> None:
        if prediction.shape != self.target.shape or prediction.ndim < 2:
            raise ValueError(
                f"PoissonOutputs.predictions[{name!r}] must have the target's shape (B, ..., N) "
                f"{_shape(self.target)}, got {_shape(prediction)}."
            )
        if self.mask is not None and (not isinstance(self.mask, Tensor) or self.mask.shape != self.target.shape):
            raise ValueError(
                f"PoissonOutputs.mask must have the target's shape {_shape(self.target)}, got {_shape(self.mask)}."
            )

    def chance(self, prediction: Tensor) -> float:  # noqa: D102
        return 0.0


def parse_stream_outputs(outputs: Any) -> StreamOutputs | None:
    """The per-stream outputs of one step's output, or None when it carries none.

    Accepted: ``{"stream_outputs": <StreamOutputs>, ...}``, and the older dict form
    ``{"stream_logits": {stream: (B, K) logits}, "target": (B,) class indices}`` (classification).

    Args:
        outputs: What ``training_step``/``validation_step`` returned.

    Returns:
        The outputs (not yet checked, see :meth:`StreamOutputs.check`), or None.

    Raises:
        ValueError: If ``"stream_outputs"`` holds something else than a :class:`StreamOutputs`, or
            ``"stream_logits"`` is not a mapping.
    """
    if not isinstance(outputs, Mapping):
        return None
    typed = outputs.get(STREAM_OUTPUTS_KEY)
    if typed is not None:
        if not isinstance(typed, StreamOutputs):
            raise ValueError(
                f"The step's {STREAM_OUTPUTS_KEY!r} must be a ClassificationOutputs, RankingOutputs or "
                f"PoissonOutputs (mslightning.streams), got {type(typed).__name__}."
            )
        return typed
    if "stream_logits" not in outputs or "target" not in outputs:
        return None
    stream_logits = outputs["stream_logits"]
    if not isinstance(stream_logits, Mapping):
        raise ValueError(f"'stream_logits' must map stream name -> (B, K) logits, got {type(stream_logits).__name__}.")
    return ClassificationOutputs(predictions=dict(stream_logits), target=outputs["target"])
