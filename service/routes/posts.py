"""Posts: ``GET /v1/posts/<post_id>``, ``GET /v1/posts/<post_id>/similar`` and
``POST /v1/posts``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from flask import Blueprint, current_app, jsonify

from feed import contract as c
from feed.serving.ranking import Candidate, fields, post_meta
from feed.serving.state import FreshPosts, VersionTable
from service.errors import bad_request, not_found
from service.pages import cards, hydrate, in_stock
from service.request import (
    check_id,
    json_body,
    limit_arg,
    parse_ts,
    resolve_version,
    store,
    version_table,
)

bp = Blueprint("posts", __name__)


def _live_table() -> VersionTable | None:
    """The live version's post table; None when no servable version is live (then only posts
    created through the API are known)."""
    live = store().live_version()
    return store().table(live) if live else None


@bp.get("/v1/posts/<post_id>")
def get_post(post_id: str) -> Any:
    """The post's card as the live version serves it (an API-created post's own card when the
    live version does not list it), with stock as of the live version's stock set."""
    check_id(post_id, "post_id")
    table = _live_table()
    raw = cards(table, [post_id]).get(post_id)
    if raw is None:
        raise not_found(f"unknown post {post_id!r}")
    oos = store().global_state(table.version if table else None)["oos"]
    return jsonify(in_stock(orjson.loads(raw), oos))


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
    glob = store().global_state(version)
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
    items = [item for _, item in hydrate(table, page, oos)]
    return jsonify({"post_id": post_id, "model_version": version, "items": items})


def _text_field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    return value if isinstance(value, str) else ""


def _post_content(body: Mapping[str, Any]) -> tuple[str, str, list[str], list[str]]:
    """(text, title, tags, product ids) of a new post, within the ``POST_*`` limits; a 400
    naming the field and its limit otherwise."""
    cfg = current_app.config
    out: dict[str, Any] = {}
    for name, kind, setting in (
        ("text", str, "POST_TEXT_MAX"),
        ("title", str, "POST_TITLE_MAX"),
        ("tags", list, "POST_TAGS_MAX"),
        ("product_ids", list, "POST_PRODUCTS_MAX"),
    ):
        value = body.get(name, kind())
        if kind is str and not isinstance(value, str):
            raise bad_request(f"{name} must be a string", f"invalid_{name}")
        if kind is list and not (
            isinstance(value, list) and all(isinstance(x, str) for x in value)
        ):
            raise bad_request(f"{name} must be a list of strings", f"invalid_{name}")
        _within(name, value, cfg[setting], setting, "characters" if kind is str else "entries")
        out[name] = value
    for i, tag in enumerate(out["tags"]):
        _within(f"tags[{i}]", tag, cfg["POST_TAG_MAX"], "POST_TAG_MAX", "characters")
    for p in out["product_ids"]:
        check_id(p, "product_id")
    return out["text"], out["title"], out["tags"], out["product_ids"]


def _within(name: str, value: str | list[str], most: int, setting: str, unit: str) -> None:
    if len(value) > most:
        raise bad_request(
            f"{name} has {len(value)} {unit}; at most {most} are allowed (FEED_{setting})",
            "post_too_large",
        )


#: How far ahead of the server's clock a post's created_at may be (client clocks drift); a
#: post dated later would stay at the top of fresh lists and outlive its own expiry.
FUTURE_SKEW_S = 300


@bp.post("/v1/posts")
def create_post() -> Any:
    """Store a post created since training: its document, and its entry in the fresh posts
    (with author, products and their categories), so it enters followers' feeds and the fresh
    lists at once. 201; 400 for an invalid or duplicate post."""
    body = json_body()
    pid = check_id(_text_field(body, "post_id"), "post_id")
    author = check_id(_text_field(body, "author_id"), "author_id")
    text, title, tags, products = _post_content(body)
    created = parse_ts(body.get("created_at"), "post")
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
    table = _live_table()
    if table is not None and pid in table.index:  # published: the version has its card
        raise bad_request(f"post {pid!r} already exists", "duplicate_post")
    _, prods = s.documents(table, [], products)  # its card embeds the live version's products
    if not s.add_post(doc, prods, created):
        raise bad_request(f"post {pid!r} already exists", "duplicate_post")
    return jsonify({"post_id": pid}), 201
