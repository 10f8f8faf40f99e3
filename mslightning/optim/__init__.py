"""Named parameter groups with one learning-rate schedule per group.

* :class:`ParamGroup` describes a group: name, patterns on parameter names, optimizer options,
  schedule, warm-up, interval and gradient-clipping norm.
* :func:`build_param_groups` assigns every trainable parameter to exactly one group.
* :class:`GroupLRScheduler` runs any torch scheduler on one group only, exactly.
* :func:`configure_grouped_optimizers` returns what Lightning's ``configure_optimizers`` expects;
  :func:`clip_grad_norm_per_group` clips each group to its own norm.
* :class:`SequentialSchedule` and :class:`ChainedSchedule` make torch's ``SequentialLR`` and
  ``ChainedScheduler`` usable as one group's schedule from YAML.
* Loading optimizer state refuses a changed schedule and reports other changed group settings
  (:func:`check_group_configuration`).
"""

from mslightning.optim.combined import ChainedSchedule, SequentialSchedule
from mslightning.optim.groups import (
    NO_DECAY_SUFFIX,
    ParamGroup,
    SchedulerSpec,
    build_param_groups,
    group_name_of,
    is_no_decay_parameter,
    named_param_groups,
)
from mslightning.optim.lightning import (
    OptimizerFactory,
    clip_grad_norm_per_group,
    configure_grouped_optimizers,
    forbid_replaced_configure_optimizers,
)
from mslightning.optim.patterns import Patterns, matches_any, select_names
from mslightning.optim.resume import ChangedSetting, check_group_configuration
from mslightning.optim.schedule import GroupLRScheduler, check_group_names, guard_group_names_on_load

__all__ = [
    "NO_DECAY_SUFFIX",
    "ChainedSchedule",
    "ChangedSetting",
    "GroupLRScheduler",
    "OptimizerFactory",
    "ParamGroup",
    "Patterns",
    "SchedulerSpec",
    "SequentialSchedule",
    "build_param_groups",
    "check_group_configuration",
    "check_group_names",
    "clip_grad_norm_per_group",
    "configure_grouped_optimizers",
    "forbid_replaced_configure_optimizers",
    "group_name_of",
    "guard_group_names_on_load",
    "is_no_decay_parameter",
    "matches_any",
    "named_param_groups",
    "select_names",
]
