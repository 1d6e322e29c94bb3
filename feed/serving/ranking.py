"""One feed page: mix candidate sources, filter, rescore lightly, pick a diverse page.

Pure functions over what :mod:`service.store` read; no Redis here, so every rule is testable.
A request's candidates come from five sources, each offering posts with a score and a reason
(the version's lists and the fresh posts as arrays over post indices, the rest as
``(post id, score, reason)``):

* :func:`precomputed`: the version's ranked list for the user (scores in [0, 1]);
* :func:`realtime`: the user's real-time candidates, written by events: neighbours of posts
  liked since training (``similar_to:<post>``) and posts of just-followed authors
  (``followed_author``); entries whose cause was undone (unlike, unfollow) are skipped;
* :func:`fresh`: the newest posts created through ``POST /v1/posts`` (``followed_author`` when
  the user follows the author, else ``fresh``), as arrays over
  :class:`~feed.serving.state.FreshPosts`;
* :func:`interest_matches`: posts matching the ``interests=`` hint (``interest:<term>``);
* :func:`trending`: the version's trending list, the fallback for everyone.

:func:`gather` keeps each post's best-scoring source, :func:`filtered` drops what the user must
not see, adds the freshness bonus and keeps the best few (numpy over the version's posts), and
:func:`diverse_page` picks the page from those. Every weight is
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
from feed.serving.policy import NO_SHARES, PagePolicy, Shares
from feed.serving.state import FreshPosts, UserState, VersionTable

#: The weights a page mixes its sources with, and how deep it looks (name, default, meaning): the
#: service's settings of the same names (``FEED_<NAME>``, docs/configuration.md) override them.
RANKING_SETTINGS: tuple[tuple[str, Any, str], ...] = (
    ("RT_WEIGHT", 1.2, "real-time candidate scores (relative to precomputed ones in [0, 1])"),
    ("FOLLOW_WEIGHT", 1.0, "fresh posts of followed authors"),
    ("TRENDING_CANDIDATES", 100, "trending posts offered to every page as the fallback source"),
    ("TRENDING_WEIGHT", 0.15, "trending fallback"),
    ("FRESH_WEIGHT", 0.3, "posts created through the API, not followed"),
    ("FRESHNESS_WEIGHT", None, "bonus * 0.5 ** (age / half-life); unset: the version's policy"),
    ("FRESHNESS_HALF_LIFE_S", 3 * 86_400, "half-life of the freshness bonus, seconds"),
    ("DIVERSITY_POOL_FACTOR", 5, "a page is picked from the best limit * this (>= 50) candidates"),
    ("INTEREST_WEIGHT", 0.8, "posts matching the interests= hint (categories or words)"),
    ("INTEREST_POSTS_PER_TERM", 100, "matching posts taken per term, best first"),
)
RANKING_DEFAULTS: dict[str, Any] = {name: default for name, default, _ in RANKING_SETTINGS}

Offer = tuple[str, float, str]  # (post id, score, reason)

_CJK_RUN = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+$")
_FOLLOWED = REASON_CODE["followed_author"]
#: The reasons a page can give: the candidate codes' (:data:`feed.contract.REASONS`) and
#: ``friend``, a social candidate whose author the user does not follow but is among their
#: published ties (group co-members, shares): relabelled at serving, so no contract change.
SERVING_REASONS = (*REASONS, "friend")
_FRIEND = len(REASONS)


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

    def candidate(self, post_id: str, score: float, reason: str) -> Candidate:
        return Candidate(
            post_id,
            score,
            reason,
            self.author_id,
            self.category,
            self.created,
            self.product_ids,
            self.categories,
        )


def fields(posts: VersionTable | FreshPosts, i: int) -> tuple[Any, ...]:
    """Post ``i``'s :class:`PostMeta` fields, from the version's table or the fresh posts."""
    return (
        posts.authors[i],
        posts.categories[i],
        posts.created[i],
        posts.product_ids[i],
        posts.categories_of(i),
    )


def post_meta(pid: str, table: VersionTable, fresh: FreshPosts) -> PostMeta | None:
    """A post's metadata: the version's post table first, then posts created through the API.

    Returns None for a post neither knows (e.g. a real-time candidate of an older version).
    """
    i = table.index.get(pid)
    if i is not None:
        return PostMeta(*fields(table, i))
    j = fresh.index.get(pid)
    return None if j is None else PostMeta(*fields(fresh, j))


def following(state: UserState) -> set[str]:
    """Authors the user follows now (training-time follows minus later unfollows)."""
    return state.follows - state.unfollows


# --- sources -----------------------------------------------------------------------------------
@dataclass
class Offers:
    """Every candidate post with its best-scoring source.

    Parallel arrays over post indices (``idx``, ``score`` and ``why``, an index into
    ``reasons``), so filters and the freshness bonus run vectorized: the version's posts, and
    the API-created posts it does not know (``fresh_*``, over :class:`FreshPosts`). Posts
    neither knows are dropped.
    """

    idx: np.ndarray
    score: np.ndarray
    why: np.ndarray
    reasons: list[str]
    fresh: FreshPosts
    fresh_idx: np.ndarray
    fresh_score: np.ndarray
    fresh_why: np.ndarray

    def as_dict(self, table: VersionTable) -> dict[str, tuple[float, str]]:
        """Post id -> (score, reason), every post."""
        out = {}
        for ids, idx, score, why in (
            (table.post_ids, self.idx, self.score, self.why),
            (self.fresh.post_ids, self.fresh_idx, self.fresh_score, self.fresh_why),
        ):
            rows = zip(idx.tolist(), score.tolist(), why.tolist(), strict=True)
            out.update({ids[i]: (s, self.reasons[w]) for i, s, w in rows})
        return out


_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


class _Collector:
    """Offers from several sources, in order: on equal scores the earlier source wins."""

    def __init__(self, table: VersionTable, fresh: FreshPosts) -> None:
        self.table, self.fresh = table, fresh
        self.reasons: dict[str, int] = {r: i for i, r in enumerate(SERVING_REASONS)}
        self.arrays: tuple[list[_Arrays], list[_Arrays]] = ([], [])  # version's, fresh
        self.rows: tuple[list[tuple[int, float, int]], ...] = ([], [])

    def add_arrays(
        self, idx: np.ndarray, score: np.ndarray, why: np.ndarray, part: int = 0
    ) -> None:
        """Offers over the version's posts (``part`` 0) or the fresh posts (1)."""
        if not len(idx):
            return
        self._flush()
        self.arrays[part].append(
            (idx.astype(np.int64), score.astype(np.float64), why.astype(np.int64))
        )

    def add(self, pid: str, score: float, reason: str) -> None:
        i = self.table.index.get(pid)
        part = 0
        if i is None:
            i, part = self.fresh.index.get(pid), 1
            if i is None:  # neither the version nor the fresh posts know it
                return
        self.rows[part].append((i, score, self.reasons.setdefault(reason, len(self.reasons))))

    def _flush(self) -> None:
        for part, rows in enumerate(self.rows):
            if rows:
                idx, score, why = zip(*rows, strict=True)
                self.arrays[part].append((np.array(idx), np.array(score), np.array(why)))
                rows.clear()

    def offers(self) -> Offers:
        self._flush()
        (idx, score, why), (fidx, fscore, fwhy) = (_best_per_post(a) for a in self.arrays)
        return Offers(idx, score, why, list(self.reasons), self.fresh, fidx, fscore, fwhy)


