"""Lightning callbacks that watch each stream of a multi-stream network.

* :class:`StreamMonitor`: per-stream gradients, weights, learning speed and overfitting in
  TensorBoard, with plain-language recommendations.
* :class:`PathwayAnalysis`: stream ablation every N epochs (accuracies alone/together, Shapley
  values, utilisation rates).
* :class:`NonFiniteGuard`: stops training at the first NaN/Inf loss; no checkpoint holds
  non-finite weights.
* :class:`GroupLearningRateMonitor`: Lightning's LearningRateMonitor without the copies of each
  group's lr that no-decay sub-groups make.
* :class:`ClassProbabilityWriter`: ``predict`` writes class probabilities to a CSV file.
* :class:`PredictionTableWriter`: ``predict`` writes the columns ``predict_step`` returns to CSV.
"""

from mslightning.callbacks.advice import Advisor, EpochEvidence, Recommendation, StreamThresholds
from mslightning.callbacks.lr_monitor import GroupLearningRateMonitor
from mslightning.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from mslightning.callbacks.pathways import PathwayAnalysis, PathwayAnalyzable
from mslightning.callbacks.predictions import ClassProbabilityWriter, PredictionTableWriter
from mslightning.callbacks.stream_monitor import StreamMonitor

__all__ = [
    "Advisor",
    "ClassProbabilityWriter",
    "EpochEvidence",
    "GroupLearningRateMonitor",
    "NonFiniteError",
    "NonFiniteGuard",
    "PathwayAnalysis",
    "PathwayAnalyzable",
    "PredictionTableWriter",
    "Recommendation",
    "StreamMonitor",
    "StreamThresholds",
]
