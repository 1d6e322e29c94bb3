"""Every Redis command the service issues: per-version tables cached in process, global caches,
one pipelined read of a user's state, one MGET of documents, the writes of events and new posts,
and the few reads of the other routes (neighbour lists, readiness, a user's history). The data
it returns is :mod:`service.state`'s.

A page's two round trips go through :func:`round_trip`, which sends the commands as one packed
write and reads their raw replies straight off a pooled connection: redis-py's ``Pipeline``
spends three times the client CPU on the same work (command stack, response callbacks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from hiredis import pack_command
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from feed import contract as c
from feed.experiments import Experiment, running
from feed.redisclient import is_cluster, read_history
from service.state import FreshPosts, Served, UserState, VersionTable


def _contract(meta: bytes) -> Any:
    try:
        return (c.decode_json(meta) or {}).get("contract")
    except ValueError:
        return None


def _realtime(member: Any, score: Any) -> tuple[str, float, str]:
    post, reason = c.parse_rt_member(member)
    return post, c.rt_strength(float(score)), reason


def _with_scores(reply: Any) -> list[tuple[Any, Any]]:
    """(member, score) pairs of a ``WITHSCORES`` reply: flat under RESP2, pairs under RESP3
    or after redis-py's response callback.

    >>> _with_scores([b"a", b"1", b"b", b"2"]), _with_scores([[b"a", 1.0]])
    ([(b'a', b'1'), (b'b', b'2')], [(b'a', 1.0)])
    """
    if reply and isinstance(reply[0], (list, tuple)):
        return [(m, sc) for m, sc in reply]
    return list(zip(reply[::2], reply[1::2], strict=True))


Command = tuple[Any, ...]


def round_trip(r: Any, commands: list[Command]) -> list[Any]:
    """The raw replies of ``commands`` (e.g. ``("GET", key)``), sent in one round trip.

    On a standalone server: one packed write on a pooled connection, then each reply read as
    it comes (no response callbacks: an ``SMEMBERS`` reply is a list, a ``WITHSCORES`` one
    flat). A connection error or timeout is retried as the client's ``retry`` says, on a fresh
    connection; an error reply raises :class:`redis.ResponseError` once every reply is read.
    On a cluster: a redis-py pipeline, which splits the commands by node.
    """
    if isinstance(r, RedisCluster):
        pipe = r.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return list(pipe.execute())
    packed = [b"".join([pack_command(cmd) for cmd in commands])]
    pool = r.connection_pool
    conn = pool.get_connection()

    def send_and_read() -> list[Any]:
        conn.send_packed_command(packed)
        replies = []
        for _ in commands:
            try:
                replies.append(conn.read_response(disable_decoding=True))
            except ResponseError as e:  # the reply was consumed: keep reading the others
                replies.append(e)
        return replies

    try:
        replies = conn.retry.call_with_retry(send_and_read, lambda _: conn.disconnect())
    except BaseException:
        conn.disconnect()  # never hand back a connection with replies left unread
        raise
    finally:
        pool.release(conn)
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


def _add_realtime(
    pipe: Any, user: str, members: Mapping[str, float], ts: float, rt_max: int
) -> None:
    if members:
        rt = c.user_key(user, c.USER_RT)
        pipe.zadd(rt, {m: c.rt_score(ts, s) for m, s in members.items()})
        pipe.zremrangebyrank(rt, 0, -rt_max - 1)


def _apply(
    pipe: Any, ev: Mapping[str, Any], members: Mapping[str, float], cfg: Mapping[str, Any]
) -> None:
    """Queue the real-time state changes of one event on ``pipe``.

    ``like`` adds ``members`` (the post's neighbours) to the real-time candidates and
    ``unlike`` removes exactly those; ``follow`` adds ``members`` (the author's newest posts)
    and ``unfollow`` removes them; ``hide_post`` and ``see_fewer_author`` feed the read
    path's filters.
    """
    u, kind, ts = ev["user_id"], ev["type"], ev["ts"]
    k = c.user_key
    if kind in ("impression", "click"):
        pipe.zadd(k(u, c.USER_SEEN), {ev["post_id"]: ts})
    elif kind == "like":
        pipe.zadd(k(u, c.USER_LIKES), {ev["post_id"]: ts})
        pipe.zremrangebyrank(k(u, c.USER_LIKES), 0, -cfg["LIKES_MAX"] - 1)
        _add_realtime(pipe, u, members, ts, cfg["RT_MAX"])
    elif kind == "unlike":
        pipe.zrem(k(u, c.USER_LIKES), ev["post_id"])
        if members:
            pipe.zrem(k(u, c.USER_RT), *members)
    elif kind == "purchase":
        pipe.sadd(k(u, c.USER_PURCHASES), ev["product_id"])
    elif kind == "follow":
        pipe.sadd(k(u, c.USER_FOLLOWS), ev["author_id"])
        pipe.srem(k(u, c.USER_UNFOLLOWS), ev["author_id"])
        _add_realtime(pipe, u, members, ts, cfg["RT_MAX"])
    elif kind == "unfollow":
        pipe.srem(k(u, c.USER_FOLLOWS), ev["author_id"])
        pipe.sadd(k(u, c.USER_UNFOLLOWS), ev["author_id"])
        if members:
            pipe.zrem(k(u, c.USER_RT), *members)
    elif kind == "hide_post":
        pipe.sadd(k(u, c.USER_HIDDEN), ev["post_id"])
    elif kind == "see_fewer_author":
        pipe.sadd(k(u, c.USER_MUTED), ev["author_id"])


class Store:
    """Thread-safe caches over one Redis client (one per process)."""

    def __init__(self, r: Any, config: dict[str, Any]) -> None:
        self.r = r
        self.config = config
        self._lock = threading.Lock()
        self._tables: dict[str, VersionTable] = {}
        self._tokens: dict[str, dict[str, np.ndarray]] = {}
        self._live: tuple[float, str | None, frozenset[str]] = (0.0, None, frozenset())
        self._experiment: tuple[float, Experiment | None] = (-1e18, None)
        self._global: tuple[float, dict[str, Any]] = (0.0, {})
        self._down_until = 0.0  # circuit breaker: skip Redis until then after an error
        self.fallback: tuple[str | None, list[Any]] = (None, [])  # version, rendered items

    # -- outages ---------------------------------------------------------------------------
    def available(self) -> bool:
        """False for ``REDIS_BREAKER_S`` after a Redis error: requests answer at once
        (degraded or 503) instead of each waiting for a timeout."""
        return time.monotonic() >= self._down_until

    def mark_down(self) -> None:
        self._down_until = time.monotonic() + self.config["REDIS_BREAKER_S"]

    def remember_fallback(self, version: str, items: list[Any]) -> None:
        """Keep a hydrated trending page of the live version for outages."""
        self.fallback = (version, items)

    # -- versions ------------------------------------------------------------------------
    def _registry(self) -> tuple[str | None, frozenset[str]]:
        """The live version and every servable version (registered under this release's Redis
        contract): one round trip (one cluster slot) per ``VERSION_CACHE_S``, re-read at once
        while no version is live."""
        at, live, known = self._live
        if time.monotonic() - at < self.config["VERSION_CACHE_S"] and live is not None:
            return live, known
        pipe = self.r.pipeline(transaction=False)
        pipe.get(c.LIVE_KEY)
        pipe.hgetall(c.VERSIONS_KEY)
        raw, metas = pipe.execute()
        live = c.text(raw) if raw is not None else None
        known = frozenset(
            c.text(v) for v, meta in metas.items() if _contract(meta) == c.CONTRACT_VERSION
        )
        self._live = (time.monotonic(), live, known)
        return live, known

    def live_version(self) -> str | None:
        """The live version id (cached for ``VERSION_CACHE_S``)."""
        return self._registry()[0]

    def experiment(self) -> Experiment | None:
        """The running experiment that routes the home feed, cached like the live version."""
        at, exp = self._experiment
        if time.monotonic() - at < self.config["VERSION_CACHE_S"]:
            return exp
        exp = running(self.r)
        self._experiment = (time.monotonic(), exp)
        return exp

    def table(self, version: str) -> VersionTable | None:
        """The version's post table (cached; a version never changes once published).

        None for a version no longer in the registry (deleted), noticed within
        ``VERSION_CACHE_S``: a cursor pinned to it then continues on the live version.
        """
        if version not in self._registry()[1]:
            with self._lock:
                self._tables.pop(version, None)
            return None
        t = self._tables.get(version)
        if t is not None:
            return t
        pipe = self.r.pipeline(transaction=False)
        pipe.get(c.version_key(version, "posts"))
        pipe.get(c.version_key(version, "trending"))
        raw_posts, raw_trend = pipe.execute()
        if raw_posts is None:
            return None
        p = c.decode_json(raw_posts)
        items, scores, _ = c.decode_candidates(raw_trend)
        t = VersionTable(
            version,
            p["post_id"],
            p["author_id"],
            p["created_at"],
            p["category"],
            p["product_ids"],
            items,
            scores,
            p.get("product_category") or {},
        )
        with self._lock:
            self._tables[version] = t
            while len(self._tables) > 4:  # keep the few versions in use
                self._tables.pop(next(iter(self._tables)))
        return t

    def token_index(self, version: str) -> dict[str, np.ndarray]:
        """The version's token -> post indices index (``interests=``), loaded on first use.

        Costs one round trip per process and version; versions published before the index
        existed give an empty index (categories still match through the post table).
        """
        index = self._tokens.get(version)
        if index is None:
            index = c.decode_token_index(self.r.get(c.version_key(version, "tokens")))
            with self._lock:
                self._tokens[version] = index
                while len(self._tokens) > 4:
                    self._tokens.pop(next(iter(self._tokens)))
        return index

    # -- global, briefly cached ----------------------------------------------------------
    def global_state(self) -> dict[str, Any]:
        """``fresh``: the ``FRESH_POSTS`` newest posts created through the API with their
        metadata (:class:`FreshPosts`, newest first); ``oos``: the out-of-stock product set.

        Two round trips per ``GLOBAL_CACHE_S`` (the fresh list with the stock set, then the
        metadata of just those posts): the metadata hash keeps every API-created post until
        the next training, so it is never read whole.
        """
        at, g = self._global
        if time.monotonic() - at < self.config["GLOBAL_CACHE_S"] and g:
            return g
        n = self.config["FRESH_POSTS"]
        fresh, oos = round_trip(
            self.r,
            [
                ("ZRANGE", c.FRESH_KEY, 0, n - 1, "REV", "WITHSCORES"),
                ("SMEMBERS", c.OUT_OF_STOCK_KEY),
            ],
        )
        fresh = [(c.text(p), float(ts)) for p, ts in _with_scores(fresh)]
        metas = self.r.hmget(c.FRESH_META_KEY, [p for p, _ in fresh]) if fresh else []
        # newest first, as the zset read them
        fresh_meta = {p: c.decode_json(m) for (p, _), m in zip(fresh, metas, strict=True) if m}
        out_of_stock = frozenset(c.text(x) for x in oos)
        g = {"fresh": FreshPosts.build(fresh_meta, out_of_stock), "oos": out_of_stock}
        self._global = (time.monotonic(), g)
        return g

    def fresh_meta(self, post_id: str) -> dict[str, Any] | None:
        """The metadata of one post created through the API (also older than the
        ``FRESH_POSTS`` newest), or None."""
        meta = c.decode_json(self.r.hget(c.FRESH_META_KEY, post_id))
        return meta if isinstance(meta, dict) else None

    def forget_global(self) -> None:
        """Drop the cached global state (after this process changed it)."""
        self._global = (0.0, {})

    # -- one user ------------------------------------------------------------------------
    def user_state(
        self, user_id: str, version: str, now: float, replay_key: str | None = None
    ) -> UserState:
        """Everything about one user in ONE pipelined round trip (one cluster slot).

        ``replay_key`` (:func:`feed.contract.page_key` of the request's cursor) also reads the
        page that cursor already led to, so a retried cursor gets the same page.
        """
        k = c.user_key
        window = now - self.config["SEEN_WINDOW_S"]
        commands: list[Command] = [
            ("GET", k(user_id, "cand", version)),
            ("ZRANGEBYSCORE", k(user_id, c.USER_SEEN), window, "+inf"),
            ("ZRANGE", k(user_id, c.USER_LIKES), 0, -1),
            ("ZRANGE", k(user_id, c.USER_RT), 0, self.config["RT_MAX"] - 1, "REV", "WITHSCORES"),
        ]
        for kind in (
            c.USER_HIDDEN,
            c.USER_MUTED,
            c.USER_FOLLOWS,
            c.USER_UNFOLLOWS,
            c.USER_PURCHASES,
        ):
            commands.append(("SMEMBERS", k(user_id, kind)))
        commands.append(("GET", k(user_id, c.USER_SEED)))
        if replay_key:
            commands.append(("GET", replay_key))
        res = round_trip(self.r, commands)
        cand, seen, liked, rt, hidden, muted, follows, unfollows, bought, seed = res[:10]
        replay = c.decode_json(res[10]) if replay_key else None
        seed_follows, seed_bought = c.decode_seed(seed)
        return UserState(
            candidates=c.decode_candidates(cand),
            seen={c.text(x) for x in seen},
            liked={c.text(x) for x in liked},
            realtime=[_realtime(m, sc) for m, sc in _with_scores(rt)],
            hidden={c.text(x) for x in hidden},
            muted={c.text(x) for x in muted},
            follows=seed_follows | {c.text(x) for x in follows},
            unfollows={c.text(x) for x in unfollows},
            bought=seed_bought | {c.text(x) for x in bought},
            replay=[(str(p), float(sc), str(why)) for p, sc, why in replay] if replay else None,
        )

    # -- documents -----------------------------------------------------------------------
    def documents(
        self,
        post_ids: list[str],
        product_ids: list[str],
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Post and product documents in ONE MGET (split per node on a cluster)."""
        keys = [c.post_doc_key(p) for p in post_ids] + [c.product_doc_key(p) for p in product_ids]
        if not keys:
            return {}, {}
        raw = self.r.mget_nonatomic(keys) if is_cluster(self.r) else self.r.mget(keys)
        posts = {p: c.decode_json(v) for p, v in zip(post_ids, raw, strict=False) if v}
        prods = {
            p: c.decode_json(v) for p, v in zip(product_ids, raw[len(post_ids) :], strict=True) if v
        }
        return posts, prods

    def cards(self, post_ids: list[str], served: Served | None = None) -> dict[str, bytes]:
        """Post id -> its card (raw JSON, see :func:`feed.contract.card`) in ONE round trip,
        which with ``served`` also marks the page served (the page's only write).

        Served posts go into the user's seen set (trimmed to ``SEEN_WINDOW_S`` and
        ``SEEN_MAX``); a page in an experiment is logged as an exposure; ``served.replay`` keeps
        the page a cursor led to for ``PAGE_REPLAY_TTL_S``, so a retried cursor gets it again.
        """
        if not post_ids:
            return {}
        keys = [c.card_key(p) for p in post_ids]
        cluster = is_cluster(self.r)
        # cards spread over a cluster: one GET each, grouped by node; else one MGET
        commands: list[Command] = [("GET", k) for k in keys] if cluster else [("MGET", *keys)]
        if served is not None:
            commands += self._record(post_ids, served)
        res = round_trip(self.r, commands)
        raw = res[: len(keys)] if cluster else res[0]
        return {p: v for p, v in zip(post_ids, raw, strict=True) if v}

    def _record(self, post_ids: list[str], served: Served) -> list[Command]:
        """The writes that mark ``post_ids`` served (see :meth:`cards`)."""
        cfg, now = self.config, served.now
        seen = c.user_key(served.user_id, c.USER_SEEN)
        out: list[Command] = []
        if served.replay is not None and cfg["PAGE_REPLAY_TTL_S"] > 0:
            key, page = served.replay
            out.append(("SET", key, c.encode_json(page), "EX", cfg["PAGE_REPLAY_TTL_S"]))
        members = [x for p in post_ids for x in (now, p)]
        out += [
            ("ZADD", seen, *members),
            ("ZREMRANGEBYSCORE", seen, "-inf", now - cfg["SEEN_WINDOW_S"]),
            ("ZREMRANGEBYRANK", seen, 0, -cfg["SEEN_MAX"] - 1),
        ]
        route = served.route
        if route.experiment:
            fields = {
                "experiment": route.experiment,
                "arm": route.arm or "",
                "version": route.model_version,
                "request_id": served.request_id,
                "user_id": served.user_id,
                "n": str(len(post_ids)),
                "ts": str(now),
            }
            out.append(
                (
                    "XADD",
                    c.EXPOSURES_KEY,
                    "MAXLEN",
                    "~",
                    cfg["EVENT_LOG_MAXLEN"],
                    "*",
                    *[x for kv in fields.items() for x in kv],
                )
            )
        return out

    # -- writes ----------------------------------------------------------------------------
    def record_events(
        self, events: Sequence[tuple[Mapping[str, Any], Mapping[str, float]]]
    ) -> None:
        """Append each event to the durable event log and apply it to its user's real-time
        keys (see :func:`_apply`; ``members``: the real-time candidates it adds or removes),
        all in one pipeline."""
        pipe = self.r.pipeline(transaction=False)
        for ev, members in events:
            fields = {k: str(v) for k, v in ev.items()}
            pipe.xadd(
                c.EVENTS_KEY, fields, maxlen=self.config["EVENT_LOG_MAXLEN"], approximate=True
            )
            _apply(pipe, ev, members, self.config)
        pipe.execute()

    def add_post(
        self, doc: Mapping[str, Any], products: Mapping[str, Mapping[str, Any]], created: float
    ) -> bool:
        """Store a post created through the API: its document (False, and nothing written,
        when the post exists already), its card (``products``: its products' documents), its
        entry in the fresh posts with its metadata, and a ``post`` event; then forget the
        cached global state, so this process sees the post at once (others within
        ``GLOBAL_CACHE_S``)."""
        pid, author, product_ids = doc["post_id"], doc["author_id"], doc["product_ids"]
        cats = [(products.get(p) or {}).get("category") or "" for p in product_ids]
        if not self.r.set(c.post_doc_key(pid), c.encode_json(doc), nx=True):
            return False
        pipe = self.r.pipeline(transaction=False)
        pipe.set(c.card_key(pid), c.encode_json(c.card(doc, products)))
        pipe.hset(
            c.FRESH_META_KEY,
            pid,
            c.encode_json(
                {
                    "author_id": author,
                    "product_ids": product_ids,
                    "category": cats[0] if cats else "",
                    "categories": sorted({x for x in cats if x}),
                    "created_at": created,
                }
            ),
        )
        pipe.zadd(c.FRESH_KEY, {pid: created})
        pipe.xadd(
            c.EVENTS_KEY,
            {"type": "post", "post_id": pid, "user_id": author, "ts": str(created)},
            maxlen=self.config["EVENT_LOG_MAXLEN"],
            approximate=True,
        )
        pipe.execute()
        self.forget_global()
        return True

    # -- the other routes' reads -----------------------------------------------------------
    def ping_live(self) -> str | None:
        """PING, then the live version id as Redis has it now (not cached): readiness."""
        self.r.ping()
        raw = self.r.get(c.LIVE_KEY)
        return None if raw is None else c.text(raw)

    def neighbours(self, version: str, post_id: str) -> bytes | None:
        """A post's neighbour list in ``version`` (a candidate blob), or None."""
        return self.r.get(c.neighbours_key(version, post_id))  # type: ignore[no-any-return]

    def neighbour_lists(self, version: str, post_ids: list[str]) -> dict[str, bytes | None]:
        """Post id -> its neighbour list in ``version``, in one pipelined read."""
        pipe = self.r.pipeline(transaction=False)
        for post in post_ids:
            pipe.get(c.neighbours_key(version, post))
        return dict(zip(post_ids, pipe.execute(), strict=True))

    def have_candidates(self, version: str, user_ids: list[str]) -> list[bool]:
        """Whether each user has precomputed candidates in ``version``: one pipelined EXISTS
        per user."""
        pipe = self.r.pipeline(transaction=False)
        for user in user_ids:
            pipe.exists(c.user_key(user, "cand", version))
        return [bool(found) for found in pipe.execute()]

    def history(self, user_id: str, n: int) -> dict[str, Any]:
        """A user's recent likes, purchases and follows (:func:`feed.redisclient.read_history`)."""
        return read_history(self.r, user_id, n)
