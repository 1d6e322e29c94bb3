"""Gift ideas (挑禮物) through real HTTP requests against real Redis and a trained version."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from feed import contract as c

#: What a gift may say about the friend: tastes (docs/security.md).
TASTE_REASON = re.compile(r"trending|similar_to_liked|category:[^:]+")


def gifts(client: Any, user: str, friend: str, **params: Any) -> dict[str, Any]:
    resp = client.get(f"/v1/users/{user}/gifts", query_string={"for": friend, **params})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def test_gifts_follow_the_friends_tastes(
    client: Any, r: Any, dataset_dir: Path, published: str
) -> None:
    t = json.loads((dataset_dir / "synth_truth.json").read_text())
    hits = total = 0
    for friend in ("u1", "u2", "u3", "u4", "u8", "u9"):
        body = gifts(client, "u100", friend, limit=8)
        assert body["basis"] == "tastes" and body["for"] == friend
        assert 0 < len(body["items"]) <= 8
        bought = c.decode_seed(r.get(c.user_key(friend, c.USER_SEED, published)))[1] | {
            x.decode() for x in r.smembers(c.user_key(friend, c.USER_PURCHASES))
        }
        for item in body["items"]:
            assert item["product_id"] not in bought
            assert {"title", "price", "category", "score", "reason", "posts"} <= set(item)
            assert item["posts"], item
            for post in item["posts"]:  # each shown post links the product
                doc = c.decode_json(r.get(c.post_doc_key(post["post_id"], published)))
                assert item["product_id"] in doc["product_ids"]
            total += 1
            hits += item["category"] in {t["topics"][k] for k in t["user_topics"][friend]}
        per_cat = Counter(it["category"] for it in body["items"])
        assert max(per_cat.values()) <= client.application.config["GIFT_MAX_PER_CATEGORY"]
    assert hits / total > 0.6, hits / total  # two planted topics out of six


def test_a_purchase_removes_the_gift_at_once(client: Any) -> None:
    first = gifts(client, "u100", "u5", limit=3)["items"][0]["product_id"]
    resp = client.post(
        "/v1/events", json={"events": [{"type": "purchase", "user_id": "u5", "product_id": first}]}
    )
    assert resp.status_code == 202
    assert first not in {it["product_id"] for it in gifts(client, "u100", "u5")["items"]}


def test_liked_posts_show_their_products_without_saying_so(
    client: Any, r: Any, published: str
) -> None:
    """A friend's likes raise their products, but whoever asks learns tastes, never the likes
    or follows (the probe got ``"reason": "liked:p1"`` for another user's like)."""
    post = c.decode_json(r.get(c.post_doc_key("p7", published)))
    assert post["product_ids"], "p7 links products in the fixture dataset"
    likes = [{"type": "like", "user_id": "gift-friend", "post_id": p} for p in ("p7", "p1")]
    assert client.post("/v1/events", json={"events": likes}).status_code == 202
    body = gifts(client, "u100", "gift-friend", limit=20)
    assert body["basis"] == "tastes"
    assert any(it["product_id"] in post["product_ids"] for it in body["items"]), body
    for it in body["items"]:
        shown = [p["post_id"] for p in it["posts"]]
        if "p7" in shown:  # unmarked, after the product's other posts
            assert shown[-1] == "p7", shown
    for friend in ("gift-friend", "u1", "u2"):  # u1, u2: training-time candidates and follows
        body = gifts(client, "u9", friend, limit=20)
        reasons = [it["reason"] for it in body["items"]]
        reasons += [p["reason"] for it in body["items"] for p in it["posts"]]
        assert reasons and all(TASTE_REASON.fullmatch(why) for why in reasons), reasons


def test_unknown_friend_gets_trending_gifts(client: Any) -> None:
    body = gifts(client, "u100", "nobody-knows-me", limit=5)
    assert body["basis"] == "trending" and len(body["items"]) == 5
    assert all(it["reason"] == "trending" for it in body["items"])


def test_gift_errors_name_the_parameter(client: Any) -> None:
    resp = client.get("/v1/users/u1/gifts")
    assert resp.status_code == 400 and "for" in resp.get_json()["error"]["message"]
    resp = client.get("/v1/users/u1/gifts?for=bad%7Cid")
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_for"
    resp = client.get("/v1/users/u1/gifts?for=u2&limit=x")
    assert resp.status_code == 400 and "limit" in resp.get_json()["error"]["message"]
