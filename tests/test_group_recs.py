"""Group-buying recommendations: deals and ties from training to Redis, and the three
endpoints (deals, joinable groups, invitees) on a version trained on generated data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import redis
from helpers import feed_app
from test_feed_behaviour import CountingConnection, round_trips

from feed import artifacts
from feed import contract as c


def _friends(dataset_dir: Path) -> dict[str, set[str]]:
    truth = json.loads((dataset_dir / "synth_truth.json").read_text())
    out: dict[str, set[str]] = {}
    for a, b in truth["friendships"]:
        out.setdefault(a, set()).add(b)
        out.setdefault(b, set()).add(a)
    return out


def _groups(art: Path) -> dict[str, np.ndarray]:
    return artifacts.read(art).arrays("groups")


def _ties(art: Path) -> dict[str, dict[str, float]]:
    g = _groups(art)
    users = g["user_ids"]
    out = {}
    for u, items, w in zip(g["tie_users"], g["tie_items"], g["tie_weights"], strict=True):
        ok = items >= 0
        out[str(users[u])] = dict(zip(users[items[ok]].tolist(), w[ok].tolist(), strict=True))
    return out


def test_deals_and_ties_round_trip_from_artifact_to_redis(
    r: Any, artifact: Path, published: str
) -> None:
    g = _groups(artifact)
    manifest = artifacts.read(artifact).manifest
    assert manifest["counts"]["deal_users"] == len(g["deal_users"]) > 0
    assert manifest["group_model"]["learned"] is True
    users, products, names = g["user_ids"], g["product_ids"], g["deal_reason_names"]
    for row in (0, len(g["deal_users"]) // 2, len(g["deal_users"]) - 1):
        uid = str(users[g["deal_users"][row]])
        deals = c.decode_deals(r.get(c.user_key(uid, c.USER_DEALS, published)))
        ok = g["deal_items"][row] >= 0
        assert [d["product_id"] for d in deals] == products[g["deal_items"][row][ok]].tolist()
        assert [d["reason"] for d in deals] == names[g["deal_reasons"][row][ok]].tolist()
        scores = [d["score"] for d in deals]
        assert scores == sorted(scores, reverse=True)
        assert np.allclose(scores, g["deal_scores"][row][ok], atol=1e-4)
    ties = _ties(artifact)
    uid = next(iter(ties))
    assert c.decode_ties(r.get(c.user_key(uid, c.USER_TIES, published))) == pytest.approx(
        ties[uid], abs=1e-4
    )
    meta = json.loads(r.hget(c.VERSIONS_KEY, published))
    assert meta["state"] == c.STATE_READY
    n_deals = sum(1 for _ in r.scan_iter(match=f"{{u:*}}:{c.USER_DEALS}:{published}", count=1000))
    n_ties = sum(1 for _ in r.scan_iter(match=f"{{u:*}}:{c.USER_TIES}:{published}", count=1000))
    assert (n_deals, n_ties) == (len(g["deal_users"]), len(g["tie_users"]))
    assert r.exists(c.version_key(published, c.GROUP_POPULAR))


def test_version_delete_removes_deals_and_ties(r: Any, artifact: Path, published: str) -> None:
    from feed import versions

    assert versions._version_key_re(published).fullmatch(c.user_key("u1", c.USER_DEALS, published))
    assert versions._version_key_re(published).fullmatch(c.user_key("u1", c.USER_TIES, published))


def test_deals_endpoint(client: Any, artifact: Path, dataset_dir: Path) -> None:
    g = _groups(artifact)
    uid = str(g["user_ids"][g["deal_users"][0]])
    body = client.get(f"/v1/users/{uid}/deals?limit=7").get_json()
    items = body["items"]
    assert len(items) == 7 and body["basis"] == "user"
    assert {"product_id", "score", "reason", "posts", "friends"} <= set(items[0])
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    posts = {
        row["post_id"]: row["product_ids"].split("|") for row in _csv(dataset_dir / "posts.csv")
    }
    for it in items:
        assert all(it["product_id"] in posts[p] for p in it["posts"])
    ties = _ties(artifact).get(uid, {})
    assert all(f in ties for it in items for f in it["friends"])
    cold = client.get("/v1/users/nobody-at-all/deals?limit=3").get_json()
    assert cold["basis"] == "popular" and len(cold["items"]) == 3
    assert {i["reason"] for i in cold["items"]} == {"popular_groups"}
    bad = client.get(f"/v1/users/{uid}/deals?limit=0")
    assert bad.status_code == 400 and "limit" in bad.get_json()["error"]["message"]


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _product(client: Any, uid: str) -> str:
    return str(client.get(f"/v1/users/{uid}/deals?limit=1").get_json()["items"][0]["product_id"])


def _mute(client: Any, user: str, author: str) -> None:
    """``user`` blocks ``author`` (``see_fewer_author``, as the feed's block does)."""
    body = {"events": [{"type": "see_fewer_author", "user_id": user, "author_id": author}]}
    resp = client.post("/v1/events", json=body)
    assert resp.status_code in (200, 202), resp.get_json()


def _start(client: Any, initiator: str, product: str, group_id: str, size: int = 3) -> None:
    resp = client.post(
        "/v1/groups",
        json={"initiator_id": initiator, "product_id": product, "size": size, "group_id": group_id},
    )
    assert resp.status_code == 201, resp.get_json()


def test_invitees_rank_true_friends_above_chance(
    client: Any, artifact: Path, dataset_dir: Path
) -> None:
    friends = _friends(dataset_dir)
    ties = _ties(artifact)
    starters = [u for u in ties if len(ties[u]) >= 5][:15]
    assert len(starters) >= 10
    hits = shown = 0
    for i, uid in enumerate(starters):
        _start(client, uid, _product(client, uid), f"inv-{i}")
        items = client.get(f"/v1/groups/inv-{i}/invitees?limit=5&user_id={uid}").get_json()["items"]
        assert uid not in {it["user_id"] for it in items}
        assert [it["score"] for it in items] == sorted((it["score"] for it in items), reverse=True)
        shown += len(items)
        hits += sum(it["user_id"] in friends.get(uid, set()) for it in items)
    n_users = len(_groups(artifact)["user_ids"])
    chance = np.mean([len(friends.get(u, ())) for u in starters]) / n_users
    assert shown and hits / shown > 10 * chance, (hits, shown, chance)
    first = starters[0]
    joined = client.post(
        "/v1/groups/inv-0/join", json={"user_id": items_of(client, "inv-0", first)}
    )
    assert joined.status_code == 200
    after = client.get(f"/v1/groups/inv-0/invitees?limit=50&user_id={first}").get_json()
    assert not set(joined.get_json()["members"]) & {it["user_id"] for it in after["items"]}
    assert client.get(f"/v1/groups/nope/invitees?user_id={first}").status_code == 404
    # the list is the initiator's alone: a member or a stranger gets 403, no user 400
    member = joined.get_json()["members"][1]
    other = client.get(f"/v1/groups/inv-0/invitees?user_id={member}")
    assert other.status_code == 403 and other.get_json()["error"]["code"] == "not_initiator"
    assert client.get("/v1/groups/inv-0/invitees").status_code == 400


def items_of(client: Any, group_id: str, initiator: str) -> str:
    url = f"/v1/groups/{group_id}/invitees?limit=1&user_id={initiator}"
    return str(client.get(url).get_json()["items"][0]["user_id"])


# a group id may hold spaces and some punctuation (the group feed's members are "<id> <weight>")
@pytest.mark.parametrize("gid", ["fan-1", "fan 1 (r&b)"])
def test_friends_open_groups_reach_their_ties(client: Any, artifact: Path, gid: str) -> None:
    ties = _ties(artifact)
    uid = next(u for u in ties if len(ties[u]) >= 3)
    tie = next(iter(ties[uid]))
    product = _product(client, uid)
    _start(client, uid, product, gid, size=3)
    path = f"/v1/groups/{quote(gid, safe='')}"
    body = client.get(f"/v1/users/{tie}/groups?limit=10").get_json()
    mine = [it for it in body["items"] if it["group_id"] == gid]
    assert mine, body
    it = mine[0]
    assert it["initiator_id"] == uid and it["product_id"] == product and it["size"] == 3
    assert it["members"] == [uid] and it["reason"].startswith(f"friend_started:{uid}")
    assert it["score"] > 0 and it["expires_at"]
    stranger = next(  # neither a tie of the initiator nor a friend of one
        u
        for u in _groups(artifact)["user_ids"].tolist()
        if u != uid and u not in ties[uid] and not set(ties.get(u, {})) & set(ties[uid])
    )
    assert gid not in {
        x["group_id"] for x in client.get(f"/v1/users/{stranger}/groups").get_json()["items"]
    }
    assert client.post(f"{path}/join", json={"user_id": tie}).status_code == 200
    # a member is not offered the group again
    assert gid not in {
        x["group_id"] for x in client.get(f"/v1/users/{tie}/groups").get_json()["items"]
    }
    # a full group is offered to nobody
    other = next((t for t in ties[uid] if t != tie), None)
    if other is not None:
        before = client.get(f"/v1/users/{other}/groups").get_json()["items"]
        assert gid in {x["group_id"] for x in before}
        third = "someone-else"
        assert client.post(f"{path}/join", json={"user_id": third}).status_code == 200
        after = client.get(f"/v1/users/{other}/groups").get_json()["items"]
        assert gid not in {x["group_id"] for x in after}


def test_friends_of_friends_groups_come_after_friends_groups(
    r: Any, client: Any, artifact: Path, published: str
) -> None:
    """A group reaches, after the groups of the user's own ties, the users whose strongest
    ties it was fanned out to: scored at the weight of both steps (``hop_weight``)."""
    from feed.serving.groups import (
        HOP_TIES,
        affinities,
        category_shares,
        decode_serve_params,
        hop_weight,
        pair_score,
    )

    ties = _ties(artifact)
    # user and friend are each other's ties; friend (one of user's strongest) is uid's tie,
    # user is not: friend's group reaches user directly, uid's through friend
    uid, user, friend = next(
        (i, u, f) for i in ties for u in ties if u != i and u not in ties[i]
        for f in list(ties[u])[:HOP_TIES] if f in ties[i] and u in ties.get(f, {})
    )  # fmt: skip
    _start(client, uid, _product(client, uid), "hop-1")
    _start(client, friend, _product(client, friend), "direct-1")
    items = client.get(f"/v1/users/{user}/groups?limit=50").get_json()["items"]
    reasons = {it["group_id"]: it["reason"] for it in items}
    assert reasons["hop-1"].startswith(f"friend_of_friend_started:{uid}"), items
    assert reasons["direct-1"].startswith(f"friend_started:{friend}"), items
    order = [it["group_id"] for it in items]
    direct = [g for g in order if reasons[g].startswith("friend_started:")]
    assert order[: len(direct)] == direct and order.index("hop-1") >= len(direct)
    weight = max(
        hop_weight(p, ties[uid][v]) for v, p in list(ties[user].items())[:HOP_TIES]
        if v in ties[uid]
    )  # fmt: skip
    params = decode_serve_params(r.get(c.version_key(published, c.GROUP_PAIR)))["join"]
    deals = c.decode_deals(r.get(c.user_key(user, c.USER_DEALS, published)))
    hop = next(it for it in items if it["group_id"] == "hop-1")
    a = affinities(deals).get(hop["product_id"], 0.0)
    category = client.application.extensions["feed_store"].table(published).product_category
    cat_share = category_shares(deals, category).get(category.get(hop["product_id"], ""), 0.0)
    assert hop["score"] == pytest.approx(pair_score(weight, a, params, cat_share), abs=1e-4)
    # a friend of a friend the user blocked: their group is no longer offered
    _mute(client, user, uid)
    after = {
        it["group_id"] for it in client.get(f"/v1/users/{user}/groups?limit=50").get_json()["items"]
    }
    assert "hop-1" not in after and "direct-1" in after


def test_invitees_reach_friends_of_friends_after_the_ties(
    r: Any, client: Any, artifact: Path, published: str
) -> None:
    """When the initiator's ties leave room, friends of friends follow them (every tie first),
    weighted by ``hop_invitees`` of the published ties and scored by the invite pair model;
    with a list the ties fill, none."""
    from feed.serving.groups import (
        HOP_TIES,
        affinities,
        category_shares,
        decode_serve_params,
        hop_invitees,
        pair_score,
    )

    ties = _ties(artifact)
    uid = min((u for u in ties if ties[u]), key=lambda u: (len(ties[u]), u))
    _start(client, uid, _product(client, uid), "fof-1")
    limit = len(ties[uid]) + 20
    url = f"/v1/groups/fof-1/invitees?limit={limit}&user_id={uid}"
    items = client.get(url).get_json()["items"]
    n = len(ties[uid])
    assert {it["user_id"] for it in items[:n]} == set(ties[uid])
    assert all(it["reason"].startswith("friend") for it in items[:n])
    hop = hop_invitees(ties[uid], [ties.get(v, {}) for v in list(ties[uid])[:HOP_TIES]], {uid})
    rest = items[n:]
    assert rest and len(rest) == min(len(hop), 20)
    # a friend of a friend's predicted taste is never named to the initiator
    assert {it["reason"] for it in rest} == {"friend_of_friend"}
    assert [it["score"] for it in rest] == sorted((it["score"] for it in rest), reverse=True)
    params = decode_serve_params(r.get(c.version_key(published, c.GROUP_PAIR)))["invite"]
    category = client.application.extensions["feed_store"].table(published).product_category
    product = client.get("/v1/groups/fof-1").get_json()["product_id"]
    for it in rest:
        assert it["user_id"] in hop and it["user_id"] != uid
        deals = c.decode_deals(r.get(c.user_key(it["user_id"], c.USER_DEALS, published)))
        a = affinities(deals).get(product, 0.0)
        share = category_shares(deals, category).get(category.get(product, ""), 0.0)
        want = pair_score(hop[it["user_id"]], a, params, share)
        assert it["score"] == pytest.approx(want, abs=1e-4)
    # a list the ties fill has no friend of a friend
    short = client.get(f"/v1/groups/fof-1/invitees?limit={n}&user_id={uid}").get_json()
    assert [it["user_id"] for it in short["items"]] == [it["user_id"] for it in items[:n]]


def test_group_feed_is_capped_and_expires(r: Any, client: Any, artifact: Path) -> None:
    ties = _ties(artifact)
    uid = next(u for u in ties if len(ties[u]) >= 1)
    tie = next(iter(ties[uid]))
    _start(client, uid, _product(client, uid), "cap-1")
    key = c.user_key(tie, c.USER_GROUP_FEED)
    assert 0 < r.ttl(key) <= 7 * 86_400
    assert r.zcard(key) <= 200


@pytest.fixture
def counted(redis_url: str, published: str) -> Iterator[Any]:
    """A client of an app with production-like caches whose Redis traffic is recorded."""
    app = feed_app(redis_url, VERSION_CACHE_S=60.0, GLOBAL_CACHE_S=60.0)
    pool = redis.ConnectionPool.from_url(
        redis_url, connection_class=CountingConnection, socket_timeout=5.0
    )
    client = redis.Redis(connection_pool=pool)
    app.extensions["feed_redis"] = app.extensions["feed_store"].r = client
    yield app.test_client()
    client.close()


def test_joinable_groups_cost_at_most_one_round_trip_over_a_feed_page(
    counted: Any, artifact: Path
) -> None:
    ties = _ties(artifact)
    uid = next(u for u in ties if len(ties[u]) >= 2)
    tie = next(iter(ties[uid]))
    for i in range(3):
        _start(counted, uid, _product(counted, uid), f"rt-{i}")
    counted.get(f"/v1/feed/{tie}?limit=10")  # warm the caches (version, table)
    counted.get(f"/v1/users/{tie}/groups")
    page_reads, page_writes, _ = round_trips(lambda: counted.get(f"/v1/feed/{tie}?limit=10"))
    reads, writes, resp = round_trips(lambda: counted.get(f"/v1/users/{tie}/groups?limit=10"))
    assert resp.status_code == 200 and len(resp.get_json()["items"]) >= 3
    assert writes == 0 and reads + writes <= page_reads + page_writes + 1
    assert reads <= 3, CountingConnection.sent  # + friends of friends' groups when room is left
    reads, writes, _ = round_trips(lambda: counted.get(f"/v1/users/{tie}/deals"))
    assert (reads, writes) == (1, 0), CountingConnection.sent


def test_invitees_cost_three_reads_at_most(counted: Any, artifact: Path) -> None:
    """The group and the ties, their deals (with their ties when they leave room), then the
    friends of friends' deals: never more (and no write)."""
    ties = _ties(artifact)
    uid = min((u for u in ties if ties[u]), key=lambda u: (len(ties[u]), u))
    _start(counted, uid, _product(counted, uid), "rt-inv")
    url = f"/v1/groups/rt-inv/invitees?user_id={uid}&limit="
    counted.get(url + "5")  # warm the caches (version, table, pair weights)
    for limit, most in ((len(ties[uid]), 3), (len(ties[uid]) + 20, 4)):
        reads, writes, resp = round_trips(lambda lim=limit: counted.get(url + str(lim)))
        assert resp.status_code == 200 and resp.get_json()["items"]
        assert writes == 0 and reads <= most, CountingConnection.sent


def test_pair_model_is_learned_published_and_scores_invitees(
    r: Any, client: Any, artifact: Path, published: str
) -> None:
    """The invitee/join scores come from the pair model learned on a validation slice of the
    groups: recorded in the manifest, published once per version, and what the service ranks
    invitees by (published tie part x the invitee's affinity for the product and category)."""
    from feed.serving.groups import affinities, category_shares, decode_serve_params, pair_score

    model = artifacts.read(artifact).manifest["group_model"]
    assert model["pair_learned"] is True and model["pair_validation"]["positives"] >= 10
    assert set(model["pair_weights"]) >= {"strength", "joined_theirs", "affinity", "category"}
    params = decode_serve_params(r.get(c.version_key(published, c.GROUP_PAIR)))
    assert set(params) == {"invite", "join"}
    assert params["invite"]["affinity"] == pytest.approx(model["pair_weights"]["affinity"], 1e-4)
    ties = _ties(artifact)
    assert all(0.0 < w < 1.0 for t in ties.values() for w in t.values())  # probabilities
    uid = next(u for u in ties if len(ties[u]) >= 5)
    product = _product(client, uid)
    _start(client, uid, product, "pair-1")
    n = len(ties[uid])  # the ties fill the list (friends of friends come after them)
    items = client.get(f"/v1/groups/pair-1/invitees?limit={n}&user_id={uid}").get_json()["items"]
    assert {it["user_id"] for it in items} == set(ties[uid])
    category = client.application.extensions["feed_store"].table(published).product_category
    published_ties = c.decode_ties(r.get(c.user_key(uid, c.USER_TIES, published)))
    for it in items:
        deals = c.decode_deals(r.get(c.user_key(it["user_id"], c.USER_DEALS, published)))
        a = affinities(deals).get(product, 0.0)
        cat = category_shares(deals, category).get(category.get(product, ""), 0.0)
        expected = pair_score(published_ties[it["user_id"]], a, params["invite"], cat)
        assert it["score"] == pytest.approx(expected, abs=1e-4)
        assert it["reason"] == ("friend_wants_product" if a > 0 else "friend")


def test_feed_says_friend_for_a_tie_the_user_does_not_follow(
    client: Any, artifact: Path, dataset_dir: Path
) -> None:
    """A social candidate whose author is one of the user's ties (groups, shares) but not
    followed is labelled ``friend``, never ``followed_author``."""
    follows: dict[str, set[str]] = {}
    for row in _csv(dataset_dir / "follows.csv"):
        follows.setdefault(row["follower_id"], set()).add(row["followee_id"])
    ties = _ties(artifact)
    seen = {"friend": 0, "followed_author": 0}
    for uid in list(ties)[:40]:
        page = client.get(f"/v1/feed/{uid}?limit=50&preview=1").get_json()
        for it in page["items"]:
            if it["reason"] == "friend":
                seen["friend"] += 1
                assert it["author_id"] in ties[uid]
                assert it["author_id"] not in follows.get(uid, set())
            elif it["reason"] == "followed_author":
                seen["followed_author"] += 1
                assert it["author_id"] not in set(ties[uid]) - follows.get(uid, set())
    assert seen["friend"] > 0, seen


def test_feed_items_carry_a_friends_open_group_at_no_extra_round_trip(
    r: Any, counted: Any, artifact: Path
) -> None:
    """An item linking the product of a friend's open group carries it as ``"group"`` (who
    started it, spots left, when it expires); its state is read in the page's own two round
    trips, and a member, a full group or a user without friends' groups sees none."""
    ties = _ties(artifact)
    uid, tie = next((i, t) for i in ties for t in ties[i] if len(ties[i]) >= 2)
    counted.get(f"/v1/feed/{tie}?limit=50&preview=1")  # warm the caches (version, table)
    counted.get(f"/v1/feed/{tie}?limit=20")  # warm the caches of a recorded page
    page_reads, page_writes, _ = round_trips(lambda: counted.get(f"/v1/feed/{tie}?limit=20"))
    before = counted.get(f"/v1/feed/{tie}?limit=50&preview=1").get_json()["items"]
    linked = next(it for it in before if it.get("products"))
    product = linked["products"][0]["product_id"]
    assert all("group" not in it for it in before)  # nothing open yet
    _start(counted, uid, product, "feed-1", size=3)
    reads, writes, resp = round_trips(lambda: counted.get(f"/v1/feed/{tie}?limit=50&preview=1"))
    assert (reads, writes) == (2, 0), CountingConnection.sent  # user state; cards + groups
    items = resp.get_json()["items"]
    shown = [it for it in items if it.get("group")]
    assert shown and all(
        product in {p["product_id"] for p in it["products"]} for it in shown
    ), shown  # fmt: skip
    g = shown[0]["group"]
    assert g["group_id"] == "feed-1" and g["initiator_id"] == uid and g["members"] == [uid]
    assert g["size"] == 3 and g["spots_left"] == 2 and g["expires_at"]
    # a recorded page of a user with friends' groups costs what one without them does
    counted.get(f"/v1/feed/{tie}?limit=20")  # caches refilled after the group's writes
    assert round_trips(lambda: counted.get(f"/v1/feed/{tie}?limit=20"))[:2] == (
        page_reads, page_writes
    ), CountingConnection.sent  # fmt: skip
    # a full group: filled by two others, it is offered to nobody
    for other in ("feed-x1", "feed-x2"):
        assert counted.post("/v1/groups/feed-1/join", json={"user_id": other}).status_code == 200
    assert counted.get("/v1/groups/feed-1").get_json()["status"] == "succeeded"
    # the recorded pages above may have served the linked post: forget them, so that the
    # preview shows it again and its lack of a group is not vacuous
    r.delete(c.user_key(tie, c.USER_SEEN))
    items = counted.get(f"/v1/feed/{tie}?limit=50&preview=1").get_json()["items"]
    assert _linking(items, product) and all("group" not in it for it in items)
    # a member: the tie joins a new group on the product and no longer sees it
    _start(counted, uid, product, "feed-2", size=3)
    items = counted.get(f"/v1/feed/{tie}?limit=50&preview=1").get_json()["items"]
    assert {it["group"]["group_id"] for it in items if it.get("group")} == {"feed-2"}
    assert counted.post("/v1/groups/feed-2/join", json={"user_id": tie}).status_code == 200
    items = counted.get(f"/v1/feed/{tie}?limit=50&preview=1").get_json()["items"]
    assert _linking(items, product) and all("group" not in it for it in items)


def _linking(items: list[dict[str, Any]], product: str) -> list[dict[str, Any]]:
    """The items of a page that link ``product`` (those that would carry its group)."""
    return [it for it in items if product in {p["product_id"] for p in it.get("products", ())}]


def test_a_blocked_initiators_group_is_on_no_page_of_the_blocker(
    client: Any, artifact: Path
) -> None:
    """A user who blocked (or muted) a friend sees none of their groups: not on a feed item
    (``"group"``), not among the groups to join."""
    ties = _ties(artifact)
    uid, tie = next((i, t) for i in ties for t in ties[i] if len(ties[i]) >= 2)
    before = client.get(f"/v1/feed/{tie}?limit=50&preview=1").get_json()["items"]
    linked = next(it for it in before if it.get("products") and it["author_id"] != uid)
    product = linked["products"][0]["product_id"]
    _start(client, uid, product, "block-1", size=3)
    items = client.get(f"/v1/feed/{tie}?limit=50&preview=1").get_json()["items"]
    assert {it["group"]["group_id"] for it in items if it.get("group")} == {"block-1"}
    joinable = client.get(f"/v1/users/{tie}/groups?limit=50").get_json()["items"]
    assert "block-1" in {it["group_id"] for it in joinable}
    _mute(client, tie, uid)
    items = client.get(f"/v1/feed/{tie}?limit=50&preview=1").get_json()["items"]
    assert _linking(items, product), items  # the item is still there, without the group
    assert all("group" not in it for it in items)
    joinable = client.get(f"/v1/users/{tie}/groups?limit=50").get_json()["items"]
    assert "block-1" not in {it["group_id"] for it in joinable}
    # the group itself stands: others still see and join it
    assert client.get("/v1/groups/block-1").get_json()["status"] == "open"


def test_pair_features_count_common_ties_and_past_co_membership(dataset_dir: Path) -> None:
    """The tie part sees what "past co-members first" ranks by (the groups two users shared)
    and what it cannot see (friends the two have in common), each counted exactly."""
    from feed.data import load
    from feed.features.matrices import build
    from feed.models.groups import TIE_FEATURES, GroupRecs

    model = GroupRecs(val_frac=0).fit(build(load(dataset_dir)))
    rng = np.random.default_rng(0)
    init = rng.integers(0, model.graph_.shape[0], 300)
    cand = model.tie_items_[init, 0]
    init, cand = init[cand >= 0], cand[cand >= 0]
    f = model.tie_features(init, cand)
    common = TIE_FEATURES.index("common")
    co = TIE_FEATURES.index("co_groups")
    g = model.graph_.toarray() > 0
    want = np.array([np.sum(g[i] & g[v]) for i, v in zip(init, cand, strict=True)])
    assert len(init) > 100 and want.max() > 0
    assert np.allclose(np.expm1(f[:, common]), want, atol=1e-3)
    j = model.joins_.toarray()
    shared = np.array([j[i, v] + j[v, i] for i, v in zip(init, cand, strict=True)])
    assert np.allclose(np.expm1(f[:, co]), shared, atol=1e-3)


def test_a_groups_failed_state_read_leaves_the_page_whole(
    r: Any, client: Any, artifact: Path
) -> None:
    """A group whose state read fails (here a key of the wrong type) is skipped: the page is
    served, its item without the group, the other groups still shown."""
    ties = _ties(artifact)
    uid, tie = next((i, t) for i in ties for t in ties[i] if len(ties[i]) >= 2)
    items = client.get(f"/v1/feed/{tie}?limit=50&preview=1").get_json()["items"]
    linked = [it for it in items if it.get("products")]
    first, second = linked[0]["products"][0]["product_id"], linked[-1]["products"][0]["product_id"]
    _start(client, uid, first, "bad-1", size=3)
    _start(client, uid, second, "good-1", size=3)
    state = c.group_key("bad-1", c.GROUP_STATE)
    r.delete(state)
    r.rpush(state, "not a hash")
    resp = client.get(f"/v1/feed/{tie}?limit=50&preview=1")
    assert resp.status_code == 200, resp.get_json()
    shown = {it["group"]["group_id"] for it in resp.get_json()["items"] if it.get("group")}
    assert shown == {"good-1"}  # the failed one skipped, the other still shown
    # the recorded page (cards, served marks and group reads in one round trip) too
    assert client.get(f"/v1/feed/{tie}?limit=20").status_code == 200


def test_groups_read_bounds_the_groups_a_feed_page_reads(
    redis_url: str, client: Any, artifact: Path
) -> None:
    """``FEED_GROUPS_READ``: how many of the user's friends' open groups a page reads (0: no
    item carries a group); more than ``FEED_GROUP_FEED_MAX`` is refused at start."""
    from service.config import ConfigError

    ties = _ties(artifact)
    uid, tie = next((i, t) for i in ties for t in ties[i] if len(ties[i]) >= 2)
    items = client.get(f"/v1/feed/{tie}?limit=50&preview=1").get_json()["items"]
    product = next(it for it in items if it.get("products"))["products"][0]["product_id"]
    _start(client, uid, product, "read-1", size=3)
    url = f"/v1/feed/{tie}?limit=50&preview=1"
    assert any(it.get("group") for it in client.get(url).get_json()["items"])
    none = feed_app(redis_url, GROUPS_READ=0).test_client().get(url).get_json()["items"]
    assert _linking(none, product) and all("group" not in it for it in none)
    with pytest.raises(ConfigError, match="FEED_GROUPS_READ"):
        feed_app(redis_url, GROUPS_READ=201)
