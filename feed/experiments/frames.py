"""An experiment report as a table (pandas), for notebooks: not imported by the package, so
the web service, which imports :mod:`feed.experiments`, never reaches pandas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def report_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """One row per arm and metric of an experiment report, ready to plot.

    Parameters
    ----------
    report : dict
        What :func:`feed.experiments.report` returned.

    Returns
    -------
    pandas.DataFrame
        ``arm``, ``version``, ``users``, ``metric``, ``value``, ``ci_low``, ``ci_high`` (95%),
        and against control ``diff``, ``diff_ci_low``, ``diff_ci_high``, ``lift``,
        ``lift_ci_low``, ``lift_ci_high`` and ``p_value`` (empty for the control arm).

    Examples
    --------
    >>> rep = {"arms": [{"arm": "control", "version": "v1", "users": 10, "vs_control": None,
    ...                  "metrics": {"clicks_per_user": {"value": 1.0, "ci": [0.5, 1.5]}}}]}
    >>> report_frame(rep)[["arm", "metric", "value", "ci_low", "ci_high"]].to_dict("records")
    [{'arm': 'control', 'metric': 'clicks_per_user', 'value': 1.0, 'ci_low': 0.5, 'ci_high': 1.5}]
    """
    import pandas as pd

    rows = []
    for arm in report["arms"]:
        for metric, m in arm["metrics"].items():
            vs = (arm.get("vs_control") or {}).get(metric) or {}
            ci, dci = m.get("ci") or [None, None], vs.get("diff_ci") or [None, None]
            lci = vs.get("lift_ci") or [None, None]
            rows.append(
                {
                    "arm": arm["arm"],
                    "version": arm.get("version"),
                    "users": arm.get("users"),
                    "metric": metric,
                    "value": m["value"],
                    "ci_low": ci[0],
                    "ci_high": ci[1],
                    "diff": vs.get("diff"),
                    "diff_ci_low": dci[0],
                    "diff_ci_high": dci[1],
                    "lift": vs.get("lift"),
                    "lift_ci_low": lci[0],
                    "lift_ci_high": lci[1],
                    "p_value": vs.get("p_value"),
                }
            )
    return pd.DataFrame(rows)
