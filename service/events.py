"""Write routes: events and new posts. Each accepted event is appended to the durable event log
and reflected in the user's real-time state in the same pipeline, so the next page sees it."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from feed import contract as c
from service import observability
from service.api import check_id, request_id, store
from service.errors import bad_request, unavailable
from service.store import FreshPosts, VersionTable

bp = Blueprint("events", __name__)

EVENT_FIELDS: dict[str, tuple[str, ...]] = {  # required fields besides type and user_id
    "impression": ("post_id",),
    "click": ("post_id",),
    "like": ("post_id",),
    "unlike": ("post_id",),
    "purchase": ("product_id",),
    "follow": ("author_id",),
    "unfollow": ("author_id",),
    "hide_post": ("post_id",),
    "see_fewer_author": ("author_id",),
}
ID_FIELDS = ("user_id", "post_id", "product_id", "author_id")


MAX_TS = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second datetime can print


def parse_ts(raw: Any, where: str) -> float:
    """Unix seconds from a number or an ISO-8601 string; now when absent."""
    if raw is None:
        return time.time()
    if isinstance(raw, bool):
        raise bad_request(f"{where}.ts must be ISO-8601 or unix seconds")
    if isinstance(raw, int | float):
        if not math.isfinite(raw) or not 0 <= raw <= MAX_TS:
            raise bad_request(f"{where}.ts must be unix seconds between 0 and {MAX_TS:.0f}")
        return float(raw)
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            ts = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            raise bad_request(f"{where}.ts {raw[:40]!r} is not ISO-8601") from None
        if not 0 <= ts <= MAX_TS:
            raise bad_request(f"{where}.ts {raw[:40]!r} is out of range")
        return ts
    raise bad_request(f"{where}.ts must be ISO-8601 or unix seconds")


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", "invalid_json")
    return body


def validate_event(ev: Any, i: int) -> dict[str, Any]:
    where = f"events[{i}]"
    if not isinstance(ev, dict):
        raise bad_request(f"{where} must be an object")
    kind = ev.get("type")
    if kind not in EVENT_FIELDS:
        raise bad_request(
            f"{where}.type {str(kind)[:30]!r} is not one of {', '.join(EVENT_FIELDS)}",
            "unknown_event_type",
        )
    for f in ("user_id", *EVENT_FIELDS[kind]):
        if ev.get(f) is None:
            raise bad_request(f"{where}: a {kind} event needs {f}")
    out: dict[str, Any] = {"type": kind}
    for f in ID_FIELDS:
        if f in ev and ev[f] is not None:
            if not c.valid_id(ev[f]):
                raise bad_request(f"{where}.{f} is not a valid id")
            out[f] = ev[f]
    rid = ev.get("request_id")
    if rid is not None:
        if not isinstance(rid, str) or len(rid) > 64:
            raise bad_request(f"{where}.request_id must be a string of at most 64 characters")
        out["request_id"] = rid
    out["ts"] = parse_ts(ev.get("ts"), where)
    return out


@dataclass
class _Context:
    """What applying a batch of events needs besides the events: configuration, the serving
    version's post table, the neighbour lists of liked/unliked posts, the API-created posts."""

    cfg: Mapping[str, Any]
    table: VersionTable | None
    neighbours: dict[str, bytes | None]
    fresh: FreshPosts


def _neighbour_members(ctx: _Context, post: str) -> dict[str, float]:
    """Real-time members (``similar_to:<post>``) of a liked post's top neighbours -> strength."""
    blob = ctx.neighbours.get(post)
    if not blob or ctx.table is None:
        return {}
    idx, scores, _ = c.decode_candidates(blob)
    n = ctx.cfg["RT_NEIGHBOURS"]
    return {
        c.rt_member(ctx.table.post_ids[i], f"similar_to:{post}"): s
        for i, s in zip(idx[:n].tolist(), scores[:n].tolist(), strict=True)
        if 0 <= i < len(ctx.table.post_ids)
    }


