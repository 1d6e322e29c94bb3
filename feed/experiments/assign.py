"""A/B experiments, pure part: arms and weights, bucket allocation, assignment, a new config.

The web service imports this on every request: it imports nothing but :mod:`feed.contract`.

**Assignment.** ``bucket = int(sha256(f"{salt}:{user_id}")[:8]) % 10000``; the arm is the one
whose bucket ranges hold that bucket. Weights are percentages with at most two decimals, so an
arm of weight ``w`` owns exactly ``100 * w`` buckets. Nothing but the user id and the stored
config enters the rule, so every request and every replica agrees. When weights change, each
surviving arm keeps its buckets (a shrinking arm releases its highest ones), and growing or new
arms take the lowest free buckets: only the users the new weights require move, and they move
only from shrinking arms to growing ones.

Examples
--------
>>> cfg = new_config("demo", [{"name": "control", "version": "v1", "weight": 90},
...                           {"name": "treatment", "version": "v2", "weight": 10}], now=0.0)
>>> [a["buckets"] for a in cfg["arms"]]
[[[0, 9000]], [[9000, 10000]]]
>>> Experiment.from_config(cfg).arm_for("u42").name in ("control", "treatment")
True
>>> moved = reallocate(cfg["arms"], [{"name": "control", "version": "v1", "weight": 80},
...                                  {"name": "treatment", "version": "v2", "weight": 20}])
>>> [a["buckets"] for a in moved]
[[[0, 8000]], [[8000, 10000]]]
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feed import contract as c

N_BUCKETS = 10_000  # hash buckets; a weight of 1 (percent) owns 100 of them
WEIGHT_SCALE = N_BUCKETS // 100  # buckets per percentage point
STATUS_RUNNING = "running"
STATUS_STOPPED = "stopped"
CONTROL = "control"  # the arm lifts are measured against (else the first arm)

Interval = list[int]  # [lo, hi): a half-open range of buckets


class ExperimentError(ValueError):
    """An experiment request is invalid (the message names the field)."""


class UnknownExperiment(ExperimentError):
    """No experiment of that name."""


class ExperimentConflict(ExperimentError):
    """The request conflicts with the stored state (name taken, another one running, stopped)."""


class ArmNotServable(ExperimentConflict):
    """An arm's version was published under another Redis contract: this release cannot serve
    it (the message names the contract)."""


# --- arms and weights ------------------------------------------------------------------------
def parse_arm(spec: str) -> dict[str, Any]:
    """Parse ``NAME=VERSION:WEIGHT`` (or ``NAME:WEIGHT``, keeping the version, for updates).

    >>> parse_arm("treatment=20261124T2015-3f9a:10")
    {'name': 'treatment', 'version': '20261124T2015-3f9a', 'weight': 10.0}
    >>> parse_arm("control:85")
    {'name': 'control', 'version': None, 'weight': 85.0}
    """
    head, sep, weight = spec.rpartition(":")
    if not sep or not head:
        raise ExperimentError(f"arm {spec!r} must look like NAME=VERSION:WEIGHT")
    name, _, version = head.partition("=")
    try:
        w = float(weight)
    except ValueError:
        raise ExperimentError(f"arm {spec!r}: weight {weight!r} is not a number") from None
    return {"name": name, "version": version or None, "weight": w}


def _buckets_of(weight: Any, arm: str) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        raise ExperimentError(f"arm {arm!r}: weight must be a number >= 0, got {weight!r}")
    n = round(weight * WEIGHT_SCALE)
    if abs(n - weight * WEIGHT_SCALE) > 1e-6:
        raise ExperimentError(f"arm {arm!r}: weight {weight} has more than two decimals")
    return int(n)


def check_arms(arms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate names and weights (versions are checked against Redis by :func:`create`)."""
    if not isinstance(arms, Sequence) or len(arms) < 2:
        raise ExperimentError("an experiment needs at least two arms")
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for arm in arms:
        if not isinstance(arm, dict):
            raise ExperimentError(f"arm {arm!r} must be an object {{name, version, weight}}")
        name, version = arm.get("name"), arm.get("version")
        if not isinstance(name, str) or not c.valid_id(name):
            raise ExperimentError(f"arm name {name!r} is not a valid id")
        if name in names:
            raise ExperimentError(f"arm {name!r} appears twice")
        if not c.valid_version(version):
            raise ExperimentError(f"arm {name!r}: version {version!r} is not a valid version id")
        names.add(name)
        _buckets_of(arm.get("weight"), name)
        w = arm["weight"]
        out.append(
            {"name": name, "version": version, "weight": int(w) if float(w).is_integer() else w}
        )
    total = sum(_buckets_of(a["weight"], a["name"]) for a in out)
    if total != N_BUCKETS:
        raise ExperimentError(f"arm weights sum to {total / WEIGHT_SCALE:g}, not 100")
    return out


