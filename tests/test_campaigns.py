"""Sponsored campaigns: the merchant's posts at fixed slots of its audience's pages, within the
budget and the cap per user exactly (8 concurrent clients), paced, never to the holdout nor to
users who hid the post or muted its author; free for the organic feed; an honest lift."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime
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
        "end": now + 60,
        "holdout": 0.1,
        **spec,
    }
    resp = shop["client"].post(
        f"/v1/merchants/{shop['m']}/campaigns", json=body, headers=shop["auth"]
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def backdate(r: Any, cid: str, seconds: float) -> None:
    """Set a campaign's start ``seconds`` earlier, as if it had run that long (the API refuses a
    backdated start): its pacing releases that share of the budget. Bumps the counter, as every
    campaign change does, so the workers reload it."""
    cfg = c.decode_json(r.hget(c.CAMPAIGNS_KEY, cid))
    cfg["start"] -= seconds
    r.hset(c.CAMPAIGNS_KEY, cid, c.encode_json(cfg))
    r.incr(c.CAMPAIGNS_GEN_KEY)


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
    backdate(r, cid, 3600)  # the whole budget released: only the budget and the caps bind
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


def test_pacing_holds_back_the_budget_early_in_the_flight(r: Any, shop: dict[str, Any]) -> None:
    """A flight a tenth gone may deliver about a tenth of the budget plus the burst."""
    now = time.time()
    budget = 1000
    camp = campaign(shop, budget_impressions=budget, max_per_user=100, holdout=0.01, end=now + 3240)
    backdate(r, camp["campaign_id"], 360)
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
    r: Any, shop: dict[str, Any], effect: bool
) -> None:
    """The holdout salt is fixed (the campaign id, its default, is random), so the split, like
    the seeded purchases, is the same on every run: with a random split the case without an
    effect failed on 5% of runs, as a 95% interval must."""
    client, m = shop["client"], shop["m"]
    aud = audience(shop, 400)
    camp = campaign(shop, audience_id=aud["audience_id"], holdout=0.5)
    cid = camp["campaign_id"]
    cfg = c.decode_json(r.hget(c.CAMPAIGNS_KEY, cid))
    cfg["salt"] = "report-lift"
    r.hset(c.CAMPAIGNS_KEY, cid, c.encode_json(cfg))
    r.incr(c.CAMPAIGNS_GEN_KEY)  # as every campaign change does: workers reload it
    report_url = f"/v1/merchants/{m}/campaigns/{cid}/report"
    users = [c.text(u) for u in r.zrange(c.audience_key(aud["audience_id"], "users"), 0, -1)]
    assert len(users) >= 200
    held = {u: cp.in_holdout("report-lift", 0.5, u) for u in users}
    rates = {u: (0.2 if held[u] else (0.6 if effect else 0.2)) for u in users}
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


@pytest.mark.parametrize("effect", [True, False])
def test_a_simulated_campaign_whose_posts_sell_shows_a_lift_through_the_real_pages(
    r: Any, shop: dict[str, Any], effect: bool
) -> None:
    """The effect flows through what was served: every audience user fetches a page, and a
    user whose page carried a sponsored post buys it through that post (``purchase.post_id``)
    more often when the posts truly sell (0.5 per chance, two chances, against 0.15 for
    everybody else); when they do not, a sponsored post changes nothing. Delivery comes from the
    reservation script, purchases from ``POST /v1/events`` and the fold: the report's interval
    excludes 0 in the first case and covers it in the second. The holdout salt is fixed, so the
    split (like the seeded purchases) is the same on every run: any salt covers 0 with 95%
    probability when there is no effect."""
    client, m = shop["client"], shop["m"]
    aud = audience(shop, 400)
    camp = campaign(shop, audience_id=aud["audience_id"], holdout=0.5, budget_impressions=5000,
                    max_per_user=2)  # fmt: skip
    cid = camp["campaign_id"]
    cfg = c.decode_json(r.hget(c.CAMPAIGNS_KEY, cid))
    cfg["salt"] = "simulated-lift"
    r.hset(c.CAMPAIGNS_KEY, cid, c.encode_json(cfg))
    backdate(r, cid, 3600)  # the whole budget released: delivery is bound by the cap only
    users = [c.text(u) for u in r.zrange(c.audience_key(aud["audience_id"], "users"), 0, -1)]
    assert len(users) >= 200
    rng = np.random.default_rng(11)
    evs: list[dict[str, Any]] = []
    shown_users = 0
    for u in users:
        got = [x for x in page(client, u) if x.get("sponsored")]
        assert not (got and cp.in_holdout("simulated-lift", 0.5, u)), u
        shown_users += bool(got)
        rate = 0.5 if got and effect else 0.15
        for _ in range(2):
            if rng.random() < rate:
                post = got[0]["post_id"] if got else None
                product = camp["products"][0]
                evs.append({"type": "purchase", "user_id": u, "product_id": product,
                            **({"post_id": post} if post else {})})  # fmt: skip
    exposed = [u for u in users if not cp.in_holdout("simulated-lift", 0.5, u)]
    assert shown_users >= 0.8 * len(exposed)  # the audience really saw the posts
    for i in range(0, len(evs), 400):
        resp = client.post("/v1/events", json={"events": evs[i : i + 400]})
        assert resp.status_code == 202, resp.get_json()
    rep = client.get(f"/v1/merchants/{m}/campaigns/{cid}/report", headers=shop["auth"]).get_json()
    assert rep["groups"]["exposed"]["users"] == len(exposed)
    assert rep["srm"]["mismatch"] is False
    lo, hi = rep["lift_ci"]
    if effect:
        assert lo > 0 and rep["diff_ci"][0] > 0, rep
    else:
        assert lo < 0 < hi and rep["diff_ci"][0] < 0 < rep["diff_ci"][1], rep


# --- bounds: what one merchant can keep, what a worker holds, what a request folds -----------
def test_one_merchant_keeps_a_bounded_number_of_campaigns_sharing_their_audience(
    r: Any, shop: dict[str, Any]
) -> None:
    """Rounds of short campaigns: the oldest ended ones go (with their counters), the kept
    ones read the audience's own key (never a copy) and keep it alive; configs are dropped a
    week after the end."""
    client, m, auth = shop["client"], shop["m"], shop["auth"]
    aud = audience(shop, 50)
    aid = aud["audience_id"]
    made: list[str] = []
    for _ in range(3):
        end = time.time() + 4.0  # room for 51 creates on a loaded machine
        for _ in range(cp.CAMPAIGNS_PER_MERCHANT):
            made.append(campaign(shop, audience_id=aid, end=end)["campaign_id"])
        over = client.post(
            f"/v1/merchants/{m}/campaigns", headers=auth,
            json={"post_ids": sorted(shop["mine"]["posts"])[:1], "audience_id": aid,
                  "budget_impressions": 1, "max_per_user": 1, "slots": [3], "end": end},
        )  # fmt: skip
        assert over.status_code == 409
        assert over.get_json()["error"]["code"] == "too_many_campaigns"
        time.sleep(max(0.0, end - time.time()) + 0.1)
    listed = client.get(f"/v1/merchants/{m}/campaigns", headers=auth).get_json()["campaigns"]
    kept = [x["campaign_id"] for x in listed]
    assert len(made) == 150 and kept == made[-cp.CAMPAIGNS_KEPT_PER_MERCHANT :]
    mine = [x for x in map(c.decode_json, r.hvals(c.CAMPAIGNS_KEY)) if x["merchant_id"] == m]
    assert len(mine) == len(kept) <= cp.CAMPAIGNS_KEPT_PER_MERCHANT
    gone = made[0]
    assert r.exists(*[c.campaign_key(gone, k) for k in ("n", "u", "stop", "reach", "buy")]) == 0
    assert client.get(f"/v1/merchants/{m}/campaigns/{gone}", headers=auth).status_code == 404
    assert not list(r.scan_iter(match="{feed}:cmp:*:aud"))  # no campaign copies its audience
    # the shared audience lives as long as the last campaign's report (end + a week)
    last = listed[-1]
    assert last["status"] == "ended"
    assert r.ttl(c.audience_key(aid, "users")) > cp.RETENTION_S - 60
    kept_until = datetime.fromisoformat(last["kept_until"].replace("Z", "+00:00")).timestamp()
    end = datetime.fromisoformat(last["end"].replace("Z", "+00:00")).timestamp()
    assert kept_until - end == pytest.approx(cp.RETENTION_S, abs=1)
    # a flight longer than the audience's own TTL keeps it alive to its end and a week
    far = campaign(shop, audience_id=aid, end=time.time() + 60 * 86_400)
    assert r.ttl(c.audience_key(aid, "users")) >= 60 * 86_400 + cp.RETENTION_S - 60
    assert r.ttl(c.audience_key(aid, "meta")) >= 60 * 86_400 + cp.RETENTION_S - 60
    assert far["audience_id"] == aid
    # the report still works within that time, from the shared audience
    rep = client.get(f"/v1/merchants/{m}/campaigns/{kept[-1]}/report", headers=auth)
    assert rep.status_code == 200
    groups = rep.get_json()["groups"]
    assert groups["exposed"]["users"] + groups["holdout"]["users"] == aud["size"]


def test_configs_past_their_retention_are_dropped_by_the_next_create(
    r: Any, shop: dict[str, Any]
) -> None:
    """Every merchant's config is dropped once a week has passed since its end (or stop)."""
    client, m, auth = shop["client"], shop["m"], shop["auth"]
    old = campaign(shop)["campaign_id"]
    assert client.post(f"/v1/merchants/{m}/campaigns/{old}/stop", headers=auth).status_code == 200
    # a week and a bit later (its drop time moved back, as the clock would move forward)
    r.zadd(c.CAMPAIGNS_EXPIRY_KEY, {old: time.time() - 1})
    campaign(shop)
    assert r.hget(c.CAMPAIGNS_KEY, old) is None and r.exists(c.campaign_key(old, "stop")) == 0
    assert r.zscore(c.merchant_campaigns_key(m), old) is None
    assert client.get(f"/v1/merchants/{m}/campaigns/{old}", headers=auth).status_code == 404


