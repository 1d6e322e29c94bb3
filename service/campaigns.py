"""Audiences and sponsored campaigns in Redis (docs/merchants.md, "Audiences and campaigns").

**Audiences.** :func:`build_audience` ranks the users of the live version for a merchant's
target (its products, a category of its products, or one of its posts: that post's products of
the merchant) from the version's audience index (:func:`rank_indexed`; written by ``feed
publish``: per product the best :data:`feed.contract.AUDIENCE_INDEX_MAX` users among those for
whom it is one of their :data:`feed.contract.AUDIENCE_INDEX_PER_USER` best products, each scored
by the product's posts' ranks in the user's candidate list, ``1 / log2(rank + 2)``, their item
neighbours at half weight, plus 1 for a purchase in the training data), one pipeline whatever
the number of users. A version published before the index is ranked by the old bounded scan
(:func:`rank_users`: every ``{u:<user>}:cand:<v>``, at most :data:`AUDIENCE_SCAN_MAX` users,
purchases since training counted too), with a warning to publish it again. Stored as a zset
with its meta, expiring after :data:`AUDIENCE_TTL_S`, at most :data:`AUDIENCES_PER_MERCHANT`
per merchant (the oldest goes).

**Campaigns.** A config in :data:`feed.contract.CAMPAIGNS_KEY`, indexed per merchant
(:func:`feed.contract.merchant_campaigns_key`, at most :data:`CAMPAIGNS_KEPT_PER_MERCHANT` kept:
the oldest ended or stopped go first; at most :data:`CAMPAIGNS_PER_MERCHANT` scheduled or
running), in the live index (:data:`feed.contract.CAMPAIGNS_LIVE_KEY`, at most
``CAMPAIGNS_LIVE_MAX`` over every merchant) and dropped :data:`RETENTION_S` after its end or
stop (:data:`feed.contract.CAMPAIGNS_EXPIRY_KEY`). A targeted campaign reads its audience's
users key (never a copy), kept alive as long as the campaign and never evicted while a kept
campaign uses it. Every change bumps :data:`feed.contract.CAMPAIGNS_GEN_KEY`, which the page's
first round trip reads, so a process reloads the live configs (:class:`Sponsor`, no audience)
only when it moves: an organic page costs nothing more. A page of a user outside the holdout
(``bucket(salt, user)``, as experiments assign arms) gets at most :data:`PAGE_MAX` sponsored
posts at the campaigns' slots, reserved by ONE Lua script per page (:data:`RESERVE`): the
audience membership (``ZSCORE``), Redis's clock, the flight, the stop flag, the budget, the
pacing (``budget * elapsed / flight + burst``) and ``max_per_user``, checked and counted
atomically, so concurrent pages never over-deliver.

**Report.** The merchant fold (:func:`feed.merchants.fold`, one checkpoint for every report)
counts each purchase of a campaign's products during its flight (until its stop) into the
campaign's per-user counts, exactly once; :func:`report` folds at most :data:`REPORT_FOLD_MAX`
new entries (``behind``: those left to ``feed merchants aggregate``), then compares purchases
per user between the exposed group (audience users outside the holdout) and the holdout:
intent to treat, so the comparison is between two random halves of one population, whatever
the delivery. An ``all`` campaign's population is the users whose pages it could have entered
during the flight (``reach``, written with the page's own round trip).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.exceptions import WatchError

from feed import contract as c
from feed import merchants as fm
from feed.experiments import N_BUCKETS, bucket

logger = logging.getLogger(__name__)

AUDIENCE_MAX = 100_000  # users an audience keeps
AUDIENCE_SCAN_MAX = 500_000  # users scored for one audience (estimated_size extrapolates)
AUDIENCE_TTL_S = 30 * 86_400
AUDIENCES_PER_MERCHANT = 20
AUDIENCE_SHOWN = 50  # users in the answer (the CSV has them all)
TARGET_POSTS_MAX = 500  # target posts whose neighbours are read
TARGET_PRODUCTS_MAX = 200  # target products read from the index (a category: the widest)
CAMPAIGNS_PER_MERCHANT = 50  # campaigns not yet ended, per merchant
CAMPAIGNS_KEPT_PER_MERCHANT = 100  # every kept campaign of a merchant (the oldest done go)
CAMPAIGNS_LIVE_MAX = 100  # scheduled or running over every merchant (setting CAMPAIGNS_LIVE_MAX)
PRUNE_BATCH = 100  # configs past their retention dropped by one create
CAMPAIGN_POSTS_MAX = 20
BUDGET_MAX = 10_000_000
MAX_PER_USER_MAX = 1_000
FLIGHT_MAX_S = 90 * 86_400
RETENTION_S = fm.CAMPAIGN_KEEP_S  # config, counters, report data outlive the end (or stop)
PAGE_MAX = 2  # sponsored posts on one page, over every campaign
BURST_SHARE = 0.02  # pacing allows this share of the budget ahead of schedule (at least 1)
REPORT_FOLD_MAX = 50_000  # log entries a report request folds (the rest: `behind`)
REPORT_FOLD_S = 5.0  # and for about this long at most


class CampaignError(Exception):
    """Refused: ``code`` (``not_found``: 404; ``too_many_*``: 409; else 400), ``message``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}"


