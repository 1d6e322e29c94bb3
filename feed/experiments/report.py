"""The experiment report: exposures and events attributed to arms, and the per-arm report.

:func:`report` reads the exposure and event streams since the experiment started (definitions
in ``docs/ab-testing.md``); :func:`winner` picks the arm to promote from it
(:func:`feed.experiments.frames.report_frame` tabulates it).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from feed import contract as c
from feed.experiments.registry import get
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

STREAM_BATCH = 5_000  # entries per XRANGE call
EVENT_KINDS = ("click", "like", "purchase")  # the events the report counts
METRICS = ("clicks_per_user", "likes_per_user", "purchase_conversion")


# --- attribution -----------------------------------------------------------------------------
def _stream(r: Any, key: str, start: str = "-") -> Iterator[tuple[str, dict[str, str]]]:
    """Every entry of a stream from ``start``, read in batches."""
    while True:
        batch = r.xrange(key, min=start, max="+", count=STREAM_BATCH)
        for eid, fields in batch:
            yield c.text(eid), {c.text(k): c.text(v) for k, v in fields.items()}
        if len(batch) < STREAM_BATCH:
            return
        start = "(" + c.text(batch[-1][0])


@dataclass
class ArmTally:
    """Raw per-arm counts: pages, impressions, and per-user event counts."""

    pages: int = 0
    impressions: int = 0
    users: dict[str, dict[str, int]] | None = None

    def user(self, user_id: str) -> dict[str, int]:
        if self.users is None:
            self.users = {}
        return self.users.setdefault(user_id, dict.fromkeys(EVENT_KINDS, 0))


class Attribution:
    """Exposures and events of one experiment, attributed to arms.

    An event whose ``request_id`` is a page this experiment served to the same user counts for
    that page's arm. Any other click, like or purchase counts for the arm of the user's latest
    exposure at or before the event's time (and before the experiment stopped); events of
    users not yet exposed are not counted.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.tally = {a["name"]: ArmTally() for a in cfg["arms"]}
        self.pages: dict[str, tuple[str, str]] = {}  # request id -> (arm, user)
        self.timeline: dict[str, list[tuple[float, str]]] = {}  # user -> [(ts, arm)]
        self.unattributed = 0

    def expose(self, f: dict[str, str]) -> None:
        arm, user = f.get("arm", ""), f.get("user_id", "")
        t = self.tally.get(arm)
        if t is None:  # an arm removed by an update: keep its data under its name
            t = self.tally[arm] = ArmTally()
        t.pages += 1
        t.impressions += int(f.get("n", 0) or 0)
        t.user(user)
        self.pages[f.get("request_id", "")] = (arm, user)
        self.timeline.setdefault(user, []).append((float(f.get("ts", 0) or 0), arm))

    def event(self, f: dict[str, str]) -> None:
        kind, user = f.get("type"), f.get("user_id", "")
        if kind not in EVENT_KINDS:
            return
        arm = self._arm(f, user)
        if arm is None:
            self.unattributed += 1
            return
        self.tally[arm].user(user)[kind] += 1

    def _arm(self, f: dict[str, str], user: str) -> str | None:
        page = self.pages.get(f.get("request_id") or "")
        if page is not None and page[1] == user:
            return page[0]
        ts = float(f.get("ts", 0) or 0)
        stopped = self.cfg.get("stopped_at")
        seen = self.timeline.get(user, [])
        i = bisect.bisect_right(seen, (ts, "\uffff")) - 1
        if i < 0 or (stopped is not None and ts > stopped):
            return None
        return seen[i][1]

    def first_seen(self) -> dict[str, tuple[float, str]]:
        """Each user's first exposure (time, arm)."""
        return {u: min(seen) for u, seen in self.timeline.items()}


def attribute(r: Any, cfg: dict[str, Any]) -> Attribution:
    """Read the exposure and event streams since the experiment started and attribute them."""
    att = Attribution(cfg)
    start = f"{int(cfg['created_at'] * 1000)}-0"
    for _, f in _stream(r, c.EXPOSURES_KEY, start):
        if f.get("experiment") == cfg["name"]:
            att.expose(f)
    for u in att.timeline.values():
        u.sort()
    for _, f in _stream(r, c.EVENTS_KEY, start):
        att.event(f)
    return att


# --- report ----------------------------------------------------------------------------------
def _arm_report(
    name: str, version: str | None, weight: float | None, t: ArmTally
) -> dict[str, Any]:
    users = t.users or {}
    n = len(users)
    row: dict[str, Any] = {
        "arm": name,
        "version": version,
        "weight": weight,
        "users": n,
        "pages": t.pages,
        "impressions": t.impressions,
    }
    for kind in EVENT_KINDS:
        row[kind + "s"] = sum(u[kind] for u in users.values())
    metrics: dict[str, Any] = {}
    for kind, metric in (("click", "clicks_per_user"), ("like", "likes_per_user")):
        m, v = mean_var([u[kind] for u in users.values()])
        half = Z95 * math.sqrt(v / n) if n > 1 else None
        metrics[metric] = {"value": m, "ci": None if half is None else [m - half, m + half]}
    buyers = sum(u["purchase"] > 0 for u in users.values())
    metrics["purchase_conversion"] = {"value": buyers / n if n else 0.0, "ci": wilson(buyers, n)}
    row["metrics"] = metrics
    return row


