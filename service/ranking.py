"""One feed page: mix candidate sources, filter, rescore lightly, pick a diverse page.

Pure functions over what :mod:`service.store` read; no Redis here, so every rule is testable.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from feed.contract import REASONS
from service.store import UserState, VersionTable


@dataclass
class Candidate:
    post_id: str
    score: float
    reason: str
    author_id: str
    category: str
    created: float | None
    product_ids: list[str]


def _meta(pid: str, table: VersionTable, fresh_meta: dict[str, Any],
          ) -> tuple[str, str, float | None, list[str]] | None:
    i = table.index.get(pid)
    if i is not None:
        return table.authors[i], table.categories[i], table.created[i], table.product_ids[i]
    m = fresh_meta.get(pid)
    if m:
        return m.get("author_id", ""), m.get("category", ""), m.get("created_at"), m.get(
            "product_ids", [])
    return None


def gather(state: UserState, table: VersionTable, glob: dict[str, Any], cfg: dict[str, Any],
           ) -> dict[str, tuple[float, str]]:
    """Every candidate post -> (score, reason), keeping each post's best-scoring source."""
    best: dict[str, tuple[float, str]] = {}

    def offer(pid: str, score: float, reason: str) -> None:
        cur = best.get(pid)
        if cur is None or score > cur[0]:
            best[pid] = (score, reason)

    idx, scores, reasons = state.candidates
    for i, s, r in zip(idx.tolist(), scores.tolist(), reasons.tolist(), strict=True):
        if 0 <= i < len(table.post_ids):
            offer(table.post_ids[i], s, REASONS[r] if r < len(REASONS) else "collaborative")
    for pid, s in state.realtime:
        offer(pid, cfg["RT_WEIGHT"] * s, state.realtime_why.get(pid, "similar_to"))
    follows = state.follows - state.unfollows
    for pid, _ts in glob["fresh"]:
        author = (glob["fresh_meta"].get(pid) or {}).get("author_id")
        if author in follows:
            offer(pid, cfg["FOLLOW_WEIGHT"], "followed_author")
        else:
            offer(pid, cfg["FRESH_WEIGHT"], "fresh")
    for i, s in zip(table.trending.tolist(), table.trending_scores.tolist(), strict=True):
        offer(table.post_ids[i], cfg["TRENDING_WEIGHT"] * s, "trending")
    return best


def filtered(user_id: str, best: dict[str, tuple[float, str]], state: UserState,
             table: VersionTable, glob: dict[str, Any], served: set[str], cfg: dict[str, Any],
             now: float) -> list[Candidate]:
    """Drop what the user must not see; add the freshness bonus."""
    excluded = state.seen | state.liked | state.hidden | served
    oos = glob["oos"]
    half_life = max(cfg["FRESHNESS_HALF_LIFE_S"], 1)
    out = []
    for pid, (score, reason) in best.items():
        if pid in excluded:
            continue
        meta = _meta(pid, table, glob["fresh_meta"])
        if meta is None:
            continue
        author, category, created, products = meta
        if author == user_id or author in state.muted:
            continue
        if reason == "followed_author" and author in state.unfollows:
            continue
        if products and all(p in oos for p in products):
            continue
        if created is not None:
            score += cfg["FRESHNESS_WEIGHT"] * 0.5 ** (max(now - created, 0.0) / half_life)
        out.append(Candidate(pid, score, reason, author, category, created, products))
    return out


def diverse_page(cands: list[Candidate], limit: int, cfg: dict[str, Any]) -> list[Candidate]:
    """Greedy page: best adjusted score first, never the same author twice in a row, at most
    ``AUTHOR_MAX_PER_PAGE`` per author, and a discount per repeated category."""
    pool = heapq.nlargest(max(limit * 5, 50), cands, key=lambda x: (x.score, x.post_id))
    page: list[Candidate] = []
    per_author: dict[str, int] = {}
    per_cat: dict[str, int] = {}
    cap = max(cfg["AUTHOR_MAX_PER_PAGE"], 1)
    while pool and len(page) < limit:
        prev = page[-1].author_id if page else None
        best_i, best_s = -1, float("-inf")
        for strict in (True, False):
            for i, cand in enumerate(pool):
                if strict and (cand.author_id == prev or per_author.get(cand.author_id, 0) >= cap):
                    continue
                s = cand.score - cfg["CATEGORY_DISCOUNT"] * per_cat.get(cand.category, 0) \
                    if cand.category else cand.score
                if s > best_s:
                    best_i, best_s = i, s
            if best_i >= 0:
                break
        chosen = pool.pop(best_i)
        chosen.score = best_s
        page.append(chosen)
        per_author[chosen.author_id] = per_author.get(chosen.author_id, 0) + 1
        if chosen.category:
            per_cat[chosen.category] = per_cat.get(chosen.category, 0) + 1
    return page
