"""One feed page: mix candidate sources, filter, rescore lightly, pick a diverse page.

Pure functions over what :mod:`service.store` read; no Redis here, so every rule is testable.
A request's candidates come from five sources, each yielding ``(post id, score, reason)``:

* :func:`precomputed`: the version's ranked list for the user (scores in [0, 1]);
* :func:`realtime`: the user's real-time candidates, written by events: neighbours of posts
  liked since training (``similar_to:<post>``) and posts of just-followed authors
  (``followed_author``); entries whose cause was undone (unlike, unfollow) are skipped;
* :func:`fresh`: posts created through ``POST /v1/posts`` (``followed_author`` when the user
  follows the author, else ``fresh``);
* :func:`interest_matches`: posts matching the ``interests=`` hint (``interest:<term>``);
* :func:`trending`: the version's trending list, the fallback for everyone.

:func:`gather` keeps each post's best-scoring source, :func:`filtered` drops what the user must
not see and adds the freshness bonus, and :func:`diverse_page` picks the page. Every weight is
configuration (:mod:`service.config`).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from feed.contract import REASON_CODE, REASONS
from service.store import UserState, VersionTable

Offer = tuple[str, float, str]  # (post id, score, reason)

_CJK_RUN = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+$")
_FOLLOWED = REASON_CODE["followed_author"]


@dataclass
class Candidate:
    """A post on its way to a page: its score, why it is there, and what the rules need."""

    post_id: str
    score: float
    reason: str
    author_id: str
    category: str
    created: float | None
    product_ids: list[str]
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class PostMeta:
    """What ranking needs to know about a post, from the version table or the fresh posts."""

    author_id: str
    category: str
    created: float | None
    product_ids: list[str]
    categories: tuple[str, ...]


def post_meta(pid: str, table: VersionTable, fresh_meta: Mapping[str, Any]) -> PostMeta | None:
    """A post's metadata: the version's post table first, then posts created through the API.

    Returns None for a post neither knows (e.g. a real-time candidate of an older version).
    """
    i = table.index.get(pid)
    if i is not None:
        return PostMeta(
            table.authors[i],
            table.categories[i],
            table.created[i],
            table.product_ids[i],
            table.categories_of(i),
        )
    m = fresh_meta.get(pid)
    if not m:
        return None
    category = m.get("category", "") or ""
    cats = tuple(m.get("categories") or ([category] if category else []))
    return PostMeta(
        m.get("author_id", ""), category, m.get("created_at"), list(m.get("product_ids", [])), cats
    )


def following(state: UserState) -> set[str]:
    """Authors the user follows now (training-time follows minus later unfollows)."""
    return state.follows - state.unfollows


# --- sources -----------------------------------------------------------------------------------
def precomputed(state: UserState, table: VersionTable) -> Iterator[Offer]:
    """The version's ranked candidates; social ones of authors unfollowed since are skipped."""
    idx, scores, reasons = state.candidates
    n = len(table.post_ids)
    for i, s, r in zip(idx.tolist(), scores.tolist(), reasons.tolist(), strict=True):
        if not 0 <= i < n:
            continue
        if r == _FOLLOWED and table.authors[i] in state.unfollows:
            continue
        yield table.post_ids[i], s, REASONS[r] if r < len(REASONS) else "collaborative"


def realtime(
    state: UserState, table: VersionTable, fresh_meta: Mapping[str, Any], cfg: Mapping[str, Any]
) -> Iterator[Offer]:
    """Real-time candidates written by events, minus those whose cause was undone.

    A ``similar_to:<post>`` entry counts while ``<post>`` is still liked; a
    ``followed_author`` entry while its author is still followed.
    """
    follows = following(state)
    for pid, s, reason in state.realtime:
        if reason.startswith("similar_to:"):
            if reason.partition(":")[2] not in state.liked:
                continue
            yield pid, cfg["RT_WEIGHT"] * s, reason
        elif reason == "followed_author":
            meta = post_meta(pid, table, fresh_meta)
            if meta is not None and meta.author_id in follows:
                yield pid, cfg["FOLLOW_WEIGHT"] * s, reason
        else:
            yield pid, cfg["RT_WEIGHT"] * s, reason


def fresh(state: UserState, glob: Mapping[str, Any], cfg: Mapping[str, Any]) -> Iterator[Offer]:
    """Posts created through the API: the followed authors' ones first."""
    follows = following(state)
    for pid, _ts in glob["fresh"]:
        author = (glob["fresh_meta"].get(pid) or {}).get("author_id")
        if author in follows:
            yield pid, cfg["FOLLOW_WEIGHT"], "followed_author"
        else:
            yield pid, cfg["FRESH_WEIGHT"], "fresh"


