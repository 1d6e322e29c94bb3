"""Merchant attribution: the event log folded, incrementally and exactly, into per-merchant,
per-day aggregates, so a merchant's report is a read of day buckets, never a scan of the log.

Shared by ``feed merchants aggregate`` (run it from cron) and the service, which folds the new
entries before answering ``GET /v1/merchants/<m>/report``. Light on purpose (Redis commands
through the client it is given, :mod:`feed.contract`, nothing heavier): the service imports it.

The fold (:func:`fold`) reads the log (:data:`feed.contract.EVENTS_KEY`) after its checkpoint
(:data:`feed.contract.MERCHANT_AGG_CHECKPOINT_KEY`) in batches; for each batch it reads the
attribution state it needs, computes every change in process, and writes the aggregates, the
state and the new checkpoint in ONE ``MULTI``/``EXEC`` under ``WATCH`` of the checkpoint (every
key shares the ``{feed}`` hash tag: one slot, so this holds on a cluster too). A fold that dies
leaves nothing half applied; two folds at once cannot both apply a batch (a lock makes the second
wait, ``WATCH`` refuses it if the lock expired). So each entry is counted exactly once.

Rules (README.md, "Merchants"):

* **time** is the time the service logged the entry (its stream id), not the client's ``ts``:
  it cannot be backdated and it only moves forward, so windows and day buckets are the same on
  every replay;
* **merchant** of a product: the live catalogue (``PUT /v1/products``, ``merchant_id``), else
  the live version's product document; a post's products and author: the live version's post
  table, else the API-created post's metadata. Events of posts or products of no merchant are
  not counted;
* **post of a purchase** (and of an ``add_to_cart``): its ``post_id``, else the buyer's last
  exposure (``impression`` or ``click``) to a post linking that product within
  :data:`WINDOW_S` (7 days); none: counted with ``post_id`` null;
* **share chain**: the last ``share`` of that post to the buyer within the window (sharer ->
  buyer); its depth is 1, plus the depth at which the sharer had received the post by a share
  (within the window) when it shared, capped at :data:`MAX_DEPTH`;
* **channel**: ``group`` when the buyer started or joined (``group_start``/``group_join``) a
  group-buy of that product within the window, else ``share`` when a share of the post reached
  the buyer within the window, else ``feed``. Impressions, clicks, likes and shares take
  ``share`` or ``feed`` the same way;
* **revenue**: the purchase entry's ``price`` (times ``quantity``) when the log has one, else
  the product's price; kept in integer cents (exact sums);
* **group-buys** per product: launches (``group_start``), groups that filled up (the join that
  brings a group to its ``size``; groups started more than the window earlier are not
  followed), members (initiators and joins).

Bounded state: the aggregates are one hash per merchant and day, expiring
:data:`RETENTION_DAYS` after their day; the attribution state (exposures, shares received,
group memberships and groups) is one hash per kind and day, never read beyond the window,
deleted once the log's time passes it, and expiring :data:`STATE_TTL_S` after its last write as
a backstop (a fold must run at least that often for replays to stay exact).

Replay: :func:`wipe` then :func:`fold` from the start of the log gives the same aggregates, as
long as the catalogue (the live version and the catalogue overlay) is the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import LockError, WatchError

from feed import contract as c

WINDOW_S = 7 * 86_400  # last-touch window: exposures, shares and group memberships
MAX_DEPTH = 5  # share chains deeper than this count as this deep
RETENTION_DAYS = 90  # aggregates expire this many days after their day
STATE_TTL_S = WINDOW_S + 30 * 86_400  # backstop expiry of the attribution state
BATCH = 2_000  # log entries a transaction
LOCK_S = 120  # the fold lock's lease, renewed after every batch
#: a sponsored campaign's config and counters outlive its end (or stop) this long
#: (service/campaigns.py); its purchase counts written by the fold expire with them
CAMPAIGN_KEEP_S = 7 * 86_400
DAY_S = 86_400

#: The counts of a report row, in order.
METRICS = (
    "impressions",
    "clicks",
    "likes",
    "shares",
    "add_to_carts",
    "purchases",
    "revenue",
)
GROUP_METRICS = ("group_launches", "group_succeeded", "group_members")
DIMENSIONS = ("post", "author", "channel", "product")
CHANNELS = ("feed", "share", "group")

# The state kinds (one hash per kind and day): exposure user|product -> post|t; share
# received user|post -> sharer|depth|t; group membership user|product -> group|t; group
# group_id -> merchant|product|size|members.
EXPOSURE, SHARED, MEMBER, GROUP = "x", "s", "gm", "g"
_POST_METRIC = {
    "impression": "impressions",
    "click": "clicks",
    "like": "likes",
    "favorite": "likes",
    "share": "shares",
}


# --- keys --------------------------------------------------------------------------------------
def agg_key(merchant_id: str, day: int) -> str:
    """A merchant's aggregates of one day (days since 1970-01-01, UTC)."""
    return f"{c.MERCHANT_AGG_PREFIX}d:{merchant_id}:{day}"


