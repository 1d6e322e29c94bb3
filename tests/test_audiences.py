"""Audiences: users ranked for a merchant's own products, category or post from what the live
version published, stored bounded, exported as CSV; never another merchant's products."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from itertools import pairwise
from typing import Any

import pytest
from helpers import feed_app

from feed import contract as c
from service import campaigns as cp

ADMIN = "admin-token-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def catalogue(r: Any, version: str) -> dict[str, Any]:
    """merchant -> its products and the posts linking them, in the live version."""
    table = c.decode_json(r.get(c.version_key(version, "posts")))
    products = sorted({p for ps in table["product_ids"] for p in ps})
    docs = r.mget([c.product_doc_key(p, version) for p in products])
    owner = {
        p: (c.decode_json(d) or {}).get("merchant_id") for p, d in zip(products, docs, strict=True)
    }
    out: dict[str, Any] = {}
    rows = zip(table["post_id"], table["author_id"], table["product_ids"], strict=True)
    for post, author, ps in rows:
        for p in ps:
            m = owner.get(p)
            if m:
                rec = out.setdefault(m, {"products": set(), "posts": {}, "categories": Counter()})
                rec["products"].add(p)
                rec["posts"][post] = author
                rec["categories"][table["product_category"].get(p)] += 1
    return out


def biggest(r: Any, version: str) -> tuple[str, dict[str, Any], str, dict[str, Any]]:
    """(the merchant with most posts, its catalogue, another merchant, its catalogue)."""
    cat = catalogue(r, version)
    order = sorted(cat, key=lambda m: -len(cat[m]["posts"]))
    return order[0], cat[order[0]], order[1], cat[order[1]]


@pytest.fixture
def shop(r: Any, redis_url: str, published: str) -> dict[str, Any]:
    client = feed_app(redis_url, ADMIN_TOKEN=ADMIN).test_client()
    m, mine, other, theirs = biggest(r, published)
    tokens = {}
    for x in (m, other):
        resp = client.post("/v1/admin/merchants", json={"merchant_id": x}, headers=AS_ADMIN)
        tokens[x] = resp.get_json()["token"]
    return {
        "client": client,
        "m": m,
        "mine": mine,
        "other": other,
        "theirs": theirs,
        "auth": bearer(tokens[m]),
        "other_auth": bearer(tokens[other]),
        "version": published,
    }


def test_an_audience_ranks_users_who_engage_with_the_products(r: Any, shop: dict[str, Any]) -> None:
    client, m = shop["client"], shop["m"]
    products = sorted(shop["mine"]["products"])[:5]
    resp = client.post(
        f"/v1/merchants/{m}/audiences", json={"product_ids": products, "size": 60},
        headers=shop["auth"],
    )  # fmt: skip
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert 0 < body["size"] <= 60 and body["estimated_size"] >= body["size"]
    assert len(body["users"]) == min(50, body["size"])
    # the top users have the target posts among their candidates, more than a random user does
    table = c.decode_json(r.get(c.version_key(shop["version"], "posts")))
    targets = {i for i, ps in enumerate(table["product_ids"]) if set(ps) & set(products)}

    def hits(u: str) -> int:
        items, _, _ = c.decode_candidates(r.get(c.user_key(u, "cand", shop["version"])))
        return len(targets & set(items[:100].tolist()))

    top = sum(hits(u) for u in body["users"][:10]) / 10
    everyone = [c.text(k).split("}")[0][3:] for k in r.scan_iter(match="{u:*}:cand:*")]
    mean = sum(hits(u) for u in everyone) / len(everyone)
    assert top > mean
    # stored with a TTL, listed, exported as CSV best first
    aid = body["audience_id"]
    ttl = r.ttl(c.audience_key(aid, "users"))
    assert 0 < ttl <= cp.AUDIENCE_TTL_S and r.ttl(c.audience_key(aid, "meta")) > 0
    listed = client.get(f"/v1/merchants/{m}/audiences", headers=shop["auth"]).get_json()
    assert [a["audience_id"] for a in listed["audiences"]] == [aid]
    exported = client.get(f"/v1/merchants/{m}/audiences/{aid}.csv", headers=shop["auth"])
    assert exported.status_code == 200 and exported.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(exported.get_data(as_text=True))))
    assert rows[0] == ["user_id", "score"] and len(rows) == body["size"] + 1
    assert [x[0] for x in rows[1:51]] == body["users"]
    scores = [float(x[1]) for x in rows[1:]]
    assert scores == sorted(scores, reverse=True)


def test_category_and_like_post_targets(shop: dict[str, Any]) -> None:
    client, m = shop["client"], shop["m"]
    category = shop["mine"]["categories"].most_common(1)[0][0]
    resp = client.post(
        f"/v1/merchants/{m}/audiences", json={"category": category, "size": 20},
        headers=shop["auth"],
    )  # fmt: skip
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["target"] == {"category": category}
    post = sorted(shop["mine"]["posts"])[0]
    resp = client.post(
        f"/v1/merchants/{m}/audiences", json={"like_post": post}, headers=shop["auth"]
    )
    assert resp.status_code == 201 and resp.get_json()["size"] > 0


def test_only_the_merchants_own_products_posts_and_audiences(shop: dict[str, Any]) -> None:
    client, m, auth = shop["client"], shop["m"], shop["auth"]
    theirs = sorted(shop["theirs"]["products"] - shop["mine"]["products"])[0]
    resp = client.post(f"/v1/merchants/{m}/audiences", json={"product_ids": [theirs]}, headers=auth)
    assert resp.status_code == 404 and theirs in resp.get_json()["error"]["message"]
    their_post = sorted(set(shop["theirs"]["posts"]) - set(shop["mine"]["posts"]))[0]
    resp = client.post(f"/v1/merchants/{m}/audiences", json={"like_post": their_post}, headers=auth)
    assert resp.status_code == 404
    resp = client.post(f"/v1/merchants/{m}/audiences", json={"category": "nope"}, headers=auth)
    assert resp.status_code == 404
    # an audience of another merchant is not found, even with the id
    other = shop["other"]
    made = client.post(
        f"/v1/merchants/{other}/audiences",
        json={"product_ids": sorted(shop["theirs"]["products"])[:2]},
        headers=shop["other_auth"],
    ).get_json()
    got = client.get(f"/v1/merchants/{m}/audiences/{made['audience_id']}.csv", headers=auth)
    assert got.status_code == 404


def test_bad_bodies_are_400_naming_the_field(shop: dict[str, Any]) -> None:
    client, m, auth = shop["client"], shop["m"], shop["auth"]
    url = f"/v1/merchants/{m}/audiences"
    resp = client.post(url, json={"size": 10}, headers=auth)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_target"
    resp = client.post(url, json={"category": "a", "like_post": "p1"}, headers=auth)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_target"
    resp = client.post(url, json={"category": "a", "size": cp.AUDIENCE_MAX + 1}, headers=auth)
    assert resp.status_code == 400 and "size" in resp.get_json()["error"]["message"]
    resp = client.post(url, json={"product_ids": []}, headers=auth)
    assert resp.status_code == 400 and "product_ids" in resp.get_json()["error"]["message"]


def test_audiences_are_capped_per_merchant(r: Any, shop: dict[str, Any]) -> None:
    client, m = shop["client"], shop["m"]
    post = sorted(shop["mine"]["posts"])[0]
    made = []
    for _ in range(cp.AUDIENCES_PER_MERCHANT + 2):
        resp = client.post(
            f"/v1/merchants/{m}/audiences", json={"like_post": post, "size": 5},
            headers=shop["auth"],
        )  # fmt: skip
        assert resp.status_code == 201
        made.append(resp.get_json()["audience_id"])
    listed = client.get(f"/v1/merchants/{m}/audiences", headers=shop["auth"]).get_json()
    ids = [a["audience_id"] for a in listed["audiences"]]
    assert ids == made[-cp.AUDIENCES_PER_MERCHANT :]
    assert r.exists(c.audience_key(made[0], "users"), c.audience_key(made[0], "meta")) == 0


def test_an_audience_a_campaign_uses_is_never_evicted(r: Any, shop: dict[str, Any]) -> None:
    """The campaign reads the audience's own key (no copy): past the cap the oldest unused
    audience goes; when every one is used by a kept campaign, a new one is a 409."""
    import time

    client, m, auth = shop["client"], shop["m"], shop["auth"]
    posts = sorted(shop["mine"]["posts"])

    def new_audience() -> Any:
        return client.post(
            f"/v1/merchants/{m}/audiences", json={"like_post": posts[0], "size": 5}, headers=auth
        )

    def new_campaign(aid: str) -> None:
        resp = client.post(
            f"/v1/merchants/{m}/campaigns", headers=auth,
            json={"post_ids": posts[:1], "audience_id": aid, "budget_impressions": 10,
                  "max_per_user": 1, "slots": [3], "end": time.time() + 600},
        )  # fmt: skip
        assert resp.status_code == 201, resp.get_json()

    made = [new_audience().get_json()["audience_id"] for _ in range(cp.AUDIENCES_PER_MERCHANT)]
    new_campaign(made[0])
    made.append(new_audience().get_json()["audience_id"])  # evicts made[1], not made[0]
    assert r.exists(c.audience_key(made[0], "users"), c.audience_key(made[0], "meta")) == 2
    assert r.exists(c.audience_key(made[1], "meta")) == 0
    for aid in made[2:]:
        new_campaign(aid)
    resp = new_audience()
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "too_many_audiences"
    listed = client.get(f"/v1/merchants/{m}/audiences", headers=auth).get_json()["audiences"]
    assert len(listed) == cp.AUDIENCES_PER_MERCHANT


# --- the audience index (feed publish) ------------------------------------------------------
def index_keys(r: Any, version: str) -> list[str]:
    return [c.text(k) for k in r.scan_iter(match=f"{{feed:{version}}}:aud:*", count=1000)]


def test_publish_writes_a_bounded_audience_index_deleted_with_the_version(
    r: Any, artifact: Any, published: str
) -> None:
    from feed import artifacts
    from feed import versions as reg
    from feed.publish import audience_index

    art = artifacts.read(artifact)
    users, products, reach, per = audience_index(art)
    keys = set(index_keys(r, published))
    assert c.audience_index_key(published) in keys
    assert keys - {c.audience_index_key(published)} == {
        c.audience_index_key(published, p) for i, p in enumerate(products) if reach[i] > 0
    }
    assert c.decode_json(r.get(c.audience_index_key(published))) == users
    # each product keeps its best n users: the first n of the uncut list, reach unchanged
    _, _, reach5, per5 = audience_index(art, n_max=5)
    assert (reach5 == reach).all()
    for (u5, s5, _), (u, s, _) in zip(per5, per, strict=True):
        assert len(u5) == min(5, len(u)) and list(u5) == list(u[:5]) and list(s5) == list(s[:5])
        assert list(s) == sorted(s, reverse=True)
    stored = c.decode_audience_index(r.get(c.audience_index_key(published, products[0])))
    assert stored[0] == reach[0] and list(stored[1]) == list(per[0][0])
    # a listed user is flagged exactly when it bought the product in the training data
    bought = art.arrays("purchases")
    pairs = set(zip(bought["user"].tolist(), bought["product"].tolist(), strict=True))
    flags = [
        ((users[u], x) in pairs, bool(f))
        for x, (us, _, fs) in zip(products, per, strict=True)
        for u, f in zip(us.tolist(), fs.tolist(), strict=True)
    ]
    assert sum(f for _, f in flags) > 0 and all(a == b for a, b in flags)
    # `feed versions delete` removes the index with the version
    reg.delete(r, published, force=True)
    assert index_keys(r, published) == []


def test_the_index_ranks_as_the_scan_did(r: Any, shop: dict[str, Any]) -> None:
    """One product, no purchase since training: the index's users are the scan's best ones
    with the scan's scores (up to the one-byte neighbour scores the scan reads; a user whose
    list gives it only a trace of the product, below its own 100 best products, is left out),
    the same estimated size, and an index-less version (published before it existed) is
    ranked by the scan, said in ``ranked_by``."""
    client, m, auth, v = shop["client"], shop["m"], shop["auth"], shop["version"]
    product = max(
        shop["mine"]["products"],
        key=lambda p: c.decode_audience_index(r.get(c.audience_index_key(v, p)))[0],
    )
    url = f"/v1/merchants/{m}/audiences"
    fast = client.post(url, json={"product_ids": [product], "size": 500}, headers=auth)
    assert fast.status_code == 201 and fast.get_json()["ranked_by"] == "index"
    for k in index_keys(r, v):  # as a version published before the index
        r.delete(k)
    slow = client.post(url, json={"product_ids": [product], "size": 500}, headers=auth)
    assert slow.status_code == 201 and slow.get_json()["ranked_by"] == "scan"

    def scores(body: dict[str, Any]) -> dict[str, float]:
        text = client.get(f"{url}/{body['audience_id']}.csv", headers=auth).get_data(as_text=True)
        return {u: float(s) for u, s in list(csv.reader(io.StringIO(text)))[1:]}

    a, b = scores(fast.get_json()), scores(slow.get_json())
    assert set(a) <= set(b) and len(a) > 10
    assert all(abs(a[u] - b[u]) <= 0.02 * max(1.0, b[u]) for u in a)
    # the best users, in the same order, up to the same tolerance: the index's scores may
    # reorder users whose scan scores are within it of each other
    top = list(a)[:10]
    tenth = sorted(b.values(), reverse=True)[9]
    assert all(b[u] >= tenth - 0.02 * max(1.0, tenth) for u in top)
    assert all(b[x] >= b[y] - 0.02 * max(1.0, b[y]) for x, y in pairwise(top))
    assert fast.get_json()["estimated_size"] == slow.get_json()["estimated_size"] == len(b)


def test_a_purchase_of_several_target_products_adds_one_once(r: Any) -> None:
    """Each product's score holds +1 for its purchase (flagged in the index); a user who bought
    two target products gets that 1 once, as the scan gave it: the sum of the two scores minus
    one."""
    v = "vtest-bought"
    r.set(c.audience_index_key(v), c.encode_json(["a", "b", "c"]))
    one = c.encode_audience_index(3, [0, 1, 2], [1.5, 1.25, 0.5], [True, True, False])
    r.set(c.audience_index_key(v, "p1"), one)
    r.set(c.audience_index_key(v, "p2"), c.encode_audience_index(1, [0], [1.25], [True]))
    try:
        ranked, estimated, _ = cp.rank_indexed(r, v, {"p1", "p2"}, 10)
        assert ranked == [("a", 1.75), ("b", 1.25), ("c", 0.5)] and estimated == 3
        alone, _, _ = cp.rank_indexed(r, v, {"p1"}, 10)
        assert alone == [("a", 1.5), ("b", 1.25), ("c", 0.5)]
    finally:
        r.delete(*(c.audience_index_key(v, p) for p in (None, "p1", "p2")))
        cp._INDEX_USERS.pop(v, None)


def test_estimated_size_of_cut_lists_counts_users_beyond_them(r: Any, shop: dict[str, Any]) -> None:
    """A product whose list was cut (here: by hand, to 3 users) estimates from its reach, never
    less than the users found."""
    client, m, auth, v = shop["client"], shop["m"], shop["auth"], shop["version"]
    product = sorted(shop["mine"]["products"])[0]
    key = c.audience_index_key(v, product)
    reach, users, scores, bought = c.decode_audience_index(r.get(key))
    assert reach > 3
    r.set(key, c.encode_audience_index(reach, users[:3], scores[:3], bought[:3]))
    resp = client.post(
        f"/v1/merchants/{m}/audiences", json={"product_ids": [product], "size": 100}, headers=auth
    )
    body = resp.get_json()
    assert resp.status_code == 201 and body["size"] == 3 and body["estimated_size"] == reach


def test_a_wide_category_is_ranked_by_its_widest_products(
    r: Any, shop: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A category with more of the merchant's products than TARGET_PRODUCTS_MAX reads only the
    widest (largest reach) ones, says so in ``target``, and ranks as those products do."""
    client, m, auth, v = shop["client"], shop["m"], shop["auth"], shop["version"]
    table = c.decode_json(r.get(c.version_key(v, "posts")))
    category = shop["mine"]["categories"].most_common(1)[0][0]
    in_cat = sorted(p for p, x in table["product_category"].items() if x == category)
    docs = r.mget([c.product_doc_key(p, v) for p in in_cat])
    products = [
        p
        for p, d in zip(in_cat, docs, strict=True)
        if (c.decode_json(d) or {}).get("merchant_id") == m
    ]  # every product of the merchant in the category, whether or not a post links it
    assert len(products) >= 3
    monkeypatch.setattr(cp, "TARGET_PRODUCTS_MAX", 2)  # the bound, lowered to this catalogue
    reach = {p: c.decode_audience_index(r.get(c.audience_index_key(v, p)))[0] for p in products}
    widest = sorted(products, key=lambda p: (-reach[p], p))[:2]
    url = f"/v1/merchants/{m}/audiences"
    wide = client.post(url, json={"category": category, "size": 300}, headers=auth)
    assert wide.status_code == 201, wide.get_json()
    assert wide.get_json()["target"] == {
        "category": category, "products_in_target": len(products), "products_ranked": 2
    }  # fmt: skip
    two = client.post(url, json={"product_ids": widest, "size": 300}, headers=auth)

    def rows(body: dict[str, Any]) -> list[list[str]]:
        text = client.get(f"{url}/{body['audience_id']}.csv", headers=auth).get_data(as_text=True)
        return list(csv.reader(io.StringIO(text)))[1:]

    assert rows(wide.get_json()) == rows(two.get_json()) and len(rows(two.get_json())) > 10
    # the best `size` are the first `size` of a longer ranking, ties broken by user id
    ranked, _, _ = cp.rank_indexed(r, v, set(widest), 300)
    first, _, _ = cp.rank_indexed(r, v, set(widest), 7)
    assert first == ranked[:7] and len(first) == 7


