"""The page pipeline: one feed page from its request to its JSON, and the cards every route
renders posts with.

A :class:`PageRequest` holds what the request asked for; :func:`feed_page` routes it to a
version, reads the user's state (round trip 1), ranks (:mod:`feed.serving.ranking`), reads the
page's cards while marking it served (round trip 2) and answers with the next cursor.
:func:`degraded` answers from the in-process copy of trending posts when Redis is unreachable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
from flask import current_app, jsonify, request
from redis.exceptions import RedisError

from feed import contract as c
from feed.serving.ranking import Candidate, diverse_page, filtered, gather, pool_size, post_meta
from feed.serving.state import UserState, VersionTable
from service import cursor, observability
from service.campaigns import Slot, Sponsor, place
from service.errors import bad_request, not_found, unavailable
from service.groups import feed_group_reads, feed_groups
from service.request import (
    flag,
    limit_arg,
    request_id,
    require_admin,
    resolve_version,
    store,
    version_table,
)
from service.state import Route, Served


@dataclass(frozen=True)
class PageRequest:
    """What a feed request asks for: whose page, how long, and where in the scroll."""

    user_id: str
    limit: int
    interests: list[str]
    preview: bool  # nothing recorded (no served set, no exposure)
    now: float
    started: float  # when the scroll started (now on its first page)
    page_no: int
    pinned: str | None  # the cursor's version
    raw_cursor: str | None
    stateless_from: int | None = None  # the cursor's: this scroll records nothing since then


def page_request(user_id: str) -> PageRequest:
    """The request's arguments (``limit``, ``interests``, ``preview``, ``version``, ``cursor``),
    checked."""
    limit = limit_arg()
    interests = interests_arg()
    preview = flag("preview") or "version" in request.args
    now = time.time()
    started, page_no, pinned, raw_cursor, stateless = _cursor_args(user_id, now)
    return PageRequest(
        user_id, limit, interests, preview, now, started, page_no, pinned, raw_cursor, stateless
    )


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


def _cursor_args(user_id: str, now: float) -> tuple[float, int, str | None, str | None, int | None]:
    """(scroll start, page number, pinned version, raw cursor, stateless since) of the
    request."""
    raw = request.args.get("cursor")
    if not raw:
        return now, 0, None, None, None
    cfg = current_app.config
    cur = cursor.decode(cfg["CURSOR_SECRET_BYTES"], raw, user_id, cfg["CURSOR_TTL_S"])
    page = int(cur["p"])
    stateless = cur.get("s")
    stateless = min(max(int(stateless), 0), page) if isinstance(stateless, int) else None
    return float(cur["t"]), page, cur["v"], raw, stateless


# --- cards -----------------------------------------------------------------------------------
def render(
    cand: Candidate,
    card: bytes,
    oos: frozenset[str],
    catalogue: Mapping[str, Mapping[str, Any]] | None = None,
    edited: frozenset[str] = frozenset(),
    extra: Mapping[str, Any] | None = None,
) -> orjson.Fragment:
    """A feed item's JSON: the post's card with its score and reason, spliced as bytes; the
    card is decoded only to mark products that are out of stock now or changed in the live
    catalogue (``catalogue``), or when the post was edited (its products may have changed)."""
    products = cand.product_ids
    if (
        (oos and any(p in oos for p in products))
        or (catalogue and any(p in catalogue for p in products))
        or cand.post_id in edited
    ):
        card = orjson.dumps(in_stock(orjson.loads(card), oos, catalogue))
    tail = orjson.dumps(
        {"score": round(float(cand.score), 4), "reason": cand.reason, **(extra or {})}
    )
    return orjson.Fragment(card[:-1] + b"," + tail[1:])


#: What the live catalogue (``PUT /v1/products``) changes in a card's products.
CATALOGUE_FIELDS = ("title", "category", "price", "merchant_id")


def in_stock(
    card: dict[str, Any],
    oos: frozenset[str],
    catalogue: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The card with each product's ``in_stock`` as of ``oos``, and its title, category, price
    and merchant as the live catalogue has them."""
    for p in card["products"]:
        record = catalogue.get(p["product_id"]) if catalogue else None
        if record:
            p.update({k: record[k] for k in CATALOGUE_FIELDS if k in record})
        p["in_stock"] = p["product_id"] not in oos
    return card


