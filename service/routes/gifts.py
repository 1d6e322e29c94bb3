"""Gift ideas (挑禮物): products a friend would like, with the posts that show them.

``GET /v1/users/<user_id>/gifts?for=<friend_id>&limit=N`` judges from the *friend's* tastes:
the friend's candidate posts (the version's precomputed list, real-time candidates, followed
authors' fresh posts, trending as the fallback) plus the posts the friend liked since training.
Each post's score is shared among the products it links; a product's score is the sum over
the posts linking it, so a product many of the friend's likely posts show ranks high. Products
the friend already bought (training-time purchases and ``purchase`` events) and products out
of stock are excluded, as are posts the friend hid and authors the friend muted. At most
``GIFT_MAX_PER_CATEGORY`` ideas share a category.

An unknown friend (no candidates, likes or follows) is not an error: the answer is 200 with
gift ideas from trending posts and ``"basis": "trending"`` (otherwise ``"tastes"``). A missing
or invalid ``for`` is a 400 naming it.

The caller is not the friend, so reasons speak of tastes only (:func:`taste_reason`):
``category:<category>``, ``similar_to_liked`` or ``trending``, never a post the friend liked or
an author they follow; posts the friend liked count in the ranking but are shown after the
product's other posts, unmarked (docs/security.md).

Reads: one pipelined read of the friend's keys and one MGET of product and post documents.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from feed.serving.ranking import gather, post_meta
from feed.serving.state import UserState, VersionTable
from service.errors import bad_request
from service.request import check_id, limit_arg, request_id, resolve_version, store, version_table

bp = Blueprint("gifts", __name__)


@dataclass
class Gift:
    """One gift idea: a product, its score, why, and the posts showing it (best first)."""

    product_id: str
    score: float = 0.0
    category: str = ""
    posts: list[tuple[float, str, str]] = field(default_factory=list)  # (order, post, reason)

    @property
    def reason(self) -> str:
        """The reason of the best post showing the product."""
        return max(self.posts)[2] if self.posts else "trending"


def has_tastes(state: UserState) -> bool:
    """True when anything is known about the user's tastes."""
    return bool(
        len(state.candidates[0])
        or state.liked
        or state.realtime
        or (state.follows - state.unfollows)
    )


def taste_posts(
    state: UserState, table: VersionTable, glob: Mapping[str, Any], cfg: Mapping[str, Any]
) -> dict[str, tuple[float, str]]:
    """The friend's candidate posts -> (score, reason), plus posts liked since training
    (``GIFT_LIKED_WEIGHT``, reason ``liked``)."""
    best = gather(state, table, glob, cfg).as_dict(table)
    for pid in state.liked:
        if cfg["GIFT_LIKED_WEIGHT"] > best.get(pid, (float("-inf"), ""))[0]:
            best[pid] = (cfg["GIFT_LIKED_WEIGHT"], "liked")
    return best


#: Sources that come from what the friend engaged with: shown as "similar to posts they like".
_FROM_LIKES = frozenset(
    {"liked", "similar_to", "co_engagement", "collaborative", "purchased_together"}
)


def taste_reason(reason: str, category: str) -> str:
    """What a gift idea may say about why a post of the friend's brought it: ``trending``,
    ``similar_to_liked`` (similar to posts they like) or ``category:<category>`` (they like
    the category); never which post they liked (``similar_to:<post>``) or whom they follow.

    >>> taste_reason("similar_to:p1", "beauty"), taste_reason("followed_author", "beauty")
    ('similar_to_liked', 'category:beauty')
    >>> taste_reason("trending", "beauty"), taste_reason("content", "")
    ('trending', 'similar_to_liked')
    """
    kind = reason.partition(":")[0]
    if kind == "trending":
        return "trending"
    if kind in _FROM_LIKES or not category:
        return "similar_to_liked"
    return f"category:{category}"