def test_two_products_the_index_and_the_scan_agree_on_most_top_users(
    r: Any, shop: dict[str, Any]
) -> None:
    """Two products: the index sums the per-product scores (a post linking both or a
    neighbour of both's posts counts twice), the scan takes each post's best weight; so the
    scores differ, but the top users mostly agree."""
    client, m, auth, v = shop["client"], shop["m"], shop["auth"], shop["version"]
    index = {
        p: c.decode_audience_index(r.get(c.audience_index_key(v, p)))
        for p in shop["mine"]["products"]
    }
    reach = {p: x[0] for p, x in index.items()}
    two = sorted(reach, key=lambda p: (-reach[p], p))[:2]
    table = json.loads(r.get(c.audience_index_key(v)))
    # the users in both products' lists (a user is listed under its 100 best products only)
    in_both = set.intersection(*({table[i] for i in index[p][1].tolist()} for p in two))
    url = f"/v1/merchants/{m}/audiences"
    fast = client.post(url, json={"product_ids": two, "size": 20}, headers=auth).get_json()
    for k in index_keys(r, v):  # as a version published before the index
        r.delete(k)
    slow = client.post(url, json={"product_ids": two, "size": 20}, headers=auth).get_json()
    assert (fast["ranked_by"], slow["ranked_by"]) == ("index", "scan")
    a, b = fast["users"], slow["users"]
    assert len(a) == len(b) == 20
    # measured: the same 20 users, the first 8 in the same order; asked: three quarters
    assert len(set(a) & set(b)) >= 15

    # for a user listed under both products, the sum over products is at least the scan's best
    # weight per post (no purchase since training here), up to the one-byte neighbour scores the
    # scan reads
    def scores(body: dict[str, Any]) -> dict[str, float]:
        text = client.get(f"{url}/{body['audience_id']}.csv", headers=auth).get_data(as_text=True)
        return {u: float(s) for u, s in list(csv.reader(io.StringIO(text)))[1:]}

    fa, fb = scores(fast), scores(slow)
    both = set(fa) & set(fb) & in_both
    assert len(both) >= 10 and all(fa[u] >= fb[u] - 0.02 * max(1.0, fb[u]) for u in both)
