"""A/B experiments: traffic splits between model versions, assignment, attribution, report.

``from feed import experiments as ex`` gives every name of the package:

- :mod:`~feed.experiments.assign`: arms and weights (:func:`parse_arm`, :func:`check_arms`), the
  bucket allocation (:func:`reallocate`), the assignment rule (:func:`bucket`,
  :class:`Experiment`), a new config (:func:`new_config`) and the errors. Pure Python.
- :mod:`~feed.experiments.registry`: the experiments in Redis (:func:`create`, :func:`get`,
  :func:`list_experiments`, :func:`update`, :func:`stop`, :func:`running`).
- :mod:`~feed.experiments.stats`: the report's statistics (scipy, imported when first used).
- :mod:`~feed.experiments.report`: attribution (:func:`attribute`), :func:`report` and
  :func:`winner`; :func:`feed.experiments.frames.report_frame` tabulates a report (pandas; that
  module is not imported here, and ``feed.report_frame`` is it).
- :mod:`~feed.experiments.promote`: :func:`promote` the winner (activate it, then stop).

The web service imports this package on every request: importing it loads neither scipy nor
pandas. The functions ``report`` and ``promote`` shadow the submodules of the same name as
attributes of the package; import the modules with ``from feed.experiments.report import ...``
(or through ``sys.modules``), not ``import feed.experiments.report as m``. How the rules and the
report work: ``docs/ab-testing.md``.
"""

from __future__ import annotations

from feed.experiments.assign import (
    CONTROL,
    N_BUCKETS,
    STATUS_RUNNING,
    STATUS_STOPPED,
    WEIGHT_SCALE,
    Arm,
    ArmNotServable,
    Experiment,
    ExperimentConflict,
    ExperimentError,
    Interval,
    UnknownExperiment,
    bucket,
    check_arms,
    new_config,
    parse_arm,
    reallocate,
)
from feed.experiments.promote import promote
from feed.experiments.registry import create, get, list_experiments, running, stop, update
from feed.experiments.report import (
    EVENT_KINDS,
    METRICS,
    STREAM_BATCH,
    ArmTally,
    Attribution,
    attribute,
    report,
    winner,
)
from feed.experiments.stats import (
    SRM_ALPHA,
    Z95,
    lift_ci,
    mean_var,
    srm,
    two_proportions,
    welch,
    wilson,
)

__all__ = [
    "CONTROL",
    "EVENT_KINDS",
    "METRICS",
    "N_BUCKETS",
    "SRM_ALPHA",
    "STATUS_RUNNING",
    "STATUS_STOPPED",
    "STREAM_BATCH",
    "WEIGHT_SCALE",
    "Z95",
    "Arm",
    "ArmNotServable",
    "ArmTally",
    "Attribution",
    "Experiment",
    "ExperimentConflict",
    "ExperimentError",
    "Interval",
    "UnknownExperiment",
    "attribute",
    "bucket",
    "check_arms",
    "create",
    "get",
    "lift_ci",
    "list_experiments",
    "mean_var",
    "new_config",
    "parse_arm",
    "promote",
    "reallocate",
    "report",
    "running",
    "srm",
    "stop",
    "two_proportions",
    "update",
    "welch",
    "winner",
    "wilson",
]
