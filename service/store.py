"""Every Redis command the service issues: per-version tables cached in process, global caches,
one pipelined read of a user's state, one MGET of documents, the writes of events and new posts,
and the few reads of the other routes (neighbour lists, readiness, a user's history). The data
it returns is :mod:`service.state`'s.

A page's two round trips go through :func:`round_trip`, which sends the commands as one packed
write and reads their raw replies straight off a pooled connection: redis-py's ``Pipeline``
spends three times the client CPU on the same work (command stack, response callbacks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hiredis import pack_command
from redis.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from feed import contract as c
from feed.experiments import STATUS_RUNNING, Experiment, running
from feed.redisclient import is_cluster, read_history
from feed.serving.policy import PagePolicy
from feed.serving.state import FreshPosts, UserState, VersionTable
from feed.versions import serving_problem
from service import writes
from service.errors import is_full
from service.state import Served

logger = logging.getLogger(__name__)


def _json_object(raw: Any) -> dict[str, Any]:
    """A registry or experiment entry as a dict (``{}`` when malformed)."""
    try:
        value = c.decode_json(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _realtime(member: Any, score: Any) -> tuple[str, float, str]:
    post, reason = c.parse_rt_member(member)
    return post, c.rt_strength(float(score)), reason


Command = writes.Command


@dataclass(frozen=True)
class Overlay:
    """Moderation and the live catalogue, as of one value of the overlay counter
    (:data:`feed.contract.OVERLAY_GEN_KEY`): version-independent, read whole when the counter
    moves, so every process sees a change on its next request."""

    generation: int = -1
    takedown: frozenset[str] = frozenset()  # hidden or deleted posts
    deleted: frozenset[str] = frozenset()
    hidden: frozenset[str] = frozenset()
    edited: frozenset[str] = frozenset()  # trained posts with an override document and card
    products: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # the catalogue
    sold_out: frozenset[str] = frozenset()  # catalogue products with in_stock false
    restocked: frozenset[str] = frozenset()  # ... with in_stock true

    @classmethod
    def parse(cls, generation: int, moderation: Any, catalogue: Any) -> Overlay:
        """From the raw ``HGETALL`` replies (flat lists or dicts) of both hashes."""

        def pairs(reply: Any) -> list[tuple[str, dict[str, Any]]]:
            items = reply.items() if isinstance(reply, dict) else writes.with_scores(reply)
            return [(c.text(k), _json_object(v)) for k, v in items]

        mod = pairs(moderation)
        products = dict(pairs(catalogue))
        deleted = frozenset(p for p, e in mod if e.get("deleted"))
        hidden = frozenset(p for p, e in mod if e.get("hidden"))
        return cls(
            generation,
            deleted | hidden,
            deleted,
            hidden,
            frozenset(p for p, e in mod if e.get("edited")) - deleted,
            products,
            frozenset(p for p, d in products.items() if d.get("in_stock") is False),
            frozenset(p for p, d in products.items() if d.get("in_stock") is True),
        )


def round_trip(r: Any, commands: list[Command], *, full_ok: bool = False) -> list[Any]:
    """The raw replies of ``commands`` (e.g. ``("GET", key)``), sent in one round trip.

    On a standalone server: one packed write on a pooled connection, then each reply read as
    it comes (no response callbacks: an ``SMEMBERS`` reply is a list, a ``WITHSCORES`` one
    flat). A connection error or timeout is retried as the client's ``retry`` says, on a fresh
    connection; an error reply raises :class:`redis.ResponseError` once every reply is read.
    With ``full_ok``, a write Redis refused because it is full (an ``OOM`` error reply, see
    :func:`service.errors.is_full`) is returned in its reply's place instead: the reads of the
    same round trip still count. On a cluster: a redis-py pipeline, which splits the commands
    by node.
    """
    if isinstance(r, RedisCluster):
        pipe = r.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        if not full_ok:
            return list(pipe.execute())
        replies = list(pipe.execute(raise_on_error=False))
        for reply in replies:
            if isinstance(reply, Exception) and not is_full(reply):
                raise reply
        return replies
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
        if isinstance(reply, ResponseError) and not (full_ok and is_full(reply)):
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
        self._global: dict[str | None, tuple[float, dict[str, Any]]] = {}  # per version
        self._overlay = Overlay()
        self._down_until = 0.0  # circuit breaker: skip Redis until then after an error
        self._full_at = -1e18  # when Redis last refused a write as full (see mark_full)
        self.fallback: tuple[str | None, list[Any]] = (None, [])  # version, rendered items

    # -- outages ---------------------------------------------------------------------------
    def available(self) -> bool:
        """False for ``REDIS_BREAKER_S`` after a Redis error: requests answer at once
        (degraded or 503) instead of each waiting for a timeout."""
        return time.monotonic() >= self._down_until

    def mark_down(self) -> None:
        self._down_until = time.monotonic() + self.config["REDIS_BREAKER_S"]

    # -- a full Redis ----------------------------------------------------------------------
    #: After a write refused as full, readiness reports it for this long even when INFO
    #: shows the memory just under the limit (it hovers there while writes are refused).
    FULL_MEMORY_S = 10.0

    def mark_full(self) -> None:
        """Redis refused a write of this process because it is full (not an outage)."""
        self._full_at = time.monotonic()

    def memory(self) -> dict[str, Any]:
        """Whether Redis accepts writes, for readiness: ``full`` (True when INFO shows
        ``used_memory`` past ``maxmemory`` under the ``noeviction`` policy on any primary, or
        this process had a write refused as full within ``FULL_MEMORY_S``), with INFO's
        ``used_memory``, ``maxmemory`` and ``maxmemory_policy`` of the fullest primary."""
        if is_cluster(self.r):  # {node: INFO} of every primary (one primary: its INFO)
            info = self.r.info("memory", target_nodes=self.r.PRIMARIES)
        else:
            info = self.r.info("memory")
        found = list(info.values())
        nodes = found if found and all(isinstance(n, dict) for n in found) else [info]

        def over(n: dict[str, Any]) -> float:
            used = int(n.get("used_memory", 0)) - int(n.get("mem_not_counted_for_evict", 0))
            return used / int(n["maxmemory"]) if int(n.get("maxmemory", 0)) else 0.0

        node = max(nodes, key=over)
        refused = time.monotonic() - self._full_at < self.FULL_MEMORY_S
        return {
            "full": refused or (node.get("maxmemory_policy") == "noeviction" and over(node) >= 1.0),
            "used_memory": int(node.get("used_memory", 0)),
            "maxmemory": int(node.get("maxmemory", 0)),
            "maxmemory_policy": str(node.get("maxmemory_policy", "")),
        }

    def remember_fallback(self, version: str, items: list[Any]) -> None:
        """Keep a hydrated trending page of the live version for outages."""
        self.fallback = (version, items)

    # -- versions ------------------------------------------------------------------------
    def _registry(self) -> tuple[str | None, frozenset[str]]:
        """The live version and every servable version (``ready``, under this release's Redis
        contract: :func:`feed.versions.serving_problem`): one round trip (one cluster slot)
        per ``VERSION_CACHE_S``, re-read at once while no version is live."""
        at, live, known = self._live
        if time.monotonic() - at < self.config["VERSION_CACHE_S"] and live is not None:
            return live, known
        pipe = self.r.pipeline(transaction=False)
        pipe.get(c.LIVE_KEY)
        pipe.hgetall(c.VERSIONS_KEY)
        raw, metas = pipe.execute()
        live = c.text(raw) if raw is not None else None
        known = frozenset(
            c.text(v)
            for v, meta in metas.items()
            if serving_problem(c.text(v), _json_object(meta)) is None
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
            PagePolicy.from_json(p.get("page_policy")),
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
    def overlay_generation(self) -> int:
        """The overlay counter now (one ``GET``), for routes that read no user keys."""
        return int(self.r.get(c.OVERLAY_GEN_KEY) or 0)

    def overlay(self, generation: int | None = None) -> Overlay:
        """Moderation and the catalogue (:class:`Overlay`) as of ``generation`` (the counter a
        caller read with its own keys, or :meth:`overlay_generation`; None: as this process
        last read it, no round trip): cached until the counter moves, then both hashes are read
        again in one round trip."""
        cached = self._overlay
        if generation is None and cached.generation >= 0:
            return cached
        if cached.generation == generation:
            return cached
        gen, moderation, catalogue = round_trip(
            self.r,
            [
                ("GET", c.OVERLAY_GEN_KEY),
                ("HGETALL", c.MODERATION_KEY),
                ("HGETALL", c.CATALOGUE_KEY),
            ],
        )
        ov = Overlay.parse(int(gen or 0), moderation, catalogue)
        with self._lock:
            self._overlay = ov
        return ov

    def global_state(
        self, version: str | None = None, generation: int | None = None
    ) -> dict[str, Any]:
        """``fresh``: the ``FRESH_POSTS`` newest posts created through the API with their
        metadata (:class:`FreshPosts`, newest first, none taken down); ``oos``: ``version``'s
        out-of-stock product set (the live version's when None; :func:`feed.contract.stock_key`)
        with the catalogue's stock on top; ``takedown``, ``edited``, ``catalogue``: the
        :class:`Overlay` as of ``generation`` (:meth:`overlay`), whose every change refreshes
        this at once.

        Two round trips per ``GLOBAL_CACHE_S`` and version (the fresh list with the stock set,
        then the metadata of just those posts): the metadata hash keeps every API-created post
        until the next training, so it is never read whole.
        """
        if version is None:
            version = self.live_version()
        ov = self.overlay(generation)
        at, g = self._global.get(version, (0.0, {}))
        fresh_enough = time.monotonic() - at < self.config["GLOBAL_CACHE_S"]
        if fresh_enough and g and g["overlay"] is ov:
            return g
        n = self.config["FRESH_POSTS"]
        commands: list[Command] = [("ZRANGE", c.FRESH_KEY, 0, n - 1, "REV", "WITHSCORES")]
        if version is not None:
            commands.append(("SMEMBERS", c.stock_key(version)))
        replies = round_trip(self.r, commands)
        fresh = [(c.text(p), float(ts)) for p, ts in writes.with_scores(replies[0])]
        oos = replies[1] if version is not None else []
        metas = self.r.hmget(c.FRESH_META_KEY, [p for p, _ in fresh]) if fresh else []
        # newest first, as the zset read them
        fresh_meta = {
            p: c.decode_json(m)
            for (p, _), m in zip(fresh, metas, strict=True)
            if m and p not in ov.takedown
        }
        out_of_stock = (frozenset(c.text(x) for x in oos) - ov.restocked) | ov.sold_out
        g = {
            "fresh": FreshPosts.build(fresh_meta, out_of_stock),
            "oos": out_of_stock,
            "takedown": ov.takedown,
            "edited": ov.edited,
            "catalogue": ov.products,
            "overlay": ov,
        }
        with self._lock:
            self._global[version] = (time.monotonic(), g)
            while len(self._global) > 4:  # the few versions in use
                self._global.pop(next(iter(self._global)))
        return g

    def fresh_meta(self, post_id: str) -> dict[str, Any] | None:
        """The metadata of one post created through the API (also older than the
        ``FRESH_POSTS`` newest), or None."""
        meta = c.decode_json(self.r.hget(c.FRESH_META_KEY, post_id))
        return meta if isinstance(meta, dict) else None

    def forget_global(self) -> None:
        """Drop the cached global state (after this process changed it)."""
        with self._lock:
            self._global = {}

    # -- one user ------------------------------------------------------------------------
    def user_state(
        self, user_id: str, version: str, now: float, replay_key: str | None = None
    ) -> UserState:
        """Everything about one user in ONE pipelined round trip (the user's cluster slot, and
        the overlay counter's: :meth:`overlay`).

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
        commands.append(("GET", k(user_id, c.USER_SEED, version)))
        commands.append(("GET", c.OVERLAY_GEN_KEY))  # moderation/catalogue changed? (overlay)
        commands.append(("GET", k(user_id, c.USER_TIES, version)))  # reason "friend"
        if replay_key:
            commands.append(("GET", replay_key))
        commands.append(("GET", c.CAMPAIGNS_GEN_KEY))  # campaigns changed? (service.campaigns)
        res = round_trip(self.r, commands)
        cand, seen, liked, rt, hidden, muted, follows, unfollows, bought, seed, gen = res[:11]
        ties = frozenset(c.decode_ties(res[11]))
        replay = c.decode_json(res[12]) if replay_key else None
        seed_follows, seed_bought = c.decode_seed(seed)
        return UserState(
            candidates=c.decode_candidates(cand),
            seen={c.text(x) for x in seen},
            liked={c.text(x) for x in liked},
            realtime=[_realtime(m, sc) for m, sc in writes.with_scores(rt)],
            hidden={c.text(x) for x in hidden},
            muted={c.text(x) for x in muted},
            follows=seed_follows | {c.text(x) for x in follows},
            unfollows={c.text(x) for x in unfollows},
            bought=seed_bought | {c.text(x) for x in bought},
            replay=[(str(p), float(sc), str(why)) for p, sc, why in replay] if replay else None,
            overlay_generation=int(gen or 0),
            ties=ties,
            campaign_generation=int(res[-1] or 0),
        )

    # -- documents -----------------------------------------------------------------------
    @staticmethod
    def _post_keys(
        table: VersionTable | None,
        post_ids: list[str],
        key: Any,
        edited: frozenset[str] = frozenset(),
    ) -> list[str]:
        """``key(post, version)`` of each post: the version's (``table``) for the posts its
        table lists, the API-created post's (version None) for the others; for ``edited``
        posts (trained posts changed by ``PATCH /v1/posts``) their override
        (:func:`feed.contract.override_keys`)."""
        kind = 1 if key is c.card_key else 0
        listed = table.index if table is not None else {}
        return [
            c.override_keys(p)[kind]
            if p in edited
            else key(p, table.version if table is not None and p in listed else None)
            for p in post_ids
        ]

    def documents(
        self,
        table: VersionTable | None,
        post_ids: list[str],
        product_ids: list[str],
        edited: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Post and product documents of ``table``'s version in ONE MGET (split per node on a
        cluster); posts it does not list are read as API-created posts (``edited`` ones as
        their override), and without a table there are no product documents."""
        keys = self._post_keys(table, post_ids, c.post_doc_key, edited)
        if table is None:
            product_ids = []
        keys += [c.product_doc_key(p, table.version) for p in product_ids if table is not None]
        if not keys:
            return {}, {}
        raw = self.r.mget_nonatomic(keys) if is_cluster(self.r) else self.r.mget(keys)
        posts = {p: c.decode_json(v) for p, v in zip(post_ids, raw, strict=False) if v}
        prods = {
            p: c.decode_json(v) for p, v in zip(product_ids, raw[len(post_ids) :], strict=True) if v
        }
        return posts, prods

    def cards(
        self,
        table: VersionTable | None,
        post_ids: list[str],
        served: Served | None = None,
        edited: frozenset[str] = frozenset(),
    ) -> dict[str, bytes]:
        """Post id -> its card (raw JSON, see :func:`feed.contract.card`) in ONE round trip,
        which with ``served`` also marks the page served (the page's only write). Cards are
        ``table``'s version's, or the API-created post's for posts the table does not list.

        Served posts go into the user's seen set (trimmed to ``SEEN_WINDOW_S`` and
        ``SEEN_MAX``); a page in an experiment is logged as an exposure; ``served.replay`` keeps
        the page a cursor led to for ``PAGE_REPLAY_TTL_S``, so a retried cursor gets it again.
        """
        if not post_ids:
            return {}
        keys = self._post_keys(table, post_ids, c.card_key, edited)
        cluster = is_cluster(self.r)
        # cards spread over a cluster: one GET each, grouped by node; else one MGET
        commands: list[Command] = [("GET", k) for k in keys] if cluster else [("MGET", *keys)]
        if served is not None:
            commands += self._record(post_ids, served)
        res = round_trip(self.r, commands, full_ok=served is not None)
        if served is not None and any(is_full(x) for x in res if isinstance(x, Exception)):
            served.refused = True  # Redis is full: the page is served, unrecorded
            self.mark_full()
        raw = res[: len(keys)] if cluster else res[0]
        return {p: v for p, v in zip(post_ids, raw, strict=True) if v}

    def _record(self, post_ids: list[str], served: Served) -> list[Command]:
        """The writes that mark ``post_ids`` served (see :meth:`cards`): the seen set, which
        expires ``SEEN_WINDOW_S`` after its last write (older entries are never read), unless
        ``served.mark_seen`` is False (a stateless scroll); the exposure."""
        cfg, now = self.config, served.now
        seen = c.user_key(served.user_id, c.USER_SEEN)
        out: list[Command] = []
        if served.replay is not None and cfg["PAGE_REPLAY_TTL_S"] > 0:
            key, page = served.replay
            out.append(("SET", key, c.encode_json(page), "EX", cfg["PAGE_REPLAY_TTL_S"]))
        if served.mark_seen:
            members = [x for p in post_ids for x in (now, p)]
            out += [
                ("ZADD", seen, *members),
                ("ZREMRANGEBYSCORE", seen, "-inf", now - cfg["SEEN_WINDOW_S"]),
                ("ZREMRANGEBYRANK", seen, 0, -cfg["SEEN_MAX"] - 1),
            ]
            if cfg["SEEN_WINDOW_S"] > 0:
                out.append(("EXPIRE", seen, int(cfg["SEEN_WINDOW_S"])))
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
        out += served.extra
        return out

    # -- writes ----------------------------------------------------------------------------
    def record_events(
        self, events: Sequence[tuple[Mapping[str, Any], Mapping[str, float]]]
    ) -> None:
        """Append each event to the durable event log and apply it to its user's real-time
        keys, renewing their TTLs (``members``: the real-time candidates it adds or removes):
        all of the batch or nothing (:func:`service.writes.record_events`)."""
        try:
            writes.record_events(self.r, events, self.config, is_cluster(self.r))
        except Exception as e:
            if is_full(e):
                self.mark_full()
            raise

    def overlay_write(self, prepare: writes.Prepare) -> None:
        """A moderation or catalogue change, all or nothing, seen by every process on its next
        request (:func:`service.writes.overlay_write`)."""
        try:
            writes.overlay_write(self.r, is_cluster(self.r), prepare)
        except Exception as e:
            if is_full(e):
                self.mark_full()
            raise

    def add_post(
        self, doc: Mapping[str, Any], products: Mapping[str, Mapping[str, Any]], created: float
    ) -> bool:
        """Store a post created through the API, all or nothing
        (:func:`service.writes.add_post`; False, and nothing written, when the post exists
        already), then prune the API posts past ``FRESH_MAX_AGE_S`` or ``FRESH_MAX_POSTS``
        and forget the cached global state, so this process sees the post at once (others
        within ``GLOBAL_CACHE_S``)."""
        try:
            if not writes.add_post(self.r, doc, products, created, self.config):
                return False
        except Exception as e:
            if is_full(e):
                self.mark_full()
            raise
        try:  # the post is stored: a failed prune only waits for the next post
            writes.prune_fresh(self.r, time.time(), self.config)
        except RedisError as e:
            logger.warning("pruning the API posts failed: %s", e)
        self.forget_global()
        return True

    # -- the other routes' reads -----------------------------------------------------------
    def readiness(self) -> tuple[str | None, list[str]]:
        """PING, then, as Redis has them now (not cached), the live version id and why it or
        a running experiment arm's version cannot be served (not in the registry, not
        ``ready``, published under another Redis contract): readiness."""
        self.r.ping()
        pipe = self.r.pipeline(transaction=False)  # one slot ({feed}), also on a cluster
        pipe.get(c.LIVE_KEY)
        pipe.hgetall(c.VERSIONS_KEY)
        pipe.hgetall(c.EXPERIMENTS_KEY)
        raw_live, metas, experiments = pipe.execute()
        live = None if raw_live is None else c.text(raw_live)
        used = {live: "the live version"} if live is not None else {}
        for name, raw in experiments.items():
            exp = _json_object(raw)
            if exp.get("status") == STATUS_RUNNING:
                for arm in exp.get("arms", []):
                    role = f"arm {arm.get('name')!r} of experiment {c.text(name)!r}"
                    used.setdefault(str(arm.get("version")), role)
        registry = {c.text(v): _json_object(meta) for v, meta in metas.items()}
        problems = []
        for version, role in used.items():
            if why := serving_problem(version, registry.get(version)):
                problems.append(f"{role}: {why}")
        return live, problems

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
        """A user's recent likes, purchases and follows (:func:`feed.redisclient.read_history`:
        the live version's seed plus events)."""
        return read_history(self.r, user_id, n, self.live_version())
