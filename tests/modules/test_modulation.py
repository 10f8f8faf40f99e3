"""ModulatedResponseModel: per-session shapes, parts, whole-epoch metrics, pathways, bias init, reload, predict."""

from __future__ import annotations

import csv
from functools import partial

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Dataset

from mslightning.callbacks import PathwayAnalysis, PredictionTableWriter
from mslightning.metrics import BitsPerSpike, MaskedPearsonCorrCoef
from mslightning.modules import ModulatedResponseModel
from mslightning.nn import ConvGRU, FiLMModulator, GaussianReadout, ResidualCore

SESSIONS = {"s1": 5, "s2": 3}
BURN_IN = 2


def _batch(session: str, seed: int, size: int = 2, steps: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    neurons = SESSIONS[session]
    rates = torch.rand(size, steps, neurons, generator=g) + 0.2
    return {
        "session": session,
        "stimulus": torch.randn(size, steps, 1, 8, 8, generator=g),
        "behaviour": torch.randn(size, steps, 4, generator=g),
        "responses": torch.poisson(rates, generator=g),
        "mask": torch.rand(size, steps, neurons, generator=g) > 0.1,
        "rates": rates,
        "start": torch.arange(size) * 10,
    }


class _Batches(Dataset):
    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def _loader(*batches: dict) -> DataLoader:
    return DataLoader(_Batches(list(batches)), batch_size=None)


def _model(**kwargs) -> ModulatedResponseModel:
    torch.manual_seed(0)
    defaults = {
        "sessions": SESSIONS,
        "behaviour_dim": 4,
        "frame_size": (8, 8),
        "core": partial(ResidualCore, channels=(4,)),
        "recurrent": partial(ConvGRU, hidden_channels=6),
        "readout": GaussianReadout,
        "burn_in": BURN_IN,
    }
    return ModulatedResponseModel(**{**defaults, **kwargs})


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = {
        "default_root_dir": tmp_path,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
    }
    return pl.Trainer(**{**defaults, **kwargs})


def test_rates_per_session_are_positive_with_that_session_s_neuron_count() -> None:
    model = _model().eval()
    for session, neurons in SESSIONS.items():
        batch = _batch(session, 0)
        rates = model(batch["stimulus"], batch["behaviour"], session)
        assert rates.shape == (2, 6, neurons) and bool((rates > 0).all())


def test_parts_and_default_groups() -> None:
    model = _model()
    assert model.stream_patterns == {
        "core": ["core.*"],
        "modulator": ["recurrent.*", "modulator.*"],
        "readout": ["readouts.*"],
    }
    assert [g.name for g in model.resolved_param_groups()] == ["core", "modulator", "readout"]
    blind = _model(modulator=None)
    assert blind.stream_patterns["modulator"] == ["recurrent.*"]


def _expected_scores(batches: list[dict], predict) -> tuple[float, float]:
    """Mean correlation over all neurons and spike-weighted bits per spike, recomputed session by session."""
    corrs, bits, spikes = [], [], []
    for session, neurons in SESSIONS.items():
        corr, bps = MaskedPearsonCorrCoef(neurons), BitsPerSpike(neurons)
        if not any(b["session"] == session for b in batches):
            continue
        for batch in (b for b in batches if b["session"] == session):
            keep = batch["mask"].clone()
            keep[:, :BURN_IN] = False
            predicted = predict(batch)
            corr.update(predicted, batch["responses"], keep)
            bps.update(predicted, batch["responses"], keep)
        corrs.append(corr.compute())
        bits.append(bps.compute())
        spikes.append(bps.spikes.sum())
    weighted = (torch.stack(bits) * torch.stack(spikes).float()).sum() / torch.stack(spikes).sum()
    return torch.cat(corrs).nanmean().item(), weighted.item()


def test_validation_metrics_are_those_of_the_whole_epoch(tmp_path) -> None:
    model = _model(modulator=partial(FiLMModulator, hidden=8))
    train = [_batch("s1", 10), _batch("s2", 11)]
    val = [_batch("s1", 1), _batch("s1", 2), _batch("s2", 3)]
    _trainer(tmp_path, max_epochs=1).fit(model, _loader(*train), _loader(*val))
    (logged,) = _trainer(tmp_path).validate(model, _loader(*val), verbose=False)
    model.eval()
    with torch.no_grad():
        corr, bits = _expected_scores(val, lambda b: model(b["stimulus"], b["behaviour"], b["session"]))
    oracle_corr, _ = _expected_scores(val, lambda b: b["rates"])
    assert logged["val/corr"] == pytest.approx(corr, abs=1e-5)
    assert logged["val/bits_per_spike"] == pytest.approx(bits, abs=1e-5)
    assert logged["val/oracle_corr"] == pytest.approx(oracle_corr, abs=1e-5)
    assert logged["val/oracle_fraction"] == pytest.approx(corr / oracle_corr, abs=1e-5)
    assert logged["val/s2/corr"] == pytest.approx(
        _expected_scores([val[2]], lambda b: model(b["stimulus"], b["behaviour"], b["session"]))[0], abs=1e-5
    )


def test_pathway_analysis_ablates_each_input_to_its_training_mean(tmp_path) -> None:
    model = _model(modulator=partial(FiLMModulator, hidden=8))
    train = [_batch("s1", 10), _batch("s2", 11)]
    val = [_batch("s1", 1), _batch("s1", 2), _batch("s2", 3)]
    callback = PathwayAnalysis(every_n_epochs=1, verbose=False)
    _trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(model, _loader(*train), _loader(*val))
    model.train()
    report = model.analyze_pathways(_loader(*val), _loader(*train))
    assert model.training  # mode restored

    means = {key: torch.cat([b[key].flatten(0, 1) for b in train]).mean(0) for key in ("stimulus", "behaviour")}
    reference = model.reference_inputs(_loader(*train))
    torch.testing.assert_close(reference, means)
    model.eval()
    with torch.no_grad():

        def scores(stimulus: bool, behaviour: bool) -> tuple[float, float]:
            return _expected_scores(
                val,
                lambda b: model(
                    b["stimulus"] if stimulus else means["stimulus"].expand_as(b["stimulus"]),
                    b["behaviour"] if behaviour else means["behaviour"].expand_as(b["behaviour"]),
                    b["session"],
                ),
            )

        both, vision, behaviour, none = (
            scores(True, True),
            scores(True, False),
            scores(False, True),
            scores(False, False),
        )
    assert report.metric == "corr"
    assert report.score_all == pytest.approx(both[0], abs=1e-5)
    assert report.score_alone == {
        "stimulus": pytest.approx(vision[0], abs=1e-5),
        "behaviour": pytest.approx(behaviour[0], abs=1e-5),
    }
    assert report.score_none == pytest.approx(none[0], abs=1e-5)
    assert report.extra["bits_per_spike_alone/stimulus"] == pytest.approx(vision[1], abs=1e-5)
    assert report.extra["bits_per_spike_all"] == pytest.approx(both[1], abs=1e-5)
    assert sum(report.shapley.values()) == pytest.approx(report.score_all - report.score_none, abs=1e-7)
    share = (both[0] - vision[0]) / both[0] if both[0] > 0 else 0.0  # not defined for a score <= 0
    assert report.utilization["behaviour|stimulus"] == pytest.approx(share, abs=1e-5)
    # the callback logged the same analysis at the end of the (only) epoch, as the classifier's
    assert [epoch for epoch, _ in callback.history["pathways/corr_all"]] == [0]
    assert callback.history["pathways/corr_all"][0][1] == pytest.approx(report.score_all, abs=1e-5)
    assert "pathways/bits_per_spike_alone/behaviour" in callback.history
    assert "pathways/shapley/behaviour" in callback.history


def test_a_model_blind_to_behaviour_gets_no_credit_for_it() -> None:
    model = _model(modulator=None)
    train = [_batch("s1", 10), _batch("s2", 11)]
    report = model.analyze_pathways(_loader(_batch("s1", 1), _batch("s2", 3)), _loader(*train))
    assert report.shapley["behaviour"] == pytest.approx(0.0, abs=1e-7)
    assert report.score_alone["stimulus"] == pytest.approx(report.score_all, abs=1e-7)


def test_pathway_analysis_refuses_a_dataloader_without_scored_spikes() -> None:
    model = _model()
    silent = _batch("s1", 1)
    silent["responses"] = torch.zeros_like(silent["responses"])
    with pytest.raises(ValueError, match="no scored time bin with a spike"):
        model.analyze_pathways(_loader(silent), _loader(_batch("s1", 10)))
    with pytest.raises(ValueError, match="reference dataloader yields no batch"):
        model.analyze_pathways(_loader(_batch("s1", 1)), _loader())


def test_predict_writes_one_row_per_scored_bin_and_neuron(tmp_path) -> None:
    model = _model()
    model.weights_are_trained = True
    writer = PredictionTableWriter(output_dir=tmp_path)
    batch = _batch("s2", 5)
    _trainer(tmp_path, callbacks=[writer]).predict(model, _loader(batch), return_predictions=False)
    rows = list(csv.DictReader(writer.path.open()))
    assert list(rows[0]) == ["session", "time_bin", "neuron", "rate", "response"]
    assert len(rows) == 2 * (6 - BURN_IN) * 3
    assert {r["session"] for r in rows} == {"s2"}
    assert rows[0]["time_bin"] == str(BURN_IN) and rows[-1]["time_bin"] == str(10 + 5)  # window 2 starts at 10
    model.eval()
    with torch.no_grad():
        expected = model(batch["stimulus"], batch["behaviour"], "s2")[:, BURN_IN:].reshape(-1)
    assert [float(r["rate"]) for r in rows] == pytest.approx(expected.tolist(), rel=1e-5)


class _MeanResponses(pl.LightningDataModule):
    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.batches = batches
        self.mean_responses = {"s1": torch.tensor([0.5, 1.0, 2.0, 0.1, 0.0]), "s2": torch.tensor([3.0, 0.2, 0.7])}

    def train_dataloader(self) -> DataLoader:
        return _loader(*self.batches)


@pytest.mark.parametrize("output", ["softplus", "elu1", "exp"])
def test_readout_biases_start_at_the_mean_responses_once(tmp_path, output) -> None:
    frozen = partial(torch.optim.SGD, lr=0.0)  # the step changes nothing: what we see is the initialisation
    model = _model(readout=partial(GaussianReadout, output=output), optimizer=frozen)
    data = _MeanResponses([_batch("s1", 0), _batch("s2", 1)])
    _trainer(tmp_path, max_epochs=1).fit(model, data)
    assert all(bool(readout.bias_initialized) for readout in model.readouts.values())
    for session, means in data.mean_responses.items():
        readout = model.readouts[session]
        # a neuron with no drive from the features fires at its mean (a silent one just above the floor)
        expected = means.clamp_min(2 * readout.min_rate)
        torch.testing.assert_close(readout.rate(readout.bias), expected, rtol=1e-4, atol=1e-6)
    # a second fit continues from the learnt biases
    with torch.no_grad():
        model.readouts["s1"].bias.add_(1.0)
    before = model.readouts["s1"].bias.clone()
    _trainer(tmp_path, max_epochs=2).fit(model, data)
    torch.testing.assert_close(model.readouts["s1"].bias, before)


def test_readout_biases_left_alone_when_asked_or_without_data_means(tmp_path) -> None:
    frozen = partial(torch.optim.SGD, lr=0.0)
    model = _model(readout_bias_from_data=False, optimizer=frozen)
    _trainer(tmp_path, max_epochs=1).fit(model, _MeanResponses([_batch("s1", 0)]))
    assert not model.readouts["s1"].bias.any()
    model = _model(optimizer=frozen)
    _trainer(tmp_path, max_epochs=1).fit(model, _loader(_batch("s1", 0)))  # plain loaders: no means to use
    assert not model.readouts["s1"].bias.any()
    with pytest.raises(ValueError, match=r"no mean responses for the sessions \['s2'\]"):
        model.initialize_readout_biases({"s1": torch.ones(5)})


def test_readouts_without_bias_train_and_trained_biases_are_never_restarted(tmp_path) -> None:
    model = _model(readout=partial(GaussianReadout, bias=False))
    _trainer(tmp_path, max_epochs=1).fit(model, _MeanResponses([_batch("s1", 0)]))  # nothing to start: no error
    # trained without starting from data (plain loaders): still a trained bias for a later fit
    model = _model(optimizer=partial(torch.optim.SGD, lr=0.0))  # the "learnt" biases stay at their 0
    _trainer(tmp_path, max_epochs=1).fit(model, _loader(_batch("s1", 0)))
    assert all(bool(readout.bias_initialized) for readout in model.readouts.values())
    _trainer(tmp_path, max_epochs=2).fit(model, _MeanResponses([_batch("s1", 0)]))
    assert not model.readouts["s1"].bias.any()


def test_resuming_from_a_checkpoint_keeps_its_biases_and_old_checkpoints_load(tmp_path) -> None:
    frozen = partial(torch.optim.AdamW, lr=0.0)  # nothing moves: the biases seen are those restored
    model = _model(optimizer=frozen)
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    trainer.fit(model, _loader(_batch("s1", 0)))
    path = trainer.checkpoint_callback.best_model_path
    saved = torch.load(path, weights_only=True)["state_dict"]["readouts.s1.bias"]
    resumed = _model(optimizer=frozen)
    # setup() starts the biases at the data's means, then the restored checkpoint puts the learnt ones back
    _trainer(tmp_path, max_epochs=2).fit(resumed, _MeanResponses([_batch("s1", 0)]), ckpt_path=path)
    assert not torch.equal(saved, _MeanResponses([]).mean_responses["s1"])
    torch.testing.assert_close(resumed.readouts["s1"].bias, saved)
    # a checkpoint written before the flag existed (and with the old behaviour buffers) still loads
    old = torch.load(path, weights_only=True)
    for key in [k for k in old["state_dict"] if k.endswith("bias_initialized")]:
        del old["state_dict"][key]
    old["state_dict"]["behaviour_sum"] = torch.zeros(4, dtype=torch.float64)
    old["state_dict"]["behaviour_count"] = torch.zeros((), dtype=torch.float64)
    torch.save(old, tmp_path / "old.ckpt")
    reloaded = ModulatedResponseModel.load_from_checkpoint(tmp_path / "old.ckpt")
    assert bool(reloaded.readouts["s1"].bias_initialized)
    torch.testing.assert_close(reloaded.readouts["s1"].bias, saved)


def test_pathway_analysis_runs_in_the_trainer_precision(tmp_path) -> None:
    model = _model()
    trainer = _trainer(tmp_path, max_epochs=1, precision="bf16-true")
    trainer.fit(model, _loader(_batch("s1", 0)))
    assert next(model.parameters()).dtype == torch.bfloat16
    model.core.eval()  # a user's per-module mode survives the analysis
    report = model.analyze_pathways(_loader(_batch("s1", 1), _batch("s2", 3)), _loader(_batch("s1", 0)))
    assert np.isfinite(report.score_all) and not model.core.training and model.readouts.training


def test_a_new_session_needs_only_a_new_readout(tmp_path) -> None:
    model = _model()
    _trainer(tmp_path, max_epochs=1).fit(model, _loader(_batch("s1", 0), _batch("s2", 1)))
    shared = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("readouts.")}
    old_readouts = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("readouts.")}
    readout = model.add_session("s3", 7)
    assert model.sessions == {"s1": 5, "s2": 3, "s3": 7} and model.hparams["sessions"] == model.sessions
    assert type(readout) is type(model.readouts["s1"]) and readout.neurons == 7
    for part in (model.core, model.modulator, model.recurrent):
        part.requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    new = {
        "session": "s3",
        "stimulus": torch.randn(2, 6, 1, 8, 8, generator=g),
        "behaviour": torch.randn(2, 6, 4, generator=g),
        "responses": torch.poisson(torch.full((2, 6, 7), 0.8), generator=g),
    }
    before = readout.features.detach().clone()
    trainer = _trainer(tmp_path, max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, _loader(new), _loader(new))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in shared.items())  # the shared parts did not move
    assert all(torch.equal(after[k], v) for k, v in old_readouts.items())  # nor the other sessions' readouts
    assert not torch.equal(model.readouts["s3"].features, before)
    assert "val/s3/corr" in trainer.callback_metrics
    reloaded = ModulatedResponseModel.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert reloaded.sessions == model.sessions
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(new["stimulus"], new["behaviour"], "s3"), model(new["stimulus"], new["behaviour"], "s3")
        )
    with pytest.raises(ValueError, match="already has a session 's1'"):
        model.add_session("s1", 4)
    with pytest.raises(ValueError, match="positive neuron count"):
        model.add_session("s4", 0)


