"""Public read routes: the feed, posts, similar posts, health."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import redis
from flask import Blueprint, current_app, g, jsonify, request

from feed import contract as c
from service import cursor, observability
from service.errors import ApiError, bad_request, not_found, unavailable
from service.ranking import (
    Candidate,
    diverse_page,
    fields,
    filtered,
    gather,
    pool_size,
    post_meta,
)
from service.store import FreshPosts, Served, Store, UserState, VersionTable

bp = Blueprint("api", __name__)


def store() -> Store:
    return current_app.extensions["feed_store"]  # type: ignore[no-any-return]


def check_id(value: str, what: str) -> str:
    if not c.valid_id(value):
        raise bad_request(
            f"{what} {value[:40]!r} is not a valid id (1-128 letters, digits, '_-.:@' or CJK)",
            f"invalid_{what}",
        )
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
        raise unavailable(
            f"model version {version!r} is not servable: not in the registry, or published by "
            "a release with another Redis contract (publish it again)"
        )
    return t


def resolve_version(user_id: str, pinned: str | None) -> dict[str, Any]:
    """The version for this request, with the user's experiment and arm.

    The running experiment (cached in process) assigns the user an arm by a salted hash of the
    user id; the arm's version serves unless a cursor pins the scroll to another version (the
    arm is still reported). Users outside the experiment, and arms whose version has no keys,
    get the live version with ``experiment`` and ``arm`` null.
    """
    s = store()
    exp = s.experiment() if user_id else None
    arm = exp.arm_for(user_id) if exp is not None else None
    keep = bool(pinned) and s.table(pinned or "") is not None
    if arm is not None and not keep and s.table(arm.version) is None:
        arm = None
    route = {"experiment": exp.name if exp and arm else None, "arm": arm.name if arm else None}
    if keep:
        return {"model_version": pinned, **route}
    if arm is not None:
        return {"model_version": arm.version, **route}
    live = s.live_version()
    if live is None:
        raise unavailable("no live model version: run `feed publish ARTIFACT --activate`")
    return {"model_version": live, "experiment": None, "arm": None}


def render(cand: Candidate, card: bytes, oos: frozenset[str]) -> orjson.Fragment:
    """A feed item's JSON: the post's card with its score and reason, spliced as bytes; the
    card is decoded only to mark products that are out of stock now."""
    if oos and any(p in oos for p in cand.product_ids):
        card = orjson.dumps(_in_stock(orjson.loads(card), oos))
    tail = orjson.dumps({"score": round(float(cand.score), 4), "reason": cand.reason})
    return orjson.Fragment(card[:-1] + b"," + tail[1:])


def _in_stock(card: dict[str, Any], oos: frozenset[str]) -> dict[str, Any]:
    for p in card["products"]:
        p["in_stock"] = p["product_id"] not in oos
    return card


def cards(post_ids: list[str], served: Served | None = None) -> dict[str, bytes]:
    """Post id -> card in one round trip (which also marks ``served``, see
    :meth:`~service.store.Store.cards`); posts without a card (published by an older release)
    get one built from their documents (one more MGET)."""
    found = store().cards(post_ids, served)
    missing = [p for p in post_ids if p not in found]
    if missing:
        posts, _ = store().documents(missing, [])
        linked = list(
            dict.fromkeys(p for doc in posts.values() for p in doc.get("product_ids", []))
        )
        _, products = store().documents([], linked)
        found.update({p: c.encode_json(c.card(doc, products)) for p, doc in posts.items()})
    return found


def hydrate(
    page: list[Candidate], oos: frozenset[str], served: Served | None = None
) -> list[tuple[Candidate, Any]]:
    """Each candidate with its rendered item (posts without a card or document are dropped),
    marking the page ``served`` in the same round trip."""
    found = cards([cand.post_id for cand in page], served)
    return [(x, render(x, found[x.post_id], oos)) for x in page if x.post_id in found]


def interests_arg() -> list[str]:
    """The ``interests=`` hint: comma-separated categories and/or words (deduplicated)."""
    raw = request.args.get("interests")
    if raw is None:
        return []
    terms = list(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
    most = current_app.config["INTEREST_MAX_TERMS"]
    if len(raw) > 1000 or len(terms) > most:
        raise bad_request(
            f"interests takes at most {most} comma-separated terms (1000 characters)",
            "invalid_interests",
        )
    return terms


def _cursor_args(user_id: str, now: float) -> tuple[float, int, str | None, str | None]:
    """(scroll start, page number, pinned version, raw cursor) of the request."""
    raw = request.args.get("cursor")
    if not raw:
        return now, 0, None, None
    cfg = current_app.config
    cur = cursor.decode(cfg["CURSOR_SECRET_BYTES"], raw, user_id, cfg["CURSOR_TTL_S"])
    return float(cur["t"]), int(cur["p"]), cur["v"], raw


def _ranked(
    user_id: str,
    state: UserState,
    table: VersionTable,
    glob: dict[str, Any],
    interests: list[str],
    limit: int,
    now: float,
) -> list[Candidate]:
    """Gather, filter, rescore and cut one page (no Redis except a first-use token index)."""
    cfg = current_app.config
    tokens = store().token_index(table.version) if interests else None
    offers = gather(state, table, glob, cfg, interests, tokens)
    cands = filtered(user_id, offers, state, table, glob, cfg, now, pool_size(limit, cfg))
    return diverse_page(cands, limit, cfg)


def _replayed(
    replay: list[tuple[str, float, str]], table: VersionTable, glob: dict[str, Any]
) -> list[Candidate]:
    """The page a retried cursor already led to, rebuilt from its post ids."""
    page = []
    for pid, score, reason in replay:
        meta = post_meta(pid, table, glob["fresh"])
        if meta is not None:
            page.append(meta.candidate(pid, score, reason))
    return page


def _flag(name: str) -> bool:
    raw = request.args.get(name, "0").lower()
    if raw not in ("0", "1", "true", "false"):
        raise bad_request(f"{name} must be 0/1 or true/false")
    return raw in ("1", "true")


def _route(user_id: str, pinned: str | None) -> dict[str, Any]:
    """``resolve_version``, or the ``version=`` an admin asked for (preview only)."""
    wanted = request.args.get("version")
    if wanted is None:
        return resolve_version(user_id, pinned)
    from service.admin import require_admin

    require_admin()
    if not c.valid_version(wanted) or store().table(wanted) is None:
        raise not_found(f"model version {wanted[:64]!r} is not published")
    return {"model_version": wanted, "experiment": None, "arm": None}


def _preview_page(
    user_id: str,
    state: UserState,
    table: VersionTable,
    glob: dict[str, Any],
    interests: list[str],
    limit: int,
    page_no: int,
    now: float,
) -> list[Candidate]:
    """Page ``page_no`` of a side-effect-free scroll: nothing is recorded as served, so pages
    are cut from one ranking instead."""
    ranked = _ranked(user_id, state, table, glob, interests, limit * (page_no + 1), now)
    return ranked[limit * page_no :]


def _degraded(user_id: str, limit: int, page_no: int, started: float) -> Any:
    """A page from the in-process copy of trending posts, for when Redis is unreachable."""
    version, items = store().fallback
    if version is None:
        raise unavailable("the feed store (Redis) is unavailable; retry shortly")
    observability.DEGRADED.labels("feed").inc()
    page = items[limit * page_no : limit * (page_no + 1)]  # rendered with reason "trending"
    route = {"model_version": version, "experiment": None, "arm": None}
    return _page_response(user_id, route, page, page_no, started, degraded=True)


def _page_response(
    user_id: str,
    route: dict[str, Any],
    items: list[Any],
    page_no: int,
    started: float,
    degraded: bool = False,
) -> Any:
    """The feed page's JSON, with the cursor to the next page (none after an empty page)."""
    next_cursor = None
    if items:
        secret = current_app.config["CURSOR_SECRET_BYTES"]
        version = route["model_version"]
        next_cursor = cursor.encode(secret, user_id, version, page_no + 1, started)
    return jsonify(
        {
            "user_id": user_id,
            **route,
            "request_id": request_id(),
            "degraded": degraded,
            "next_cursor": next_cursor,
            "items": items,
        }
    )


