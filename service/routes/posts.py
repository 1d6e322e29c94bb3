"""Posts: ``GET /v1/posts/<post_id>``, ``GET /v1/posts/<post_id>/similar``, ``POST /v1/posts``,
and moderation: ``PATCH`` and ``DELETE /v1/posts/<post_id>``.

Moderation is version-independent (``{feed}:moderation``, never touched by a publish): a hidden
or deleted post leaves every page, similar list and gift list of every version on each
process's next request (the moderation counter is read with the user's keys, see
:meth:`service.store.Store.overlay`). Any post a version in use lists (live, rollback,
experiment arms) or an API post can be moderated. An edit rewrites an API-created post's
document and card; a trained post gets an override document and card
(:func:`feed.contract.override_keys`) that every version's pages prefer. Each action appends a
``post_update`` or ``post_delete`` event, and prunes a few entries of posts nobody serves any
more (:func:`_prune`: the hash stays bounded by what is served, not by every action ever)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from flask import Blueprint, current_app, jsonify

from feed import contract as c
from feed.serving.ranking import Candidate, fields, post_meta
from feed.serving.state import FreshPosts, VersionTable
from feed.versions import in_use
from service.errors import ApiError, bad_request, not_found
from service.pages import cards, hydrate, in_stock
from service.request import (
    check_id,
    is_admin,
    limit_arg,
    live_table,
    parse_ts,
    require_writer,
    resolve_version,
    store,
    version_table,
)
from service.schemas import NewPost, PostCreated, PostPatch, PostPatched, api, body
from service.writes import moderation_bump, overlay_event

bp = Blueprint("posts", __name__)


@bp.get("/v1/posts/<post_id>")
def get_post(post_id: str) -> Any:
    """The post's card as the live version serves it (an API-created post's own card when the
    live version does not list it), with stock as of the live version's stock set."""
    check_id(post_id, "post_id")
    _, table = live_table()
    glob = store().global_state(table.version if table else None, store().overlay_generation())
    hidden = _check_visible(post_id, glob)
    raw = cards(table, [post_id], edited=glob["edited"]).get(post_id)
    if raw is None:
        raise not_found(f"unknown post {post_id!r}")
    card = in_stock(orjson.loads(raw), glob["oos"], glob["catalogue"])
    return jsonify({**card, "hidden": True} if hidden else card)


def _check_visible(post_id: str, glob: Mapping[str, Any]) -> bool:
    """404 for a deleted post, and for a hidden one unless the caller is an admin; True when
    the post is hidden (an admin is looking)."""
    ov = glob["overlay"]
    if post_id in ov.deleted or (post_id in ov.hidden and not is_admin()):
        raise not_found(f"unknown post {post_id!r}")
    return post_id in ov.hidden


def _neighbour_indices(
    table: VersionTable,
    post_id: str,
    glob: dict[str, Any],
) -> tuple[list[int], list[float]] | None:
    """Similar posts (indices, scores): the version's blended content + co-engagement
    neighbours; for a post created since training, the trending posts of its categories.
    None when the post is unknown."""
    if post_id in table.index:
        idx, scores, _ = c.decode_candidates(store().neighbours(table.version, post_id))
        return idx.tolist(), scores.tolist()
    meta = post_meta(post_id, table, glob["fresh"])
    if meta is None and (older := store().fresh_meta(post_id)) is not None:
        # an API post past the newest few
        meta = post_meta(post_id, table, FreshPosts.build({post_id: older}))
    if meta is None:
        posts, _ = store().documents(table, [post_id], [])
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
    version = resolve_version("", None).model_version
    table = version_table(version)
    glob = store().global_state(version, store().overlay_generation())
    _check_visible(post_id, glob)
    found = _neighbour_indices(table, post_id, glob)
    if found is None:
        raise not_found(f"unknown post {post_id!r}")
    oos, gone = glob["oos"], glob["takedown"]
    page = []
    for j, sc in zip(*found, strict=True):
        products = table.product_ids[j]
        if table.post_ids[j] == post_id or (products and all(p in oos for p in products)):
            continue
        if table.post_ids[j] in gone:
            continue
        reason = f"similar_to:{post_id}"
        page.append(Candidate(table.post_ids[j], float(sc), reason, *fields(table, j)))
        if len(page) == limit:
            break
    items = [item for _, item in hydrate(table, page, oos, glob=glob)]
    return jsonify({"post_id": post_id, "model_version": version, "items": items})


#: How far ahead of the server's clock a post's created_at may be (client clocks drift); a
#: post dated later would stay at the top of fresh lists and outlive its own expiry.
FUTURE_SKEW_S = 300


