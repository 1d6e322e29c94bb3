"""What any client can make Redis hold is bounded: unknown visitors' pages write nothing,
per-user real-time keys expire unless the user is active, new posts have size limits, and the
posts created through the API are pruned by age and count."""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers import feed_app, feed_page, post_ids

from feed import contract as c
from service import writes

USER_KINDS = (c.USER_SEEN, *writes.PREFERENCE_KEYS)


def test_unknown_visitors_get_pages_and_scroll_without_a_single_key(client: Any, r: Any) -> None:
    keys = r.dbsize()
    for i in range(30):
        assert len(feed_page(client, f"visitor-{i}", limit=10)["items"]) == 10
    scroll = [feed_page(client, "visitor-0", limit=10)]
    for _ in range(3):
        scroll.append(feed_page(client, "visitor-0", limit=10, cursor=scroll[-1]["next_cursor"]))
    served = [pid for body in scroll for pid in post_ids(body)]
    assert len(served) == len(set(served)) == 40  # pages cut from one ranking: no repeat
    assert r.dbsize() == keys
    assert not list(r.scan_iter("{u:visitor-*"))


def test_a_known_users_seen_set_expires_with_the_window(client: Any, r: Any, app: Any) -> None:
    first = feed_page(client, "u11", limit=10)
    feed_page(client, "u11", limit=10, cursor=first["next_cursor"])
    seen = c.user_key("u11", c.USER_SEEN)
    assert r.zcard(seen) == 20
    assert 0 < r.ttl(seen) <= app.config["SEEN_WINDOW_S"]


def test_events_renew_every_real_time_key_of_their_user(
    client: Any, r: Any, redis_url: str, published: str
) -> None:
    post = post_ids(feed_page(client, "u12", limit=3))[0]
    resp = client.post(
        "/v1/events",
        json={
            "events": [
                {"type": "like", "user_id": "u12", "post_id": post},
                {"type": "follow", "user_id": "u12", "author_id": "u3"},
                {"type": "unfollow", "user_id": "u12", "author_id": "u4"},
                {"type": "hide_post", "user_id": "u12", "post_id": "p1"},
                {"type": "see_fewer_author", "user_id": "u12", "author_id": "u5"},
                {"type": "impression", "user_id": "u12", "post_id": "p2"},
            ]
        },
    )
    assert resp.status_code == 202
    cfg = client.application.config

    def ttls() -> dict[str, int]:
        return {kind: r.ttl(c.user_key("u12", kind)) for kind in USER_KINDS}

    for kind, left in ttls().items():
        most = cfg["SEEN_WINDOW_S"] if kind == c.USER_SEEN else cfg["USER_STATE_TTL_S"]
        assert kind == c.USER_PURCHASES or 0 < left <= most, kind
    assert ttls()[c.USER_PURCHASES] == -2  # no purchase yet: no key
    # TTLs shortened by hand: within FEED_USER_RENEW_S this process renews only the keys an
    # event writes, and a key the event creates gets its TTL at once
    for kind in USER_KINDS:
        r.expire(c.user_key("u12", kind), 5)
    again = [
        {"type": "click", "user_id": "u12", "post_id": "p3"},
        {"type": "purchase", "user_id": "u12", "product_id": "sku-1"},
    ]
    assert client.post("/v1/events", json={"events": again}).status_code == 202
    left = ttls()
    assert left[c.USER_SEEN] > 5 and left[c.USER_PURCHASES] > 5
    assert all(0 < left[kind] <= 5 for kind in set(USER_KINDS) - {c.USER_SEEN, c.USER_PURCHASES})
    # once the interval has passed (another process, or the same an hour later), every key
    renewing = feed_app(redis_url, USER_RENEW_S=0).test_client()
    click = {"type": "click", "user_id": "u12", "post_id": "p4"}
    assert renewing.post("/v1/events", json={"events": [click]}).status_code == 202
    assert all(left > 5 for left in ttls().values()), ttls()


def test_a_ttl_of_zero_keeps_preferences(redis_url: str, published: str, r: Any) -> None:
    client = feed_app(redis_url, USER_STATE_TTL_S=0).test_client()
    resp = client.post(
        "/v1/events", json={"events": [{"type": "hide_post", "user_id": "u13", "post_id": "p1"}]}
    )
    assert resp.status_code == 202
    assert r.ttl(c.user_key("u13", c.USER_HIDDEN)) == -1


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("text", "字" * 5_001, "FEED_POST_TEXT_MAX"),
        ("title", "t" * 201, "FEED_POST_TITLE_MAX"),
        ("tags", ["t"] * 31, "FEED_POST_TAGS_MAX"),
        ("tags", ["t" * 51], "FEED_POST_TAG_MAX"),
        ("product_ids", [f"sku-{i}" for i in range(21)], "FEED_POST_PRODUCTS_MAX"),
    ],
)
def test_oversized_posts_are_400_naming_the_limit(
    client: Any, r: Any, field: str, value: Any, limit: str
) -> None:
    keys = r.dbsize()
    resp = client.post("/v1/posts", json={"post_id": "p-big", "author_id": "u1", field: value})
    assert resp.status_code == 400
    err = resp.get_json()["error"]
    assert err["code"] == "post_too_large" and limit in err["message"], err
    assert r.dbsize() == keys


def test_a_post_older_than_the_fresh_window_is_400(client: Any, r: Any) -> None:
    old = time.time() - client.application.config["FRESH_MAX_AGE_S"] - 60
    resp = client.post("/v1/posts", json={"post_id": "p-old", "author_id": "u1", "created_at": old})
    assert resp.status_code == 400 and "FEED_FRESH_MAX_AGE_S" in resp.get_json()["error"]["message"]
    assert not r.exists(c.post_doc_key("p-old"))