def _remember_fallback(table: VersionTable) -> None:
    """Once per live version and process: hydrate its trending posts for outages."""
    s = store()
    if s.fallback[0] == table.version or table.version != s.live_version():
        return
    n = current_app.config["FALLBACK_SIZE"]
    page = [
        Candidate(
            table.post_ids[i],
            float(sc),
            "trending",
            table.authors[i],
            table.categories[i],
            table.created[i],
            table.product_ids[i],
        )
        for i, sc in zip(
            table.trending[:n].tolist(), table.trending_scores[:n].tolist(), strict=True
        )
    ]
    s.remember_fallback(table.version, [item for _, item in hydrate(page, frozenset())])


@bp.get("/v1/feed/<user_id>")
def get_feed(user_id: str) -> Any:
    """A ranked feed page (see DESIGN.md "one feed request").

    Two Redis round trips: one pipelined read of the user's keys, then one pipeline that reads
    the page's cards (MGET) and writes what the page changes (served set, exposure, the page
    kept for cursor retries); the version table, the live version and the global state come
    from in-process caches. A cursor pins the scroll to its
    version; the served set keeps every page of a scroll distinct, also when the version
    changes; the same cursor sent again within ``PAGE_REPLAY_TTL_S`` returns the same page.

    ``preview=1`` changes nothing (no served set, no exposure): for viewers and debugging.
    ``version=V`` (admin token required, preview only) ranks with another published version.
    When Redis is unreachable the page comes from an in-process copy of trending posts,
    marked ``degraded: true``.
    """
    check_id(user_id, "user_id")
    limit = limit_arg()
    interests = interests_arg()
    preview = _flag("preview") or "version" in request.args
    now = time.time()
    started, page_no, pinned, raw_cursor = _cursor_args(user_id, now)
    s = store()
    if not s.available():
        return _degraded(user_id, limit, page_no, started)
    try:
        return _feed_page(
            user_id, limit, interests, preview, now, started, page_no, pinned, raw_cursor
        )
    except redis.RedisError as e:
        kind = "timeout" if isinstance(e, redis.TimeoutError) else type(e).__name__
        observability.REDIS_ERRORS.labels(kind).inc()
        s.mark_down()
        return _degraded(user_id, limit, page_no, started)