# --- what a merchant owns ----------------------------------------------------------------------
@dataclass
class Owned:
    """The live version's view of one merchant's catalogue (``feed.merchants.Catalogue``)."""

    r: Any
    merchant_id: str
    version: str | None
    table: Any  # feed.serving.state.VersionTable | None
    cat: fm.Catalogue = field(init=False)

    def __post_init__(self) -> None:
        lookup = None
        if self.table is not None:
            t = self.table

            def lookup(p: str) -> tuple[str, list[str]] | None:
                i = t.index.get(p)
                return None if i is None else (t.authors[i], list(t.product_ids[i]))

        self.cat = fm.Catalogue(self.r, self.version, lookup)

    def products(self, product_ids: Iterable[str]) -> set[str]:
        """Those of ``product_ids`` that are this merchant's."""
        ids = list(dict.fromkeys(product_ids))
        self.cat.load([], ids)
        return {p for p in ids if (self.cat.product(p) or ("", None))[0] == self.merchant_id}

    def post(self, post_id: str) -> tuple[str, list[str]] | None:
        """(author, the merchant's products it links) of a post linking any; else None."""
        self.cat.load([post_id], [])
        hit = self.cat.post(post_id)
        if hit is None:
            return None
        mine = self.products(hit[1])
        return (hit[0], sorted(mine)) if mine else None


# --- audiences ---------------------------------------------------------------------------------
def _target(owned: Owned, spec: Mapping[str, Any]) -> tuple[set[str], list[int], dict[str, Any]]:
    """(the target products, the version-table posts linking them (or the liked post), what
    was targeted); ``not_found`` unless every product and the post are the merchant's."""
    table = owned.table
    if spec.get("like_post"):
        post = spec["like_post"]
        hit = owned.post(post)
        if hit is None or post not in table.index:
            raise CampaignError(
                "not_found", f"no post {post!r} linking this merchant's products", 404
            )
        return set(hit[1]), [table.index[post]], {"like_post": post}
    if spec.get("product_ids"):
        wanted = list(dict.fromkeys(spec["product_ids"]))
        products = owned.products(wanted)
        missing = [p for p in wanted if p not in products]
        if missing:
            raise CampaignError("not_found", f"no product {missing[0]!r} of this merchant", 404)
        what: dict[str, Any] = {"product_ids": sorted(products)}
    else:
        category = spec["category"]
        in_cat = [p for p, cat in table.product_category.items() if cat == category]
        products = owned.products(in_cat)
        if not products:
            raise CampaignError(
                "not_found", f"no product of this merchant in category {category!r}", 404
            )
        what = {"category": category}
    seeds = [i for i, ps in enumerate(table.product_ids) if products.intersection(ps)]
    if not seeds:
        raise CampaignError("not_found", "no post links these products", 404)
    return products, seeds, what


def _target_weights(r: Any, table: Any, seeds: list[int]) -> np.ndarray:
    """The scan's weight of every post of the version table: 1 for the target posts, half the
    best neighbour score for their item neighbours (``nb:<post>``)."""
    n = len(table.post_ids)
    weights = np.zeros(n, dtype=np.float64)
    weights[seeds] = 1.0
    pipe = r.pipeline(transaction=False)
    chosen = seeds[:TARGET_POSTS_MAX]
    for i in chosen:
        pipe.get(c.neighbours_key(table.version, table.post_ids[i]))
    for blob in pipe.execute():
        items, scores, _ = c.decode_candidates(blob)
        if len(items):
            unit = c.unit_scores(scores) if len(scores) else scores
            ok = items < n
            weights[items[ok]] = np.maximum(weights[items[ok]], 0.5 * unit[ok])
    return weights


#: version -> its audience index's user table (a version never changes once published)
_INDEX_USERS: dict[str, list[str]] = {}
_INDEX_USERS_LOCK = threading.Lock()
INDEX_USERS_CACHED = 2  # versions whose user table a process keeps


def _widest(r: Any, version: str, products: set[str], n: int) -> list[str]:
    """The ``n`` of ``products`` with the largest reach in the version's audience index (ties:
    the smaller id), from each blob's 8-byte header (``GETRANGE``, one pipeline)."""
    ordered = sorted(products)
    pipe = r.pipeline(transaction=False)
    for p in ordered:
        pipe.getrange(c.audience_index_key(version, p), 0, 3)
    heads = pipe.execute()
    reach = [int.from_bytes(h, "little") if h and len(h) == 4 else 0 for h in heads]
    best = sorted(range(len(ordered)), key=lambda i: (-reach[i], ordered[i]))[:n]
    return [ordered[i] for i in best]


