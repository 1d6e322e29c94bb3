"""Proof by simulation: synthetic users with planted tastes drive an A/B test through the HTTP API.

The synthetic generator (:mod:`feed.data.synth`) plants each user's favourite topics and each post's
topic in ``synth_truth.json``. A simulated user fetches a few feed pages over HTTP (the Flask
test client, or anything with the same ``get``/``post``), clicks posts of a favourite topic with
a higher probability than others, likes some clicked posts and buys the linked product of some
liked ones, then posts those events back with the ``request_id`` of the page (purchases carry
none, as if made later from the cart, and are attributed by time). Two versions trained by the
real pipeline compete: the normal blend and a deliberately weak popularity-only one
(:func:`weak_config`). The experiment report should find the blend significantly better, and a
deliberately skewed assignment (users of one arm who never arrive, :func:`losing`) should trip
the sample-ratio check.

Examples
--------
The whole loop in a scratch directory with its own Redis (what ``feed ab simulate`` runs)::

    from tools.simulate import run
    out = run("/tmp/sim", redis_url=None, users=600)
    out["report"]["arms"][1]["vs_control"]["clicks_per_user"]
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from feed import experiments as ex

logger = logging.getLogger(__name__)

EVENT_BATCH = 500  # the service's MAX_EVENTS_PER_REQUEST default


@dataclass
class Behaviour:
    """How simulated users react to an item (probabilities)."""

    p_click_match: float = 0.35  # click an item of one of the user's planted topics
    p_click_other: float = 0.05  # click any other item
    p_like: float = 0.5  # like a clicked item
    p_purchase: float = 0.3  # buy the product linked to a liked item


@dataclass
class SimStats:
    """What the simulation did, counted on the client side."""

    users: int = 0
    requests: int = 0
    failed: int = 0
    degraded: int = 0  # pages served without Redis (trending only): they measure no model
    events: int = 0
    skipped: int = 0  # users who never arrived (the deliberate skew)
    arms: dict[str, int] = field(default_factory=dict)  # users per arm seen in responses


@dataclass
class Truth:
    """The planted structure of a synthetic dataset."""

    user_topics: dict[str, set[int]]
    post_topic: dict[str, int]

    @classmethod
    def load(cls, dataset_dir: str | Path) -> Truth:
        raw = json.loads((Path(dataset_dir) / "synth_truth.json").read_text(encoding="utf-8"))
        return cls({u: set(t) for u, t in raw["user_topics"].items()}, raw["post_topic"])

    def likes(self, user: str, post: str) -> bool:
        """True when the post's planted topic is one of the user's."""
        return self.post_topic.get(post, -1) in self.user_topics.get(user, set())


def weak_config(base: Any = None) -> Any:
    """A :class:`feed.train.TrainConfig` whose candidates come from popularity alone.

    Every personalised source gets weight 0, so each user's list is the trending list minus
    what they have seen: a real, deliberately weak model version.
    """
    from feed.train import TrainConfig

    cfg = base or TrainConfig()
    weights = dict.fromkeys(cfg.weights, 0.0) | {"popularity": 1.0}
    return TrainConfig(**{**asdict(cfg), "weights": weights})


def losing(exp: ex.Experiment, arm: str, share: float, seed: int = 0) -> Callable[[str], bool]:
    """A skip rule: users assigned ``arm`` never arrive with probability ``share``.

    This is the classic cause of a sample-ratio mismatch (say the treatment crashes the app
    before the page is requested), so the report's check must flag it.
    """
    rng = random.Random(seed)

    def skip(user: str) -> bool:
        a = exp.arm_for(user)
        return a is not None and a.name == arm and rng.random() < share

    return skip


def _react(
    user: str, page: dict[str, Any], truth: Truth, rng: random.Random, b: Behaviour
) -> list[dict[str, Any]]:
    """The events one user sends for one page."""
    out: list[dict[str, Any]] = []
    rid = page.get("request_id")
    for item in page.get("items", []):
        pid = item["post_id"]
        p = b.p_click_match if truth.likes(user, pid) else b.p_click_other
        if rng.random() >= p:
            continue
        out.append({"type": "click", "user_id": user, "post_id": pid, "request_id": rid})
        if rng.random() >= b.p_like:
            continue
        out.append({"type": "like", "user_id": user, "post_id": pid, "request_id": rid})
        products = item.get("products") or []
        if products and rng.random() < b.p_purchase:
            out.append(
                {
                    "type": "purchase",
                    "user_id": user,
                    "post_id": pid,
                    "product_id": products[0]["product_id"],
                }
            )
    return out


def _session(
    client: Any,
    user: str,
    truth: Truth,
    rng: random.Random,
    pages: int,
    limit: int,
    b: Behaviour,
    stats: SimStats,
) -> None:
    """One user scrolls ``pages`` pages, then sends the events of the session."""
    events: list[dict[str, Any]] = []
    cursor = None
    for _ in range(pages):
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        resp = client.get(f"/v1/feed/{user}", query_string=params)
        stats.requests += 1
        if resp.status_code != 200:
            stats.failed += 1
            logger.warning("feed request for %s failed: %s", user, resp.status_code)
            break
        page = resp.get_json()
        stats.degraded += bool(page.get("degraded"))
        if page.get("arm"):
            stats.arms[page["arm"]] = stats.arms.get(page["arm"], 0) + 1
        events += _react(user, page, truth, rng, b)
        cursor = page.get("next_cursor")
        if not cursor:
            break
    for lo in range(0, len(events), EVENT_BATCH):
        resp = client.post("/v1/events", json={"events": events[lo : lo + EVENT_BATCH]})
        stats.requests += 1
        stats.failed += resp.status_code != 202
    stats.events += len(events)


def simulate(
    client: Any,
    truth: Truth,
    users: Iterable[str],
    *,
    pages: int = 2,
    limit: int = 10,
    behaviour: Behaviour | None = None,
    seed: int = 0,
    skip: Callable[[str], bool] | None = None,
) -> SimStats:
    """Drive ``users`` through the feed API; returns client-side counts.

    Parameters
    ----------
    client : Flask test client (or any object with the same ``get`` and ``post``)
    truth : planted tastes of the dataset the served versions were trained on
    users : user ids (of ``truth``) in the order they arrive
    pages, limit : pages each user scrolls and items per page
    behaviour : click, like and purchase probabilities
    seed : seeds the users' choices
    skip : users for whom it returns True never arrive (see :func:`losing`)
    """
    b = behaviour or Behaviour()
    rng = random.Random(seed)
    stats = SimStats()
    for user in users:
        if skip is not None and skip(user):
            stats.skipped += 1
            continue
        stats.users += 1
        _session(client, user, truth, rng, pages, limit, b, stats)
    for arm in stats.arms:  # pages per arm -> users per arm
        stats.arms[arm] = round(stats.arms[arm] / max(pages, 1))
    return stats


def ab_test(
    r: Any,
    client: Any,
    truth: Truth,
    control: str,
    treatment: str,
    *,
    name: str,
    treatment_weight: float = 50,
    lose_share: float = 0.0,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[SimStats, dict[str, Any]]:
    """Create an experiment (control vs treatment), simulate every planted user, stop, report.

    ``lose_share`` > 0 loses that share of the treatment's users before they arrive.
    Extra keyword arguments go to :func:`simulate`.
    """
    ex.create(
        r,
        name,
        [
            {"name": "control", "version": control, "weight": 100 - treatment_weight},
            {"name": "treatment", "version": treatment, "weight": treatment_weight},
        ],
        salt=f"{name}:{seed}",
    )
    try:
        skip = None
        if lose_share > 0:
            skip = losing(ex.Experiment.from_config(ex.get(r, name)), "treatment", lose_share, seed)
        users = sorted(truth.user_topics, key=lambda u: int(u[1:]) if u[1:].isdigit() else 0)
        stats = simulate(client, truth, users, seed=seed, skip=skip, **kwargs)
    finally:
        ex.stop(r, name)
    return stats, ex.report(r, name)


def run(
    work_dir: str | Path,
    redis_url: str | None = None,
    *,
    users: int = 600,
    posts: int = 800,
    topics: int = 6,
    seed: int = 0,
    treatment_weight: float = 50,
    lose_share: float = 0.0,
    pages: int = 2,
) -> dict[str, Any]:
    """Generate a dataset, train a strong and a weak version, publish both, run the A/B test.

    With ``redis_url`` None a throwaway Redis server is started under ``work_dir`` (and stopped
    at the end): the simulation activates versions and creates an experiment, which a shared
    Redis should not see.
    """
    from feed import redisserver
    from feed.data.synth import SynthConfig, generate
    from feed.publish import publish
    from feed.redisclient import from_url
    from feed.train import TrainConfig, train

    work = Path(work_dir)
    data = work / "data"
    generate(data, SynthConfig(n_users=users, n_posts=posts, n_topics=topics, seed=seed))
    base = TrainConfig(factors=32, iterations=10, n_candidates=100, random_state=seed)
    strong_path = train(data, work / "artifacts", base)
    weak_path = train(data, work / "artifacts", weak_config(base))
    private = redis_url is None
    redis_dir = Path(tempfile.mkdtemp(prefix="redis-", dir=work))
    url = redisserver.start(redis_dir, persist=False) if private else str(redis_url)
    try:
        r = from_url(url, socket_timeout=30.0)
        weak = publish(r, weak_path, activate=True).version
        strong = publish(r, strong_path).version
        from service import create_app

        app = create_app({"REDIS_URL": url, "VERSION_CACHE_S": 0.0, "TESTING": True})
        name = f"sim-{seed}-{strong}"
        stats, report = ab_test(
            r,
            app.test_client(),
            Truth.load(data),
            weak,
            strong,
            name=name,
            treatment_weight=treatment_weight,
            lose_share=lose_share,
            seed=seed,
            pages=pages,
        )
    finally:
        if private:
            redisserver.stop(redis_dir)
    return {"strong": strong, "weak": weak, "stats": asdict(stats), "report": report}
