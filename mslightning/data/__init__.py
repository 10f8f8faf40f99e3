"""LightningDataModules for multi-stream data.

Every datamodule here yields batches ``(inputs, target)``: ``inputs`` maps each stream name to a
float32 tensor ``(B, C, H, W)``, ``target`` is an int64 tensor ``(B,)``
(see :data:`~mslightning.data.synthetic.StreamBatch`).
"""

from mslightning.data.synthetic import (
    DEFAULT_SIGNAL,
    PROTOTYPE_NORM,
    StreamBatch,
    StreamsTensorDataset,
    SyntheticStreamsDataModule,
    collate_streams,
)

__all__ = [
    "DEFAULT_SIGNAL",
    "PROTOTYPE_NORM",
    "StreamBatch",
    "StreamsTensorDataset",
    "SyntheticStreamsDataModule",
    "collate_streams",
]
