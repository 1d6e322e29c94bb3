"""Group-buys (拼購) through the API: exact state under real concurrency on real Redis (a single
server and a 3-master cluster), expiry, idempotent joins, the open-group cap, the per-user
index, the event log, and 400s naming the field."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers import feed_app
from test_cluster import cluster_url, rc  # noqa: F401 - the cluster fixtures

from feed import contract as c

PRODUCT = "sku-1"  # a product of the published test version
N_USERS = 200


def create(client: Any, **body: Any) -> Any:
    return client.post("/v1/groups", json={"initiator_id": "u1", "product_id": PRODUCT, **body})


def join(client: Any, group_id: str, user: str) -> Any:
    return client.post(f"/v1/groups/{group_id}/join", json={"user_id": user})


def error_code(resp: Any) -> str:
    return resp.get_json()["error"]["code"]  # type: ignore[no-any-return]


def test_create_join_get(client: Any) -> None:
    resp = create(client, group_id="g1", size=3, ttl_s=3600, price=9.9)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["group_id"] == "g1" and body["initiator_id"] == "u1"
    assert body["members"] == ["u1"] and body["status"] == "open" and body["spots_left"] == 2
    assert body["size"] == 3 and body["price"] == 9.9 and body["expires_at"].endswith("Z")
    assert client.get("/v1/groups/g1").get_json() == body

    first = join(client, "g1", "u2")
    assert first.status_code == 200
    assert first.get_json()["members"] == ["u1", "u2"] and first.get_json()["status"] == "open"
    full = join(client, "g1", "u3").get_json()
    assert full["status"] == "succeeded" and full["members"] == ["u1", "u2", "u3"]
    assert full["spots_left"] == 0
    late = join(client, "g1", "u4")
    assert late.status_code == 409 and error_code(late) == "group_full"
    assert client.get("/v1/groups/g1").get_json()["members"] == ["u1", "u2", "u3"]


def test_generated_id_and_defaults(client: Any) -> None:
    body = create(client).get_json()
    assert body["group_id"].startswith("g-") and body["size"] == 2
    assert body["price"] is None
    assert client.get(f"/v1/groups/{body['group_id']}").status_code == 200


def test_existing_id_is_409_and_unchanged(client: Any) -> None:
    assert create(client, group_id="dup", size=4).status_code == 201
    again = create(client, group_id="dup", size=2, initiator_id="u9")
    assert again.status_code == 409 and error_code(again) == "group_exists"
    state = client.get("/v1/groups/dup").get_json()
    assert state["size"] == 4 and state["initiator_id"] == "u1"


def test_a_retried_create_holds_no_slot_once_the_group_is_closed(client: Any, r: Any) -> None:
    """Creating an existing id again is 409, and it keeps an open-group slot only while that
    group is the initiator's own and open: retries of a succeeded group free theirs."""
    slots = c.user_key("u7", c.USER_GROUPS_OPEN)
    assert create(client, group_id="gretry", initiator_id="u7", size=2).status_code == 201
    assert r.zscore(slots, "gretry") is not None
    assert create(client, group_id="gretry", initiator_id="u7").status_code == 409
    assert r.zscore(slots, "gretry") is not None  # still open: its slot stays
    assert join(client, "gretry", "u8").get_json()["status"] == "succeeded"
    assert r.zscore(slots, "gretry") is None
    for _ in range(3):
        again = create(client, group_id="gretry", initiator_id="u7")
        assert again.status_code == 409 and error_code(again) == "group_exists"
    assert r.zscore(slots, "gretry") is None


def test_joining_twice_and_the_initiator_change_nothing(client: Any, r: Any) -> None:
    create(client, group_id="g2", size=3)
    once = join(client, "g2", "u2").get_json()
    n_events = r.xlen(c.EVENTS_KEY)
    twice = join(client, "g2", "u2")
    assert twice.status_code == 200 and twice.get_json() == once
    starter = join(client, "g2", "u1")
    assert starter.status_code == 200 and starter.get_json() == once
    assert r.xlen(c.EVENTS_KEY) == n_events  # no second group_join logged


def cancel(client: Any, group_id: str, user: str) -> Any:
    return client.post(f"/v1/groups/{group_id}/cancel", json={"user_id": user})


