"""Small helpers shared by test modules (importable as ``helpers``: pytest puts tests/ on the
path)."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import quote


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def feed_app(redis_url: str, **config: Any) -> Any:
    """The service on ``redis_url``, caching nothing between requests, with ``config`` on top."""
    from service import create_app

    return create_app(
        {
            "REDIS_URL": redis_url,
            "TESTING": True,
            "VERSION_CACHE_S": 0.0,
            "GLOBAL_CACHE_S": 0.0,
            "CURSOR_SECRET": "test-secret",
            **config,
        }
    )


def feed_page(client: Any, user: str, **params: Any) -> dict[str, Any]:
    """A feed page's JSON (asserting a 200)."""
    resp = client.get(f"/v1/feed/{quote(user, safe='')}", query_string=params)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def post_ids(body: dict[str, Any]) -> list[str]:
    return [it["post_id"] for it in body["items"]]


def events(user: str, *specs: tuple[str, str, str]) -> dict[str, Any]:
    """A ``POST /v1/events`` body: one event of ``user`` per (type, field, value)."""
    return {"events": [{"type": t, "user_id": user, field: v} for t, field, v in specs]}


def user_state(r: Any, user: str) -> dict[str, Any]:
    """Every real-time key of ``user`` that is a set or a zset, with its content."""
    from feed import contract as c

    out: dict[str, Any] = {}
    for kind in (
        *(c.USER_SEEN, c.USER_LIKES, c.USER_RT, c.USER_HIDDEN, c.USER_MUTED),
        *(c.USER_FOLLOWS, c.USER_UNFOLLOWS, c.USER_PURCHASES),
    ):
        key = c.user_key(user, kind)
        kind_of = r.type(key).decode()
        if kind_of == "zset":
            out[kind] = r.zrange(key, 0, -1, withscores=True)
        elif kind_of == "set":
            out[kind] = sorted(r.smembers(key))
    return out


def fill(r: Any, tag: str) -> int:
    """Fill a Redis server under ``noeviction`` (or a cluster node, through keys of hash tag
    ``tag``, whose slot it owns) until it refuses a write as full; the keys written. Then
    ``maxmemory`` is lowered 256 kB below what it holds, so memory the server frees by itself
    (idle clients' buffers) cannot make room for a write mid-test. :func:`drain` undoes it."""
    import redis

    n = 0
    for size in (16_384, 1_024, 64):  # a large write is refused while smaller ones still fit
        while True:
            try:
                r.set(f"{{{tag}}}:filler:{n}", b"x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
            n += 1
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - 262_144)
    return n


def drain(r: Any, tag: str, maxmemory: int) -> None:
    """Delete what :func:`fill` wrote and set ``maxmemory`` back."""
    filler = list(r.scan_iter(f"{{{tag}}}:filler:*", count=1000))
    if filler:
        r.delete(*filler)
    r.config_set("maxmemory", maxmemory)
