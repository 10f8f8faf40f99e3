"""Image trunks: images in, pooled features out, one mechanism for every model family.

An image trunk maps images ``(B, C, H, W)`` to a pooled feature vector ``(B, out_features)`` and
declares ``out_features`` so a fusion or a head can be sized before any data is seen.
:class:`ImageTrunk` holds what every trunk shares, written once: loading a torchvision
``state_dict`` from local disk with errors in plain words, adapting the first convolution to the
input's channel count (:func:`adapt_conv1_weight`), freezing stages and BatchNorm statistics, and
checking the input's channels. A subclass says only what differs: how to build the network, its
stages, which keys of a torchvision file to drop, which key is the first convolution and how to
recognise its architectures from a ``state_dict``.

* :class:`ResNetTrunk` — torchvision ResNet-18/34/50/101/152 (He et al., CVPR 2016,
  https://arxiv.org/abs/1512.03385).
* :class:`VGGTrunk` — torchvision VGG-11/13/16/19, with or without BatchNorm (Simonyan &
  Zisserman, ICLR 2015, https://arxiv.org/abs/1409.1556): globally pooled conv features or the
  classic fc7 features.

Models take a trunk as a zero-argument factory injected from the config (``trunk: {class_path:
mslightning.nn.VGGTrunk, init_args: {arch: vgg16_bn, pool: fc7}}``, or in Python
``functools.partial(ResNetTrunk, arch="resnet50")``), so every init argument has a default and a
plain type. Networks are always built with ``weights=None``: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision import models
from torchvision.models import vgg as tv_vgg

from mslightning.files import _short, load_torch_file

__all__ = ["ImageTrunk", "ResNetTrunk", "VGGTrunk", "adapt_conv1_weight"]

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


class ImageTrunk(nn.Module):
    """Base class of the image trunks: images ``(B, in_channels, H, W)`` -> features ``(B, out_features)``.

    Written once here for every trunk:

    * **Weights** from a local torchvision ImageNet ``state_dict`` file (``weights_path``,
      :meth:`load_weights`): the keys the trunk does not use (a classifier) are dropped, the
      first convolution is adapted to ``in_channels`` (:func:`adapt_conv1_weight`), and every
      bad file gets a message that says what the file is and what to do — it names the
      architecture the file looks like, also when it belongs to another trunk class. A
      Lightning checkpoint holding the stream's trunk (``encoders.<name>.*``) works too.
    * **Freezing.** ``frozen=None``: everything trainable; ``"all"``: no parameter trainable;
      a stage name (one of :attr:`stages`): that stage and every stage before it frozen. A
      frozen stage is a fixed function: its parameters get ``requires_grad=False`` and its
      modules stay in eval mode when the trunk is put in train mode, so its BatchNorm running
      statistics do not drift (and a dropout inside it is off). ``freeze_batchnorm=True`` keeps
      every BatchNorm layer of the trunk in eval mode (running statistics frozen; its affine
      weights stay trainable unless a frozen stage holds them) — the usual choice when
      fine-tuning with small batches. Both survive ``train()``/``eval()`` and
      ``load_state_dict``. Lightning's "Found N module(s) in eval mode at the start of
      training" warning counts these modules: it is expected.
    * The **channel check** of :meth:`forward`, naming the stream.

    A subclass builds its network in ``__init__`` between ``super().__init__(...)`` and
    ``self._finish(weights_path)``, sets :attr:`out_features`, and implements ``_forward``
    (checked images -> features) and ``_stage_modules`` (stage name -> its modules). To load
    torchvision files it also sets the class attributes ``_family``, ``_archs``, ``_first_conv``,
    the instance attribute ``_ignored_prefixes`` and the static method ``_guess_arch``.

    Args:
        arch: The architecture's name, checked against the subclass's ``_archs`` when it has any.
        in_channels: Channels of the input images (3 for RGB, 1 for depth, ...).
        stages: The trunk's freezable stages, input side first.
        frozen: ``None``, ``"all"`` or a stage name; see above.
        freeze_batchnorm: Keep every BatchNorm layer's running statistics frozen; see above.
        name: The stream's (or part's) name, used only in error messages. The owning module may
            set the attribute later (``trunk.name = "depth"``).

    Attributes:
        arch: The architecture's name.
        out_features: Width of the pooled features.
        in_channels: The channel count ``forward`` accepts.
        name: The stream's name or ``None``.
        stages: The freezable stages, input side first.
        frozen: ``None``, ``"all"`` or the last frozen stage.
        freeze_batchnorm: Whether every BatchNorm layer's statistics are frozen.
        pretrained: Whether :meth:`load_weights` initialised the trunk from a file (a module
            declares such a part in ``pretrained_parts``, so StreamMonitor judges its learning
            rate as a pretrained part's).

    Raises:
        ValueError: For an unknown ``arch``, a non-positive ``in_channels``, a ``frozen`` that is
            neither ``None``, ``"all"`` nor a stage (the message lists the valid values), or a
            non-bool ``freeze_batchnorm``.

    """

    input_ndim: ClassVar[int] = 4
    """Dimensions of the batches a trunk takes, ``(B, C, H, W)`` (a vector encoder's is 2)."""

    _family: ClassVar[str] = "image trunk"
    _archs: ClassVar[Mapping[str, Any]] = {}
    _first_conv: ClassVar[str] = ""
    _families: ClassVar[list[type[ImageTrunk]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_guess_arch" in cls.__dict__:  # a family whose files can be recognised
            ImageTrunk._families.append(cls)

    def __init__(
        self,
        arch: str,
        *,
        in_channels: int = 3,
        stages: Sequence[str] = (),
        frozen: str | None = None,
        freeze_batchnorm: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if self._archs and arch not in self._archs:
            raise ValueError(f"Unknown arch {arch!r}; valid archs are {sorted(self._archs)}.")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
        self.arch = arch
        self.in_channels = in_channels
        self.name = name
        self.stages: tuple[str, ...] = tuple(stages)
        if frozen is not None and frozen != "all" and frozen not in self.stages:
            valid = ", ".join(repr(s) for s in self.stages)
            raise ValueError(
                f"{self._who()}: frozen={frozen!r} is neither None (all trainable), 'all' nor one of the "
                f"stages of {arch}, {valid} (a stage freezes itself and every stage before it)."
            )
        if not isinstance(freeze_batchnorm, bool):
            raise ValueError(f"{self._who()}: freeze_batchnorm must be True or False, got {freeze_batchnorm!r}.")
        self.frozen = frozen
        self.freeze_batchnorm = freeze_batchnorm
        self.out_features: int = 0  # set by the subclass
        self.pretrained = False
        self._ignored_prefixes: tuple[str, ...] = ()

    def _who(self) -> str:
        """``stream '<name>'``, or the class name when the trunk has no name."""
        return f"stream '{self.name}'" if self.name is not None else type(self).__name__

    def _finish(self, weights_path: str | Path | None) -> None:
        """Load ``weights_path`` and apply the freeze modes; the last step of a subclass's ``__init__``."""
        if weights_path is not None:
            self.load_weights(weights_path)
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    # --- hooks for subclasses ------------------------------------------------------------------

    def _forward(self, x: Tensor) -> Tensor:
        """Pooled features ``(B, out_features)`` of checked images ``(B, in_channels, H, W)``."""
        raise NotImplementedError

    def _stage_modules(self) -> dict[str, list[nn.Module]]:
        """Each stage's modules, looked up now (a SyncBatchNorm conversion replaces modules)."""
        raise NotImplementedError

    @staticmethod
    def _guess_arch(state: Mapping[str, Tensor]) -> str | None:
        """An ``arch`` name, a description of a relative this class does not build, or ``None``."""
        return None

    # --- freezing -----------------------------------------------------------------------------

    def _frozen_modules(self) -> list[nn.Module]:
        """The modules of the frozen stages (the whole trunk for ``frozen="all"``)."""
        if self.frozen is None:
            return []
        if self.frozen == "all":
            return [self]
        modules = self._stage_modules()
        return [m for stage in self.stages[: self.stages.index(self.frozen) + 1] for m in modules[stage]]

    def train(self, mode: bool = True) -> ImageTrunk:
        """Set train or eval mode, keeping frozen stages and frozen BatchNorm layers in eval mode.

        Args:
            mode: ``True`` for train mode, ``False`` for eval mode.

        Returns:
            The trunk.

        """
        super().train(mode)
        if mode:
            if self.frozen == "all":
                return super().train(False)
            for module in self._frozen_modules():
                module.train(False)
            if self.freeze_batchnorm:
                for module in self.modules():
                    if isinstance(module, _BatchNorm):
                        module.train(False)
        return self

    # --- weights --------------------------------------------------------------------------------

    def load_weights(self, path: str | Path) -> None:
        """Initialise the trunk from a torchvision ``state_dict`` file on local disk.

        The file is read with :func:`mslightning.files.load_torch_file` (``torch.load(...,
        weights_only=True)``, which never runs code from the file); the keys this trunk does not
        use are dropped (a ResNet's ``fc.*``, a VGG's classifier or its last layer) and the first
        convolution's kernel is adapted to ``in_channels`` when it has 3 input channels and the
        trunk does not (:func:`adapt_conv1_weight`). Parameters of frozen stages stay frozen.

        A Lightning checkpoint (or an mslightning model's ``state_dict``) is accepted too when
        its ``state_dict`` holds this stream's trunk, ``encoders.<name>.*``, and ``name`` is set:
        those keys, without the prefix, are loaded. Any other checkpoint is refused with advice.

        Every bad file raises :class:`FileNotFoundError` or :class:`ValueError` whose message
        starts ``Weights for stream '<name>' ('<path>'): `` (``Weights ('<path>'): `` when
        ``name`` is ``None``), says what the file holds (empty, truncated, not a ``torch.save``
        file, a pickled model, a Lightning checkpoint, another architecture, ...) and what to do.

        Args:
            path: A file written by ``torch.save(model.state_dict(), path)``, ``model`` a
                torchvision network of this trunk's ``arch``.

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
        state = {k: v for k, v in state.items() if not k.startswith(self._ignored_prefixes)}
        conv = state.get(self._first_conv)
        if conv is not None and conv.ndim == 4 and conv.shape[1] == 3 != self.in_channels:
            state[self._first_conv] = adapt_conv1_weight(conv, self.in_channels)

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
        self.pretrained = True

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
            and self._first_conv not in obj
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
        message = f"{where}: the file is {kind}, not a torchvision {self._family} state_dict, and {why}. {reuse}; "
        if not streams:
            return message + "to start a trunk from it, save that trunk's keys, without their prefix, to a file."
        prefix = f"encoders.{streams[0]}."
        return (
            f"{message}to start a trunk from it, extract that trunk's keys into a state_dict file.\n"
            f"  sd = {read}\n"
            f"  torch.save({{k.removeprefix('{prefix}'): v for k, v in sd.items() "
            f"if k.startswith('{prefix}')}}, 'trunk.pth')"
        )

    def _wrapper_prefix(self, state: Mapping[str, Tensor]) -> str:
        """The prefix (``"module."``, ``"backbone."``, ...) every key of this family carries, or ``""``."""
        if not self._first_conv or self._first_conv in state:
            return ""
        for key in state:
            if key.endswith(f".{self._first_conv}"):
                prefix = key[: -len(self._first_conv)]
                if self._guess_arch({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}):
                    return prefix
        return ""

    def _other_family(self, state: Mapping[str, Tensor]) -> str | None:
        """What another trunk class recognises ``state`` as, with the class to build, or ``None``."""
        for family in ImageTrunk._families:
            if isinstance(self, family):
                continue
            guess = family._guess_arch(state)
            if guess in family._archs:
                return f"looks like {guess} weights, which {family.__name__}(arch='{guess}') builds"
            if guess is not None:
                return f"looks like {guess}, a {family._family} that {type(self).__name__} does not build"
        return None

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
        prefix = self._wrapper_prefix(state)
        guess = self._guess_arch({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        family = self._family
        if prefix:
            looks = f"{guess} weights" if guess in self._archs else guess
            problem = (
                f"the keys of {what} carry the prefix '{prefix}' ({looks} saved from a wrapper model). Strip it: "
                f"torch.save({{k.removeprefix('{prefix}'): v for k, v in sd.items() if k.startswith('{prefix}')}}, "
                f"path)."
            )
        elif guess is None and (other := self._other_family(state)) is not None:
            problem = f"{what} {other}. Use that, or a torchvision {self.arch} state_dict."
        elif guess is None:
            problem = (
                f"{what} does not look like a torchvision {family}'s (its first keys: {_short(list(state), 3)}). "
                f"Use a torchvision {self.arch} state_dict."
            )
        elif guess not in self._archs:
            problem = (
                f"{what} looks like {guess}, which {type(self).__name__} does not build (it builds "
                f"{', '.join(self._archs)}). Use a torchvision {self.arch} state_dict."
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
        conv = state.get(self._first_conv)
        if conv is not None and conv.ndim == 4 and conv.shape[1] not in (3, self.in_channels):
            lines.append(
                f"  {self._first_conv} takes {conv.shape[1]} input channels; only 3-channel (RGB) kernels are "
                f"adapted to this stream's {self.in_channels}."
            )
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if keys:
                lines.append(f"  {label} keys ({len(keys)}): {_short(keys, 3 if label == 'mis-shaped' else 5)}")
        return "\n".join(lines)

    # --- forward --------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Encode a batch of images.

        Args:
            x: Images, shape ``(B, in_channels, H, W)``.

        Returns:
            Pooled features, shape ``(B, out_features)``.

        Raises:
            ValueError: If ``x`` is not 4-D or has the wrong channel count.

        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            plural = "" if self.in_channels == 1 else "s"
            got = f"{x.shape[1]}" if x.ndim == 4 else f"a {x.ndim}-D tensor"
            raise ValueError(
                f"{self._who()} expects {self.in_channels} channel{plural}, got {got} "
                f"(input shape {tuple(x.shape)}, expected (B, {self.in_channels}, H, W))."
            )
        return self._forward(x)


def _first_conv_for(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh first convolution like ``conv`` taking ``in_channels``, initialised as torchvision does."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    # Same init torchvision gives every conv of ResNet and VGG, so a fresh trunk is a fresh network.
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


# ---------------------------------------------------------------------------------------- ResNet

_RESNETS: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
    "resnet152": models.resnet152,
}
_RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
_RESNET_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class ResNetTrunk(ImageTrunk):
    """A torchvision ResNet trunk: images in, globally average-pooled features out.

    The submodules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` … ``layer4``), so a
    torchvision ResNet ``state_dict`` (without ``fc.*``) loads with ``load_state_dict``, and
    parameter-name patterns such as ``"encoders.rgb.layer4.*"`` select what they would select
    in torchvision. The network is always built with ``weights=None``: nothing is downloaded.
    Weight files, freezing and the channel check: see :class:`ImageTrunk`.

    Example:
        >>> import torch
        >>> from mslightning.nn import ResNetTrunk
        >>> trunk = ResNetTrunk("resnet18", in_channels=1, frozen="layer2", name="depth")
        >>> trunk(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 512])
        >>> trunk.layer2[0].conv1.weight.requires_grad, trunk.layer3[0].conv1.weight.requires_grad
        (False, True)

    Args:
        arch: One of ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"``,
            ``"resnet152"``.
        in_channels: Channels of this stream's images (3 for RGB, 1 for depth, ...).
        weights_path: Optional path to a torchvision ImageNet ``state_dict`` of the same
            ``arch`` saved with ``torch.save``. ``fc.*`` entries are ignored; when
            ``in_channels != 3`` the ``conv1`` kernel is adapted with
            :func:`adapt_conv1_weight`. A Lightning checkpoint holding this stream's trunk
            (``encoders.<name>.*``) works too; see :meth:`ImageTrunk.load_weights`.
        frozen: ``None`` (all trainable), ``"all"``, or the last frozen stage of
            ``("stem", "layer1", "layer2", "layer3", "layer4")``; ``"stem"`` is ``conv1`` and
            ``bn1``.
        freeze_batchnorm: Keep the running statistics of every BatchNorm layer frozen.
        name: The stream's name, used only in error messages. The owning module may set the
            attribute later (``trunk.name = "depth"``).

    Attributes:
        out_features: Width of the pooled features (512 for resnet18/34, 2048 for 50/101/152).
        stages: ``("stem", "layer1", "layer2", "layer3", "layer4")``.

    Raises:
        ValueError: For an unknown ``arch``, a non-positive ``in_channels``, a ``frozen`` that is
            no stage, or a bad ``weights_path`` file (see :meth:`ImageTrunk.load_weights`: the
            message names the stream and the path, says what is wrong and what to do).
        FileNotFoundError: If ``weights_path`` does not exist.

    """

    _family = "ResNet"
    _archs = _RESNETS
    _first_conv = "conv1.weight"

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: int = 3,
        weights_path: str | Path | None = None,
        frozen: str | None = None,
        freeze_batchnorm: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(
            arch,
            in_channels=in_channels,
            stages=_RESNET_STAGES,
            frozen=frozen,
            freeze_batchnorm=freeze_batchnorm,
            name=name,
        )
        resnet = _RESNETS[arch](weights=None)
        if in_channels != 3:
            resnet.conv1 = _first_conv_for(resnet.conv1, in_channels)
        for child in _RESNET_CHILDREN:
            setattr(self, child, getattr(resnet, child))
        self.out_features = resnet.fc.in_features
        self._ignored_prefixes = ("fc.",)
        self._finish(weights_path)

    def load_torchvision_weights(self, path: str | Path) -> None:
        """Same as :meth:`ImageTrunk.load_weights` (the name ``ResNetStreamEncoder`` code uses).

        Args:
            path: A file written by ``torch.save(resnet.state_dict(), path)``.

        """
        self.load_weights(path)

    @staticmethod
    def _guess_arch(state: Mapping[str, Tensor]) -> str | None:
        return _guess_resnet(state)

    def _stage_modules(self) -> dict[str, list[nn.Module]]:
        stages: dict[str, list[nn.Module]] = {"stem": [self.conv1, self.bn1]}
        stages.update((name, [getattr(self, name)]) for name in _RESNET_STAGES[1:])
        return stages

    def _forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _is_lightning_checkpoint(obj: Mapping[Any, Any]) -> bool:
    """Whether a loaded mapping is a Lightning checkpoint (a ``state_dict`` beside training state)."""
    markers = ("pytorch-lightning_version", "global_step", "epoch")
    return isinstance(obj.get("state_dict"), Mapping) and any(k in obj for k in markers)


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


# ------------------------------------------------------------------------------------------- VGG

# arch -> (torchvision's layer configuration, BatchNorm after every convolution)
_VGGS: dict[str, tuple[str, bool]] = {
    "vgg11": ("A", False),
    "vgg11_bn": ("A", True),
    "vgg13": ("B", False),
    "vgg13_bn": ("B", True),
    "vgg16": ("D", False),
    "vgg16_bn": ("D", True),
    "vgg19": ("E", False),
    "vgg19_bn": ("E", True),
}
_VGG_CONVS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}
_VGG_BLOCKS = ("block1", "block2", "block3", "block4", "block5")
_VGG_POOLS = ("avg", "fc7")


class VGGTrunk(ImageTrunk):
    """A torchvision VGG trunk: images in, pooled conv features or fc7 features out.

    The submodules keep torchvision's names (``features.*``, and ``classifier.*`` with
    ``pool="fc7"``), so a torchvision VGG ``state_dict`` loads directly. The network is always
    built with ``weights=None``: nothing is downloaded. Images need at least 32 pixels a side
    (five 2x2 max-pools). Weight files, freezing and the channel check: see :class:`ImageTrunk`.

    Example:
        >>> import torch
        >>> from mslightning.nn import VGGTrunk
        >>> trunk = VGGTrunk("vgg11_bn", frozen="block2", freeze_batchnorm=True)
        >>> trunk(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 512])

    Args:
        arch: One of ``"vgg11"``, ``"vgg13"``, ``"vgg16"``, ``"vgg19"`` and their BatchNorm
            variants ``"vgg11_bn"`` … ``"vgg19_bn"``.
        in_channels: Channels of the images (3 for RGB, 1 for depth, ...).
        weights_path: Optional path to a torchvision ImageNet ``state_dict`` of the same
            ``arch`` saved with ``torch.save``. The classifier's entries are ignored (with
            ``pool="fc7"`` only its last layer, ``classifier.6.*``); when ``in_channels != 3``
            the first convolution (``features.0``) is adapted with :func:`adapt_conv1_weight`.
            See :meth:`ImageTrunk.load_weights`.
        frozen: ``None`` (all trainable), ``"all"``, or the last frozen stage of
            ``("block1", ..., "block5")`` (``features`` split after each max-pool), plus
            ``"fc"`` (fc6 and fc7) with ``pool="fc7"``.
        freeze_batchnorm: Keep the running statistics of every BatchNorm layer frozen (the
            ``_bn`` variants).
        name: The stream's name, used only in error messages.
        pool: ``"avg"``: global average pool of the last conv block, ``(B, 512)``. ``"fc7"``:
            torchvision's own path up to fc7 — ``avgpool`` (adaptive, 7x7) -> flatten -> fc6,
            ReLU, Dropout, fc7, ReLU, Dropout — ``(B, 4096)``, the classic VGG feature.

    Attributes:
        out_features: 512 with ``pool="avg"``, 4096 with ``pool="fc7"``.
        pool: ``"avg"`` or ``"fc7"``.
        stages: ``("block1", ..., "block5")``, and ``"fc"`` last with ``pool="fc7"``.

    Raises:
        ValueError: For an unknown ``arch`` or ``pool``, a non-positive ``in_channels``, a
            ``frozen`` that is no stage, or a bad ``weights_path`` file (see
            :meth:`ImageTrunk.load_weights`).
        FileNotFoundError: If ``weights_path`` does not exist.

    """

    _family = "VGG"
    _archs = _VGGS
    _first_conv = "features.0.weight"

    def __init__(
        self,
        arch: str = "vgg16",
        in_channels: int = 3,
        weights_path: str | Path | None = None,
        frozen: str | None = None,
        freeze_batchnorm: bool = False,
        name: str | None = None,
        pool: str = "avg",
    ) -> None:
        who = f"stream '{name}'" if name is not None else type(self).__name__
        if pool not in _VGG_POOLS:
            raise ValueError(f"{who}: pool must be one of {list(_VGG_POOLS)}, got {pool!r}.")
        if frozen == "fc" and pool != "fc7":
            raise ValueError(
                f"{who}: frozen='fc' needs pool='fc7'; with pool={pool!r} the trunk has no fc layers. Freeze "
                f"'all' or a conv block, 'block1' ... 'block5', instead."
            )
        stages = (*_VGG_BLOCKS, "fc") if pool == "fc7" else _VGG_BLOCKS
        super().__init__(
            arch,
            in_channels=in_channels,
            stages=stages,
            frozen=frozen,
            freeze_batchnorm=freeze_batchnorm,
            name=name,
        )
        self.pool = pool
        cfg, batch_norm = _VGGS[arch]
        if pool == "fc7":
            net = getattr(models, arch)(weights=None)
            features: nn.Sequential = net.features
        else:  # no 100M-parameter classifier to build and throw away
            features = tv_vgg.make_layers(tv_vgg.cfgs[cfg], batch_norm=batch_norm)
            _init_like_vgg(features)
        if in_channels != 3:
            features[0] = _first_conv_for(features[0], in_channels)
        self.features = features
        if pool == "fc7":
            self.avgpool = net.avgpool
            self.classifier = net.classifier[:-1]  # fc6, ReLU, Dropout, fc7, ReLU, Dropout
            self.out_features = net.classifier[-1].in_features
            self._ignored_prefixes = ("classifier.6.",)
        else:
            self.out_features = tv_vgg.cfgs[cfg][-2]  # the last conv's width (the last entry is "M")
            self._ignored_prefixes = ("classifier.",)
        self._finish(weights_path)

    @staticmethod
    def _guess_arch(state: Mapping[str, Tensor]) -> str | None:
        return _guess_vgg(state)

    def _stage_modules(self) -> dict[str, list[nn.Module]]:
        blocks: list[list[nn.Module]] = [[]]
        for module in self.features:
            blocks[-1].append(module)
            if isinstance(module, nn.MaxPool2d):
                blocks.append([])
        stages = dict(zip(_VGG_BLOCKS, blocks, strict=False))
        if self.pool == "fc7":
            stages["fc"] = [self.classifier]
        return stages

    def _forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < _VGG_MIN_SIZE:
            raise ValueError(
                f"{self.arch} halves its input five times and needs images of at least {_VGG_MIN_SIZE} x "
                f"{_VGG_MIN_SIZE} pixels, got {tuple(x.shape[-2:])}. Use larger images (e.g. the data's image_size)."
            )
        x = self.features(x)
        if self.pool == "avg":
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


_VGG_MIN_SIZE = 32


def _init_like_vgg(features: nn.Module) -> None:
    """Initialise conv and BatchNorm layers as ``torchvision.models.VGG`` does (``init_weights``)."""
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)


def _guess_vgg(state: Mapping[str, Tensor]) -> str | None:
    """Which VGG a state_dict's keys and shapes look like.

    A torchvision VGG's ``features`` holds 8, 10, 13 or 16 convolutions (VGG-11/13/16/19), all
    3x3, at ``features.<i>.weight``; the ``_bn`` variants also hold BatchNorm running statistics
    there.

    Returns:
        An ``arch`` name (``"vgg16_bn"``), a description of a VGG-like network this module does
        not build, or ``None`` if it is no VGG (no 3x3 convolutions under ``features.<i>``, or
        any other kernel size there, as in AlexNet).

    """
    convs = []
    batch_norm = False
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "features" or not parts[1].isdigit():
            continue
        if parts[2] == "weight" and value.ndim == 4:
            convs.append(tuple(value.shape[2:]))
        batch_norm = batch_norm or parts[2] == "running_mean"
    if not convs or any(kernel != (3, 3) for kernel in convs):
        return None
    arch = _VGG_CONVS.get(len(convs))
    if arch is None:
        return f"a VGG-like network with {len(convs)} convolutions"
    return f"{arch}_bn" if batch_norm else arch