def test_checkpoint_reloads_without_arguments(tmp_path) -> None:
    model = _model()
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    trainer.fit(model, _loader(_batch("s1", 0)))
    reloaded = ModulatedResponseModel.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    batch = _batch("s1", 1)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(batch["stimulus"], batch["behaviour"], "s1"), model(batch["stimulus"], batch["behaviour"], "s1")
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(session="s3"), "from session 's3', but the model has readouts for ['s1', 's2']"),
        (lambda b: b.update(responses=b["responses"][..., :2]), "batch['responses'] of session 's1' has shape"),
        (lambda b: b.update(behaviour=b["behaviour"][..., :3]), "behaviour_dim 4"),
        (lambda b: b.pop("stimulus"), "expects batches with keys"),
    ],
)
def test_bad_batches_are_named(change, message: str) -> None:
    batch = _batch("s1", 0)
    change(batch)
    with pytest.raises(ValueError) as error:
        _model().training_step(batch, 0)
    assert message in str(error.value)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="session 's1' needs a positive neuron count"):
        _model(sessions={"s1": 0})
    with pytest.raises(ValueError, match="stream name 'a.b' is not valid"):
        _model(sessions={"a.b": 3})


def test_a_session_without_batches_in_the_epoch_is_left_out(tmp_path) -> None:
    (logged,) = _trainer(tmp_path).validate(_model(), _loader(_batch("s1", 0)), verbose=False)
    assert "val/s1/corr" in logged and "val/s2/corr" not in logged and "val/corr" in logged


def test_ddp_without_unused_parameter_detection_is_refused_before_training(tmp_path) -> None:
    model = _model()  # two sessions: each batch leaves the other session's readout without a gradient
    model.trainer = _trainer(tmp_path, strategy=DDPStrategy(), devices=1)
    with pytest.raises(ValueError, match="strategy: ddp_find_unused_parameters_true"):
        model.setup("fit")
    model.trainer = _trainer(tmp_path, strategy=DDPStrategy(find_unused_parameters=True), devices=1)
    model.setup("fit")
    single = _model(sessions={"s1": 5})
    single.trainer = _trainer(tmp_path, strategy=DDPStrategy(), devices=1)
    single.setup("fit")