def interest_tokens(term: str) -> list[str]:
    """Index tokens a hint term can match: the term, its words, and CJK character bigrams.

    The version's token index holds jieba words and every CJK bigram (see
    ``feed.features.text.tokenize``), so bigrams match without segmenting here.

    >>> interest_tokens("Pour Over"), interest_tokens("保濕精華")
    (['pour over', 'pour', 'over'], ['保濕精華', '保濕', '濕精', '精華'])
    """
    term = term.strip().lower()
    out = [term] if term else []
    for word in term.split():
        if word not in out:
            out.append(word)
        if _CJK_RUN.match(word) and len(word) > 2:
            out.extend(w for i in range(len(word) - 1) if (w := word[i : i + 2]) not in out)
    return out


def interest_matches(
    terms: Iterable[str],
    table: VersionTable,
    tokens: Mapping[str, np.ndarray],
    cfg: Mapping[str, Any],
) -> Iterator[Offer]:
    """Posts whose category or text matches a term of the ``interests=`` hint, best first.

    A term names a category (every post linking a product of it, trending ones first) or a
    word (the version's token index). Scores fall from ``INTEREST_WEIGHT`` to half of it down
    each term's list of at most ``INTEREST_POSTS_PER_TERM`` posts.
    """
    cap = max(cfg["INTEREST_POSTS_PER_TERM"], 1)
    for term in terms:
        found: dict[int, None] = dict.fromkeys(table.posts_in_category(term.strip().lower()))
        for tok in interest_tokens(term):
            found.update(dict.fromkeys(tokens.get(tok, np.zeros(0, dtype=np.int64)).tolist()))
        picked = [i for i in found if 0 <= i < len(table.post_ids)][:cap]
        for rank, i in enumerate(picked):
            score = cfg["INTEREST_WEIGHT"] * (1.0 - 0.5 * rank / len(picked))
            yield table.post_ids[i], score, f"interest:{term.strip()}"


def trending(table: VersionTable, cfg: Mapping[str, Any]) -> Iterator[Offer]:
    """The version's ``TRENDING_CANDIDATES`` best trending posts, weighted down to a fallback."""
    n = cfg["TRENDING_CANDIDATES"]
    for i, s in zip(table.trending[:n].tolist(), table.trending_scores[:n].tolist(), strict=True):
        if 0 <= i < len(table.post_ids):
            yield table.post_ids[i], cfg["TRENDING_WEIGHT"] * s, "trending"


def gather(
    state: UserState,
    table: VersionTable,
    glob: Mapping[str, Any],
    cfg: Mapping[str, Any],
    interests: Iterable[str] = (),
    tokens: Mapping[str, np.ndarray] | None = None,
) -> dict[str, tuple[float, str]]:
    """Every candidate post -> (score, reason), keeping each post's best-scoring source.

    Parameters
    ----------
    state : the user's state (one pipelined read)
    table : the version's post table
    glob : the global state (fresh posts and their metadata, out-of-stock products)
    cfg : the service configuration (weights)
    interests : terms of the ``interests=`` hint, if any
    tokens : the version's token index (needed only with ``interests``)
    """
    best: dict[str, tuple[float, str]] = {}
    sources = [
        precomputed(state, table),
        realtime(state, table, glob["fresh_meta"], cfg),
        fresh(state, glob, cfg),
        interest_matches(interests, table, tokens or {}, cfg),
        trending(table, cfg),
    ]
    for source in sources:
        for pid, score, reason in source:
            cur = best.get(pid)
            if cur is None or score > cur[0]:
                best[pid] = (score, reason)
    return best