def rank_indexed(
    r: Any, version: str, products: set[str], size: int
) -> tuple[list[tuple[str, float]], int, set[str]] | None:
    """(the best ``size`` users with a positive score, best first (ties: the smaller id); the
    estimated size; the products ranked) from the version's audience index
    (``feed.publish.audience_index``: per product its best
    :data:`feed.contract.AUDIENCE_INDEX_MAX` users), or None for a version published before
    the index existed. One pipeline (``EXISTS`` of the user table and one ``MGET`` of the
    products' blobs, all in the version's slot), plus the user table once per process. More
    than :data:`TARGET_PRODUCTS_MAX` products (a large category): the
    :data:`TARGET_PRODUCTS_MAX` with the largest reach (:func:`_widest`, one more pipeline), so
    a request reads at most that many blobs (each at most 80 KB) whatever the catalogue.

    A user's score is the sum of its scores over the target products, with +1 once for
    buying any of them (each product's score holds +1 for its purchase, flagged in the index;
    the scan takes each post's best weight over the products: see docs/architecture.md, "The
    audience index"). ``estimated_size`` is exact (the users with
    a positive score in the index) when no product's list was cut; otherwise
    ``U x (1 - prod_p (1 - reach_p / U))``, U the version's users with candidates and reach_p
    the users with a positive score for product p before the cut (independent products), and
    never below the users actually found. Either way an estimate of the users the scan would
    find: a user enters a product's list only for its 100 best products."""
    if len(products) > TARGET_PRODUCTS_MAX:
        if not r.exists(c.audience_index_key(version)):
            return None
        products = set(_widest(r, version, products, TARGET_PRODUCTS_MAX))
    keys = [c.audience_index_key(version, p) for p in sorted(products)]
    pipe = r.pipeline(transaction=False)
    pipe.exists(c.audience_index_key(version))
    pipe.mget(keys)
    has_index, blobs = pipe.execute()
    if not has_index:
        return None
    users = _INDEX_USERS.get(version)
    if users is None:
        users = c.decode_json(r.get(c.audience_index_key(version))) or []
        if not users:  # deleted meanwhile
            return None
        with _INDEX_USERS_LOCK:
            while len(_INDEX_USERS) >= INDEX_USERS_CACHED:
                _INDEX_USERS.pop(next(iter(_INDEX_USERS)), None)
            _INDEX_USERS[version] = users
    n_users = len(users)
    total = np.zeros(n_users, dtype=np.float64)
    buys = np.zeros(n_users, dtype=np.int64)  # target products each user bought
    miss = 1.0
    complete = True
    for blob in blobs:
        reach, idx, scores, bought = c.decode_audience_index(blob)
        ok = idx < n_users
        np.add.at(total, idx[ok], scores[ok])
        np.add.at(buys, idx[ok & bought], 1)
        complete = complete and reach == len(idx)
        miss *= 1.0 - min(reach, n_users) / max(n_users, 1)
    total -= np.maximum(buys - 1, 0)  # a purchase of the target adds 1 once, as in the scan
    found = np.flatnonzero(total > 0)
    estimated = len(found) if complete else max(len(found), round(n_users * (1.0 - miss)))
    if len(found) > size:  # the best `size` (and every user tied with the last), then sort
        kth = total[found[np.argpartition(-total[found], size - 1)[size - 1]]]
        found = found[total[found] >= kth]
    ranked = sorted(((users[i], float(total[i])) for i in found), key=lambda x: (-x[1], x[0]))
    return ranked[:size], estimated, products


def _scan_users(r: Any, version: str) -> Iterable[list[str]]:
    """Batches of users with a candidate list in ``version`` (SCAN, on every node)."""
    prefix, suffix = "{u:", f"}}:cand:{version}"
    batch: list[str] = []
    for key in r.scan_iter(match=f"{{u:*}}:cand:{version}", count=2000):
        k = c.text(key)
        if k.startswith(prefix) and k.endswith(suffix):
            batch.append(k[len(prefix) : -len(suffix)])
        if len(batch) >= 1000:
            yield batch
            batch = []
    if batch:
        yield batch


def rank_users(
    r: Any, version: str, weights: np.ndarray, products: set[str], scan_max: int
) -> tuple[list[tuple[str, float]], int, bool]:
    """(users with a positive score, best first; users scored; whether every user was)."""
    discount = 1.0 / np.log2(np.arange(2, 10_002, dtype=np.float64))
    scored: list[tuple[str, float]] = []
    seen = 0
    complete = True
    for users in _scan_users(r, version):
        if seen >= scan_max:
            complete = False
            break
        users = users[: scan_max - seen]
        seen += len(users)
        pipe = r.pipeline(transaction=False)
        for u in users:
            pipe.get(c.user_key(u, "cand", version))
            pipe.get(c.user_key(u, c.USER_SEED, version))
            pipe.smembers(c.user_key(u, c.USER_PURCHASES))
        replies = pipe.execute()
        for j, u in enumerate(users):
            blob, seed, bought = replies[3 * j : 3 * j + 3]
            items, _, _ = c.decode_candidates(blob)
            items = items[items < len(weights)][: len(discount)]
            score = float(np.dot(weights[items], discount[: len(items)])) if len(items) else 0.0
            _, seed_bought = c.decode_seed(seed)
            if products & (seed_bought | {c.text(x) for x in bought or ()}):
                score += 1.0
            if score > 0:
                scored.append((u, score))
    scored.sort(key=lambda x: (-x[1], x[0]))
    return scored, seen, complete


