"""`POST /v1/events` per-event results and the new event types, over HTTP against real Redis."""

from __future__ import annotations

import threading
from typing import Any

from helpers import feed_app, feed_page, user_state

from feed import contract as c


def _post(client: Any, body: Any) -> Any:
    return client.post("/v1/events", json=body)


def test_mixed_batch_stores_the_valid_events_once_and_names_the_rest(client: Any, r: Any) -> None:
    before = r.xlen(c.EVENTS_KEY)
    batch = [
        {"type": "like", "user_id": "mx1", "post_id": "p1"},
        {"type": "teleport", "user_id": "mx1", "post_id": "p2"},
        {"type": "like", "user_id": "mx1"},  # no post_id
        {"type": "click", "user_id": "mx1", "post_id": "p3"},
        {"type": "like", "user_id": "bad|id", "post_id": "p4"},
    ]
    resp = _post(client, {"events": batch})
    assert resp.status_code == 207, resp.get_json()
    body = resp.get_json()
    assert body["accepted"] == 2 and body["rejected"] == 3
    assert [x["index"] for x in body["results"]] == [1, 2, 4]
    codes = [x["error"]["code"] for x in body["results"]]
    assert codes == ["unknown_event_type", "invalid_post_id", "invalid_user_id"]
    assert body["results"][1]["error"]["message"].startswith("events[2].post_id")
    assert body["results"][2]["error"]["message"].startswith("events[4].user_id")
    # the two valid events, each once, in the log and in the user's state
    assert r.xlen(c.EVENTS_KEY) == before + 2
    logged = [c.text(f[b"type"]) for _, f in r.xrange(c.EVENTS_KEY)][-2:]
    assert logged == ["like", "click"]
    state = user_state(r, "mx1")
    assert [m for m, _ in state[c.USER_LIKES]] == [b"p1"]
    assert b"p3" in [m for m, _ in state[c.USER_SEEN]]


def test_all_valid_is_202_and_all_invalid_is_400_with_nothing_stored(client: Any, r: Any) -> None:
    ok = _post(client, [{"type": "click", "user_id": "mx2", "post_id": "p1"}])  # a bare list
    assert ok.status_code == 202
    assert ok.get_json()["accepted"] == 1 and ok.get_json()["results"] == []
    before = r.xlen(c.EVENTS_KEY)
    bad = _post(
        client,
        {"events": [{"type": "zap", "user_id": "mx2"}, {"type": "like", "user_id": "mx2"}]},
    )
    assert bad.status_code == 400
    body = bad.get_json()
    assert body["error"]["code"] == "unknown_event_type" and body["rejected"] == 2
    assert body["accepted"] == 0 and len(body["results"]) == 2
    assert r.xlen(c.EVENTS_KEY) == before


def test_a_malformed_body_is_a_400_naming_the_limit(app: Any, r: Any) -> None:
    client = app.test_client()
    before = r.xlen(c.EVENTS_KEY)
    text = client.post("/v1/events", data="not json", content_type="application/json")
    assert text.status_code == 400 and text.get_json()["error"]["code"] == "invalid_json"
    assert _post(client, {"events": []}).status_code == 400
    assert _post(client, "a string").status_code == 400
    limit = app.config["MAX_EVENTS_PER_REQUEST"]
    over = [{"type": "click", "user_id": "mx3", "post_id": "p1"}] * (limit + 1)
    resp = _post(client, over)
    assert resp.status_code == 400 and str(limit) in resp.get_json()["error"]["message"]
    assert r.xlen(c.EVENTS_KEY) == before


