"""The read side of Redis for the service: per-version tables cached in process, global caches,
one pipelined read of a user's state, and one MGET of documents.

A page's two round trips go through :func:`round_trip`, which sends the commands as one packed
write and reads their raw replies straight off a pooled connection: redis-py's ``Pipeline``
spends three times the client CPU on the same work (command stack, response callbacks).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from hiredis import pack_command
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from feed import contract as c
from feed.experiments import Experiment, running
from feed.redisclient import is_cluster


@dataclass
class VersionTable:
    """A model version's post table and trending list, loaded once per process."""

    version: str
    post_ids: list[str]
    authors: list[str]
    created: list[float | None]
    categories: list[str]
    product_ids: list[list[str]]
    trending: np.ndarray  # post indices
    trending_scores: np.ndarray
    product_category: dict[str, str] = field(default_factory=dict)  # product id -> category
    index: dict[str, int] = field(default_factory=dict)
    _by_author: dict[str, list[int]] | None = field(default=None, repr=False)
    _by_category: dict[str, list[int]] | None = field(default=None, repr=False)
    _sold_out: tuple[frozenset[str], np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.index = {p: i for i, p in enumerate(self.post_ids)}

    def categories_of(self, i: int) -> tuple[str, ...]:
        """Categories of every product post ``i`` links (its first product's when unknown)."""
        cats = self._categories[i]
        if cats is None:
            found = {
                self.product_category[p]
                for p in self.product_ids[i]
                if self.product_category.get(p)
            }
            cats = tuple(sorted(found)) or ((self.categories[i],) if self.categories[i] else ())
            self._categories[i] = cats
        return cats

    @cached_property
    def _categories(self) -> list[tuple[str, ...] | None]:
        return [None] * len(self.post_ids)

    # -- arrays over post indices, for vectorized ranking (built on first use) ------------
    @cached_property
    def created_s(self) -> np.ndarray:
        """Creation times as float64 seconds (-inf when unknown: infinitely old)."""
        return np.array([-np.inf if t is None else t for t in self.created], dtype=np.float64)

    @cached_property
    def author_index(self) -> dict[str, int]:
        """Author id -> author code (position of its first post)."""
        out: dict[str, int] = {}
        for i, a in enumerate(self.authors):
            out.setdefault(a, i)
        return out

    @cached_property
    def author_codes(self) -> np.ndarray:
        """Each post's author code (see :attr:`author_index`)."""
        index = self.author_index
        return np.array([index[a] for a in self.authors], dtype=np.int64)

    def sold_out(self, oos: frozenset[str]) -> np.ndarray:
        """Boolean mask of posts whose every linked product is in ``oos``; recomputed only
        when the out-of-stock set changes."""
        cached = self._sold_out
        if cached is not None and (cached[0] is oos or cached[0] == oos):
            return cached[1]
        mask = np.zeros(len(self.post_ids), dtype=bool)
        for p in oos:
            for i in self._posts_of_product.get(p, ()):
                mask[i] = all(q in oos for q in self.product_ids[i])
        self._sold_out = (oos, mask)
        return mask

    @cached_property
    def _posts_of_product(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, products in enumerate(self.product_ids):
            for p in products:
                out.setdefault(p, []).append(i)
        return out

    def posts_by(self, author: str, n: int) -> list[int]:
        """The author's ``n`` newest posts in this version (post indices, newest first)."""
        if self._by_author is None:
            by: dict[str, list[int]] = {}
            for i, a in enumerate(self.authors):
                by.setdefault(a, []).append(i)
            for posts in by.values():
                posts.sort(key=lambda j: -(self.created[j] or 0.0))
            self._by_author = by
        return self._by_author.get(author, [])[:n]

    def posts_in_category(self, category: str) -> list[int]:
        """Posts linking a product of ``category`` (lowercase), trending first, then newest."""
        if self._by_category is None:
            rank = {int(i): r for r, i in enumerate(self.trending.tolist())}
            by: dict[str, list[int]] = {}
            for i in range(len(self.post_ids)):
                for cat in self.categories_of(i):
                    by.setdefault(cat.lower(), []).append(i)
            for posts in by.values():
                posts.sort(key=lambda j: (rank.get(j, len(rank)), -(self.created[j] or 0.0)))
            self._by_category = by
        return self._by_category.get(category, [])


@dataclass
class FreshPosts:
    """The newest posts created through the API, as arrays for vectorized ranking: built once
    per global-state refresh from their metadata (posts without metadata are left out)."""

    post_ids: list[str]
    authors: list[str]
    created: list[float | None]
    product_ids: list[list[str]]
    categories: list[str]  # each post's category, as in VersionTable
    linked_categories: list[tuple[str, ...]]  # every category it links (categories_of)
    sold_out: np.ndarray  # every linked product out of stock
    index: dict[str, int] = field(default_factory=dict)
    _in_table: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, meta: dict[str, Any], oos: frozenset[str] = frozenset()) -> FreshPosts:
        """From post id -> metadata (``POST /v1/posts``'s), in order (newest first); posts
        without a metadata object are left out."""
        posts = [(p, m) for p, m in meta.items() if isinstance(m, dict)]
        cats = [m.get("category", "") or "" for _, m in posts]
        products = [list(m.get("product_ids", [])) for _, m in posts]
        return cls(
            [p for p, _ in posts],
            [m.get("author_id", "") for _, m in posts],
            [m.get("created_at") for _, m in posts],
            products,
            cats,
            [
                tuple(m.get("categories") or ([cat] if cat else []))
                for (_, m), cat in zip(posts, cats, strict=True)
            ],
            np.array([bool(ps) and all(x in oos for x in ps) for ps in products], dtype=bool),
        )

    def __post_init__(self) -> None:
        self.index = {p: j for j, p in enumerate(self.post_ids)}

    def __len__(self) -> int:
        return len(self.post_ids)

    def categories_of(self, j: int) -> tuple[str, ...]:
        return self.linked_categories[j]

    def posts_by(self, author: str, n: int) -> list[str]:
        """The author's ``n`` newest posts here, newest first."""
        return [p for p, a in zip(self.post_ids, self.authors, strict=True) if a == author][:n]

    @cached_property
    def created_s(self) -> np.ndarray:
        """Creation times as float64 seconds (-inf when unknown)."""
        return np.array([-np.inf if t is None else t for t in self.created], dtype=np.float64)

    @cached_property
    def author_index(self) -> dict[str, int]:
        """Author id -> author code."""
        return {a: i for i, a in enumerate(dict.fromkeys(self.authors))}

    @cached_property
    def author_codes(self) -> np.ndarray:
        return np.array([self.author_index[a] for a in self.authors], dtype=np.int64)

    def in_table(self, table: VersionTable) -> np.ndarray:
        """Each post's index in ``table``, -1 where the version does not know it (the usual
        case: posts created since training); cached per version."""
        out = self._in_table.get(table.version)
        if out is None:
            out = np.array([table.index.get(p, -1) for p in self.post_ids], dtype=np.int64)
            self._in_table[table.version] = out
        return out


@dataclass
class Served:
    """A page to mark as served, with its routing (see :meth:`Store.cards`)."""

    user_id: str
    now: float
    route: dict[str, Any]
    request_id: str
    replay: tuple[str, list[tuple[str, float, str]]] | None = None  # (page key, page)


@dataclass
class UserState:
    """What one pipelined read returns about a user."""

    candidates: tuple[np.ndarray, np.ndarray, np.ndarray]
    seen: set[str]
    liked: set[str]
    realtime: list[tuple[str, float, str]]  # (post, strength in [0, 1], reason), newest first
    hidden: set[str]
    muted: set[str]
    follows: set[str]
    unfollows: set[str]
    bought: set[str]
    replay: list[tuple[str, float, str]] | None = None  # the page a retried cursor led to


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


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
        live = _s(raw) if raw is not None else None
        known = frozenset(
            _s(v) for v, meta in metas.items() if _contract(meta) == c.CONTRACT_VERSION
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
        fresh = [(_s(p), float(ts)) for p, ts in _with_scores(fresh)]
        metas = self.r.hmget(c.FRESH_META_KEY, [p for p, _ in fresh]) if fresh else []
        # newest first, as the zset read them
        fresh_meta = {p: c.decode_json(m) for (p, _), m in zip(fresh, metas, strict=True) if m}
        out_of_stock = frozenset(_s(x) for x in oos)
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
            seen={_s(x) for x in seen},
            liked={_s(x) for x in liked},
            realtime=[_realtime(m, sc) for m, sc in _with_scores(rt)],
            hidden={_s(x) for x in hidden},
            muted={_s(x) for x in muted},
            follows=seed_follows | {_s(x) for x in follows},
            unfollows={_s(x) for x in unfollows},
            bought=seed_bought | {_s(x) for x in bought},
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
        if route.get("experiment"):
            fields = {
                "experiment": route["experiment"],
                "arm": route["arm"] or "",
                "version": route["model_version"],
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
