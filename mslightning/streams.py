"""What a stream is: the name rule and the checks a multi-stream classification batch must pass.

A *stream* is one named input of a multi-stream network (``rgb``, ``depth``, ...). Names come
from the user and end up in module and parameter names (``encoders.rgb.*``: torch forbids ``.``
there), TensorBoard tags (``streams/grad_norm/rgb``) and group names, so one rule applies
everywhere (:data:`STREAM_NAME_PATTERN`): letters, digits, ``_`` and ``-``.

The batch contract of every classification datamodule and module is ``(inputs, target)``:
``inputs`` maps each stream name to a floating-point tensor ``(B, C_m, H, W)`` (or ``(B, D_m)``
for a vector stream), ``target`` is an integer tensor ``(B,)`` of class indices in
``[0, num_classes)``. :func:`check_classification_batch` verifies all of that on a batch and
names what disagrees, before torch would fail with a less helpful message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "STREAM_NAME_PATTERN",
    "check_classification_batch",
    "check_stream_inputs",
    "check_stream_name",
    "check_streams",
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
    inputs: Any, streams: Mapping[str, int], owner: str = "The model", dtype: torch.dtype | None = None
) -> None:
    """Check a batch's inputs against a model's streams: names, dtype and channel count.

    Args:
        inputs: Stream name -> ``(B, C_m, ...)`` floating-point tensor.
        streams: The model's stream name -> channel count.
        owner: Who checks, for the message (e.g. ``"MultiStreamClassifier"``).
        dtype: The model's floating-point dtype; inputs of another one (float64 data for a
            float32 model) are refused. ``None`` skips this check.

    Raises:
        ValueError: For inputs that are not a mapping, a missing or unexpected stream, a
            non-floating-point tensor (e.g. uint8 images), one of another dtype than the model's,
            a wrong channel count, or streams with different batch sizes.
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
        if x.ndim < 2 or x.shape[1] != channels:
            got = x.shape[1] if x.ndim >= 2 else f"a {x.ndim}-D tensor"
            raise ValueError(
                f"Stream {name!r}: the model expects {channels} channel(s) but the data has {got} "
                f"(shape {tuple(x.shape)}). Make the model's and the data's `streams` agree."
            )
        sizes[name] = x.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"The streams of one batch must have the same batch size, got {sizes}.")


def check_classification_batch(
    batch: Any,
    streams: Mapping[str, int],
    num_classes: int,
    owner: str = "The model",
    dtype: torch.dtype | None = None,
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
    check_stream_inputs(inputs, streams, owner, dtype)
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
