"""Group-buys (拼購): ``POST /v1/groups``, ``POST /v1/groups/<id>/join``,
``POST /v1/groups/<id>/cancel`` (the initiator closes an open group: ``group_closed`` is then
what a join gets), ``GET /v1/groups/<id>``;
and the group-buying recommendations: ``GET /v1/users/<id>/deals`` (products to launch a group
for), ``GET /v1/users/<id>/groups`` (friends' open groups to join) and
``GET /v1/groups/<id>/invitees`` (whom the initiator should invite), read from the version's
published deals and ties (:class:`service.groups.GroupRecs`).

The state is exact under any load (:mod:`service.groups`: one Lua script per change on the
group's slot). A group's product must be known where pages get products from: a product of the
live version (its document) or of the catalogue (``PUT /v1/products/<id>``); otherwise 400
``unknown_product``. Bad bodies are a 400 naming the field and its limit.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from feed import contract as c
from feed.serving.state import VersionTable
from service.errors import ApiError, bad_request, not_found, unavailable
from service.groups import GroupError, GroupRecs, Groups
from service.request import (
    check_id,
    limit_arg,
    redis,
    resolve_version,
    store,
    version_table,
)
from service.schemas import CancelGroup, Group, JoinGroup, NewGroup, api, body

bp = Blueprint("groups", __name__)
logger = logging.getLogger(__name__)
DEAL_POSTS = 3  # posts shown with each deal, best first
RECS_MAX = 100  # most items a group recommendation returns (a larger limit is capped)


def groups() -> Groups:
    """The process's :class:`Groups` (its scripts registered once per app)."""
    ext = current_app.extensions
    if "feed_groups" not in ext:
        ext["feed_groups"] = Groups(redis(), current_app.config)
    return ext["feed_groups"]  # type: ignore[no-any-return]


def recs() -> GroupRecs:
    """The process's :class:`GroupRecs`."""
    ext = current_app.extensions
    if "feed_group_recs" not in ext:
        ext["feed_group_recs"] = GroupRecs(redis(), current_app.config)
    return ext["feed_group_recs"]  # type: ignore[no-any-return]


def _product_posts(table: VersionTable) -> dict[str, list[str]]:
    """Product -> the version's posts linking it, trending ones first (cached per version)."""
    cache = current_app.extensions.setdefault("feed_product_posts", {})
    if table.version not in cache:
        rank = {int(i): r for r, i in enumerate(table.trending.tolist())}
        order = sorted(range(len(table.post_ids)), key=lambda i: (rank.get(i, len(rank)), i))
        index: dict[str, list[str]] = {}
        for i in order:
            for prod in table.product_ids[i]:
                posts = index.setdefault(prod, [])
                if len(posts) < DEAL_POSTS:
                    posts.append(table.post_ids[i])
        while len(cache) >= 4:  # a few versions at most (live, rollback, experiment arms)
            cache.pop(next(iter(cache)))
        cache[table.version] = index
    return cache[table.version]  # type: ignore[no-any-return]


def _categories(version: str | None) -> dict[str, str]:
    """Product -> category of the version (empty when none is servable)."""
    table = store().table(version) if version else None
    return table.product_category if table is not None else {}


def _available() -> None:
    if not store().available():
        raise unavailable("the group store (Redis) is unavailable; nothing was changed")


def _create_body() -> dict[str, Any]:
    """The checked body of ``POST /v1/groups`` (:class:`service.schemas.NewGroup`; sizes and
    times within ``FEED_GROUP_*``)."""
    new: NewGroup = body()
    out = new.model_dump()
    if out["ttl_s"] is None:
        out["ttl_s"] = float(current_app.config["GROUP_TTL_DEFAULT_S"])
    return out


def _known_product(product_id: str) -> bool:
    """True when the catalogue or the live version knows the product."""
    s = store()
    if product_id in s.overlay().products:
        return True
    live = s.live_version()
    return live is not None and bool(redis().exists(c.product_doc_key(product_id, live)))


def _refused(e: GroupError) -> ApiError:
    if e.code == "not_found":
        return not_found(e.message)
    if e.code == "not_initiator":
        return ApiError(403, e.code, e.message)
    return ApiError(409, e.code, e.message)


@bp.post("/v1/groups")
@api(
    "Start a group-buy (拼購): the initiator is its first member; it succeeds when size members "
    "joined before expires_at. Logs a group_start event.",
    body=NewGroup,
    ok={201: Group},
    errors={
        400: "Invalid body (the message names the field and its limit), or a product neither "
        "the live version nor the catalogue knows (unknown_product).",
        409: "group_exists: the id is taken; too_many_open_groups: the initiator has "
        "FEED_GROUP_OPEN_MAX open groups.",
        503: "Redis unavailable; nothing changed.",
    },
    tags=("groups",),
)
def create_group() -> Any:
    """Start a group-buy: 201 with its state; 409 ``group_exists`` or
    ``too_many_open_groups``; 400 naming a bad field or an unknown product."""
    _available()
    body = _create_body()
    if not _known_product(body["product_id"]):
        raise bad_request(
            f"product_id {body['product_id'][:40]!r} is not a product of the live version or "
            "the catalogue",
            "unknown_product",
        )
    group_id = body["group_id"] or f"g-{secrets.token_hex(8)}"
    try:
        group = groups().create(
            group_id,
            body["product_id"],
            body["initiator_id"],
            body["size"],
            body["ttl_s"],
            body["price"],
        )
    except GroupError as e:
        raise _refused(e) from None
    try:  # the group stands either way: a failed fan-out only hides it from friends' lists
        recs().fan_out(group, store().live_version())
    except Exception as e:  # noqa: BLE001
        logger.warning("fan-out of group %s failed: %s", group.group_id, e)
    return jsonify(group.to_json()), 201