# --- filters and rescoring ---------------------------------------------------------------------
def filtered(
    user_id: str,
    best: Mapping[str, tuple[float, str]],
    state: UserState,
    table: VersionTable,
    glob: Mapping[str, Any],
    cfg: Mapping[str, Any],
    now: float,
    keep: int | None = None,
) -> list[Candidate]:
    """Drop what the user must not see; add the freshness bonus.

    With ``keep``, candidates are examined best first and the scan stops once ``keep`` have
    passed and no later one can beat them even with the largest freshness bonus: the best
    ``keep`` are the same as with a full scan, for a fraction of the work.

    Dropped: posts seen or served within ``SEEN_WINDOW_S``, liked or hidden; the user's own
    posts; posts of muted authors (blocked or "see fewer"); posts whose every linked product is
    out of stock; posts no table knows. The bonus is
    ``FRESHNESS_WEIGHT * 0.5 ** (age / FRESHNESS_HALF_LIFE_S)``.
    """
    excluded = state.seen | state.liked | state.hidden
    oos = glob["oos"]
    half_life = max(cfg["FRESHNESS_HALF_LIFE_S"], 1)
    max_bonus = max(cfg["FRESHNESS_WEIGHT"], 0.0)
    out: list[Candidate] = []
    kept: list[float] = []  # min-heap of the best ``keep`` final scores so far
    for pid, (score, reason) in sorted(best.items(), key=lambda kv: -kv[1][0]):
        if keep is not None and len(kept) >= keep and score + max_bonus < kept[0]:
            break
        if pid in excluded:
            continue
        meta = post_meta(pid, table, glob["fresh_meta"])
        if meta is None or meta.author_id == user_id or meta.author_id in state.muted:
            continue
        if meta.product_ids and all(p in oos for p in meta.product_ids):
            continue
        if meta.created is not None:
            score += cfg["FRESHNESS_WEIGHT"] * 0.5 ** (max(now - meta.created, 0.0) / half_life)
        if keep is not None:
            (heapq.heappush if len(kept) < keep else heapq.heappushpop)(kept, score)
        out.append(
            Candidate(
                pid,
                score,
                reason,
                meta.author_id,
                meta.category,
                meta.created,
                meta.product_ids,
                meta.categories,
            )
        )
    return out


def _adjusted(cand: Candidate, per_cat: Mapping[str, int], discount: float) -> float:
    """The score after the category discount: times ``1 - discount`` per earlier item on the
    page sharing the post's most repeated category (relative, so sources of different score
    scales keep their order among themselves)."""
    if not cand.categories:
        return cand.score
    repeats = max(per_cat.get(cat, 0) for cat in cand.categories)
    return cand.score * (1.0 - min(discount, 1.0)) ** repeats


def _pick(
    pool: list[Candidate],
    page: list[Candidate],
    per_author: Mapping[str, int],
    per_cat: Mapping[str, int],
    cfg: Mapping[str, Any],
) -> tuple[int, float]:
    """Index and adjusted score of the best next item: first among those keeping the author
    rules (not the previous item's author, under ``AUTHOR_MAX_PER_PAGE``), else among all.

    ``pool`` is sorted by score, best first, and the discount only lowers a non-negative
    score, so the scan stops at the first candidate whose raw score cannot beat the best
    adjusted one found."""
    prev = page[-1].author_id if page else None
    cap = max(cfg["AUTHOR_MAX_PER_PAGE"], 1)
    for strict in (True, False):
        best_i, best_s = -1, float("-inf")
        for i, cand in enumerate(pool):
            if 0 <= cand.score <= best_s:
                break
            if strict and (cand.author_id == prev or per_author.get(cand.author_id, 0) >= cap):
                continue
            s = _adjusted(cand, per_cat, cfg["CATEGORY_DISCOUNT"])
            if s > best_s:
                best_i, best_s = i, s
        if best_i >= 0:
            return best_i, best_s
    return -1, float("-inf")


def pool_size(limit: int, cfg: Mapping[str, Any]) -> int:
    """How many of the best candidates a page of ``limit`` is picked from."""
    return max(limit * max(cfg["DIVERSITY_POOL_FACTOR"], 1), 50)


def diverse_page(cands: list[Candidate], limit: int, cfg: Mapping[str, Any]) -> list[Candidate]:
    """Greedy page: best adjusted score first, never the same author twice in a row, at most
    ``AUTHOR_MAX_PER_PAGE`` per author (relaxed only when nothing else is left), and a
    relative ``CATEGORY_DISCOUNT`` per earlier item of the same category (over every linked
    product).

    Ties break on the post id, so the same inputs always give the same page.
    """
    pool = heapq.nlargest(pool_size(limit, cfg), cands, key=lambda x: (x.score, x.post_id))
    page: list[Candidate] = []
    per_author: dict[str, int] = {}
    per_cat: dict[str, int] = {}
    while pool and len(page) < limit:
        i, score = _pick(pool, page, per_author, per_cat, cfg)
        chosen = pool.pop(i)
        chosen.score = score
        page.append(chosen)
        per_author[chosen.author_id] = per_author.get(chosen.author_id, 0) + 1
        for cat in chosen.categories:
            per_cat[cat] = per_cat.get(cat, 0) + 1
    return page
