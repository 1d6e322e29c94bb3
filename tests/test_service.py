"""The HTTP API through the Flask test client against real Redis and a real trained version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def feed(client: Any, user: str, **params: Any) -> dict[str, Any]:
    resp = client.get(f"/v1/feed/{user}", query_string=params)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def truth(dataset_dir: Path) -> dict[str, Any]:
    return json.loads((dataset_dir / "synth_truth.json").read_text())  # type: ignore[no-any-return]


def test_feed_page_shape(client: Any, published: str) -> None:
    body = feed(client, "u1", limit=7)
    assert body["model_version"] == published
    assert body["user_id"] == "u1" and body["degraded"] is False
    assert body["request_id"] and body["next_cursor"]
    items = body["items"]
    assert len(items) == 7
    assert len({it["post_id"] for it in items}) == 7
    for it in items:
        assert {"post_id", "author_id", "text", "created_at", "score", "reason", "products"} <= set(
            it
        )
        assert it["author_id"] != "u1"
        for p in it["products"]:
            assert {"product_id", "title", "price", "category", "in_stock"} <= set(p)
    assert any(it["products"] for it in items)


def test_planted_tastes_give_different_pages(client: Any, dataset_dir: Path) -> None:
    t = truth(dataset_dir)
    by_topic: dict[int, list[str]] = {}
    for user, topics in t["user_topics"].items():
        by_topic.setdefault(topics[0], []).append(user)
    topics = sorted(by_topic, key=lambda k: -len(by_topic[k]))[:2]
    hit = {}
    for topic in topics:
        users = by_topic[topic][:15]
        on_topic = 0
        total = 0
        for u in users:
            for it in feed(client, u, limit=10)["items"]:
                total += 1
                on_topic += t["post_topic"][it["post_id"]] == topic
        hit[topic] = on_topic / total
    chance = 1 / len(t["topics"])
    # each group's pages lean toward its own planted topic far above chance
    assert all(share > 2.5 * chance for share in hit.values()), hit


def test_pages_never_repeat_and_liked_posts_disappear(client: Any) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        body = feed(client, "u2", limit=10, **({"cursor": cursor} if cursor else {}))
        seen += [it["post_id"] for it in body["items"]]
        cursor = body["next_cursor"]
    assert len(seen) == len(set(seen)) == 50

    first = feed(client, "u3", limit=5)["items"][0]["post_id"]
    client.post(
        "/v1/events", json={"events": [{"type": "like", "user_id": "u4", "post_id": first}]}
    )
    assert first not in [it["post_id"] for it in feed(client, "u4", limit=50)["items"]]


def test_unknown_user_gets_trending(client: Any) -> None:
    body = feed(client, "brand-new-user", limit=5)
    assert len(body["items"]) == 5
    assert {it["reason"] for it in body["items"]} <= {"trending", "fresh"}


def test_post_and_similar(client: Any) -> None:
    post = client.get("/v1/posts/p1").get_json()
    assert post["post_id"] == "p1" and "products" in post
    sim = client.get("/v1/posts/p1/similar?limit=4").get_json()
    assert 0 < len(sim["items"]) <= 4
    assert all(it["reason"] == "similar_to:p1" and it["post_id"] != "p1" for it in sim["items"])
    assert client.get("/v1/posts/nope").status_code == 404


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/feed/u1?limit=abc", 400),
        ("/v1/feed/u1?limit=0", 400),
        ("/v1/feed/u1?cursor=forged.cursor", 400),
        ("/v1/feed/bad%7Cid", 400),
    ],
)
def test_bad_requests_are_json_errors(client: Any, path: str, status: int) -> None:
    resp = client.get(path)
    assert resp.status_code == status
    assert set(resp.get_json()["error"]) == {"code", "message"}


def test_foreign_cursor_is_rejected(client: Any) -> None:
    cursor = feed(client, "u1", limit=2)["next_cursor"]
    resp = client.get(f"/v1/feed/u2?cursor={cursor}")
    assert resp.status_code == 400 and "another user" in resp.get_json()["error"]["message"]


def test_events_validation(client: Any) -> None:
    ok = client.post(
        "/v1/events",
        json={
            "events": [
                {"type": "impression", "user_id": "u1", "post_id": "p1"},
                {
                    "type": "purchase",
                    "user_id": "u1",
                    "product_id": "sku-1",
                    "ts": "2026-11-24T10:00:00Z",
                },
            ]
        },
    )
    assert ok.status_code == 202 and ok.get_json()["accepted"] == 2
    for bad in (
        {"events": [{"type": "teleport", "user_id": "u1"}]},
        {"events": [{"type": "like", "user_id": "u1"}]},
        {"events": [{"type": "like", "user_id": 5, "post_id": "p1"}]},
        {"events": []},
        {"nope": 1},
    ):
        resp = client.post("/v1/events", json=bad)
        assert resp.status_code == 400, bad
    resp = client.post("/v1/events", data="{not json", content_type="application/json")
    assert resp.status_code == 400


def test_events_are_logged_durably(client: Any, r: Any) -> None:
    from feed.contract import EVENTS_KEY

    before = r.xlen(EVENTS_KEY)
    client.post("/v1/events", json={"events": [{"type": "like", "user_id": "u9", "post_id": "p2"}]})
    assert r.xlen(EVENTS_KEY) == before + 1
    last = r.xrevrange(EVENTS_KEY, count=1)[0][1]
    assert last[b"type"] == b"like" and last[b"post_id"] == b"p2"


def test_health(client: Any) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").get_json()["status"] == "ready"
