"""One page assembly for the service and for `feed evaluate`: the page the offline evaluation
scores for a user is the page the service serves that user from the published version, and
the version's page policy, chosen at training, is the one the service applies."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import feed_app

from feed.artifacts import read
from feed.data import load
from feed.evaluation.pages import (
    MAX_COST,
    SEARCH_STEPS,
    PageBuilder,
    PolicyChoice,
    calibrate,
    search_policy,
)
from feed.features.matrices import build
from feed.serving.policy import STRONGEST_AUTHOR, PagePolicy, along, searched


def test_manifest_records_the_page_policy_and_the_service_applies_it(
    artifact: Path, published: str, app: Any
) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    model = manifest["model"]
    policy = PagePolicy.from_json(model["page_policy"])
    assert model["page_policy_choice"]["policy"] == model["page_policy"]
    assert searched(policy)  # on a path of the search, between no discount and the strongest
    assert manifest["params"]["split"] in ("global-time", "user-time", "random")  # resolved
    # the served pages' calibration only where validation shares the version's clock
    calibrated = "served_calibration" in model["page_policy_choice"]
    assert calibrated == (model["page_policy_choice"].get("validation_split") == "random")
    with app.app_context():
        table = app.extensions["feed_store"].table(published)
    assert table.policy == policy


@pytest.mark.parametrize("limit", [5, 20])
def test_offline_pages_are_the_pages_the_service_serves(
    artifact: Path, dataset_dir: Path, published: str, redis_url: str, limit: int
) -> None:
    """The evaluation's PageBuilder, fed the published version's candidate lists and trending
    list, builds exactly the page GET /v1/feed/<user> answers (no freshness bonus, so the
    moment of the request does not matter)."""
    app = feed_app(redis_url, FRESHNESS_WEIGHT=0)
    client = app.test_client()
    art = read(artifact, verify=False)
    cands, trend = art.arrays("candidates"), art.arrays("trending")
    data = build(load(dataset_dir))
    policy = PagePolicy.from_json(art.manifest["model"]["page_policy"])
    builder = PageBuilder.of(data, (trend["items"], trend["scores"]), now=0.0)
    policy = replace(policy, freshness_weight=0.0)  # as the app's FRESHNESS_WEIGHT says
    builder.table.policy = policy
    users = [str(u) for u in cands["users"][:25]]
    rows = slice(0, 25)
    pages = builder.pages(
        users,
        cands["items"][rows].astype(np.int64),
        cands["scores"][rows],
        cands["reasons"][rows],
        limit,
        policy,
    )
    compared = 0
    for user, page in zip(users, pages, strict=True):
        body = client.get(f"/v1/feed/{user}?preview=1&limit={limit}").get_json()
        served = [it["post_id"] for it in body["items"]]
        offline = [str(data.posts.external[i]) for i in page if i >= 0]
        assert served == offline, user
        compared += len(served)
    assert compared >= 25 * limit * 0.9  # most users fill the page


def _judge(served_at_0: float, cost: float, strength_of: dict[str, float] | None = None) -> Any:
    """A judge of policies along :data:`~feed.serving.policy.PATHS`: its served metric falls
    from ``served_at_0`` by ``cost``, its author diversity rises from 0.3 by 0.1, per unit of
    the strength (read back from the author or category decay, scaled per path by
    ``strength_of``; every path alike without it)."""
    scale = strength_of or {"author": 1.0, "category": 1.0, "both": 1.0}

    def judge(policy: PagePolicy) -> dict[str, Any]:
        a = (1.0 - policy.author_decay) / (1.0 - STRONGEST_AUTHOR[0])
        c = (1.0 - policy.category_decay) / (1.0 - 0.7)
        path, s = ("author", a) if a > 0 else ("category", c)
        if a > 0 and c > 0:
            path = "both"
        s *= scale[path]
        served, diverse = served_at_0 - cost * s, 0.3 + 0.1 * s
        return {"policy": policy.to_json(), "served": served, "author_diversity": diverse}

    return judge


def test_policy_search_finds_the_lightest_policy_that_reaches_the_target() -> None:
    # diversity grows with the strength, relevance falls with it; "both" is twice as strong
    judge = _judge(1.0, 0.01, {"author": 1.0, "category": 0.5, "both": 2.0})
    best, options = search_policy(judge, 1.0, 0.33, 0.2)
    assert best["author_diversity"] >= 0.33 and best["served"] >= MAX_COST
    # the lightest: a step weaker along the same path misses the target
    weaker = judge(along(best["path"], best["strength"] - 2.0**-SEARCH_STEPS, 0.2))
    assert weaker["author_diversity"] < 0.33
    # and no policy tried that reaches the target serves better
    reaching = [o for o in options if o["author_diversity"] >= 0.33]
    assert best["served"] == max(o["served"] for o in reaching)
    assert PagePolicy.from_json(best["policy"]).freshness_weight == 0.2
    # bisection: a handful of tries per path, not a grid
    assert len(options) <= 1 + 3 * (1 + SEARCH_STEPS)
    # already diverse enough without a discount: no discount
    plain, tried = search_policy(judge, 1.0, 0.25, 0.0)
    assert plain["strength"] == 0.0 and len(tried) == 1
    assert PagePolicy.from_json(plain["policy"]) == PagePolicy(1.0, 1.0, 1.0, 1.0, 0, False, 0.0)


def test_policy_search_respects_the_cost_bound() -> None:
    # reaching the target costs 5% of the relevance: more than MAX_COST allows
    judge = _judge(1.0, 0.1)
    best, options = search_policy(judge, 1.0, 0.35, 0.2)
    assert best["served"] >= MAX_COST  # the most diverse policy within the cost instead
    cheap = [o for o in options if o["served"] >= MAX_COST]
    assert best["author_diversity"] == max(o["author_diversity"] for o in cheap)
    assert best["author_diversity"] < 0.35
    # searched, not only the paths' ends: the strongest within the cost (0.2) to 1/64
    assert 0.2 - 2.0**-SEARCH_STEPS <= best["strength"] <= 0.2
    # the plain pages already cost 10%: the bound counts from them (0.98 x 0.9), no discount
    # that reaches the target is within it, and the most diverse option within it is the
    # strongest discount that costs at most 2% of the plain pages (0.1 s <= 0.018)
    costly = _judge(0.9, 0.1)
    best, options = search_policy(costly, 1.0, 0.35, 0.2)
    assert best["served"] >= MAX_COST * 0.9 and best["author_diversity"] < 0.35
    assert 0.18 - 2.0**-SEARCH_STEPS <= best["strength"] <= 0.18
    # when even the lightest discount costs too much: no discount
    steep = _judge(0.9, 10.0)
    best, _ = search_policy(steep, 1.0, 0.35, 0.2)
    assert best["strength"] == 0.0


def test_the_cost_bound_counts_from_the_undiscounted_pages_when_they_serve_less() -> None:
    """Pages lose some relevance before any discount (sold-out posts are not served...): the
    policy's cost counts from them. Here the plain pages serve 0.97 of the model's lists and
    the target costs 1.5% of that (0.955 of the model's lists): it is within the bound."""
    judge = _judge(0.97, 0.03)
    best, _ = search_policy(judge, 1.0, 0.35, 0.2)
    assert best["author_diversity"] >= 0.35
    assert MAX_COST * 0.97 <= best["served"] < MAX_COST * 1.0


def test_the_served_pages_make_the_discount_no_stronger_than_they_need() -> None:
    """Validation chose a strength whose validation pages just reach the target; the fitted
    version's pages spread faster (here 1.25x the validation's gain per unit of strength), so
    the calibration finds the weakest strength whose served pages still reach the target,
    along the same path, and never goes stronger than validation chose."""
    judge = _judge(
        1.0, 0.01, {"author": 1.0, "category": 0.5, "both": 0.5}
    )  # only the author path reaches the target
    best, options = search_policy(judge, 1.0, 0.36, 0.2)
    choice = PolicyChoice(PagePolicy.from_json(best["policy"]), 1.0, 0.35, options, 0.36)
    assert 0.55 <= best["strength"] <= 0.65 and best["path"] == "author"

    def served(spread: float, by: Any = judge) -> Any:  # ``by``'s diversity, ``spread`` x faster
        def diversity_of(policy: PagePolicy) -> float:
            return 0.3 + spread * (by(policy)["author_diversity"] - 0.3)

        return diversity_of

    def judge_strength(policy: PagePolicy) -> float:
        return (1.0 - policy.author_decay) / (1.0 - STRONGEST_AUTHOR[0])

    faster = calibrate(choice, served(1.25), 400)
    s = judge_strength(faster.policy)
    assert served(1.25)(faster.policy) >= 0.36  # still reaches the target where served
    # the weakest that does (0.3 + 0.125 s >= 0.36: s >= 0.48), to the bisection's resolution
    assert 0.48 - 1e-3 <= s <= 0.48 + 2.0**-SEARCH_STEPS * best["strength"] + 1e-3
    assert faster.policy.freshness_weight == 0.2 and not faster.policy.no_adjacent_author
    summary = faster.summary()
    assert summary["policy"] == faster.policy.to_json()
    assert summary["served"] == round(best["served"], 5)  # relevance: as validation judged
    cal = summary["served_calibration"]
    assert cal["validation_policy"] == best["policy"] and cal["users"] == 400
    assert cal["strength"] < cal["validation_strength"] and cal["served_diversity"] >= 0.36
    # served pages less diverse than validation's: never stronger than validation chose
    slower = calibrate(choice, served(0.8), 400)
    assert slower.policy == choice.policy
    assert slower.summary()["served_calibration"]["served_diversity"] < 0.36
    # the target out of reach within the cost: validation chose the most diverse policy
    # within it, and the served pages need only reach what that bought on validation
    costly = _judge(1.0, 0.1, {"author": 1.0, "category": 0.5, "both": 0.5})
    best, options = search_policy(costly, 1.0, 0.45, 0.2)
    assert best["author_diversity"] < 0.45 and best["strength"] > 0
    short = PolicyChoice(PagePolicy.from_json(best["policy"]), 1.0, 0.44, options, 0.45)
    lowered = calibrate(short, served(1.25, costly), 400)
    assert lowered.calibration is not None
    assert lowered.calibration["goal_diversity"] == round(best["author_diversity"], 4)
    assert served(1.25, costly)(lowered.policy) >= best["author_diversity"]
    assert lowered.calibration["strength"] < best["strength"]
    # nothing discounted: nothing to calibrate
    plain, tried = search_policy(judge, 1.0, 0.25, 0.2)
    none = PolicyChoice(PagePolicy.from_json(plain["policy"]), 1.0, 0.25, tried, 0.25)
    assert calibrate(none, served(1.25), 400) is none


def test_the_page_policy_is_chosen_on_data_without_timestamps(tmp_path: Path) -> None:
    """Without any timestamp the validation slice has no "now": the policy search must still
    build real pages (it once built empty ones for every option, served 0 and diversity NaN,
    and so kept no discount whatever the reference diversity), and reach the reference's
    author diversity within the cost bound when it can."""
    import pandas as pd

    from feed.data.synth import SynthConfig, generate
    from feed.models.default import TrainConfig, make_blend

    d = tmp_path / "no-times"
    generate(d, SynthConfig(n_users=400, n_posts=600, n_topics=6, seed=3))
    for f in d.glob("*.csv"):
        t = pd.read_csv(f, dtype=str, keep_default_na=False)
        t = t.drop(columns=["ts", "created_at", "expires_at"], errors="ignore")
        if f.name == "posts.csv":  # few authors with many posts each: diversity matters
            t = t.assign(created_at="", author_id="tag:" + t["tags"].str.split("|").str[0])
        t.to_csv(f, index=False)
    data = build(load(d))
    assert not np.isfinite(data.now)
    blend = make_blend(TrainConfig(factors=16, iterations=8, n_candidates=100)).fit(data)
    choice = blend.policy_choice_
    assert choice is not None and choice.options
    for option in choice.options:
        assert option["served"] > 0 and np.isfinite(option["author_diversity"]), option
    chosen = choice.summary()
    reached = [o for o in choice.options if o["author_diversity"] >= choice.target]
    if any(o["served"] >= MAX_COST * choice.model_only for o in reached):
        assert chosen["author_diversity"] >= choice.target
    # the served pages' check: never a stronger discount than validation chose
    validation = PagePolicy.from_json(choice.chosen()["policy"])
    assert blend.page_policy_.author_decay >= validation.author_decay
    assert blend.page_policy_.category_decay >= validation.category_decay
    assert blend.val_split_ == "random"  # nothing has a time: a random validation slice
    if choice.calibration is not None:
        assert chosen["served_calibration"]["users"] > 0
