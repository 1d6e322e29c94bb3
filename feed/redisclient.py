"""Redis clients: the URL to use, a client for it, and the few reads both halves share.

:func:`from_url` is the one place a redis-py client is made (explicit timeouts, one retry,
``redis+cluster://`` for a Redis Cluster); the service calls it with request timeouts.
:func:`connect` is what offline jobs and notebooks call: ``url``, else ``$FEED_REDIS_URL``,
else the private server of :mod:`feed.redisserver` (the embedded default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from feed import contract as c
from feed import redisserver

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def from_url(url: str, *, socket_timeout: float = 1.0, connect_timeout: float = 1.0) -> Any:
    """A redis-py client for ``url``, with explicit timeouts and one retry.

    ``redis://`` and ``unix://`` give a pooled :class:`redis.Redis`; ``redis+cluster://host:port``
    gives a :class:`redis.cluster.RedisCluster` discovered from that node.
    """
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    opts: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        "health_check_interval": 30,
    }
    for scheme in CLUSTER_SCHEMES:
        if url.startswith(scheme):
            from redis.cluster import RedisCluster

            plain = url.replace("+cluster", "", 1)
            opts.pop("health_check_interval")
            return RedisCluster.from_url(plain, **opts)
    return redis.Redis.from_url(url, **opts)


def is_cluster(client: Any) -> bool:
    """True for a Redis Cluster client."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


ENV_URL = "FEED_REDIS_URL"
#: Timeouts of clients made by :func:`connect` (seconds): offline jobs wait longer than requests.
SOCKET_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0


class RedisNotConfigured(RuntimeError):
    """No Redis URL was given, ``FEED_REDIS_URL`` is unset and no private server may start."""


def redis_url(
    url: str | None = None,
    *,
    start_private: bool = True,
    private_dir: str | Path = redisserver.DEFAULT_DIR,
) -> str:
    """The Redis URL to use: ``url``, else ``$FEED_REDIS_URL``, else a private server.

    Parameters
    ----------
    url : str, optional
        ``redis://``, ``rediss://``, ``unix://`` or ``redis+cluster://`` URL.
    start_private : bool
        Without a URL, start (or reuse) a private ``redis-server`` under ``private_dir``;
        when False, raise :class:`RedisNotConfigured` instead.
    private_dir : path
        Where the private server keeps its socket and data (``./.feed/redis`` by default).

    Returns
    -------
    str

    Examples
    --------
    >>> redis_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    """
    url = url or os.environ.get(ENV_URL)
    if url:
        return url
    if not start_private:
        raise RedisNotConfigured(f"set {ENV_URL} or pass a Redis URL")
    return redisserver.start(private_dir)


def connect(
    url: str | None = None,
    *,
    start_private: bool = True,
    private_dir: str | Path = redisserver.DEFAULT_DIR,
    socket_timeout: float = SOCKET_TIMEOUT_S,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> Any:
    """A Redis client for ``url``, else ``$FEED_REDIS_URL``, else the private server.

    The URL is resolved by :func:`redis_url`, with the same parameters.

    Returns
    -------
    redis.Redis or redis.cluster.RedisCluster
        Pooled and thread-safe, with the given timeouts and one retry.

    Examples
    --------
    >>> r = connect()  # doctest: +SKIP
    >>> versions.live_version(r)  # doctest: +SKIP
    '20261124T201500-3f9a1c'
    """
    resolved = redis_url(url, start_private=start_private, private_dir=private_dir)
    return from_url(resolved, socket_timeout=socket_timeout, connect_timeout=connect_timeout)


def url_of(client: Any) -> str:
    """The URL a redis-py client connects to (with its credentials), for :func:`connect`.

    Examples
    --------
    >>> import redis
    >>> url_of(redis.Redis.from_url("redis://:s3cret@10.0.0.5:6380/2"))
    'redis://:s3cret@10.0.0.5:6380/2'
    >>> url_of(redis.Redis.from_url("unix:///tmp/r.sock?db=1"))
    'unix:///tmp/r.sock?db=1'
    """
    if is_cluster(client):
        node = client.get_default_node()
        kw = client.nodes_manager.connection_kwargs
        scheme = "rediss+cluster" if kw.get("ssl") else "redis+cluster"
        return f"{scheme}://{_auth(kw)}{node.host}:{node.port}"
    kw = client.connection_pool.connection_kwargs
    if kw.get("path"):
        password = f"&password={quote(kw['password'], safe='')}" if kw.get("password") else ""
        return f"unix://{kw['path']}?db={kw.get('db', 0)}{password}"
    ssl = "SSL" in client.connection_pool.connection_class.__name__
    return (
        f"{'rediss' if ssl else 'redis'}://{_auth(kw)}{kw.get('host', 'localhost')}:"
        f"{kw.get('port', 6379)}/{kw.get('db', 0)}"
    )


def _auth(kw: Mapping[str, Any]) -> str:
    user, password = kw.get("username"), kw.get("password")
    if not user and not password:
        return ""
    return f"{quote(user or '', safe='')}:{quote(password or '', safe='')}@"


def client_and_url(redis: Any) -> tuple[Any, str]:
    """(client, url) for a client, a URL, or None (``$FEED_REDIS_URL`` / private server)."""
    if redis is None or isinstance(redis, str):
        url = redis_url(redis)
        return connect(url), url
    return redis, url_of(redis)


def read_history(r: Any, user_id: str, n: int, version: str | None = None) -> dict[str, Any]:
    """A user's history as the service knows it, in one pipelined read: likes since training
    (newest first, with time), products bought and authors followed (the seed ``version``
    published, the live version's when None, plus events, minus unfollows); at most ``n`` of
    each."""
    if version is None:
        live = r.get(c.LIVE_KEY)
        version = c.text(live) if live is not None else None
    pipe = r.pipeline(transaction=False)
    pipe.zrange(c.user_key(user_id, c.USER_LIKES), 0, n - 1, desc=True, withscores=True)
    for kind in (c.USER_PURCHASES, c.USER_FOLLOWS, c.USER_UNFOLLOWS):
        pipe.smembers(c.user_key(user_id, kind))
    if version:
        pipe.get(c.user_key(user_id, c.USER_SEED, version))
    replies = pipe.execute()
    likes, bought, follows, unfollows = replies[:4]
    seed = replies[4] if version else None
    seed_follows, seed_bought = c.decode_seed(seed)
    bought_all = seed_bought | {c.text(x) for x in bought}
    follows_all = (seed_follows | {c.text(x) for x in follows}) - {c.text(x) for x in unfollows}
    return {
        "likes": [{"post_id": c.text(p), "ts": float(ts)} for p, ts in likes],
        "purchases": sorted(bought_all)[:n],
        "follows": sorted(follows_all)[:n],
    }
