"""ModulatedResponseModel: shapes per session, parts, epoch metrics vs the concatenation, ablation, reload, predict."""

from __future__ import annotations

import csv
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mslightning.callbacks import PredictionTableWriter
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


def test_validation_metrics_are_those_of_the_whole_epoch_and_ablation_uses_the_training_mean(tmp_path) -> None:
    model = _model(modulator=partial(FiLMModulator, hidden=8))
    train = [_batch("s1", 10), _batch("s2", 11)]
    val = [_batch("s1", 1), _batch("s1", 2), _batch("s2", 3)]
    _trainer(tmp_path, max_epochs=1).fit(model, _loader(*train), _loader(*val))
    (logged,) = _trainer(tmp_path).validate(model, _loader(*val), verbose=False)

    behaviour = torch.cat([b["behaviour"].flatten(0, 1) for b in train])
    torch.testing.assert_close(model.behaviour_mean, behaviour.mean(0))
    model.eval()
    expected = {}
    with torch.no_grad():
        for kind in ("model", "ablated", "oracle"):
            corrs, bits, spikes = [], [], []
            for session, neurons in SESSIONS.items():
                corr, bps = MaskedPearsonCorrCoef(neurons), BitsPerSpike(neurons)
                for batch in (b for b in val if b["session"] == session):
                    keep = batch["mask"].clone()
                    keep[:, :BURN_IN] = False
                    stand_in = model.behaviour_mean.expand_as(batch["behaviour"])
                    predicted = {
                        "model": lambda b=batch: model(b["stimulus"], b["behaviour"], b["session"]),
                        "ablated": lambda b=batch, m=stand_in: model(b["stimulus"], m, b["session"]),
                        "oracle": lambda b=batch: b["rates"],
                    }[kind]()
                    corr.update(predicted, batch["responses"], keep)
                    bps.update(predicted, batch["responses"], keep)
                corrs.append(corr.compute())
                bits.append(bps.compute())
                spikes.append(bps.spikes.sum())
            expected[f"{kind}/corr"] = torch.cat(corrs).nanmean().item()
            expected[f"{kind}/bits"] = (
                (torch.stack(bits) * torch.stack(spikes).float()).sum() / torch.stack(spikes).sum()
            ).item()
    assert logged["val/corr"] == pytest.approx(expected["model/corr"], abs=1e-5)
    assert logged["val/bits_per_spike"] == pytest.approx(expected["model/bits"], abs=1e-5)
    assert logged["val/ablated/corr"] == pytest.approx(expected["ablated/corr"], abs=1e-5)
    assert logged["val/oracle_corr"] == pytest.approx(expected["oracle/corr"], abs=1e-5)
    assert logged["val/oracle_fraction"] == pytest.approx(expected["model/corr"] / expected["oracle/corr"], abs=1e-5)
    assert logged["val/behaviour_gain/corr"] == pytest.approx(
        expected["model/corr"] - expected["ablated/corr"], abs=1e-5
    )


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
    torch.testing.assert_close(reloaded.behaviour_mean, model.behaviour_mean)


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
