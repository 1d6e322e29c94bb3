"""Merged candidate lists and the features the ranker learns from.

For a block of users, each source's top ``n_per_source`` posts (never an excluded one, one per
product) are merged into one candidate list per user. In a catalogue of at most
``exact_max_posts`` posts every source scores every post (dense blocks); in a larger one each
personal source retrieves its candidates (:meth:`~feed.models.base.CandidateModel.retrieve`:
nearest neighbours of the user's factors, neighbour expansion of the user's history) and the
merged candidates are scored pair by pair (``score_pairs``), so the cost per user does not grow
with the catalogue. Every candidate gets a feature row: each source's score and rank (and, for
personal sources, the score over the user's best score from that source), then post, author,
category and user features. A candidate's reason is the reason of the source that ranks it
highest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feed.contract import REASON_CODE
from feed.features.matrices import SECONDS_PER_DAY, TrainingData
from feed.models.base import (
    EXACT_MAX_POSTS,
    CandidateModel,
    Retrieved,
    canonical,
    lookup,
    mask_rows,
    row_max,
    topk,
)
from feed.models.sources import (
    Content,
    Fresh,
    Popularity,
    post_age_days,
    score_pairs_chunked,
)

#: Dense floats held at once while merging (users x posts x sources).
MERGE_FLOATS = 24_000_000

#: Batches of users by retrieval are sized as dense blocks of this many posts would be.
RETRIEVAL_WIDTH = 5_000

#: The key of a padding entry (-1 item) in "one item per key" selections.
NO_KEY = np.iinfo(np.int64).min

#: Features that do not depend on the sources, in column order.
BASE_FEATURES = (
    "post_age_days",
    "post_popularity",
    "post_engaged_log",
    "post_n_products",
    "product_popularity_log",
    "author_popularity_log",
    "author_affinity",
    "follows_author",
    "category_affinity",
    "category_purchase_affinity",
    "user_engaged_log",
    "user_bought_log",
    "user_follows_log",
    # relative to the user's own activity, not to the data's "now" (users active in bursts)
    "user_idle_log",
    "post_popularity_in_user_period",
    "post_age_at_user_log",
)
#: Features of the sources' agreement on a candidate, after :data:`BASE_FEATURES`: how many
#: sources list it, its best rank among them (log), its reciprocal-rank fusion score, and the
#: same count and fusion over the personal sources only (not popularity or trending). They
#: carry signal without timestamps (random splits, untimed data).
AGREEMENT_FEATURES = (
    "sources_listing",
    "best_rank_log",
    "fusion",
    "personal_listing",
    "personal_fusion",
)
#: Time periods (quantiles of event times) for "popularity in the user's period".
PERIODS = 16


def is_global(model: CandidateModel) -> bool:
    """True for sources that give every user the same scores (popularity, trending)."""
    return isinstance(model, Popularity)


def feature_names(sources: Mapping[str, CandidateModel]) -> list[str]:
    """Column names of the feature rows for these sources (in this order)."""
    names = []
    for name, model in sources.items():
        names += [f"{name}:score", f"{name}:rank"]
        if not is_global(model):
            names.append(f"{name}:relative")
    return names + list(BASE_FEATURES) + list(AGREEMENT_FEATURES)


@dataclass
class CandidateBlock:
    """Candidates of a block of users: row ``i`` belongs to ``users[i]``.

    ``items`` is (users x C) post indices padded with -1; ``features`` is (users x C x F);
    ``ranks`` is (sources x users x C), each source's 0-based rank or ``n_per_source``;
    ``reasons`` holds reason codes.
    """

    depth: int
    users: np.ndarray
    items: np.ndarray
    features: np.ndarray
    ranks: np.ndarray
    reasons: np.ndarray


class FeatureContext:
    """Lookup tables for the post, author, category and user features of one TrainingData."""

    def __init__(self, data: TrainingData) -> None:
        engaged = sp.csr_matrix(data.engagement, dtype=np.float32, copy=True)
        engaged.data[:] = 1.0
        count = np.asarray(engaged.sum(axis=0)).ravel()
        bought = sp.csr_matrix(data.purchases, dtype=np.float32, copy=True)
        bought.data[:] = 1.0
        product_count = np.asarray(bought.sum(axis=0)).ravel()
        links = sp.csr_matrix(data.post_products, dtype=np.float32)
        linked = links.multiply(product_count[None, :]).tocsr()
        author_total = np.bincount(data.post_author, weights=count, minlength=data.n_users)
        self.post = {
            "post_age_days": post_age_days(data),
            "post_popularity": count / max(count.max(initial=0.0), 1.0),
            "post_engaged_log": np.log1p(count),
            "post_n_products": np.diff(links.indptr).astype(np.float64),
            "product_popularity_log": np.log1p(row_max(linked)),
            "author_popularity_log": np.log1p(author_total[data.post_author]),
        }
        self.author = data.post_author
        n = data.n_posts
        by_author = sp.csr_matrix(
            (np.ones(n, np.float32), (np.arange(n), data.post_author)), shape=(n, data.n_users)
        )
        self.author_share = _row_share(engaged @ by_author)
        self.follows = sp.csr_matrix(data.follows)
        codes, cats = pd.factorize(np.concatenate([data.post_category, data.product_categories]))
        self.category = np.where(data.post_category == "", -1, codes[:n])
        product_cat = codes[n:]
        n_cat = max(len(cats), 1)
        post_onehot = _onehot(self.category, n_cat)
        product_onehot = _onehot(np.where(data.product_categories == "", -1, product_cat), n_cat)
        self.category_share = _row_share(engaged @ post_onehot)
        self.category_buy_share = _row_share(bought @ product_onehot)
        self.keys = product_keys(data)
        self.shared = shared_groups(self.keys)
        self.user = {
            "user_engaged_log": np.log1p(np.diff(engaged.indptr)),
            "user_bought_log": np.log1p(np.diff(bought.indptr)),
            "user_follows_log": np.log1p(np.diff(self.follows.indptr)),
        }
        self.periods = UserPeriods(data)
        self.user["user_idle_log"] = self.periods.idle_log
        self.created = data.post_created

    def best_per_product(self, block: np.ndarray) -> None:
        """In place: of the posts linking the same (first) product, keep only the best scored
        in each row (:func:`best_per_group`).

        A source lists each product once: twins (posts that only purchases reach score alike)
        would otherwise fill a whole list with one product.
        """
        best_per_group(block, self.shared)

    def top_per_product(self, block: np.ndarray, n: int) -> np.ndarray:
        """Row-wise top-``n`` posts with at most one post per product (:func:`topk_distinct`)."""
        return topk_distinct(block, self.keys, self.shared, n)

    def features(self, users: np.ndarray, items: np.ndarray) -> list[np.ndarray]:
        """The :data:`BASE_FEATURES` columns for (users[i], items[i, j]), each (B x C)."""
        ok = items >= 0
        safe = np.where(ok, items, 0)
        urow = np.broadcast_to(users[:, None], items.shape)
        author = self.author[safe]
        cat = self.category[safe]
        cols = [self.post[name][safe] for name in BASE_FEATURES[:6]]
        cols.append(_pairs(self.author_share, urow, author))
        cols.append(_pairs(self.follows, urow, author))
        cols.append(np.where(cat >= 0, _pairs(self.category_share, urow, np.maximum(cat, 0)), 0))
        cols.append(
            np.where(cat >= 0, _pairs(self.category_buy_share, urow, np.maximum(cat, 0)), 0)
        )
        cols += [
            np.broadcast_to(self.user[name][users][:, None], items.shape)
            for name in BASE_FEATURES[10:14]
        ]
        cols.append(self.periods.popularity(users, safe))
        last = self.periods.last[users][:, None]
        with np.errstate(invalid="ignore"):
            age = (last - self.created[safe]) / SECONDS_PER_DAY
        cols.append(np.sign(age) * np.log1p(np.abs(age)))  # NaN when either time is unknown
        return cols


class UserPeriods:
    """Each user's last activity, and each post's popularity in each period of time (the
    :data:`PERIODS` quantiles of like, purchase and click times), so that a user whose activity
    ended long before the data's "now" sees what was popular when they were active.

    Without timestamps every feature here is 0 (idle) or NaN (unknown).
    """

    def __init__(self, data: TrainingData) -> None:
        n_users, n_posts = data.n_users, data.n_posts
        self.last = np.full(n_users, np.nan)
        self.idle_log = np.zeros(n_users)
        self.by_period = np.zeros((n_posts, 1), dtype=np.float32)
        self.user_period = np.zeros(n_users, dtype=np.int64)
        ds = data.source
        if ds is None:
            return
        tables = [t for t in (ds.likes, ds.purchases, ds.clicks) if len(t)]
        if not tables:
            return
        users = np.concatenate([data.users.to_internal(t["user_id"], strict=False) for t in tables])
        ts = np.concatenate([t["ts"].to_numpy(float) for t in tables])
        posts = np.concatenate(
            [
                data.posts.to_internal(t["post_id"], strict=False)
                if "post_id" in t
                else np.full(len(t), -1)
                for t in tables
            ]
        )
        ok = (users >= 0) & np.isfinite(ts)
        if not ok.any():
            return
        users, ts, posts = users[ok], ts[ok], posts[ok]
        np.fmax.at(self.last, users, ts)
        now = data.now if data.now == data.now else float(ts.max())
        known = np.isfinite(self.last)
        self.idle_log[known] = np.log1p(np.maximum(now - self.last[known], 0) / SECONDS_PER_DAY)
        edges = np.unique(np.quantile(ts, np.linspace(0, 1, PERIODS + 1)[1:-1]))
        period = np.searchsorted(edges, ts, side="right")
        n_periods = len(edges) + 1
        on_post = posts >= 0
        counts = np.zeros((n_posts, n_periods), dtype=np.float32)
        np.add.at(counts, (posts[on_post], period[on_post]), 1.0)
        self.by_period = counts / np.maximum(counts.max(axis=0, keepdims=True), 1.0)
        self.user_period = np.searchsorted(edges, np.where(known, self.last, -np.inf), side="right")

    def popularity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Each candidate's popularity (0..1, of the period's most popular) in its user's period
        of last activity."""
        period = np.broadcast_to(self.user_period[users][:, None], items.shape)
        return self.by_period[items, period]


