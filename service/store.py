"""The read side of Redis for the service: per-version tables cached in process, global caches,
one pipelined read of a user's state, and one MGET of documents.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feed import contract as c


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
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {p: i for i, p in enumerate(self.post_ids)}


@dataclass
class UserState:
    """What one pipelined read returns about a user."""

    candidates: tuple[np.ndarray, np.ndarray, np.ndarray]
    seen: set[str]
    liked: set[str]
    realtime: list[tuple[str, float]]
    realtime_why: dict[str, str]
    hidden: set[str]
    muted: set[str]
    follows: set[str]
    unfollows: set[str]
    bought: set[str]


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class Store:
    """Thread-safe caches over one Redis client (one per process)."""

    def __init__(self, r: Any, config: dict[str, Any]) -> None:
        self.r = r
        self.config = config
        self._lock = threading.Lock()
        self._tables: dict[str, VersionTable] = {}
        self._live: tuple[float, str | None] = (0.0, None)
        self._global: tuple[float, dict[str, Any]] = (0.0, {})

    # -- versions ------------------------------------------------------------------------
    def live_version(self) -> str | None:
        at, v = self._live
        if time.monotonic() - at < self.config["VERSION_CACHE_S"] and v is not None:
            return v
        raw = self.r.get(c.LIVE_KEY)
        v = _s(raw) if raw is not None else None
        self._live = (time.monotonic(), v)
        return v

    def table(self, version: str) -> VersionTable | None:
        """The version's post table (cached; a version never changes once published)."""
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
        t = VersionTable(version, p["post_id"], p["author_id"], p["created_at"], p["category"],
                         p["product_ids"], items, scores)
        with self._lock:
            self._tables[version] = t
            while len(self._tables) > 4:  # keep the few versions in use
                self._tables.pop(next(iter(self._tables)))
        return t

    # -- global, briefly cached ----------------------------------------------------------
    def global_state(self) -> dict[str, Any]:
        """Posts created through the API (newest first) and the out-of-stock product set."""
        at, g = self._global
        if time.monotonic() - at < self.config["GLOBAL_CACHE_S"] and g:
            return g
        pipe = self.r.pipeline(transaction=False)
        pipe.zrange(c.FRESH_KEY, 0, 499, desc=True, withscores=True)
        pipe.hgetall(c.FRESH_META_KEY)
        pipe.smembers(c.OUT_OF_STOCK_KEY)
        fresh, meta, oos = pipe.execute()
        g = {
            "fresh": [(_s(p), float(ts)) for p, ts in fresh],
            "fresh_meta": {_s(k): c.decode_json(v) for k, v in meta.items()},
            "oos": {_s(x) for x in oos},
        }
        self._global = (time.monotonic(), g)
        return g

    # -- one user ------------------------------------------------------------------------
    def user_state(self, user_id: str, version: str, now: float) -> UserState:
        """Everything about one user in ONE pipelined round trip (one cluster slot)."""
        k = c.user_key
        window = now - self.config["SEEN_WINDOW_S"]
        pipe = self.r.pipeline(transaction=False)
        pipe.get(k(user_id, "cand", version))
        pipe.zrangebyscore(k(user_id, c.USER_SEEN), window, "+inf")
        pipe.zrange(k(user_id, c.USER_LIKES), 0, -1)
        pipe.zrange(k(user_id, c.USER_RT), 0, self.config["RT_MAX"] - 1, desc=True,
                    withscores=True)
        pipe.hgetall(k(user_id, c.USER_RT_REASON))
        for kind in (c.USER_HIDDEN, c.USER_MUTED, c.USER_FOLLOWS, c.USER_UNFOLLOWS,
                     c.USER_PURCHASES):
            pipe.smembers(k(user_id, kind))
        cand, seen, liked, rt, why, hidden, muted, follows, unfollows, bought = pipe.execute()
        return UserState(
            candidates=c.decode_candidates(cand),
            seen={_s(x) for x in seen}, liked={_s(x) for x in liked},
            realtime=[(_s(p), float(s)) for p, s in rt],
            realtime_why={_s(a): _s(b) for a, b in why.items()},
            hidden={_s(x) for x in hidden}, muted={_s(x) for x in muted},
            follows={_s(x) for x in follows}, unfollows={_s(x) for x in unfollows},
            bought={_s(x) for x in bought},
        )

    # -- documents -----------------------------------------------------------------------
    def documents(self, post_ids: list[str], product_ids: list[str],
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Post and product documents in ONE MGET (split per node on a cluster)."""
        keys = [c.post_doc_key(p) for p in post_ids] + [c.product_doc_key(p) for p in product_ids]
        if not keys:
            return {}, {}
        raw = self.r.mget_nonatomic(keys) if c.is_cluster(self.r) else self.r.mget(keys)
        posts = {p: c.decode_json(v) for p, v in zip(post_ids, raw, strict=False) if v}
        prods = {p: c.decode_json(v) for p, v in zip(product_ids, raw[len(post_ids):],
                                                      strict=True) if v}
        return posts, prods

    # -- writes of the read path ---------------------------------------------------------
    def record_served(self, user_id: str, post_ids: list[str], now: float,
                      route: dict[str, Any], request_id: str) -> None:
        """Mark a page's posts served (one pipelined write) and log the exposure."""
        if not post_ids:
            return
        seen = c.user_key(user_id, c.USER_SEEN)
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(seen, dict.fromkeys(post_ids, now))
        pipe.zremrangebyscore(seen, "-inf", now - self.config["SEEN_WINDOW_S"])
        pipe.zremrangebyrank(seen, 0, -self.config["SEEN_MAX"] - 1)
        if route.get("experiment"):
            pipe.xadd(c.EXPOSURES_KEY, {
                "experiment": route["experiment"], "arm": route["arm"] or "",
                "version": route["model_version"], "request_id": request_id,
                "user_id": user_id, "n": str(len(post_ids)), "ts": str(now)},
                maxlen=self.config["EVENT_LOG_MAXLEN"], approximate=True)
        pipe.execute()