def build_audience(
    r: Any,
    merchant_id: str,
    version: str,
    table: Any,
    spec: Mapping[str, Any],
    size: int,
    users_in_version: int | None = None,
) -> dict[str, Any]:
    """Rank (from the version's audience index, :func:`rank_indexed`; by the bounded scan,
    :func:`rank_users`, for a version published before it), store (bounded, with a TTL) and
    describe a new audience."""
    owned = Owned(r, merchant_id, version, table)
    products, seeds, what = _target(owned, spec)
    keep_n = min(size, AUDIENCE_MAX)
    indexed = rank_indexed(r, version, products, keep_n)
    if indexed is not None:
        ranked, estimated, used = indexed
        if len(used) < len(products):  # a category wider than TARGET_PRODUCTS_MAX
            what = {**what, "products_in_target": len(products), "products_ranked": len(used)}
            products = used
        method = "index"
    else:  # a version published before the index: the bounded scan
        logger.warning(
            "version %s has no audience index (published before it existed): scanning up to "
            "%d users; publish it again (feed publish --force) for fast audiences",
            version,
            AUDIENCE_SCAN_MAX,
        )
        weights = _target_weights(r, table, seeds)
        ranked, scanned, complete = rank_users(r, version, weights, products, AUDIENCE_SCAN_MAX)
        estimated = len(ranked)
        if not complete and scanned and users_in_version:
            estimated = round(len(ranked) * users_in_version / scanned)
        method = "scan"
    keep = ranked[:keep_n]
    audience_id = _new_id("aud-")
    now = time.time()
    meta = {
        "audience_id": audience_id,
        "merchant_id": merchant_id,
        "target": what,
        "products": sorted(products),
        "model_version": version,
        "size": len(keep),
        "requested_size": size,
        "estimated_size": estimated,
        "ranked_by": method,
        "created_at": now,
    }
    index = c.audiences_key(merchant_id)
    while True:
        with r.pipeline(transaction=True) as pipe:
            try:
                # a campaign created meanwhile may start using an audience: WATCH its index
                pipe.watch(index, c.merchant_campaigns_key(merchant_id))
                used = audiences_in_use(pipe, merchant_id)
                old = [c.text(a) for a in pipe.zrangebyscore(index, now - AUDIENCE_TTL_S, "+inf")]
                spare = [a for a in old if a not in used]
                over = len(old) - AUDIENCES_PER_MERCHANT + 1
                if over > len(spare):
                    raise CampaignError(
                        "too_many_audiences",
                        f"at most {AUDIENCES_PER_MERCHANT} audiences, and every one is used by "
                        "a kept campaign: an audience goes once no campaign uses it",
                        409,
                    )
                gone = spare[: max(0, over)]
                pipe.multi()
                for a in gone:
                    pipe.zrem(index, a)
                    pipe.delete(c.audience_key(a, "meta"), c.audience_key(a, "users"))
                if keep:
                    pipe.zadd(c.audience_key(audience_id, "users"), dict(keep))
                    pipe.expire(c.audience_key(audience_id, "users"), AUDIENCE_TTL_S)
                meta_key = c.audience_key(audience_id, "meta")
                pipe.set(meta_key, c.encode_json(meta), ex=AUDIENCE_TTL_S)
                pipe.zadd(index, {audience_id: now})
                pipe.zremrangebyscore(index, "-inf", now - AUDIENCE_TTL_S)
                pipe.expire(index, AUDIENCE_TTL_S)
                pipe.execute()
                break
            except WatchError:
                continue
    return {
        **public_audience(meta),
        "users": [u for u, _ in keep[:AUDIENCE_SHOWN]],
    }


def public_audience(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "audience_id": meta["audience_id"],
        "target": meta["target"],
        "size": meta["size"],
        "estimated_size": meta["estimated_size"],
        "ranked_by": meta.get("ranked_by", "scan"),
        "model_version": meta["model_version"],
        "created_at": c.iso_time(meta["created_at"]),
        "expires_at": c.iso_time(meta["created_at"] + AUDIENCE_TTL_S),
    }


def audience_meta(r: Any, merchant_id: str, audience_id: str) -> dict[str, Any]:
    """An audience's meta; ``not_found`` unless it is the merchant's and not expired."""
    meta = None
    if c.valid_id(audience_id):
        meta = c.decode_json(r.get(c.audience_key(audience_id, "meta")))
    if not isinstance(meta, dict) or meta.get("merchant_id") != merchant_id:
        raise CampaignError("not_found", f"no audience {audience_id[:64]!r}", 404)
    return meta


def audience_csv(r: Any, merchant_id: str, audience_id: str) -> str:
    """``user_id,score`` rows, best first. A cell a spreadsheet would run as a formula
    (``= + - @``, tab, CR first) is prefixed with ``'``."""
    audience_meta(r, merchant_id, audience_id)
    rows = r.zrange(c.audience_key(audience_id, "users"), 0, -1, desc=True, withscores=True)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["user_id", "score"])
    for u, s in rows:
        user = c.text(u)
        if user[:1] in ("=", "+", "-", "@", "\t", "\r"):
            user = "'" + user
        w.writerow([user, round(float(s), 6)])
    return out.getvalue()


def list_audiences(r: Any, merchant_id: str) -> list[dict[str, Any]]:
    ids = [c.text(a) for a in r.zrange(c.audiences_key(merchant_id), 0, -1)]
    metas = r.mget([c.audience_key(a, "meta") for a in ids]) if ids else []
    return [public_audience(m) for m in (c.decode_json(x) for x in metas) if isinstance(m, dict)]


# --- campaigns ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Campaign:
    """A campaign's config, as the page needs it (small: the audience stays in Redis)."""

    campaign_id: str
    merchant_id: str
    post_ids: tuple[str, ...]
    authors: Mapping[str, str]
    products: frozenset[str]
    audience_id: str | None  # None: every user ("all"); else its users key is checked in Redis
    budget: int
    max_per_user: int
    slots: tuple[int, ...]
    start: float
    end: float
    holdout: float
    salt: str
    stopped_at: float | None
    post_products: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, cfg: Mapping[str, Any]) -> Campaign:
        aud = cfg["audience_id"]
        return cls(
            cfg["campaign_id"],
            cfg["merchant_id"],
            tuple(cfg["post_ids"]),
            dict(cfg.get("authors") or {}),
            frozenset(cfg["products"]),
            None if aud == "all" else aud,
            int(cfg["budget_impressions"]),
            int(cfg["max_per_user"]),
            tuple(cfg["slots"]),
            float(cfg["start"]),
            float(cfg["end"]),
            float(cfg["holdout"]),
            cfg["salt"],
            cfg.get("stopped_at"),
            {p: tuple(ps) for p, ps in (cfg.get("post_products") or {}).items()},
        )

    def in_holdout(self, user_id: str) -> bool:
        return in_holdout(self.salt, self.holdout, user_id)

    def flags(self) -> dict[str, Any]:
        """The fields a sponsored feed item carries."""
        return {"sponsored": True, "merchant_id": self.merchant_id, "campaign_id": self.campaign_id}


