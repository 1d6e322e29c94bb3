"""Every Redis command the service issues: per-version tables cached in process, global caches,
one pipelined read of a user's state, one MGET of documents, the writes of events and new posts,
and the few reads of the other routes (neighbour lists, readiness, a user's history). The data
it returns is :mod:`service.state`'s.

A page's two round trips go through :func:`service.wire.round_trip`, which sends the commands
as one packed write and reads their raw replies straight off a pooled connection: redis-py's
``Pipeline`` spends three times the client CPU on the same work (command stack, response
callbacks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from feed import contract as c
from feed.experiments import STATUS_RUNNING, Experiment, running
from feed.redisclient import is_cluster, read_history
from feed.serving.policy import PagePolicy
from feed.serving.state import FreshPosts, UserState, VersionTable
from feed.versions import serving_problem
from service import writes
from service.errors import is_full
from service.state import Served
from service.wire import round_trip

logger = logging.getLogger(__name__)


def _json_object(raw: Any) -> dict[str, Any]:
    """A registry or experiment entry as a dict (``{}`` when malformed)."""
    try:
        value = c.decode_json(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _generations(reply: Any) -> tuple[int, int]:
    """The (moderation, catalogue) counters of an ``MGET`` reply (0 when unset)."""
    moderation, catalogue = (int(x or 0) for x in reply)
    return moderation, catalogue


def _realtime(member: Any, score: Any) -> tuple[str, float, str]:
    post, reason = c.parse_rt_member(member)
    return post, c.rt_strength(float(score)), reason


Command = writes.Command


@dataclass(frozen=True)
class Overlay:
    """Moderation and the live catalogue, as of one value of each of their counters
    (:data:`feed.contract.MODERATION_GEN_KEY`, :data:`feed.contract.CATALOGUE_GEN_KEY`):
    version-independent, re-read when a counter moves (the moderation hash whole, the
    catalogue's changed products only), so every process sees a change on its next request."""

    generation: tuple[int, int] = (-1, -1)  # (moderation, catalogue); -1: never read
    takedown: frozenset[str] = frozenset()  # hidden or deleted posts
    deleted: frozenset[str] = frozenset()
    hidden: frozenset[str] = frozenset()
    edited: frozenset[str] = frozenset()  # trained posts with an override document and card
    products: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # the catalogue
    sold_out: frozenset[str] = frozenset()  # catalogue products with in_stock false
    restocked: frozenset[str] = frozenset()  # ... with in_stock true

    @staticmethod
    def _pairs(reply: Any) -> list[tuple[str, dict[str, Any]]]:
        items = reply.items() if isinstance(reply, dict) else writes.with_scores(reply)
        return [(c.text(k), _json_object(v)) for k, v in items]

    def with_moderation(self, generation: int, moderation: Any) -> Overlay:
        """This overlay with the moderation hash's raw ``HGETALL`` reply in place."""
        mod = self._pairs(moderation)
        deleted = frozenset(p for p, e in mod if e.get("deleted"))
        hidden = frozenset(p for p, e in mod if e.get("hidden"))
        edited = frozenset(p for p, e in mod if e.get("edited")) - deleted
        gen = (generation, self.generation[1])
        return replace(
            self,
            generation=gen,
            takedown=deleted | hidden,
            deleted=deleted,
            hidden=hidden,
            edited=edited,
        )

    def with_catalogue(self, generation: int, catalogue: Any, *, whole: bool) -> Overlay:
        """This overlay with the catalogue's records: ``catalogue`` (product id -> raw JSON, a
        reply of ``HGETALL`` or pairs) is the whole hash, or with ``whole`` False the products
        changed since this overlay's catalogue generation, merged over it (the other products'
        records, and the unchanged sets, are kept as they are)."""
        changed = dict(self._pairs(catalogue))
        sold: frozenset[str] = frozenset()
        back: frozenset[str] = frozenset()
        products: Mapping[str, Mapping[str, Any]] = changed
        if not whole:
            products = {**self.products, **changed}
            sold, back = self.sold_out - changed.keys(), self.restocked - changed.keys()
        sold |= {p for p, d in changed.items() if d.get("in_stock") is False}
        back |= {p for p, d in changed.items() if d.get("in_stock") is True}
        return replace(
            self,
            generation=(self.generation[0], generation),
            products=products,
            sold_out=sold if sold != self.sold_out else self.sold_out,  # keep it if unchanged
            restocked=back if back != self.restocked else self.restocked,
        )

    @classmethod
    def parse(cls, generation: tuple[int, int], moderation: Any, catalogue: Any) -> Overlay:
        """From the raw ``HGETALL`` replies (flat lists or dicts) of both hashes."""
        ov = cls().with_moderation(generation[0], moderation)
        return ov.with_catalogue(generation[1], catalogue, whole=True)


#: Products changed since a process's catalogue generation that it reads one by one; more, and
#: it reads the catalogue whole.
CATALOGUE_CHANGES_READ = 1_000

# KEYS: the changes zset, the catalogue; ARGV: the generation read, the most to read one by one.
# Returns {changed ids with their generations (flat), their records} (records empty: too many).
_CATALOGUE_CHANGES = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[2]) + 1)
local only = {}
for i = 1, #ids, 2 do only[#only + 1] = ids[i] end
if #only == 0 or #only > tonumber(ARGV[2]) then return {ids, {}} end
return {ids, redis.call('HMGET', KEYS[2], unpack(only))}
"""


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
        # per version: (when read, what was read, the state derived from it)
        self._global: dict[str | None, tuple[float, Any, Any]] = {}
        self._overlay = Overlay()
        self._down_until = 0.0  # circuit breaker: skip Redis until then after an error
        self._full_at = -1e18  # when Redis last refused a write as full (see mark_full)
        self.fallback: tuple[str | None, list[Any]] = (None, [])  # version, rendered items
        self._renewed: dict[str, float] = {}  # user -> when this process renewed their keys

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
    def overlay_generation(self) -> tuple[int, int]:
        """The (moderation, catalogue) counters now (one ``MGET``), for routes that read no
        user keys."""
        return _generations(self.r.mget([c.MODERATION_GEN_KEY, c.CATALOGUE_GEN_KEY]))

    def overlay(self, generation: tuple[int, int] | None = None) -> Overlay:
        """Moderation and the catalogue (:class:`Overlay`) as of ``generation`` (the counters
        a caller read with its own keys, or :meth:`overlay_generation`; None: as this process
        last read them, no round trip): cached until a counter moves; then, in one round trip,
        the moderation hash is read whole when its counter moved, and the catalogue's products
        changed since this process's generation (:data:`feed.contract.CATALOGUE_CHANGES_KEY`)
        when the catalogue's did (the whole catalogue on the first read, or when more than
        ``CATALOGUE_CHANGES_READ`` changed: a second round trip)."""
        cached = self._overlay
        if generation is None:
            if min(cached.generation) >= 0:
                return cached
            generation = self.overlay_generation()
        mod_gen, cat_gen = generation
        have_mod, have_cat = cached.generation
        if have_mod == mod_gen and have_cat == cat_gen:
            return cached
        commands: list[Command] = []
        if have_mod != mod_gen:
            commands += [("GET", c.MODERATION_GEN_KEY), ("HGETALL", c.MODERATION_KEY)]
        whole = have_cat < 0
        if whole:
            commands += [("GET", c.CATALOGUE_GEN_KEY), ("HGETALL", c.CATALOGUE_KEY)]
        elif have_cat != cat_gen:
            keys = (c.CATALOGUE_CHANGES_KEY, c.CATALOGUE_KEY)
            most = CATALOGUE_CHANGES_READ
            commands.append(("EVAL", _CATALOGUE_CHANGES, 2, *keys, have_cat, most))
        replies = round_trip(self.r, commands) if commands else []
        ov = cached
        if have_mod != mod_gen:
            ov = ov.with_moderation(int(replies[0] or 0), replies[1])
            replies = replies[2:]
        if whole:
            ov = ov.with_catalogue(int(replies[0] or 0), replies[1], whole=True)
        elif have_cat != cat_gen:
            ids, records = replies[0]
            changed = writes.with_scores(ids)
            newest = max([cat_gen, *(int(float(sc)) for _, sc in changed)])
            if changed and not records:  # too many changed: read it whole
                gen, catalogue = round_trip(
                    self.r, [("GET", c.CATALOGUE_GEN_KEY), ("HGETALL", c.CATALOGUE_KEY)]
                )
                ov = ov.with_catalogue(int(gen or 0), catalogue, whole=True)
            else:
                pairs = [(p, raw) for (p, _), raw in zip(changed, records, strict=True) if raw]
                ov = ov.with_catalogue(newest, pairs, whole=False)
        with self._lock:
            self._overlay = ov
        return ov

    def global_state(
        self, version: str | None = None, generation: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """``fresh``: the ``FRESH_POSTS`` newest posts created through the API with their
        metadata (:class:`FreshPosts`, newest first, none taken down); ``oos``: ``version``'s
        out-of-stock product set (the live version's when None; :func:`feed.contract.stock_key`)
        with the catalogue's stock on top; ``takedown``, ``edited``, ``catalogue``: the
        :class:`Overlay` as of ``generation`` (:meth:`overlay`), whose every change refreshes
        this at once.

        Two round trips per ``GLOBAL_CACHE_S`` and version (the fresh list with the stock set,
        then the metadata of just those posts), and again when moderation changed (an edit or
        a takedown of an API post); the metadata hash keeps every API-created post until the
        next training, so it is never read whole. A catalogue change reads nothing more: the
        stock set on top is recomputed in process, and the objects that did not change (the
        out-of-stock set, the fresh posts) are kept, so the sold-out masks cached on them stay.
        """
        if version is None:
            version = self.live_version()
        ov = self.overlay(generation)
        at, raw, g = self._global.get(version, (0.0, None, None))
        fresh_enough = time.monotonic() - at < self.config["GLOBAL_CACHE_S"]
        if fresh_enough and g is not None and g["overlay"] is ov:
            return g
        if not fresh_enough or raw is None or raw["moderation"] != ov.generation[0]:
            at, raw, g = time.monotonic(), self._global_read(version, ov.generation[0]), None
        out_of_stock = (raw["oos"] - ov.restocked) | ov.sold_out
        if g is not None and g["oos"] == out_of_stock:
            out_of_stock = g["oos"]  # the same object: its sold-out masks stay cached
        if g is not None and g["oos"] is out_of_stock and g["takedown"] is ov.takedown:
            fresh = g["fresh"]
        else:
            metas = raw["fresh"]
            fresh = FreshPosts.build(
                {p: m for p, m in metas.items() if p not in ov.takedown}, out_of_stock
            )
        g = {
            "fresh": fresh,
            "oos": out_of_stock,
            "takedown": ov.takedown,
            "edited": ov.edited,
            "catalogue": ov.products,
            "overlay": ov,
        }
        with self._lock:
            self._global[version] = (at, raw, g)
            while len(self._global) > 4:  # the few versions in use
                self._global.pop(next(iter(self._global)))
        return g

    def _global_read(self, version: str | None, moderation: int) -> dict[str, Any]:
        """What :meth:`global_state` reads from Redis (two round trips): the newest API
        posts' metadata (newest first) and the version's stock set."""
        n = self.config["FRESH_POSTS"]
        commands: list[Command] = [("ZRANGE", c.FRESH_KEY, 0, n - 1, "REV", "WITHSCORES")]
        if version is not None:
            commands.append(("SMEMBERS", c.stock_key(version)))
        replies = round_trip(self.r, commands)
        fresh = [(c.text(p), float(ts)) for p, ts in writes.with_scores(replies[0])]
        oos = replies[1] if version is not None else []
        metas = self.r.hmget(c.FRESH_META_KEY, [p for p, _ in fresh]) if fresh else []
        return {
            "fresh": {p: c.decode_json(m) for (p, _), m in zip(fresh, metas, strict=True) if m},
            "oos": frozenset(c.text(x) for x in oos),
            "moderation": moderation,
        }

    def known_posts(self, post_ids: list[str]) -> set[str]:
        """The posts of ``post_ids`` that some version in the registry lists (its document
        under the version's id: also a ready version not in use, which an activation could
        bring back) or that are API posts not yet pruned (their document or fresh entry), in
        one pipelined round trip (one ``EXISTS`` per key: documents spread over a cluster)."""
        if not post_ids:
            return set()
        versions = [c.text(v) for v in self.r.hkeys(c.VERSIONS_KEY)]
        pipe = self.r.pipeline(transaction=False)
        for p in post_ids:
            pipe.zscore(c.FRESH_KEY, p)
            for v in [None, *versions]:
                pipe.exists(c.post_doc_key(p, v))
        replies = pipe.execute()
        per = len(versions) + 2
        return {
            p
            for i, p in enumerate(post_ids)
            if replies[i * per] is not None or any(replies[i * per + 1 : (i + 1) * per])
        }

    def tombstoned(self, post_id: str) -> bool:
        """Whether ``post_id`` was deleted and its moderation entry pruned within
        ``MODERATION_TOMBSTONE_S`` (:func:`feed.contract.tombstone_key`)."""
        return bool(self.r.exists(c.tombstone_key(post_id)))

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
        # moderation/catalogue changed? (overlay): both counters in one MGET ({feed} slot)
        commands.append(("MGET", c.MODERATION_GEN_KEY, c.CATALOGUE_GEN_KEY))
        commands.append(("GET", k(user_id, c.USER_TIES, version)))  # reason "friend"
        # friends' open groups (a feed item's "group"), soonest to expire first
        commands.append(("ZRANGEBYSCORE", k(user_id, c.USER_GROUP_FEED), now, "+inf", "LIMIT", 0,
                         self.config["GROUPS_READ"]))  # fmt: skip
        if replay_key:
            commands.append(("GET", replay_key))
        commands.append(("GET", c.CAMPAIGNS_GEN_KEY))  # campaigns changed? (service.campaigns)
        res = round_trip(self.r, commands)
        cand, seen, liked, rt, hidden, muted, follows, unfollows, bought, seed, gen = res[:11]
        ties = frozenset(c.decode_ties(res[11]))
        group_feed = tuple(c.text(x) for x in res[12] or ())
        replay = c.decode_json(res[13]) if replay_key else None
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
            overlay_generation=_generations(gen),
            ties=ties,
            campaign_generation=int(res[-1] or 0),
            group_feed=group_feed,
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
        also: Sequence[Command] = (),
        replies: list[Any] | None = None,
    ) -> dict[str, bytes]:
        """Post id -> its card (raw JSON, see :func:`feed.contract.card`) in ONE round trip,
        which with ``served`` also marks the page served (the page's only write). Cards are
        ``table``'s version's, or the API-created post's for posts the table does not list.

        Served posts go into the user's seen set (trimmed to ``SEEN_WINDOW_S`` and
        ``SEEN_MAX``); a page in an experiment is logged as an exposure; ``served.replay`` keeps
        the page a cursor led to for ``PAGE_REPLAY_TTL_S``, so a retried cursor gets it again.
        ``also``: more reads sent in the same round trip, their replies appended to ``replies``
        (a feed page's friends' open groups; a failed one's error in its place).
        """
        if not post_ids:
            return {}
        keys = self._post_keys(table, post_ids, c.card_key, edited)
        cluster = is_cluster(self.r)
        # cards spread over a cluster: one GET each, grouped by node; else one MGET
        commands: list[Command] = [("GET", k) for k in keys] if cluster else [("MGET", *keys)]
        if served is not None:
            commands += self._record(post_ids, served)
        n_also = len(also)
        res = round_trip(self.r, [*commands, *also], full_ok=served is not None, optional=n_also)
        if n_also:
            res, extra = res[:-n_also], res[-n_also:]
            if replies is not None:
                replies.extend(extra)
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
        now = time.monotonic()
        due = {ev["user_id"] for ev, _ in events if self.renewal_due(ev["user_id"], now)}
        try:
            writes.record_events(self.r, events, self.config, is_cluster(self.r), due.__contains__)
        except Exception as e:
            if is_full(e):
                self.mark_full()
            raise
        if len(self._renewed) + len(due) > self.RENEWED_MAX:
            self._renewed.clear()
        self._renewed.update(dict.fromkeys(due, now))

    #: Users whose last renewal a process remembers (then it forgets them all: they are renewed
    #: again on their next event, which only costs a few ``EXPIRE``).
    RENEWED_MAX = 100_000

    def renewal_due(self, user: str, now: float) -> bool:
        """Whether an event of ``user`` renews every real-time key of theirs, not only those it
        writes (``now``: ``time.monotonic()``): once per ``USER_RENEW_S`` (at most a tenth of
        each TTL) per process, so their keys expire a TTL after their last event, give or take
        that lag. (A batch of 20 users' events was two thirds ``EXPIRE``s when every event
        renewed all eight keys.)"""
        cfg = self.config
        ttls = [t for t in (cfg["USER_STATE_TTL_S"], cfg["SEEN_WINDOW_S"]) if t > 0]
        last = self._renewed.get(user)
        return last is None or now - last >= min([cfg["USER_RENEW_S"], *(t / 10 for t in ttls)])

    def overlay_write(self, prepare: writes.Prepare) -> None:
        """A moderation or catalogue change, all or nothing, seen by every process on its next
        request (:func:`service.writes.overlay_write`)."""
        try:
            writes.overlay_write(self.r, is_cluster(self.r), prepare, self.config)
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
        """Post id -> its neighbour list in ``version``, in one round trip."""
        replies = round_trip(self.r, [("GET", c.neighbours_key(version, p)) for p in post_ids])
        return dict(zip(post_ids, replies, strict=True))

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