def cards(
    table: VersionTable | None,
    post_ids: list[str],
    served: Served | None = None,
    edited: frozenset[str] = frozenset(),
    also: list[Any] | None = None,
    replies: list[Any] | None = None,
) -> dict[str, bytes]:
    """Post id -> card of ``table``'s version (an API-created post's card for posts it does not
    list) in one round trip (which also marks ``served``, and sends the reads ``also``, their
    replies into ``replies``: see :meth:`~service.store.Store.cards`); posts without a card (an
    API post stored by a release before cards) get one built from their documents (one more
    MGET)."""
    found = store().cards(table, post_ids, served, edited, also or (), replies)
    missing = [p for p in post_ids if p not in found]
    if missing:
        posts, _ = store().documents(table, missing, [], edited)
        linked = list(
            dict.fromkeys(p for doc in posts.values() for p in doc.get("product_ids", []))
        )
        _, products = store().documents(table, [], linked)
        found.update({p: c.encode_json(c.card(doc, products)) for p, doc in posts.items()})
    return found


def hydrate(
    table: VersionTable,
    page: list[Candidate],
    oos: frozenset[str],
    served: Served | None = None,
    glob: Mapping[str, Any] | None = None,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
    state: UserState | None = None,
    user_id: str = "",
) -> list[tuple[Candidate, Any]]:
    """Each candidate with its rendered item from ``table``'s version (posts without a card or
    document are dropped), marking the page ``served`` in the same round trip. With ``glob``
    (the global state): taken-down posts are dropped (a replayed page may list one), edited
    posts served as edited, products as the live catalogue has them. ``extras``: more fields
    of some items (a sponsored post's ``sponsored``, ``merchant_id``, ``campaign_id``). With
    ``state``: an item linking a product of a friend's open group in the user's group feed
    carries it as ``"group"`` (its state read in the cards' round trip; none for a user without
    friends' open groups, none of an initiator the user muted or blocked)."""
    glob = glob or {}
    gone, edited = glob.get("takedown", frozenset()), glob.get("edited", frozenset())
    catalogue = glob.get("catalogue")
    page = [x for x in page if x.post_id not in gone] if gone else page
    gids, reads = feed_group_reads(state.group_feed) if state is not None else ([], [])
    replies: list[Any] = []
    found = cards(table, [cand.post_id for cand in page], served, edited, reads, replies)
    if gids:
        on = feed_groups(user_id, gids, replies, time.time(), state.muted if state else ())
        extras = dict(extras or {})
        for x in page:
            group = next((on[p] for p in x.product_ids if p in on), None)
            if group is not None:
                extras[x.post_id] = {**extras.get(x.post_id, {}), "group": group}
    return [
        (x, render(x, found[x.post_id], oos, catalogue, edited, (extras or {}).get(x.post_id)))
        for x in page
        if x.post_id in found
    ]


# --- one page --------------------------------------------------------------------------------
def _route(req: PageRequest) -> Route:
    """``resolve_version``, or the ``version=`` an admin asked for (preview only)."""
    wanted = request.args.get("version")
    if wanted is None:
        return resolve_version(req.user_id, req.pinned)
    require_admin()
    if not c.valid_version(wanted) or store().table(wanted) is None:
        raise not_found(f"model version {wanted[:64]!r} is not published")
    return Route(wanted)