def in_holdout(salt: str, holdout: float, user_id: str) -> bool:
    """The holdout rule: the user's bucket (:func:`feed.experiments.bucket`) below the share."""
    return bucket(salt, user_id) < round(holdout * N_BUCKETS)


def status(cfg: Mapping[str, Any], now: float) -> str:
    if cfg.get("stopped_at"):
        return "stopped"
    if now < cfg["start"]:
        return "scheduled"
    return "running" if now < cfg["end"] else "ended"


def _drop_at(cfg: Mapping[str, Any]) -> float:
    """When a campaign's config and counters go: :data:`RETENTION_S` after its end (or stop)."""
    stopped = cfg.get("stopped_at")
    return (min(cfg["end"], stopped) if stopped else cfg["end"]) + RETENTION_S


def _campaign_keys(campaign_id: str) -> list[str]:
    return [c.campaign_key(campaign_id, k) for k in ("n", "u", "stop", "reach", "buy", "cp", "aud")]


def _drop(pipe: Any, cfg: Mapping[str, Any]) -> None:
    """Queue the removal of a campaign: its config, its index entries, its counters."""
    cid = cfg["campaign_id"]
    pipe.hdel(c.CAMPAIGNS_KEY, cid)
    pipe.zrem(c.merchant_campaigns_key(cfg["merchant_id"]), cid)
    for key in (c.CAMPAIGNS_LIVE_KEY, c.CAMPAIGNS_FOLD_KEY, c.CAMPAIGNS_EXPIRY_KEY):
        pipe.zrem(key, cid)
    pipe.delete(*_campaign_keys(cid))


def _mine(r: Any, merchant_id: str) -> list[dict[str, Any]]:
    """The merchant's kept campaigns' configs, oldest first (from its index)."""
    ids = [c.text(x) for x in r.zrange(c.merchant_campaigns_key(merchant_id), 0, -1)]
    raw = r.hmget(c.CAMPAIGNS_KEY, ids) if ids else []
    out = [c.decode_json(v) for v in raw]
    return [x for x in out if isinstance(x, dict) and x.get("merchant_id") == merchant_id]


def audiences_in_use(r: Any, merchant_id: str) -> set[str]:
    """The audiences the merchant's kept campaigns read (never evicted while one does)."""
    return {x["audience_id"] for x in _mine(r, merchant_id) if x["audience_id"] != "all"}


def create_campaign(
    r: Any,
    merchant_id: str,
    spec: Mapping[str, Any],
    owned: Owned,
    now: float,
    live_max: int = CAMPAIGNS_LIVE_MAX,
) -> dict[str, Any]:
    """Check the posts and the audience are the merchant's, then store the campaign (config,
    indexes, the audience kept alive as long as it, generation bump) in one transaction under
    ``WATCH``: at most :data:`CAMPAIGNS_PER_MERCHANT` scheduled or running per merchant and
    ``live_max`` overall (409), at most :data:`CAMPAIGNS_KEPT_PER_MERCHANT` kept per merchant
    (the oldest ended or stopped ones go, with their report data); its public form."""
    posts = list(dict.fromkeys(spec["post_ids"]))
    authors: dict[str, str] = {}
    post_products: dict[str, list[str]] = {}
    products: set[str] = set()
    for p in posts:
        hit = owned.post(p)
        if hit is None:
            raise CampaignError("not_found", f"no post {p!r} linking this merchant's products", 404)
        authors[p] = hit[0]
        post_products[p] = hit[1]
        products.update(hit[1])
    audience_id = spec["audience_id"]
    if audience_id != "all":
        audience_meta(r, merchant_id, audience_id)
    start, end = float(spec["start"]), float(spec["end"])
    campaign_id = _new_id("cmp-")
    cfg = {
        "campaign_id": campaign_id,
        "merchant_id": merchant_id,
        "post_ids": posts,
        "authors": authors,
        "post_products": post_products,
        "products": sorted(products),
        "audience_id": audience_id,
        "budget_impressions": spec["budget_impressions"],
        "max_per_user": spec["max_per_user"],
        "slots": sorted(set(spec["slots"])),
        "start": start,
        "end": end,
        "holdout": spec["holdout"],
        "salt": campaign_id,
        "created_at": now,
        "stopped_at": None,
    }
    index = c.merchant_campaigns_key(merchant_id)
    while True:
        with r.pipeline(transaction=True) as pipe:
            try:
                watched = [c.CAMPAIGNS_KEY, c.CAMPAIGNS_LIVE_KEY, index]
                if audience_id != "all":
                    watched.append(c.audience_key(audience_id, "meta"))
                pipe.watch(*watched)
                keep_until = int(end + RETENTION_S) + 1
                extend: list[tuple[str, int]] = []  # (key, unix time): a TTL only lengthened
                for key in [index] + (
                    [c.audience_key(audience_id, k) for k in ("users", "meta")]
                    if audience_id != "all"
                    else []
                ):
                    ttl = int(pipe.ttl(key))
                    if ttl != -1:  # -2 (none yet) or a TTL; -1 (none): already kept
                        extend.append((key, max(keep_until, int(now) + ttl + 1)))
                if audience_id != "all":
                    audience_meta(pipe, merchant_id, audience_id)  # not evicted meanwhile
                # configs past their retention, every merchant's (a few at a time)
                due = [
                    c.text(x)
                    for x in pipe.zrangebyscore(
                        c.CAMPAIGNS_EXPIRY_KEY, "-inf", now, start=0, num=PRUNE_BATCH
                    )
                ]
                raw_due = pipe.hmget(c.CAMPAIGNS_KEY, due) if due else []
                due_cfgs = [c.decode_json(v) for v in raw_due]
                mine = [x for x in _mine(pipe, merchant_id) if _drop_at(x) >= now]
                live = [x for x in mine if status(x, now) in ("scheduled", "running")]
                if len(live) >= CAMPAIGNS_PER_MERCHANT:
                    raise CampaignError(
                        "too_many_campaigns",
                        f"at most {CAMPAIGNS_PER_MERCHANT} scheduled or running campaigns",
                        409,
                    )
                running_all = int(pipe.zcount(c.CAMPAIGNS_LIVE_KEY, f"({now}", "+inf"))
                if running_all >= live_max:
                    raise CampaignError(
                        "too_many_live_campaigns",
                        f"at most {live_max} scheduled or running campaigns over every "
                        "merchant: try again when one ends",
                        409,
                    )
                done = [x for x in mine if status(x, now) in ("ended", "stopped")]
                evict = done[: max(0, len(mine) - CAMPAIGNS_KEPT_PER_MERCHANT + 1)]
                pipe.multi()
                for i, cid in enumerate(due):
                    old = due_cfgs[i]
                    if isinstance(old, dict):
                        _drop(pipe, old)
                    else:
                        pipe.zrem(c.CAMPAIGNS_EXPIRY_KEY, cid)
                for x in evict:
                    _drop(pipe, x)
                pipe.zremrangebyscore(c.CAMPAIGNS_LIVE_KEY, "-inf", now)
                pipe.hset(c.CAMPAIGNS_KEY, campaign_id, c.encode_json(cfg))
                pipe.zadd(index, {campaign_id: now})
                for key, at in extend:  # the audience lives as long as the campaign
                    pipe.expireat(key, at)
                pipe.zadd(c.CAMPAIGNS_LIVE_KEY, {campaign_id: end})
                pipe.zadd(c.CAMPAIGNS_FOLD_KEY, {campaign_id: int(end * 1000)})
                pipe.zadd(c.CAMPAIGNS_EXPIRY_KEY, {campaign_id: _drop_at(cfg)})
                pipe.incr(c.CAMPAIGNS_GEN_KEY)
                pipe.execute()
                break
            except WatchError:
                continue
    return public_campaign(r, cfg, now)


