"""Sponsored campaigns: the merchant's posts at fixed slots of its audience's pages, within the
budget and the cap per user exactly (8 concurrent clients), paced, never to the holdout nor to
users who hid the post or muted its author; free for the organic feed; an honest lift."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from helpers import feed_app
from test_audiences import ADMIN, AS_ADMIN, bearer, biggest
from test_feed_behaviour import CountingConnection, counted, round_trips  # noqa: F401

from feed import contract as c
from service import campaigns as cp


@pytest.fixture
def shop(r: Any, redis_url: str, published: str) -> dict[str, Any]:
    app = feed_app(redis_url, ADMIN_TOKEN=ADMIN)
    client = app.test_client()
    m, mine, other, theirs = biggest(r, published)
    tokens = {}
    for x in (m, other):
        resp = client.post("/v1/admin/merchants", json={"merchant_id": x}, headers=AS_ADMIN)
        tokens[x] = resp.get_json()["token"]
    return {
        "app": app,
        "client": client,
        "m": m,
        "mine": mine,
        "theirs": theirs,
        "auth": bearer(tokens[m]),
        "other": other,
        "other_auth": bearer(tokens[other]),
    }


def audience(shop: dict[str, Any], size: int = 400) -> dict[str, Any]:
    resp = shop["client"].post(
        f"/v1/merchants/{shop['m']}/audiences",
        json={"product_ids": sorted(shop["mine"]["products"]), "size": size},
        headers=shop["auth"],
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def campaign(shop: dict[str, Any], **spec: Any) -> dict[str, Any]:
    now = time.time()
    body = {
        "post_ids": sorted(shop["mine"]["posts"])[:3],
        "audience_id": "all",
        "budget_impressions": 1000,
        "max_per_user": 2,
        "slots": [3, 10],
        "start": now - 3600,
        "end": now + 60,
        "holdout": 0.1,
        **spec,
    }
    resp = shop["client"].post(
        f"/v1/merchants/{shop['m']}/campaigns", json=body, headers=shop["auth"]
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def page(client: Any, user: str, limit: int = 20) -> list[dict[str, Any]]:
    resp = client.get(f"/v1/feed/{user}", query_string={"limit": limit})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["items"]  # type: ignore[no-any-return]


def sponsored(items: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(i, x["post_id"]) for i, x in enumerate(items) if x.get("sponsored")]


def test_sponsored_posts_enter_the_audiences_pages_at_their_slots(shop: dict[str, Any]) -> None:
    client, m = shop["client"], shop["m"]
    aud = audience(shop, 100)
    camp = campaign(shop, audience_id=aud["audience_id"], holdout=0.2)
    cid, posts = camp["campaign_id"], set(camp["post_ids"])
    members = aud["users"]
    exposed = [u for u in members if not cp.in_holdout(cid, 0.2, u)]
    held = [u for u in members if cp.in_holdout(cid, 0.2, u)]
    assert exposed and held
    u = exposed[0]
    items = page(client, u)
    got = sponsored(items)
    assert [i for i, _ in got] == [3, 10] and {p for _, p in got} <= posts
    assert len(items) == 20 and len({x["post_id"] for x in items}) == 20
    for i, _ in got:
        assert items[i]["merchant_id"] == m and items[i]["campaign_id"] == cid
        assert items[i]["reason"] == "sponsored"
    assert sponsored(page(client, u)) == []  # max_per_user 2: spent on the first page
    for h in held[:5]:  # the holdout never sees them
        assert sponsored(page(client, h)) == []
    outsider = next(f"u{i}" for i in range(400) if f"u{i}" not in set(members) and f"u{i}" != u)
    assert sponsored(page(client, outsider)) == []
    listed = client.get(f"/v1/merchants/{m}/campaigns/{cid}", headers=shop["auth"]).get_json()
    assert listed["delivered_impressions"] == 2 and listed["users_reached"] == 1
    assert listed["status"] == "running"


def test_hidden_posts_and_muted_authors_are_never_sponsored(shop: dict[str, Any]) -> None:
    client = shop["client"]
    posts = sorted(shop["mine"]["posts"])[:3]
    camp = campaign(shop, post_ids=posts, max_per_user=50, holdout=0.01)
    users = [f"u{i}" for i in range(60) if not cp.in_holdout(camp["campaign_id"], 0.01, f"u{i}")]
    a, b = users[0], users[1]
    hide = {"events": [{"type": "hide_post", "user_id": a, "post_id": p} for p in posts[:2]]}
    assert client.post("/v1/events", json=hide).status_code == 202
    author = shop["mine"]["posts"][posts[0]]
    mute = {"events": [{"type": "see_fewer_author", "user_id": b, "author_id": author}]}
    assert client.post("/v1/events", json=mute).status_code == 202
    muted_posts = {p for p in posts if shop["mine"]["posts"][p] == author}
    shown_a, shown_b = set(), set()
    for _ in range(4):
        shown_a |= {p for _, p in sponsored(page(client, a))}
        shown_b |= {p for _, p in sponsored(page(client, b))}
    assert shown_a and not shown_a & set(posts[:2])
    assert not shown_b & muted_posts


def test_stop_takes_effect_at_once_and_bad_campaigns_are_refused(shop: dict[str, Any]) -> None:
    client, m, auth = shop["client"], shop["m"], shop["auth"]
    camp = campaign(shop, holdout=0.01, max_per_user=100)
    cid = camp["campaign_id"]
    other = feed_app(shop["app"].config["REDIS_URL"]).test_client()  # another worker
    user = next(f"u{i}" for i in range(50) if not cp.in_holdout(cid, 0.01, f"u{i}"))
    assert sponsored(page(other, user))
    stopped = client.post(f"/v1/merchants/{m}/campaigns/{cid}/stop", headers=auth)
    assert stopped.status_code == 200 and stopped.get_json()["status"] == "stopped"
    assert sponsored(page(other, user)) == []
    listed = client.get(f"/v1/merchants/{m}/campaigns", headers=auth).get_json()["campaigns"]
    assert [x["status"] for x in listed] == ["stopped"]
    url = f"/v1/merchants/{m}/campaigns"
    base = {"post_ids": camp["post_ids"], "audience_id": "all", "budget_impressions": 10,
            "max_per_user": 1, "slots": [3], "end": time.time() + 60}  # fmt: skip
    their_post = sorted(set(shop["theirs"]["posts"]) - set(shop["mine"]["posts"]))[0]
    resp = client.post(url, json={**base, "post_ids": [their_post]}, headers=auth)
    assert resp.status_code == 404 and their_post in resp.get_json()["error"]["message"]
    resp = client.post(url, json={**base, "audience_id": "aud-nope"}, headers=auth)
    assert resp.status_code == 404
    for bad, field in (
        ({"budget_impressions": cp.BUDGET_MAX + 1}, "budget_impressions"),
        ({"slots": [1, 2, 3]}, "slots"),
        ({"slots": [-1]}, "slots"),
        ({"end": time.time() - 10}, "end"),
        ({"holdout": 0.9}, "holdout"),
        ({"max_per_user": 0}, "max_per_user"),
    ):
        resp = client.post(url, json={**base, **bad}, headers=auth)
        assert resp.status_code == 400, bad
        assert field in resp.get_json()["error"]["message"] + resp.get_json()["error"]["code"]
    # another merchant's token opens none of it
    other_auth = shop["other_auth"]
    assert client.get(f"{url}/{cid}", headers=other_auth).status_code == 404
    theirs = f"/v1/merchants/{shop['other']}/campaigns/{cid}"
    assert client.get(theirs, headers=other_auth).status_code == 404
    assert client.post(f"{theirs}/stop", headers=other_auth).status_code == 404


def test_an_organic_page_costs_nothing_more_and_a_sponsored_one_one_round_trip(
    counted: Any,  # noqa: F811
    redis_url: str,
) -> None:
    """The campaigns counter rides in the user's read: 0 extra round trips without a running
    campaign, exactly one (the reservation script) with one."""
    counted.get("/v1/feed/u40?limit=20")
    reads, writes, _ = round_trips(lambda: counted.get("/v1/feed/u41?limit=20"))
    assert (reads, writes) == (1, 1), CountingConnection.sent
    # a campaign starts (created through another app)
    from feed.redisclient import from_url

    r = from_url(redis_url)
    admin = feed_app(redis_url, ADMIN_TOKEN=ADMIN).test_client()
    m, mine, _, _ = biggest(r, c.text(r.get(c.LIVE_KEY)))
    token = admin.post("/v1/admin/merchants", json={"merchant_id": m}, headers=AS_ADMIN)
    shop = {"client": admin, "m": m, "mine": mine, "auth": bearer(token.get_json()["token"])}
    camp = campaign(shop, holdout=0.01, max_per_user=100)
    user = next(
        f"u{i}" for i in range(50, 99) if not cp.in_holdout(camp["campaign_id"], 0.01, f"u{i}")
    )
    counted.get("/v1/feed/u42?limit=20")  # this process notices the counter: reloads once
    reads, writes, resp = round_trips(lambda: counted.get(f"/v1/feed/{user}?limit=20"))
    assert sponsored(resp.get_json()["items"])
    assert reads + writes == 3, CountingConnection.sent  # + the reservation script
    assert CountingConnection.sent[1] == ["EVALSHA"]
    r.close()


def test_budget_and_caps_hold_exactly_under_8_concurrent_clients(
    r: Any, shop: dict[str, Any]
) -> None:
    budget, cap = 150, 3
    camp = campaign(shop, budget_impressions=budget, max_per_user=cap, holdout=0.1)
    cid = camp["campaign_id"]
    users = [f"u{i}" for i in range(400)]
    shown: Counter[str] = Counter()
    per_page: list[int] = []
    problems: list[str] = []
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        client = shop["app"].test_client()
        for j in range(60):
            u = users[(k * 60 + j * 7) % len(users)]
            items = page(client, u)
            got = sponsored(items)
            with lock:
                per_page.append(len(got))
                shown.update(u for _ in got)
                if len({x["post_id"] for x in items}) != len(items):
                    problems.append(f"duplicate on {u}'s page")
                if got and cp.in_holdout(cid, 0.1, u):
                    problems.append(f"holdout user {u} was shown one")

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems[:5]
    delivered = sum(shown.values())
    assert delivered == budget == int(r.get(c.campaign_key(cid, "n")))  # 0 over-delivery
    assert max(shown.values()) <= cap and max(per_page) <= cp.PAGE_MAX
    stored = {c.text(k): int(v) for k, v in r.hgetall(c.campaign_key(cid, "u")).items()}
    assert stored == dict(shown)


def test_pacing_holds_back_the_budget_early_in_the_flight(shop: dict[str, Any]) -> None:
    """A flight a tenth gone may deliver about a tenth of the budget plus the burst."""
    now = time.time()
    budget = 1000
    camp = campaign(
        shop, budget_impressions=budget, max_per_user=100, holdout=0.01,
        start=now - 360, end=now + 3240,
    )  # fmt: skip
    client = shop["client"]
    for i in range(120):
        page(client, f"u{i}")
    got = client.get(f"/v1/merchants/{shop['m']}/campaigns/{camp['campaign_id']}",
                     headers=shop["auth"]).get_json()  # fmt: skip
    allowed = budget * 0.1 + max(1, budget * cp.BURST_SHARE) + 2
    assert 0.1 * budget <= got["delivered_impressions"] <= allowed


def purchases(client: Any, rates: dict[str, float], products: list[str], seed: int) -> None:
    """Scripted purchases: each user buys a boosted product with probability ``rates[user]``,
    up to twice."""
    rng = np.random.default_rng(seed)
    evs = []
    for u, p in rates.items():
        for _ in range(2):
            if rng.random() < p:
                evs.append({"type": "purchase", "user_id": u, "product_id": products[0]})
    for i in range(0, len(evs), 400):
        resp = client.post("/v1/events", json={"events": evs[i : i + 400]})
        assert resp.status_code == 202, resp.get_json()


@pytest.mark.parametrize("effect", [True, False])
def test_a_campaign_report_finds_a_true_lift_and_no_false_one(
    shop: dict[str, Any], effect: bool
) -> None:
    client, m = shop["client"], shop["m"]
    aud = audience(shop, 400)
    camp = campaign(shop, audience_id=aud["audience_id"], holdout=0.5)
    cid = camp["campaign_id"]
    report_url = f"/v1/merchants/{m}/campaigns/{cid}/report"
    users = [
        c.text(u) for u in client.application.extensions["feed_redis"].zrange(
            c.campaign_key(cid, "aud"), 0, -1)
    ]  # fmt: skip
    assert len(users) >= 200
    rates = {u: (0.2 if cp.in_holdout(cid, 0.5, u) else (0.6 if effect else 0.2)) for u in users}
    purchases(client, rates, camp["products"], seed=7 if effect else 8)
    # a purchase of another product, or of a non-member, counts for nothing
    noise = [{"type": "purchase", "user_id": "stranger", "product_id": camp["products"][0]}]
    client.post("/v1/events", json={"events": noise})
    rep = client.get(report_url, headers=shop["auth"]).get_json()
    g = rep["groups"]
    assert g["exposed"]["users"] + g["holdout"]["users"] == len(users)
    assert rep["srm"]["mismatch"] is False
    lo, hi = rep["lift_ci"]
    if effect:
        assert lo > 0 and rep["diff_ci"][0] > 0
    else:
        assert lo < 0 < hi and rep["diff_ci"][0] < 0 < rep["diff_ci"][1]
    # incremental and exactly once: a second report folds nothing new and says the same
    again = client.get(report_url, headers=shop["auth"]).get_json()
    assert again["folded_entries"] == 0 and again["groups"] == g
