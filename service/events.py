"""Write routes: events and new posts. Each accepted event is appended to the durable event log
and reflected in the user's real-time state in the same pipeline, so the next page sees it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from feed import contract as c
from service.api import check_id, request_id, store
from service.errors import bad_request

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


def parse_ts(raw: Any, where: str) -> float:
    """Unix seconds from a number or an ISO-8601 string; now when absent."""
    if raw is None:
        return time.time()
    if isinstance(raw, bool):
        raise bad_request(f"{where}.ts must be ISO-8601 or unix seconds")
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise bad_request(f"{where}.ts {raw[:40]!r} is not ISO-8601") from None
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
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
        raise bad_request(f"{where}.type {str(kind)[:30]!r} is not one of "
                          f"{', '.join(EVENT_FIELDS)}", "unknown_event_type")
    for f in ("user_id", *EVENT_FIELDS[kind]):
        if f not in ev:
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


def _apply(pipe: Any, ev: dict[str, Any], neighbours: bytes | None, version: str | None,
           cfg: dict[str, Any]) -> None:
    """Queue the real-time state changes of one event on ``pipe``."""
    u, kind, ts = ev["user_id"], ev["type"], ev["ts"]
    k = c.user_key
    if kind in ("impression", "click"):
        pipe.zadd(k(u, c.USER_SEEN), {ev["post_id"]: ts})
    elif kind == "like":
        pipe.zadd(k(u, c.USER_LIKES), {ev["post_id"]: ts})
        if neighbours and version:
            _add_neighbours(pipe, u, ev["post_id"], neighbours, version, cfg)
    elif kind == "unlike":
        pipe.zrem(k(u, c.USER_LIKES), ev["post_id"])
    elif kind == "purchase":
        pipe.sadd(k(u, c.USER_PURCHASES), ev["product_id"])
    elif kind == "follow":
        pipe.sadd(k(u, c.USER_FOLLOWS), ev["author_id"])
        pipe.srem(k(u, c.USER_UNFOLLOWS), ev["author_id"])
    elif kind == "unfollow":
        pipe.srem(k(u, c.USER_FOLLOWS), ev["author_id"])
        pipe.sadd(k(u, c.USER_UNFOLLOWS), ev["author_id"])
    elif kind == "hide_post":
        pipe.sadd(k(u, c.USER_HIDDEN), ev["post_id"])
    elif kind == "see_fewer_author":
        pipe.sadd(k(u, c.USER_MUTED), ev["author_id"])


def _add_neighbours(pipe: Any, user: str, post: str, blob: bytes, version: str,
                    cfg: dict[str, Any]) -> None:
    table = store().table(version)
    if table is None:
        return
    idx, scores, _ = c.decode_candidates(blob)
    n = cfg["RT_NEIGHBOURS"]
    pairs = {table.post_ids[i]: float(s) for i, s in zip(idx[:n].tolist(), scores[:n].tolist(),
                                                         strict=True)}
    if not pairs:
        return
    rt, why = c.user_key(user, c.USER_RT), c.user_key(user, c.USER_RT_REASON)
    pipe.zadd(rt, pairs)
    pipe.hset(why, mapping={p: f"similar_to:{post}" for p in pairs})
    pipe.zremrangebyrank(rt, 0, -cfg["RT_MAX"] - 1)


@bp.post("/v1/events")
def post_events() -> Any:
    body = json_body()
    events = body.get("events")
    cfg = current_app.config
    if not isinstance(events, list) or not events:
        raise bad_request("'events' must be a non-empty list")
    if len(events) > cfg["MAX_EVENTS_PER_REQUEST"]:
        raise bad_request(f"at most {cfg['MAX_EVENTS_PER_REQUEST']} events per request")
    parsed = [validate_event(ev, i) for i, ev in enumerate(events)]
    s = store()
    version = s.live_version()
    likes = [ev for ev in parsed if ev["type"] == "like"]
    blobs: list[bytes | None] = []
    if likes and version:
        pipe = s.r.pipeline(transaction=False)
        for ev in likes:
            pipe.get(c.neighbours_key(version, ev["post_id"]))
        blobs = pipe.execute()
    nb = {id(ev): b for ev, b in zip(likes, blobs, strict=False)}
    pipe = s.r.pipeline(transaction=False)
    for ev in parsed:
        fields = {k: str(v) for k, v in ev.items()}
        pipe.xadd(c.EVENTS_KEY, fields, maxlen=cfg["EVENT_LOG_MAXLEN"], approximate=True)
        _apply(pipe, ev, nb.get(id(ev)), version, cfg)
    pipe.execute()
    return jsonify({"accepted": len(parsed), "request_id": request_id()}), 202


@bp.post("/v1/posts")
def create_post() -> Any:
    body = json_body()
    pid = check_id(body.get("post_id") if isinstance(body.get("post_id"), str) else "", "post_id")
    author = check_id(body.get("author_id") if isinstance(body.get("author_id"), str) else "",
                      "author_id")
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
    doc = {"post_id": pid, "author_id": author, "created_at": iso, "text": text, "title": title,
           "tags": tags, "product_ids": products}
    s = store()
    category = ""
    if products:
        _, prods = s.documents([], products[:1])
        category = (prods.get(products[0]) or {}).get("category", "")
    if not s.r.set(c.post_doc_key(pid), c.encode_json(doc), nx=True):
        raise bad_request(f"post {pid!r} already exists", "duplicate_post")
    pipe = s.r.pipeline(transaction=False)
    pipe.hset(c.FRESH_META_KEY, pid, c.encode_json(
        {"author_id": author, "product_ids": products, "category": category,
         "created_at": created}))
    pipe.zadd(c.FRESH_KEY, {pid: created})
    pipe.xadd(c.EVENTS_KEY, {"type": "post", "post_id": pid, "user_id": author,
                             "ts": str(created)},
              maxlen=current_app.config["EVENT_LOG_MAXLEN"], approximate=True)
    pipe.execute()
    return jsonify({"post_id": pid}), 201
