"""Lightning callbacks that watch each stream of a multi-stream network.

* :class:`StreamMonitor`: per-stream gradients, weights, learning speed and overfitting in
  TensorBoard, with plain-language recommendations.
* :class:`PathwayAnalysis`: stream ablation every N epochs (accuracies alone/together, Shapley
  values, utilisation rates).
"""

from mslightning.callbacks.advice import Advisor, EpochEvidence, Recommendation, StreamThresholds
from mslightning.callbacks.pathways import PathwayAnalysis, PathwayAnalyzable
from mslightning.callbacks.stream_monitor import StreamMonitor

__all__ = [
    "Advisor",
    "EpochEvidence",
    "PathwayAnalysis",
    "PathwayAnalyzable",
    "Recommendation",
    "StreamMonitor",
    "StreamThresholds",
]