def get_config(r: Any, merchant_id: str, campaign_id: str) -> dict[str, Any]:
    cfg = c.decode_json(r.hget(c.CAMPAIGNS_KEY, campaign_id)) if c.valid_id(campaign_id) else None
    if not isinstance(cfg, dict) or cfg.get("merchant_id") != merchant_id:
        raise CampaignError("not_found", f"no campaign {campaign_id[:64]!r}", 404)
    return cfg


def public_campaign(r: Any, cfg: Mapping[str, Any], now: float) -> dict[str, Any]:
    cid = cfg["campaign_id"]
    pipe = r.pipeline(transaction=False)
    pipe.get(c.campaign_key(cid, "n"))
    pipe.hlen(c.campaign_key(cid, "u"))
    delivered, users = pipe.execute()
    return {
        "campaign_id": cid,
        "merchant_id": cfg["merchant_id"],
        "post_ids": cfg["post_ids"],
        "products": cfg["products"],
        "audience_id": cfg["audience_id"],
        "budget_impressions": cfg["budget_impressions"],
        "max_per_user": cfg["max_per_user"],
        "slots": cfg["slots"],
        "start": c.iso_time(cfg["start"]),
        "end": c.iso_time(cfg["end"]),
        "holdout": cfg["holdout"],
        "status": status(cfg, now),
        "stopped_at": c.iso_time(cfg.get("stopped_at")),
        "kept_until": c.iso_time(_drop_at(cfg)),
        "delivered_impressions": int(delivered or 0),
        "users_reached": int(users or 0),
    }


def list_campaigns(r: Any, merchant_id: str, now: float) -> list[dict[str, Any]]:
    return [public_campaign(r, x, now) for x in _mine(r, merchant_id) if _drop_at(x) >= now]


def stop_campaign(r: Any, merchant_id: str, campaign_id: str, now: float) -> dict[str, Any]:
    """Stop at once in every process: the stop flag (the reservation script reads it), the
    config and the indexes (no longer live; purchases folded until now; kept
    :data:`RETENTION_S` from now), with a generation bump, in one transaction."""
    while True:
        with r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(c.CAMPAIGNS_KEY)
                cfg = get_config(pipe, merchant_id, campaign_id)
                if not cfg.get("stopped_at"):
                    cfg["stopped_at"] = now
                    ttl = max(1, int(_drop_at(cfg) - now) + 1)
                    pipe.multi()
                    pipe.set(c.campaign_key(campaign_id, "stop"), "1", ex=ttl)
                    pipe.hset(c.CAMPAIGNS_KEY, campaign_id, c.encode_json(cfg))
                    pipe.zrem(c.CAMPAIGNS_LIVE_KEY, campaign_id)
                    fold_until = int(min(now, cfg["end"]) * 1000)
                    pipe.zadd(c.CAMPAIGNS_FOLD_KEY, {campaign_id: fold_until}, xx=True)
                    pipe.zadd(c.CAMPAIGNS_EXPIRY_KEY, {campaign_id: _drop_at(cfg)})
                    pipe.incr(c.CAMPAIGNS_GEN_KEY)
                    pipe.execute()
                else:
                    pipe.reset()
                return public_campaign(r, cfg, now)
            except WatchError:
                continue


