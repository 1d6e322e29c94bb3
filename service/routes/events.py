"""Events: ``POST /v1/events``. Each valid event is appended to the durable event log and
reflected in the user's real-time state in the same transaction, so the next page sees it.

Results are per event: the valid events of a batch are stored together (all of them or, when
Redis fails, none), the invalid ones are named by index with the error they would have got
alone. 202 when every event was stored, 207 when some were rejected (the others stored), 400
when every event was rejected or the body itself is malformed (nothing stored). A client
retries only the rejected indices it can fix; resending the whole batch would store the valid
events twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from feed import contract as c
from feed.serving.state import FreshPosts, VersionTable
from service import observability
from service.errors import ApiError, bad_request, unavailable
from service.request import parse_ts, request_id, route_for, store
from service.schemas import parse_event

bp = Blueprint("events", __name__)

#: Events whose post's neighbours become (or stop being) real-time candidates.
_LIKE_LIKE = ("like", "unlike", "favorite", "unfavorite")


def validate_event(ev: Any, i: int) -> dict[str, Any]:
    """One event checked by its type's model (:func:`service.schemas.parse_event`: the models
    the OpenAPI document shows), as the fields the log and the real-time state take, with
    ``ts`` in unix seconds (now when absent); a 400 naming ``events[<i>].<field>``."""
    event = parse_event(ev, i).model_dump(exclude_none=True)
    return {**event, "ts": parse_ts(ev.get("ts"), f"events[{i}]")}


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


def _members(ev: Mapping[str, Any], ctx: _Context) -> dict[str, float]:
    """The real-time candidates an event adds or removes: a liked or unliked post's
    neighbours, a followed or unfollowed author's newest posts; none for other events."""
    if ev["type"] in _LIKE_LIKE:
        return _neighbour_members(ctx, ev["post_id"])
    if ev["type"] in ("follow", "unfollow"):
        return _author_members(ctx, ev["author_id"])
    return {}


def _user_version(user_id: str) -> str | None:
    """The version that serves this user (their experiment arm's, else the live one), so
    real-time neighbours come from the model the user is being shown."""
    route = route_for(user_id, None)
    return None if route is None else route.model_version


def _context(events: list[dict[str, Any]], version: str | None) -> _Context:
    """Read what these events (all served by ``version``) need: neighbour lists of
    liked/unliked posts (one pipelined read), the version's table and the API-created posts
    (in-process caches)."""
    s = store()
    cfg = current_app.config
    table = s.table(version) if version else None
    posts = list(dict.fromkeys(ev["post_id"] for ev in events if ev["type"] in _LIKE_LIKE))
    neighbours: dict[str, bytes | None] = {}
    if posts and table is not None:
        neighbours = s.neighbour_lists(table.version, posts)
    fresh = FreshPosts.build({})
    if any(ev["type"] in ("follow", "unfollow") for ev in events):
        fresh = s.global_state()["fresh"]
    return _Context(cfg, table, neighbours, fresh)


def _events(cfg: Mapping[str, Any]) -> list[Any]:
    """The batch: a JSON list, or an object's ``events`` list; 400 (nothing stored) when the
    body is neither, empty or over ``MAX_EVENTS_PER_REQUEST``."""
    body = request.get_json(silent=True)
    if isinstance(body, dict):
        events = body.get("events")
        if not isinstance(events, list) or not events:
            raise bad_request("'events' must be a non-empty list")
    elif isinstance(body, list):
        events = body
        if not events:
            raise bad_request("the body must be a non-empty list of events")
    else:
        raise bad_request(
            'the body must be a JSON object {"events": [...]} or a list of events',
            "invalid_json",
        )
    if len(events) > cfg["MAX_EVENTS_PER_REQUEST"]:
        raise bad_request(f"at most {cfg['MAX_EVENTS_PER_REQUEST']} events per request")
    return events


@bp.post("/v1/events")
def post_events() -> Any:
    """Accept a batch of events: the valid ones are appended to the durable event log and
    applied to their users' real-time state in one transaction, so the next page reflects
    them; the invalid ones are named (see the module's docstring). 202, 207 or 400."""
    if not store().available():
        raise unavailable("the event store (Redis) is unavailable; nothing was stored")
    cfg = current_app.config
    events = _events(cfg)
    parsed: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, ev in enumerate(events):
        try:
            parsed.append(validate_event(ev, i))
        except ApiError as e:
            results.append({"index": i, "error": {"code": e.code, "message": e.message}})
    observability.record_rejected(r["error"]["code"] for r in results)
    counts = {"accepted": len(parsed), "rejected": len(results), "results": results}
    if not parsed:  # nothing valid: the first error is the batch's, as before
        return jsonify({"error": results[0]["error"], **counts, "request_id": request_id()}), 400
    version_of = {u: _user_version(u) for u in dict.fromkeys(ev["user_id"] for ev in parsed)}
    contexts = {
        v: _context([ev for ev in parsed if version_of[ev["user_id"]] == v], v)
        for v in dict.fromkeys(version_of.values())
    }
    store().record_events(
        [(ev, _members(ev, contexts[version_of[ev["user_id"]]])) for ev in parsed]
    )
    observability.record_events(ev["type"] for ev in parsed)
    return jsonify({**counts, "request_id": request_id()}), 207 if results else 202