def state_key(kind: str, day: int) -> str:
    return f"{c.MERCHANT_AGG_PREFIX}{kind}:{day}"


def day_of(t: float) -> int:
    return int(t // DAY_S)


def iso_day(day: int) -> str:
    """``YYYY-MM-DD`` of a day number.

    >>> iso_day(0)
    '1970-01-01'
    """
    return datetime.fromtimestamp(day * DAY_S, UTC).strftime("%Y-%m-%d")


def parse_day(value: str) -> int:
    """Days since 1970-01-01 of ``YYYY-MM-DD``; ValueError otherwise.

    >>> parse_day("1970-01-02")
    1
    """
    dt = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    return int(dt.timestamp() // DAY_S)


def entry_time(entry_id: str) -> float:
    """Unix seconds of a stream id (its millisecond part).

    >>> entry_time("1700000000123-4")
    1700000000.123
    """
    return int(entry_id.partition("-")[0]) / 1000


def _after(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


# --- the catalogue ---------------------------------------------------------------------------
@dataclass
class Catalogue:
    """Who sells what: post -> (author, product ids); product -> (merchant, price). Looked up
    in bulk per batch (:meth:`load`), cached for the fold."""

    r: Any
    version: str | None
    #: post id -> (author, product ids) from the version's post table (the service passes
    #: its cached table); None: read ``{feed:<v>}:posts`` once
    post_lookup: Callable[[str], tuple[str, list[str]] | None] | None = None
    posts: dict[str, tuple[str, list[str]] | None] = field(default_factory=dict)
    products: dict[str, tuple[str, float | None] | None] = field(default_factory=dict)

    def _table(self) -> Callable[[str], tuple[str, list[str]] | None]:
        if self.post_lookup is None:
            raw = (
                c.decode_json(self.r.get(c.version_key(self.version, "posts")))
                if (self.version)
                else None
            )
            table: dict[str, tuple[str, list[str]]] = {}
            if raw:
                table = {
                    p: (a, list(ps))
                    for p, a, ps in zip(
                        raw["post_id"], raw["author_id"], raw["product_ids"], strict=True
                    )
                }
            self.post_lookup = table.get
        return self.post_lookup

    def load(self, post_ids: Iterable[str], product_ids: Iterable[str]) -> None:
        lookup = self._table()
        fresh = [p for p in dict.fromkeys(post_ids) if p not in self.posts]
        missing = []
        for p in fresh:
            hit = lookup(p)
            if hit is None:
                missing.append(p)
            self.posts[p] = hit
        if missing:
            for p, raw in zip(missing, self.r.hmget(c.FRESH_META_KEY, missing), strict=True):
                meta = c.decode_json(raw)
                if isinstance(meta, dict):
                    self.posts[p] = (
                        str(meta.get("author_id", "")),
                        list(meta.get("product_ids", [])),
                    )
        linked = [x for p in fresh for x in (self.posts[p] or ("", []))[1]]
        wanted = [x for x in dict.fromkeys([*product_ids, *linked]) if x not in self.products]
        if not wanted:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(c.CATALOGUE_KEY, wanted)
        for x in wanted:
            if self.version:
                pipe.get(c.product_doc_key(x, self.version))
        replies = pipe.execute()
        overlay, docs = replies[0], replies[1:] if self.version else [None] * len(wanted)
        for x, live, doc in zip(wanted, overlay, docs, strict=True):
            rec = {**(c.decode_json(doc) or {}), **(c.decode_json(live) or {})}
            merchant = rec.get("merchant_id")
            price = rec.get("price")
            ok = isinstance(price, int | float) and math.isfinite(price) and price >= 0
            known = (str(merchant), float(price) if ok else None)  # type: ignore[arg-type]
            self.products[x] = known if merchant else None

    def post(self, post_id: str) -> tuple[str, list[str]] | None:
        return self.posts.get(post_id)

    def product(self, product_id: str) -> tuple[str, float | None] | None:
        return self.products.get(product_id)


# --- the pure fold of one batch ------------------------------------------------------------------
@dataclass
class Batch:
    """One batch's changes: aggregate increments and state writes, computed in process."""

    incr: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    state: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)

    def add(self, merchant: str, day: int, dim: str, value: str, metric: str, n: int) -> None:
        fields = self.incr.setdefault((merchant, day), {})
        f = f"{dim}|{value}|{metric}"
        fields[f] = fields.get(f, 0) + n


class Folder:
    """Folds entries given the prior state (``prior``: (kind, day) -> {field: value}, read by
    the caller for the fields :meth:`needs` names) and this batch's own writes on top."""

    def __init__(
        self,
        catalogue: Catalogue,
        prior: Mapping[tuple[str, int], Mapping[str, str]],
        window_s: float = WINDOW_S,
    ) -> None:
        self.cat, self.prior, self.window = catalogue, prior, window_s
        self.out = Batch()

    # state --------------------------------------------------------------------------------
    def _get(self, kind: str, f: str, t: float) -> tuple[int, list[str]] | None:
        """The newest value of ``f`` within the window before ``t``: (its day, its parts)."""
        for day in range(day_of(t), day_of(t - self.window) - 1, -1):
            raw = self.out.state.get((kind, day), {}).get(f)
            if raw is None:
                raw = self.prior.get((kind, day), {}).get(f)
            if raw is not None:
                parts = raw.split("|")
                if kind == GROUP or float(parts[-1]) >= t - self.window:
                    return day, parts
                return None
        return None

    def _set(self, kind: str, day: int, f: str, value: str) -> None:
        self.out.state.setdefault((kind, day), {})[f] = value

    # counting ------------------------------------------------------------------------------
    def _count(
        self,
        t: float,
        merchant: str,
        post: str | None,
        author: str | None,
        channel: str,
        products: list[str],
        metric: str,
        n: int = 1,
        chain: str | None = None,
    ) -> None:
        day, add = day_of(t), self.out.add
        add(merchant, day, "post", post or "", metric, n)
        add(merchant, day, "author", author or "", metric, n)
        add(merchant, day, "channel", channel, metric, n)
        add(merchant, day, "all", "", metric, n)
        for p in products:
            add(merchant, day, "product", p, metric, n)
        if chain is not None:
            add(merchant, day, "chain", chain, metric, n)

    def _by_merchant(self, products: Iterable[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in dict.fromkeys(products):
            hit = self.cat.product(p)
            if hit is not None:
                out.setdefault(hit[0], []).append(p)
        return out

    def _received(self, user: str, post: str, t: float) -> tuple[str, int] | None:
        hit = self._get(SHARED, f"{user}|{post}", t)
        return None if hit is None else (hit[1][0], int(hit[1][1]))

    def entry(self, entry_id: str, ev: Mapping[str, str]) -> None:
        """Fold one log entry."""
        t, kind, user = entry_time(entry_id), ev.get("type", ""), ev.get("user_id", "")
        if not user:
            return
        post_id = ev.get("post_id") or None
        if kind in _POST_METRIC and post_id:
            self._post_event(t, kind, user, post_id, ev)
        elif kind in ("purchase", "add_to_cart") and ev.get("product_id"):
            self._purchase(t, kind, user, ev["product_id"], post_id, ev)
        elif kind in ("group_start", "group_join") and ev.get("group_id"):
            self._group(t, kind, user, ev)

    def _post_event(
        self, t: float, kind: str, user: str, post_id: str, ev: Mapping[str, str]
    ) -> None:
        known = self.cat.post(post_id)
        if known is None:
            return
        author, products = known
        received = self._received(user, post_id, t)
        channel = "share" if received else "feed"
        for merchant, mine in self._by_merchant(products).items():
            self._count(t, merchant, post_id, author, channel, mine, _POST_METRIC[kind])
        if kind in ("impression", "click"):
            for p in products:
                self._set(EXPOSURE, day_of(t), f"{user}|{p}", f"{post_id}|{t!r}")
        if kind == "share":
            receiver = ev.get("receiver_id")
            if receiver and receiver != user:
                depth = min((received[1] if received else 0) + 1, MAX_DEPTH)
                self._set(SHARED, day_of(t), f"{receiver}|{post_id}", f"{user}|{depth}|{t!r}")

    def _purchase(
        self,
        t: float,
        kind: str,
        user: str,
        product: str,
        post_id: str | None,
        ev: Mapping[str, str],
    ) -> None:
        hit = self.cat.product(product)
        if hit is None:
            return
        merchant, price = hit
        if post_id is None:
            exposure = self._get(EXPOSURE, f"{user}|{product}", t)
            post_id = exposure[1][0] if exposure else None
        known = self.cat.post(post_id) if post_id else None
        author = known[0] if known else None
        received = self._received(user, post_id, t) if post_id else None
        member = self._get(MEMBER, f"{user}|{product}", t)
        channel = "group" if member else "share" if received else "feed"
        chain = f"{received[0]}>{user}>{received[1]}" if received else None
        metric = "purchases" if kind == "purchase" else "add_to_carts"
        self._count(t, merchant, post_id, author, channel, [product], metric, chain=chain)
        if kind == "purchase":
            cents = _cents(ev, price)
            if cents:
                self._count(
                    t, merchant, post_id, author, channel, [product], "revenue", cents, chain=chain
                )

    def _group(self, t: float, kind: str, user: str, ev: Mapping[str, str]) -> None:
        group, product = ev["group_id"], ev.get("product_id", "")
        day = day_of(t)
        if kind == "group_start":
            hit = self.cat.product(product)
            if hit is None:
                return
            merchant = hit[0]
            size = _int(ev.get("size"), 2)
            self._set(GROUP, day, group, f"{merchant}|{product}|{size}|1")
            self._set(MEMBER, day, f"{user}|{product}", f"{group}|{t!r}")
            self.out.add(merchant, day, "product", product, "group_launches", 1)
            self.out.add(merchant, day, "product", product, "group_members", 1)
            self.out.add(merchant, day, "all", "", "group_launches", 1)
            self.out.add(merchant, day, "all", "", "group_members", 1)
            return
        found = self._get(GROUP, group, t)
        if found is None:
            return
        start, (merchant, product, wanted, members) = found[0], found[1]
        n = int(members) + 1
        self._set(GROUP, start, group, f"{merchant}|{product}|{wanted}|{n}")
        self._set(MEMBER, day, f"{user}|{product}", f"{group}|{t!r}")
        self.out.add(merchant, day, "product", product, "group_members", 1)
        self.out.add(merchant, day, "all", "", "group_members", 1)
        if n == int(wanted):
            self.out.add(merchant, day, "product", product, "group_succeeded", 1)
            self.out.add(merchant, day, "all", "", "group_succeeded", 1)


def _int(raw: Any, default: int) -> int:
    try:
        return int(float(raw))
    except (TypeError, ValueError):
        return default


def _cents(ev: Mapping[str, str], price: float | None) -> int:
    """Revenue of a purchase entry in cents: its ``price`` (times ``quantity``) when the log
    has them, else the product's price; 0 when neither is known."""
    try:
        own = float(ev["price"])
        if math.isfinite(own) and own >= 0:
            price = own
    except (KeyError, TypeError, ValueError):
        pass
    try:
        qty = float(ev.get("quantity", 1))
    except (TypeError, ValueError):
        qty = 1.0
    if price is None or not math.isfinite(qty) or qty <= 0:
        return 0
    return int(round(price * qty * 100))


def needs(
    entries: list[tuple[str, dict[str, str]]], cat: Catalogue, window_s: float
) -> dict[tuple[str, int], set[str]]:
    """The state fields a batch may read, per (kind, day): a superset, read in one pipeline."""
    out: dict[tuple[str, int], set[str]] = {}

    def want(kind: str, f: str, t: float) -> None:
        for day in range(day_of(t - window_s), day_of(t) + 1):
            out.setdefault((kind, day), set()).add(f)

    for entry_id, ev in entries:
        t, kind, user = entry_time(entry_id), ev.get("type", ""), ev.get("user_id", "")
        post, product = ev.get("post_id"), ev.get("product_id")
        if post:
            want(SHARED, f"{user}|{post}", t)
        if kind in ("purchase", "add_to_cart") and product:
            want(EXPOSURE, f"{user}|{product}", t)
            want(MEMBER, f"{user}|{product}", t)
        if kind == "group_join" and ev.get("group_id"):
            want(GROUP, ev["group_id"], t)
    return out


# --- running it against Redis ---------------------------------------------------------------
@dataclass
class FoldResult:
    entries: int = 0  # log entries folded by this call
    checkpoint: str = "0-0"
    gap: bool = False  # the log was trimmed past the checkpoint: entries were never folded
    #: entries logged after the checkpoint, left for a later fold (None: unknown, a checkpoint
    #: written before the fold counted its position)
    behind: int | None = None


def checkpoint(r: Any) -> dict[str, str]:
    return {
        c.text(k): c.text(v) for k, v in (r.hgetall(c.MERCHANT_AGG_CHECKPOINT_KEY) or {}).items()
    }


def _read_state(
    r: Any, wanted: Mapping[tuple[str, int], set[str]]
) -> dict[tuple[str, int], dict[str, str]]:
    keys = [(k, sorted(fs)) for k, fs in wanted.items() if fs]
    if not keys:
        return {}
    pipe = r.pipeline(transaction=False)
    for (kind, day), fs in keys:
        pipe.hmget(state_key(kind, day), fs)
    out: dict[tuple[str, int], dict[str, str]] = {}
    for ((kind, day), fs), vals in zip(keys, pipe.execute(), strict=True):
        out[(kind, day)] = {f: c.text(v) for f, v in zip(fs, vals, strict=True) if v is not None}
    return out


def _log_position(r: Any) -> tuple[int, int, str | None, str | None]:
    """(entries ever logged, entries in the log, its first id, its last id), read in one
    transaction: the service's ``XADD``s and their counter's ``INCRBY`` share one."""
    pipe = r.pipeline(transaction=True)
    pipe.get(c.EVENTS_SEQ_KEY)
    pipe.xlen(c.EVENTS_KEY)
    pipe.xrange(c.EVENTS_KEY, count=1)
    pipe.xrevrange(c.EVENTS_KEY, count=1)
    seq, n, first, last = pipe.execute()
    return (
        int(seq or 0),
        int(n),
        c.text(first[0][0]) if first else None,
        c.text(last[0][0]) if last else None,
    )


def campaign_purchases(
    r: Any, entries: Sequence[tuple[str, Mapping[str, str]]]
) -> dict[str, tuple[int, dict[str, int]]]:
    """Campaign id -> (when its counts expire, user -> purchases of its products): the
    purchases among ``entries`` logged during a campaign's flight (until its stop), for the
    campaigns of :data:`feed.contract.CAMPAIGNS_FOLD_KEY` (service/campaigns.py)."""
    bought = [(entry_time(i), ev) for i, ev in entries if ev.get("type") == "purchase"]
    if not bought:
        return {}
    first_ms = int(bought[0][0] * 1000)
    ids = r.zrangebyscore(c.CAMPAIGNS_FOLD_KEY, f"({first_ms}", "+inf", withscores=True)
    if not ids:
        return {}
    cfgs = r.hmget(c.CAMPAIGNS_KEY, [i for i, _ in ids])
    by_product: dict[str, list[tuple[str, float, float]]] = {}
    for (cid, until_ms), raw in zip(ids, cfgs, strict=True):
        cfg = c.decode_json(raw)
        if not isinstance(cfg, dict):
            continue
        for p in cfg.get("products") or ():
            by_product.setdefault(p, []).append((c.text(cid), float(cfg["start"]), until_ms / 1000))
    out: dict[str, tuple[int, dict[str, int]]] = {}
    for t, ev in bought:
        for cid, start, until in by_product.get(ev.get("product_id", ""), ()):
            if start <= t < until and ev.get("user_id"):
                expire = int(until + CAMPAIGN_KEEP_S) + 1
                counts = out.setdefault(cid, (expire, {}))[1]
                counts[ev["user_id"]] = counts.get(ev["user_id"], 0) + 1
    return out


def _apply(pipe: Any, batch: Batch, now: float) -> None:
    for (merchant, day), fields in batch.incr.items():
        key = agg_key(merchant, day)
        for f, n in fields.items():
            pipe.hincrby(key, f, n)
        pipe.expireat(key, (day + 1 + RETENTION_DAYS) * DAY_S)
    for (kind, day), values in batch.state.items():
        key = state_key(kind, day)
        pipe.hset(key, mapping=values)
        pipe.expire(key, int(STATE_TTL_S))


def fold_batch(
    r: Any, cat: Catalogue, batch: int = BATCH, window_s: float = WINDOW_S
) -> tuple[int, str]:
    """Fold the next ``batch`` entries after the checkpoint, atomically with its advance:
    (entries folded, the checkpoint after)."""
    with r.pipeline(transaction=True) as pipe:
        pipe.watch(c.MERCHANT_AGG_CHECKPOINT_KEY, c.CAMPAIGNS_FOLD_KEY)
        cp = {
            c.text(k): c.text(v)
            for k, v in (pipe.hgetall(c.MERCHANT_AGG_CHECKPOINT_KEY) or {}).items()
        }
        last = cp.get("id", "0-0")
        lo = "-" if last == "0-0" else _after(last)
        chunk = pipe.xrange(c.EVENTS_KEY, min=lo, max="+", count=batch)
        entries = [(c.text(i), {c.text(k): c.text(v) for k, v in f.items()}) for i, f in chunk]
        if not entries:
            pipe.unwatch()
            return 0, last
        cat.load(
            [ev["post_id"] for _, ev in entries if ev.get("post_id")],
            [ev["product_id"] for _, ev in entries if ev.get("product_id")],
        )
        prior = _read_state(r, needs(entries, cat, window_s))
        folder = Folder(cat, prior, window_s)
        for entry_id, ev in entries:
            folder.entry(entry_id, ev)
        buys = campaign_purchases(pipe, entries)
        new = entries[-1][0]
        frontier = entry_time(new)
        # the checkpoint's position in the log (entries ever logged up to it): ``behind``
        total, length, first_id, last_id = _log_position(r)
        seq: int | None = None
        if new == last_id:
            seq = total
        elif entries[0][0] == first_id:
            seq = total - length + len(entries)
        elif cp.get("seq"):
            seq = int(cp["seq"]) + len(entries)
        pipe.multi()
        _apply(pipe, folder.out, time.time())
        for cid, (expire, counts) in buys.items():
            key = c.campaign_key(cid, "buy")
            for u, n in counts.items():
                pipe.hincrby(key, u, n)
            pipe.expireat(key, expire)
        # campaigns whose purchases end before the checkpoint are done
        pipe.zremrangebyscore(c.CAMPAIGNS_FOLD_KEY, "-inf", int(frontier * 1000))
        mark = {"id": new, "at": repr(time.time())}
        if seq is not None:
            mark["seq"] = str(seq)
        else:
            pipe.hdel(c.MERCHANT_AGG_CHECKPOINT_KEY, "seq")
        pipe.hset(c.MERCHANT_AGG_CHECKPOINT_KEY, mapping=mark)
        # state older than the window is never read again: drop it (memory only)
        old = int(cp.get("state_from") or day_of(entry_time(entries[0][0]) - window_s))
        stop = day_of(frontier - window_s) - 1
        for day in range(old, stop):
            for kind in (EXPOSURE, SHARED, MEMBER, GROUP):
                pipe.delete(state_key(kind, day))
        pipe.hset(c.MERCHANT_AGG_CHECKPOINT_KEY, "state_from", str(max(old, stop)))
        pipe.execute()
        return len(entries), new


def fold(
    r: Any,
    cat: Catalogue,
    *,
    max_entries: int | None = None,
    max_s: float | None = None,
    batch: int = BATCH,
    window_s: float = WINDOW_S,
    wait_s: float = 10.0,
) -> FoldResult:
    """Fold every entry logged after the checkpoint (at most ``max_entries``, for at most
    about ``max_s`` seconds), under the aggregation lock (waits up to ``wait_s`` for another
    fold to finish; its lease is renewed after every batch, and a fold that lost it stops; a
    batch that lost a race with another fold is retried). ``behind``: what is left."""
    out = FoldResult(checkpoint=checkpoint(r).get("id", "0-0"))
    first = r.xrange(c.EVENTS_KEY, count=1)
    if first and out.checkpoint != "0-0":
        # entries between the checkpoint and the oldest one left were trimmed unfolded
        out.gap = _key(c.text(first[0][0])) > _key(_after(out.checkpoint))
    lock = r.lock(c.MERCHANT_AGG_LOCK_KEY, timeout=LOCK_S, blocking_timeout=wait_s)
    if not lock.acquire():
        out.behind = behind(r)
        return out
    deadline = None if max_s is None else time.monotonic() + max_s
    try:
        while max_entries is None or out.entries < max_entries:
            size = batch if max_entries is None else min(batch, max_entries - out.entries)
            try:
                n, cp = fold_batch(r, cat, size, window_s)
            except WatchError:
                continue
            out.entries += n
            out.checkpoint = cp
            if n < size or (deadline is not None and time.monotonic() >= deadline):
                break
            try:
                lock.reacquire()  # a long fold keeps its lease
            except LockError:
                break  # it expired and another fold took it: that one goes on
    finally:
        try:
            lock.release()
        except Exception:  # noqa: BLE001 - it expired; the next fold takes it
            pass
    out.behind = behind(r)
    return out


def behind(r: Any) -> int | None:
    """Entries logged after the fold's checkpoint (None: unknown, a checkpoint written before
    the fold recorded its position)."""
    cp = checkpoint(r)
    total, _, _, last_id = _log_position(r)
    if cp.get("seq"):
        return max(0, total - int(cp["seq"]))
    if last_id is None or cp.get("id") == last_id:
        return 0
    if not cp.get("id"):
        return int(r.xlen(c.EVENTS_KEY))
    return None


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def wipe(r: Any) -> int:
    """Delete every aggregate, the attribution state and the checkpoint (for a replay from the
    start of the log). The number of keys deleted."""
    n = 0
    for key in r.scan_iter(match=f"{c.MERCHANT_AGG_PREFIX}*", count=1000):
        n += int(r.delete(key))
    return n


# --- reading a report ----------------------------------------------------------------------------
def read_days(r: Any, merchant_id: str, first: int, last: int) -> dict[str, int]:
    """The merchant's aggregate fields summed over days ``first``..``last``."""
    pipe = r.pipeline(transaction=False)
    for day in range(first, last + 1):
        pipe.hgetall(agg_key(merchant_id, day))
    total: dict[str, int] = {}
    for fields in pipe.execute():
        for k, v in (fields or {}).items():
            f = c.text(k)
            total[f] = total.get(f, 0) + int(v)
    return total


_KEY_NAME = {
    "post": "post_id",
    "author": "author_id",
    "channel": "channel",
    "product": "product_id",
}


def _row(counts: Mapping[str, int], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {m: counts.get(m, 0) for m in METRICS}
    out["revenue"] = round(out["revenue"] / 100, 2)
    for m in extra:
        out[m] = counts.get(m, 0)
    return out


def report(fields: Mapping[str, int], by: str) -> dict[str, Any]:
    """Rows by ``by`` (post, author, channel or product), totals, share chains and group-buys,
    from :func:`read_days`' sums."""
    grouped: dict[str, dict[str, dict[str, int]]] = {}
    for f, n in fields.items():
        dim, value, metric = f.split("|")
        grouped.setdefault(dim, {}).setdefault(value, {})[metric] = n
    name = _KEY_NAME[by]
    extra = GROUP_METRICS if by == "product" else ()
    rows = [
        {name: value or None, **_row(counts, extra)}
        for value, counts in grouped.get(by, {}).items()
    ]
    if by == "product":
        for row in rows:
            launches = row["group_launches"]
            row["group_success_rate"] = (
                round(row["group_succeeded"] / launches, 4) if launches else None
            )
    rows.sort(key=lambda x: (-x["purchases"], -x["revenue"], -x["impressions"], str(x[name])))
    chains: list[dict[str, Any]] = []
    for value, counts in grouped.get("chain", {}).items():
        sharer, receiver, depth = value.split(">")
        chains.append(
            {
                "sharer_id": sharer,
                "receiver_id": receiver,
                "depth": int(depth),
                "purchases": counts.get("purchases", 0),
                "revenue": round(counts.get("revenue", 0) / 100, 2),
            }
        )
    chains.sort(key=lambda x: (-x["purchases"], x["sharer_id"], x["receiver_id"], x["depth"]))
    totals = _row(grouped.get("all", {}).get("", {}), GROUP_METRICS)
    launches = totals["group_launches"]
    totals["group_success_rate"] = (
        round(totals["group_succeeded"] / launches, 4) if launches else None
    )
    return {"rows": rows, "totals": totals, "share_chains": chains}