# --- the page's side ---------------------------------------------------------------------------
#: Reserve impressions for one page over the candidate campaigns, in order (KEYS per campaign:
#: delivered, per-user hash, stop flag, audience users; ARGV: user, page max, then per campaign
#: targeted, budget, max per user, start, end, burst, ttl, #slots, slots.., #posts, posts..).
#: A targeted campaign reaches only a member of its audience (ZSCORE, in Redis: no worker holds
#: an audience). Slots and posts are taken once over the page, at most ``page max`` in all.
#: Returns per campaign {granted, delivered after (-1: not read), slot, post, slot, post..}.
#: Redis's clock: every process paces alike.
RESERVE = """
local user, pagemax = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local taken, used, placed, out = {}, {}, 0, {}
local a = 3
for i = 1, #KEYS / 4 do
  local nk, uk, sk, ak = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  local targeted, budget, cap = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local start, stop, burst = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local ttl, ns = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  local slots = {}
  for j = 1, ns do slots[j] = ARGV[a + 7 + j] end
  local np = tonumber(ARGV[a + 8 + ns])
  local posts = {}
  for j = 1, np do posts[j] = ARGV[a + 8 + ns + j] end
  a = a + 9 + ns + np
  local res = {0, -1}
  if placed < pagemax and now >= start and now < stop
     and (targeted == '0' or redis.call('ZSCORE', ak, user))
     and redis.call('EXISTS', sk) == 0 then
    local n = tonumber(redis.call('GET', nk) or '0')
    local paced = math.floor(budget * (now - start) / (stop - start)) + burst
    if paced > budget then paced = budget end
    local u = tonumber(redis.call('HGET', uk, user) or '0')
    local room = math.min(paced - n, cap - u, pagemax - placed)
    local g, pi = 0, 1
    for j = 1, ns do
      if g >= room then break end
      if not taken[slots[j]] then
        while pi <= np and used[posts[pi]] do pi = pi + 1 end
        if pi > np then break end
        taken[slots[j]] = true
        used[posts[pi]] = true
        res[#res + 1] = tonumber(slots[j])
        res[#res + 1] = posts[pi]
        g = g + 1
        pi = pi + 1
      end
    end
    if g > 0 then
      redis.call('INCRBY', nk, g)
      redis.call('HINCRBY', uk, user, g)
      redis.call('EXPIRE', nk, ttl)
      redis.call('EXPIRE', uk, ttl)
      placed = placed + g
    end
    res[1], res[2] = g, n + g
  end
  out[i] = res
end
return out
"""


@dataclass(frozen=True)
class Slot:
    """A sponsored post placed on a page."""

    position: int
    post_id: str
    campaign: Campaign


#: per campaign, (its slots that fit the page, its posts in order of preference)
Wanted = list[tuple[Campaign, list[int], list[str]]]


class Sponsor:
    """The running campaigns' configs of one process (at most ``live_max``, never an
    audience), reloaded when the campaigns counter moves (read with the user's keys: no round
    trip of its own), and the page's reservation."""

    def __init__(self, r: Any, live_max: int = CAMPAIGNS_LIVE_MAX) -> None:
        self.r = r
        self.live_max = live_max
        self._lock = threading.Lock()
        self._gen = -1
        self._campaigns: list[Campaign] = []
        self._exhausted: set[str] = set()
        self._script = r.register_script(RESERVE)

    def running(self, generation: int | None, now: float) -> list[Campaign]:
        """Campaigns in flight now, as of ``generation`` (0: none was ever created, no read)."""
        if generation is not None and generation != self._gen:
            self._load(generation)
        return [
            x
            for x in self._campaigns
            if x.start <= now < x.end and x.campaign_id not in self._exhausted
        ]

    @staticmethod
    def flags(posts: set[str], running: list[Campaign]) -> dict[str, dict[str, Any]]:
        """The sponsored fields of ``posts`` (a replayed page's), from running campaigns."""
        out: dict[str, dict[str, Any]] = {}
        for camp in running:
            for p in posts.intersection(camp.post_ids):
                out.setdefault(p, camp.flags())
        return out

    def _load(self, generation: int) -> None:
        """The live index's configs (ids whose end is to come, oldest created first)."""
        campaigns: list[Campaign] = []
        if generation > 0:
            ids = self.r.zrangebyscore(
                c.CAMPAIGNS_LIVE_KEY, f"({time.time()}", "+inf", start=0, num=self.live_max
            )
            raw = self.r.hmget(c.CAMPAIGNS_KEY, ids) if ids else []
            cfgs = [x for x in (c.decode_json(v) for v in raw) if isinstance(x, dict)]
            cfgs.sort(key=lambda x: (x["created_at"], x["campaign_id"]))
            campaigns = [Campaign.parse(x) for x in cfgs if not x.get("stopped_at")]
        with self._lock:
            self._gen, self._campaigns, self._exhausted = generation, campaigns, set()

    def plan(
        self,
        user_id: str,
        campaigns: list[Campaign],
        page_posts: list[str],
        hidden: set[str],
        muted: set[str],
        seen: set[str],
        servable: Callable[[str], bool],
        oos: frozenset[str] | set[str] = frozenset(),
    ) -> tuple[Wanted, list[tuple[Any, ...]]]:
        """(per campaign the user may see, the slots and posts it could fill on this page; the
        reach writes of the page's round trip). No Redis: the audience and the budget are
        checked by the reservation script. Never the user's own post, a hidden post, a muted
        author's, nor a post whose every boosted product is out of stock (``oos``)."""
        on_page = set(page_posts)
        wanted: Wanted = []
        reach: list[tuple[Any, ...]] = []
        for camp in campaigns:
            if camp.audience_id is None:
                key = c.campaign_key(camp.campaign_id, "reach")
                ttl = int(camp.end - time.time() + RETENTION_S)
                reach += [("SADD", key, user_id), ("EXPIRE", key, max(ttl, 1))]
            if camp.in_holdout(user_id):
                continue
            posts = [
                p
                for p in camp.post_ids
                if p not in on_page
                and p not in hidden
                and camp.authors.get(p) not in muted
                and camp.authors.get(p) != user_id
                and not (camp.post_products.get(p) and oos.issuperset(camp.post_products[p]))
                and servable(p)
            ]
            posts.sort(key=lambda p: p in seen)  # unseen first, else in the campaign's order
            slots = [s for s in camp.slots if s <= len(page_posts)]
            if posts and slots:
                # an earlier campaign may take up to PAGE_MAX of them: more are never placed
                wanted.append((camp, slots[:PAGE_MAX], posts[: 2 * PAGE_MAX]))
        return wanted, reach

    def reserve(self, user_id: str, wanted: Wanted) -> list[Slot]:
        """ONE script: the slots granted (audience, flight, stop, budget, pacing, cap per user,
        at most :data:`PAGE_MAX` on the page)."""
        if not wanted:
            return []
        keys: list[str] = []
        args: list[Any] = [user_id, PAGE_MAX]
        now = time.time()
        for camp, slots, posts in wanted:
            cid = camp.campaign_id
            aud = camp.audience_id
            keys += [
                c.campaign_key(cid, "n"),
                c.campaign_key(cid, "u"),
                c.campaign_key(cid, "stop"),
                c.audience_key(aud, "users") if aud else c.campaign_key(cid, "aud"),
            ]
            burst = max(1, math.ceil(camp.budget * BURST_SHARE))
            ttl = max(1, int(camp.end - now + RETENTION_S))
            args += [1 if aud else 0, camp.budget, camp.max_per_user, camp.start, camp.end]
            args += [burst, ttl, len(slots), *slots, len(posts), *posts]
        replies = self._script(keys=keys, args=args)
        out: list[Slot] = []
        for (camp, _, _), reply in zip(wanted, replies, strict=True):
            granted, delivered = int(reply[0]), int(reply[1])
            if delivered >= camp.budget:
                with self._lock:
                    self._exhausted.add(camp.campaign_id)
            for j in range(granted):
                out.append(Slot(int(reply[2 + 2 * j]), c.text(reply[3 + 2 * j]), camp))
        return out


