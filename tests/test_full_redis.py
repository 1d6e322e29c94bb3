"""A full Redis (``maxmemory`` with ``noeviction``) is not an outage: against a private server
whose memory the test fills until Redis refuses writes, pages keep coming (normal, not
degraded, and never repeating), writes get 507 ``store_full`` and store nothing, ``/readyz``
and ``/metrics`` say so, and an event batch is all or nothing, also across cluster slots."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import (
    drain,
    events,
    feed_app,
    feed_page,
    fill,
    free_port,
    post_ids,
    user_state,
)

from feed import contract as c
from feed import redisserver
from feed.publish import publish
from feed.redisclient import from_url
from service import writes

HEADROOM = 2 * 1024 * 1024  # maxmemory is set this far above the published version


class FullRedis:
    """A private redis-server under ``noeviction`` whose memory can be filled and drained."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        directory.mkdir(parents=True)
        subprocess.run(
            [
                redisserver.redis_server_binary(),
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory)),
                *("--daemonize", "yes", "--pidfile", str(directory / "redis.pid")),
                *("--logfile", str(directory / "redis.log"), "--save", "", "--appendonly", "no"),
                *("--maxmemory", "64mb", "--maxmemory-policy", "noeviction"),
            ],
            check=True,
            capture_output=True,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.r = redis.Redis(port=self.port, socket_timeout=10.0)
        for _ in range(200):
            try:
                self.r.ping()
                break
            except redis.ConnectionError:
                subprocess.run(["sleep", "0.05"], check=True)

    def limit(self, headroom: int = HEADROOM) -> None:
        """``maxmemory`` = what is stored now + ``headroom`` (the published version fits)."""
        self.r.config_set("maxmemory", int(self.r.info("memory")["used_memory"]) + headroom)

    def fill(self) -> None:
        self.limit_was = int(self.r.config_get("maxmemory")["maxmemory"])
        fill(self.r, "t")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            self.r.sadd("probe", "x")  # full: even the smallest write is refused

    def drain(self) -> None:
        drain(self.r, "t", self.limit_was)

    def stop(self) -> None:
        self.r.close()
        redisserver.stop(self.dir)


@pytest.fixture
def full(tmp_path: Path, artifact: Path) -> Iterator[FullRedis]:
    server = FullRedis(tmp_path / "redis")
    publish(from_url(server.url), artifact, activate=True)
    server.limit()
    yield server
    server.stop()