@bp.post("/v1/posts")
@api(
    "Create a post; it reaches followers and fresh lists before the next training.",
    body=NewPost,
    ok={201: PostCreated},
    errors={
        400: "Invalid post (the message names the field and its limit, FEED_POST_*), a "
        "duplicate (duplicate_post), too old or in the future.",
        413: "Body too large.",
        507: "Redis is full (store_full): nothing stored; retry later.",
    },
    tags=("posts",),
)
def create_post() -> Any:
    """Store a post created since training: its document, and its entry in the fresh posts
    (with author, products and their categories), so it enters followers' feeds and the fresh
    lists at once. 201; 400 for an invalid or duplicate post."""
    post: NewPost = body()
    pid, author = post.post_id, post.author_id
    text, title, tags, products = post.text, post.title, post.tags, post.product_ids
    created = parse_ts(post.created_at, "post")
    max_age = current_app.config["FRESH_MAX_AGE_S"]
    if max_age > 0 and created < time.time() - max_age:
        raise bad_request(
            f"created_at is more than FEED_FRESH_MAX_AGE_S={max_age:g} seconds ago: posts that "
            "old belong in the training data",
            "post_too_old",
        )
    if created > time.time() + FUTURE_SKEW_S:
        raise bad_request(
            f"created_at is in the future (more than {FUTURE_SKEW_S} seconds ahead of the "
            "server's clock): a post is created when it is sent",
            "post_in_future",
        )
    doc = c.post_document(pid, author, created, text, title, tags, products)
    s = store()
    _, table = live_table()
    if table is not None and pid in table.index:  # published: the version has its card
        raise bad_request(f"post {pid!r} already exists", "duplicate_post")
    glob = s.global_state(table.version if table else None, s.overlay_generation())
    if pid in glob["overlay"].deleted or s.tombstoned(pid):  # a deleted post's id is not reused
        raise bad_request(f"post {pid!r} already existed and was deleted", "duplicate_post")
    prods = _products(table, products, glob["catalogue"])  # the live version's and catalogue's
    if not s.add_post(doc, prods, created):
        raise bad_request(f"post {pid!r} already exists", "duplicate_post")
    return jsonify({"post_id": pid}), 201