def shared_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The posts whose key other posts share, grouped by key, and where each group starts.

    >>> members, starts = shared_groups(np.array([5, -2, 5, 7, 5, 7, -7]))
    >>> members.tolist(), starts.tolist()
    ([0, 2, 4, 3, 5], [0, 3])
    """
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    shared = np.flatnonzero(counts[inverse] > 1)
    members = shared[np.argsort(keys[shared], kind="stable")]
    starts = (
        np.flatnonzero(np.r_[True, np.diff(keys[members]) != 0])
        if len(members)
        else np.zeros(0, dtype=np.int64)
    )
    return members, starts


def best_per_group(block: np.ndarray, groups: tuple[np.ndarray, np.ndarray]) -> None:
    """In place: within each group of :func:`shared_groups`, keep only the best-scored post
    (the first of equals) in every row; the others become -inf.

    >>> block = np.array([[1.0, 9, 3, 2, 3, 2, 0]], dtype=np.float32)
    >>> best_per_group(block, shared_groups(np.array([5, -2, 5, 7, 5, 7, -7])))
    >>> block.tolist()
    [[-inf, 9.0, 3.0, 2.0, -inf, -inf, 0.0]]
    """
    members, starts = groups
    if not len(members):
        return
    part = block[:, members]
    sizes = np.diff(np.r_[starts, len(members)])
    best = np.maximum.reduceat(part, starts, axis=1)
    is_best = part >= np.repeat(best, sizes, axis=1)
    count = np.cumsum(is_best, axis=1, dtype=np.int32)
    before = np.concatenate([np.zeros((len(block), 1), np.int32), count[:, starts[1:] - 1]], axis=1)
    first = is_best & (count - np.repeat(before, sizes, axis=1) == 1)
    block[:, members] = np.where(first, part, -np.inf)


def topk_distinct(
    block: np.ndarray,
    keys: np.ndarray,
    groups: tuple[np.ndarray, np.ndarray],
    n: int,
    fetch: int = 4,
) -> np.ndarray:
    """Row-wise top-``n`` items (-1 padded) with at most one item per key, the best of each.

    Reads each row's top ``fetch * n`` first and dedupes them (ties: the lower index first);
    a row whose top is flooded by items of few keys falls back to :func:`best_per_group` over
    the whole row. ``groups`` is :func:`shared_groups` of ``keys``.

    >>> keys = np.array([0, 0, 0, 1, 2])
    >>> topk_distinct(np.array([[5.0, 4, 3, 2, 1]]), keys, shared_groups(keys), 3, 1).tolist()
    [[0, 3, 4]]
    """
    n_rows, n_cols = block.shape
    depth = min(n * fetch, n_cols)
    items, scores = topk(block, depth, ordered=False)
    order = np.lexsort((items, -scores), axis=1)  # best first, ties: the lower index first
    items = np.take_along_axis(items, order, axis=1)
    valid = items >= 0
    kept = first_of_key(np.where(valid, keys[np.maximum(items, 0)], NO_KEY)) & valid
    out = compact_rows(items, kept, n)
    flooded = (kept.sum(axis=1) < n) & valid.all(axis=1) & (depth < n_cols)
    if flooded.any():  # dedupe those rows whole
        whole = block[flooded]
        best_per_group(whole, groups)
        out[flooded] = topk(whole, n)[0]
    return out


def sparse_top_per_product(
    scores: sp.spmatrix,
    keys: np.ndarray,
    n: int,
    exclude: sp.spmatrix | None = None,
    positive_only: bool = False,
    depth: int | None = None,
) -> np.ndarray:
    """Row-wise top-``n`` stored entries of a sparse score matrix (-1 padded), at most one per
    key (the best; ties: the lower index), never an entry stored in ``exclude``;
    ``positive_only``: entries <= 0 are no candidates. The sparse twin of :func:`topk_distinct`
    after :func:`mask_rows`: each row's best ``depth`` entries (default ``4 * n``) beyond its
    excluded ones are read (cost linear in the stored entries), deduplicated by key, cut to
    ``n``.

    >>> m = sp.csr_matrix(np.array([[5.0, 4, 3, 2, 0], [0, 0, 1, 0, 2]]))
    >>> ex = sp.csr_matrix(np.array([[0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]))
    >>> sparse_top_per_product(m, np.array([0, 0, 1, 2, 3]), 3, ex, True).tolist()
    [[0, 2, -1], [2, -1, -1]]
    """
    m = sp.csr_matrix(scores, dtype=np.float32)
    n_rows = m.shape[0]
    out = np.full((n_rows, n), -1, dtype=np.int64)
    if not m.nnz or not n:
        return out
    data = m.data.copy()
    data[~np.isfinite(data)] = -np.inf
    if positive_only:
        data[data <= 0] = -np.inf
    counts = np.diff(m.indptr)
    ex = sp.csr_matrix(exclude) if exclude is not None else None
    n_ex = np.diff(ex.indptr) if ex is not None else np.zeros(n_rows, np.int64)
    depth = 4 * n if depth is None else depth
    # rows of similar length together (padding at most 2x), each as a dense (rows x width) grid
    bucket = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    for b in np.unique(bucket[counts > 0]):
        sel = np.flatnonzero((bucket == b) & (counts > 0))
        width = int(counts[sel].max())
        vals = np.full((len(sel), width), -np.inf, dtype=np.float32)
        cols = np.full((len(sel), width), -1, dtype=np.int64)
        starts, lens = m.indptr[sel], counts[sel]
        r = np.repeat(np.arange(len(sel)), lens)
        pos = np.arange(len(r)) - np.repeat(np.cumsum(lens) - lens, lens)
        src = np.repeat(starts, lens) + pos
        vals[r, pos] = data[src]
        cols[r, pos] = m.indices[src]
        k = min(width, depth + int(n_ex[sel].max(initial=0)))
        if k < width:
            part = np.argpartition(-vals, k - 1, axis=1)[:, :k]
            vals = np.take_along_axis(vals, part, axis=1)
            cols = np.take_along_axis(cols, part, axis=1)
        if ex is not None and ex.nnz:
            hit = lookup(ex[sel], np.maximum(cols, 0)) != 0
            vals[hit] = -np.inf
        order = np.lexsort((cols, -vals), axis=1)  # best first, ties: the lower index first
        cols = np.take_along_axis(cols, order, axis=1)
        valid = np.isfinite(np.take_along_axis(vals, order, axis=1)) & (cols >= 0)
        kept = first_of_key(np.where(valid, keys[np.maximum(cols, 0)], NO_KEY)) & valid
        out[sel] = compact_rows(cols, kept, n)
    return out


def first_of_key(keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first occurrence of each value along every row of ``keys``.

    >>> first_of_key(np.array([[3, 1, 3, 2, 1]])).tolist()
    [[True, True, False, True, False]]
    """
    order = np.argsort(keys, axis=1, kind="stable")
    ranked = np.take_along_axis(keys, order, axis=1)
    new = np.ones(keys.shape, dtype=bool)
    new[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    out = np.empty(keys.shape, dtype=bool)
    np.put_along_axis(out, order, new, axis=1)
    return out


def compact_rows(values: np.ndarray, keep: np.ndarray, n: int, fill: int = -1) -> np.ndarray:
    """The first ``n`` kept entries of every row, in order, padded with ``fill``.

    >>> compact_rows(np.array([[5, 6, 7, 8]]), np.array([[True, False, True, True]]), 3).tolist()
    [[5, 7, 8]]
    """
    out = np.full((len(values), n), fill, dtype=values.dtype)
    position = np.cumsum(keep, axis=1) - 1
    rows, cols = np.nonzero(keep & (position < n))
    out[rows, position[rows, cols]] = values[rows, cols]
    return out


def _onehot(codes: np.ndarray, n_cols: int) -> sp.csr_matrix:
    ok = codes >= 0
    rows = np.flatnonzero(ok)
    return sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, codes[ok])), shape=(len(codes), n_cols)
    )