def _compare(ctrl: ArmTally, arm: ArmTally, ctrl_row: dict[str, Any]) -> dict[str, Any]:
    cu, au = list((ctrl.users or {}).values()), list((arm.users or {}).values())
    out = {}
    spread = {}  # metric -> (control mean, variance, n, arm mean, variance, n) for lift_ci
    for kind, metric in (("click", "clicks_per_user"), ("like", "likes_per_user")):
        x, y = [u[kind] for u in cu], [u[kind] for u in au]
        out[metric] = welch(x, y)
        spread[metric] = (*mean_var(x), len(x), *mean_var(y), len(y))
    kc, ka = sum(u["purchase"] > 0 for u in cu), sum(u["purchase"] > 0 for u in au)
    out["purchase_conversion"] = two_proportions(kc, len(cu), ka, len(au))
    pc, pa = kc / len(cu) if cu else 0.0, ka / len(au) if au else 0.0
    spread["purchase_conversion"] = (pc, pc * (1 - pc), len(cu), pa, pa * (1 - pa), len(au))
    for metric, res in out.items():
        base = ctrl_row["metrics"][metric]["value"]
        res["lift"] = res["diff"] / base if res["diff"] is not None and base else None
        res["lift_ci"] = lift_ci(*spread[metric]) if res["diff_ci"] is not None else None
    return out


def report(r: Any, name: str) -> dict[str, Any]:
    """The experiment's per-arm report (JSON-ready); definitions in ``docs/ab-testing.md``.

    Per arm: exposed users, pages, impressions (items served), attributed clicks, likes and
    purchases; clicks and likes per exposed user (mean, 95% normal CI) and purchase conversion
    (share of exposed users with a purchase, Wilson 95% CI). Per non-control arm: difference
    and relative lift against control with a Welch t-test (means) or a two-proportion z-test
    (conversion), and the lift's 95% CI by the delta method (the variances of both arms, see
    :func:`~feed.experiments.stats.lift_ci`). ``srm``: chi-square of users first exposed since
    the last weight change against the configured weights, flagged below ``SRM_ALPHA``.
    """
    cfg = get(r, name)
    att = attribute(r, cfg)
    arms = {a["name"]: a for a in cfg["arms"]}
    rows = {
        n: _arm_report(n, arms.get(n, {}).get("version"), arms.get(n, {}).get("weight"), t)
        for n, t in att.tally.items()
    }
    control = cfg["control"]
    for n, row in rows.items():
        row["vs_control"] = (
            None if n == control else _compare(att.tally[control], att.tally[n], rows[control])
        )
    since = cfg["weights_since"]
    fresh: dict[str, int] = {}
    for ts, arm in att.first_seen().values():
        if ts >= since:
            fresh[arm] = fresh.get(arm, 0) + 1
    check = srm(fresh, {a: float(arms[a]["weight"]) for a in arms})
    return {
        "experiment": name,
        "status": cfg["status"],
        "control": control,
        "salt": cfg["salt"],
        "created_at": cfg["created_at"],
        "stopped_at": cfg["stopped_at"],
        "generated_at": time.time(),
        "arms": list(rows.values()),
        "srm": {**check, "since": since, "alpha": SRM_ALPHA},
        "unattributed_events": att.unattributed,
    }


# --- reading a report ------------------------------------------------------------------------
def winner(
    report: Mapping[str, Any], metric: str = "clicks_per_user", alpha: float = 0.05
) -> dict[str, Any]:
    """The arm to promote: the best arm significantly better than control on ``metric``.

    An arm wins when its lift over control is positive with ``p_value < alpha``; among such
    arms the highest value wins. Otherwise the control wins (keep what was live).

    Returns
    -------
    dict
        ``arm``, ``version``, ``metric``, ``value``, ``lift``, ``p_value`` and ``why``.

    Examples
    --------
    >>> rep = {"control": "control", "arms": [
    ...     {"arm": "control", "version": "v1", "vs_control": None,
    ...      "metrics": {"clicks_per_user": {"value": 1.0}}},
    ...     {"arm": "treatment", "version": "v2",
    ...      "vs_control": {"clicks_per_user": {"lift": 0.3, "p_value": 0.001}},
    ...      "metrics": {"clicks_per_user": {"value": 1.3}}}]}
    >>> winner(rep)["arm"], winner(rep, alpha=0.0001)["arm"]
    ('treatment', 'control')
    """
    arms = {a["arm"]: a for a in report["arms"]}
    control = arms[report["control"]]
    better = []
    for a in report["arms"]:
        vs = (a.get("vs_control") or {}).get(metric) or {}
        p, lift = vs.get("p_value"), vs.get("lift")
        if p is not None and lift is not None and lift > 0 and p < alpha:
            better.append((a["metrics"][metric]["value"], a, vs))
    if not better:
        return {
            "arm": control["arm"],
            "version": control["version"],
            "metric": metric,
            "value": control["metrics"][metric]["value"],
            "lift": None,
            "p_value": None,
            "why": f"no arm beats {control['arm']!r} on {metric} at p < {alpha}",
        }
    value, best, vs = max(better, key=lambda x: x[0])
    return {
        "arm": best["arm"],
        "version": best["version"],
        "metric": metric,
        "value": value,
        "lift": vs["lift"],
        "p_value": vs["p_value"],
        "why": f"{metric} {vs['lift']:+.1%} vs {control['arm']!r}, p = {vs['p_value']:.2g}",
    }
