"""Promote an experiment's winner: make its version live, then stop the experiment.

:func:`promote` is the one function the CLI (``feed ab promote``), the admin API and notebooks
(``feed.promote``) call.
"""

from __future__ import annotations

from typing import Any

from feed.experiments.assign import ExperimentError
from feed.experiments.registry import stop
from feed.experiments.report import METRICS, report, winner


def promote(
    r: Any,
    experiment: str,
    *,
    metric: str = "clicks_per_user",
    alpha: float = 0.05,
    arm: str | None = None,
) -> dict[str, Any]:
    """Make ``experiment``'s winning arm's version live, then stop the experiment.

    The winner is chosen by :func:`~feed.experiments.report.winner` unless ``arm`` names it. A
    sample-ratio mismatch makes the report untrustworthy, so it is refused unless ``arm`` is
    given. The version is activated first: when activation fails (say the version is no longer
    ``ready``) the error propagates and the experiment keeps running, so nothing has changed.

    Parameters
    ----------
    r : redis client
    experiment : str
    metric : str
        ``clicks_per_user``, ``likes_per_user`` or ``purchase_conversion``.
    alpha : float
        Significance level of the winner rule.
    arm : str, optional
        Promote this arm regardless of the numbers.

    Returns
    -------
    dict
        :func:`~feed.experiments.report.winner`'s answer plus ``experiment``, ``live`` (the
        version now live) and ``previous`` (the version live before).

    Raises
    ------
    ExperimentError
        Unknown experiment, arm or metric, an arm removed from the experiment, or a
        sample-ratio mismatch without ``arm``.
    feed.versions.VersionError
        The winner's version cannot be activated; the experiment is still running.

    Examples
    --------
    >>> promote(r, "blend-v2")  # doctest: +SKIP
    {'arm': 'treatment', 'version': '20261124T2015-3f9a1c', ..., 'live': '20261124T2015-3f9a1c'}
    """
    from feed import versions as reg

    if metric not in METRICS:
        raise ExperimentError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    rep = report(r, experiment)
    if arm is None:
        if rep["srm"]["mismatch"]:
            raise ExperimentError(
                f"experiment {experiment!r} fails the sample-ratio check "
                f"(p = {rep['srm']['p_value']:.2g}): fix the assignment or logging, "
                "or pass arm= to promote anyway"
            )
        choice = winner(rep, metric, alpha)
    else:
        row = next((a for a in rep["arms"] if a["arm"] == arm), None)
        if row is None:
            raise ExperimentError(f"experiment {experiment!r} has no arm {arm!r}")
        choice = {
            "arm": arm,
            "version": row["version"],
            "metric": metric,
            "value": row["metrics"][metric]["value"],
            "lift": None,
            "p_value": None,
            "why": "chosen by hand",
        }
    if not choice["version"]:
        raise ExperimentError(
            f"arm {choice['arm']!r} is no longer in experiment {experiment!r}: "
            "it has no version to promote"
        )
    previous = reg.live_version(r)
    if choice["version"] != previous:
        reg.activate(r, choice["version"])  # first: if it fails, the experiment keeps running
    stop(r, experiment)
    return {**choice, "experiment": experiment, "live": reg.live_version(r), "previous": previous}