def _metric(client: Any, write: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    found = re.search(rf'^feed_redis_full_total{{write="{write}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_full_redis_serves_pages_and_refuses_writes_with_507(full: FullRedis) -> None:
    client = feed_app(full.url).test_client()
    assert feed_page(client, "u1", limit=10)["degraded"] is False  # warm: the fallback copy
    logged = full.r.xlen(c.EVENTS_KEY)
    before = {w: _metric(client, w) for w in ("events", "post", "page")}
    full.fill()
    keys = full.r.dbsize()

    # reads keep serving normal pages; the scroll never repeats though nothing is recorded
    pages = [feed_page(client, "u2", limit=10)]
    for _ in range(2):
        pages.append(feed_page(client, "u2", limit=10, cursor=pages[-1]["next_cursor"]))
    served = [pid for body in pages for pid in post_ids(body)]
    assert all(body["degraded"] is False for body in pages)
    assert len(served) == len(set(served)) == 30

    # writes: 507 store_full, with a message and Retry-After; nothing stored
    resp = client.post("/v1/events", json=events("u2", ("like", "post_id", served[0])))
    assert resp.status_code == 507, resp.get_json()
    err = resp.get_json()["error"]
    assert err["code"] == "store_full" and "full" in err["message"]
    assert "nothing was stored" in err["message"] and int(resp.headers["Retry-After"]) > 0
    resp = client.post("/v1/posts", json={"post_id": "p-full", "author_id": "u3", "text": "hi"})
    assert resp.status_code == 507 and resp.get_json()["error"]["code"] == "store_full"
    assert full.r.xlen(c.EVENTS_KEY) == logged and full.r.dbsize() == keys
    assert not full.r.exists(c.post_doc_key("p-full"))

    # not an outage: no breaker, readiness stays 200 and says why, the metric counts it
    assert client.application.extensions["feed_store"].available()
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["redis"] == "full"
    assert "507" in ready.get_json()["message"]
    after = {w: _metric(client, w) for w in ("events", "post", "page")}
    assert after["events"] == before["events"] + 1 and after["post"] == before["post"] + 1
    assert after["page"] == before["page"] + 1  # the rest of that scroll writes nothing

    # memory freed: writes are accepted again, readiness says ok
    full.drain()
    client.application.extensions["feed_store"].FULL_MEMORY_S = 0.0
    resp = client.post("/v1/events", json=events("u2", ("like", "post_id", served[0])))
    assert resp.status_code == 202
    assert client.get("/readyz").get_json()["redis"] == "ok"


def test_a_refused_unfollow_and_unlike_batch_changes_nothing(full: FullRedis) -> None:
    """The probe's reproduction: the removals of an unfollow + unlike batch used to apply
    before the batch answered 503, and nothing was logged."""
    client = feed_app(full.url).test_client()
    body = feed_page(client, "u5", limit=5)
    page, author_id = post_ids(body), body["items"][1]["author_id"]
    setup = events("u5", ("follow", "author_id", author_id), ("like", "post_id", page[0]))
    assert client.post("/v1/events", json=setup).status_code == 202
    state, logged = user_state(full.r, "u5"), full.r.xlen(c.EVENTS_KEY)
    assert state[c.USER_LIKES] and state[c.USER_FOLLOWS] and state[c.USER_RT]
    full.fill()
    batch = events("u5", ("unfollow", "author_id", author_id), ("unlike", "post_id", page[0]))
    resp = client.post("/v1/events", json=batch)
    assert resp.status_code == 507 and resp.get_json()["error"]["code"] == "store_full"
    assert user_state(full.r, "u5") == state
    assert full.r.xlen(c.EVENTS_KEY) == logged


def _batch(r: Any, users: list[str]) -> list[list[writes.Command]]:
    """Groups like a cluster's: each user's writes on their slot, the event log last."""
    cfg = {
        "LIKES_MAX": 2,
        "RT_MAX": 3,
        "SEEN_WINDOW_S": 600,
        "USER_STATE_TTL_S": 3_600,
        "EVENT_LOG_MAXLEN": 1_000,
    }
    events = []
    for u in users:
        rt = {c.rt_member(f"n{i}", "similar_to:p9"): 0.5 for i in range(3)}
        events += [
            ({"type": "like", "user_id": u, "post_id": "p9", "ts": 50.0}, rt),
            ({"type": "unfollow", "user_id": u, "author_id": "a1", "ts": 51.0}, {}),
            ({"type": "hide_post", "user_id": u, "post_id": "p2", "ts": 52.0}, {}),
        ]
    log, by_user = writes.event_batch(events, cfg)
    return [*by_user.values(), log]


def _seed(r: Any, users: list[str]) -> None:
    for u in users:
        r.zadd(c.user_key(u, c.USER_LIKES), {"p1": 1.0, "p2": 2.0})  # the trim drops p1
        r.zadd(c.user_key(u, c.USER_RT), {c.rt_member("old", "followed_author"): 3.5})
        r.sadd(c.user_key(u, c.USER_FOLLOWS), "a1", "a2")
        r.sadd(c.user_key(u, c.USER_HIDDEN), "p2")  # already hidden: stays hidden


@pytest.mark.parametrize("failing", ["log", "second user"])
def test_a_batch_across_slots_is_reverted_when_a_later_slot_fails(r: Any, failing: str) -> None:
    """The cluster path on real Redis: one transaction per slot, the log last; when a later
    group fails, the groups already applied are reverted exactly, and the log has nothing."""
    users = ["ua", "ub"]
    _seed(r, users)
    before = {u: user_state(r, u) for u in users}
    if failing == "log":
        r.set(c.EVENTS_KEY, "not a stream")  # XADD fails inside the log's transaction
    else:
        r.set(c.user_key("ub", c.USER_UNFOLLOWS), "not a set")  # fails inside ub's group
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        writes.transact(r, _batch(r, users), cluster=True)
    assert {u: user_state(r, u) for u in users} == before
    if failing == "log":
        assert r.type(c.EVENTS_KEY) == b"string"
    else:
        assert not r.exists(c.EVENTS_KEY)

    r.delete(c.EVENTS_KEY, c.user_key("ub", c.USER_UNFOLLOWS))  # healthy again: applied whole
    writes.transact(r, _batch(r, users), cluster=True)
    for u in users:
        state = user_state(r, u)
        assert [m for m, _ in state[c.USER_LIKES]] == [b"p2", b"p9"]
        assert state[c.USER_FOLLOWS] == [b"a2"] and state[c.USER_UNFOLLOWS] == [b"a1"]
        assert 0 < r.ttl(c.user_key(u, c.USER_LIKES)) <= 3_600
    assert r.xlen(c.EVENTS_KEY) == 6