@bp.post("/v1/groups/<group_id>/join")
@api(
    "Join a group-buy, atomically: status becomes succeeded when it is full; joining again (or "
    "the initiator joining) is 200 and changes nothing. Logs a group_join event.",
    body=JoinGroup,
    ok={200: Group},
    errors={
        404: "Unknown group.",
        409: "group_full, group_closed or group_expired: nobody joined.",
        503: "Redis unavailable; nothing changed.",
    },
    tags=("groups",),
)
def join_group(group_id: str) -> Any:
    """Join a group: 200 with its state (``succeeded`` once full; a second join, or the
    initiator's, changes nothing); 409 ``group_full``, ``group_closed`` or ``group_expired``;
    404 for an unknown group."""
    _available()
    check_id(group_id, "group_id")
    user_id = body().user_id
    try:
        group, _ = groups().join(group_id, user_id)
    except GroupError as e:
        raise _refused(e) from None
    return jsonify(group.to_json())


@bp.post("/v1/groups/<group_id>/cancel")
@api(
    "Cancel an open group-buy, by its initiator: status becomes cancelled, joins get 409 "
    "group_closed, the initiator's open-group slot is freed. Cancelling again is 200 and "
    "changes nothing. Logs a group_cancel event.",
    body=CancelGroup,
    ok={200: Group},
    errors={
        403: "not_initiator: only the initiator can cancel the group.",
        404: "Unknown group.",
        409: "group_full (it succeeded) or group_expired: nothing changed.",
        503: "Redis unavailable; nothing changed.",
    },
    tags=("groups",),
)
def cancel_group(group_id: str) -> Any:
    """Cancel a group (its initiator only): 200 with its state, ``cancelled``; 403
    ``not_initiator``; 409 ``group_full`` or ``group_expired``; 404 for an unknown group."""
    _available()
    check_id(group_id, "group_id")
    user_id = body().user_id
    try:
        group, _ = groups().cancel(group_id, user_id)
    except GroupError as e:
        raise _refused(e) from None
    return jsonify(group.to_json())


@bp.get("/v1/groups/<group_id>")
def get_group(group_id: str) -> Any:
    """A group's state; 404 when unknown (or its state has expired)."""
    _available()
    check_id(group_id, "group_id")
    group = groups().get(group_id)
    if group is None:
        raise not_found(f"no group {group_id!r} (unknown, or expired long ago)")
    return jsonify(group.to_json())


@bp.get("/v1/users/<user_id>/deals")
def user_deals(user_id: str) -> Any:
    """Products the user should launch a group-buy for, best first, with the posts that show
    each one and the friends who bought it or joined its groups. A user the version knows
    nothing about gets the version's popular deals (reason ``popular_groups``)."""
    _available()
    check_id(user_id, "user_id")
    limit = limit_arg(20, RECS_MAX)
    version = resolve_version(user_id, None).model_version
    posts = _product_posts(version_table(version))
    deals, popular = recs().deals(user_id, version)
    items = [
        {**d, "score": round(float(d["score"]), 4), "posts": posts.get(d["product_id"], [])}
        for d in deals[:limit]
    ]
    return jsonify({"items": items, "basis": "popular" if popular else "user",
                    "model_version": version})  # fmt: skip


@bp.get("/v1/users/<user_id>/groups")
def user_groups(user_id: str) -> Any:
    """Friends' open group-buys the user may join, best first (fan-out on start: one read of
    the user's keys, one of the groups' states); none whose initiator the user blocked or
    muted (``see_fewer_author``)."""
    _available()
    check_id(user_id, "user_id")
    limit = limit_arg(20, RECS_MAX)
    version = resolve_version(user_id, None).model_version
    items = []
    category = version_table(version).product_category
    for s in recs().joinable(user_id, version, limit, category):
        g = s.item
        items.append(
            {
                "group_id": g.group_id,
                "product_id": g.product_id,
                "initiator_id": g.initiator_id,
                "members": g.members,
                "size": g.size,
                "spots_left": max(g.size - len(g.members), 0),
                "expires_at": c.iso_time(g.expires_at),
                "price": g.price,
                "score": round(s.score, 4),
                "reason": s.reason,
            }
        )
    return jsonify({"items": items, "model_version": version})


@bp.get("/v1/groups/<group_id>/invitees")
def group_invitees(group_id: str) -> Any:
    """Whom the initiator should invite: their ties ranked by the version's pair model (the
    published tie part, their affinity for the group's product and its category), then, when
    they leave room, friends of friends scored the same way; current members excluded; 404 for
    an unknown group. The list names the initiator's ties and what they like
    (``friend_wants_product``), so ``user_id`` (the caller's user) must be the initiator (400
    without it, 403 ``not_initiator`` for anyone else). A friend of a friend may be a stranger
    to the initiator: their reason is ``friend_of_friend`` alone, never their predicted taste
    (their order still follows the pair model's score)."""
    _available()
    check_id(group_id, "group_id")
    asker = request.args.get("user_id")
    if asker is None:
        raise bad_request("user_id is required: the initiator asking", "invalid_user_id")
    check_id(asker, "user_id")
    limit = limit_arg(20, RECS_MAX)
    group = groups().get(group_id)
    if group is None:
        raise not_found(f"no group {group_id!r} (unknown, or expired long ago)")
    if asker != group.initiator_id:
        raise ApiError(403, "not_initiator", "only the group's initiator gets its invitees")
    version = store().live_version()
    items = [
        {"user_id": s.item, "score": round(s.score, 4), "reason": s.reason}
        for s in recs().invitees(group, version, limit, _categories(version))
    ]
    return jsonify({"items": items, "model_version": version})
