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
from feed.evaluation.pages import PageBuilder
from feed.features.matrices import build
from feed.serving.policy import GRID, PagePolicy


def test_manifest_records_the_page_policy_and_the_service_applies_it(
    artifact: Path, published: str, app: Any
) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    model = manifest["model"]
    policy = PagePolicy.from_json(model["page_policy"])
    assert model["page_policy_choice"]["policy"] == model["page_policy"]
    assert policy in {
        *GRID,
        *(PagePolicy(**{**p.to_json(), "no_adjacent_author": True}) for p in GRID),
    }
    assert manifest["params"]["split"] in ("global-time", "user-time", "random")  # resolved
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