def _row_share(m: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float32)
    sums = np.asarray(m.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(sums, 1e-9)) @ m)


def _pairs(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``m[rows[i, j], cols[i, j]]`` as a dense array shaped like ``rows``."""
    if m.nnz == 0:
        return np.zeros(rows.shape, dtype=np.float32)
    return np.asarray(m[rows.ravel(), cols.ravel()]).reshape(rows.shape)


class CandidateBuilder:
    """Merges the top lists of fitted sources and computes every candidate's features.

    Parameters
    ----------
    sources : mapping of name -> fitted CandidateModel
    context : FeatureContext
        Built from the same TrainingData the sources were fitted on.
    n_per_source : int
        How deep each source's list is read.
    exact_max_posts : int or None
        Up to this many posts every source scores every post; above, personal sources
        retrieve their candidates. None: :data:`~feed.models.base.EXACT_MAX_POSTS`.
    fetch : int
        A retrieval asks for ``fetch * n_per_source`` times the mean number of posts per
        product posts per user, beyond the user's excluded ones (one post per product is
        kept).
    """

    def __init__(
        self,
        sources: Mapping[str, CandidateModel],
        context: FeatureContext,
        n_per_source: int,
        exact_max_posts: int | None = None,
        fetch: int = 2,
    ) -> None:
        self.sources = dict(sources)
        self.context = context
        self.n_per_source = n_per_source
        self.exact_max_posts = EXACT_MAX_POSTS if exact_max_posts is None else exact_max_posts
        self.fetch = fetch
        self.retrieval = len(context.author) > self.exact_max_posts
        # posts per product: a retrieval fetches that many times more (one post per product)
        self.per_key = max(1, round(len(context.keys) / max(len(np.unique(context.keys)), 1)))
        self._order: dict[str, np.ndarray] = {}  # global sources: posts best first
        self.codes = np.array([REASON_CODE[m.reason] for m in self.sources.values()], np.uint8)
        self._global: dict[str, np.ndarray] = {}  # deduplicated scores of global sources
        self.shared_content = shared_content(self.sources)
        self.personal = np.array([not is_global(m) for m in self.sources.values()], dtype=bool)

    def batches(self, users: np.ndarray, n_posts: int) -> Iterator[np.ndarray]:
        """Slices of ``users`` small enough to merge at once."""
        width = min(n_posts, RETRIEVAL_WIDTH) if self.retrieval else n_posts
        step = max(1, MERGE_FLOATS // max(width * len(self.sources), 1))
        for lo in range(0, len(users), step):
            yield users[lo : lo + step]

    def build(self, users: np.ndarray, exclude: sp.csr_matrix | None) -> CandidateBlock:
        """Candidates and features of a (small) block of users."""
        users = np.asarray(users, dtype=np.int64)
        if self.retrieval:
            return self._build_retrieved(users, exclude)
        blocks: list[np.ndarray | None] = []
        tops = []
        by_name: dict[str, np.ndarray] = {}
        for name, model in self.sources.items():
            scores = None
            content = self.shared_content.get(name)
            if content is not None and content in by_name:  # Fresh: Content's scores, reused
                scores = model.from_content(by_name[content])  # type: ignore[attr-defined]
            block, top = self._retrieve(name, model, users, exclude, scores)
            tops.append(top)
            blocks.append(block)
            if block is not None:
                by_name[name] = block
        items = merge(tops)
        ranks = np.stack([_ranks(top, items, self.n_per_source) for top in tops])
        cols: list[np.ndarray] = []
        safe = np.where(items >= 0, items, 0)
        for model, block, top, rank in zip(self.sources.values(), blocks, tops, ranks, strict=True):
            if block is None:  # a global source
                cols += [model.scores_[safe], rank.astype(np.float32)]  # type: ignore[attr-defined]
                continue
            score = np.take_along_axis(block, safe, axis=1)
            cols += [score, rank.astype(np.float32)]
            if not is_global(model):
                best = np.take_along_axis(block, np.maximum(top[:, :1], 0), axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    rel = np.where(best > 0, score / best, 0.0)
                cols.append(rel)
        cols += self.context.features(users, items)
        cols += agreement(ranks, self.personal, self.n_per_source)
        features = np.stack([np.asarray(c, dtype=np.float32) for c in cols], axis=-1)
        features[items < 0] = np.nan
        reasons = self.codes[np.argmin(ranks, axis=0)]
        return CandidateBlock(self.n_per_source, users, items, features, ranks, reasons)

    def _build_retrieved(self, users: np.ndarray, exclude: sp.csr_matrix | None) -> CandidateBlock:
        """:meth:`build` without dense blocks: sources retrieve, candidates are scored in pairs.

        A source whose answer is ranked (:attr:`~feed.models.base.CandidateModel.
        ranked_retrieval`) is asked for ``fetch * per_key * n_per_source`` posts a user
        first; only the users whose list that leaves short (their excluded posts took the
        places) are asked again, that much deeper plus their excluded count. A list the first
        answer fills is the one the deeper answer gives (the best posts beyond the excluded,
        one per product), and a user's hundreds of excluded posts no longer make the source
        read that many more posts for the whole block (on Ciao, 1,289 excluded posts a user:
        98 ms a user, now 48; ``python -m bench.catalogue_cost``). Champion lists (content,
        fresh) are asked the deeper depth at once: deeper, they find better posts, not only
        more."""
        excluded = canonical(exclude[users]) if exclude is not None else None
        n = self.n_per_source
        depth = np.full(len(users), self.fetch * self.per_key * n, dtype=np.int64)
        n_excluded = np.diff(excluded.indptr) if excluded is not None else np.zeros_like(depth)
        tops: list[np.ndarray] = []
        answers: list[tuple[Retrieved, np.ndarray] | None] = []  # (answer, score of the first)
        answered: dict[str, Retrieved] = {}  # first answers, by source (Fresh reuses Content's)
        for name, model in self.sources.items():
            if is_global(model):
                tops.append(self._global_top(name, model, excluded))
                answers.append(None)
                continue
            first = depth if model.ranked_retrieval else depth + n_excluded
            content = self.shared_content.get(name)
            given = answered.get(content) if content is not None else None
            got, items, best = self._source_top(model, users, first, excluded, given)
            answered[name] = got
            short = np.flatnonzero((items[:, -1] < 0) & (first < depth + n_excluded))
            if len(short) and not got.complete:  # a complete answer has nothing more
                sub = excluded[short] if excluded is not None else None
                _, items[short], best[short] = self._source_top(
                    model, users[short], depth[short] + n_excluded[short], sub
                )
            tops.append(items)
            answers.append((got, best))
        items = merge(tops)
        ranks = np.stack([_ranks(top, items, n) for top in tops])
        cols: list[np.ndarray] = []
        safe = np.where(items >= 0, items, 0)
        for model, answer, rank in zip(self.sources.values(), answers, ranks, strict=True):
            if answer is None:  # a global source
                cols += [model.scores_[safe], rank.astype(np.float32)]  # type: ignore[attr-defined]
                continue
            got, best = answer
            if got.complete:
                score = lookup(got.scores, items)
            else:
                score = score_pairs_chunked(model, users, items)
            cols += [score, rank.astype(np.float32)]
            with np.errstate(invalid="ignore", divide="ignore"):
                cols.append(np.where(best > 0, score / best, 0.0))
        cols += self.context.features(users, items)
        cols += agreement(ranks, self.personal, n)
        features = np.stack([np.asarray(c, dtype=np.float32) for c in cols], axis=-1)
        features[items < 0] = np.nan
        reasons = self.codes[np.argmin(ranks, axis=0)]
        return CandidateBlock(n, users, items, features, ranks, reasons)

    def _source_top(
        self,
        model: CandidateModel,
        users: np.ndarray,
        depth: np.ndarray,
        excluded: sp.csr_matrix | None,
        content: Retrieved | None = None,
    ) -> tuple[Retrieved, np.ndarray, np.ndarray]:
        """A personal source's answer for ``users`` asked ``depth`` posts deep, its best
        ``n_per_source`` posts (-1 padded; one per product, never an excluded one), and the
        score of each user's first (its stored scores are exact). ``content``: for a Fresh
        source, the answer of the Content source it shares (:func:`shared_content`) for the
        same users and depth."""
        if content is not None:
            got = model.from_content_retrieved(users, depth, content)  # type: ignore[attr-defined]
        else:
            got = model.retrieve(users, depth)
        if got is None:  # no retrieval: the source's dense scores, as a sparse matrix
            block = model.score_users(users).astype(np.float32, copy=False)
            got = Retrieved(sp.csr_matrix(block), complete=True)
        n = self.n_per_source
        # the top in the entries' order as the source gave them (the partial sort's pick
        # among equal scores follows it; on Ciao's tied twin posts that choice alone moved
        # the held-out recall by 2%), the lookups in sorted rows (sorted once)
        items = sparse_top_per_product(
            got.scores,
            self.context.keys,
            n,
            excluded,
            positive_only=model.sparse_scores,
            depth=max(4, self.fetch * self.per_key) * n,
        )
        got = Retrieved(canonical(got.scores), got.complete)
        return got, items, lookup(got.scores, np.maximum(items[:, :1], 0))

    def _global_top(
        self, name: str, model: CandidateModel, excluded: sp.csr_matrix | None
    ) -> np.ndarray:
        """A global source's best ``n_per_source`` posts for each user: the first posts of its
        one ordered list (one post per product) that the user is not excluded from."""
        if name not in self._order:
            best = model.scores_[None, :].astype(np.float32)  # type: ignore[attr-defined]
            self.context.best_per_product(best)
            order = np.argsort(-best[0], kind="stable")
            self._order[name] = order[np.isfinite(best[0][order])]
        order = self._order[name]
        n_rows = excluded.shape[0] if excluded is not None else 0
        extra = int(np.diff(sp.csr_matrix(excluded).indptr).max(initial=0)) if n_rows else 0
        head = order[: self.n_per_source + extra]
        grid = np.broadcast_to(head[None, :], (n_rows, len(head)))
        keep = np.ones(grid.shape, dtype=bool)
        if n_rows and excluded is not None and excluded.nnz:
            keep = lookup(excluded, grid) == 0
        return compact_rows(np.ascontiguousarray(grid), keep, self.n_per_source)

    def _retrieve(
        self,
        name: str,
        model: CandidateModel,
        users: np.ndarray,
        exclude: sp.csr_matrix | None,
        scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """A source's dense scores (None for a global source) and its top list: never an
        excluded post, at most one post per product. ``scores``: the source's scores of
        ``users`` when the caller has them already."""
        if is_global(model):
            if name not in self._global:
                best = model.scores_[None, :].astype(np.float32)  # type: ignore[attr-defined]
                self.context.best_per_product(best)
                self._global[name] = best[0]
            top_block = np.repeat(self._global[name][None, :], len(users), axis=0)
            block = None
        else:
            if scores is None:
                scores = model.score_users(users)
            block = scores.astype(np.float32, copy=False)
            if model.sparse_scores:
                top_block = block.copy()
                top_block[top_block <= 0] = -np.inf
            else:
                # Masked in place: the -inf entries are excluded posts, which are nobody's
                # candidates, so no feature reads them (and a row whose every post is
                # excluded has no candidates at all).
                top_block = block
        if exclude is not None:
            mask_rows(top_block, exclude[users])
        if block is None:
            return None, topk(top_block, self.n_per_source)[0]
        return block, self.context.top_per_product(top_block, self.n_per_source)


def agreement(ranks: np.ndarray, personal: np.ndarray, depth: int) -> list[np.ndarray]:
    """The :data:`AGREEMENT_FEATURES` of (sources x users x C) ``ranks`` (``depth``: absent);
    ``personal`` marks the sources that are not the same for every user.

    >>> cols = agreement(np.array([[[0, 3]], [[2, 1]]]), np.array([True, False]), 3)
    >>> [np.round(c.astype(float), 3).tolist() for c in cols]
    [[[2.0, 1.0]], [[0.0, 0.693]], [[0.091, 0.045]], [[1.0, 0.0]], [[0.048, 0.0]]]
    """
    listed = ranks < depth
    best = np.where(listed, ranks, depth).min(axis=0)
    return [
        listed.sum(axis=0).astype(np.float32),
        np.log1p(best).astype(np.float32),
        fusion_scores(ranks, depth),
        listed[personal].sum(axis=0).astype(np.float32),
        fusion_scores(ranks[personal], depth) if personal.any() else np.zeros(ranks.shape[1:]),
    ]


def shared_content(sources: Mapping[str, CandidateModel]) -> dict[str, str]:
    """Fresh sources whose content model equals a Content source listed before them: name ->
    that Content source's name. Their scores derive from the Content source's scores
    (:meth:`~feed.models.sources.Fresh.from_content`), which a block computes once."""
    out: dict[str, str] = {}
    contents: list[tuple[str, Content]] = []
    for name, model in sources.items():
        if isinstance(model, Content):
            contents.append((name, model))
        elif isinstance(model, Fresh):
            for cname, content in contents:
                if content.same_as(model.content_):
                    out[name] = cname
                    break
    return out


def merge(tops: list[np.ndarray]) -> np.ndarray:
    """Row-wise union of several (B x n) item arrays (-1 padded), sorted, -1 padded.

    >>> merge([np.array([[3, 1, -1]]), np.array([[1, 7, 2]])]).tolist()
    [[1, 2, 3, 7]]
    """
    both = np.sort(np.concatenate(tops, axis=1), axis=1)
    keep = both >= 0
    keep[:, 1:] &= both[:, 1:] != both[:, :-1]
    width = int(keep.sum(axis=1).max(initial=0))
    out = np.full((both.shape[0], max(width, 1)), -1, dtype=np.int64)
    rows, cols = np.nonzero(keep)
    pos = np.cumsum(keep, axis=1) - 1
    out[rows, pos[rows, cols]] = both[rows, cols]
    return out


def _ranks(top: np.ndarray, items: np.ndarray, depth: int) -> np.ndarray:
    """Position of each candidate in a source's top list, ``depth`` when absent.

    >>> _ranks(np.array([[7, 2, -1]]), np.array([[2, 5, 7, -1]]), 3).tolist()
    [[1, 3, 0, 3]]
    """
    n_rows, width = top.shape
    if top.size == 0:
        return np.full(items.shape, depth, dtype=np.int32)
    span = int(max(top.max(initial=-1), items.max(initial=-1))) + 2
    base = np.arange(n_rows, dtype=np.int64)[:, None] * span
    listed = np.where(top >= 0, top + 1 + base, -1).ravel()  # -1: an empty slot, never found
    order = np.argsort(listed, kind="stable")
    wanted = (items + 1 + base).ravel()
    at = np.minimum(np.searchsorted(listed[order], wanted), len(order) - 1)
    found = (listed[order][at] == wanted) & (items.ravel() >= 0)
    out = np.full(items.size, depth, dtype=np.int32)
    out[found] = order[at[found]] % width
    return out.reshape(items.shape)


def fusion_scores(ranks: np.ndarray, depth: int, k: float = 20.0) -> np.ndarray:
    """Reciprocal-rank fusion of (sources x users x C) ranks: ``sum_s 1 / (k + rank_s + 1)``
    over the sources whose list holds the candidate (absent: rank == ``depth``).

    One source at a time: the temporaries are one (users x C) plane, not float64 copies of
    the whole stack (8 bytes x sources x users x C each; with this, the 1M-like train's fit
    peak at 4,000 validation users fell from 3.54 to 3.35 GB; RSS sampled every 0.25-0.5 s)."""
    total = np.zeros(ranks.shape[1:], dtype=np.float64)
    for rank in ranks:
        total += np.where(rank < depth, 1.0 / (k + rank + 1.0), 0.0)
    return total.astype(np.float32)


def select_top(
    items: np.ndarray,
    scores: np.ndarray,
    n: int,
    keys: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-``n`` candidates per row: (items, scores, column order), -1/-inf padded.

    With ``keys`` (one key per post, e.g. its product), only the best candidate of each key is
    kept.

    >>> items, scores, _ = select_top(np.array([[4, 5, 6]]), np.array([[0.1, 0.9, 0.5]]), 2,
    ...                               np.array([0, 0, 0, 0, 1, 1, 2]))
    >>> items.tolist(), scores.tolist()
    ([[5, 6]], [[0.8999999761581421, 0.5]])
    """
    scores = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")
    n_kept = np.full(len(items), scores.shape[1])
    if keys is not None:
        order, n_kept = _first_per_key(np.take_along_axis(items, order, axis=1), order, keys)
    order = order[:, :n]
    top = np.take_along_axis(scores, order, axis=1)
    top[np.arange(top.shape[1])[None, :] >= n_kept[:, None]] = -np.inf
    picked = np.where(np.isfinite(top), np.take_along_axis(items, order, axis=1), -1)
    pad = n - picked.shape[1]
    if pad > 0:
        picked = np.pad(picked, ((0, 0), (0, pad)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
        order = np.pad(order, ((0, 0), (0, pad)), constant_values=0)
    return picked, np.where(picked >= 0, top, -np.inf).astype(np.float32), order


def _first_per_key(
    ranked: np.ndarray,
    order: np.ndarray,
    keys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``order`` with the first candidate of every key in front (best first), and how many
    such candidates each row has; the others follow."""
    valid = ranked >= 0
    first = first_of_key(np.where(valid, keys[np.maximum(ranked, 0)], NO_KEY)) & valid
    front = np.argsort(~first, axis=1, kind="stable")
    return np.take_along_axis(order, front, axis=1), first.sum(axis=1)


def product_keys(data: TrainingData) -> np.ndarray:
    """A key per post for "one post per product": its first linked product, else ``-1 - post``."""
    links = sp.csr_matrix(data.post_products)
    has = np.diff(links.indptr) > 0
    first = (
        links.indices[np.minimum(links.indptr[:-1], max(links.nnz - 1, 0))]
        if links.nnz
        else np.zeros(data.n_posts, dtype=np.int64)
    )
    return np.where(has, first, -1 - np.arange(data.n_posts)).astype(np.int64)
