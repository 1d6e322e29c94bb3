"""The service's one-round-trip executor (:func:`service.store.round_trip`) on a real server:
the same replies as redis-py's pipeline, error replies that leave the connection in step, and a
dropped connection retried on a fresh one."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from service.store import round_trip
from service.writes import with_scores


def _seed(r: Any) -> None:
    r.set("{u:1}:cand", b"\x00\x01\x02\xff")
    r.zadd("{u:1}:seen", {"p1": 10.5, "p2": 20.25})
    r.sadd("{u:1}:hidden", "p3", "p4")


COMMANDS = [
    ("GET", "{u:1}:cand"),
    ("ZRANGEBYSCORE", "{u:1}:seen", 15, "+inf"),
    ("ZRANGE", "{u:1}:seen", 0, -1, "REV", "WITHSCORES"),
    ("SMEMBERS", "{u:1}:hidden"),
    ("GET", "{u:1}:missing"),
    ("MGET", "{u:1}:cand", "{u:1}:missing"),
]


def test_replies_match_redis_py(r: Any) -> None:
    _seed(r)
    raw = round_trip(r, COMMANDS)
    pipe = r.pipeline(transaction=False)
    for cmd in COMMANDS:
        pipe.execute_command(*cmd)
    cooked = pipe.execute()
    assert raw[0] == cooked[0] == b"\x00\x01\x02\xff"
    assert raw[1] == cooked[1] == [b"p2"]
    # scores are bytes under RESP2 and doubles under RESP3: compare them as floats
    pairs = [[(m, float(s)) for m, s in with_scores(x)] for x in (raw[2], cooked[2])]
    assert pairs[0] == pairs[1] == [(b"p2", 20.25), (b"p1", 10.5)]
    assert set(raw[3]) == set(cooked[3]) == {b"p3", b"p4"}
    assert raw[4] is None and raw[5] == [b"\x00\x01\x02\xff", None]


def test_writes_and_floats_round_trip(r: Any) -> None:
    now = 1_795_576_039.678227
    replies = round_trip(
        r, [("ZADD", "{u:2}:seen", now, "a", now + 1, "b"), ("SET", "k", "v", "EX", 60)]
    )
    assert replies == [2, b"OK"]
    assert r.zscore("{u:2}:seen", "a") == now
    assert 0 < r.ttl("k") <= 60


def test_error_reply_raises_after_reading_every_reply(r: Any) -> None:
    _seed(r)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        round_trip(r, [("SET", "{u:1}:x", "1"), ("GET", "{u:1}:hidden"), ("SET", "{u:1}:y", "2")])
    # the commands around the error ran, and the next round trip reads its own replies
    assert r.get("{u:1}:x") == b"1" and r.get("{u:1}:y") == b"2"
    for _ in range(3):
        assert round_trip(r, [("GET", "{u:1}:x"), ("GET", "{u:1}:y")]) == [b"1", b"2"]


def test_connection_killed_between_calls_is_retried(r: Any) -> None:
    _seed(r)
    round_trip(r, [("CLIENT", "SETNAME", "victim")])
    assert round_trip(r, [("GET", "{u:1}:cand")]) == [b"\x00\x01\x02\xff"]
    killer = redis.Redis(
        connection_pool=redis.ConnectionPool(**r.connection_pool.connection_kwargs)
    )
    try:
        assert killer.client_kill_filter(_type="normal", skipme=True) >= 1
    finally:
        killer.close()
    # the pooled connection is dead: the client's retry reconnects and sends again
    assert round_trip(r, [("GET", "{u:1}:cand")]) == [b"\x00\x01\x02\xff"]


def test_unreachable_server_raises_connection_error() -> None:
    from helpers import free_port

    from feed.redisclient import from_url

    dead = from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2, connect_timeout=0.2)
    with pytest.raises(redis.ConnectionError):
        round_trip(dead, [("GET", "k")])