def _author_members(ctx: _Context, author: str) -> dict[str, float]:
    """Real-time members (``followed_author``) of an author's newest posts -> strength: those
    created through the API first, then the version's, newest first."""
    n = ctx.cfg["RT_FOLLOW_POSTS"]
    posts = ctx.fresh.posts_by(author, n)
    if ctx.table is not None:
        posts += [ctx.table.post_ids[i] for i in ctx.table.posts_by(author, n)]
    posts = list(dict.fromkeys(posts))[:n]
    return {
        c.rt_member(pid, "followed_author"): 1.0 - 0.5 * r / max(len(posts), 1)
        for r, pid in enumerate(posts)
    }


def _add_realtime(
    pipe: Any, user: str, members: Mapping[str, float], ts: float, cfg: Mapping[str, Any]
) -> None:
    if members:
        rt = c.user_key(user, c.USER_RT)
        pipe.zadd(rt, {m: c.rt_score(ts, s) for m, s in members.items()})
        pipe.zremrangebyrank(rt, 0, -cfg["RT_MAX"] - 1)


def _apply(pipe: Any, ev: dict[str, Any], ctx: _Context) -> None:
    """Queue the real-time state changes of one event on ``pipe``.

    ``like`` adds the post's neighbours to the real-time candidates and ``unlike`` removes
    exactly those; ``follow`` adds the author's newest posts and ``unfollow`` removes them;
    ``hide_post`` and ``see_fewer_author`` feed the read path's filters.
    """
    u, kind, ts = ev["user_id"], ev["type"], ev["ts"]
    k = c.user_key
    if kind in ("impression", "click"):
        pipe.zadd(k(u, c.USER_SEEN), {ev["post_id"]: ts})
    elif kind == "like":
        pipe.zadd(k(u, c.USER_LIKES), {ev["post_id"]: ts})
        pipe.zremrangebyrank(k(u, c.USER_LIKES), 0, -ctx.cfg["LIKES_MAX"] - 1)
        _add_realtime(pipe, u, _neighbour_members(ctx, ev["post_id"]), ts, ctx.cfg)
    elif kind == "unlike":
        pipe.zrem(k(u, c.USER_LIKES), ev["post_id"])
        if members := _neighbour_members(ctx, ev["post_id"]):
            pipe.zrem(k(u, c.USER_RT), *members)
    elif kind == "purchase":
        pipe.sadd(k(u, c.USER_PURCHASES), ev["product_id"])
    elif kind == "follow":
        pipe.sadd(k(u, c.USER_FOLLOWS), ev["author_id"])
        pipe.srem(k(u, c.USER_UNFOLLOWS), ev["author_id"])
        _add_realtime(pipe, u, _author_members(ctx, ev["author_id"]), ts, ctx.cfg)
    elif kind == "unfollow":
        pipe.srem(k(u, c.USER_FOLLOWS), ev["author_id"])
        pipe.sadd(k(u, c.USER_UNFOLLOWS), ev["author_id"])
        if members := _author_members(ctx, ev["author_id"]):
            pipe.zrem(k(u, c.USER_RT), *members)
    elif kind == "hide_post":
        pipe.sadd(k(u, c.USER_HIDDEN), ev["post_id"])
    elif kind == "see_fewer_author":
        pipe.sadd(k(u, c.USER_MUTED), ev["author_id"])


def _user_version(user_id: str) -> str | None:
    """The version that serves this user: their experiment arm's, else the live one, so
    real-time neighbours come from the model the user is being shown."""
    s = store()
    exp = s.experiment()
    arm = exp.arm_for(user_id) if exp is not None else None
    if arm is not None and s.table(arm.version) is not None:
        return str(arm.version)
    return s.live_version()


def _context(events: list[dict[str, Any]], version: str | None) -> _Context:
    """Read what these events (all served by ``version``) need: neighbour lists of
    liked/unliked posts (one pipelined read), the version's table and the API-created posts
    (in-process caches)."""
    s = store()
    cfg = current_app.config
    table = s.table(version) if version else None
    posts = list(dict.fromkeys(ev["post_id"] for ev in events if ev["type"] in ("like", "unlike")))
    neighbours: dict[str, bytes | None] = {}
    if posts and table is not None:
        pipe = s.r.pipeline(transaction=False)
        for post in posts:
            pipe.get(c.neighbours_key(table.version, post))
        neighbours = dict(zip(posts, pipe.execute(), strict=True))
    fresh = FreshPosts.build({})
    if any(ev["type"] in ("follow", "unfollow") for ev in events):
        fresh = s.global_state()["fresh"]
    return _Context(cfg, table, neighbours, fresh)


