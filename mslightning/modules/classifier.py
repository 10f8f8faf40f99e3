"""Multi-stream classification (RGB + depth, or images with feature vectors) with per-stream auxiliary heads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from mslightning.callbacks._tensorboard import Layout, TagOf, outputs_layout
from mslightning.modules.base import GroupedOptimizationModule, ParamGroups, StagedSteps
from mslightning.modules.pathways import PathwayReport, pathway_report
from mslightning.nn import ConcatFusion, Fusion, ResNetStreamEncoder, StreamHeads
from mslightning.optim import ParamGroup
from mslightning.streams import check_classification_batch, check_stream_inputs, check_streams

__all__ = ["DualStreamClassifier", "MultiStreamClassifier"]

Batch = tuple[dict[str, Tensor], Tensor]
STAGES = ("train", "val", "test")
FUSED = "fused"
SHARED_PARTS = ("fusion", "head", FUSED)


class MultiStreamClassifier(StagedSteps, GroupedOptimizationModule):
    """N named streams -> one encoder each -> fusion -> classifier, plus aux heads.

    Every stream has its own encoder: a torchvision ResNet trunk for an image stream (the
    ``backbone``), or the module that the stream's factory in ``encoders`` builds, e.g. an
    :class:`~mslightning.nn.MLPEncoder` for a *vector* stream (an audio or text embedding,
    per-expert features: batches ``(B, D)``). ``streams`` is the one declaration of every stream:
    its number is an image stream's channel count, and for a stream in ``encoders`` what its
    factory is called with (a vector stream's width ``D``).

    Parameter names: ``encoders.<stream>.*`` (torchvision ResNet names inside a trunk),
    ``aux_heads.<stream>.*``, ``fusion.*``, ``head.*``. Default named parameter groups: one per
    stream (its encoder and auxiliary head), ``fusion`` (when the fusion has parameters) and
    ``head``; configure each group's lr, weight decay and schedule under ``param_groups``.

    Loss = CE(fused, y) + ``aux_weight`` * sum over streams of CE(aux_m, y). With
    ``aux_weight=0`` the auxiliary heads become *probes*: they are trained on detached
    features, so they still report how much each stream knows (for monitoring) without
    changing the encoders or the fused prediction.

    Logged metrics (``<stage>`` is ``train``, ``val`` or ``test``; ``<out>`` is ``fused`` or a
    stream name): ``<stage>/loss`` (the optimised total), ``<stage>/<out>/loss``,
    ``<stage>/<out>/acc`` (top-1) and ``<stage>/<out>/macro_acc`` (mean per-class accuracy),
    all per epoch (train also per step).

    ``training_step``/``validation_step`` return ``{"loss", "logits", "stream_logits",
    "target"}``, the per-stream prediction protocol of
    :class:`~mslightning.callbacks.StreamMonitor`.

    Args:
        streams: Stream name -> input channels (an image stream) or feature width ``D`` (a
            vector stream), in order (``{"rgb": 3, "depth": 1}``, ``{"rgb": 3, "audio": 128}``).
        num_classes: Number of classes K.
        backbone: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``; one
            name for all the streams without an entry in ``encoders``, or a mapping that names
            exactly those streams.
        weights: Optional stream -> path of a torchvision ImageNet ``state_dict`` on local
            disk to initialise that stream's trunk (first conv adapted to its channels); only
            for streams with a ``backbone`` trunk.
        encoders: Optional stream -> encoder factory, called with the stream's number from
            ``streams`` (YAML: ``{audio: {class_path: mslightning.nn.MLPEncoder, init_args:
            {hidden: [256], out_features: 128}}}``; Python: ``{"audio":
            functools.partial(MLPEncoder, hidden=(256,))}``). The module it builds must declare
            an integer ``out_features``; an ``input_ndim`` attribute (2 for vectors, as
            :class:`~mslightning.nn.MLPEncoder` has) lets the first batch's check tell a vector
            from an image, and a ``name`` attribute that is ``None`` is set to the stream's name.
        fusion: Builds the fusion from stream -> feature width (YAML: ``class_path`` of a
            :mod:`mslightning.nn` fusion and its ``init_args``).
        aux_weight: Weight of the per-stream auxiliary losses (0: probes, see above).
        label_smoothing: Label smoothing of every cross-entropy.
        dropout: Dropout before the fused classifier and each auxiliary head.
        optimizer: See :class:`~mslightning.modules.GroupedOptimizationModule`.
        param_groups: See :class:`~mslightning.modules.GroupedOptimizationModule`.
        no_weight_decay_on_norm_and_bias: See
            :class:`~mslightning.modules.GroupedOptimizationModule`.

    Raises:
        ValueError: For no streams, an unknown backbone (naming the stream), ``backbone``,
            ``weights`` or ``encoders`` naming a stream they do not apply to, an encoder factory
            that fails or builds no module with an integer ``out_features`` (naming the stream
            and the class), or bad numbers.
    """

    def __init__(
        self,
        streams: Mapping[str, int] | None = None,
        num_classes: int = 4,
        backbone: str | Mapping[str, str] = "resnet18",
        weights: Mapping[str, str] | None = None,
        encoders: Mapping[str, Callable[[int], nn.Module]] | None = None,
        fusion: Callable[[dict[str, int]], Fusion] = ConcatFusion,
        aux_weight: float = 1.0,
        label_smoothing: float = 0.0,
        dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        param_groups: ParamGroups | None = None,
        no_weight_decay_on_norm_and_bias: bool = False,
    ) -> None:
        super().__init__(optimizer, param_groups, no_weight_decay_on_norm_and_bias)
        streams = check_streams(streams if streams is not None else {"rgb": 3, "depth": 1}, "streams")
        reserved = [name for name in streams if name in SHARED_PARTS]
        if reserved:
            raise ValueError(
                f"streams: {reserved} cannot name a stream: {list(SHARED_PARTS)} are the model's shared parts "
                "(parameter groups and metric keys would clash). Rename the stream."
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        if not aux_weight >= 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight!r}.")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        self.save_init_arguments(
            {
                "streams": streams,
                "num_classes": num_classes,
                "backbone": backbone,
                "weights": weights,
                "encoders": encoders,
                "fusion": fusion,
                "aux_weight": aux_weight,
                "label_smoothing": label_smoothing,
                "dropout": dropout,
                "optimizer": optimizer,
                "param_groups": param_groups,
                "no_weight_decay_on_norm_and_bias": no_weight_decay_on_norm_and_bias,
            }
        )
        # pretrained files only initialise the trunks: a checkpoint holds the trained weights, and
        # reloading it must not need those files (run directories keep them in config.yaml)
        self.hparams["weights"] = None
        factories = dict(encoders or {})
        unknown = [name for name in factories if name not in streams]
        if unknown:
            raise ValueError(f"`encoders` names {unknown}, which are not streams; the streams are {list(streams)}.")
        trunk_streams = [name for name in streams if name not in factories]
        backbones = dict(backbone) if isinstance(backbone, Mapping) else dict.fromkeys(trunk_streams, backbone)
        weights = dict(weights or {})
        for what, mapping in (("backbone", backbones), ("weights", weights)):
            problems = {
                "missing": [name for name in trunk_streams if name not in mapping] if what == "backbone" else [],
                "not streams": [name for name in mapping if name not in streams],
                "built by `encoders`": [name for name in mapping if name in factories],
            }
            if any(problems.values()):
                rule = "must name each stream" if what == "backbone" else "may name only streams"
                details = "; ".join(f"{problem}: {names}" for problem, names in problems.items() if names)
                raise ValueError(
                    f"`{what}` {rule} with a ResNet trunk (the streams not in `encoders`), {trunk_streams}; "
                    f"got keys {list(mapping)} ({details})."
                )
        self.streams = streams
        self.num_classes = num_classes
        self.aux_weight = aux_weight
        self.label_smoothing = label_smoothing

        built = {}
        for name, channels in streams.items():
            if name in factories:
                built[name] = _build_encoder(name, factories[name], channels)
                continue
            try:
                built[name] = ResNetStreamEncoder(backbones[name], channels, weights.get(name), name=name)
            except ValueError as err:
                if f"stream {name!r}" in str(err):
                    raise
                raise ValueError(f"backbone of stream {name!r}: {err}") from err
        self.encoders = nn.ModuleDict(built)
        self.input_ndims: dict[str, int | None] = {
            name: getattr(encoder, "input_ndim", None) for name, encoder in self.encoders.items()
        }
        """Stream -> dimensions of its batches (4 images, 2 vectors; None: not declared by its encoder)."""
        widths = {name: encoder.out_features for name, encoder in self.encoders.items()}
        self.fusion = fusion(widths)
        if not isinstance(self.fusion, Fusion):
            raise ValueError(f"`fusion` must build an mslightning.nn.Fusion, got {type(self.fusion).__name__}.")
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.fusion.out_features, num_classes))
        self.aux_heads = StreamHeads(widths, num_classes, dropout)
        self.stream_patterns = {name: [f"encoders.{name}.*", f"aux_heads.{name}.*"] for name in streams}
        self.dashboard_runs = [*streams, FUSED]
        """Each stream and the fused output get their own TensorBoard run (one colour each)."""
        self.best_metrics = {f"val/{out}/acc": "max" for out in (FUSED, *streams)}
        """Keys whose best value is an HParams metric (:class:`~mslightning.loggers.StreamTensorBoardLogger`)."""
        self._checked_stages: set[str] = set()

        template = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "macro_acc": MulticlassAccuracy(num_classes, average="macro"),
            }
        )
        # One metric object per stage and output ("train" would clash with nn.Module.train).
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": nn.ModuleDict(
                    {out: template.clone(prefix=f"{stage}/{out}/") for out in (FUSED, *streams)}
                )
                for stage in STAGES
            }
        )

    pathway_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    """The figure :meth:`analyze_pathways` reports (PathwayAnalysis charts it)."""

    stream_metric_keys: ClassVar[dict[str, str]] = {
        "train_{score}": "train/{stream}/acc",
        "val_{score}": "val/{stream}/acc",
        "train_loss": "train/{stream}/loss_epoch",
        "val_loss": "val/{stream}/loss",
    }
    """StreamMonitor metrics this module logs itself (each stream's accuracy and loss): not logged twice."""

    def custom_scalar_layout(self, tag_of: TagOf | None = None) -> Layout:
        """The classification charts of the custom-scalars dashboard: accuracy and loss, train vs val.

        Args:
            tag_of: The TensorBoard tag of a logged key (a stream's run drops the stream).

        Returns:
            ``{category: {chart: ["Multiline", [tag regex, ...]]}}``: one line per output (each
            stream and ``fused``) and stage.
        """
        outputs = [FUSED, *self.encoders]
        return outputs_layout(
            "classification",
            {
                "accuracy: train vs val": [f"{stage}/{out}/acc" for stage in ("train", "val") for out in outputs],
                "loss: train vs val": [
                    key for out in outputs for key in (f"train/{out}/loss_epoch", f"val/{out}/loss")
                ],
                "macro accuracy: train vs val": [
                    f"{stage}/{out}/macro_acc" for stage in ("train", "val") for out in outputs
                ],
            },
            tag_of,
        )

    @override
    def default_param_groups(self) -> list[ParamGroup]:
        """One group per stream, ``fusion`` and ``head`` (a parameter-free fusion's group is left out).

        Returns:
            The default groups.
        """
        streams = [ParamGroup(name, patterns) for name, patterns in self.stream_patterns.items()]
        return [*streams, ParamGroup("fusion", "fusion.*"), ParamGroup("head", "head.*")]

    def check_inputs(self, inputs: Mapping[str, Tensor]) -> None:
        """Raise a clear error for missing or unexpected streams.

        Args:
            inputs: Stream name -> (B, C_m, H, W) images or (B, D_m) vectors.

        Raises:
            ValueError: Naming the missing and unexpected stream keys.
        """
        if not isinstance(inputs, Mapping):
            raise ValueError(f"Expected a mapping stream name -> images, got {type(inputs).__name__}.")
        if inputs.keys() != self.streams.keys():
            missing = [name for name in self.streams if name not in inputs]
            unexpected = [name for name in inputs if name not in self.streams]
            raise ValueError(
                f"The model has streams {list(self.streams)}; the input is missing {missing} and has "
                f"unexpected {unexpected}."
            )

    def encode(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Pooled features per stream.

        Args:
            inputs: Stream name -> (B, C_m, H, W) images or (B, D_m) vectors.

        Returns:
            Stream name -> (B, F_m).
        """
        self.check_inputs(inputs)
        return {name: encoder(inputs[name]) for name, encoder in self.encoders.items()}

    def classify(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fused logits from per-stream features.

        Args:
            features: Stream name -> (B, F_m).

        Returns:
            Logits (B, K).
        """
        return self.head(self.fusion(features))

    @override
    def forward(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Fused and per-stream logits.

        Args:
            inputs: Stream name -> images (B, C_m, H, W) or vectors (B, D_m).

        Returns:
            Fused logits (B, K) and stream name -> auxiliary logits (B, K).
        """
        features = self.encode(inputs)
        aux_input = features if self.aux_weight > 0 else {m: f.detach() for m, f in features.items()}
        return self.classify(features), self.aux_heads(aux_input)

    def fusion_internals(self) -> dict[str, dict[str, Tensor]]:
        """The fusion's monitored internals (e.g. per-stream weights or mean gates).

        Returns:
            Metric name -> stream name -> 0-dim tensor.
        """
        return self.fusion.internals()

    def _shared_step(self, batch: Batch, stage: str) -> dict[str, Any]:
        if stage not in self._checked_stages:
            # once per stage: labels out of range, float or (B, 1) targets, uint8 images and stream
            # mismatches get a message naming both sides instead of a torch error later
            check_classification_batch(
                batch, self.streams, self.num_classes, type(self).__name__, self.dtype, self.input_ndims
            )
            self._checked_stages.add(stage)
        inputs, target = batch
        fused, stream_logits = self(inputs)
        ce = {
            out: F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
            for out, logits in {FUSED: fused, **stream_logits}.items()
        }
        if stage == "train":
            self.loss_terms = {out: term.detach() for out, term in ce.items()}
        aux_loss = sum(ce[name] for name in self.streams)
        # with aux_weight 0 the probes still learn (detached features), outside the model's loss
        loss = ce[FUSED] + (self.aux_weight * aux_loss if self.aux_weight > 0 else aux_loss)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "train")
        metrics = self.metrics[f"{stage}_metrics"]
        for out, logits in {FUSED: fused, **stream_logits}.items():
            self.log(f"{stage}/{out}/loss", ce[out], on_step=on_step, on_epoch=True)
            metrics[out].update(logits, target)
            self.log_dict(metrics[out], on_step=False, on_epoch=True, prog_bar=stage == "val" and out == FUSED)
        return {
            "loss": loss,
            "logits": fused.detach(),
            "stream_logits": {name: logits.detach() for name, logits in stream_logits.items()},
            "target": target,
        }

    @override
    def predict_step(self, batch: Batch | Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Class probabilities (B, K) of the fused prediction; batches are inputs or (inputs, target)."""
        inputs = batch if isinstance(batch, Mapping) else batch[0]
        if "predict" not in self._checked_stages:
            check_stream_inputs(inputs, self.streams, type(self).__name__, self.dtype, self.input_ndims)
            self._checked_stages.add("predict")
        return self(inputs)[0].softmax(dim=1)

    @torch.no_grad()
    def _features(self, dataloader: DataLoader) -> tuple[dict[str, Tensor], Tensor]:
        parts: dict[str, list[Tensor]] = {name: [] for name in self.streams}
        targets = []
        for inputs, target in dataloader:
            features = self.encode({m: x.to(self.device) for m, x in inputs.items()})
            for name, f in features.items():
                parts[name].append(f)
            targets.append(target.to(self.device))
        return {name: torch.cat(f) for name, f in parts.items()}, torch.cat(targets)

    @torch.no_grad()
    def analyze_pathways(self, dataloader: DataLoader, reference_dataloader: DataLoader) -> PathwayReport:
        """Each stream's contribution, by ablating streams to their reference-set mean features.

        Runs in eval mode and restores the previous mode. Accuracy is measured with every
        subset of streams kept; the others' pooled features are replaced by their mean over
        ``reference_dataloader`` (the training set: zeros would be out of distribution).

        Args:
            dataloader: Evaluation batches ``(inputs, target)``.
            reference_dataloader: Batches whose mean features stand in for ablated streams.

        Returns:
            Accuracies all/none/alone, Shapley values and utilisation rates u(m|n).
        """
        was_training = self.training
        self.eval()
        try:
            reference, _ = self._features(reference_dataloader)
            features, target = self._features(dataloader)
            return pathway_report(
                list(self.streams), features, target, {m: f.mean(dim=0) for m, f in reference.items()}, self.classify
            )
        finally:
            self.train(was_training)


def _build_encoder(name: str, factory: Callable[[int], nn.Module], width: int) -> nn.Module:
    """Call a stream's encoder factory with its width and check what it built; errors name the stream."""
    try:
        encoder = factory(width)
    except (ValueError, TypeError) as err:
        if f"stream {name!r}" in str(err):
            raise
        kind = TypeError if isinstance(err, TypeError) else ValueError
        raise kind(f"encoders[{name!r}] (its factory called with streams[{name!r}] = {width}): {err}") from err
    if not isinstance(encoder, nn.Module):
        raise ValueError(
            f"encoders[{name!r}] must build a torch.nn.Module, got {type(encoder).__name__} {encoder!r:.80}."
        )
    out_features = getattr(encoder, "out_features", None)
    if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1:
        raise ValueError(
            f"encoders[{name!r}] built a {type(encoder).__name__} whose `out_features` is {out_features!r}; the "
            "classifier sizes the fusion and the heads from it: give the encoder an integer attribute "
            "`out_features`, the width of the (B, out_features) features it returns."
        )
    if getattr(encoder, "name", False) is None:
        encoder.name = name  # an encoder that names its stream in errors (MLPEncoder, the trunks)
    return encoder


DualStreamClassifier = MultiStreamClassifier
"""Alias: the two-stream (RGB + depth) case is the reference case of the N-stream classifier."""
