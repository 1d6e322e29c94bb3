"""Public read routes: the feed, posts, similar posts, health."""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from feed import contract as c
from service import cursor
from service.errors import ApiError, bad_request, not_found, unavailable
from service.ranking import Candidate, diverse_page, filtered, gather
from service.store import Store, VersionTable

bp = Blueprint("api", __name__)


def store() -> Store:
    return current_app.extensions["feed_store"]  # type: ignore[no-any-return]


def check_id(value: str, what: str) -> str:
    if not c.valid_id(value):
        raise bad_request(f"{what} {value[:40]!r} is not a valid id (1-128 letters, digits, "
                          "'_-.:@' or CJK)", f"invalid_{what}")
    return value


def limit_arg(default: int | None = None) -> int:
    cfg = current_app.config
    raw = request.args.get("limit", default or cfg["DEFAULT_LIMIT"])
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise bad_request(f"limit must be an integer, got {str(raw)[:20]!r}") from None
    if n < 1:
        raise bad_request("limit must be at least 1")
    return min(n, cfg["MAX_LIMIT"])


def request_id() -> str:
    rid = getattr(g, "request_id", None)
    if rid is None:
        rid = g.request_id = uuid.uuid4().hex
    return rid  # type: ignore[no-any-return]


def _table(version: str) -> VersionTable:
    t = store().table(version)
    if t is None:
        raise unavailable(f"model version {version!r} has no keys in Redis")
    return t


def resolve_version(user_id: str, pinned: str | None) -> dict[str, Any]:
    """The version for this request: the cursor's, else the live one."""
    s = store()
    if pinned and s.table(pinned) is not None:
        return {"model_version": pinned, "experiment": None, "arm": None}
    live = s.live_version()
    if live is None:
        raise unavailable("no live model version: run `feed publish ARTIFACT --activate`")
    return {"model_version": live, "experiment": None, "arm": None}


def _item(cand: Candidate, doc: dict[str, Any], products: dict[str, dict[str, Any]],
          oos: set[str]) -> dict[str, Any]:
    prods = []
    for pid in doc.get("product_ids", cand.product_ids):
        p = products.get(pid)
        if p is not None:
            prods.append({**p, "in_stock": bool(p.get("in_stock", True)) and pid not in oos})
    return {"post_id": cand.post_id, "author_id": doc.get("author_id", cand.author_id),
            "text": doc.get("text", ""), "title": doc.get("title", ""),
            "created_at": doc.get("created_at"), "tags": doc.get("tags", []),
            "score": round(float(cand.score), 4), "reason": cand.reason, "products": prods}


def hydrate(page: list[Candidate], oos: set[str]) -> list[dict[str, Any]]:
    """Documents for a page in one MGET; posts whose document is gone are dropped."""
    product_ids = list(dict.fromkeys(p for cand in page for p in cand.product_ids))
    posts, products = store().documents([cand.post_id for cand in page], product_ids)
    return [_item(cand, posts[cand.post_id], products, oos) for cand in page
            if cand.post_id in posts]


@bp.get("/v1/feed/<user_id>")
def get_feed(user_id: str) -> Any:
    check_id(user_id, "user_id")
    cfg = current_app.config
    limit = limit_arg()
    now = time.time()
    started, page_no, pinned = now, 0, None
    if request.args.get("cursor"):
        cur = cursor.decode(cfg["CURSOR_SECRET_BYTES"], request.args["cursor"], user_id,
                            cfg["CURSOR_TTL_S"])
        started, page_no, pinned = float(cur["t"]), int(cur["p"]), cur["v"]
    route = resolve_version(user_id, pinned)
    version = route["model_version"]
    s = store()
    table = _table(version)
    state = s.user_state(user_id, version, now)
    glob = s.global_state()
    cands = filtered(user_id, gather(state, table, glob, cfg), state, table, glob, set(), cfg, now)
    page = diverse_page(cands, limit, cfg)
    items = hydrate(page, glob["oos"])
    rid = request_id()
    s.record_served(user_id, [it["post_id"] for it in items], now, route, rid)
    next_cursor = cursor.encode(cfg["CURSOR_SECRET_BYTES"], user_id, version, page_no + 1,
                                started) if items else None
    return jsonify({"user_id": user_id, **route, "request_id": rid, "degraded": False,
                    "next_cursor": next_cursor, "items": items})


@bp.get("/v1/posts/<post_id>")
def get_post(post_id: str) -> Any:
    check_id(post_id, "post_id")
    glob = store().global_state()
    posts, _ = store().documents([post_id], [])
    doc = posts.get(post_id)
    if doc is None:
        raise not_found(f"unknown post {post_id!r}")
    _, products = store().documents([], doc.get("product_ids", []))
    cand = Candidate(post_id, 0.0, "", doc.get("author_id", ""), "", None,
                     doc.get("product_ids", []))
    item = _item(cand, doc, products, glob["oos"])
    item.pop("score")
    item.pop("reason")
    return jsonify(item)


@bp.get("/v1/posts/<post_id>/similar")
def similar(post_id: str) -> Any:
    check_id(post_id, "post_id")
    limit = limit_arg(10)
    version = resolve_version("", None)["model_version"]
    table = _table(version)
    i = table.index.get(post_id)
    if i is None:
        posts, _ = store().documents([post_id], [])
        if post_id not in posts:
            raise not_found(f"unknown post {post_id!r}")
        return jsonify({"post_id": post_id, "model_version": version, "items": []})
    idx, scores, _ = c.decode_candidates(store().r.get(c.neighbours_key(version, post_id)))
    page = [Candidate(table.post_ids[j], float(sc), f"similar_to:{post_id}", table.authors[j],
                      table.categories[j], table.created[j], table.product_ids[j])
            for j, sc in zip(idx.tolist()[:limit], scores.tolist(), strict=False)]
    items = hydrate(page, store().global_state()["oos"])
    return jsonify({"post_id": post_id, "model_version": version, "items": items})


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Any:
    s = store()
    try:
        s.r.ping()
        live = s.r.get(c.LIVE_KEY)
    except Exception as e:  # noqa: BLE001 - any Redis failure means not ready
        raise ApiError(503, "not_ready", f"Redis unreachable: {type(e).__name__}") from e
    if live is None:
        raise ApiError(503, "not_ready", "no live model version")
    return jsonify({"status": "ready", "model_version": live.decode()})