def test_the_initiator_cancels_and_the_group_is_closed(client: Any, r: Any) -> None:
    create(client, group_id="gc", size=3)
    assert join(client, "gc", "u2").status_code == 200
    assert r.zscore(c.user_key("u1", c.USER_GROUPS_OPEN), "gc") is not None
    other = cancel(client, "gc", "u2")  # a member, not the initiator
    assert other.status_code == 403 and error_code(other) == "not_initiator"
    assert client.get("/v1/groups/gc").get_json()["status"] == "open"
    n_events = r.xlen(c.EVENTS_KEY)
    done = cancel(client, "gc", "u1")
    assert done.status_code == 200
    body = done.get_json()
    assert body["status"] == "cancelled" and body["members"] == ["u1", "u2"]
    assert body["spots_left"] == 0
    assert r.zscore(c.user_key("u1", c.USER_GROUPS_OPEN), "gc") is None  # the slot is free
    last = r.xrevrange(c.EVENTS_KEY, count=1)[0][1]
    assert last[b"type"] == b"group_cancel" and last[b"group_id"] == b"gc"
    late = join(client, "gc", "u3")
    assert late.status_code == 409 and error_code(late) == "group_closed"
    again = cancel(client, "gc", "u1")  # idempotent: nothing changes, nothing logged
    assert again.status_code == 200 and again.get_json() == body
    assert r.xlen(c.EVENTS_KEY) == n_events + 1
    assert client.get("/v1/groups/gc").get_json() == body


def test_a_succeeded_or_unknown_group_cannot_be_cancelled(client: Any) -> None:
    create(client, group_id="gs", size=2)
    assert join(client, "gs", "u2").get_json()["status"] == "succeeded"
    resp = cancel(client, "gs", "u1")
    assert resp.status_code == 409 and error_code(resp) == "group_full"
    assert client.get("/v1/groups/gs").get_json()["status"] == "succeeded"
    assert cancel(client, "nope", "u1").status_code == 404
    bad = client.post("/v1/groups/gs/cancel", json={})
    assert bad.status_code == 400 and "user_id" in bad.get_json()["error"]["message"]


def test_expired_group_takes_nobody(client: Any) -> None:
    create(client, group_id="short", size=2, ttl_s=1)
    time.sleep(1.2)
    resp = join(client, "short", "u2")
    assert resp.status_code == 409 and error_code(resp) == "group_expired"
    state = client.get("/v1/groups/short").get_json()
    assert state["members"] == ["u1"] and state["status"] == "failed"