def _feed_page(
    user_id: str,
    limit: int,
    interests: list[str],
    preview: bool,
    now: float,
    started: float,
    page_no: int,
    pinned: str | None,
    raw_cursor: str | None,
) -> Any:
    route = _route(user_id, pinned)
    version = route["model_version"]
    s = store()
    table = _table(version)
    replay_key = c.page_key(user_id, raw_cursor) if raw_cursor and not preview else None
    state = s.user_state(user_id, version, now, replay_key)
    glob = s.global_state()
    if preview:
        page = _preview_page(user_id, state, table, glob, interests, limit, page_no, now)
    elif state.replay is not None:
        page = _replayed(state.replay, table, glob)
    else:
        page = _ranked(user_id, state, table, glob, interests, limit, now)
    rid = request_id()
    served = None
    if not preview:
        keep = None
        if replay_key and state.replay is None:
            keep = (replay_key, [(x.post_id, round(x.score, 4), x.reason) for x in page])
        served = Served(user_id, now, route, rid, keep)
    items = hydrate(page, glob["oos"], served)
    if not preview:
        observability.record_items(cand.reason for cand, _ in items)
        observability.record_exposure(route.get("experiment"), route.get("arm"))
        _remember_fallback(table)
    return _page_response(user_id, route, [item for _, item in items], page_no, started)


@bp.get("/v1/posts/<post_id>")
def get_post(post_id: str) -> Any:
    check_id(post_id, "post_id")
    raw = cards([post_id]).get(post_id)
    if raw is None:
        raise not_found(f"unknown post {post_id!r}")
    return jsonify(_in_stock(orjson.loads(raw), store().global_state()["oos"]))


def _neighbour_indices(
    table: VersionTable,
    post_id: str,
    glob: dict[str, Any],
) -> tuple[list[int], list[float]] | None:
    """Similar posts (indices, scores): the version's blended content + co-engagement
    neighbours; for a post created since training, the trending posts of its categories.
    None when the post is unknown."""
    if post_id in table.index:
        idx, scores, _ = c.decode_candidates(
            store().r.get(c.neighbours_key(table.version, post_id))
        )
        return idx.tolist(), scores.tolist()
    meta = post_meta(post_id, table, glob["fresh"])
    if meta is None and (older := store().fresh_meta(post_id)) is not None:
        # an API post past the newest few
        meta = post_meta(post_id, table, FreshPosts.build({post_id: older}))
    if meta is None:
        posts, _ = store().documents([post_id], [])
        return None if post_id not in posts else ([], [])
    found = list(
        dict.fromkeys(i for cat in meta.categories for i in table.posts_in_category(cat.lower()))
    )
    return found, [1.0 - 0.5 * r / max(len(found), 1) for r in range(len(found))]


@bp.get("/v1/posts/<post_id>/similar")
def similar(post_id: str) -> Any:
    """Posts like this one, each with reason ``similar_to:<post_id>``; posts whose every
    product is out of stock are skipped. 404 for an unknown post."""
    check_id(post_id, "post_id")
    limit = limit_arg(10)
    version = resolve_version("", None)["model_version"]
    table = _table(version)
    glob = store().global_state()
    found = _neighbour_indices(table, post_id, glob)
    if found is None:
        raise not_found(f"unknown post {post_id!r}")
    oos = glob["oos"]
    page = []
    for j, sc in zip(*found, strict=True):
        products = table.product_ids[j]
        if table.post_ids[j] == post_id or (products and all(p in oos for p in products)):
            continue
        reason = f"similar_to:{post_id}"
        page.append(Candidate(table.post_ids[j], float(sc), reason, *fields(table, j)))
        if len(page) == limit:
            break
    items = [item for _, item in hydrate(page, oos)]
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
