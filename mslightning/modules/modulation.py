"""Neural responses to video, modulated by behaviour over time: core -> modulator + ConvGRU -> readouts."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from torch import Tensor, nn
from typing_extensions import override

from mslightning.callbacks._tensorboard import Layout, TagOf, outputs_layout
from mslightning.metrics import BitsPerSpike, MaskedPearsonCorrCoef
from mslightning.modules.base import GroupedOptimizationModule, ParamGroups, StagedSteps
from mslightning.modules.pathways import PathwayReport
from mslightning.nn import ConcatModulator, ConvGRU, GaussianReadout, MaskedPoissonLoss, ResidualCore, response_mask
from mslightning.nn.modulators import Modulator
from mslightning.nn.readouts import Readout
from mslightning.streams import check_stream_name

__all__ = ["ModulatedResponseModel"]

STAGES = ("train", "val", "test")
DEFAULT_CORE = partial(ResidualCore, channels=(16, 32))
"""A small core: two residual blocks of 16 and 32 channels."""
DEFAULT_RECURRENT = partial(ConvGRU, hidden_channels=32)
"""A ConvGRU with 32 hidden channels and no options."""
BATCH_KEYS = ("session", "stimulus", "behaviour", "responses")
INPUTS = ("stimulus", "behaviour")
"""The inputs whose contributions :meth:`ModulatedResponseModel.analyze_pathways` measures."""


class ModulatedResponseModel(StagedSteps, GroupedOptimizationModule):
    """Predict neural responses to a video from its frames and the animal's behaviour over time.

    Per time step, a convolutional ``core`` encodes the frame; the ``modulator`` mixes the
    behaviour vector into the features (tiled embedding channels or FiLM; ``None``: the model is
    blind to behaviour); a ``ConvGRU`` carries them over time; the ``session``'s readout maps
    each step's hidden state to non-negative rates of that session's neurons. Sessions share
    everything but their readouts, so a new session needs only a new readout.

    Parts, declared once (:attr:`stream_patterns`: the default param groups and StreamMonitor):
    ``core`` (``core.*``), ``modulator`` (``modulator.*`` and ``recurrent.*``: behaviour enters
    through both) and ``readout`` (``readouts.*``). They are in series, not peers.

    Loss: :class:`~mslightning.nn.MaskedPoissonLoss` over the bins after ``burn_in`` and inside
    the batch's ``mask``, plus ``readout_l1`` times the readouts' L1 of feature weights.

    Logged metrics, per epoch, each over the whole epoch from running sums (``<stage>``:
    ``train``, ``val``, ``test``; ``<s>``: a session):

    * ``<stage>/loss`` (also per step in training).
    * ``<stage>/<s>/corr`` and ``<stage>/corr``: per-neuron Pearson correlation of predicted
      rates with spike counts (:class:`~mslightning.metrics.MaskedPearsonCorrCoef`), mean over
      a session's neurons, and over all neurons.
    * ``<stage>/<s>/bits_per_spike`` and ``<stage>/bits_per_spike``
      (:class:`~mslightning.metrics.BitsPerSpike`, against each neuron's mean rate).
    * With true rates in the batch (synthetic data): ``<stage>/oracle_corr`` (the true rates'
      correlation with the spikes, the ceiling) and ``<stage>/oracle_fraction`` = ``corr /
      oracle_corr``.

    What behaviour contributes: :meth:`analyze_pathways` scores the model with the frames or the
    behaviour replaced by their training mean (the game of the two inputs ``stimulus`` and
    ``behaviour``); :class:`~mslightning.callbacks.PathwayAnalysis` runs it every N epochs and
    logs ``pathways/corr_all``, ``pathways/corr_alone/stimulus`` (behaviour ablated),
    ``pathways/shapley/behaviour``, ``pathways/utilization/behaviour_given_stimulus`` (the share
    of the correlation that behaviour adds), ``pathways/bits_per_spike_alone/stimulus``, ...

    Args:
        sessions: Session name -> neuron count (linked from the data by the CLI).
        behaviour_dim: ``D`` (linked from the data).
        frame_size: ``(H, W)`` of the frames (linked from the data).
        in_channels: Channels of a frame.
        core: Builds the core from ``in_channels`` (``mslightning.nn.ResidualCore``).
        modulator: Builds the modulator from the core's channels and ``behaviour_dim``
            (``ConcatModulator`` or ``FiLMModulator``); ``None`` ignores behaviour.
        recurrent: Builds the ConvGRU from the modulator's output channels (``ConvGRU`` with its
            ``hidden_channels`` and cell options).
        readout: Builds one readout per session from the hidden state's ``(C, H, W)`` and the
            session's neuron count (``GaussianReadout`` or ``FactorisedReadout``).
        burn_in: Leading time bins of every window left out of loss and metrics.
        readout_l1: Weight of the readouts' L1 penalty on their feature weights.
        readout_bias_from_data: At the start of ``fit``, set the bias of every readout not yet
            initialised so each neuron starts at its mean training response (the datamodule's
            ``mean_responses``, e.g. :attr:`~mslightning.data.RecordingsDataModule.mean_responses`),
            as neuralpredictors does; skipped without a datamodule that has them (call
            :meth:`initialize_readout_biases` yourself), and never repeated (a later ``fit`` or a
            restored checkpoint keeps the learnt biases: the readout's ``bias_initialized``).
        optimizer: See :class:`~mslightning.modules.GroupedOptimizationModule`.
        param_groups: See :class:`~mslightning.modules.GroupedOptimizationModule`.
        no_weight_decay_on_norm_and_bias: See
            :class:`~mslightning.modules.GroupedOptimizationModule`.

    Raises:
        ValueError: For no sessions, a bad session name or neuron count, a bad ``burn_in`` or
            ``readout_l1``, or a part that builds the wrong kind of module.
    """

    parts_are_peers = False
    """``core``, ``modulator`` and ``readout`` are in series: StreamMonitor does not compare them."""

    pathway_metrics = ("corr", "bits_per_spike")
    """The figures :meth:`analyze_pathways` reports, each charted apart by PathwayAnalysis."""

    @property
    def dashboard_runs(self) -> list[str]:
        """The parts and the sessions get their own TensorBoard run: per-session curves in their own colour."""
        return [*self.stream_patterns, *self.sessions]

    def custom_scalar_layout(self, tag_of: TagOf | None = None) -> Layout:
        """The response charts of the custom-scalars dashboard: correlation and bits per spike vs the oracle.

        Args:
            tag_of: The TensorBoard tag of a logged key (a session's run drops the session).

        Returns:
            ``{category: {chart: ["Multiline", [tag regex, ...]]}}``; per-session values share the
            overall value's chart.
        """
        stages, sessions = ("train", "val"), list(self.sessions)
        per_session = {
            name: [f"{stage}/{name}" for stage in stages] + [f"val/{s}/{name}" for s in sessions]
            for name in ("corr", "bits_per_spike")
        }
        return outputs_layout(
            "responses",
            {
                "correlation vs oracle": [*per_session["corr"], *(f"{stage}/oracle_corr" for stage in stages)],
                "fraction of the oracle correlation": [f"{stage}/oracle_fraction" for stage in stages],
                "bits per spike": per_session["bits_per_spike"],
                "loss: train vs val": ["train/loss_epoch", "val/loss"],
            },
            tag_of,
        )

    def __init__(
        self,
        sessions: Mapping[str, int] | None = None,
        behaviour_dim: int = 4,
        frame_size: tuple[int, int] = (32, 32),
        in_channels: int = 1,
        core: Callable[[int], ResidualCore] = DEFAULT_CORE,
        modulator: Callable[[int, int], Modulator] | None = ConcatModulator,
        recurrent: Callable[[int], ConvGRU] = DEFAULT_RECURRENT,
        readout: Callable[[tuple[int, int, int], int], Readout] = GaussianReadout,
        burn_in: int = 5,
        readout_l1: float = 0.0,
        readout_bias_from_data: bool = True,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        param_groups: ParamGroups | None = None,
        no_weight_decay_on_norm_and_bias: bool = False,
    ) -> None:
        super().__init__(optimizer, param_groups, no_weight_decay_on_norm_and_bias)
        sessions = dict(sessions or {"session": 16})
        if not sessions:
            raise ValueError("sessions must map at least one session name to its neuron count, got {}.")
        for name, count in sessions.items():
            _check_session(name, count)
        if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
            raise ValueError(f"burn_in must be an int >= 0, got {burn_in!r}.")
        if not readout_l1 >= 0:
            raise ValueError(f"readout_l1 must be >= 0, got {readout_l1!r}.")
        self.save_init_arguments(
            {
                "sessions": sessions,
                "behaviour_dim": behaviour_dim,
                "frame_size": tuple(frame_size),
                "in_channels": in_channels,
                "core": core,
                "modulator": modulator,
                "recurrent": recurrent,
                "readout": readout,
                "burn_in": burn_in,
                "readout_l1": readout_l1,
                "readout_bias_from_data": readout_bias_from_data,
                "optimizer": optimizer,
                "param_groups": param_groups,
                "no_weight_decay_on_norm_and_bias": no_weight_decay_on_norm_and_bias,
            }
        )
        self.sessions = sessions
        self.behaviour_dim = behaviour_dim
        self.in_channels = in_channels
        self.burn_in = burn_in
        self.readout_l1 = readout_l1
        self.readout_bias_from_data = readout_bias_from_data
        self.core = core(in_channels)
        core_channels, height, width = self.core.output_shape(*frame_size)
        self.modulator = None if modulator is None else _built(modulator(core_channels, behaviour_dim), Modulator)
        self.recurrent = _built(recurrent(self.modulator.out_channels if self.modulator else core_channels), ConvGRU)
        hidden_shape = (self.recurrent.cell.hidden_channels, height, width)
        self._readout_factory = readout
        self._hidden_shape = hidden_shape
        self.readouts = nn.ModuleDict({name: self._build_readout(n) for name, n in sessions.items()})
        self.loss = MaskedPoissonLoss(burn_in)
        modulator_patterns = ["recurrent.*", *(["modulator.*"] if self.modulator is not None else [])]
        self.stream_patterns = {"core": ["core.*"], "modulator": modulator_patterns, "readout": ["readouts.*"]}
        self.best_metrics = {"val/corr": "max", "val/bits_per_spike": "max", "val/oracle_fraction": "max"}
        """Keys whose best value is an HParams metric (:class:`~mslightning.loggers.StreamTensorBoardLogger`)."""
        self.metrics = nn.ModuleDict({f"{stage}_metrics": self._session_metrics() for stage in STAGES})
        self._checked_stages: set[str] = set()

    def _build_readout(self, neurons: int) -> Readout:
        return _built(self._readout_factory(self._hidden_shape, neurons), Readout)

    def _session_metrics(
        self, kinds: tuple[str, ...] = ("model", "oracle"), sessions: Mapping[str, int] | None = None
    ) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                f"{session}__{kind}": nn.ModuleDict({"corr": MaskedPearsonCorrCoef(n), "bits": BitsPerSpike(n)})
                for session, n in (self.sessions if sessions is None else sessions).items()
                for kind in kinds
            }
        )

    def add_session(self, name: str, neurons: int, mean_responses: Tensor | None = None) -> Readout:
        """Give a trained model a readout for a new recording session; everything else is shared.

        The new readout is built like the others (the ``readout`` argument), on the model's device
        and dtype, and joins the ``readout`` part (``readouts.<name>.*``); the session's metrics are
        added, and :attr:`hparams` records the session, so a checkpoint saved afterwards reloads
        with it. To fit only the new readout, freeze the shared parts first
        (``model.core.requires_grad_(False)``, same for ``modulator`` and ``recurrent``; a
        parameter group without trainable parameters is left out).

        Args:
            name: The new session's name.
            neurons: Its neuron count ``N``.
            mean_responses: ``(N,)`` mean training responses to start the bias at (else, with
                ``readout_bias_from_data``, it is started from the datamodule's
                ``mean_responses`` at the next ``fit``).

        Returns:
            The new readout.

        Raises:
            ValueError: For a name the model already has, a bad name or a bad neuron count.
        """
        if name in self.sessions:
            raise ValueError(
                f"add_session: the model already has a session {name!r} (sessions: {list(self.sessions)})."
            )
        _check_session(name, neurons)
        reference = next(iter(self.readouts.values())).features
        readout = self._build_readout(neurons).to(device=reference.device, dtype=reference.dtype)
        if mean_responses is not None:
            readout.initialize_bias(mean_responses)
        self.readouts[name] = readout
        self.sessions[name] = neurons
        self.hparams["sessions"] = dict(self.sessions)
        self._checked_stages.clear()  # the new session's first batches are checked too
        for stage in STAGES:
            self.metrics[f"{stage}_metrics"].update(
                self._session_metrics(sessions={name: neurons}).to(reference.device)
            )
        return readout

    @torch.no_grad()
    def initialize_readout_biases(self, mean_responses: Mapping[str, Tensor]) -> None:
        """Start each session's neurons at their mean response (see ``Readout.initialize_bias``).

        Args:
            mean_responses: Session -> ``(N,)`` mean spike count per bin over the training set;
                every session of the model is needed.

        Raises:
            ValueError: For a missing session or a wrong neuron count.
        """
        missing = [name for name in self.sessions if name not in mean_responses]
        if missing:
            raise ValueError(f"initialize_readout_biases: no mean responses for the sessions {missing}.")
        for name, readout in self.readouts.items():
            if readout.bias is not None:  # a readout built with bias=False has nothing to start
                readout.initialize_bias(torch.as_tensor(mean_responses[name]))

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._check_strategy()
        # Runs before a checkpoint is restored, which then overwrites these biases with the learnt ones.
        if stage != "fit" or not self.readout_bias_from_data:
            return
        means = getattr(self.trainer.datamodule, "mean_responses", None)
        for name, readout in self.readouts.items():
            fresh = readout.bias is not None and not bool(readout.bias_initialized)
            if means is not None and name in means and fresh:
                readout.initialize_bias(torch.as_tensor(means[name]))

    @override
    def on_train_start(self) -> None:
        # After any checkpoint restore: from now on every readout is a trained one, whose bias a
        # later fit must not start over (even if it was never started from data).
        for readout in self.readouts.values():
            readout.bias_initialized.fill_(True)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before the ablation moved to analyze_pathways kept the behaviour's
        # running sums; they are no longer part of the model.
        state = checkpoint.get("state_dict", {})
        for key in ("behaviour_sum", "behaviour_count"):
            state.pop(key, None)
        super().on_load_checkpoint(checkpoint)  # the settings-changed warning of every family

    def _check_strategy(self) -> None:
        strategy = self.trainer.strategy
        kwargs = getattr(strategy, "_ddp_kwargs", None)  # DDPStrategy keeps DistributedDataParallel's options here
        if (
            isinstance(strategy, DDPStrategy)
            and not isinstance(strategy, DeepSpeedStrategy)  # a DDPStrategy subclass without DDP's option
            and len(self.sessions) > 1
            and not (kwargs or {}).get("find_unused_parameters")
        ):
            raise ValueError(
                f"{type(self).__name__} trains one session's readout per batch, so under DDP the other sessions' "
                "readouts get no gradient in that step; DistributedDataParallel must be told so: use "
                "strategy: ddp_find_unused_parameters_true (or DDPStrategy(find_unused_parameters=True))."
            )

    @override
    def forward(self, stimulus: Tensor, behaviour: Tensor, session: str) -> Tensor:
        """Predicted rates of one session's neurons.

        Args:
            stimulus: Frames ``(B, T, C, H, W)``.
            behaviour: ``(B, T, D)``.
            session: The session whose readout is used.

        Returns:
            Rates ``(B, T, N_session)``, > 0.
        """
        batch, steps = stimulus.shape[:2]
        features = self.core(stimulus.flatten(0, 1))
        features = features.view(batch, steps, *features.shape[1:])
        if self.modulator is not None:
            features = self.modulator(features, behaviour)
        hidden, _ = self.recurrent(features)
        rates = self.readouts[session](hidden.flatten(0, 1))
        return rates.view(batch, steps, -1)

    def _check_batch(self, batch: Any, stage: str) -> None:
        if stage in self._checked_stages:
            return
        owner = type(self).__name__
        if not isinstance(batch, Mapping) or any(key not in batch for key in BATCH_KEYS):
            keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(f"{owner} expects batches with keys {list(BATCH_KEYS)} (see RecordingsBatch), got {keys}.")
        session = batch["session"]
        if session not in self.sessions:
            raise ValueError(
                f"{owner}: the batch is from session {session!r}, but the model has readouts for {list(self.sessions)}."
            )
        stimulus, behaviour, responses = batch["stimulus"], batch["behaviour"], batch["responses"]
        size, steps = responses.shape[:2] if responses.ndim == 3 else (None, None)
        expected = {
            "stimulus": (size, steps, self.in_channels),
            "behaviour": (size, steps, self.behaviour_dim),
            "responses": (size, steps, self.sessions[session]),
        }
        for name, value in (("stimulus", stimulus), ("behaviour", behaviour), ("responses", responses)):
            ndim = 5 if name == "stimulus" else 3
            if value.ndim != ndim or tuple(value.shape[:3]) != expected[name]:
                raise ValueError(
                    f"{owner}: batch[{name!r}] of session {session!r} has shape {tuple(value.shape)}; expected "
                    f"{ndim}-D starting {expected[name]} (B, T, ...; {self.sessions[session]} neurons, "
                    f"behaviour_dim {self.behaviour_dim}, {self.in_channels} stimulus channel(s))."
                )
        self._checked_stages.add(stage)

    def _shared_step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        self._check_batch(batch, stage)
        session, responses = batch["session"], batch["responses"]
        mask = batch.get("mask")
        rates = self(batch["stimulus"], batch["behaviour"], session)
        loss = self.loss(rates.float(), responses.float(), mask)
        total = loss + self.readout_l1 * self.readouts[session].regularizer() if self.readout_l1 else loss
        if stage == "train":
            self.loss_terms = {"poisson": loss.detach()}
        self.log(
            f"{stage}/loss", total, on_step=stage == "train", on_epoch=True, prog_bar=stage != "train", sync_dist=True
        )
        with torch.no_grad():
            keep = response_mask(responses, mask, self.burn_in)
            metrics = self.metrics[f"{stage}_metrics"]
            observed = {"model": rates}
            if "rates" in batch:
                observed["oracle"] = batch["rates"]
            for kind, predicted in observed.items():
                pair = metrics[f"{session}__{kind}"]
                pair["corr"].update(predicted.float(), responses.float(), keep)
                pair["bits"].update(predicted.float(), responses.float(), keep)
        return total

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = self.metrics[f"{stage}_metrics"]
        summary = {kind: _epoch_scores(metrics, kind) for kind in ("model", "oracle")}
        model_scores = summary["model"]
        if model_scores is None:
            return
        for session, (corr, bits) in model_scores.sessions.items():
            # the values are already the same on every rank (the metrics synchronised); sync_dist keeps Lightning quiet
            self.log(f"{stage}/{session}/corr", corr, sync_dist=True)
            self.log(f"{stage}/{session}/bits_per_spike", bits, sync_dist=True)
        logged = {"corr": model_scores.corr, "bits_per_spike": model_scores.bits_per_spike}
        oracle = summary["oracle"]
        if oracle is not None:
            logged["oracle_corr"] = oracle.corr
            logged["oracle_fraction"] = model_scores.corr / oracle.corr
        for name, value in logged.items():
            if torch.isfinite(value):
                prog_bar = stage == "val" and name in ("corr", "oracle_fraction")
                self.log(f"{stage}/{name}", value.float(), prog_bar=prog_bar, sync_dist=True)

    @torch.no_grad()
    def reference_inputs(self, dataloader: Iterable[Mapping[str, Any]]) -> dict[str, Tensor]:
        """The mean frame and the mean behaviour over a set of windows: the stand-ins of ablation.

        Args:
            dataloader: Batches of :data:`~mslightning.data.RecordingsBatch` (the training set).

        Under ``torch.distributed`` the sums are added over the ranks, so every rank gets the
        mean over all their shards.

        Returns:
            ``{"stimulus": (C, H, W), "behaviour": (D,)}``, float32 on the model's device.

        Raises:
            ValueError: If ``dataloader`` yields no batch (on every rank).
        """
        sums: dict[str, Tensor] = {}
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch in dataloader:
            for key in INPUTS:
                value = batch[key].to(self.device, torch.float64).flatten(0, 1).sum(0)
                sums[key] = sums[key] + value if key in sums else value
            count += batch["behaviour"].shape[0] * batch["behaviour"].shape[1]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # a rank with an empty shard still joins, with zeros of the right shapes from the model
            channels, behaviour_dim = self.in_channels, self.behaviour_dim
            frame = tuple(self.hparams["frame_size"])
            shapes = {"stimulus": (channels, *frame), "behaviour": (behaviour_dim,)}
            for key in INPUTS:
                sums.setdefault(key, torch.zeros(shapes[key], dtype=torch.float64, device=self.device))
                torch.distributed.all_reduce(sums[key])
            torch.distributed.all_reduce(count)
        if not count:
            raise ValueError(f"{type(self).__name__}.reference_inputs: the reference dataloader yields no batch.")
        return {key: (total / count).float() for key, total in sums.items()}

    @torch.no_grad()
    def analyze_pathways(
        self, dataloader: Iterable[Mapping[str, Any]], reference_dataloader: Iterable[Mapping[str, Any]]
    ) -> PathwayReport:
        """What the frames and the behaviour each contribute, by replacing them with their mean.

        The two inputs ``stimulus`` and ``behaviour`` are the players: every subset of them is
        kept while the others are replaced by their mean over ``reference_dataloader``
        (:meth:`reference_inputs`), and the response correlation over the whole of
        ``dataloader`` is the score (as ``<stage>/corr``). ``corr_alone/stimulus`` is the model
        without behaviour; ``utilization["behaviour|stimulus"]`` the share of the correlation
        that behaviour adds. A neuron whose correlation is defined with both inputs kept counts in
        every subset, as 0 where a subset's prediction is constant (no information). Runs in eval
        mode, in the trainer's precision when one is attached, and restores every submodule's mode.

        Args:
            dataloader: Evaluation batches (:data:`~mslightning.data.RecordingsBatch`).
            reference_dataloader: Batches whose means stand in for an ablated input.

        Returns:
            The report (``metric="corr"``), with the bits per spike of every subset as extras:
            ``bits_per_spike_all``, ``bits_per_spike_none`` and ``bits_per_spike_alone/<input>``.
        """
        modes = {module: module.training for module in self.modules()}
        precision = self._trainer.precision_plugin if self._trainer is not None else None
        self.eval()
        try:
            reference = self.reference_inputs(reference_dataloader)
            coalitions = [frozenset(kept) for size in range(3) for kept in itertools.combinations(INPUTS, size)]
            names = {kept: "+".join(sorted(kept)) or "none" for kept in coalitions}
            metrics = self._session_metrics(tuple(names.values())).to(self.device)
            for batch in dataloader:
                self._check_batch(batch, "analysis")
                session = batch["session"]
                responses = batch["responses"].to(self.device).float()
                mask = batch.get("mask")
                keep = response_mask(responses, None if mask is None else mask.to(self.device), self.burn_in)
                inputs = {key: batch[key].to(self.device) for key in INPUTS}
                stand_ins = {key: reference[key].to(value).expand_as(value) for key, value in inputs.items()}
                if precision is not None:  # as in validation: bf16-true/16-true cast the inputs, *-mixed autocast
                    inputs, stand_ins = precision.convert_input(inputs), precision.convert_input(stand_ins)
                for kept in coalitions:
                    given = {key: inputs[key] if key in kept else stand_ins[key] for key in INPUTS}
                    with precision.forward_context() if precision is not None else nullcontext():
                        rates = self(given["stimulus"], given["behaviour"], session).float()
                    pair = metrics[f"{session}__{names[kept]}"]
                    pair["corr"].update(rates, responses, keep)
                    pair["bits"].update(rates, responses, keep)
            scores = {kept: _epoch_scores(metrics, names[kept]) for kept in coalitions}
        finally:
            for module, mode in modes.items():
                module.training = mode
        if any(score is None for score in scores.values()):
            raise ValueError(
                f"{type(self).__name__}.analyze_pathways: the dataloader yields no scored time bin with a spike "
                "(after the burn-in and the mask)."
            )
        extra = {"bits_per_spike_all": float(scores[frozenset(INPUTS)].bits_per_spike)}
        extra["bits_per_spike_none"] = float(scores[frozenset()].bits_per_spike)
        extra.update({f"bits_per_spike_alone/{key}": float(scores[frozenset((key,))].bits_per_spike) for key in INPUTS})
        defined = torch.isfinite(scores[frozenset(INPUTS)].per_neuron)
        correlations = {kept: float(score.per_neuron[defined].nan_to_num(0.0).mean()) for kept, score in scores.items()}
        return PathwayReport.from_scores(INPUTS, correlations, metric="corr", extra=extra)

    @override
    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor | str]:
        """Predicted rates of a batch of windows of one session, one row per scored bin and neuron.

        Args:
            batch: A :data:`~mslightning.data.RecordingsBatch` (``"start"``: each window's first
                time bin, optional).
            batch_idx: Index of the batch.

        Returns:
            Columns for :class:`~mslightning.callbacks.PredictionTableWriter`: ``session`` (the
            batch's, one string), ``time_bin`` (the bin in the session's recording when the
            batch has ``start``, else within the window), ``neuron``, ``rate`` (predicted) and
            ``response`` (observed), each ``(B * (T - burn_in) * N,)``; the burn-in bins are
            left out.
        """
        self._check_batch(batch, "predict")
        rates = self(batch["stimulus"], batch["behaviour"], batch["session"])[:, self.burn_in :]
        size, steps, neurons = rates.shape
        offset = torch.arange(self.burn_in, self.burn_in + steps, device=rates.device).view(1, steps, 1)
        start = batch.get("start")
        time_bin = offset + (start.view(size, 1, 1) if start is not None else 0)
        return {
            "session": batch["session"],
            "time_bin": time_bin.expand(size, steps, neurons).reshape(-1),
            "neuron": torch.arange(neurons, device=rates.device).expand(size, steps, neurons).reshape(-1),
            "rate": rates.reshape(-1).float(),
            "response": batch["responses"][:, self.burn_in :].reshape(-1).float(),
        }


@dataclass
class _Scores:
    sessions: dict[str, tuple[Tensor, Tensor]]
    """Session -> (mean correlation over its neurons, bits per spike)."""
    corr: Tensor
    """Mean correlation over every neuron of every session."""
    bits_per_spike: Tensor
    """Bits per spike over all sessions, each weighted by its spike count."""
    per_neuron: Tensor
    """Every neuron's correlation, sessions concatenated (NaN where undefined)."""


def _epoch_scores(metrics: nn.ModuleDict, kind: str) -> _Scores | None:
    """Compute and reset the ``<session>__<kind>`` metrics; None if no session saw a spike.

    Computed on every rank (it synchronises); a session without scored spikes anywhere is left out.
    """
    sessions: dict[str, tuple[Tensor, Tensor]] = {}
    correlations, weighted = [], []
    with warnings.catch_warnings():  # a session without batches this epoch: NaN, left out below
        warnings.filterwarnings("ignore", message=".*before the ``update``.*")
        warnings.filterwarnings("ignore", message=".*invalid value encountered.*")
        for key, pair in metrics.items():
            session, pair_kind = key.split("__")
            if pair_kind != kind:
                continue
            corr, bits, spikes = pair["corr"].compute(), pair["bits"].compute(), pair["bits"].total_spikes
            pair["corr"].reset()
            pair["bits"].reset()
            if torch.isfinite(bits):
                sessions[session] = (corr.nanmean(), bits)
                correlations.append(corr)
                weighted.append((bits, spikes))
    if not sessions:
        return None
    bits, spikes = (torch.stack(values) for values in zip(*weighted, strict=True))
    per_neuron = torch.cat(correlations)
    return _Scores(sessions, per_neuron.nanmean(), (bits * spikes).sum() / spikes.sum(), per_neuron)


def _check_session(name: str, neurons: int) -> None:
    check_stream_name(name, "sessions")
    if isinstance(neurons, bool) or not isinstance(neurons, int) or neurons < 1:
        raise ValueError(f"sessions: session {name!r} needs a positive neuron count, got {neurons!r}.")


def _built(obj: Any, kind: type) -> Any:
    if not isinstance(obj, kind):
        raise ValueError(
            f"expected an mslightning.nn {kind.__name__}, got {type(obj).__module__}.{type(obj).__name__}."
        )
    return obj
