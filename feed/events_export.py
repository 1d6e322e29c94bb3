"""Close the loop: the service's event log merged into a dataset, so the next training learns.

``feed events export OUT_DIR --data DIR`` reads the durable event stream
(:data:`feed.contract.EVENTS_KEY`) and the posts created through ``POST /v1/posts`` (the
documents of :data:`feed.contract.FRESH_KEY` entries), merges them with the dataset in ``DIR``
and writes the result to ``OUT_DIR`` as CSV files in the dataset format (DATA_FORMAT.md):

* ``posts``: the dataset's posts plus the created ones (a post already in the dataset is kept
  as it is there);
* ``likes``: the dataset's likes plus ``like`` events, minus every pair whose last event is an
  ``unlike`` (events are replayed in log order, so like, unlike, like leaves a like);
* ``follows``: likewise with ``follow``/``unfollow``;
* ``purchases``, ``clicks``, ``impressions``: the dataset's rows plus one row per event;
* ``products``: the dataset's, unchanged.

Events that name a post neither the dataset nor the created posts know are skipped and
counted (the loader would reject them). ``hide_post`` and ``see_fewer_author`` have no place in
the dataset format; they are counted as ``not_exported``. The written directory is validated
with :func:`feed.data.load` before this returns.

Exporting is meant against the dataset the live version was trained on: likes and follows are
sets, but purchases, clicks and impressions would be counted twice by a second export of the
same log into an already merged dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
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
NOT_EXPORTED = ("hide_post", "see_fewer_author")


class ExportError(RuntimeError):
    """The export was refused (e.g. it would overwrite the input dataset)."""


@dataclass
class ExportResult:
    """What an export wrote and what it left out."""

    out_dir: Path
    counts: dict[str, int]  # rows per written table
    added: dict[str, int] = field(default_factory=dict)  # rows added (or removed) per table
    skipped: dict[str, int] = field(default_factory=dict)  # events left out, by cause


# --- reading Redis -----------------------------------------------------------------------------
def _after(entry_id: str) -> str:
    """The smallest stream id after ``entry_id`` (works on Redis < 6.2, which lacks ``(``)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def read_events(r: Any, batch: int = BATCH) -> Iterator[dict[str, str]]:
    """Every entry of the event log, oldest first, as a dict of strings."""
    start = "-"
    while True:
        chunk = r.xrange(c.EVENTS_KEY, min=start, max="+", count=batch)
        for _id, fields in chunk:
            yield {c.text(k): c.text(v) for k, v in fields.items()}
        if len(chunk) < batch:
            return
        start = _after(c.text(chunk[-1][0]))


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


def _rows(
    events: list[dict[str, str]], kind: str, posts: set[str], skipped: dict[str, int]
) -> list[dict[str, Any]]:
    """One row per ``kind`` event (clicks, impressions, purchases); unknown posts skipped
    (a purchase keeps its row and loses the unknown attribution)."""
    rows = []
    for ev in events:
        if ev["type"] != kind:
            continue
        post = ev.get("post_id", "")
        if post and post not in posts:
            if kind != "purchase":
                skipped[f"{kind}_unknown_post"] = skipped.get(f"{kind}_unknown_post", 0) + 1
                continue
            post = ""
        if kind == "purchase":
            rows.append(
                {
                    "user_id": ev["user_id"],
                    "product_id": ev["product_id"],
                    "ts": float(ev["ts"]),
                    "post_id": post,
                    "quantity": 1.0,
                }
            )
        else:
            rows.append({"user_id": ev["user_id"], "post_id": post, "ts": float(ev["ts"])})
    return rows


def merge(
    ds: Dataset,
    events: Iterable[dict[str, str]],
    docs: Iterable[dict[str, Any]],
) -> tuple[dict[str, pd.DataFrame], dict[str, int], dict[str, int]]:
    """The dataset's tables with the events and created posts merged in (see the module doc).

    Returns
    -------
    tables : table name -> frame with the :data:`feed.data.SCHEMA` columns
    added : rows added per table (negative when unlikes/unfollows removed more)
    skipped : events left out, by cause
    """
    evs = list(events)
    new_posts = _new_posts(ds, docs)
    posts = _append(ds.posts, new_posts)
    known = set(posts["post_id"])
    skipped: dict[str, int] = {}
    likes_ev = [
        ev for ev in evs if ev["type"] not in ("like", "unlike") or ev.get("post_id") in known
    ]
    if n := sum(ev["type"] in ("like", "unlike") for ev in evs) - sum(
        ev["type"] in ("like", "unlike") for ev in likes_ev
    ):
        skipped["like_unknown_post"] = n
    likes_on, unliked = _replay_pairs(
        likes_ev,
        "like",
        "unlike",
        lambda ev: {
            "user_id": ev["user_id"],
            "post_id": ev["post_id"],
            "ts": float(ev["ts"]),
            "weight": 1.0,
        },
    )
    follows_on, unfollowed = _replay_pairs(
        evs,
        "follow",
        "unfollow",
        lambda ev: {
            "follower_id": ev["user_id"],
            "followee_id": ev["author_id"],
            "ts": float(ev["ts"]),
        },
    )
    likes, n_likes = _toggle(ds.likes, ("user_id", "post_id"), likes_on, unliked)
    follows, n_follows = _toggle(ds.follows, ("follower_id", "followee_id"), follows_on, unfollowed)
    tables = {"posts": posts, "products": ds.products, "likes": likes, "follows": follows}
    added = {"posts": len(new_posts), "likes": n_likes, "follows": n_follows}
    for kind, table in (
        ("purchase", "purchases"),
        ("click", "clicks"),
        ("impression", "impressions"),
    ):
        extra = _rows(evs, kind, known, skipped)
        tables[table] = _append(getattr(ds, table), extra)
        added[table] = len(extra)
    if n := sum(ev["type"] in NOT_EXPORTED for ev in evs):
        skipped["not_exported"] = n
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
    """Write every table as ``<name>.csv`` (UTF-8, header, RFC 4180 quoting); rows per file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, frame in tables.items():
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


def export(
    r: Any,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
) -> ExportResult:
    """Merge the event log and created posts into the dataset at ``data_dir``; write to
    ``out_dir``.

    Parameters
    ----------
    r : redis client of the service
    data_dir : the dataset the live version was trained on (any dataset directory)
    out_dir : where the merged dataset goes (created; must not be ``data_dir``)
    force : overwrite a dataset already in ``out_dir``

    Raises
    ------
    ExportError
        When ``out_dir`` is ``data_dir`` or already holds a dataset (without ``force``).
    feed.data.DatasetError
        When ``data_dir`` is not a valid dataset.
    """
    src, dst = Path(data_dir), Path(out_dir)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ExportError(f"{dst} is the input dataset; export into another directory")
    if not force and any((dst / f"posts.{ext}").exists() for ext in ("csv", "parquet")):
        raise ExportError(f"{dst} already holds a dataset; pass force to overwrite it")
    ds = load(src)
    tables, added, skipped = merge(ds, read_events(r), created_posts(r))
    counts = write_tables(dst, tables)
    load(dst)  # the written dataset must load: fail here, not in the next training
    logger.info("exported %s: added %s, skipped %s", dst, added, skipped)
    return ExportResult(dst, counts, added, skipped)
