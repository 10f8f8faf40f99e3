"""Joint augmentation of a multi-stream sample: one geometry for every image stream.

RGB and depth of an RGB-D sample are pixel-aligned; a crop, flip or rescale drawn separately for
each stream would break that alignment (the depth of a pixel would no longer belong to it).
:class:`JointTransform` applies one geometric transform with **one draw of its random
parameters** to every image stream of a sample, then each stream's own photometric transform
(colour jitter on RGB only, say). It rests on torchvision's ``transforms.v2``: every image stream
is wrapped as a :class:`torchvision.tv_tensors.Image`, and a v2 transform called on a dict of
them draws its parameters once and applies them to all. Vector streams ``(D,)`` are passed
through untouched.

Every multi-stream datamodule here takes one (``train_transform``): the synthetic streams, the
feature streams and NYU Depth V2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision import tv_tensors

__all__ = ["JointTransform"]

Sample = dict[str, Tensor]
"""One sample's streams: stream name -> ``(C, H, W)`` image or ``(D,)`` vector."""


class JointTransform:
    """One geometric transform shared by all image streams of a sample, then per-stream photometric ones.

    Args:
        geometric: A ``torchvision.transforms.v2`` transform (or ``v2.Compose``) that changes
            geometry: ``RandomResizedCrop``, ``RandomHorizontalFlip``, ``Resize``,
            ``RandomAffine``, ... Called once per sample on ``{stream: tv_tensors.Image}``, so its
            random parameters are drawn once and every image stream gets the same crop, flip and
            scale. Interpolation follows torchvision: bilinear for ``Image`` (depth included).
            None: no geometric change.
        photometric: Stream name -> a transform of that stream's ``(C, H, W)`` tensor alone,
            applied after the geometry (e.g. ``{"rgb": v2.ColorJitter(0.4, 0.4, 0.4)}``). Streams
            not named get none. torchvision's photometric transforms take float images in
            [0, 1] and clamp their output to it: give them unstandardised images
            (:class:`~mslightning.data.NYUDepthV2DataModule` does; standardised or noise-like
            streams would be flattened to [0, 1]).

    Raises:
        ValueError: If ``geometric`` or a photometric entry is not callable, or a photometric
            key is not a string.

    Example:
        >>> import torch
        >>> from torchvision.transforms import v2
        >>> joint = JointTransform(
        ...     geometric=v2.Compose([v2.RandomResizedCrop((8, 8), antialias=True), v2.RandomHorizontalFlip()]),
        ...     photometric={"rgb": v2.ColorJitter(brightness=0.4)},
        ... )
        >>> sample = {"rgb": torch.rand(3, 16, 16), "depth": torch.rand(1, 16, 16), "audio": torch.rand(5)}
        >>> {name: tuple(x.shape) for name, x in joint(sample).items()}
        {'rgb': (3, 8, 8), 'depth': (1, 8, 8), 'audio': (5,)}

    """

    def __init__(
        self,
        geometric: nn.Module | Callable[[Any], Any] | None = None,
        photometric: Mapping[str, nn.Module | Callable[[Tensor], Tensor]] | None = None,
    ) -> None:
        if geometric is not None and not callable(geometric):
            raise ValueError(f"JointTransform: `geometric` must be a callable transform, got {geometric!r}.")
        photometric = dict(photometric or {})
        for name, transform in photometric.items():
            if not isinstance(name, str):
                raise ValueError(f"JointTransform: `photometric` keys are stream names, got {name!r}.")
            if not callable(transform):
                raise ValueError(
                    f"JointTransform: photometric[{name!r}] must be a callable transform, got {transform!r}."
                )
        self.geometric = geometric
        self.photometric = photometric

    def __repr__(self) -> str:
        return f"JointTransform(geometric={self.geometric!r}, photometric={self.photometric!r})"

    def check_streams(self, streams: Sequence[str], owner: str = "JointTransform") -> None:
        """Raise if a photometric transform names no stream of the data (meant for a datamodule's ``__init__``).

        Args:
            streams: The data's stream names.
            owner: Who checks, for the message (e.g. ``"NYUDepthV2DataModule.train_transform"``).

        Raises:
            ValueError: Naming the unknown streams and the data's streams.
        """
        unknown = [name for name in self.photometric if name not in streams]
        if unknown:
            raise ValueError(f"{owner}: photometric transforms for {unknown}, which are not streams {list(streams)}.")

    def __call__(self, sample: Mapping[str, Tensor]) -> Sample:
        """Transform one sample.

        Args:
            sample: Stream name -> ``(C, H, W)`` image or ``(D,)`` vector; every image stream
                has the same ``H, W`` (they are pixel-aligned).

        Returns:
            Stream name -> transformed plain tensor, in the sample's order.

        Raises:
            ValueError: If the image streams differ in size, or a photometric transform names a
                stream the sample does not have.
        """
        out = dict(sample)
        images = {name: x for name, x in sample.items() if x.ndim == 3}
        if self.geometric is not None and images:
            sizes = {name: tuple(x.shape[-2:]) for name, x in images.items()}
            if len(set(sizes.values())) > 1:
                raise ValueError(
                    f"JointTransform: the image streams must be pixel-aligned (same height and width) to share "
                    f"one geometric transform, got {sizes}."
                )
            moved = self.geometric({name: tv_tensors.Image(x) for name, x in images.items()})
            out.update({name: x.as_subclass(Tensor) for name, x in moved.items()})
        for name, transform in self.photometric.items():
            if name not in out:
                raise ValueError(
                    f"JointTransform: photometric transform for stream {name!r}, not in the sample {list(out)}."
                )
            out[name] = transform(out[name])
        return out