def test_running_campaigns_are_capped_over_every_merchant(
    redis_url: str, shop: dict[str, Any]
) -> None:
    app = feed_app(redis_url, ADMIN_TOKEN=ADMIN, CAMPAIGNS_LIVE_MAX=3)
    client = app.test_client()
    mine = {**shop, "client": client}
    theirs = {**shop, "client": client, "m": shop["other"], "mine": shop["theirs"],
              "auth": shop["other_auth"]}  # fmt: skip
    ids = [campaign(mine)["campaign_id"], campaign(mine)["campaign_id"]]
    campaign(theirs)
    body = {
        "post_ids": sorted(shop["mine"]["posts"])[:1],
        "audience_id": "all",
        "budget_impressions": 5,
        "max_per_user": 1,
        "slots": [3],
        "end": time.time() + 60,
    }
    url = f"/v1/merchants/{shop['m']}/campaigns"
    resp = client.post(url, json=body, headers=shop["auth"])
    assert resp.status_code == 409
    assert resp.get_json()["error"]["code"] == "too_many_live_campaigns"
    assert client.post(f"{url}/{ids[0]}/stop", headers=shop["auth"]).status_code == 200
    assert client.post(url, json=body, headers=shop["auth"]).status_code == 201


def test_audience_membership_is_decided_in_redis_not_in_the_worker(
    counted: Any,  # noqa: F811
    redis_url: str,
) -> None:
    """A worker holds the configs only: a user taken out of the audience's key gets nothing on
    the next page (no reload); a member's page costs one more round trip, a holdout user's
    none; the audience key shares the campaign keys' slot (one script on a cluster)."""
    from redis.crc import key_slot

    from feed.redisclient import from_url

    r = from_url(redis_url)
    admin = feed_app(redis_url, ADMIN_TOKEN=ADMIN).test_client()
    m, mine, _, _ = biggest(r, c.text(r.get(c.LIVE_KEY)))
    token = admin.post("/v1/admin/merchants", json={"merchant_id": m}, headers=AS_ADMIN)
    shop = {"client": admin, "m": m, "mine": mine, "auth": bearer(token.get_json()["token"])}
    aud = audience(shop, 200)
    aid = aud["audience_id"]
    camp = campaign(shop, audience_id=aid, holdout=0.2, max_per_user=100)
    cid = camp["campaign_id"]
    members = [c.text(u) for u in r.zrange(c.audience_key(aid, "users"), 0, -1)]
    exposed = [u for u in members if not cp.in_holdout(cid, 0.2, u)]
    held = [u for u in members if cp.in_holdout(cid, 0.2, u)]
    counted.get(f"/v1/feed/{exposed[3]}?limit=20")  # loads the configs, and the script, once
    sponsor = counted.application.extensions["feed_sponsor"]
    loaded = sponsor.running(None, time.time())
    assert [x.audience_id for x in loaded] == [aid]  # an id, never the users
    reads, writes, resp = round_trips(lambda: counted.get(f"/v1/feed/{exposed[0]}?limit=20"))
    assert sponsored(resp.get_json()["items"])
    assert reads + writes == 3 and CountingConnection.sent[1] == ["EVALSHA"]
    reads, writes, resp = round_trips(lambda: counted.get(f"/v1/feed/{held[0]}?limit=20"))
    assert not sponsored(resp.get_json()["items"]) and reads + writes == 2
    r.zrem(c.audience_key(aid, "users"), exposed[1])  # no counter bump: no reload
    assert not sponsored(counted.get(f"/v1/feed/{exposed[1]}?limit=20").get_json()["items"])
    assert sponsored(counted.get(f"/v1/feed/{exposed[2]}?limit=20").get_json()["items"])
    slots = {key_slot(k.encode()) for k in (
        c.audience_key(aid, "users"), c.campaign_key(cid, "n"), c.campaign_key(cid, "u"),
        c.campaign_key(cid, "stop"))}  # fmt: skip
    assert len(slots) == 1
    r.close()