def gift_ideas(
    posts: Mapping[str, tuple[float, str]],
    state: UserState,
    table: VersionTable,
    glob: Mapping[str, Any],
    cfg: Mapping[str, Any],
    limit: int,
) -> list[Gift]:
    """Rank products by the summed scores of the posts linking them (see the module doc).

    A post's score is shared among its linked products as ``score / sqrt(n_products)``. Each
    gift keeps its posts as (display order, post, :func:`taste_reason`): a post the friend
    liked is ordered after every other post.
    """
    gifts: dict[str, Gift] = {}
    blocked = state.bought | glob["oos"]
    gone = glob.get("takedown", frozenset())  # moderation
    for pid, (score, reason) in posts.items():
        meta = post_meta(pid, table, glob["fresh"])
        if meta is None or pid in state.hidden or pid in gone or meta.author_id in state.muted:
            continue
        share = score / max(len(meta.product_ids), 1) ** 0.5
        for prod in meta.product_ids:
            if prod in blocked:
                continue
            gift = gifts.setdefault(prod, Gift(prod, category=table.product_category.get(prod, "")))
            gift.score += share
            order = -1.0 if reason == "liked" else score
            gift.posts.append((order, pid, taste_reason(reason, gift.category)))
    return _diverse(gifts.values(), limit, cfg)


def _diverse(gifts: Any, limit: int, cfg: Mapping[str, Any]) -> list[Gift]:
    """The best ``limit`` gifts with at most ``GIFT_MAX_PER_CATEGORY`` per category."""
    cap = max(cfg["GIFT_MAX_PER_CATEGORY"], 1)
    per_cat: dict[str, int] = {}
    out: list[Gift] = []
    for gift in heapq.nlargest(len(gifts), gifts, key=lambda g: (g.score, g.product_id)):
        if gift.category and per_cat.get(gift.category, 0) >= cap:
            continue
        per_cat[gift.category] = per_cat.get(gift.category, 0) + 1
        gift.posts.sort(reverse=True)
        del gift.posts[max(cfg["GIFT_POSTS_PER_PRODUCT"], 1) :]
        out.append(gift)
        if len(out) == limit:
            break
    return out


def _render(
    gifts: list[Gift], table: VersionTable, glob: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Gift ideas with their product and post documents (one MGET; edited posts as edited,
    products as the live catalogue has them); products without a document are dropped."""
    post_ids = list(dict.fromkeys(pid for g in gifts for _, pid, _ in g.posts))
    edited = glob.get("edited", frozenset())
    posts, products = store().documents(table, post_ids, [g.product_id for g in gifts], edited)
    catalogue = glob.get("catalogue") or {}
    out = []
    for g in gifts:
        doc = products.get(g.product_id)
        if g.product_id in catalogue:
            doc = {**(doc or {"product_id": g.product_id}), **catalogue[g.product_id]}
            doc.pop("updated_at", None)
        if doc is None:
            continue
        shown = [
            {
                "post_id": pid,
                "author_id": posts[pid].get("author_id"),
                "title": posts[pid].get("title", ""),
                "text": posts[pid].get("text", ""),
                "created_at": posts[pid].get("created_at"),
                "reason": why,
            }
            for _, pid, why in g.posts
            if pid in posts
        ]
        out.append(
            {
                **doc,
                "in_stock": True,
                "score": round(g.score, 4),
                "reason": g.reason,
                "posts": shown,
            }
        )
    return out


@bp.get("/v1/users/<user_id>/gifts")
def gifts(user_id: str) -> Any:
    """Gift ideas for ``for=<friend_id>`` (see the module doc for the rules)."""
    check_id(user_id, "user_id")
    friend = request.args.get("for")
    if not friend:
        raise bad_request("for is required: the id of the friend to pick a gift for", "missing_for")
    check_id(friend, "for")
    cfg = current_app.config
    limit = limit_arg(cfg["GIFT_DEFAULT_LIMIT"])
    version = resolve_version(user_id, None).model_version
    table = version_table(version)
    s = store()
    state = s.user_state(friend, version, time.time())
    glob = s.global_state(version, state.overlay_generation)
    ideas = gift_ideas(taste_posts(state, table, glob, cfg), state, table, glob, cfg, limit)
    return jsonify(
        {
            "user_id": user_id,
            "for": friend,
            "model_version": version,
            "basis": "tastes" if has_tastes(state) else "trending",
            "request_id": request_id(),
            "items": _render(ideas, table, glob),
        }
    )
