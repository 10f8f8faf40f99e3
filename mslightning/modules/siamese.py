"""Siamese pairwise ranking: which of two photos of a series is better (Photo Triage)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from typing_extensions import override

from mslightning.callbacks._tensorboard import Layout, TagOf, outputs_layout
from mslightning.metrics import SeriesKendallTau
from mslightning.modules.base import GroupedOptimizationModule, ParamGroups, StagedSteps
from mslightning.nn import (
    ImageTrunk,
    PairCrossEntropyLoss,
    PairHead,
    PairLoss,
    PairMarginLoss,
    ResNetTrunk,
    ScoreHead,
)

__all__ = ["SiameseRanker", "check_pair_batch", "check_series_batch"]

STAGES = ("train", "val", "test")
PAIR_KEYS = ("a", "b", "ratio", "series", "index_a", "index_b", "rank_a", "rank_b")
SERIES_KEYS = ("images", "series", "index")
PAIR_METRICS = ("pair_acc", "pair_acc_agreed", "swap_consistency", "log_loss")


def _check_images(name: str, images: Any, owner: str, dtype: torch.dtype | None) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{owner}: batch[{name!r}] must be images (B, C, H, W), got {shape}.")
    if not images.is_floating_point():
        raise ValueError(
            f"{owner}: batch[{name!r}] is {images.dtype}; the model takes floating-point images: convert and "
            "scale them first (e.g. uint8 with `x.float() / 255`, then normalise)."
        )
    if dtype is not None and images.dtype != dtype:
        raise ValueError(
            f"{owner}: batch[{name!r}] is {images.dtype} but the model computes in {dtype}; convert the images "
            f"(e.g. `x.to({str(dtype).removeprefix('torch.')})`)."
        )


def _missing_keys(batch: Any, keys: tuple[str, ...], owner: str, what: str, contract: str) -> None:
    if not isinstance(batch, Mapping):
        raise ValueError(
            f"{owner} expects {what} batches as a dict with keys {list(keys)}, got {type(batch).__name__}."
        )
    missing = [key for key in keys if key not in batch]
    if missing:
        raise ValueError(
            f"{owner} expects {what} batches with keys {list(keys)}; this batch lacks {missing} (it has "
            f"{list(batch)}). See {contract}."
        )


def check_pair_batch(batch: Any, owner: str = "SiameseRanker", dtype: torch.dtype | None = None) -> None:
    """Check one pair batch (the contract of :data:`mslightning.data.PairBatch`).

    Meant for the first batch of a stage: it reads the ratios' range (one small transfer).

    Args:
        batch: A dict with ``"a"``, ``"b"`` float ``(B, C, H, W)``, ``"ratio"`` float ``(B,)`` in
            ``[0, 1]``, and ``"series"``, ``"index_a"``, ``"index_b"``, ``"rank_a"``, ``"rank_b"``
            integer ``(B,)``.
        owner: Who checks, for the message.
        dtype: The model's floating-point dtype.

    Raises:
        ValueError: Naming the missing key, the bad shape or dtype, or the ratio out of range.
    """
    _missing_keys(batch, PAIR_KEYS, owner, "pair", "mslightning.data.PairBatch")
    for name in ("a", "b"):
        _check_images(name, batch[name], owner, dtype)
    if batch["a"].shape != batch["b"].shape:
        raise ValueError(
            f"{owner}: batch['a'] and batch['b'] must have the same shape, got {tuple(batch['a'].shape)} and "
            f"{tuple(batch['b'].shape)}."
        )
    size = batch["a"].shape[0]
    for name in PAIR_KEYS[2:]:
        value = batch[name]
        floating = name == "ratio"
        if not isinstance(value, Tensor) or value.shape != (size,) or value.is_floating_point() != floating:
            shape = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            kind = "floating-point" if floating else "integer"
            raise ValueError(f"{owner}: batch[{name!r}] must be a ({size},) {kind} tensor, got {shape}.")
    ratio = batch["ratio"]
    if size and not bool(((ratio >= 0) & (ratio <= 1)).all()):
        bad = ratio[~((ratio >= 0) & (ratio <= 1))][0].item()
        raise ValueError(
            f"{owner}: batch['ratio'] is the fraction of annotators preferring 'a' and must lie in [0, 1]; "
            f"got {bad:.6g}."
        )


def check_series_batch(batch: Any, owner: str = "SiameseRanker", dtype: torch.dtype | None = None) -> None:
    """Check one predict batch of whole series (see :func:`mslightning.data.collate_series`).

    Args:
        batch: A dict with ``"images"`` float ``(N, C, H, W)`` and ``"series"``, ``"index"``
            integer ``(N,)`` (optionally ``"rank"`` integer ``(N,)``, 1 = best, -1 unknown).
        owner: Who checks, for the message.
        dtype: The model's floating-point dtype.

    Raises:
        ValueError: Naming the missing key or the bad shape or dtype.
    """
    _missing_keys(batch, SERIES_KEYS, owner, "predict (series)", "mslightning.data.SeriesBatch and collate_series")
    _check_images("images", batch["images"], owner, dtype)
    size = batch["images"].shape[0]
    for name in (*SERIES_KEYS[1:], *(("rank",) if "rank" in batch else ())):
        value = batch[name]
        if not isinstance(value, Tensor) or value.shape != (size,) or value.is_floating_point():
            shape = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{owner}: batch[{name!r}] must be a ({size},) integer tensor, got {shape}.")


class SiameseRanker(StagedSteps, GroupedOptimizationModule):
    """Which of two inputs is better: a shared image trunk, a pairwise head, a preference loss.

    The trunk runs **once** on the ``2B`` images of a batch of ``B`` pairs (``a`` and ``b``
    concatenated), so both halves share BatchNorm statistics and one forward pass; the features
    are split and given to the head, which returns the preference logit ``l(a, b)``
    (:mod:`mslightning.nn.ranking`). In training, each pair's order is swapped with probability
    0.5 (``random_swaps``; the ratio becomes ``1 - ratio``) so an order-sensitive head cannot
    learn a position bias. In evaluation, ``p(a > b)`` is symmetrised
    (:meth:`~mslightning.nn.PairHead.preference`).

    Parts, declared once (:attr:`stream_patterns`, read by the default param groups and by
    :class:`~mslightning.callbacks.StreamMonitor`): ``backbone`` (``backbone.*``, the trunk,
    torchvision names inside) and ``head`` (``head.*``). "backbone 1x, head 10x" is
    ``param_groups: {backbone: {lr: 1.0e-5}, head: {lr: 1.0e-4}}``. A fully frozen trunk's
    group is left out with a note.

    Logged metrics, per epoch (``<stage>``: ``train``, ``val``, ``test``):

    * ``<stage>/loss`` (also per step in training): the configured loss.
    * ``<stage>/pair_acc``: share of non-tied pairs whose winner (ratio > 0.5) gets
      ``p(a > b) > 0.5``.
    * ``<stage>/pair_acc_agreed``: the same on pairs with agreement ``max(r, 1 - r) >=
      agreement_threshold``.
    * ``<stage>/swap_consistency``: share of pairs for which ``(a, b)`` and ``(b, a)`` (raw,
      unsymmetrised logits) name the same winner; 1 by construction for :class:`ScoreHead`.
    * ``<stage>/log_loss``: binary cross-entropy of ``p(a > b)`` against the ratio.
    * ``<stage>/kendall_tau``: mean over series of Kendall's tau-b between each photo's score
      and its true rank (:class:`~mslightning.metrics.SeriesKendallTau`); the score is
      :meth:`~mslightning.nn.PairHead.series_scores` of the pair's two photos (ScoreHead: the
      score; DifferenceHead: the photo's mean symmetrised win probability over its pairs).
      Left out when no series has two ranked photos.

    ``predict_step`` takes whole series (:func:`check_series_batch`) and returns the columns
    ``series``, ``index``, ``score``, ``predicted_rank`` (1 = best) and, when the data has ranks,
    ``true_rank`` (-1: unknown): one row per photo, written to CSV by
    :class:`~mslightning.callbacks.PredictionTableWriter`.

    Args:
        trunk: Builds the image trunk (YAML: ``class_path: mslightning.nn.ResNetTrunk`` or
            ``VGGTrunk`` with its ``init_args``: arch, ``weights_path``, freeze modes).
        head: Builds the head from the trunk's feature width (``ScoreHead`` or ``DifferenceHead``).
        loss: Builds the loss (``PairCrossEntropyLoss``, ``RankNetLoss``, ``PairMarginLoss``).
        random_swaps: Swap each training pair's order with probability 0.5.
        agreement_threshold: Agreement from which a pair counts for ``pair_acc_agreed``, in
            ``[0.5, 1]``.
        optimizer: See :class:`~mslightning.modules.GroupedOptimizationModule`.
        param_groups: See :class:`~mslightning.modules.GroupedOptimizationModule`.
        no_weight_decay_on_norm_and_bias: See
            :class:`~mslightning.modules.GroupedOptimizationModule`.

    Raises:
        ValueError: If ``trunk``/``head``/``loss`` build the wrong kind of object, or
            ``agreement_threshold`` is outside ``[0.5, 1]``.
    """

    parts_are_peers = False
    """``backbone`` and ``head`` are in series: StreamMonitor does not compare them with each other."""

    def custom_scalar_layout(self, tag_of: TagOf | None = None) -> Layout:
        """The ranking charts of the custom-scalars dashboard: pair accuracy by agreement, ranks, losses.

        Args:
            tag_of: The TensorBoard tag of a logged key.

        Returns:
            ``{category: {chart: ["Multiline", [tag regex, ...]]}}``.
        """
        stages = ("train", "val")
        return outputs_layout(
            "ranking",
            {
                "pair accuracy: all pairs vs pairs with agreement": [
                    f"{stage}/{name}" for name in ("pair_acc", "pair_acc_agreed") for stage in stages
                ],
                "Kendall's tau within series": [f"{stage}/kendall_tau" for stage in stages],
                "loss: train vs val": ["train/loss_epoch", "val/loss", "train/log_loss", "val/log_loss"],
                "swap consistency": [f"{stage}/swap_consistency" for stage in stages],
            },
            tag_of,
        )

    @property
    def pretrained_parts(self) -> tuple[str, ...]:
        """The parts initialised from pretrained weights: ``("backbone",)`` after a weights file.

        StreamMonitor then expects the backbone's lr well below the fresh head's.
        """
        return ("backbone",) if self.backbone.pretrained else ()

    def __init__(
        self,
        trunk: Callable[[], ImageTrunk] = ResNetTrunk,
        head: Callable[[int], PairHead] = ScoreHead,
        loss: Callable[[], PairLoss] = PairCrossEntropyLoss,
        random_swaps: bool = True,
        agreement_threshold: float = 0.7,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        param_groups: ParamGroups | None = None,
        no_weight_decay_on_norm_and_bias: bool = False,
    ) -> None:
        super().__init__(optimizer, param_groups, no_weight_decay_on_norm_and_bias)
        if not 0.5 <= agreement_threshold <= 1:
            raise ValueError(f"agreement_threshold must be in [0.5, 1], got {agreement_threshold!r}.")
        self.save_init_arguments(
            {
                "trunk": trunk,
                "head": head,
                "loss": loss,
                "random_swaps": random_swaps,
                "agreement_threshold": agreement_threshold,
                "optimizer": optimizer,
                "param_groups": param_groups,
                "no_weight_decay_on_norm_and_bias": no_weight_decay_on_norm_and_bias,
            }
        )
        self.backbone = _built(trunk(), ImageTrunk, "trunk")
        self._forget_weights_file()
        self.head = _built(head(self.backbone.out_features), PairHead, "head")
        self.loss = _built(loss(), PairLoss, "loss")
        self.random_swaps = random_swaps
        self.agreement_threshold = agreement_threshold
        self.stream_patterns = {"backbone": ["backbone.*"], "head": ["head.*"]}
        self.best_metrics = {"val/pair_acc": "max", "val/pair_acc_agreed": "max", "val/kendall_tau": "max"}
        """Keys whose best value is an HParams metric (:class:`~mslightning.loggers.StreamTensorBoardLogger`)."""
        self._checked_stages: set[str] = set()
        # Means of per-pair values (accuracies as means of 0/1): a metric that saw no pair in an
        # epoch (no tie-free or high-agreement pair) is NaN and left out, never logged as 0.
        # One collection per stage ("train" would clash with nn.Module.train).
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": MetricCollection(
                    {name: MeanMetric() for name in PAIR_METRICS} | {"kendall_tau": SeriesKendallTau()},
                    prefix=f"{stage}/",
                    compute_groups=False,
                )
                for stage in STAGES
            }
        )

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pretrained_parts"] = list(self.pretrained_parts)  # the weights file is not named in hparams

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "backbone" in checkpoint.get("pretrained_parts", ()):
            self.backbone.pretrained = True

    def _forget_weights_file(self) -> None:
        """Name no pretrained file in the saved hparams (a copy; the caller's config is untouched).

        Pretrained files only initialise the trunk: the checkpoint holds the trained weights and
        must reload without the file.
        """
        trunk = self.hparams.get("trunk")
        init_args = trunk.get("init_args") if isinstance(trunk, Mapping | Namespace) else None
        if isinstance(init_args, Mapping | Namespace) and init_args.get("weights_path") is not None:
            plain = dict(vars(trunk)) if isinstance(trunk, Namespace) else dict(trunk)
            arguments = dict(vars(init_args)) if isinstance(init_args, Namespace) else dict(init_args)
            self.hparams["trunk"] = {**plain, "init_args": {**arguments, "weights_path": None}}

    @override
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """The preference logit of each pair.

        Args:
            a: First images ``(B, C, H, W)``.
            b: Second images ``(B, C, H, W)``.

        Returns:
            ``l(a, b)``, ``(B,)``: ``p(a > b) = sigmoid(l)`` (unsymmetrised).
        """
        features_a, features_b = self.pair_features(a, b)
        return self.head(features_a, features_b)

    def pair_features(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Trunk features of both halves, from one trunk pass over the ``2B`` images.

        Args:
            a: ``(B, C, H, W)``.
            b: ``(B, C, H, W)``, same shape.

        Returns:
            Features of ``a`` and of ``b``, each ``(B, F)``.
        """
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
        features = self.backbone(torch.cat([a, b]))
        return features[: a.shape[0]], features[a.shape[0] :]

    def preference(self, a: Tensor, b: Tensor) -> Tensor:
        """``p(a > b)``, symmetrised when the head is not antisymmetric.

        Args:
            a: ``(B, C, H, W)``.
            b: ``(B, C, H, W)``.

        Returns:
            Probabilities ``(B,)``.
        """
        return self.head.preference(*self.pair_features(a, b))

    def rank_series(self, images: Tensor) -> Tensor:
        """Scores of the members of one series (higher is better).

        Args:
            images: The series' ``N`` images, ``(N, C, H, W)``.

        Returns:
            Scores ``(N,)``; ``scores.argsort(descending=True)`` is the predicted order.
        """
        return self.head.series_scores(self.backbone(images))

    @torch.no_grad()
    def pair_predictions(self, dataloader: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """``p(a > b)`` of every pair of a dataloader, in eval mode, beside the pair's identifiers.

        For evaluations the logged metrics do not cover, e.g. accuracy by distortion-level gap on
        the synthetic data (:func:`mslightning.data.accuracy_by_level_gap`). Restores the
        previous train/eval mode.

        Args:
            dataloader: Pair batches (:data:`mslightning.data.PairBatch`), on any device.

        Returns:
            ``series``, ``index_a``, ``index_b``, ``ratio`` and ``probability`` (symmetrised
            ``p(a > b)``), each ``(P,)`` on the CPU, over all ``P`` pairs in loader order.
        """
        was_training = self.training
        self.eval()
        keys = ("series", "index_a", "index_b", "ratio")
        parts: dict[str, list[Tensor]] = {key: [] for key in (*keys, "probability")}
        try:
            for index, batch in enumerate(dataloader):
                if index == 0:  # once: the check reads the ratios' range (a host sync)
                    check_pair_batch(batch, type(self).__name__)
                a, b = (batch[name].to(self.device, self.dtype) for name in ("a", "b"))
                parts["probability"].append(self.preference(a, b).float().cpu())
                for key in keys:
                    parts[key].append(batch[key].cpu())
        finally:
            self.train(was_training)
        return {key: torch.cat(values) for key, values in parts.items()}

    def _swapped(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        swap = torch.rand(batch["ratio"].shape[0], device=batch["ratio"].device) < 0.5
        out = dict(batch)
        for first, second in (("a", "b"), ("index_a", "index_b"), ("rank_a", "rank_b")):
            where = swap.view(-1, *([1] * (batch[first].ndim - 1)))
            out[first] = torch.where(where, batch[second], batch[first])
            out[second] = torch.where(where, batch[first], batch[second])
        out["ratio"] = torch.where(swap, 1 - batch["ratio"], batch["ratio"])
        return out

    def _shared_step(self, batch: Mapping[str, Tensor], stage: str) -> Tensor:
        if stage not in self._checked_stages:
            check_pair_batch(batch, type(self).__name__, self.dtype)
            hard = isinstance(self.loss, PairCrossEntropyLoss | PairMarginLoss)
            if stage == "train" and hard and bool((batch["ratio"] == 0.5).any()):
                rank_zero_warn(
                    f"{type(self).__name__}: the training data keeps tied pairs (ratio 0.5), but "
                    f"{type(self.loss).__name__} learns from hard labels and leaves them out. To learn from "
                    "them as soft targets use loss RankNetLoss; otherwise drop them in the data (ties: drop)."
                )
            self._checked_stages.add(stage)
        if stage == "train" and self.random_swaps:
            batch = self._swapped(batch)
        ratio = batch["ratio"]
        features_a, features_b = self.pair_features(batch["a"], batch["b"])
        logit_ab = self.head(features_a, features_b)
        loss = self.loss(logit_ab, ratio)
        if stage == "train":
            self.loss_terms = {"loss": loss.detach()}
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=stage != "train")

        with torch.no_grad():
            # float32: under bf16/fp16 autocast near-equal pairs would round to exactly p = 0.5
            logit_ab = logit_ab.float()
            logit_ba = logit_ab.neg() if self.head.antisymmetric else self.head(features_b, features_a).float()
            probability = 0.5 * (torch.sigmoid(logit_ab) + torch.sigmoid(-logit_ba))
            ratio = ratio.float()
            correct = ((probability > 0.5) == (ratio > 0.5)).float()
            decided = ratio != 0.5
            agreed = decided & (torch.maximum(ratio, 1 - ratio) >= self.agreement_threshold)
            # by hand: F.binary_cross_entropy refuses to run under CUDA autocast
            clamped = probability.clamp(1e-7, 1 - 1e-7)
            log_loss = -(ratio * clamped.log() + (1 - ratio) * (-clamped).log1p())
            metrics = self.metrics[f"{stage}_metrics"]
            metrics["pair_acc"].update(correct[decided])
            metrics["pair_acc_agreed"].update(correct[agreed])
            metrics["swap_consistency"].update((torch.sign(logit_ab) == -torch.sign(logit_ba)).float())
            metrics["log_loss"].update(log_loss)
            if self.head.antisymmetric:
                score_a = self.head.series_scores(features_a).float()
                score_b = self.head.series_scores(features_b).float()
            else:
                score_a, score_b = probability, 1 - probability
            metrics["kendall_tau"].update(
                torch.cat([batch["series"], batch["series"]]),
                torch.cat([batch["index_a"], batch["index_b"]]),
                torch.cat([score_a, score_b]),
                torch.cat([batch["rank_a"], batch["rank_b"]]),
            )
        return loss

    def _log_epoch_metrics(self, stage: str) -> None:
        """Log the stage's epoch metrics that saw data (finite), then reset them."""
        metrics = self.metrics[f"{stage}_metrics"]
        with warnings.catch_warnings():  # an empty MeanMetric warns before returning NaN: that case is handled
            warnings.filterwarnings("ignore", message=".*(before the ``update``|nan).*")
            values = metrics.compute()
        metrics.reset()
        for key, value in values.items():
            if torch.isfinite(value):
                self.log(key, value, prog_bar=stage == "val" and key != f"{stage}/log_loss")

    @override
    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Score and rank every photo of each series in the batch.

        Args:
            batch: Whole series (:func:`check_series_batch`).
            batch_idx: Index of the batch.

        Returns:
            Columns, each ``(N,)``: ``series``, ``index``, ``score``, ``predicted_rank`` (1 =
            best within its series) and, when the batch has ``rank``, ``true_rank`` (-1: unknown).
        """
        if "predict" not in self._checked_stages:
            check_series_batch(batch, type(self).__name__, self.dtype)
            self._checked_stages.add("predict")
        features = self.backbone(batch["images"])
        series = batch["series"]
        scores = torch.empty(series.shape[0], dtype=torch.float32, device=features.device)
        predicted_rank = torch.empty_like(series)
        for series_id in series.unique():
            members = (series == series_id).nonzero().squeeze(1)
            member_scores = self.head.series_scores(features[members]).float()
            scores[members] = member_scores
            order = member_scores.argsort(descending=True, stable=True)
            predicted_rank[members[order]] = torch.arange(1, len(members) + 1, device=series.device)
        columns = {"series": series, "index": batch["index"], "score": scores, "predicted_rank": predicted_rank}
        if "rank" in batch:  # -1 where unknown; present for every batch, so every batch has the same columns
            columns["true_rank"] = batch["rank"]
        return columns


def _built(obj: Any, kind: type, argument: str) -> Any:
    if not isinstance(obj, kind):
        raise ValueError(
            f"`{argument}` must build an mslightning.nn.{kind.__name__}, got {type(obj).__module__}."
            f"{type(obj).__name__}."
        )
    return obj