# --- bucket allocation -----------------------------------------------------------------------
def _size(ivs: Sequence[Interval]) -> int:
    return sum(hi - lo for lo, hi in ivs)


def _merge(ivs: Sequence[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for lo, hi in sorted(ivs):
        if out and out[-1][1] == lo:
            out[-1][1] = hi
        elif hi > lo:
            out.append([lo, hi])
    return out


def _truncate(ivs: Sequence[Interval], n: int) -> list[Interval]:
    """The lowest ``n`` buckets of ``ivs`` (the rest is released)."""
    out: list[Interval] = []
    for lo, hi in sorted(ivs):
        if n <= 0:
            break
        out.append([lo, min(hi, lo + n)])
        n -= out[-1][1] - lo
    return out


def _complement(ivs: Sequence[Interval]) -> list[Interval]:
    out, at = [], 0
    for lo, hi in _merge(ivs):
        if lo > at:
            out.append([at, lo])
        at = hi
    return out + ([[at, N_BUCKETS]] if at < N_BUCKETS else [])


def reallocate(
    old: Sequence[dict[str, Any]] | None, new: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Arms of ``new`` with ``buckets``, moving as few buckets as the weights allow.

    An arm present in ``old`` keeps its buckets, less its highest ones when it shrinks; freed
    buckets (from shrunk or removed arms) go, lowest first, to growing and new arms in order.
    """
    before = {a["name"]: a.get("buckets", []) for a in (old or [])}
    kept = {
        a["name"]: _truncate(before.get(a["name"], []), _buckets_of(a["weight"], a["name"]))
        for a in new
    }
    free = _complement([iv for ivs in kept.values() for iv in ivs])
    out = []
    for arm in new:
        need = _buckets_of(arm["weight"], arm["name"]) - _size(kept[arm["name"]])
        taken = _truncate(free, need)
        free = _complement([iv for ivs in kept.values() for iv in ivs] + taken)
        kept[arm["name"]] = _merge(kept[arm["name"]] + taken)
        out.append({**arm, "buckets": kept[arm["name"]]})
    return out


# --- assignment ------------------------------------------------------------------------------
def bucket(salt: str, user_id: str) -> int:
    """The user's bucket in ``[0, N_BUCKETS)``: stable across processes, replicas and releases.

    >>> bucket("exp1", "u42") == bucket("exp1", "u42")
    True
    """
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % N_BUCKETS


@dataclass(frozen=True)
class Arm:
    """One arm of a running experiment."""

    name: str
    version: str
    weight: float


class Experiment:
    """A compiled experiment config: :meth:`arm_for` is a hash and a binary search."""

    def __init__(
        self,
        name: str,
        salt: str,
        arms: Sequence[Arm],
        ranges: Sequence[tuple[int, int, int]],
        config: dict[str, Any],
    ) -> None:
        self.name = name
        self.salt = salt
        self.arms = tuple(arms)
        self.config = config
        self._ranges = sorted(ranges)  # (lo, hi, arm index)
        self._starts = [lo for lo, _, _ in self._ranges]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Experiment:
        """Compile a stored config."""
        arms = [Arm(a["name"], a["version"], a["weight"]) for a in cfg["arms"]]
        ranges = [(lo, hi, i) for i, a in enumerate(cfg["arms"]) for lo, hi in a["buckets"]]
        return cls(cfg["name"], cfg["salt"], arms, ranges, cfg)

    def arm_for(self, user_id: str) -> Arm | None:
        """The user's arm, or None when the user's bucket belongs to no arm."""
        b = bucket(self.salt, user_id)
        i = bisect.bisect_right(self._starts, b) - 1
        if i >= 0 and self._ranges[i][0] <= b < self._ranges[i][1]:
            return self.arms[self._ranges[i][2]]
        return None


# --- a new config ----------------------------------------------------------------------------
def new_config(
    name: str, arms: Sequence[dict[str, Any]], *, salt: str | None = None, now: float | None = None
) -> dict[str, Any]:
    """A validated config with its bucket allocation (not stored)."""
    if not c.valid_id(name):
        raise ExperimentError(f"experiment name {name!r} is not a valid id")
    if salt is not None and (not isinstance(salt, str) or not 0 < len(salt) <= 128):
        raise ExperimentError("salt must be a non-empty string of at most 128 characters")
    checked = check_arms(arms)
    names = [a["name"] for a in checked]
    t = time.time() if now is None else now
    return {
        "name": name,
        "salt": salt or name,
        "status": STATUS_RUNNING,
        "control": CONTROL if CONTROL in names else names[0],
        "created_at": t,
        "updated_at": t,
        "weights_since": t,
        "stopped_at": None,
        "arms": reallocate(None, checked),
    }