def _products(
    table: VersionTable | None, product_ids: list[str], catalogue: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Product documents a new card embeds: the live version's, with the live catalogue's
    records on top (products added through ``PUT /v1/products`` since training)."""
    _, prods = store().documents(table, [], product_ids)
    for p in product_ids:
        if p in catalogue:
            prods[p] = {**prods.get(p, {"product_id": p}), **catalogue[p]}
    return prods


# --- moderation ------------------------------------------------------------------------------
#: What ``PATCH /v1/posts/<post_id>`` changes.
EDITABLE = ("text", "title", "tags", "product_ids")


def post_changes(patch: PostPatch) -> tuple[dict[str, Any], bool | None]:
    """(content changes, ``hidden`` or None) of a ``PATCH`` body (checked by
    :class:`service.schemas.PostPatch`, as ``POST /v1/posts`` checks its fields); a 400 when
    it changes nothing."""
    given = patch.model_dump(exclude_unset=True)
    if not given:
        raise bad_request(
            "the body changes nothing: give text, title, tags, product_ids or hidden",
            "empty_patch",
        )
    hidden = given.pop("hidden", None)
    return given, hidden


def _json_dict(raw: Any) -> dict[str, Any]:
    """A stored JSON object (a moderation entry, an API post's fresh metadata); ``{}`` when
    absent or malformed."""
    value = c.decode_json(raw) if raw else None
    return value if isinstance(value, dict) else {}


#: Moderation entries the pruner looks at per write (``HSCAN`` from a stored cursor), and at
#: most when the hash is full (then a write that would pass the cap scans on before a 507).
PRUNE_SCAN = 100
PRUNE_SCAN_FULL = 5_000

Commands = list[tuple[Any, ...]]


def _prune(read: Any, keep: str) -> tuple[Commands, Commands, int]:
    """(document commands, ``{feed}`` commands, entries dropped) of one step of the moderation
    pruner, run under the write's ``WATCH``: the entries of posts that no version in the
    registry lists and that are no API post any more (:meth:`service.store.Store.known_posts`)
    are dropped (an edited post's override with them; a deleted post leaves a tombstone that
    keeps ``POST /v1/posts`` from reusing its id for ``FEED_MODERATION_TOMBSTONE_S``). Looks at
    ``PRUNE_SCAN`` entries, up to ``PRUNE_SCAN_FULL`` when the hash is at the cap; nothing
    while a publish runs (its version may list them: the publish lock is watched)."""
    read("WATCH", c.PUBLISH_LOCK_KEY)
    if read("EXISTS", c.PUBLISH_LOCK_KEY):
        return [], [], 0
    full = int(read("HLEN", c.MODERATION_KEY)) >= current_app.config["MODERATION_MAX"]
    budget = PRUNE_SCAN_FULL if full else PRUNE_SCAN
    cursor = int(read("GET", c.MODERATION_SCAN_KEY) or 0)
    entries: dict[str, dict[str, Any]] = {}
    while len(entries) < budget:
        cursor, found = read("HSCAN", c.MODERATION_KEY, cursor, "COUNT", PRUNE_SCAN)
        entries.update({c.text(p): _json_dict(e) for p, e in found.items()})
        if int(cursor) == 0:
            break
    entries.pop(keep, None)
    gone = set(entries) - store().known_posts(list(entries))
    docs: Commands = []
    own: Commands = [("SET", c.MODERATION_SCAN_KEY, int(cursor))]
    ttl = int(current_app.config["MODERATION_TOMBSTONE_S"])
    for post in sorted(gone):
        own.append(("HDEL", c.MODERATION_KEY, post))
        if entries[post].get("deleted") and ttl > 0:
            own.append(("SET", c.tombstone_key(post), 1, "EX", ttl))
        if entries[post].get("edited"):
            docs += [("DEL", k) for k in c.override_keys(post)]
    return docs, own, len(gone)


def _cap_check(read: Any, entry: Mapping[str, Any], dropped: int) -> None:
    """507 when a new moderation entry would pass ``FEED_MODERATION_MAX`` (``dropped``: the
    entries the pruner drops in the same transaction)."""
    most = current_app.config["MODERATION_MAX"]
    if not entry and int(read("HLEN", c.MODERATION_KEY)) - dropped >= most:
        raise ApiError(
            507,
            "moderation_full",
            f"{most} posts are moderated already (FEED_MODERATION_MAX): raise it, or unhide "
            "posts that no longer need it; nothing was changed",
        )


def _current_post(post_id: str) -> tuple[VersionTable | None, dict[str, Any], bool, dict[str, Any]]:
    """(the table of a version in use that lists the post: the live one first, the post's
    document as served now, whether it was created through the API, the global state); 404
    for a post that neither a version in use (live, rollback, experiment arms:
    :func:`feed.versions.in_use`) nor the API knows, or one deleted."""
    s = store()
    live = s.live_version()
    glob = s.global_state(live, s.overlay_generation())
    ov = glob["overlay"]
    if post_id in ov.deleted:
        raise not_found(f"unknown post {post_id!r}")
    tables = [s.table(v) for v in [live, *sorted(in_use(s.r) - {live})] if v]
    known = [t for t in tables if t is not None]
    table = next((t for t in known if post_id in t.index), known[0] if known else None)
    posts, _ = s.documents(table, [post_id], [], ov.edited)
    if post_id not in posts:
        raise not_found(f"unknown post {post_id!r}")
    api = post_id not in ov.edited and (table is None or post_id not in table.index)
    return table, posts[post_id], api, glob


def _still_api_post(read: Any, post_id: str) -> None:
    """Watch an API post's fresh entry and metadata, and 404 when it was pruned meanwhile
    (its document and card are gone: nothing may recreate them without their TTL)."""
    read("WATCH", c.FRESH_KEY, c.FRESH_META_KEY)
    if read("ZSCORE", c.FRESH_KEY, post_id) is None:
        raise not_found(f"unknown post {post_id!r}")


@bp.patch("/v1/posts/<post_id>")
@api(
    "Moderate a post: edit text, title, tags, products, or hide/unhide it; every feed, similar "
    "and gift list follows on its next request. Logs a post_update event.",
    description="Admin token; the API key only when no admin token is configured "
    "(docs/security.md).",
    body=PostPatch,
    ok={200: PostPatched},
    errors={
        400: "Invalid body (the message names the field), or an empty one (empty_patch).",
        401: "No valid credential.",
        403: "API key where the admin token is required, or none configured.",
        404: "Unknown or deleted post.",
        507: "FEED_MODERATION_MAX posts are moderated (moderation_full).",
    },
    security=[{"bearerAuth": []}, {"apiKeyAuth": []}],
    tags=("posts",),
)
def update_post(post_id: str) -> Any:
    """Edit a post (text, title, tags, product_ids) and/or hide or unhide it (``hidden``):
    every page of every version follows on its next request. Any post a version in use
    (live, rollback, experiment arm) lists, or an API post. Admin token (or the API key when
    no admin token is configured: docs/security.md). 200; 400 naming the field; 404."""
    by = require_writer("moderation", admin_only=True)
    check_id(post_id, "post_id")
    changes, hidden = post_changes(body())
    table, current, api, glob = _current_post(post_id)
    doc = {**current, **changes}
    card = b""
    if changes:
        prods = _products(table, doc["product_ids"], glob["catalogue"])
        card = c.encode_json(c.card(doc, prods))
    now = time.time()
    state: dict[str, Any] = {}

    def prepare(read: Any) -> tuple[Commands, Commands]:
        entry = _json_dict(read("HGET", c.MODERATION_KEY, post_id))
        if entry.get("deleted"):
            raise not_found(f"unknown post {post_id!r}")
        new = {k: v for k, v in entry.items() if k in ("hidden", "edited")}
        if hidden is not None:
            new["hidden"] = hidden
        docs: Commands = []
        own: Commands = []
        if changes and api:  # its own document and card, which expire with it
            _still_api_post(read, post_id)
            docs += [  # XX: a document pruned meanwhile is not recreated without its TTL
                ("SET", c.post_doc_key(post_id), c.encode_json(doc), "XX", "KEEPTTL"),
                ("SET", c.card_key(post_id), card, "XX", "KEEPTTL"),
            ]
            meta = _json_dict(read("HGET", c.FRESH_META_KEY, post_id))
            if "product_ids" in changes and meta:
                prods = c.decode_json(card)["products"]
                cats = [p.get("category") or "" for p in prods]
                meta.update(
                    product_ids=doc["product_ids"],
                    category=cats[0] if cats else "",
                    categories=sorted({x for x in cats if x}),
                )
                own.append(("HSET", c.FRESH_META_KEY, post_id, c.encode_json(meta)))
        elif changes:  # a trained post: an override every version prefers
            doc_key, card_key = c.override_keys(post_id)
            docs += [("SET", doc_key, c.encode_json(doc)), ("SET", card_key, card)]
            new["edited"] = True
        new = {k: v for k, v in new.items() if v}
        pruned_docs, pruned, dropped = _prune(read, post_id)
        if new:
            _cap_check(read, entry, dropped)
            own.append(("HSET", c.MODERATION_KEY, post_id, c.encode_json({**new, "ts": now})))
        elif entry:
            own.append(("HDEL", c.MODERATION_KEY, post_id))
        state["hidden"] = bool(new.get("hidden"))
        fields = {"post_id": post_id, "ts": now, "by": by, "hidden": int(state["hidden"])}
        fields["changed"] = "|".join([*changes, *(["hidden"] if hidden is not None else [])])
        for name, value in changes.items():
            fields[name] = "|".join(value) if isinstance(value, list) else value
        own.append(writes_event("post_update", fields))
        return [*docs, *pruned_docs], [*pruned, *own, moderation_bump()]

    store().overlay_write(prepare)
    return jsonify({"post_id": post_id, "hidden": state["hidden"], "changed": list(changes)})


@bp.delete("/v1/posts/<post_id>")
def delete_post(post_id: str) -> Any:
    """Delete a post for good: gone from every page of every version on their next request,
    and after every later training and publish (the takedown is version-independent); its
    page is a 404. Any post a version in use lists, or an API post. Same credentials as
    ``PATCH``. 200; 404 when unknown or already deleted."""
    by = require_writer("moderation", admin_only=True)
    check_id(post_id, "post_id")
    _, _, api, _ = _current_post(post_id)
    now = time.time()

    def prepare(read: Any) -> tuple[Commands, Commands]:
        entry = _json_dict(read("HGET", c.MODERATION_KEY, post_id))
        if entry.get("deleted"):
            raise not_found(f"unknown post {post_id!r}")
        pruned_docs, pruned, dropped = _prune(read, post_id)
        _cap_check(read, entry, dropped)
        docs: Commands
        own: Commands
        if api:
            docs = [("DEL", c.post_doc_key(post_id)), ("DEL", c.card_key(post_id))]
            own = [("ZREM", c.FRESH_KEY, post_id), ("HDEL", c.FRESH_META_KEY, post_id)]
        else:
            docs, own = [("DEL", k) for k in c.override_keys(post_id)], []
        own.append(("HSET", c.MODERATION_KEY, post_id, c.encode_json({"deleted": True, "ts": now})))
        own.append(writes_event("post_delete", {"post_id": post_id, "ts": now, "by": by}))
        return [*docs, *pruned_docs], [*pruned, *own, moderation_bump()]

    store().overlay_write(prepare)
    return jsonify({"post_id": post_id, "deleted": True})


def writes_event(kind: str, fields: Mapping[str, Any]) -> tuple[Any, ...]:
    """The event-log ``XADD`` of a moderation action."""
    return overlay_event(kind, fields, current_app.config)