@bp.post("/v1/events")
def post_events() -> Any:
    """Accept a batch of events: each is appended to the durable event log and applied to the
    user's real-time state in the same pipeline, so the next page reflects it. 202."""
    if not store().available():
        raise unavailable("the event store (Redis) is unavailable; nothing was stored")
    body = json_body()
    events = body.get("events")
    cfg = current_app.config
    if not isinstance(events, list) or not events:
        raise bad_request("'events' must be a non-empty list")
    if len(events) > cfg["MAX_EVENTS_PER_REQUEST"]:
        raise bad_request(f"at most {cfg['MAX_EVENTS_PER_REQUEST']} events per request")
    parsed = [validate_event(ev, i) for i, ev in enumerate(events)]
    version_of = {u: _user_version(u) for u in dict.fromkeys(ev["user_id"] for ev in parsed)}
    contexts = {
        v: _context([ev for ev in parsed if version_of[ev["user_id"]] == v], v)
        for v in dict.fromkeys(version_of.values())
    }
    pipe = store().r.pipeline(transaction=False)
    for ev in parsed:
        fields = {k: str(v) for k, v in ev.items()}
        pipe.xadd(c.EVENTS_KEY, fields, maxlen=cfg["EVENT_LOG_MAXLEN"], approximate=True)
        _apply(pipe, ev, contexts[version_of[ev["user_id"]]])
    pipe.execute()
    observability.record_events(ev["type"] for ev in parsed)
    return jsonify({"accepted": len(parsed), "request_id": request_id()}), 202


def _text_field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    return value if isinstance(value, str) else ""


@bp.post("/v1/posts")
def create_post() -> Any:
    """Store a post created since training: its document, and its entry in the fresh posts
    (with author, products and their categories), so it enters followers' feeds and the fresh
    lists at once. 201; 400 for an invalid or duplicate post."""
    body = json_body()
    pid = check_id(_text_field(body, "post_id"), "post_id")
    author = check_id(_text_field(body, "author_id"), "author_id")
    text = body.get("text", "")
    title = body.get("title", "")
    if not isinstance(text, str) or not isinstance(title, str) or len(text) > 20_000:
        raise bad_request("text and title must be strings (text at most 20000 characters)")
    products = body.get("product_ids", [])
    tags = body.get("tags", [])
    for name, lst in (("product_ids", products), ("tags", tags)):
        if not isinstance(lst, list) or len(lst) > 50 or not all(isinstance(x, str) for x in lst):
            raise bad_request(f"{name} must be a list of at most 50 strings")
    for p in products:
        check_id(p, "product_id")
    created = parse_ts(body.get("created_at"), "post")
    iso = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {
        "post_id": pid,
        "author_id": author,
        "created_at": iso,
        "text": text,
        "title": title,
        "tags": tags,
        "product_ids": products,
    }
    s = store()
    _, prods = s.documents([], products)
    cats = [(prods.get(p) or {}).get("category") or "" for p in products]
    if not s.r.set(c.post_doc_key(pid), c.encode_json(doc), nx=True):
        raise bad_request(f"post {pid!r} already exists", "duplicate_post")
    pipe = s.r.pipeline(transaction=False)
    pipe.set(c.card_key(pid), c.encode_json(c.card(doc, prods)))
    pipe.hset(
        c.FRESH_META_KEY,
        pid,
        c.encode_json(
            {
                "author_id": author,
                "product_ids": products,
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
        maxlen=current_app.config["EVENT_LOG_MAXLEN"],
        approximate=True,
    )
    pipe.execute()
    s.forget_global()  # this process sees the post at once; others within GLOBAL_CACHE_S
    return jsonify({"post_id": pid}), 201
