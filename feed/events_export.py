"""Close the loop: the service's event log merged into a dataset, incrementally and exactly once.

``feed events export OUT_DIR --data DIR`` reads the durable event stream
(:data:`feed.contract.EVENTS_KEY`) and the posts created through ``POST /v1/posts``, merges
them into a dataset and writes it to ``OUT_DIR`` in the dataset format (DATA_FORMAT.md), with
``export.json``, the manifest that records the last stream id the directory holds (its
checkpoint). Exporting is incremental:

* the first export into ``OUT_DIR`` starts from ``DIR`` (and from ``DIR``'s own checkpoint
  when ``DIR`` is itself an export, else from the start of the log);
* every later export into the same ``OUT_DIR`` starts from ``OUT_DIR`` and its checkpoint and
  merges only the entries after it: run it again with no new events and it adds nothing; after
  more events it adds exactly those (``--data`` may then be left out).

Exactly once. The export reads a consistent snapshot (the newest stream id and the log's entry
counter, in one transaction), merges the entries up to it, writes every file and the manifest
into ``OUT_DIR.export-tmp`` and swaps that directory in (two renames; an interrupted swap is
finished or undone by the next export), and only then advances the Redis checkpoint
(:data:`feed.contract.EVENTS_EXPORTED_KEY`, never backwards). A crash before the swap leaves
``OUT_DIR`` as it was; a crash after it leaves the Redis checkpoint behind the manifest, which
the next export reconciles (the manifest is the truth about what the directory holds). No
entry is merged twice into one directory. The Redis checkpoint tells the service which entries
its cap may trim (``service.writes.trim_log``: exported ones only, below the hard cap).

What each event becomes:

* ``like``/``unlike`` and ``favorite``/``unfavorite`` (收藏): ``likes``, replayed in log order.
  A like is weight 1; a favourite is a strong like, weight :data:`FAVORITE_WEIGHT` (2) whether
  or not the post is also liked; an unfavourite leaves a weight-1 like when the post is still
  liked (a row of weight >= 2 from an earlier export counts as liked);
* ``follow``/``unfollow``: ``follows`` (set semantics, log order);
* ``purchase``, ``click``, ``impression``: one row each; ``add_to_cart`` is a ``click`` on its
  ``post_id`` (the format has no cart; one without a post is skipped and counted);
* ``share``: one ``shares`` row (``receiver_id``, ``channel``);
* ``hide_post``/``see_fewer_author``: a ``hides`` row (``post_id`` or ``author_id``), once per
  user and target;
* ``post`` (``POST /v1/posts``): the post's row from its document (a post already in the
  dataset is kept);
* ``post_update`` (``text``, ``title``, ``tags`` and ``product_ids`` ``|``-joined, ``hidden``
  "1"/"0"): the post's row updated; a post whose last ``hidden`` is "1", or a ``post_delete``,
  leaves ``posts`` with every row that names it (a purchase keeps its row and loses the
  attribution), counted in the summary (``removed``);
* ``product_upsert`` (``title``, ``category``, ``price``, ``in_stock``, ``merchant_id``): the
  ``products`` row inserted or updated.

Events that name a post the merged dataset does not know are skipped and counted (the loader
would reject them). The written directory is validated with :func:`feed.data.load` before the
swap.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feed import contract as c
from feed.data import SCHEMA, Dataset, load
from feed.redisclient import is_cluster

logger = logging.getLogger(__name__)

BATCH = 10_000  # stream entries / documents read per round trip
MANIFEST = "export.json"  # the export's manifest in the output directory
FAVORITE_WEIGHT = 2.0  # a favourite's like weight (a like is 1)
ZERO_ID = "0-0"  # the checkpoint of "nothing exported"
#: Tables written every time (the rest only when they have rows).
ALWAYS = ("posts", "products", "likes", "purchases", "follows", "clicks", "impressions")
#: Tables whose rows name a post: a removed post's rows leave them.
POST_TABLES = ("likes", "clicks", "impressions", "shares", "hides")


class ExportError(RuntimeError):
    """The export was refused (e.g. it would overwrite the input dataset)."""


@dataclass(frozen=True)
class Checkpoint:
    """A position in the event log: the last stream id exported and the log's entry counter
    (:data:`feed.contract.EVENTS_SEQ_KEY`) at that entry."""

    id: str = ZERO_ID
    seq: int = 0

    def key(self) -> tuple[int, int]:
        ms, _, sq = self.id.partition("-")
        return int(ms), int(sq or 0)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "seq": self.seq}


@dataclass
class ExportResult:
    """What an export wrote and what it left out."""

    out_dir: Path
    counts: dict[str, int]  # rows per written table
    added: dict[str, int] = field(default_factory=dict)  # rows added (or removed) per table
    skipped: dict[str, int] = field(default_factory=dict)  # events left out, by cause
    removed: dict[str, int] = field(default_factory=dict)  # rows of hidden/deleted posts
    events: int = 0  # log entries merged by this export
    start: Checkpoint = field(default_factory=Checkpoint)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    warnings: list[str] = field(default_factory=list)


# --- the checkpoint ------------------------------------------------------------------------------
def _after(entry_id: str) -> str:
    """The smallest stream id after ``entry_id`` (works on Redis < 6.2, which lacks ``(``)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def redis_checkpoint(r: Any) -> Checkpoint | None:
    """The checkpoint recorded in Redis (None when nothing was ever exported)."""
    raw = {c.text(k): c.text(v) for k, v in (r.hgetall(c.EVENTS_EXPORTED_KEY) or {}).items()}
    if not raw.get("id"):
        return None
    return Checkpoint(raw["id"], int(raw.get("seq") or 0))


# Advance the checkpoint hash only forwards (KEYS: hash; ARGV: id, seq, at, out).
_ADVANCE = """
local cur = redis.call('HGET', KEYS[1], 'id')
if cur then
  local cm, cs = string.match(cur, '^(%d+)-(%d+)$')
  local nm, ns = string.match(ARGV[1], '^(%d+)-(%d+)$')
  cm, cs, nm, ns = tonumber(cm), tonumber(cs), tonumber(nm), tonumber(ns)
  if nm < cm or (nm == cm and ns <= cs) then return 0 end
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'seq', ARGV[2], 'at', ARGV[3], 'out', ARGV[4])
return 1
"""


def advance_checkpoint(r: Any, cp: Checkpoint, out: str) -> bool:
    """Record ``cp`` in Redis unless the recorded one is at or after it (atomic); True when
    it moved."""
    if cp.id == ZERO_ID:
        return False
    return bool(r.eval(_ADVANCE, 1, c.EVENTS_EXPORTED_KEY, cp.id, cp.seq, time.time(), out))


def snapshot(r: Any) -> Checkpoint:
    """The newest entry of the log and the entry counter, read in one transaction (the
    service's ``XADD``s and their ``INCRBY`` share one), so ``seq`` counts exactly the entries
    up to ``id``."""
    pipe = r.pipeline(transaction=True)
    pipe.xrevrange(c.EVENTS_KEY, count=1)
    pipe.get(c.EVENTS_SEQ_KEY)
    last, seq = pipe.execute()
    return Checkpoint(c.text(last[0][0]) if last else ZERO_ID, int(seq or 0))


def backlog(r: Any) -> int:
    """Entries logged after the Redis checkpoint (every entry when nothing was exported)."""
    cp = redis_checkpoint(r)
    if cp is None:
        return int(r.xlen(c.EVENTS_KEY))
    return max(int(r.get(c.EVENTS_SEQ_KEY) or 0) - cp.seq, 0)


# --- reading Redis -----------------------------------------------------------------------------
def read_events(
    r: Any, start: Checkpoint | None = None, end: Checkpoint | None = None, batch: int = BATCH
) -> Iterator[dict[str, str]]:
    """The entries of the event log after ``start`` up to ``end`` (both ids; the whole log
    by default), oldest first, as dicts of strings."""
    lo = _after(start.id) if start is not None and start.id != ZERO_ID else "-"
    hi = end.id if end is not None else "+"
    while True:
        chunk = r.xrange(c.EVENTS_KEY, min=lo, max=hi, count=batch)
        for _id, fields in chunk:
            yield {c.text(k): c.text(v) for k, v in fields.items()}
        if len(chunk) < batch:
            return
        lo = _after(c.text(chunk[-1][0]))


def oldest_id(r: Any) -> str | None:
    first = r.xrange(c.EVENTS_KEY, count=1)
    return c.text(first[0][0]) if first else None


def created_posts(r: Any, batch: int = BATCH) -> list[dict[str, Any]]:
    """Documents of the posts created through the API, oldest first."""
    ids = [c.text(p) for p in r.zrange(c.FRESH_KEY, 0, -1)]
    docs: list[dict[str, Any]] = []
    for lo in range(0, len(ids), batch):
        keys = [c.post_doc_key(p) for p in ids[lo : lo + batch]]
        raw = r.mget_nonatomic(keys) if is_cluster(r) else r.mget(keys)
        docs.extend(d for d in map(c.decode_json, raw) if isinstance(d, dict))
    return docs


# --- merging -----------------------------------------------------------------------------------
def _seconds(iso: Any) -> float:
    if iso is None or iso == "":
        return float("nan")
    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float(iso)


def _append(base: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``base`` with ``rows`` (dicts of its columns) appended."""
    if not rows:
        return base.reset_index(drop=True)
    extra = pd.DataFrame(rows, columns=list(base.columns))
    if base.empty:
        return extra
    return pd.concat([base, extra], ignore_index=True)


def _new_posts(ds: Dataset, docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Created posts not in the dataset, as rows of the posts table."""
    known = set(ds.posts["post_id"])
    return [
        {
            "post_id": d["post_id"],
            "author_id": d.get("author_id", ""),
            "created_at": _seconds(d.get("created_at")),
            "text": d.get("text", "") or "",
            "product_ids": tuple(d.get("product_ids") or ()),
            "title": d.get("title", "") or "",
            "tags": tuple(d.get("tags") or ()),
        }
        for d in docs
        if d.get("post_id") and d["post_id"] not in known
    ]


def _toggle(
    base: pd.DataFrame,
    cols: tuple[str, str],
    on: list[dict[str, Any]],
    undone: set[tuple[str, str]],
) -> tuple[pd.DataFrame, int]:
    """Base rows minus undone pairs, plus the event rows of pairs not already there."""
    pairs = list(zip(base[cols[0]], base[cols[1]], strict=True))
    kept = base[[p not in undone for p in pairs]]
    have = set(zip(kept[cols[0]], kept[cols[1]], strict=True))
    out = _append(kept, [row for row in on if (row[cols[0]], row[cols[1]]) not in have])
    return out, len(out) - len(base)


def _replay_pairs(
    events: list[dict[str, str]],
    do: str,
    undo: str,
    make: Any,
) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
    """Replay do/undo events in order: the rows still "on" at the end, and the undone pairs."""
    on: dict[tuple[str, str], dict[str, Any]] = {}
    undone: set[tuple[str, str]] = set()
    for ev in events:
        if ev["type"] not in (do, undo):
            continue
        row = make(ev)
        key = tuple(row.values())[:2]
        if ev["type"] == do:
            on[key] = row
        else:
            on.pop(key, None)
            undone.add(key)
    return list(on.values()), undone


def _skip(skipped: dict[str, int], cause: str, n: int = 1) -> None:
    if n:
        skipped[cause] = skipped.get(cause, 0) + n


def _f(ev: dict[str, str], key: str = "ts") -> float:
    try:
        return float(ev.get(key) or "nan")
    except ValueError:
        return float("nan")


def _split(v: str) -> tuple[str, ...]:
    return tuple(x for x in v.split("|") if x)


def _posts_and_products(
    ds: Dataset, evs: list[dict[str, str]], docs: Iterable[dict[str, Any]]
) -> tuple[pd.DataFrame, pd.DataFrame, int, set[str], dict[str, int]]:
    """(posts, products, posts added, posts removed, rows changed by kind) after the created
    posts, the ``post_update``/``post_delete`` and ``product_upsert`` events."""
    new_posts = _new_posts(ds, docs)
    posts = _append(ds.posts, new_posts)
    rows = {p: i for i, p in enumerate(posts["post_id"])}
    posts = posts.copy()
    gone: set[str] = set()
    changed = {"post_update": 0, "product_upsert": 0}
    products = ds.products.copy()
    prow = {p: i for i, p in enumerate(products["product_id"])}
    new_products: dict[str, dict[str, Any]] = {}
    for ev in evs:
        kind = ev.get("type")
        if kind == "post_delete" and ev.get("post_id") in rows:
            gone.add(ev["post_id"])
        elif kind == "post_update" and ev.get("post_id") in rows:
            pid = ev["post_id"]
            i = rows[pid]
            for col in ("text", "title"):
                if col in ev:
                    posts.at[i, col] = ev[col]
            for col in ("tags", "product_ids"):
                if col in ev:
                    posts.at[i, col] = _split(ev[col])
            if ev.get("hidden") == "1":
                gone.add(pid)
            elif ev.get("hidden") == "0" and pid in gone and not _deleted(evs, pid):
                gone.discard(pid)
            changed["post_update"] += 1
        elif kind == "product_upsert" and ev.get("product_id"):
            row = _product_row(ev)
            if ev["product_id"] in prow:
                i = prow[ev["product_id"]]
                for col, v in row.items():
                    if col in ev or col == "product_id":
                        products.at[i, col] = v
            else:
                new_products[ev["product_id"]] = {
                    **new_products.get(ev["product_id"], row),
                    **{col: v for col, v in row.items() if col in ev or col == "product_id"},
                }
            changed["product_upsert"] += 1
    if new_products:
        full = [{**_product_row({}), **row} for row in new_products.values()]
        products = _append(products, full)
    posts = posts[~posts["post_id"].isin(gone)].reset_index(drop=True)
    return posts, products, len(new_posts), gone, changed


def _deleted(evs: list[dict[str, str]], pid: str) -> bool:
    return any(ev.get("type") == "post_delete" and ev.get("post_id") == pid for ev in evs)


def _product_row(ev: dict[str, str]) -> dict[str, Any]:
    price = _f(ev, "price")
    stock = str(ev.get("in_stock", "1")).lower() not in ("0", "false", "no")
    return {
        "product_id": ev.get("product_id", ""),
        "title": ev.get("title", ""),
        "category": ev.get("category", ""),
        "brand": ev.get("brand", ""),
        "price": price,
        "in_stock": stock,
        "merchant_id": ev.get("merchant_id", ""),
    }


def _likes(
    base: pd.DataFrame, evs: list[dict[str, str]], known: set[str], skipped: dict[str, int]
) -> pd.DataFrame:
    """Likes and favourites replayed in log order onto ``base`` (see the module's doc)."""
    kinds = ("like", "unlike", "favorite", "unfavorite")
    pair_evs = [ev for ev in evs if ev["type"] in kinds]
    ok = [ev for ev in pair_evs if ev.get("post_id") in known]
    _skip(skipped, "like_unknown_post", len(pair_evs) - len(ok))
    if not ok:
        return base.reset_index(drop=True)
    pairs = list(zip(base["user_id"], base["post_id"], strict=True))
    weight = dict(zip(pairs, base["weight"], strict=True))
    state: dict[tuple[str, str], list[Any]] = {}  # pair -> [liked, favourite, ts]
    for ev in ok:
        pair = (ev["user_id"], ev["post_id"])
        if pair not in state:
            w = weight.get(pair)
            state[pair] = [w is not None, w is not None and w >= FAVORITE_WEIGHT, None]
        st = state[pair]
        kind = ev["type"]
        if kind in ("like", "favorite"):
            st[0 if kind == "like" else 1] = True
            st[2] = _f(ev)
        elif kind == "unlike":
            st[0] = False
        else:
            st[1] = False
    keep = [p not in state for p in pairs]
    kept = base[keep]
    rows = []
    old_ts = dict(zip(pairs, base["ts"], strict=True))
    for pair, (liked, fav, ts) in state.items():
        if not (liked or fav):
            continue
        w = weight.get(pair)
        like_w = w if w is not None and w < FAVORITE_WEIGHT else 1.0
        rows.append(
            {
                "user_id": pair[0],
                "post_id": pair[1],
                "ts": ts if ts is not None else old_ts.get(pair, float("nan")),
                "weight": FAVORITE_WEIGHT if fav else like_w,
            }
        )
    return _append(kept, rows)


def _rows(
    evs: list[dict[str, str]], kinds: tuple[str, ...], posts: set[str], skipped: dict[str, int]
) -> list[dict[str, Any]]:
    """One clicks/impressions row per event of ``kinds`` on a known post."""
    rows = []
    for ev in evs:
        if ev["type"] not in kinds:
            continue
        post = ev.get("post_id", "")
        if not post:
            _skip(skipped, f"{ev['type']}_without_post")
        elif post not in posts:
            _skip(skipped, f"{ev['type']}_unknown_post")
        else:
            rows.append({"user_id": ev["user_id"], "post_id": post, "ts": _f(ev)})
    return rows


def _purchases(evs: list[dict[str, str]], posts: set[str]) -> list[dict[str, Any]]:
    """One row per purchase; an unknown post loses the attribution, the row stays."""
    return [
        {
            "user_id": ev["user_id"],
            "product_id": ev["product_id"],
            "ts": _f(ev),
            "post_id": ev.get("post_id", "") if ev.get("post_id", "") in posts else "",
            "quantity": 1.0,
        }
        for ev in evs
        if ev["type"] == "purchase"
    ]


def _shares(
    evs: list[dict[str, str]], posts: set[str], skipped: dict[str, int]
) -> list[dict[str, Any]]:
    rows = []
    for ev in evs:
        if ev["type"] != "share":
            continue
        if ev.get("post_id") not in posts:
            _skip(skipped, "share_unknown_post")
            continue
        rows.append(
            {
                "user_id": ev["user_id"],
                "post_id": ev["post_id"],
                "receiver_id": ev.get("receiver_id", ""),
                "ts": _f(ev),
                "channel": ev.get("channel", ""),
            }
        )
    return rows


def _hides(
    base: pd.DataFrame, evs: list[dict[str, str]], posts: set[str], skipped: dict[str, int]
) -> pd.DataFrame:
    """A row per new (user, post) or (user, author) hide; hides of unknown posts skipped."""
    have = set(zip(base["user_id"], base["post_id"], base["author_id"], strict=True))
    rows = []
    for ev in evs:
        if ev["type"] == "hide_post":
            if ev.get("post_id") not in posts:
                _skip(skipped, "hide_post_unknown_post")
                continue
            key = (ev["user_id"], ev["post_id"], "")
        elif ev["type"] == "see_fewer_author":
            key = (ev["user_id"], "", ev.get("author_id", ""))
        else:
            continue
        if key not in have:
            have.add(key)
            row: dict[str, Any] = dict(zip(("user_id", "post_id", "author_id"), key, strict=True))
            rows.append({**row, "ts": _f(ev)})
    return _append(base, rows)


def merge(
    ds: Dataset,
    events: Iterable[dict[str, str]],
    docs: Iterable[dict[str, Any]],
    removed: dict[str, int] | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, int], dict[str, int]]:
    """The dataset's tables with the events and created posts merged in (see the module doc).

    Returns
    -------
    tables : table name -> frame with the :data:`feed.data.SCHEMA` columns
    added : rows added per table (negative when unlikes, unfollows or removals took more)
    skipped : events left out, by cause
    ``removed`` (when given) receives the rows of hidden or deleted posts taken out, by table.
    """
    evs = [ev for ev in events if ev.get("type")]
    posts, products, _, gone, _changed = _posts_and_products(ds, evs, docs)
    known = set(posts["post_id"])
    skipped: dict[str, int] = {}
    removed = {} if removed is None else removed
    base = {name: getattr(ds, name) for name in SCHEMA if name not in ("posts", "products")}
    if gone:
        removed["posts"] = len(gone & set(ds.posts["post_id"])) + len(
            gone - set(ds.posts["post_id"])
        )
        for name in POST_TABLES:
            t = base[name]
            out = t[~t["post_id"].isin(gone)].reset_index(drop=True)
            if n := len(t) - len(out):
                removed[name] = n
            base[name] = out
        pu = base["purchases"].copy()
        lost = pu["post_id"].isin(gone)
        if lost.any():
            pu.loc[lost, "post_id"] = ""
            removed["purchase_attributions"] = int(lost.sum())
        base["purchases"] = pu
    likes = _likes(base["likes"], evs, known, skipped)
    follows_on, unfollowed = _replay_pairs(
        evs,
        "follow",
        "unfollow",
        lambda ev: {"follower_id": ev["user_id"], "followee_id": ev["author_id"], "ts": _f(ev)},
    )
    follows, _ = _toggle(base["follows"], ("follower_id", "followee_id"), follows_on, unfollowed)
    tables: dict[str, pd.DataFrame] = {
        "posts": posts,
        "products": products,
        "likes": likes,
        "follows": follows,
        "purchases": _append(base["purchases"], _purchases(evs, known)),
        "clicks": _append(base["clicks"], _rows(evs, ("click", "add_to_cart"), known, skipped)),
        "impressions": _append(base["impressions"], _rows(evs, ("impression",), known, skipped)),
        "shares": _append(base["shares"], _shares(evs, known, skipped)),
        "hides": _hides(base["hides"], evs, known, skipped),
        "groups": base["groups"],
        "group_members": base["group_members"],
    }
    added = {name: len(t) - len(getattr(ds, name)) for name, t in tables.items()}
    return tables, added, skipped


# --- writing -----------------------------------------------------------------------------------
def _iso(ts: Any) -> str:
    if ts is None or ts != ts:
        return ""
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(kind: str) -> Any:
    """The writer of one SCHEMA kind: a value -> its text in the dataset format."""
    if kind == "ts":
        return _iso
    if kind == "list":
        return lambda v: (
            "|".join(v) if isinstance(v, tuple | list) else ("" if v is None else str(v))
        )
    if kind == "bool":
        return lambda v: "true" if bool(v) else "false"
    if kind == "float":
        return lambda v: "" if v is None or v != v else repr(float(v))
    return lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def write_tables(out_dir: Path, tables: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Write every table as ``<name>.csv`` (UTF-8, header, RFC 4180 quoting; the optional
    tables only when they have rows); rows per file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, frame in tables.items():
        if name not in ALWAYS and frame.empty:
            continue
        text = pd.DataFrame(
            {
                col: [_cell(kind)(v) for v in frame[col].tolist()]
                for col, kind in SCHEMA[name].items()
            },
            dtype=object,
        )
        text.to_csv(out_dir / f"{name}.csv", index=False, lineterminator="\n")
        counts[name] = len(frame)
    return counts


# --- the output directory ----------------------------------------------------------------------
def _tmp(dst: Path) -> Path:
    return dst.with_name(dst.name + ".export-tmp")


def _old(dst: Path) -> Path:
    return dst.with_name(dst.name + ".export-old")


def read_manifest(d: Path) -> dict[str, Any] | None:
    """A directory's export manifest (None when it has none)."""
    try:
        out = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) and isinstance(out.get("checkpoint"), dict) else None


def _manifest_checkpoint(m: dict[str, Any]) -> Checkpoint:
    cp = m["checkpoint"]
    return Checkpoint(str(cp.get("id") or ZERO_ID), int(cp.get("seq") or 0))


def recover(dst: Path) -> str | None:
    """Finish or undo a swap an earlier export was interrupted in; what was done."""
    tmp, old = _tmp(dst), _old(dst)
    if not dst.exists() and tmp.exists() and read_manifest(tmp) is not None:
        tmp.rename(dst)  # killed between the two renames: the new directory was complete
        shutil.rmtree(old, ignore_errors=True)
        return "finished an interrupted export"
    if not dst.exists() and old.exists():
        old.rename(dst)  # killed before the new one was complete: the old one stands
        shutil.rmtree(tmp, ignore_errors=True)
        return "restored the directory an interrupted export was replacing"
    shutil.rmtree(tmp, ignore_errors=True)  # an incomplete write: never swapped in
    shutil.rmtree(old, ignore_errors=True)
    return None


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap(dst: Path, tmp: Path, hook: Callable[[str], None] | None) -> None:
    """Put ``tmp`` (complete, with its manifest) in ``dst``'s place: two renames; an
    interruption between them is finished by :func:`recover`."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if hook:
        hook("written")
    old = _old(dst)
    if dst.exists():
        dst.rename(old)
        if hook:
            hook("moved_aside")
    tmp.rename(dst)
    _fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)


def export(
    r: Any,
    data_dir: str | Path | None,
    out_dir: str | Path,
    *,
    force: bool = False,
    hook: Callable[[str], None] | None = None,
) -> ExportResult:
    """Merge the events logged after ``out_dir``'s checkpoint into ``out_dir`` (the first
    time: into the dataset at ``data_dir``); write it atomically, then advance the Redis
    checkpoint.

    Parameters
    ----------
    r : redis client of the service
    data_dir : the dataset of the first export (the one the live version was trained on);
        optional once ``out_dir`` holds an export
    out_dir : where the merged dataset goes (created; must not be ``data_dir``)
    force : start ``out_dir`` over from ``data_dir`` (a dataset or export already there is
        replaced)
    hook : called with a stage name (``written``, ``moved_aside``, ``swapped``): for tests
        that simulate a crash there

    Raises
    ------
    ExportError
        When ``out_dir`` is ``data_dir``, holds a dataset that no export wrote (without
        ``force``), or holds no export and ``data_dir`` is not given.
    feed.data.DatasetError
        When the base dataset is not valid.
    """
    dst = Path(out_dir)
    src = Path(data_dir) if data_dir is not None else None
    if src is not None and dst.exists() and dst.resolve() == src.resolve():
        raise ExportError(f"{dst} is the input dataset; export into another directory")
    warnings: list[str] = []
    if note := recover(dst):
        warnings.append(f"{dst}: {note}")
    manifest = None if force else read_manifest(dst)
    if manifest is not None:
        base_dir, start = dst, _manifest_checkpoint(manifest)
        # a crash after the swap left Redis behind the directory: the directory is the truth
        advance_checkpoint(r, start, str(dst))
        if src is not None and manifest.get("base") not in (None, str(src.resolve())):
            warnings.append(
                f"{dst} continues the export started from {manifest.get('base')}; "
                f"--data {src} was not used (pass force to start over from it)"
            )
    else:
        if src is None:
            raise ExportError(f"{dst} holds no export yet; give the dataset to start from (--data)")
        if not force and any((dst / f"posts.{ext}").exists() for ext in ("csv", "parquet")):
            raise ExportError(
                f"{dst} already holds a dataset that no export wrote; pass force to overwrite it"
            )
        base_dir = src
        own = read_manifest(src)
        start = _manifest_checkpoint(own) if own is not None else Checkpoint()
    ds = load(base_dir)
    end = snapshot(r)
    result = ExportResult(dst, {}, start=start, checkpoint=start, warnings=warnings)
    recorded = redis_checkpoint(r)
    first = oldest_id(r)
    if (
        first is not None
        and start.id != ZERO_ID
        and Checkpoint(first).key() > Checkpoint(_after(start.id)).key()
        and recorded is not None
        and recorded.key() > start.key()
    ):
        warnings.append(
            f"the log now starts at {first}, after this dataset's checkpoint {start.id}: events "
            f"up to {recorded.id} were exported elsewhere and may have been trimmed"
        )
    lost = int(r.get(c.EVENTS_LOST_KEY) or 0)
    if lost:
        warnings.append(f"{lost:,} events were trimmed by the hard cap before any export")
    if end.key() <= start.key() and manifest is not None:
        result.counts = {n: v for n, v in ds.counts.items()}
        logger.info("export %s: no new events after %s", dst, start.id)
        return result  # nothing new: the directory already holds every entry
    evs = list(read_events(r, start, end))
    removed: dict[str, int] = {}
    tables, added, skipped = merge(ds, evs, created_posts(r), removed)
    tmp = _tmp(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    counts = write_tables(tmp, tables)
    load(tmp)  # the written dataset must load: fail here, not in the next training
    checkpoint = end if end.key() > start.key() else start
    meta = {
        "checkpoint": checkpoint.as_dict(),
        "base": str((src or dst).resolve()) if manifest is None else manifest.get("base"),
        "exports": [
            *(manifest or {}).get("exports", []),
            {
                "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "from": start.id,
                "to": checkpoint.id,
                "events": len(evs),
                "added": added,
                "removed": removed,
                "skipped": skipped,
            },
        ][-100:],
    }
    (tmp / MANIFEST).write_text(json.dumps(meta, indent=1, sort_keys=True))
    _swap(dst, tmp, hook)
    if hook:
        hook("swapped")
    advance_checkpoint(r, checkpoint, str(dst))
    logger.info("exported %s: %d events, added %s, skipped %s", dst, len(evs), added, skipped)
    result.counts, result.added, result.skipped, result.removed = counts, added, skipped, removed
    result.events, result.checkpoint = len(evs), checkpoint
    return result
