"""Candidate sources: popularity, trending and fresh posts, matrix factorisation (implicit
ALS/BPR), EASE, item-item co-engagement, product-level collaborative filtering projected onto
the posts that link the products, content (TF-IDF with Chinese segmentation) and social
(followed authors).

Each is a :class:`~feed.models.base.CandidateModel`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from feed.features.matrices import SECONDS_PER_DAY, TrainingData
from feed.features.text import make_vectorizer
from feed.models.base import (
    BLOCK_FLOATS,
    CandidateModel,
    Retrieved,
    lookup,
    lookup_flat,
    row_max,
    sparse_rows_dense,
)

logger = logging.getLogger(__name__)


def _row_normalize(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m)


def _stack_rows(blocks: list[sp.csr_matrix]) -> sp.csr_matrix:
    """The CSR blocks stacked on each other, each block released as soon as it is copied (so
    the stack costs its own size and one block, not twice its size as ``sp.vstack``'s would);
    ``blocks`` is emptied."""
    nnz = sum(b.nnz for b in blocks)
    index = np.int32 if nnz < np.iinfo(np.int32).max else np.int64
    n_rows = sum(b.shape[0] for b in blocks)
    data = np.empty(nnz, dtype=blocks[0].dtype)
    indices = np.empty(nnz, dtype=index)
    indptr = np.zeros(n_rows + 1, dtype=index)
    pos = row = 0
    shape = (n_rows, blocks[0].shape[1])
    while blocks:
        b = blocks.pop(0)
        data[pos : pos + b.nnz] = b.data
        indices[pos : pos + b.nnz] = b.indices
        indptr[row + 1 : row + 1 + b.shape[0]] = b.indptr[1:] + pos
        pos, row = pos + b.nnz, row + b.shape[0]
    return sp.csr_matrix((data, indices, indptr), shape=shape)


def post_age_days(data: TrainingData) -> np.ndarray:
    """Age of every post at ``data.now`` in days, clipped at 0 (a post created after the newest
    training event is as new as it gets); NaN when unknown."""
    with np.errstate(invalid="ignore"):
        return np.maximum((data.now - data.post_created) / SECONDS_PER_DAY, 0.0)


def typical_age_days(data: TrainingData) -> float:
    """The median age (days, at ``data.now``) of the posts users engaged with, at least one day:
    the data's own time scale for recency curves."""
    age = post_age_days(data)[data.engagement.indices]
    age = age[np.isfinite(age)]
    return float(max(np.median(age), 1.0)) if len(age) else 1.0


class Popularity(CandidateModel):
    """Most engaged posts, optionally decayed by age (trending).

    Parameters
    ----------
    half_life_days : float or None
        Weight each engagement by ``0.5 ** (post_age_days / half_life_days)``; None: plain counts.
    """

    name = "popularity"
    reason = "trending"

    def __init__(self, half_life_days: float | None = None) -> None:
        self.half_life_days = half_life_days

    def fit(self, data: TrainingData) -> Popularity:
        e = data.engagement.copy()
        e.data[:] = 1.0
        counts = np.asarray(e.sum(axis=0)).ravel().astype(np.float64)
        if self.half_life_days and np.isfinite(data.now):
            age = post_age_days(data)
            decay = np.where(np.isfinite(age), 0.5 ** (age / self.half_life_days), 0.5)
            counts = counts * decay
        self.scores_ = (counts / max(counts.max(), 1e-12)).astype(np.float32)
        self.n_posts_ = data.n_posts
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.scores_, (len(users), self.n_posts_)).copy()