def test_api_posts_expire_and_are_pruned_by_count_and_age(
    redis_url: str, published: str, r: Any
) -> None:
    client = feed_app(redis_url, FRESH_MAX_POSTS=3).test_client()
    now = time.time()
    for i in range(5):
        resp = client.post(
            "/v1/posts",
            json={"post_id": f"p-api-{i}", "author_id": "u2", "created_at": now - 100 + i},
        )
        assert resp.status_code == 201, resp.get_json()
    kept = [f"p-api-{i}" for i in (2, 3, 4)]
    assert sorted(x.decode() for x in r.zrange(c.FRESH_KEY, 0, -1)) == kept
    assert sorted(x.decode() for x in r.hkeys(c.FRESH_META_KEY)) == kept
    for i in range(5):
        doc, card = c.post_doc_key(f"p-api-{i}"), c.card_key(f"p-api-{i}")
        if f"p-api-{i}" in kept:
            max_age = client.application.config["FRESH_MAX_AGE_S"]
            assert 0 < r.ttl(doc) <= max_age and 0 < r.ttl(card) <= max_age
        else:
            assert not r.exists(doc) and not r.exists(card)
    assert client.get("/v1/posts/p-api-0").status_code == 404

    # by age: a one-minute window prunes every post older than that on the next write
    short = feed_app(redis_url, FRESH_MAX_AGE_S=60).test_client()
    resp = short.post("/v1/posts", json={"post_id": "p-api-new", "author_id": "u2"})
    assert resp.status_code == 201
    assert [x.decode() for x in r.zrange(c.FRESH_KEY, 0, -1)] == ["p-api-new"]
    assert not r.exists(c.post_doc_key("p-api-4"))
    assert r.hkeys(c.FRESH_META_KEY) == [b"p-api-new"]


def test_a_post_dated_in_the_future_is_400(client: Any, r: Any) -> None:
    """A future created_at would keep a post at the top of every fresh list past its expiry."""
    later = time.time() + 50 * 365 * 86_400
    resp = client.post(
        "/v1/posts", json={"post_id": "p-later", "author_id": "u1", "created_at": later}
    )
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "post_in_future"
    assert not r.exists(c.post_doc_key("p-later"))
    soon = time.time() + 60  # a client clock a minute ahead is fine
    ok = client.post("/v1/posts", json={"post_id": "p-soon", "author_id": "u1", "created_at": soon})
    assert ok.status_code == 201


def test_impressions_keep_the_seen_set_bounded(redis_url: str, published: str, r: Any) -> None:
    app = feed_app(redis_url, SEEN_MAX=50)
    client = app.test_client()
    now = time.time()
    events = [
        {"type": "impression", "user_id": "u-imp", "post_id": f"x{i}", "ts": now - i}
        for i in range(200)
    ]
    assert client.post("/v1/events", json={"events": events}).status_code == 202
    seen = c.user_key("u-imp", c.USER_SEEN)
    assert r.zcard(seen) == 50
    assert r.zscore(seen, "x0") is not None and r.zscore(seen, "x199") is None  # newest kept


def test_a_cursor_past_the_end_of_an_unrecorded_scroll_is_400(app: Any, published: str) -> None:
    """Page n of a scroll that records nothing ranks n + 1 pages: a cursor (even a correctly
    signed one) past FEED_STATELESS_MAX_PAGES is refused instead of ranking thousands."""
    from service import cursor

    secret = app.config["CURSOR_SECRET_BYTES"]
    most = app.config["STATELESS_MAX_PAGES"]
    client = app.test_client()
    far = cursor.encode(secret, "nobody-yet", published, most + 5000, time.time(), 0)
    resp = client.get("/v1/feed/nobody-yet", query_string={"cursor": far})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_cursor"
    last = cursor.encode(secret, "nobody-yet", published, most - 1, time.time(), 0)
    assert client.get("/v1/feed/nobody-yet", query_string={"cursor": last}).status_code == 200


def test_events_keep_a_users_sets_bounded(redis_url: str, published: str, r: Any) -> None:
    """Hides, mutes, follows and purchases cannot grow a user's sets past USER_SET_MAX."""
    client = feed_app(redis_url, USER_SET_MAX=10).test_client()
    hides = [{"type": "hide_post", "user_id": "u-many", "post_id": f"h{i}"} for i in range(30)]
    buys = [{"type": "purchase", "user_id": "u-many", "product_id": f"s{i}"} for i in range(25)]
    assert client.post("/v1/events", json={"events": hides + buys}).status_code == 202
    assert r.scard(c.user_key("u-many", c.USER_HIDDEN)) == 10
    assert r.scard(c.user_key("u-many", c.USER_PURCHASES)) == 10
    assert r.xlen(c.EVENTS_KEY) >= 55  # every event is still in the log


def test_a_process_remembers_a_bounded_number_of_renewals(
    redis_url: str, published: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.store import Store

    monkeypatch.setattr(Store, "RENEWED_MAX", 3)
    app = feed_app(redis_url)
    client, store = app.test_client(), app.extensions["feed_store"]
    for i in range(7):
        click = {"type": "click", "user_id": f"renew-{i}", "post_id": "p1"}
        assert client.post("/v1/events", json={"events": [click]}).status_code == 202
        assert len(store._renewed) <= 3
    assert not store.renewal_due("renew-6", time.monotonic())  # the newest is remembered