def test_unknown_group_is_404(client: Any) -> None:
    assert client.get("/v1/groups/nosuch").status_code == 404
    resp = join(client, "nosuch", "u2")
    assert resp.status_code == 404 and error_code(resp) == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"initiator_id": None}, "initiator_id"),
        ({"initiator_id": "a/b"}, "initiator_id"),
        ({"product_id": None}, "product_id"),
        ({"size": 1}, "size"),
        ({"size": 51}, "size"),
        ({"size": 2.5}, "size"),
        ({"size": "3"}, "size"),
        ({"size": True}, "size"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": 30 * 86_400}, "ttl_s"),
        ({"price": -1}, "price"),
        ({"group_id": "x" * 200}, "group_id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_bodies_name_the_field(client: Any, r: Any, body: dict, field: str) -> None:
    resp = client.post("/v1/groups", json={"initiator_id": "u1", "product_id": PRODUCT, **body})
    assert resp.status_code == 400, resp.get_json()
    assert field in resp.get_json()["error"]["message"]
    assert not list(r.scan_iter(match="{grp:*"))  # nothing half-applied


def test_bad_join_bodies(client: Any) -> None:
    create(client, group_id="g3")
    for body in ({}, {"user_id": ""}, {"user_id": 7}):
        resp = client.post("/v1/groups/g3/join", json=body)
        assert resp.status_code == 400 and "user_id" in resp.get_json()["error"]["message"]
    assert client.post("/v1/groups/g3/join", data="nope").status_code == 400


def test_unknown_product_is_400(client: Any, r: Any) -> None:
    resp = create(client, product_id="sku-nosuch")
    assert resp.status_code == 400 and error_code(resp) == "unknown_product"
    assert "product_id" in resp.get_json()["error"]["message"]
    assert r.zcard(c.user_key("u1", c.USER_GROUPS_OPEN)) == 0


def test_open_groups_per_initiator_are_capped(redis_url: str, published: str) -> None:
    client = feed_app(redis_url, GROUP_OPEN_MAX=2).test_client()
    assert create(client, group_id="a").status_code == 201
    assert create(client, group_id="b").status_code == 201
    third = create(client, group_id="c")
    assert third.status_code == 409 and error_code(third) == "too_many_open_groups"
    assert client.get("/v1/groups/c").status_code == 404
    join(client, "a", "u2")  # a fills up: no longer open, a slot is free again
    assert create(client, group_id="c").status_code == 201


def test_user_index_is_capped_and_expires(redis_url: str, published: str, r: Any) -> None:
    client = feed_app(redis_url, USER_GROUPS_MAX=3).test_client()
    for i in range(5):
        create(client, group_id=f"i{i}", initiator_id=f"s{i}", size=5)
        join(client, f"i{i}", "joiner")
    index = c.user_key("joiner", c.USER_GROUPS)
    assert r.zcard(index) == 3
    assert 0 < r.ttl(index) <= 14 * 86_400 + 1
    assert 0 < r.ttl(c.group_key("i0", c.GROUP_STATE)) <= 86_400 + 7 * 86_400 + 1
    assert r.ttl(c.user_key("s0", c.USER_GROUPS_OPEN)) > 0


def test_events_are_in_the_stream(client: Any, r: Any) -> None:
    create(client, group_id="ev", size=2)
    join(client, "ev", "u2")
    entries = [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(c.EVENTS_KEY)]
    kinds = {e["type"]: e for e in entries}
    start, joined = kinds["group_start"], kinds["group_join"]
    assert start["group_id"] == joined["group_id"] == "ev"
    assert start["product_id"] == joined["product_id"] == PRODUCT
    assert start["user_id"] == "u1" and joined["user_id"] == "u2"
    assert float(joined["ts"]) >= float(start["ts"]) > 0


# --- exactness under concurrency ---------------------------------------------------------------
@pytest.fixture
def server(app: Any) -> Iterator[str]:
    """The app behind a real threaded HTTP server: host:port."""
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join(5)


def _post(address: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(address, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _race(join_one: Any) -> list[Any]:
    """``join_one(user)`` for N_USERS users from N_USERS threads released together."""
    start = threading.Barrier(N_USERS)

    def go(user: str) -> Any:
        start.wait()
        return join_one(user)

    with ThreadPoolExecutor(N_USERS) as pool:
        return list(pool.map(go, [f"j{i}" for i in range(N_USERS)]))


def test_200_concurrent_joins_over_http(server: str, client: Any) -> None:
    assert create(client, group_id="race", size=3).status_code == 201
    results = _race(lambda user: _post(server, "/v1/groups/race/join", {"user_id": user}))
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 2, 409: 198}, statuses
    assert {body["error"]["code"] for s, body in results if s == 409} == {"group_full"}
    state = client.get("/v1/groups/race").get_json()
    winners = sorted(body["members"][-1] for s, body in results if s == 200)
    assert state["status"] == "succeeded" and len(state["members"]) == 3
    assert sorted(state["members"][1:]) == winners


def test_200_concurrent_joins_on_a_cluster(rc: Any, cluster_url: str) -> None:  # noqa: F811
    from redis.cluster import RedisCluster

    from service.groups import GroupError, Groups

    # a client with a connection per thread (redis-py's cluster pools refuse more than
    # max_connections at once instead of waiting)
    client = RedisCluster.from_url(cluster_url.replace("+cluster", ""), max_connections=256)
    groups = Groups(client, feed_app("redis://unused:1").config)
    group_id = "race-cluster"
    groups.create(group_id, PRODUCT, "u1", 3, 3600, None)

    def join_one(user: str) -> str:
        try:
            groups.join(group_id, user)
        except GroupError as e:
            return e.code
        return "ok"

    outcomes = Counter(_race(join_one))
    assert outcomes == {"ok": 2, "group_full": 198}, outcomes
    state = groups.get(group_id)
    assert state is not None and state.status == "succeeded" and len(state.members) == 3
    slots = {rc.keyslot(c.group_key(group_id, k)) for k in (c.GROUP_STATE, c.GROUP_MEMBERS)}
    assert len(slots) == 1
    assert rc.xlen(c.EVENTS_KEY) == 3  # one group_start, two group_join
    client.close()