def _best_per_post(arrays: list[_Arrays]) -> _Arrays:
    """Each post once, with its best offer (ties: the earlier source)."""
    if not arrays:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    idx, score, why = (np.concatenate(a) for a in zip(*arrays, strict=True))
    order = np.argsort(-score, kind="stable")  # best first; ties keep source order
    _, first = np.unique(idx[order], return_index=True)
    keep = order[first]
    return idx[keep], score[keep], why[keep]


def precomputed(state: UserState, table: VersionTable) -> _Arrays:
    """The version's ranked candidates (indices, scores, reason codes into
    :data:`SERVING_REASONS`); social ones of authors unfollowed since are skipped, social
    ones of ties the user does not follow say ``friend``."""
    idx, scores, reasons = state.candidates
    ok = (idx >= 0) & (idx < len(table.post_ids))
    if state.unfollows:
        gone = [table.author_index[a] for a in state.unfollows if a in table.author_index]
        codes = table.author_codes[np.where(ok, idx, 0)]
        ok &= ~((reasons == _FOLLOWED) & np.isin(codes, gone))
    why = np.where(reasons < len(REASONS), reasons, 0)  # unknown codes: "collaborative"
    friends = [table.author_index[a] for a in state.ties - following(state)
               if a in table.author_index]  # fmt: skip
    if friends:  # a tie's post, not a followed author's: say so
        codes = table.author_codes[np.where(ok, idx, 0)]
        why = np.where((why == _FOLLOWED) & np.isin(codes, friends), _FRIEND, why)
    return idx[ok], scores[ok], why[ok]


