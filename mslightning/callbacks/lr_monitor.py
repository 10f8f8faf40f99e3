"""GroupLearningRateMonitor: Lightning's LearningRateMonitor without copies of a group's lr."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor
from typing_extensions import override

from mslightning.optim.groups import NO_DECAY_SUFFIX

__all__ = ["GroupLearningRateMonitor"]


class GroupLearningRateMonitor(LearningRateMonitor):
    """``LearningRateMonitor`` that logs a no-decay sub-group's lr only when it differs from its group's.

    ``no_weight_decay_on_norm_and_bias`` splits every named group ``g`` into ``g`` and
    ``g/no_decay`` (:func:`mslightning.optim.configure_grouped_optimizers`); their schedules are
    the same, so Lightning's monitor logs every learning rate twice (``lr-AdamW/g`` and
    ``lr-AdamW/g/no_decay``). This one drops ``.../g/no_decay`` (and its momentum and weight-decay
    entries) whenever it equals ``.../g``. Keys, steps and every other behaviour are Lightning's.

    Args:
        logging_interval: As for ``LearningRateMonitor``.
        log_momentum: As for ``LearningRateMonitor``.
        log_weight_decay: As for ``LearningRateMonitor``.
    """

    @override
    def _extract_stats(self, trainer: pl.Trainer, interval: str) -> dict[str, float]:
        stats = super()._extract_stats(trainer, interval)
        for key in [k for k in stats if NO_DECAY_SUFFIX + "-" in k or k.endswith(NO_DECAY_SUFFIX)]:
            parent = key.replace(NO_DECAY_SUFFIX, "", 1)
            if parent in stats and stats[parent] == stats[key]:
                del stats[key]
                trainer.callback_metrics.pop(key, None)
        return stats
