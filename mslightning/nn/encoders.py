"""Per-stream image encoders.

A stream encoder maps one stream's images ``(B, C, H, W)`` to a pooled feature vector
``(B, out_features)`` and declares ``out_features`` so a fusion can be sized before any data
is seen. :class:`ResNetStreamEncoder` is a torchvision ResNet trunk whose first convolution
takes the stream's own channel count (3 for RGB, 1 for depth, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision import models

from mslightning.files import _short, load_torch_file

__all__ = ["ResNetStreamEncoder", "adapt_conv1_weight"]

_ARCHS: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
    "resnet152": models.resnet152,
}

_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
_SAVE_WEIGHTS = "Save the weights with torch.save(model.state_dict(), path)"


def adapt_conv1_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt an RGB first-convolution kernel to another number of input channels.

    Every new input channel gets the mean of the RGB filters, scaled by ``3 / in_channels``:
    ``W'[:, j] = (3 / in_channels) * mean_c W[:, c]``. For an image whose channels are all equal
    (a grey image, or a depth map repeated to 3 channels) the response is then exactly the RGB
    network's response, whatever ``in_channels`` is, so the statistics that ``bn1`` and every
    later layer were trained on are kept. This is the argument of I3D's filter "inflation"
    (Carreira & Zisserman, CVPR 2017, https://arxiv.org/abs/1705.07750, Sec. 2.1: repeat the
    2D filters and rescale so a "boring" video gives the image response), applied along the
    channel axis instead of time; timm's ``adapt_input_conv`` uses the same 3 / in_channels
    rescaling.

    Args:
        weight: The pretrained kernel, shape ``(out_channels, 3, kH, kW)``.
        in_channels: The stream's channel count, >= 1.

    Returns:
        The adapted kernel, shape ``(out_channels, in_channels, kH, kW)``, same dtype.

    Raises:
        ValueError: If ``weight`` is not a 4-D kernel with 3 input channels, or ``in_channels``
            is not positive.

    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"Expected an RGB conv1 kernel of shape (out, 3, kH, kW), got {tuple(weight.shape)}.")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
    if in_channels == 3:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True) * (3.0 / in_channels)
    return mean.repeat(1, in_channels, 1, 1)


class ResNetStreamEncoder(nn.Module):
    """A torchvision ResNet trunk for one stream: images in, pooled features out.

    The submodules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` … ``layer4``), so a
    torchvision ResNet ``state_dict`` (without ``fc.*``) loads with ``load_state_dict``, and
    parameter-name patterns such as ``"encoders.rgb.layer4.*"`` select what they would select
    in torchvision. The network is always built with ``weights=None``: nothing is downloaded.

    Example:
        >>> import torch
        >>> from mslightning.nn import ResNetStreamEncoder
        >>> enc = ResNetStreamEncoder("resnet18", in_channels=1, name="depth")
        >>> enc(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 512])

    Args:
        arch: One of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"``,
            ``"resnet152"``.
        in_channels: Channels of this stream's images (3 for RGB, 1 for depth, ...).
        weights_path: Optional path to a torchvision ImageNet ``state_dict`` of the same
            ``arch`` saved with ``torch.save``. ``fc.*`` entries are ignored; when
            ``in_channels != 3`` the ``conv1`` kernel is adapted with
            :func:`adapt_conv1_weight`. A Lightning checkpoint holding this stream's trunk
            (``encoders.<name>.*``) works too; see :meth:`load_torchvision_weights`.
        name: The stream's name, used only in error messages. The owning module may set the
            attribute later (``encoder.name = "depth"``).

    Attributes:
        out_features: Width of the pooled features (512 for resnet18/34, 2048 for 50/101/152).
        in_channels: The channel count ``forward`` accepts.
        name: The stream's name or ``None``.

    Raises:
        ValueError: For an unknown ``arch``, a non-positive ``in_channels``, or a bad
            ``weights_path`` file (see :meth:`load_torchvision_weights`: the message names the
            stream and the path, says what is wrong and what to do).
        FileNotFoundError: If ``weights_path`` does not exist.

    """

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 3,
        weights_path: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"Unknown arch {arch!r}; valid archs are {sorted(_ARCHS)}.")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
        self.arch = arch
        self.in_channels = in_channels
        self.name = name

        resnet = _ARCHS[arch](weights=None)
        if in_channels != 3:
            old = resnet.conv1
            resnet.conv1 = nn.Conv2d(
                in_channels,
                old.out_channels,
                kernel_size=old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                bias=False,
            )
            # Same init torchvision gives every conv, so a fresh encoder is a fresh ResNet.
            nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
        for child in _TRUNK:
            setattr(self, child, getattr(resnet, child))
        self.out_features: int = resnet.fc.in_features

        if weights_path is not None:
            self.load_torchvision_weights(weights_path)

    def load_torchvision_weights(self, path: str | Path) -> None:
        """Initialise the trunk from a torchvision ResNet ``state_dict`` file on local disk.

        The file is read with :func:`mslightning.files.load_torch_file` (``torch.load(...,
        weights_only=True)``, which never runs code from the file); ``fc.*`` entries are dropped
        and ``conv1.weight`` is adapted to ``in_channels`` when it has 3 input channels and the
        stream does not.

        A Lightning checkpoint (or an mslightning model's ``state_dict``) is accepted too when
        its ``state_dict`` holds this stream's trunk, ``encoders.<name>.*``, and ``name`` is set:
        those keys, without the prefix, are loaded. Any other checkpoint is refused with advice.

        Every bad file raises :class:`FileNotFoundError` or :class:`ValueError` whose message
        starts ``Weights for stream '<name>' ('<path>'): `` (``Weights ('<path>'): `` when
        ``name`` is ``None``), says what the file holds (empty, truncated, not a ``torch.save``
        file, a pickled model, a Lightning checkpoint, another architecture, ...) and what to do.

        Args:
            path: A file written by ``torch.save(resnet.state_dict(), path)``.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``path`` is a directory or not a regular file, or the file is empty,
                unreadable, truncated, corrupt, in another format, holds something other than a
                state_dict (a pickled model, a Lightning checkpoint without this stream's
                trunk, ...), or its keys or shapes do not fit this trunk; the message names the
                architecture the file looks like and the missing, unexpected and mis-shaped
                keys.

        """
        where = f"Weights for stream '{self.name}' ('{path}')" if self.name is not None else f"Weights ('{path}')"
        loaded = load_torch_file(path, where, what="weights file", remedy=_SAVE_WEIGHTS)
        state, source = self._trunk_state(loaded, where)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        conv1 = state.get("conv1.weight")
        if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] == 3 != self.in_channels:
            state["conv1.weight"] = adapt_conv1_weight(conv1, self.in_channels)

        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mis_shaped = [
            f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and v.shape != own[k].shape
        ]
        if missing or unexpected or mis_shaped:
            raise ValueError(self._mismatch_message(where, source, state, missing, unexpected, mis_shaped))
        self.load_state_dict(state)

    def _trunk_state(self, obj: object, where: str) -> tuple[dict[str, Tensor], str]:
        """Pick the name -> tensor mapping to load out of a loaded file; also say where it came from.

        Raises:
            ValueError: If ``obj`` is not a state_dict, or is a checkpoint without this stream's
                trunk.

        """
        save_hint = f"{_SAVE_WEIGHTS}."
        source = ""
        kind = None
        if isinstance(obj, Mapping) and _is_lightning_checkpoint(obj):
            kind = f"a Lightning checkpoint (epoch {obj.get('epoch')}, global step {obj.get('global_step')})"
            short_kind = "the Lightning checkpoint"
            inner: Mapping[object, object] = obj["state_dict"]
        elif (
            isinstance(obj, Mapping)
            and "conv1.weight" not in obj
            and any(isinstance(k, str) and k.startswith("encoders.") for k in obj)
        ):
            kind = "the state_dict of a whole mslightning model"
            short_kind = "the model's state_dict"
            inner = obj
        if kind is not None:
            prefix = f"encoders.{self.name}."
            trunk = {
                k[len(prefix) :]: v
                for k, v in inner.items()
                if self.name is not None and isinstance(k, str) and k.startswith(prefix)
            }
            if not trunk:
                raise ValueError(self._checkpoint_message(where, kind, inner))
            obj, source = trunk, f"'{prefix}*' in {short_kind}"
        if not isinstance(obj, Mapping):
            raise ValueError(
                f"{where}: the file does not hold a state_dict (a mapping of parameter name -> tensor) "
                f"but a {type(obj).__name__}. {save_hint}"
            )
        bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        if bad:
            nested = [
                k
                for k, v in obj.items()
                if isinstance(v, Mapping) and v and all(isinstance(t, Tensor) for t in v.values())
            ]
            if nested:
                raise ValueError(
                    f"{where}: the file holds a dict with the entries {_short([repr(k) for k in obj])}, not a "
                    f"state_dict; the weights seem to be under {nested[0]!r}. Save that entry alone: "
                    f"torch.save(obj[{nested[0]!r}], path)."
                )
            raise ValueError(
                f"{where}: the file does not hold a state_dict (a mapping of parameter name -> tensor): "
                f"{len(bad)} of its {len(obj)} entries {'is' if len(bad) == 1 else 'are'} not name -> tensor, e.g. "
                f"{bad[0]!r}: {type(obj[bad[0]]).__name__}. {save_hint}"
            )
        if not obj:
            raise ValueError(f"{where}: the state_dict in the file is empty. {save_hint}")
        return dict(obj), source

    def _checkpoint_message(self, where: str, kind: str, inner: Mapping[object, object]) -> str:
        """The error for a checkpoint or model state_dict that holds no trunk for this stream."""
        streams = sorted(
            {k.split(".")[1] for k in inner if isinstance(k, str) and k.startswith("encoders.") and k.count(".") >= 2}
        )
        if not streams:
            first = _short([str(k) for k in inner], 3)
            why = f"its state_dict has no 'encoders.<stream>.*' keys (its first keys: {first})"
        elif self.name is None:
            why = f"it holds trunks for the streams {streams} but this encoder has no stream name to pick one"
        else:
            why = f"it holds trunks for the streams {streams} but none for stream '{self.name}'"
        if kind.startswith("a Lightning checkpoint"):
            reuse = (
                "To reuse the trained mslightning model, load the checkpoint with load_from_checkpoint "
                "(e.g. MultiStreamClassifier.load_from_checkpoint(path))"
            )
            read = "torch.load(path, weights_only=True)['state_dict']"
        else:
            reuse = "To reuse the trained mslightning model, load it with model.load_state_dict(...)"
            read = "torch.load(path, weights_only=True)"
        message = f"{where}: the file is {kind}, not a torchvision ResNet state_dict, and {why}. {reuse}; "
        if not streams:
            return message + "to start a trunk from it, save that trunk's keys, without their prefix, to a file."
        prefix = f"encoders.{streams[0]}."
        return (
            f"{message}to start a trunk from it, extract that trunk's keys into a state_dict file.\n"
            f"  sd = {read}\n"
            f"  torch.save({{k.removeprefix('{prefix}'): v for k, v in sd.items() "
            f"if k.startswith('{prefix}')}}, 'trunk.pth')"
        )

    def _mismatch_message(
        self,
        where: str,
        source: str,
        state: Mapping[str, Tensor],
        missing: list[str],
        unexpected: list[str],
        mis_shaped: list[str],
    ) -> str:
        """The error for a state_dict whose keys or shapes do not fit this trunk."""
        what = f"the state_dict under {source}" if source else "the state_dict"
        prefix = _wrapper_prefix(state)
        guess = _guess_resnet({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        if prefix:
            looks = f"{guess} weights" if guess in _ARCHS else (guess or "ResNet weights")
            problem = (
                f"the keys of {what} carry the prefix '{prefix}' ({looks} saved from a wrapper model). Strip it: "
                f"torch.save({{k.removeprefix('{prefix}'): v for k, v in sd.items() if k.startswith('{prefix}')}}, "
                f"path)."
            )
        elif guess is None:
            problem = (
                f"{what} does not look like a torchvision ResNet's (its first keys: {_short(list(state), 3)}). "
                f"Use a torchvision {self.arch} state_dict."
            )
        elif guess not in _ARCHS:
            problem = (
                f"{what} looks like {guess}, which ResNetStreamEncoder does not build (it builds "
                f"{', '.join(_ARCHS)}). Use a torchvision {self.arch} state_dict."
            )
        elif guess != self.arch:
            problem = (
                f"{what} looks like {guess} weights, not {self.arch}. Build the encoder with arch='{guess}' "
                f"or use {self.arch} weights."
            )
        else:
            plural = "" if self.in_channels == 1 else "s"
            problem = (
                f"{what} does not fit this {self.arch} trunk with {self.in_channels} input channel{plural}, "
                f"although its layout is {self.arch}'s. Use an unmodified torchvision {self.arch} state_dict."
            )
        lines = [f"{where}: {problem}"]
        conv1 = state.get("conv1.weight")
        if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] not in (3, self.in_channels):
            lines.append(
                f"  conv1.weight takes {conv1.shape[1]} input channels; only 3-channel (RGB) kernels are "
                f"adapted to this stream's {self.in_channels}."
            )
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if keys:
                lines.append(f"  {label} keys ({len(keys)}): {_short(keys, 3 if label == 'mis-shaped' else 5)}")
        return "\n".join(lines)

    def forward(self, x: Tensor) -> Tensor:
        """Encode a batch of this stream's images.

        Args:
            x: Images, shape ``(B, in_channels, H, W)``.

        Returns:
            Globally average-pooled features, shape ``(B, out_features)``.

        Raises:
            ValueError: If ``x`` is not 4-D or has the wrong channel count.

        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            who = f"stream '{self.name}'" if self.name is not None else type(self).__name__
            plural = "" if self.in_channels == 1 else "s"
            got = f"{x.shape[1]}" if x.ndim == 4 else f"a {x.ndim}-D tensor"
            raise ValueError(
                f"{who} expects {self.in_channels} channel{plural}, got {got} "
                f"(input shape {tuple(x.shape)}, expected (B, {self.in_channels}, H, W))."
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _is_lightning_checkpoint(obj: Mapping[Any, Any]) -> bool:
    """Whether a loaded mapping is a Lightning checkpoint (a ``state_dict`` beside training state)."""
    markers = ("pytorch-lightning_version", "global_step", "epoch")
    return isinstance(obj.get("state_dict"), Mapping) and any(k in obj for k in markers)


def _wrapper_prefix(state: Mapping[str, Tensor]) -> str:
    """The prefix (``"module."``, ``"backbone."``, ...) every ResNet key carries, or ``""``."""
    if "conv1.weight" in state:
        return ""
    for key in state:
        if key.endswith(".conv1.weight") and "layer" not in key:
            prefix = key[: -len("conv1.weight")]
            if f"{prefix}layer1.0.conv1.weight" in state:
                return prefix
    return ""


_LAYOUTS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}


def _guess_resnet(state: Mapping[str, Tensor]) -> str | None:
    """Which ResNet a state_dict's keys and shapes look like.

    Returns:
        An ``arch`` name (``"resnet50"``), a description of a ResNet this module does not build
        (a ResNeXt, a wide ResNet, an unknown block layout), or ``None`` if it is no ResNet.

    """
    blocks = []
    for stage in range(1, 5):
        indices = {
            parts[1] for parts in (k.split(".") for k in state) if parts[0] == f"layer{stage}" and parts[1:2] != [""]
        }
        blocks.append(len(indices))
    if not all(blocks):
        return None
    bottleneck = "layer1.0.conv3.weight" in state
    arch = _LAYOUTS.get((bottleneck, tuple(blocks)))
    if arch is None:
        kind = "bottleneck" if bottleneck else "basic"
        return f"a ResNet with {kind} blocks {tuple(blocks)} per stage"
    conv1, conv2 = state.get("layer1.0.conv1.weight"), state.get("layer1.0.conv2.weight")
    if bottleneck and conv2 is not None and conv2.ndim == 4 and conv2.shape[0] != conv2.shape[1]:
        return f"a ResNeXt-{arch[6:]} (grouped 3x3 convolutions, torchvision's resnext{arch[6:]}_*)"
    if bottleneck and conv1 is not None and conv1.ndim == 4 and conv1.shape[0] > 64:
        return f"a wide ResNet-{arch[6:]} (torchvision's wide_resnet{arch[6:]}_2)"
    return arch