def test_a_backdated_start_is_refused_or_starts_now(r: Any, shop: dict[str, Any]) -> None:
    """Pacing and the report count from the real start: a start more than a minute back is a
    400 naming the field; one a few seconds back starts now, and a purchase made before it
    counts for nothing."""
    client, m, auth = shop["client"], shop["m"], shop["auth"]
    aud = audience(shop, 100)
    buyer = aud["users"][0]
    bought = [{"type": "purchase", "user_id": buyer, "product_id": p}
              for p in sorted(shop["mine"]["products"])]  # fmt: skip
    assert client.post("/v1/events", json={"events": bought}).status_code == 202
    now = time.time()
    body = {
        "post_ids": sorted(shop["mine"]["posts"])[:2],
        "audience_id": aud["audience_id"],
        "budget_impressions": 1000,
        "max_per_user": 5,
        "slots": [3],
        "end": now + 3600,
    }
    url = f"/v1/merchants/{m}/campaigns"
    resp = client.post(url, json={**body, "start": now - 3600}, headers=auth)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_start"
    assert "start" in resp.get_json()["error"]["message"]
    resp = client.post(url, json={**body, "start": now - 30}, headers=auth)
    assert resp.status_code == 201
    out = resp.get_json()
    start = datetime.fromisoformat(out["start"].replace("Z", "+00:00")).timestamp()
    assert start >= now - 1
    # pacing: right after the start only the burst is released
    for i in range(40):
        page(client, f"u{i}")
    got = client.get(f"{url}/{out['campaign_id']}", headers=auth).get_json()
    assert got["delivered_impressions"] <= max(1, 1000 * cp.BURST_SHARE) + 2
    rep = client.get(f"{url}/{out['campaign_id']}/report", headers=auth).get_json()
    total = rep["groups"]["exposed"]["purchases"] + rep["groups"]["holdout"]["purchases"]
    assert total == 0


def test_own_and_sold_out_posts_are_never_sponsored(r: Any, shop: dict[str, Any]) -> None:
    client, m = shop["client"], shop["m"]
    posts = sorted(shop["mine"]["posts"])
    author = shop["mine"]["posts"][posts[0]]
    own = [p for p in posts if shop["mine"]["posts"][p] == author][:2]
    camp = campaign(shop, post_ids=own, max_per_user=100, holdout=0.01)
    assert sponsored(page(client, "u7"))  # an ordinary user sees them
    for _ in range(3):
        assert sponsored(page(client, author)) == []  # the author never sees their own
    # every product of the campaign's posts sold out: none is sponsored any more
    admin = feed_app(shop["app"].config["REDIS_URL"], ADMIN_TOKEN=ADMIN).test_client()
    for p in camp["products"]:
        resp = admin.put(f"/v1/products/{p}", json={"in_stock": False}, headers=AS_ADMIN)
        assert resp.status_code in (200, 201), resp.get_json()
    assert sponsored(page(client, "u8")) == []
    assert m == camp["merchant_id"]
