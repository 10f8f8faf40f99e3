"""PredictionTableWriter: columns from predict_step to CSV, never replacing a file, clear errors."""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from mslightning.callbacks import PredictionTableWriter


class _Columns(pl.LightningModule):
    def __init__(self, make_columns) -> None:
        super().__init__()
        self.make_columns = make_columns
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch, batch_idx):
        return self.make_columns(batch, batch_idx)


def _predict(tmp_path, make_columns, writer=None) -> PredictionTableWriter:
    writer = writer or PredictionTableWriter(output_dir=tmp_path)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[writer]
    )
    trainer.predict(_Columns(make_columns), DataLoader(torch.arange(5.0), batch_size=2), return_predictions=False)
    return writer


def _rows(writer: PredictionTableWriter) -> list[list[str]]:
    with writer.path.open() as f:
        return list(csv.reader(f))


def test_integer_and_float_columns_in_batch_order_and_no_file_replaced(tmp_path) -> None:
    def columns(batch, batch_idx):
        return {"id": batch.long(), "score": batch / 3}

    first = _predict(tmp_path, columns)
    assert _rows(first) == [
        ["id", "score"],
        ["0", "0"],
        ["1", "0.333333"],
        ["2", "0.666667"],
        ["3", "1"],
        ["4", "1.33333"],
    ]
    second = _predict(tmp_path, columns)
    assert first.path.name == "predictions.csv" and second.path.name == "predictions-v1.csv"
    assert _rows(second) == _rows(first)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (lambda batch, i: batch, "expects predict_step to return a mapping column name -> (N,) tensor, got Tensor"),
        (lambda batch, i: {"a": batch, "b": batch[:1]}, "every column must be a (N,) tensor of one length N"),
        (lambda batch, i: {"a": batch.view(-1, 1)}, "every column must be a (N,) tensor of one length N"),
        (
            lambda batch, i: {"a": batch} if i == 0 else {"b": batch},
            "batch 1 has the columns ['b'] but the file has ['a']",
        ),
    ],
)
def test_bad_predictions_are_named(tmp_path, columns, message: str) -> None:
    with pytest.raises(ValueError) as error:
        _predict(tmp_path, columns)
    assert message in str(error.value)


def test_filename_must_be_a_csv_name() -> None:
    with pytest.raises(ValueError, match="PredictionTableWriter: filename must be a plain"):
        PredictionTableWriter(filename="out/x.csv")