def _ranked(
    req: PageRequest, state: UserState, table: VersionTable, glob: dict[str, Any], limit: int
) -> list[Candidate]:
    """Gather, filter, rescore and cut ``limit`` posts (no Redis except a first-use token
    index)."""
    cfg = current_app.config
    tokens = store().token_index(table.version) if req.interests else None
    offers = gather(state, table, glob, cfg, req.interests, tokens)
    depth = pool_size(limit, cfg)
    policy = table.policy.overridden(cfg)
    cands = filtered(req.user_id, offers, state, table, glob, cfg, req.now, depth, policy)
    wanted = frozenset(term.strip().lower() for term in req.interests)
    return diverse_page(cands, limit, policy, table.shares, depth, wanted)


def _cut_page(
    req: PageRequest, state: UserState, table: VersionTable, glob: dict[str, Any], nth: int
) -> list[Candidate]:
    """The ``nth`` page (from 0) of a scroll that records nothing as served (a preview, an
    unknown visitor's, or one Redis is too full to record): the pages before it are ranked
    again, each as if the ones before had been marked seen, so the scroll gets exactly the
    pages a recorded one would, at ``nth + 1`` rankings for the ``nth`` page (hence
    ``STATELESS_MAX_PAGES``; a cursor past them is a 400, so no request ranks more)."""
    if nth + 1 > current_app.config["STATELESS_MAX_PAGES"]:
        raise bad_request(
            "this scroll records nothing and ends after FEED_STATELESS_MAX_PAGES pages: "
            "start again without a cursor",
            "invalid_cursor",
        )
    seen = set(state.seen)
    page: list[Candidate] = []
    for _ in range(nth + 1):
        page = _ranked(req, replace(state, seen=seen), table, glob, req.limit)
        seen.update(x.post_id for x in page)
    return page


def _unknown(state: UserState) -> bool:
    """A visitor the service knows nothing about: no candidates, no real-time state. Their
    pages write nothing, so anonymous traffic cannot grow Redis."""
    return len(state.candidates[0]) == 0 and not (
        state.seen
        or state.liked
        or state.realtime
        or state.hidden
        or state.muted
        or state.follows
        or state.unfollows
        or state.bought
    )


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


def degraded(req: PageRequest) -> Any:
    """A page from the in-process copy of trending posts, for when Redis is unreachable."""
    version, items = store().fallback
    if version is None:
        raise unavailable("the feed store (Redis) is unavailable; retry shortly")
    observability.DEGRADED.labels("feed").inc()
    # rendered with reason "trending"
    page = items[req.limit * req.page_no : req.limit * (req.page_no + 1)]
    return _page_response(req, Route(version), page, degraded=True)


