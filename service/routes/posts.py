"""Posts: ``GET /v1/posts/<post_id>``, ``GET /v1/posts/<post_id>/similar`` and
``POST /v1/posts``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from flask import Blueprint, jsonify

from feed import contract as c
from service.errors import bad_request, not_found
from service.pages import cards, hydrate, in_stock
from service.ranking import Candidate, fields, post_meta
from service.request import (
    check_id,
    json_body,
    limit_arg,
    parse_ts,
    resolve_version,
    store,
    version_table,
)
from service.state import FreshPosts, VersionTable

bp = Blueprint("posts", __name__)


@bp.get("/v1/posts/<post_id>")
def get_post(post_id: str) -> Any:
    check_id(post_id, "post_id")
    raw = cards([post_id]).get(post_id)
    if raw is None:
        raise not_found(f"unknown post {post_id!r}")
    return jsonify(in_stock(orjson.loads(raw), store().global_state()["oos"]))


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
    version = resolve_version("", None).model_version
    table = version_table(version)
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
    doc = c.post_document(pid, author, created, text, title, tags, products)
    s = store()
    _, prods = s.documents([], products)
    if not s.add_post(doc, prods, created):
        raise bad_request(f"post {pid!r} already exists", "duplicate_post")
    return jsonify({"post_id": pid}), 201