def place(page: list[Any], slots: list[Slot], make: Callable[[Slot], Any]) -> list[Any]:
    """``page`` with each slot's post at its position (0-based), as long as the page was."""
    out = list(page)
    for s in sorted(slots, key=lambda x: x.position):
        out.insert(min(s.position, len(out)), make(s))
    return out[: max(len(page), len(slots))]


# --- the report --------------------------------------------------------------------------------
def report(
    r: Any,
    merchant_id: str,
    campaign_id: str,
    now: float,
    *,
    version: str | None = None,
    post_lookup: Callable[[str], tuple[str, list[str]] | None] | None = None,
    fold_max: int = REPORT_FOLD_MAX,
) -> dict[str, Any]:
    """Exposed vs holdout: users, purchases of the boosted products per user, the difference
    and the relative lift with 95% intervals, and the sample-ratio check. Folds at most
    ``fold_max`` new log entries first (the merchant fold, which also counts campaign
    purchases); ``behind``: entries left for ``feed merchants aggregate``."""
    from feed.experiments import stats

    cfg = get_config(r, merchant_id, campaign_id)
    cat = fm.Catalogue(r, version, post_lookup)
    folded = fm.fold(r, cat, max_entries=fold_max, max_s=REPORT_FOLD_S, wait_s=5.0)
    cid = cfg["campaign_id"]
    if cfg["audience_id"] == "all":
        population = [c.text(u) for u in r.smembers(c.campaign_key(cid, "reach"))]
    else:
        population = [
            c.text(u) for u in r.zrange(c.audience_key(cfg["audience_id"], "users"), 0, -1)
        ]
    buys = {c.text(k): int(v) for k, v in r.hgetall(c.campaign_key(cid, "buy")).items()}
    shown = {c.text(k): int(v) for k, v in r.hgetall(c.campaign_key(cid, "u")).items()}
    groups: dict[str, list[float]] = {"exposed": [], "holdout": []}
    for u in sorted(population):
        arm = "holdout" if in_holdout(cfg["salt"], cfg["holdout"], u) else "exposed"
        groups[arm].append(float(buys.get(u, 0)))
    out_groups = {}
    for arm, xs in groups.items():
        m, v = stats.mean_var(xs)
        out_groups[arm] = {
            "users": len(xs),
            "buyers": sum(1 for x in xs if x > 0),
            "purchases": int(sum(xs)),
            "purchases_per_user": m,
        }
    (mc, vc), (mt, vt) = stats.mean_var(groups["holdout"]), stats.mean_var(groups["exposed"])
    nc, nt = len(groups["holdout"]), len(groups["exposed"])
    diff = stats.welch(groups["holdout"], groups["exposed"])
    h = float(cfg["holdout"])
    ratio = stats.srm(
        {"exposed": nt, "holdout": nc}, {"exposed": (1 - h) * 100, "holdout": h * 100}
    )
    return {
        **public_campaign(r, cfg, now),
        "population": "reached users" if cfg["audience_id"] == "all" else "audience",
        "groups": out_groups,
        "users_shown": len(shown),
        "diff": diff["diff"],
        "diff_ci": diff["diff_ci"],
        "p_value": diff["p_value"],
        "lift": (mt / mc - 1) if mc else None,
        "lift_ci": stats.lift_ci(mc, vc, nc, mt, vt, nt),
        "srm": ratio,
        "folded_entries": folded.entries,
        "behind": folded.behind,
    }