def realtime(
    state: UserState, table: VersionTable, fresh: FreshPosts, cfg: Mapping[str, Any]
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
            meta = post_meta(pid, table, fresh)
            if meta is not None and meta.author_id in follows:
                yield pid, cfg["FOLLOW_WEIGHT"] * s, reason
        else:
            yield pid, cfg["RT_WEIGHT"] * s, reason


def fresh(
    state: UserState, posts: FreshPosts, table: VersionTable, cfg: Mapping[str, Any]
) -> tuple[_Arrays, _Arrays]:
    """Posts created through the API: the followed authors' ones at ``FOLLOW_WEIGHT``
    (``followed_author``), the others at ``FRESH_WEIGHT`` (``fresh``). Returns the offers of
    posts the version knows (its indices) and of the others (:class:`FreshPosts` indices)."""
    if not len(posts):
        empty = np.zeros(0, np.int64)
        return (empty, empty, empty), (empty, empty, empty)
    follows = [posts.author_index[a] for a in following(state) if a in posts.author_index]
    followed = _among(posts.author_codes, follows) if follows else np.zeros(len(posts), bool)
    score = np.where(followed, cfg["FOLLOW_WEIGHT"], cfg["FRESH_WEIGHT"])
    why = np.where(followed, _FOLLOWED, REASON_CODE["fresh"])
    known = posts.in_table(table)
    mine = known >= 0
    return (known[mine], score[mine], why[mine]), (np.flatnonzero(~mine), score[~mine], why[~mine])


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


def trending(table: VersionTable, cfg: Mapping[str, Any]) -> _Arrays:
    """The version's ``TRENDING_CANDIDATES`` best trending posts, weighted down to a fallback."""
    n = cfg["TRENDING_CANDIDATES"]
    idx, scores = table.trending[:n], table.trending_scores[:n]
    ok = (idx >= 0) & (idx < len(table.post_ids))
    return idx[ok], cfg["TRENDING_WEIGHT"] * scores[ok], np.full(ok.sum(), REASON_CODE["trending"])


def gather(
    state: UserState,
    table: VersionTable,
    glob: Mapping[str, Any],
    cfg: Mapping[str, Any],
    interests: Iterable[str] = (),
    tokens: Mapping[str, np.ndarray] | None = None,
) -> Offers:
    """Every candidate post with its best-scoring source (on ties, the earlier source).

    Parameters
    ----------
    state : the user's state (one pipelined read)
    table : the version's post table
    glob : the global state (the fresh posts, the out-of-stock products)
    cfg : the service configuration (weights)
    interests : terms of the ``interests=`` hint, if any
    tokens : the version's token index (needed only with ``interests``)
    """
    out = _Collector(table, glob["fresh"])
    out.add_arrays(*precomputed(state, table))
    for offer in realtime(state, table, glob["fresh"], cfg):
        out.add(*offer)
    known, created = fresh(state, glob["fresh"], table, cfg)
    out.add_arrays(*known)
    out.add_arrays(*created, part=1)
    for offer in interest_matches(interests, table, tokens or {}, cfg):
        out.add(*offer)
    out.add_arrays(*trending(table, cfg))
    return out.offers()


# --- filters and rescoring ---------------------------------------------------------------------
def _among(values: np.ndarray, among: list[int]) -> np.ndarray:
    """Mask of ``values`` found in ``among`` (a sorted search: no loop per element).

    >>> _among(np.array([3, 1, 4, 1, 5]), [1, 5]).tolist()
    [False, True, False, True, True]
    """
    ref = np.sort(np.asarray(among, dtype=np.int64))
    return ref[np.searchsorted(ref, values).clip(max=len(ref) - 1)] == values


class Pool:
    """The best candidates of a page, best first: ``(score, post id, source)`` rows, each built
    into a :class:`Candidate` on first use (a page looks at a fraction of its pool).

    A row's source is ``(i, reason index)`` with ``i`` a post index of the version, or
    ``-1 - j`` for post ``j`` of the fresh posts; or the :class:`Candidate` itself.
    """

    def __init__(
        self,
        rows: list[tuple[float, str, Any]],
        table: VersionTable | None = None,
        reasons: list[str] | None = None,
        fresh: FreshPosts | None = None,
    ) -> None:
        self.rows, self.table, self.reasons, self.fresh = rows, table, reasons or [], fresh
        self._built: dict[int, Candidate] = {}

    @classmethod
    def of(cls, cands: Iterable[Candidate]) -> Pool:
        """A pool of ready candidates, sorted best first."""
        rows = sorted(((x.score, x.post_id, x) for x in cands), key=lambda r: r[:2], reverse=True)
        return cls(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> Candidate:
        cand = self._built.get(k)
        if cand is None:
            score, pid, source = self.rows[k]
            if isinstance(source, Candidate):
                cand = source
            else:
                cand = Candidate(pid, score, self.reasons[source[1]], *fields(*self._post(k)))
            self._built[k] = cand
        return cand

    def group(self, k: int) -> tuple[str, tuple[str, ...]]:
        """Row ``k``'s author and categories, without building its candidate."""
        source = self.rows[k][2]
        if isinstance(source, Candidate):
            return source.author_id, source.categories
        i = source[0]
        if i >= 0 and self.table is not None:  # most rows: a post of the version
            return self.table.authors[i], self.table.categories_of(i)
        posts, i = self._post(k)
        return posts.authors[i], posts.categories_of(i)

    def _post(self, k: int) -> tuple[VersionTable | FreshPosts, int]:
        i = self.rows[k][2][0]  # a post of the version, or -1 - j for fresh post j
        posts = self.table if i >= 0 else self.fresh
        assert posts is not None
        return posts, i if i >= 0 else -1 - i


def _kept(
    idx: np.ndarray,
    score: np.ndarray,
    why: np.ndarray,
    posts: VersionTable | FreshPosts,
    sold_out: np.ndarray,
    blocked: set[str],
    excluded: set[str],
    bonus: tuple[float, float, float],
) -> _Arrays:
    """Offers over ``posts`` minus the sold-out, blocked authors' and excluded posts, with the
    freshness bonus (``(weight, half-life, now)``) added."""
    ok = ~sold_out[idx]
    codes = [posts.author_index[a] for a in blocked if a in posts.author_index]
    if codes:
        ok &= ~_among(posts.author_codes[idx], codes)
    gone = [posts.index[p] for p in excluded if p in posts.index]
    if gone:
        ok &= ~_among(idx, gone)
    weight, half_life, now = bonus
    age = np.maximum(now - posts.created_s[idx[ok]], 0.0)  # inf when unknown: no bonus
    return idx[ok], score[ok] + weight * 0.5 ** (age / half_life), why[ok]


def _cut(scores: list[np.ndarray], keep: int) -> float:
    """The ``keep``-th best of all ``scores`` (-inf when there are fewer): rows scoring at
    least this are the best ``keep`` and every row tied with the last of them."""
    every = np.concatenate(scores)
    if len(every) <= keep:
        return -np.inf
    return float(np.partition(every, len(every) - keep)[len(every) - keep])


def filtered(
    user_id: str,
    offers: Offers,
    state: UserState,
    table: VersionTable,
    glob: Mapping[str, Any],
    cfg: Mapping[str, Any],
    now: float,
    keep: int,
    policy: PagePolicy,
) -> Pool:
    """The best ``keep`` candidates the user may see, with the freshness bonus, best first
    (ties by post id, highest first, so the same inputs always give the same list).

    Dropped: posts seen or served within ``SEEN_WINDOW_S``, liked or hidden; the user's own
    posts; posts of muted authors (blocked or "see fewer"); posts whose every linked product is
    out of stock; posts taken down by moderation (``glob["takedown"]``, when given). The bonus
    is ``policy.freshness_weight * 0.5 ** (age / FRESHNESS_HALF_LIFE_S)``.
    """
    excluded = state.seen | state.liked | state.hidden
    blocked = state.muted | {user_id}
    bonus = (policy.freshness_weight, max(cfg["FRESHNESS_HALF_LIFE_S"], 1), now)
    fresh = offers.fresh
    parts: list[tuple[VersionTable | FreshPosts, np.ndarray, _Arrays]] = [
        (
            table,
            table.unservable(glob["oos"], glob.get("takedown", frozenset())),
            (offers.idx, offers.score, offers.why),
        )
    ]
    if len(offers.fresh_idx):
        parts.append(
            (fresh, fresh.sold_out, (offers.fresh_idx, offers.fresh_score, offers.fresh_why))
        )
    kept = [
        _kept(*arrays, posts, sold_out, blocked, excluded, bonus)
        for posts, sold_out, arrays in parts
    ]
    cut = _cut([score for _, score, _ in kept], keep)  # Python rows only for the best
    out: list[tuple[float, str, Any]] = []
    for (posts, _, _), (idx, score, why) in zip(parts, kept, strict=True):
        best = score >= cut
        sign = 1 if posts is table else -1  # fresh post j is row source -1 - j
        rows = zip(idx[best].tolist(), score[best].tolist(), why[best].tolist(), strict=True)
        out += [(s, posts.post_ids[i], (i if sign > 0 else -1 - i, w)) for i, s, w in rows]
    out.sort(key=lambda x: (x[0], x[1]), reverse=True)
    return Pool(out[:keep], table, offers.reasons, fresh)


def pool_size(limit: int, cfg: Mapping[str, Any]) -> int:
    """How many of the best candidates a page of ``limit`` is picked from."""
    return max(limit * max(cfg["DIVERSITY_POOL_FACTOR"], 1), 50)


def diverse_page(
    pool: Pool,
    limit: int,
    policy: PagePolicy,
    shares: Shares = NO_SHARES,
    depth: int | None = None,
    wanted: frozenset[str] = frozenset(),
) -> list[Candidate]:
    """A greedy page from the best ``depth`` rows of ``pool`` (best first, as :func:`filtered`
    returns it), under ``policy`` (:mod:`feed.serving.policy`).

    Each pick is the candidate of best adjusted score: its score times the policy's author
    factor for the author's repeats on the page beyond its allowance, times the category
    factor for the most repeated of its categories (over every linked product) beyond that
    category's allowance; negative scores are left as they are. With ``author_cap`` no author
    gets more than its allowance plus the cap, and with ``no_adjacent_author`` never two slots
    in a row; both rules are relaxed only when nothing else is left. Categories the user asked
    for (``wanted``, lowercase: the ``interests=`` hint) are never discounted. Ties go to the
    earlier candidate, so the same inputs always give the same page.

    Adjusted scores only fall as the page fills, so a max-heap of possibly stale scores gives
    each pick after a few recomputations ("lazy greedy") instead of a scan of the pool. Rows of
    one author and the same categories share their discount, so their order never changes: the
    heap holds one entry per such group, its best row left, and a prolific author's posts cost
    one recomputation per pick, not one each.
    """
    author_factor = [policy.author_factor(k) for k in range(limit + 1)]
    category_factor = [policy.category_factor(k) for k in range(limit + 1)]
    per_author: dict[str, int] = {}
    per_cat: dict[str, int] = {}
    allowed: tuple[dict[str, int], dict[str, int]] = ({}, {})  # authors', categories'

    def allowance(kind: int, key: str) -> int:
        n = allowed[kind].get(key)
        if n is None:
            share = (shares.authors, shares.categories)[kind].get(key, 0.0)
            n = allowed[kind][key] = policy.allowance(share, limit)
        return n

    def repeats(author: str) -> int:
        return per_author.get(author, 0) - allowance(0, author)

    rows = pool.rows if depth is None else pool.rows[:depth]
    groups: dict[tuple[str, tuple[str, ...]], _Group] = {}  # by (author, categories)

    def adjusted(group: _Group, score: float) -> float:
        if score <= 0:
            return score
        score *= author_factor[max(repeats(group.author), 0)]
        if group.counted:
            k = max(per_cat.get(cat, 0) - allowance(1, cat) for cat in group.counted)
            score *= category_factor[max(k, 0)]
        return score

    def breaks_rule(author: str, prev: str | None) -> bool:
        if policy.no_adjacent_author and author == prev:
            return True
        return policy.author_cap > 0 and repeats(author) >= policy.author_cap

    # heap entries (-score, row, group): a group's best row left, at a score at least its
    # adjusted one; or (-score, row, None): rows from this one on are not met yet, and their
    # scores are at most its score (the pool is best first). Rows are met in pool order, in
    # batches growing by a quarter: about as far as the page needs, with few heap operations.
    heap: list[tuple[float, int, _Group | None]] = [(-rows[0][0], 0, None)] if rows else []
    page: list[Candidate] = []
    prev = None
    while heap and len(page) < limit:
        aside: list[tuple[float, int, _Group]] = []  # up to date, but breaking an author rule
        chosen = None
        while heap:
            key, i, group = heapq.heappop(heap)
            if group is None:  # meet rows i .. end - 1
                end = min(i + max(i // 4, 4), len(rows))
                for k in range(i, end):
                    author, cats = pool.group(k)
                    group = groups.get((author, cats))
                    if group is None:
                        group = groups[author, cats] = _Group(author, cats, wanted)
                    group.rows.append(k)
                    if group.head == len(group.rows) - 1:  # new, or its earlier rows are used
                        heapq.heappush(heap, (-rows[k][0], k, group))
                if end < len(rows):
                    heapq.heappush(heap, (-rows[end][0], end, None))
                continue
            score = adjusted(group, rows[i][0])
            if score < -key:  # stale: back in, at its current score
                heapq.heappush(heap, (-score, i, group))
            elif breaks_rule(group.author, prev):
                aside.append((key, i, group))
            else:
                chosen = (key, i, group)
                break
        if chosen is None:  # every candidate left breaks an author rule: the best of them,
            chosen = aside.pop(0)  # the first set aside (the heap pops in order)
        for entry in aside:
            heapq.heappush(heap, entry)
        key, i, group = chosen
        cand = pool[i]
        cand.score = -key
        page.append(cand)
        prev = cand.author_id
        per_author[prev] = per_author.get(prev, 0) + 1
        for cat in cand.categories:
            per_cat[cat] = per_cat.get(cat, 0) + 1
        group.head += 1
        if group.head < len(group.rows):  # its next row, at its score as the page now stands
            j = group.rows[group.head]
            heapq.heappush(heap, (-adjusted(group, rows[j][0]), j, group))
    return page


class _Group:
    """Rows of a pool by one author with the same categories: one discount for all, so their
    order never changes (:func:`diverse_page`)."""

    __slots__ = ("author", "counted", "rows", "head")

    def __init__(self, author: str, cats: tuple[str, ...], wanted: frozenset[str]) -> None:
        self.author = author
        # the categories it is discounted for: those the user did not ask for
        self.counted = tuple(c for c in cats if c.lower() not in wanted) if wanted else cats
        self.rows: list[int] = []  # met so far, best first
        self.head = 0  # position in rows of the best not on the page yet
