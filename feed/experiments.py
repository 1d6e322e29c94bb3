"""A/B experiments: traffic splits between model versions, assignment, attribution, report.

An experiment is one JSON config in the hash ``contract.EXPERIMENTS_KEY``::

    {"name": "blend-v2", "salt": "blend-v2", "status": "running", "control": "control",
     "created_at": 1764000000.0, "weights_since": 1764000000.0, "stopped_at": null,
     "arms": [{"name": "control", "version": "V1", "weight": 90, "buckets": [[0, 9000]]},
              {"name": "treatment", "version": "V2", "weight": 10, "buckets": [[9000, 10000]]}]}

**Assignment.** ``bucket = int(sha256(f"{salt}:{user_id}")[:8]) % 10000``; the arm is the one
whose bucket ranges hold that bucket. Weights are percentages with at most two decimals, so an
arm of weight ``w`` owns exactly ``100 * w`` buckets. Nothing but the user id and the stored
config enters the rule, so every request and every replica agrees. When weights change, each
surviving arm keeps its buckets (a shrinking arm releases its highest ones), and growing or new
arms take the lowest free buckets: only the users the new weights require move, and they move
only from shrinking arms to growing ones. At most one experiment runs at a time; it routes the
home feed. Users outside it (none, while the weights sum to 100) get the live version.

**Attribution and report.** See :func:`report` and ``docs/ab-testing.md``. This module imports
nothing heavy (no numpy, no scipy), so the web service can use it; p-values come from small
pure-Python special functions checked against scipy in the tests.

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
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from feed import contract as c

logger = logging.getLogger(__name__)

N_BUCKETS = 10_000  # hash buckets; a weight of 1 (percent) owns 100 of them
WEIGHT_SCALE = N_BUCKETS // 100  # buckets per percentage point
STATUS_RUNNING = "running"
STATUS_STOPPED = "stopped"
CONTROL = "control"  # the arm lifts are measured against (else the first arm)
SRM_ALPHA = 0.001  # sample-ratio mismatch is flagged below this p-value
Z95 = 1.959963984540054  # two-sided 95% normal quantile
STREAM_BATCH = 5_000  # entries per XRANGE call
EVENT_KINDS = ("click", "like", "purchase")  # the events the report counts
METRICS = ("clicks_per_user", "likes_per_user", "purchase_conversion")

Interval = list[int]  # [lo, hi): a half-open range of buckets


class ExperimentError(ValueError):
    """An experiment request is invalid (the message names the field)."""


class UnknownExperiment(ExperimentError):
    """No experiment of that name."""


class ExperimentConflict(ExperimentError):
    """The request conflicts with the stored state (name taken, another one running, stopped)."""


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


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


# --- storage ---------------------------------------------------------------------------------
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


def _check_versions(r: Any, arms: Sequence[dict[str, Any]]) -> None:
    from feed import versions as reg

    for arm in arms:
        meta = reg.get_meta(r, arm["version"])
        if meta is None:
            raise ExperimentError(f"arm {arm['name']!r}: unknown version {arm['version']!r}")
        if meta.get("state") != c.STATE_READY or reg.missing_keys(r, arm["version"]):
            raise ExperimentError(
                f"arm {arm['name']!r}: version {arm['version']!r} has incomplete keys "
                f"(state {meta.get('state')!r}); publish it again"
            )


def _load(raw: Any, name: str) -> dict[str, Any]:
    if raw is None:
        raise UnknownExperiment(f"unknown experiment {name!r}")
    return c.decode_json(raw)  # type: ignore[no-any-return]


def _write(r: Any, name: str, change: Any) -> dict[str, Any]:
    """Apply ``change(all_configs) -> new config of name`` under WATCH; returns the new config."""

    def run(pipe: Any) -> dict[str, Any]:
        configs = {_text(k): c.decode_json(v) for k, v in pipe.hgetall(c.EXPERIMENTS_KEY).items()}
        cfg = change(configs)
        pipe.multi()
        pipe.hset(c.EXPERIMENTS_KEY, name, c.encode_json(cfg))
        return cfg  # type: ignore[no-any-return]

    return r.transaction(run, c.EXPERIMENTS_KEY, value_from_callable=True)  # type: ignore[no-any-return]


def create(
    r: Any, name: str, arms: Sequence[dict[str, Any]], *, salt: str | None = None
) -> dict[str, Any]:
    """Create and start an experiment; refused while another one is running.

    Parameters
    ----------
    r : redis client
    name : experiment name (an id)
    arms : ``[{"name", "version", "weight"}]``; weights are percentages summing to 100
    salt : hash salt; defaults to the name
    """
    cfg = new_config(name, arms, salt=salt)
    _check_versions(r, cfg["arms"])

    def change(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        if name in configs:
            raise ExperimentConflict(f"experiment {name!r} already exists")
        running = [n for n, x in configs.items() if x.get("status") == STATUS_RUNNING]
        if running:
            raise ExperimentConflict(
                f"experiment {running[0]!r} is running; stop it first "
                "(one experiment routes the home feed at a time)"
            )
        return cfg

    return _write(r, name, change)


def get(r: Any, name: str) -> dict[str, Any]:
    """The stored config of ``name``."""
    return _load(r.hget(c.EXPERIMENTS_KEY, name), name)


def list_experiments(r: Any) -> list[dict[str, Any]]:
    """Every experiment, newest first."""
    configs = [c.decode_json(v) for v in r.hgetall(c.EXPERIMENTS_KEY).values()]
    return sorted(configs, key=lambda x: x.get("created_at", 0), reverse=True)


def update(r: Any, name: str, arms: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Replace the arms of a running experiment (weights, versions, added or removed arms).

    An arm given without a version keeps its current one. Users of surviving arms move only
    as the new weights require (see :func:`reallocate`).
    """

    def change(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        old = configs.get(name)
        if old is None:
            raise UnknownExperiment(f"unknown experiment {name!r}")
        if old["status"] != STATUS_RUNNING:
            raise ExperimentConflict(f"experiment {name!r} is stopped; create a new one")
        current = {a["name"]: a["version"] for a in old["arms"]}
        filled = [
            {**a, "version": a.get("version") or current.get(a.get("name", ""))}
            if isinstance(a, dict)
            else a
            for a in arms
        ]
        checked = check_arms(filled)
        _check_versions(r, checked)
        new_arms = reallocate(old["arms"], checked)
        now = time.time()
        moved = [a["buckets"] for a in new_arms] != [
            next((o["buckets"] for o in old["arms"] if o["name"] == a["name"]), None)
            for a in new_arms
        ]
        names = [a["name"] for a in new_arms]
        control = old["control"] if old["control"] in names else names[0]
        return {
            **old,
            "arms": new_arms,
            "control": control,
            "updated_at": now,
            "weights_since": now if moved else old["weights_since"],
        }

    return _write(r, name, change)


def stop(r: Any, name: str) -> dict[str, Any]:
    """Stop routing traffic by ``name``; its data stays for the report. Idempotent."""

    def change(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        old = configs.get(name)
        if old is None:
            raise UnknownExperiment(f"unknown experiment {name!r}")
        if old["status"] == STATUS_STOPPED:
            return old
        now = time.time()
        return {**old, "status": STATUS_STOPPED, "stopped_at": now, "updated_at": now}

    return _write(r, name, change)


def running(r: Any) -> Experiment | None:
    """The running experiment, compiled, or None (a malformed config is logged and skipped)."""
    for raw in r.hvals(c.EXPERIMENTS_KEY):
        try:
            cfg = c.decode_json(raw)
            if cfg.get("status") == STATUS_RUNNING:
                return Experiment.from_config(cfg)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("skipping a malformed experiment config: %r", e)
    return None


# --- attribution -----------------------------------------------------------------------------
def _stream(r: Any, key: str, start: str = "-") -> Iterator[tuple[str, dict[str, str]]]:
    """Every entry of a stream from ``start``, read in batches."""
    while True:
        batch = r.xrange(key, min=start, max="+", count=STREAM_BATCH)
        for eid, fields in batch:
            yield _text(eid), {_text(k): _text(v) for k, v in fields.items()}
        if len(batch) < STREAM_BATCH:
            return
        start = "(" + _text(batch[-1][0])


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


# --- statistics (pure Python: the service may not import scipy) -------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    cc, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            cc = 1.0 + num / cc
            cc = cc if abs(cc) > tiny else tiny
            h *= d * cc
        if abs(d * cc - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def gammaincc(a: float, x: float) -> float:
    """Regularized upper incomplete gamma function ``Q(a, x)``."""
    if x <= 0.0:
        return 1.0
    ln = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:  # series for P(a, x)
        term = total = 1.0 / a
        ap = a
        for _ in range(1000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(ln))
    tiny = 1e-300  # continued fraction for Q(a, x)
    b = x + 1.0 - a
    cc, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > tiny else tiny)
        cc = b + an / cc
        cc = cc if abs(cc) > tiny else tiny
        h *= d * cc
        if abs(d * cc - 1.0) < 1e-15:
            break
    return math.exp(ln) * h


def t_sf2(t: float, df: float) -> float:
    """Two-sided p-value of Student's t: ``P(|T| >= |t|)``."""
    if not math.isfinite(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def chi2_sf(x: float, df: int) -> float:
    """Survival function of the chi-square distribution."""
    return gammaincc(df / 2.0, x / 2.0)


def mean_var(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample variance (ddof=1; 0 for fewer than two values)."""
    n = len(xs)
    if n == 0:
        return 0.0, 0.0
    m = sum(xs) / n
    return m, (sum((x - m) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0)


def welch(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Difference of means ``mean(y) - mean(x)``: 95% normal CI and Welch's t-test p-value."""
    (mx, vx), (my, vy) = mean_var(x), mean_var(y)
    if len(x) < 2 or len(y) < 2:
        return {"diff": my - mx, "diff_ci": None, "p_value": None}
    se2 = vx / len(x) + vy / len(y)
    diff = my - mx
    if se2 == 0:
        return {"diff": diff, "diff_ci": [diff, diff], "p_value": 1.0 if diff == 0 else 0.0}
    df = se2**2 / ((vx / len(x)) ** 2 / (len(x) - 1) + (vy / len(y)) ** 2 / (len(y) - 1))
    se = math.sqrt(se2)
    return {
        "diff": diff,
        "diff_ci": [diff - Z95 * se, diff + Z95 * se],
        "p_value": t_sf2(diff / se, df),
    }


def wilson(k: int, n: int) -> list[float] | None:
    """Wilson 95% interval of a proportion ``k / n``."""
    if n == 0:
        return None
    p, z2 = k / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [centre - half, centre + half]


def two_proportions(k1: int, n1: int, k2: int, n2: int) -> dict[str, Any]:
    """``k2/n2 - k1/n1``: 95% (unpooled) normal CI and the pooled two-proportion z-test."""
    if n1 == 0 or n2 == 0:
        return {"diff": None, "diff_ci": None, "p_value": None}
    p1, p2 = k1 / n1, k2 / n2
    diff, pooled = p2 - p1, (k1 + k2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    p = (1.0 if diff == 0 else 0.0) if se0 == 0 else math.erfc(abs(diff) / se0 / math.sqrt(2))
    return {"diff": diff, "diff_ci": [diff - Z95 * se, diff + Z95 * se], "p_value": p}


def srm(observed: dict[str, int], weights: dict[str, float]) -> dict[str, Any]:
    """Chi-square test of observed users per arm against the configured weights."""
    arms = [a for a in weights if weights[a] > 0]
    total = sum(observed.get(a, 0) for a in weights)
    stray = sum(observed.get(a, 0) for a in weights if weights[a] <= 0)
    out: dict[str, Any] = {
        "observed": {a: observed.get(a, 0) for a in weights},
        "expected_share": {a: weights[a] / 100 for a in weights},
        "chi2": None,
        "df": len(arms) - 1,
        "p_value": None,
        "mismatch": False,
    }
    if total == 0 or len(arms) < 2:
        return out
    chi2 = sum(
        (observed.get(a, 0) - total * weights[a] / 100) ** 2 / (total * weights[a] / 100)
        for a in arms
    )
    p = 0.0 if stray else chi2_sf(chi2, len(arms) - 1)
    out.update(chi2=chi2, p_value=p, mismatch=p < SRM_ALPHA)
    return out


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
    for kind, metric in (("click", "clicks_per_user"), ("like", "likes_per_user")):
        out[metric] = welch([u[kind] for u in cu], [u[kind] for u in au])
    out["purchase_conversion"] = two_proportions(
        sum(u["purchase"] > 0 for u in cu), len(cu), sum(u["purchase"] > 0 for u in au), len(au)
    )
    for metric, res in out.items():
        base = ctrl_row["metrics"][metric]["value"]
        res["lift"] = res["diff"] / base if res["diff"] is not None and base else None
    return out


def report(r: Any, name: str) -> dict[str, Any]:
    """The experiment's per-arm report (JSON-ready); definitions in ``docs/ab-testing.md``.

    Per arm: exposed users, pages, impressions (items served), attributed clicks, likes and
    purchases; clicks and likes per exposed user (mean, 95% normal CI) and purchase conversion
    (share of exposed users with a purchase, Wilson 95% CI). Per non-control arm: difference
    and relative lift against control with a Welch t-test (means) or a two-proportion z-test
    (conversion). ``srm``: chi-square of users first exposed since the last weight change
    against the configured weights, flagged below ``SRM_ALPHA``.
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