def _page_response(
    req: PageRequest,
    route: Route,
    items: list[Any],
    degraded: bool = False,
    stateless_from: int | None = None,
) -> Any:
    """The feed page's JSON, with the cursor to the next page (none after an empty page, nor
    after the last of ``STATELESS_MAX_PAGES`` pages of a scroll that records nothing)."""
    next_cursor = None
    unrecorded = req.page_no - stateless_from if stateless_from is not None else -1
    if req.preview:
        unrecorded = req.page_no
    if items and unrecorded + 1 < current_app.config["STATELESS_MAX_PAGES"]:
        secret = current_app.config["CURSOR_SECRET_BYTES"]
        next_cursor = cursor.encode(
            secret, req.user_id, route.model_version, req.page_no + 1, req.started, stateless_from
        )
    return jsonify(
        {
            "user_id": req.user_id,
            **route.json(),
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
    s.remember_fallback(table.version, [item for _, item in hydrate(table, page, frozenset())])


# --- sponsored posts (service/campaigns.py) --------------------------------------------------
_SPONSOR_LOCK = threading.Lock()


def sponsor() -> Sponsor:
    """The process's running-campaign cache (made on first use, over the store's client)."""
    ext = current_app.extensions
    found = ext.get("feed_sponsor")
    if found is None:
        with _SPONSOR_LOCK:
            found = ext.get("feed_sponsor")
            if found is None:
                live_max = int(current_app.config.get("CAMPAIGNS_LIVE_MAX") or 100)
                found = ext["feed_sponsor"] = Sponsor(store().r, live_max)
    return found  # type: ignore[no-any-return]


def _sponsored(
    req: PageRequest,
    state: UserState,
    table: VersionTable,
    glob: dict[str, Any],
    page: list[Candidate],
    recorded: bool,
) -> tuple[list[Candidate], dict[str, dict[str, Any]], list[Any]]:
    """(the page with the sponsored posts of running campaigns at their slots, their extra
    fields, the campaigns' reach writes for round trip 2). Nothing without a running campaign
    (the campaigns counter came with the user's keys); with one, at most ONE round trip (the
    reservation script). A preview, a replayed page or a scroll that records nothing gets
    none (a replayed page keeps its sponsored posts, flagged again)."""
    sp = sponsor()
    running = sp.running(state.campaign_generation, req.now)
    if not running:
        return page, {}, []
    if req.preview or not recorded or state.replay is not None:
        flags = sp.flags({x.post_id for x in page if x.reason == "sponsored"}, running)
        return page, flags, []
    gone = glob.get("takedown", frozenset())

    def servable(p: str) -> bool:
        return p not in gone and post_meta(p, table, glob["fresh"]) is not None

    posts = [x.post_id for x in page]
    wanted, reach = sp.plan(
        req.user_id,
        running,
        posts,
        state.hidden,
        state.muted,
        state.seen,
        servable,
        glob.get("oos", frozenset()),
    )
    try:
        slots = sp.reserve(req.user_id, wanted)
    except RedisError:  # the organic page is served all the same
        observability.DEGRADED.labels("sponsored").inc()
        slots = []
    if not slots:
        return page, {}, reach

    def make(slot: Slot) -> Candidate:
        meta = post_meta(slot.post_id, table, glob["fresh"])
        assert meta is not None  # servable() checked it
        return meta.candidate(slot.post_id, 0.0, "sponsored")

    extras = {s.post_id: s.campaign.flags() for s in slots}
    return place(page, slots, make), extras, reach


def feed_page(req: PageRequest) -> Any:
    """The page's JSON in two Redis round trips (see :func:`service.routes.feed.get_feed`)."""
    route = _route(req)
    version = route.model_version
    s = store()
    table = version_table(version)
    stateless = req.stateless_from
    replay_key = None
    if req.raw_cursor and not req.preview and stateless is None:
        replay_key = c.page_key(req.user_id, req.raw_cursor)
    state = s.user_state(req.user_id, version, req.now, replay_key)
    glob = s.global_state(version, state.overlay_generation)
    if stateless is None and not req.preview and _unknown(state):
        stateless = req.page_no  # nothing is written for an unknown visitor
    if req.preview:
        page = _cut_page(req, state, table, glob, req.page_no)
    elif stateless is not None:
        page = _cut_page(req, state, table, glob, req.page_no - stateless)
    elif state.replay is not None:
        page = _replayed(state.replay, table, glob)
    else:
        page = _ranked(req, state, table, glob, req.limit)
    page, extras, reach = _sponsored(req, state, table, glob, page, stateless is None)
    rid = request_id()
    served = None
    if not req.preview:
        keep = None
        if replay_key and state.replay is None:
            keep = (replay_key, [(x.post_id, round(x.score, 4), x.reason) for x in page])
        served = Served(req.user_id, req.now, route, rid, keep, mark_seen=stateless is None)
        served.extra = reach
    items = hydrate(table, page, glob["oos"], served, glob, extras, state, req.user_id)
    if served is not None and served.refused:  # Redis is full: served, but not recorded
        observability.REDIS_FULL.labels("page").inc()
        if stateless is None:
            stateless = req.page_no  # the rest of the scroll records nothing
    if not req.preview:
        observability.record_items(cand.reason for cand, _ in items)
        observability.record_exposure(route.experiment, route.arm)
        _remember_fallback(table)
    return _page_response(req, route, [item for _, item in items], stateless_from=stateless)