def test_favorite_add_to_cart_and_share_change_real_time_state(client: Any, r: Any) -> None:
    resp = _post(
        client,
        {
            "events": [
                {"type": "favorite", "user_id": "nt1", "post_id": "p10"},
                {"type": "add_to_cart", "user_id": "nt1", "product_id": "sku-1", "post_id": "p11"},
                {"type": "add_to_cart", "user_id": "nt1", "product_id": "sku-2"},
                {"type": "share", "user_id": "nt1", "post_id": "p12", "channel": "moments"},
                {"type": "share", "user_id": "nt1", "post_id": "p13", "channel": "a/b"},
                {"type": "favorite", "user_id": "nt1"},
            ]
        },
    )
    assert resp.status_code == 207, resp.get_json()
    assert [x["index"] for x in resp.get_json()["results"]] == [4, 5]
    assert "channel" in resp.get_json()["results"][0]["error"]["message"]
    state = user_state(r, "nt1")
    assert [m for m, _ in state[c.USER_LIKES]] == [b"p10"]  # a favourite steers like a like
    seen = {m for m, _ in state[c.USER_SEEN]}
    assert {b"p11", b"p12"} <= seen  # add_to_cart and share opened the post: a click
    rt = {c.parse_rt_member(m)[1].partition(":")[0] for m, _ in state.get(c.USER_RT, [])}
    assert rt <= {"similar_to"}
    un = _post(client, {"events": [{"type": "unfavorite", "user_id": "nt1", "post_id": "p10"}]})
    assert un.status_code == 202
    assert c.USER_LIKES not in user_state(r, "nt1")
    logged = {c.text(f[b"type"]) for _, f in r.xrange(c.EVENTS_KEY)}
    assert {"favorite", "unfavorite", "add_to_cart", "share"} <= logged


def test_a_share_reaches_the_receivers_next_page_with_its_reason(
    client: Any, r: Any, published: str
) -> None:
    page = feed_page(client, "u5", limit=50)
    shown = {it["post_id"] for it in page["items"]}
    table = c.decode_json(r.get(c.version_key(published, "posts")))
    post = next(
        p
        for p, a in zip(table["post_id"], table["author_id"], strict=True)
        if p not in shown and a != "u5"
    )
    resp = _post(
        client,
        {"events": [{"type": "share", "user_id": "u9", "post_id": post, "receiver_id": "u5"}]},
    )
    assert resp.status_code == 202, resp.get_json()
    rt = r.zrange(c.user_key("u5", c.USER_RT), 0, -1)
    assert c.rt_member(post, "shared_by:u9").encode() in rt
    assert 0 < r.ttl(c.user_key("u5", c.USER_RT))  # bounded: it expires
    items = feed_page(client, "u5", limit=10)["items"]
    reasons = {it["post_id"]: it["reason"] for it in items}
    assert reasons.get(post) == "shared_by:u9", reasons


def test_shares_to_one_receiver_stay_bounded(redis_url: str, published: str, r: Any) -> None:
    client = feed_app(redis_url, RT_MAX=5).test_client()
    table = c.decode_json(r.get(c.version_key(published, "posts")))
    posts = table["post_id"][:12]
    shares = [
        {"type": "share", "user_id": f"s{i}", "post_id": p, "receiver_id": "rcv"}
        for i, p in enumerate(posts)
    ]
    assert _post(client, shares).status_code == 202
    assert r.zcard(c.user_key("rcv", c.USER_RT)) == 5


def test_concurrent_mixed_batches_store_each_valid_event_once(client: Any, r: Any) -> None:
    before = r.xlen(c.EVENTS_KEY)
    statuses: list[int] = []

    def send(i: int) -> None:
        batch = [
            {"type": "click", "user_id": f"cc{i}", "post_id": "p1"},
            {"type": "nope", "user_id": f"cc{i}"},
            {"type": "favorite", "user_id": f"cc{i}", "post_id": "p2"},
        ]
        statuses.append(_post(client, batch).status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [207] * 8
    assert r.xlen(c.EVENTS_KEY) == before + 16
    assert int(r.get(c.EVENTS_SEQ_KEY)) >= 16


def test_metrics_count_rejections_and_the_unexported_backlog(client: Any, r: Any) -> None:
    _post(client, [{"type": "nope", "user_id": "m1"}, {"type": "click", "user_id": "m1",
                                                       "post_id": "p1"}])  # fmt: skip
    text = client.get("/metrics").get_data(as_text=True)
    assert 'feed_events_rejected_total{code="unknown_event_type"}' in text
    n = r.xlen(c.EVENTS_KEY)
    assert f"feed_events_unexported {float(n)}" in text  # nothing exported yet: the whole log
    assert "feed_events_lost_unexported_total 0.0" in text