class MatrixFactorization(CandidateModel):
    """implicit's ALS or BPR on the user x post engagement matrix.

    Parameters
    ----------
    algorithm : {"als", "bpr"}
    factors, iterations, regularization : model size and fit
    alpha : ALS confidence scale (``1 + alpha * weight``)
    learning_rate : BPR's SGD step
    random_state : int
    max_samples : int or None
        BPR only: a budget of sampled updates. BPR runs ``5 * iterations`` epochs of one
        sampled (user, liked post, other post) update per stored entry of the fitted matrix
        each; when that would exceed ``max_samples``, it runs ``ceil(max_samples / nnz)``
        epochs instead (at least one). Large data gets the same number of updates in fewer
        epochs; data under the budget is fitted exactly as without it. None: no budget.
    """

    name = "als"
    reason = "collaborative"

    def __init__(
        self,
        algorithm: str = "als",
        factors: int = 64,
        iterations: int = 15,
        regularization: float = 0.05,
        alpha: float = 10.0,
        learning_rate: float = 0.05,
        random_state: int = 0,
        max_samples: int | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.factors = factors
        self.iterations = iterations
        self.regularization = regularization
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.max_samples = max_samples

    def epochs(self, nnz: int) -> int:
        """BPR epochs for a matrix with ``nnz`` stored entries (see ``max_samples``).

        >>> MatrixFactorization("bpr", iterations=15, max_samples=1_000).epochs(40)
        25
        >>> MatrixFactorization("bpr", iterations=15).epochs(40)
        75
        """
        epochs = self.iterations * 5
        if self.max_samples is not None and nnz * epochs > self.max_samples:
            epochs = max(1, -(-self.max_samples // max(nnz, 1)))
        return epochs

    def _make(self, nnz: int) -> Any:
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        if self.algorithm == "als":
            return AlternatingLeastSquares(
                factors=self.factors,
                iterations=self.iterations,
                regularization=self.regularization,
                alpha=self.alpha,
                random_state=self.random_state,
            )
        if self.algorithm == "bpr":
            # one thread: implicit's multi-threaded BPR is Hogwild SGD, not reproducible
            return BayesianPersonalizedRanking(
                factors=self.factors,
                iterations=self.epochs(nnz),
                regularization=self.regularization,
                learning_rate=self.learning_rate,
                num_threads=1,
                random_state=self.random_state,
            )
        raise ValueError(f"algorithm must be 'als' or 'bpr', got {self.algorithm!r}")

    def fit(
        self,
        data: TrainingData,
        matrix: sp.csr_matrix | None = None,
        init: tuple[np.ndarray, np.ndarray] | None = None,
        share: float = 1.0,
    ) -> MatrixFactorization:
        """Factorise ``data.engagement`` (or ``matrix``); twin columns are fitted once.

        Warm start: ``init`` holds starting user and post factors, one row per row and column
        of the matrix (the shapes of ``user_factors_`` and ``item_factors_``, BPR's bias
        column included); a row of NaN (a new user or post) starts as implicit starts every
        row. implicit continues from factors set before its fit, for ``share`` of the usual
        iterations (ALS) or epochs (BPR), at least one.
        """
        x = sp.csr_matrix(data.engagement if matrix is None else matrix, dtype=np.float32)
        keep, twin = twin_columns(x)
        distinct = sp.csr_matrix(x[:, keep])
        with threadpool_limits(1, "blas"):
            model = self._make(distinct.nnz)
            if init is not None:
                width = self.factors + (self.algorithm == "bpr")
                users, items = (np.array(a, dtype=np.float32) for a in init)
                if users.shape != (x.shape[0], width) or items.shape != (x.shape[1], width):
                    raise ValueError(
                        f"warm start: factors of shape {users.shape} and {items.shape} do not "
                        f"fit a {x.shape[0]} x {x.shape[1]} matrix with {width} columns"
                    )
                rng = np.random.default_rng(self.random_state)
                for rows, user in ((users, True), (items, False)):
                    new = np.isnan(rows).any(axis=1)
                    if self.algorithm == "als":  # implicit's ALS: uniform [0, 0.01)
                        rows[new] = rng.random((int(new.sum()), width), np.float32) * 0.01
                    else:  # implicit's BPR: uniform around 0 / factors; a user's bias weight 1
                        fresh = rng.random((int(new.sum()), width), np.float32) - 0.5
                        rows[new] = fresh / self.factors
                        if user:
                            rows[new, -1] = 1.0
                model.user_factors, model.item_factors = users, np.ascontiguousarray(items[keep])
                model.iterations = max(1, int(np.ceil(model.iterations * share)))
            model.fit(distinct, show_progress=False)
        self.epochs_ = int(model.iterations)
        self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)[twin]
        self._item_factors64 = self.item_factors_.astype(np.float64)
        self.n_posts_ = data.n_posts
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return dot_rows(self.user_factors_[users], self._item_factors64)

    def retrieve(self, users: np.ndarray, depth: np.ndarray) -> Retrieved:
        """The best posts of each user by (approximate) maximum inner product search."""
        self._check_fitted()
        index = factor_index(self, self.item_factors_)
        return Retrieved(index.search(self.user_factors_[users], depth), complete=False)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return dot_pairs(self.user_factors_[users], self._item_factors64, items)


#: Factor models answer top-n queries from an approximate nearest-neighbour index (faiss HNSW)
#: when they have more distinct item vectors than this; below, an exact product of the user's
#: factors with every item vector (about 150 ms per 1k users at 30k items, the top-k
#: included; the graph: 70-90 ms, finding 0.97 of the exact top-100: ``bench.ann_recall``).
#: ``FEED_ANN_MIN_ITEMS`` overrides it (for measurements: 0 puts every catalogue on the graph).
ANN_MIN_ITEMS = int(os.environ.get("FEED_ANN_MIN_ITEMS", "50000"))
#: A retrieval's rows hold at most this many times the deepest query's depth of one group of
#: twin items (:meth:`FactorIndex._members`): the candidate stage reads at most
#: ``max(4, fetch * posts per product) * n`` entries of a row beyond its excluded ones
#: (:func:`feed.models.candidates.sparse_top_per_product`), and asks a source for
#: ``fetch * posts per product * n`` plus the excluded ones, so 4 times that covers it.
TWIN_READ = 4
#: HNSW graph degree and build breadth (faiss ``IndexHNSWFlat``). Under the inner product,
#: items with small vectors (ALS's rarely bought products) get few links from the others, and
#: a sparse graph leaves some of them out of every search: with degree 16, a query 200 deep
#: (as the candidate stage asks) found 0.78 of ALS's exact top-100 on the group-buy shape
#: (BPR: 0.91), whatever the search breadth; with 64, 0.97 (0.98); Ciao 0.98 -> 0.99. The
#: search costs 1.0-1.4x as much (at 30k items 69-92 ms per 1k users, the exact product 146)
#: and the links 512 bytes an item (``bench.ann_recall``; docs/scaling.md, "Retrieval").
HNSW_M, HNSW_EF_CONSTRUCTION = 64, 128
#: A query of depth ``k`` explores ``max(HNSW_EF_MIN, HNSW_EF_FACTOR * k)`` graph nodes: the
#: recall of the retrieval against exact top-k (tests/test_retrieval.py, docs/scaling.md).
HNSW_EF_MIN, HNSW_EF_FACTOR = 128, 1
_INDEX_LOCK = threading.Lock()  # blocks of users retrieve on parallel threads: build once


def factor_index(owner: Any, items: np.ndarray) -> FactorIndex:
    """``owner``'s :class:`FactorIndex` over ``items``, built on first use and kept."""
    with _INDEX_LOCK:
        index = owner.__dict__.get("_factor_index")
        if index is None or index.source is not items:
            index = FactorIndex(items)
            owner.__dict__["_factor_index"] = index
        return index


class FactorIndex:
    """Maximum-inner-product search over item vectors.

    Identical vectors (twin posts) are indexed once and expanded back to every item. With more
    than :data:`ANN_MIN_ITEMS` distinct vectors, faiss's HNSW graph with the inner product as
    its similarity answers approximately (on ALS factors it recalled more of the exact top-100
    at a given search breadth than HNSW in Euclidean distance over vectors augmented with
    ``sqrt(max_norm^2 - |v|^2)``, the reduction implicit's faiss wrapper uses: 0.98 against
    0.80 at ``efSearch`` 128, docs/scaling.md). Fewer vectors are scored exactly (float64,
    as ``score_users``). ``degree``: the graph's (:data:`HNSW_M`).
    """

    def __init__(
        self, items: np.ndarray, min_items: int | None = None, degree: int = HNSW_M
    ) -> None:
        self.source = items
        self.n_items = len(items)
        x = np.ascontiguousarray(items, dtype=np.float32)
        _, first, inverse = np.unique(x, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)  # distinct vectors in order of first appearance
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        self.distinct = x[first[order]]
        self.distinct64 = self.distinct.astype(np.float64)
        distinct_of = position[inverse.ravel()]
        self.members = sp.csr_matrix(
            (np.ones(len(x), np.float32), (distinct_of, np.arange(len(x)))),
            shape=(len(order), len(x)),
        )
        self._capped: dict[int, sp.csr_matrix] = {}  # members, each group cut (_members)
        self.ann: Any = None
        if len(self.distinct) > (ANN_MIN_ITEMS if min_items is None else min_items):
            import faiss

            self.ann = faiss.IndexHNSWFlat(x.shape[1], degree, faiss.METRIC_INNER_PRODUCT)
            self.ann.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self.ann.add(np.ascontiguousarray(self.distinct))

    def search(self, queries: np.ndarray, depth: np.ndarray) -> sp.csr_matrix:
        """(len(queries) x n_items) CSR of each query's ``depth[i]`` best items (at least;
        approximately with the graph) with exact scores."""
        n_distinct = len(self.distinct)
        depth = np.minimum(np.asarray(depth, dtype=np.int64), n_distinct)
        width = int(depth.max(initial=0))
        if self.ann is not None and width:  # depths rounded up to a power of two
            width = int(min(2 ** np.ceil(np.log2(width)), n_distinct))
        ids = np.full((len(queries), width), -1, dtype=np.int64)
        scores = np.full(ids.shape, np.nan, dtype=np.float32)
        if ids.shape[1] and self.ann is None:
            block = dot_rows(queries, self.distinct64)
            k = ids.shape[1]
            part = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < n_distinct else None
            ids[:] = part if part is not None else np.arange(n_distinct)[None, :]
            scores[:] = np.take_along_axis(block, ids, axis=1)
        elif ids.shape[1]:
            import faiss

            q = np.asarray(queries, dtype=np.float32)
            # queries of similar depth together: depths rounded up to a power of two
            bucket = np.ceil(np.log2(np.maximum(depth, 1))).astype(np.int64)
            for b in np.unique(bucket):
                sel = np.flatnonzero(bucket == b)
                k = int(min(2**b, n_distinct))
                ef = max(HNSW_EF_MIN, HNSW_EF_FACTOR * k)
                params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
                # the index's inner products (float32): the scores to pick candidates by
                sims, found = self.ann.search(np.ascontiguousarray(q[sel]), k, params=params)
                ids[sel, :k] = found
                scores[sel, :k] = sims
        rows = np.broadcast_to(np.arange(len(queries))[:, None], ids.shape)
        ok = (ids >= 0) & (scores != 0)  # a zero score: the product drops it anyway
        hits = sp.csr_matrix(
            (scores[ok], (rows[ok], ids[ok])), shape=(len(queries), n_distinct), dtype=np.float32
        )
        return sp.csr_matrix(hits @ self._members(TWIN_READ * int(depth.max(initial=1))))

    def _members(self, cap: int) -> sp.csr_matrix:
        """``members`` with at most ``cap`` items (the first ones) per distinct vector
        (:func:`capped_members`, one cached matrix per ``cap`` rounded up to a power of two).

        Twins score alike, so a reader of a row's best ``cap`` items takes at most ``cap`` of
        one group, and which of them was arbitrary before the cut too (ties at the cut-off of
        a partial sort). A larger group only made the product and every row that long. (The
        largest group, the zero vector every post without engagement shares under ALS, 100k+
        posts at Ciao's size, scores 0 and is dropped before the product: :meth:`search`.)
        """
        cap = int(2 ** np.ceil(np.log2(max(cap, 1))))
        capped = self._capped.get(cap)
        if capped is None:
            capped = self._capped[cap] = capped_members(self.members, cap)
        return capped


def capped_members(members: sp.csr_matrix, cap: int) -> sp.csr_matrix:
    """A group x item membership matrix with at most ``cap`` items per group, the first ones.

    >>> m = sp.csr_matrix(np.array([[1.0, 1, 1], [0, 0, 0]]))
    >>> capped_members(m, 2).toarray().tolist()
    [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    counts = np.diff(members.indptr)
    if counts.max(initial=0) <= cap:
        return members
    at = np.arange(members.nnz) - np.repeat(members.indptr[:-1], counts)
    coo = members.tocoo()
    keep = at < cap
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=members.shape)


def dot_pairs(rows: np.ndarray, items64: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``rows[i] . items64[items[i, j]]`` in float64, rounded to float32 (NaN for -1 items):
    the scores :func:`dot_rows` gives, for a few items per row."""
    out = np.full(items.shape, np.nan, dtype=np.float32)
    if not items.size:
        return out
    step = max(1, BLOCK_FLOATS // max(items.shape[1] * items64.shape[1], 1))
    for lo in range(0, len(items), step):
        it = items[lo : lo + step]
        vecs = items64[np.maximum(it, 0)]  # (b, c, f) @ (b, f, 1): batched BLAS
        val = np.matmul(vecs, rows[lo : lo + step].astype(np.float64)[:, :, None])[:, :, 0]
        out[lo : lo + step] = np.where(it >= 0, val, np.nan)
    return out


def twin_columns(x: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Group identical columns ("twins", e.g. posts of one product that only purchases reach).

    Returns ``(keep, twin)``: ``keep`` holds one column index per distinct column, ascending;
    column ``j`` equals column ``keep[twin[j]]``. Models fit on ``x[:, keep]`` and map back
    with ``twin``: the same answer for twins, at the cost of the distinct columns only.

    >>> keep, twin = twin_columns(sp.csr_matrix(np.array([[1, 0, 1], [0, 2, 0]])))
    >>> keep.tolist(), twin.tolist()
    ([0, 1], [0, 1, 0])
    """
    x = sp.csr_matrix(x, dtype=np.float64)
    probe = np.random.default_rng(20_19).random((x.shape[0], 2))
    keys = np.asarray(x.T @ probe)  # identical columns sum in the same order: equal keys
    _, first, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return first[order], position[group.ravel()]


def dot_rows(rows: np.ndarray, items64: np.ndarray) -> np.ndarray:
    """``rows @ items64.T`` in float64, rounded to float32: a row's scores do not depend on
    which other rows share the matrix product (BLAS kernels differ in the last bits)."""
    return (rows.astype(np.float64) @ items64.T).astype(np.float32)


#: The popularity penalty of the "rp3beta" item-item weighting (Paudel et al.'s beta).
RP3_BETA = 0.5


def knn_similarity(x: sp.csr_matrix, K: int, method: str) -> sp.csr_matrix:
    """Column x column similarities of ``x`` (implicit's BM25 or cosine, or "rp3beta"), top
    ``K`` per row, zero diagonal.

    "rp3beta" is the three-step random walk item -> user -> item of Paudel et al. (RP3beta):
    ``W[i, j] = sum_u (x_ui / deg_i) (x_uj / deg_u) / deg_j ** beta``, the popularity penalty
    ``beta`` (:data:`RP3_BETA`) keeping popular items from every list. Computed by implicit's
    top-K item-item product over ``x`` scaled by ``1 / sqrt(deg_u)`` per row and ``deg_j **
    -beta`` per column (the same order within each row), then rescaled per row.
    """
    from implicit.nearest_neighbours import ItemItemRecommender, bm25_weight, normalize

    if method not in ("bm25", "cosine", "rp3beta"):
        raise ValueError(f"method must be 'bm25', 'cosine' or 'rp3beta', got {method!r}")
    x = sp.csr_matrix(x, dtype=np.float32)
    row_scale = None
    if method == "rp3beta":
        deg_u = np.asarray(x.sum(axis=1)).ravel()
        deg_i = np.asarray(x.sum(axis=0)).ravel()
        per_user = 1.0 / np.sqrt(np.maximum(deg_u, 1e-12))
        per_item = np.where(deg_i > 0, np.maximum(deg_i, 1e-12) ** -RP3_BETA, 0.0)
        weighted = sp.diags(per_user) @ x.astype(np.float64) @ sp.diags(per_item)
        # rows come out scaled by deg_i ** -beta: rescaled to 1 / deg_i below
        row_scale = np.where(deg_i > 0, np.maximum(deg_i, 1e-12) ** (RP3_BETA - 1.0), 0.0)
    else:
        # What implicit's BM25Recommender (K1 1.2, B 0.75) and CosineRecommender fit on, handed
        # over as CSR: they pass it as COO, and implicit warns about converting it (a warnings
        # filter would not be thread-safe, and sources are fitted on parallel threads).
        weighted = bm25_weight(x.T, K1=1.2, B=0.75).T if method == "bm25" else normalize(x.T).T
    model = ItemItemRecommender(K=K)
    model.fit(sp.csr_matrix(weighted), show_progress=False)
    sim = sp.csr_matrix(model.similarity, dtype=np.float32)
    if row_scale is not None:
        sim = sp.csr_matrix(sp.diags(row_scale.astype(np.float32)) @ sim)
    sim.setdiag(0)
    sim.eliminate_zeros()
    return sim


class ItemItem(CandidateModel):
    """Item-item co-engagement (implicit's cosine or BM25 nearest neighbours, or RP3beta's
    walk: :func:`knn_similarity`).

    Parameters
    ----------
    K : int
        Neighbours kept per post.
    method : {"bm25", "cosine", "rp3beta"}
    """

    name = "itemknn"
    sparse_scores = True
    reason = "co_engagement"

    def __init__(self, K: int = 100, method: str = "bm25") -> None:
        self.K = K
        self.method = method

    def fit(self, data: TrainingData) -> ItemItem:
        """Neighbours between distinct engagement columns (twin posts share their row)."""
        x = sp.csr_matrix(data.engagement, dtype=np.float32)
        keep, self.twin_ = twin_columns(x)
        self.user_items_ = sp.csr_matrix(x[:, keep])
        self.twin_similarity_ = knn_similarity(self.user_items_, self.K, self.method)
        self.n_posts_ = data.n_posts
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        scores = sparse_rows_dense(self.user_items_[users] @ self.twin_similarity_)
        return scores[:, self.twin_]

    def retrieve(self, users: np.ndarray, depth: np.ndarray) -> Retrieved:
        """Neighbour expansion: the user's posts times the top-K neighbour matrix (every post
        with a non-zero score, exact)."""
        self._check_fitted()
        scores = self.user_items_[users] @ self.twin_similarity_
        return Retrieved(expand_twins(scores, self.twin_), complete=True)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return lookup(self.retrieve(users, np.zeros(len(users), np.int64)).scores, items)

    def similar_posts(self, posts: np.ndarray, n: int) -> sp.csr_matrix:
        """Each of ``posts``' ``n`` most similar posts: sparse (len(posts), n_posts) rows of
        similarities, in time linear in the rows (never a row over every post). The ``n``
        best columns of the post's neighbour row, each onto its twin posts, at most ``n`` of
        one group (the first ones; they score alike, so which ones was arbitrary anyway)."""
        self._check_fitted()
        rows = top_per_row(self.twin_similarity_[self.twin_[np.asarray(posts, np.int64)]], n)
        with _INDEX_LOCK:  # blocks of posts run on parallel threads: build once
            cache = self.__dict__.setdefault("_members", {})
            if n not in cache:
                groups = twin_members(self.twin_, self.twin_similarity_.shape[1])
                cache[n] = capped_members(groups, n)
        return sp.csr_matrix(rows @ cache[n], dtype=np.float32)


_TFIDF: dict[tuple[int, str], tuple[Any, sp.csr_matrix]] = {}  # the last post_tfidf result
_TFIDF_LOCK = threading.Lock()  # sources fitted on parallel threads wait for one another


def post_tfidf(texts: list[str], min_df: int) -> tuple[Any, sp.csr_matrix]:
    """A TF-IDF vectorizer fitted on the post texts and the posts' float32 vectors.

    Segmenting Chinese is the slow part of every text model, and the posts are the same for
    :class:`Content` and :class:`Fresh` and for the validation and final fits (a split holds
    out events, never posts): the last result is kept and returned again for the same texts.
    The returned objects are shared; callers must not modify them.
    """
    key = (min_df, hashlib.sha256("\x00".join(texts).encode()).hexdigest())
    with _TFIDF_LOCK:
        if key in _TFIDF:
            return _TFIDF[key]
        vec = make_vectorizer(min_df=min_df)
        try:
            vectors = sp.csr_matrix(vec.fit_transform(texts), dtype=np.float32)
        except ValueError:  # empty vocabulary: no text at all
            vectors = sp.csr_matrix((len(texts), 1), dtype=np.float32)
        _TFIDF.clear()
        _TFIDF[key] = vec, vectors
        return vec, vectors


#: Users whose content profiles are computed at once (:meth:`Content.fit`).
PROFILE_BLOCK_USERS = 32_768


class Content(CandidateModel):
    """TF-IDF content similarity: the user's profile is the sum of the posts they engaged with
    and the titles/categories of products they bought; it also scores posts nobody engaged with.

    Parameters
    ----------
    min_df : int
        Tokens in fewer posts are dropped.
    """

    name = "content"
    sparse_scores = True
    reason = "content"
    ranked_retrieval = False  # champion lists: deeper finds better posts

    def __init__(self, min_df: int = 2) -> None:
        self.min_df = min_df

    def fit(self, data: TrainingData) -> Content:
        min_df = min(self.min_df, max(1, data.n_posts // 2))
        vec, self.post_vectors_ = post_tfidf(data.post_text, min_df)
        self.vectorizer_ = vec
        prod_vecs = None
        if data.purchases.nnz and hasattr(vec, "vocabulary_"):
            prod_docs = [
                f"{t} {c}"
                for t, c in zip(data.product_titles, data.product_categories, strict=True)
            ]
            prod_vecs = vec.transform(prod_docs)

        def profiles(lo: int) -> sp.csr_matrix:
            # a block of users at a time: the float64 product and its sum, the profiles'
            # largest transient arrays, never exist for every user at once (each row's
            # values are the same either way)
            rows = slice(lo, lo + PROFILE_BLOCK_USERS)
            block = data.engagement[rows] @ self.post_vectors_
            if prod_vecs is not None:
                block = block + data.purchases[rows] @ prod_vecs
            return _row_normalize(sp.csr_matrix(block, dtype=np.float32))

        blocks = [profiles(lo) for lo in range(0, max(data.n_users, 1), PROFILE_BLOCK_USERS)]
        self.profiles_ = _stack_rows(blocks)
        self.n_posts_ = data.n_posts
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Cosine of each user's profile with every post: ``post_vectors_ @ profile``.

        A profile holds hundreds of tokens and shares one with most posts, so the product
        is nearly dense: it is computed as a sparse matrix times the dense profiles (in
        float32, each score summed over the post's tokens; a user's scores do not depend
        on the other users of the block), several times faster than a sparse x sparse
        product and its sparse result.
        """
        users = np.asarray(users, dtype=np.int64)
        out = np.empty((len(users), self.n_posts_), dtype=np.float32)
        step = max(1, BLOCK_FLOATS // max(self.profiles_.shape[1], 1))
        for lo in range(0, len(users), step):
            profiles = self.profiles_[users[lo : lo + step]].toarray()
            out[lo : lo + step] = (self.post_vectors_ @ np.ascontiguousarray(profiles.T)).T
        return out

    def retrieve(self, users: np.ndarray, depth: np.ndarray) -> Retrieved:
        """Champion lists: the user's :data:`CONTENT_PROFILE_TERMS` heaviest profile terms,
        each term's :data:`CONTENT_CHAMPIONS` heaviest posts; the best of those by the partial
        cosine (over the kept terms) are scored exactly."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        profiles = top_per_row(self.profiles_[users], CONTENT_PROFILE_TERMS)
        with _INDEX_LOCK:
            if "_champions" not in self.__dict__:
                self.__dict__["_champions"] = top_per_row(
                    sp.csr_matrix(self.post_vectors_.T), CONTENT_CHAMPIONS
                )
        partial = sp.csr_matrix(profiles @ self.__dict__["_champions"])
        partial.data[partial.data <= 0] = 0  # never a candidate by a partial score
        partial.eliminate_zeros()
        best = top_per_row(partial, int(max(depth.max(initial=0), 1)))
        return Retrieved(rescore(self, users, best), complete=False)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The cosine of each pair: the post's TF-IDF entries times the profile's, one user at
        a time through a vocabulary-wide buffer holding only that user's terms (so the cost
        follows the pairs' entries, not the vocabulary, which grows with the catalogue)."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        out = np.full(items.shape, np.nan, dtype=np.float32)
        flat = items.ravel()
        ok = np.flatnonzero(flat >= 0)
        vecs = self.post_vectors_[flat[ok]]
        pair = np.repeat(np.arange(len(ok)), np.diff(vecs.indptr))
        row = ok[pair] // max(items.shape[1], 1)  # ascending: the pairs are row-major
        bounds = np.searchsorted(row, np.arange(len(users) + 1))
        weights = np.zeros(len(pair), dtype=np.float64)
        profiles = self.profiles_[users]
        profile = np.zeros(profiles.shape[1], dtype=np.float32)
        for i in np.flatnonzero(np.diff(bounds)):
            a, b = bounds[i], bounds[i + 1]
            terms = profiles.indices[profiles.indptr[i] : profiles.indptr[i + 1]]
            profile[terms] = profiles.data[profiles.indptr[i] : profiles.indptr[i + 1]]
            weights[a:b] = profile[vecs.indices[a:b]] * vecs.data[a:b]
            profile[terms] = 0.0
        out.ravel()[ok] = np.bincount(pair, weights=weights, minlength=len(ok))
        return out

    def same_as(self, other: Content) -> bool:
        """True when ``other`` is fitted and scores every user exactly as this one does."""
        if not hasattr(self, "profiles_") or not hasattr(other, "profiles_"):
            return False
        return _csr_equal(self.post_vectors_, other.post_vectors_) and _csr_equal(
            self.profiles_, other.profiles_
        )

    def transform_text(self, texts: list[str]) -> sp.csr_matrix:
        """TF-IDF vectors of new texts (for cold-start interests)."""
        return sp.csr_matrix(self.vectorizer_.transform(texts), dtype=np.float32)


#: How many of each author's newest posts :meth:`Social.retrieve` reads first, to bound the
#: score a post needs to be among a user's best.
SOCIAL_FIRST_READ = 64


class AuthorRuns(NamedTuple):
    """Every author's posts newest first, one run per author (:meth:`Social._by_recency`):
    ``posts``/``recency`` in run order, ``starts``/``counts`` indexed by author; ``keys``
    ascend, ``author * span - recency`` (``span`` above every recency), so one
    ``searchsorted`` finds, in any author's run, where the recency falls below a floor."""

    posts: np.ndarray
    recency: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    keys: np.ndarray
    span: float


def kth_per_row(m: sp.csr_matrix, k: np.ndarray) -> np.ndarray:
    """Each row's ``k[i]``-th largest stored value (-inf when the row stores fewer).

    >>> kth_per_row(sp.csr_matrix(np.array([[1.0, 3, 2], [0, 5, 0]])), np.array([2, 2])).tolist()
    [2.0, -inf]
    """
    m = sp.csr_matrix(m)
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0]), counts)
    values = m.data[np.lexsort((-m.data, rows))]
    k = np.asarray(k, dtype=np.int64)
    out = np.full(m.shape[0], -np.inf)
    has = (k >= 1) & (counts >= k)
    out[has] = values[m.indptr[:-1][has] + k[has] - 1]
    return out


class Social(CandidateModel):
    """Posts of authors the user follows or engaged with, weighted by affinity and recency.

    Parameters
    ----------
    follow_weight : float
        Affinity of a follow, added to the user's engagement share with the author.
    half_life_days : float or None
        Newer posts of an author score higher; None takes :func:`typical_age_days` of the data,
        so that the recency curve fits the data's time scale (days for a feed, years for films).
    """

    name = "social"
    sparse_scores = True
    reason = "followed_author"

    def __init__(self, follow_weight: float = 1.0, half_life_days: float | None = None) -> None:
        self.follow_weight = follow_weight
        self.half_life_days = half_life_days

    def fit(self, data: TrainingData) -> Social:
        n = data.n_posts
        author_posts = sp.csr_matrix(
            (np.ones(n, dtype=np.float32), (np.arange(n), data.post_author)),
            shape=(n, data.n_users),
        )
        engaged_authors = data.engagement @ author_posts  # users x authors
        share = sp.diags(1.0 / np.maximum(np.asarray(engaged_authors.sum(axis=1)).ravel(), 1e-9))
        self.affinity_ = sp.csr_matrix(
            self.follow_weight * data.follows + share @ engaged_authors, dtype=np.float32
        )
        half_life = self.half_life_days or typical_age_days(data)
        age = post_age_days(data)
        recency = np.where(np.isfinite(age), 0.5 ** (age / half_life), 0.5)
        self.author_posts_ = sp.csr_matrix(author_posts.T @ sp.diags(recency), dtype=np.float32)
        self.post_author_ = np.asarray(data.post_author, dtype=np.int64)
        self.recency_ = recency.astype(np.float32)
        self.n_posts_ = n
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return sparse_rows_dense(self.affinity_[users] @ self.author_posts_)

    def retrieve(self, users: np.ndarray, depth: np.ndarray) -> Retrieved:
        """Each user's ``depth`` best posts at least (exact): every post scoring as much as
        the ``depth``-th best of a first read of each author's :data:`SOCIAL_FIRST_READ`
        newest posts (a lower bound of the true ``depth``-th best), at most as many of an
        author as the deepest user of the block needs (rounded up to a power of two), and of
        the posts tied at that bar only as many as the list needs. An author's posts are read
        newest first, so an author's posts above a score are a prefix: a user following
        authors of thousands of posts reads about ``depth`` posts, not a thousand of each
        (29,000 stored candidates a user at 500k posts before, docs/scaling.md). Complete
        (every post's score, zeros included) when every author of every user was read to
        the end."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        depth = np.broadcast_to(np.asarray(depth, dtype=np.int64), users.shape)
        need = int(2 ** np.ceil(np.log2(max(int(depth.max(initial=1)), 1))))
        pairs = self.affinity_[users].tocoo()  # (user, author, affinity), by user
        runs = self._by_recency()
        counts_of = runs.counts[pairs.col]
        first = self._read(pairs, np.minimum(counts_of, SOCIAL_FIRST_READ), len(users))
        bar = kth_per_row(first, depth)[pairs.row]  # -inf: fewer read than asked, read all
        with np.errstate(divide="ignore", invalid="ignore"):
            floor = np.where(pairs.data > 0, bar / pairs.data, np.inf)
        # the pair's author's posts whose recency is at the floor or above, and above it (a
        # hair below and above: float rounding never decides): prefixes of its run
        cap = np.minimum(counts_of, need)
        base, start = pairs.col * runs.span, runs.starts[pairs.col]
        at_or_above, above = (
            np.clip(np.searchsorted(runs.keys, base - floor * f, side="right") - start, 0, cap)
            for f in (1 - 1e-6, 1 + 1e-6)
        )
        # of the posts tied at the bar, only as many as the user's list still needs (every
        # post of data without timestamps ties with its author's others), in the pairs' order
        ties = at_or_above - above
        short = np.maximum(depth - np.bincount(pairs.row, above, len(users)), 0)[pairs.row]
        before = np.cumsum(ties) - ties
        before -= before[np.searchsorted(pairs.row, pairs.row)]  # within the user's pairs
        take = above + np.clip(short - before, 0, ties).astype(np.int64)
        complete = bool((take == counts_of).all())
        return Retrieved(self._read(pairs, take, len(users)), complete=complete)

    def _read(self, pairs: sp.coo_matrix, take: np.ndarray, n_rows: int) -> sp.csr_matrix:
        """Users x posts scores of the first ``take[i]`` newest posts of each (user, author)
        pair's author: affinity times recency."""
        runs = self._by_recency()
        take = np.asarray(take, dtype=np.int64)
        at = (
            np.repeat(runs.starts[pairs.col], take)
            + np.arange(take.sum())
            - np.repeat(np.cumsum(take) - take, take)
        )
        scores = np.repeat(pairs.data, take) * runs.recency[at]
        per_row = np.bincount(pairs.row, weights=take, minlength=n_rows).astype(np.int64)
        return sp.csr_matrix(
            (scores.astype(np.float32), runs.posts[at], np.r_[0, np.cumsum(per_row)]),
            shape=(n_rows, self.n_posts_),
        )

    def _by_recency(self) -> AuthorRuns:
        """Every author's posts newest first (ties: the lower index), one run per author."""
        with _INDEX_LOCK:
            if "_runs" not in self.__dict__:
                m = self.author_posts_.tocoo()
                order = np.lexsort((m.col, -m.data, m.row))
                recency = m.data[order].astype(np.float64)
                span = 1.0 + float(recency.max(initial=1.0))
                indptr = self.author_posts_.indptr.astype(np.int64)
                self.__dict__["_runs"] = AuthorRuns(
                    posts=m.col[order].astype(np.int64),
                    recency=recency.astype(np.float32),
                    starts=indptr[:-1],
                    counts=np.diff(indptr),
                    keys=m.row[order] * span - recency,
                    span=span,
                )
            return self.__dict__["_runs"]

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        self._check_fitted()
        safe = np.maximum(items, 0)
        rows = np.broadcast_to(np.arange(len(items))[:, None], items.shape).ravel()
        aff = lookup_flat(self.affinity_[users], rows, self.post_author_[safe].ravel())
        out = aff.reshape(items.shape) * self.recency_[safe]
        return np.where(items >= 0, out, np.nan).astype(np.float32)


class Trending(Popularity):
    """Recent engagement: each post's like weights plus the purchases of the product it links
    (its most bought one), summed as stored in ``data``.

    Fitted on a :class:`TrainingData` built with a half-life
    (``build(ds, EngagementWeights(half_life_days=...))``), every event counts by its age.
    """

    name = "trending"
    reason = "trending"

    def __init__(self) -> None:
        pass

    def fit(self, data: TrainingData) -> Trending:
        liked = np.asarray(data.likes.sum(axis=0)).ravel()
        bought = np.asarray(data.purchases.sum(axis=0)).ravel()
        links = sp.csr_matrix(data.post_products, dtype=np.float32).multiply(bought[None, :])
        counts = liked + row_max(links)
        self.scores_ = (counts / max(counts.max(initial=0.0), 1e-12)).astype(np.float32)
        self.n_posts_ = data.n_posts
        return self


class Fresh(CandidateModel):
    """New posts that match the user: ``recency * (floor + TF-IDF similarity to the profile)``.

    Recency is ``0.5 ** (age_days / half_life_days)`` (posts created after the newest training
    event have age 0; unknown ages count as one half-life); the profile is :class:`Content`'s.
    A user without a profile gets the newest posts.

    Parameters
    ----------
    half_life_days : float or None
        None takes :func:`typical_age_days` of the data.
    floor : float
        Weight of recency alone.
    min_df : int
        As for :class:`Content`.
    """

    name = "fresh"
    reason = "fresh"
    ranked_retrieval = False  # content's champion lists and the newest posts

    def __init__(
        self, half_life_days: float | None = None, floor: float = 0.05, min_df: int = 2
    ) -> None:
        self.half_life_days = half_life_days
        self.floor = floor
        self.min_df = min_df

    def fit(self, data: TrainingData, content: Content | None = None) -> Fresh:
        """``content``: a :class:`Content` this model :meth:`shares`, already fitted on the
        same ``data``, taken as its own (not copied) instead of fitting another."""
        age = post_age_days(data)
        half_life = self.half_life_days or typical_age_days(data)
        self.recency_ = np.where(np.isfinite(age), 0.5 ** (age / half_life), 0.5)
        self.recency_ = self.recency_.astype(np.float32)
        if content is not None:
            if not self.shares(content) or content.n_posts_ != data.n_posts:
                raise ValueError("content: a Content with other settings or of other data")
            self.content_ = content
        else:
            self.content_ = Content(min_df=self.min_df).fit(data)
        self.n_posts_ = data.n_posts
        return self

    def shares(self, content: Content) -> bool:
        """True when ``content`` is the text model this one fits (the same settings)."""
        return content.get_params() == {"min_df": self.min_df}

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.from_content(self.content_.score_users(users))

    def retrieve(self, users: np.ndarray, depth: np.ndarray) -> Retrieved:
        """The content model's candidates and the newest posts (the best of a user without a
        matching post), scored exactly."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        return self.from_content_retrieved(users, depth, self.content_.retrieve(users, depth))

    def from_content_retrieved(
        self, users: np.ndarray, depth: np.ndarray, content: Retrieved
    ) -> Retrieved:
        """:meth:`retrieve` given ``content``, the answer of a Content model equal to
        ``content_`` (:meth:`Content.same_as`) for the same users and depth: its exact
        scores are reused, and only the newest posts are scored (at 500k posts, reading
        and scoring content's candidates a second time was a sixth of the candidate stage)."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        with _INDEX_LOCK:
            if "_newest" not in self.__dict__:
                self.__dict__["_newest"] = np.argsort(-self.recency_, kind="stable")
        k = int(min(np.max(depth, initial=0), self.n_posts_))
        newest = self.__dict__["_newest"][:k]
        items = np.broadcast_to(newest[None, :], (len(users), k))
        recent = sp.csr_matrix(
            (
                self.floor + score_pairs_chunked(self.content_, users, items).ravel(),
                np.tile(newest, len(users)),
                np.arange(len(users) + 1) * k,
            ),
            shape=(len(users), self.n_posts_),
        )
        matched = sp.csr_matrix(content.scores, dtype=np.float32, copy=True)
        matched.data += np.float32(self.floor)
        # both hold floor + the exact content score where they overlap
        both = sp.csr_matrix(matched.maximum(recent)).multiply(self.recency_[None, :])
        return Retrieved(sp.csr_matrix(both, dtype=np.float32), complete=False)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        content = self.content_.score_pairs(users, items)
        return ((self.floor + content) * self.recency_[np.maximum(items, 0)]).astype(np.float32)

    def from_content(self, content_scores: np.ndarray) -> np.ndarray:
        """The scores, given :meth:`Content.score_users` of a Content model equal to
        ``content_`` (:meth:`Content.same_as`) for the same users."""
        return (self.floor + content_scores) * self.recency_


class EASE(CandidateModel):
    """EASE (Steck, 2019): closed-form item-item regression on the binarised engagement matrix.

    Only posts with engagement get weights; the dense (posts x posts) solve limits the size.

    Parameters
    ----------
    l2 : float
        Ridge penalty on the item-item weights.
    max_items : int
        ``fit`` raises ValueError when more posts than this have engagement.
    weighted_users : bool
        Score a user's engagement weights rather than 0/1 (fitted on a time-decayed
        :class:`TrainingData`, recent engagement then counts most).
    """

    name = "ease"
    reason = "collaborative"
    sparse_scores = True

    def __init__(
        self, l2: float = 200.0, max_items: int = 20_000, weighted_users: bool = False
    ) -> None:
        self.l2 = l2
        self.max_items = max_items
        self.weighted_users = weighted_users

    def fit(self, data: TrainingData) -> EASE:
        """Solve for the item-item weights of the distinct engaged columns."""
        x = sp.csr_matrix(data.engagement, dtype=np.float32, copy=True)
        x.data[:] = 1.0
        keep, self.twin_ = twin_columns(x)
        distinct = sp.csr_matrix(x[:, keep])
        self.active_ = np.flatnonzero(distinct.getnnz(axis=0) > 0)  # positions in keep
        if len(self.active_) > self.max_items:
            raise ValueError(
                f"EASE: {len(self.active_)} distinct engaged posts > max_items={self.max_items}"
            )
        xa = sp.csr_matrix(distinct[:, self.active_])
        gram = (xa.T @ xa).toarray().astype(np.float64)
        if self.weighted_users:
            weighted = sp.csr_matrix(data.engagement, dtype=np.float32)[:, keep]
            xa = sp.csr_matrix(weighted[:, self.active_])
        gram[np.diag_indices_from(gram)] += self.l2
        inv = np.linalg.inv(gram)
        weights = -inv / np.diag(inv)
        np.fill_diagonal(weights, 0.0)
        self.weights_ = weights.astype(np.float32)
        self.user_items_ = xa
        self.n_distinct_ = len(keep)
        self.n_posts_ = data.n_posts
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        out = np.zeros((len(users), self.n_distinct_), dtype=np.float32)
        out[:, self.active_] = self.user_items_[users] @ self.weights_
        return out[:, self.twin_]

    def retrieve(self, users: np.ndarray, depth: np.ndarray) -> Retrieved:
        """Exact: scores over the engaged posts only (at most ``max_items``), whatever the
        catalogue's size; a post nobody engaged with scores 0."""
        self._check_fitted()
        block = np.asarray(self.user_items_[users] @ self.weights_, dtype=np.float32)
        block[block <= 0] = 0  # sparse scores: never a candidate
        k = int(min(max(depth.max(initial=0), 1), block.shape[1]))
        if k < block.shape[1]:
            part = np.argpartition(-block, k - 1, axis=1)[:, :k]
            kept = np.zeros_like(block)
            np.put_along_axis(kept, part, np.take_along_axis(block, part, axis=1), axis=1)
            block = kept
        scores = sp.csr_matrix(block)  # users x active
        to_posts = sp.csr_matrix(
            (np.ones(len(self.active_), np.float32), (np.arange(len(self.active_)), self.active_)),
            shape=(len(self.active_), self.n_distinct_),
        )
        return Retrieved(expand_twins(scores @ to_posts, self.twin_), complete=False)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        self._check_fitted()
        if not hasattr(self, "_active_of"):
            position = np.full(self.n_distinct_, -1, dtype=np.int64)
            position[self.active_] = np.arange(len(self.active_))
            self._active_of = position
        block = np.asarray(self.user_items_[users] @ self.weights_, dtype=np.float32)
        col = self._active_of[self.twin_[np.maximum(items, 0)]]
        out = np.take_along_axis(block, np.maximum(col, 0), axis=1) if block.shape[1] else col * 0.0
        out = np.where(col >= 0, out, 0.0)
        return np.where(items >= 0, out, np.nan).astype(np.float32)


class ProductCF(CandidateModel):
    """Collaborative filtering on the user x product purchases, projected onto posts: a post
    scores the mean score of the products it links (0 when it links none).

    Parameters
    ----------
    method : {"als", "itemknn"}
        implicit's ALS on the purchase matrix, or BM25 item-item between products.
    factors, iterations, regularization, alpha : ALS parameters
    K : int
        Neighbours per product (itemknn).
    random_state : int
    """

    name = "product_cf"
    reason = "purchased_together"
    sparse_scores = True

    def __init__(
        self,
        method: str = "als",
        factors: int = 64,
        iterations: int = 15,
        regularization: float = 0.05,
        alpha: float = 10.0,
        K: int = 100,
        random_state: int = 0,
    ) -> None:
        self.method = method
        self.factors = factors
        self.iterations = iterations
        self.regularization = regularization
        self.alpha = alpha
        self.K = K
        self.random_state = random_state

    def fit(self, data: TrainingData) -> ProductCF:
        if self.method not in ("als", "itemknn"):
            raise ValueError(f"method must be 'als' or 'itemknn', got {self.method!r}")
        x = sp.csr_matrix(data.purchases, dtype=np.float32)
        self.user_items_ = x
        self.factors_: MatrixFactorization | None = None
        self.similarity_: sp.csr_matrix | None = None
        if x.nnz and self.method == "als":
            self.factors_ = MatrixFactorization(
                "als",
                factors=self.factors,
                iterations=self.iterations,
                regularization=self.regularization,
                alpha=self.alpha,
                random_state=self.random_state,
            ).fit(data, matrix=x)
        elif x.nnz:
            self.similarity_ = knn_similarity(x, self.K, "bm25")
        links = sp.csr_matrix(data.post_products, dtype=np.float32)
        self.links_ = sp.csr_matrix(_row_normalize_l1(links).T)  # products x posts
        self.n_posts_ = data.n_posts
        return self

    def product_scores(self, users: np.ndarray) -> np.ndarray:
        """Dense (len(users), n_products) scores of products."""
        self._check_fitted()
        if self.factors_ is not None:
            f = self.factors_
            return dot_rows(f.user_factors_[users], f._item_factors64)
        if self.similarity_ is not None:
            return sparse_rows_dense(self.user_items_[users] @ self.similarity_)
        return np.zeros((len(users), self.links_.shape[0]), dtype=np.float32)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        scores = self.product_scores(users)
        return np.asarray(self.links_.T @ scores.T, dtype=np.float32).T.copy()

    def retrieve(self, users: np.ndarray, depth: np.ndarray) -> Retrieved:
        """The user's best products (nearest neighbours of the user's factors, or neighbour
        expansion of their purchases), projected onto the posts that link them."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        if self.factors_ is not None:
            f = self.factors_
            per_product = max(1.0, self.n_posts_ / max(self.links_.shape[0], 1))
            wanted = np.ceil(np.asarray(depth) / per_product).astype(np.int64)
            products = factor_index(f, f.item_factors_).search(f.user_factors_[users], wanted)
            posts = sp.csr_matrix(products @ self.links_)
            if np.diff(self.links_.tocsc().indptr).max(initial=0) > 1:
                # a post linking several products: the mean over all of them, not only the
                # retrieved ones
                posts = rescore(self, users, posts)
            return Retrieved(posts, complete=False)
        if self.similarity_ is not None:
            products = self.user_items_[users] @ self.similarity_
            return Retrieved(sp.csr_matrix(products @ self.links_), complete=True)
        return Retrieved(sp.csr_matrix((len(users), self.n_posts_), dtype=np.float32), True)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Each post's mean score of the products it links."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        if "_post_links" not in self.__dict__:
            self.__dict__["_post_links"] = sp.csr_matrix(self.links_.T)  # posts x products
        links = self.__dict__["_post_links"]
        out = np.full(items.shape, np.nan, dtype=np.float32)
        flat = items.ravel()
        ok = np.flatnonzero(flat >= 0)
        sub = links[flat[ok]]
        pair = np.repeat(np.arange(len(ok)), np.diff(sub.indptr))
        row = ok[pair] // max(items.shape[1], 1)
        if self.factors_ is not None:
            f = self.factors_
            u = f.user_factors_[users]
            val = np.einsum("kf,kf->k", u[row], f.item_factors_[sub.indices])
        elif self.similarity_ is not None:
            val = lookup_flat(self.user_items_[users] @ self.similarity_, row, sub.indices)
        else:
            val = np.zeros(len(pair))
        out.ravel()[ok] = np.bincount(pair, weights=val * sub.data, minlength=len(ok))
        return out


def _csr_equal(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    """Same shape, sparsity structure and values (bit for bit)."""
    if a is b:
        return True
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(a.data, b.data)
    )


def _row_normalize_l1(m: sp.csr_matrix) -> sp.csr_matrix:
    sums = np.asarray(m.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(sums, 1e-12)) @ m)


#: Content retrieval: profile terms kept per user, posts kept per term (champion lists).
CONTENT_PROFILE_TERMS, CONTENT_CHAMPIONS = 32, 256


def top_per_row(m: sp.spmatrix, k: int) -> sp.csr_matrix:
    """Each row's ``k`` largest stored entries (which of equal values: unspecified), in
    time linear in the stored entries (rows of similar length padded into dense blocks).

    >>> top_per_row(sp.csr_matrix(np.array([[1.0, 3, 2], [0, 5, 0]])), 2).toarray().tolist()
    [[0.0, 3.0, 2.0], [0.0, 5.0, 0.0]]
    """
    m = sp.csr_matrix(m)
    m.sum_duplicates()
    counts = np.diff(m.indptr)
    if counts.max(initial=0) <= k:
        return m
    keep = np.ones(m.nnz, dtype=bool)
    bucket = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    for b in np.unique(bucket[counts > k]):
        sel = np.flatnonzero((bucket == b) & (counts > k))
        width = int(counts[sel].max())
        lens = counts[sel]
        r = np.repeat(np.arange(len(sel)), lens)
        pos = np.arange(len(r)) - np.repeat(np.cumsum(lens) - lens, lens)
        src = np.repeat(m.indptr[sel], lens) + pos
        vals = np.full((len(sel), width), -np.inf, dtype=np.float64)
        vals[r, pos] = m.data[src]
        where = np.full((len(sel), width), -1, dtype=np.int64)
        where[r, pos] = src
        part = np.argpartition(-vals, k - 1, axis=1)[:, k:]
        drop = np.take_along_axis(where, part, axis=1)
        keep[drop[drop >= 0]] = False
    rows = np.repeat(np.arange(m.shape[0]), counts)
    return sp.csr_matrix(
        (
            m.data[keep],
            m.indices[keep],
            np.r_[0, np.cumsum(np.bincount(rows[keep], minlength=m.shape[0]))],
        ),
        shape=m.shape,
    )


def sparse_topk(m: sp.spmatrix, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``n`` stored entries of a sparse matrix, best first (ties: the lower
    column first), as :func:`feed.models.base.topk` gives them for a dense block: ``(items,
    scores)``, -1 and -inf padded; linear in the stored entries.

    >>> items, scores = sparse_topk(sp.csr_matrix(np.array([[1.0, 3, 3], [0, 0, 0]])), 2)
    >>> items.tolist(), scores.tolist()
    ([[1, 2], [-1, -1]], [[3.0, 3.0], [-inf, -inf]])
    """
    top = top_per_row(sp.csr_matrix(m, dtype=np.float32), n).tocoo()
    items = np.full((top.shape[0], n), -1, dtype=np.int64)
    scores = np.full((top.shape[0], n), -np.inf, dtype=np.float32)
    order = np.lexsort((top.col, -top.data, top.row))
    row, col, val = top.row[order], top.col[order], top.data[order]
    starts = np.searchsorted(row, np.arange(top.shape[0]))
    rank = np.arange(len(row)) - starts[row]
    items[row, rank] = col
    scores[row, rank] = val
    return items, scores


def twin_members(twin: np.ndarray, n_distinct: int) -> sp.csr_matrix:
    """Distinct column x post membership (``twin_columns``' ``twin``): row ``j`` holds the
    posts whose column is distinct column ``j``."""
    return sp.csr_matrix(
        (np.ones(len(twin), np.float32), (twin, np.arange(len(twin)))),
        shape=(n_distinct, len(twin)),
    )


def expand_twins(scores: sp.spmatrix, twin: np.ndarray) -> sp.csr_matrix:
    """Scores over distinct columns (``twin_columns``) onto every post: ``scores[:, twin]``."""
    return sp.csr_matrix(scores @ twin_members(twin, scores.shape[1]), dtype=np.float32)


#: Pairs a :func:`score_pairs_chunked` call scores at once. Scoring a pair gathers the post's
#: stored entries (content: its dozens of terms; product CF: its links times the factors), so
#: a block of users' retrieved candidates scored in one call took gigabytes (1.7 GB for 435
#: users' product-ALS candidates at 20k posts, 7 GB of peak RSS for the candidate stage at 1M
#: likes); a few rows at a time bound it, with the same values.
PAIR_CHUNK = 1 << 16


def score_pairs_chunked(model: CandidateModel, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``model.score_pairs(users, items)`` computed a block of rows at a time (at most about
    :data:`PAIR_CHUNK` pairs): every source scores a row from its user alone, so the values
    are the same."""
    rows = max(1, PAIR_CHUNK // max(items.shape[1], 1))
    if len(users) <= rows:
        return model.score_pairs(users, items)
    return np.concatenate(
        [
            model.score_pairs(users[lo : lo + rows], items[lo : lo + rows])
            for lo in range(0, len(users), rows)
        ]
    )


def rescore(model: CandidateModel, users: np.ndarray, candidates: sp.spmatrix) -> sp.csr_matrix:
    """``candidates``' stored pairs with the model's exact scores (:meth:`score_pairs`)."""
    c = sp.csr_matrix(candidates, dtype=np.float32)
    c.sum_duplicates()
    counts = np.diff(c.indptr)
    width = int(counts.max(initial=0))
    items = np.full((c.shape[0], max(width, 1)), -1, dtype=np.int64)
    rows = np.repeat(np.arange(c.shape[0]), counts)
    cols = np.arange(c.nnz) - c.indptr[rows]
    items[rows, cols] = c.indices
    exact = score_pairs_chunked(model, users, items)
    return sp.csr_matrix((exact[rows, cols], c.indices.copy(), c.indptr.copy()), shape=c.shape)
