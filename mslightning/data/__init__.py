"""LightningDataModules for the three model families, and the HDF5 access they share.

* Classification: batches ``(inputs, target)``, ``inputs`` stream name -> float32 ``(B, C, H, W)``
  (or ``(B, D)`` for a vector stream), ``target`` int64 ``(B,)``
  (:data:`~mslightning.data.synthetic.StreamBatch`); streams held as arrays of one ``.npz`` or
  HDF5 file: :class:`~mslightning.data.features.FeatureStreamsDataModule`.
* Siamese ranking (Photo Triage): pair dicts (:data:`~mslightning.data.photo_triage.PairBatch`)
  and whole series for prediction (:data:`~mslightning.data.photo_triage.SeriesBatch`).
* Neural recordings: windows of one session
  (:data:`~mslightning.data.recordings.RecordingsBatch`), read lazily per process from HDF5
  (:class:`~mslightning.data.hdf5.LazyHDF5`).
"""

from mslightning.data.features import FeatureStreamsDataModule
from mslightning.data.hdf5 import LazyHDF5
from mslightning.data.nyu import (
    NYU_CLASS_SETUPS,
    NYU_SCENE_TYPES,
    NYUDepthV2DataModule,
    NYUDepthV2Dataset,
    read_matlab_strings,
    read_nyu_splits,
    write_nyu_mat,
)
from mslightning.data.photo_triage import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAD_COLOUR,
    PairBatch,
    PairRecord,
    PhotoPairDataset,
    PhotoSeriesDataset,
    PhotoTriageDataModule,
    SeriesBatch,
    collate_series,
    letterbox,
    read_pair_list,
)
from mslightning.data.recordings import (
    RecordingsBatch,
    RecordingsDataModule,
    RecordingWindows,
    SessionBatchSampler,
    read_recordings_layout,
)
from mslightning.data.synthetic import (
    DEFAULT_SIGNAL,
    PROTOTYPE_NORM,
    StreamBatch,
    StreamsTensorDataset,
    SyntheticStreamsDataModule,
    collate_streams,
)
from mslightning.data.synthetic_retina import (
    SyntheticRecordingsDataModule,
    default_synthetic_recordings_path,
    make_synthetic_recordings,
)
from mslightning.data.synthetic_triage import (
    LevelGapAccuracy,
    SyntheticPhotoTriageDataModule,
    accuracy_by_level_gap,
    default_synthetic_triage_root,
    make_synthetic_photo_triage,
    photo_levels,
)
from mslightning.data.transforms import JointTransform

__all__ = [
    "DEFAULT_SIGNAL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NYU_CLASS_SETUPS",
    "NYU_SCENE_TYPES",
    "PAD_COLOUR",
    "PROTOTYPE_NORM",
    "FeatureStreamsDataModule",
    "JointTransform",
    "LazyHDF5",
    "LevelGapAccuracy",
    "NYUDepthV2DataModule",
    "NYUDepthV2Dataset",
    "PairBatch",
    "PairRecord",
    "PhotoPairDataset",
    "PhotoSeriesDataset",
    "PhotoTriageDataModule",
    "RecordingWindows",
    "RecordingsBatch",
    "RecordingsDataModule",
    "SeriesBatch",
    "SessionBatchSampler",
    "StreamBatch",
    "StreamsTensorDataset",
    "SyntheticPhotoTriageDataModule",
    "SyntheticRecordingsDataModule",
    "SyntheticStreamsDataModule",
    "accuracy_by_level_gap",
    "collate_series",
    "collate_streams",
    "default_synthetic_recordings_path",
    "default_synthetic_triage_root",
    "letterbox",
    "make_synthetic_photo_triage",
    "make_synthetic_recordings",
    "photo_levels",
    "read_matlab_strings",
    "read_nyu_splits",
    "read_pair_list",
    "read_recordings_layout",
    "write_nyu_mat",
]
