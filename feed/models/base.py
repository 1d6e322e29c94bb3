"""The candidate-model contract (scikit-learn style) and the shared top-k machinery.

A model is fitted on a :class:`~feed.features.matrices.TrainingData`; ``__init__`` stores
parameters unchanged, ``fit`` learns and returns ``self``, learned state ends in ``_``. Every
model scores a batch of users against every post (:meth:`CandidateModel.score_users`); top-k
selection, exclusion of seen posts and pairwise scoring are shared here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController, threadpool_limits

from feed.features.matrices import TrainingData

#: Dense score blocks are at most this many floats (users x posts) at a time.
BLOCK_FLOATS = 8_000_000

#: Above this many posts, :class:`~feed.models.candidates.CandidateBuilder` asks each personal
#: source for its candidates (:meth:`CandidateModel.retrieve`: approximate nearest neighbours,
#: neighbour expansion from the user's history) instead of scoring every post for every user.
#: At and below it exact dense scoring is as cheap per user (docs/scaling.md, "Retrieval").
#: ``FEED_EXACT_MAX_POSTS`` overrides it (for measurements: 0 forces retrieval everywhere).
EXACT_MAX_POSTS = int(os.environ.get("FEED_EXACT_MAX_POSTS", "10000"))

T = TypeVar("T")
R = TypeVar("R")


class NotFittedError(RuntimeError):
    """A model was used before ``fit``."""


class CandidateModel:
    """Base class: subclasses implement ``fit`` and ``score_users``."""

    name = "base"
    reason = "collaborative"
    #: True when a score <= 0 means "no evidence" (such posts are never candidates)
    sparse_scores = False
    #: True when :meth:`retrieve`'s answer ``depth`` deep holds the source's best ``depth``
    #: posts (exactly, or nearly: HNSW), so a list it fills is the list a deeper answer
    #: gives; False when a deeper ask finds better posts, not only more (champion lists).
    ranked_retrieval = True
    #: Set by ``fit``: how many posts the model scores.
    n_posts_: int

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters (for manifests and reports)."""
        import inspect

        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def fit(self, data: TrainingData) -> CandidateModel:  # pragma: no cover - abstract
        raise NotImplementedError

    def score_users(self, users: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Dense float32 scores, shape (len(users), n_posts); higher is better."""
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_posts_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")

    def recommend(
        self,
        users: np.ndarray,
        n: int,
        exclude: sp.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` posts for each user in ``users``.

        Returns ``(items, scores)``, both shaped (len(users), n); rows with fewer than ``n``
        candidates are padded with item -1 and score -inf. ``exclude`` (users x posts, over all
        users) masks posts a user must not get.
        """
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        items = np.full((len(users), n), -1, dtype=np.int64)
        scores = np.full((len(users), n), -np.inf, dtype=np.float32)
        for lo, hi in blocks(len(users), self.n_posts_):
            block = self.score_users(users[lo:hi]).astype(np.float32, copy=False)
            if self.sparse_scores:
                block[block <= 0] = -np.inf
            if exclude is not None:
                mask_rows(block, exclude[users[lo:hi]])
            items[lo:hi], scores[lo:hi] = topk(block, n)
        return items, scores

    def retrieve(self, users: np.ndarray, depth: np.ndarray) -> Retrieved | None:
        """Candidate posts of ``users`` without scoring every post, or None when the model has
        no cheaper way than :meth:`score_users`.

        ``depth[i]`` is how many of its best posts ``users[i]`` needs at least (the caller
        drops excluded posts and twins of one product afterwards). Subclasses answer exactly
        (every post with a non-zero score: neighbour expansion) or approximately (nearest
        neighbours of the user's factors).
        """
        return None

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of (users[i], items[i, j]) for a 2-d ``items`` (-1 entries score NaN)."""
        self._check_fitted()
        out = np.full(items.shape, np.nan, dtype=np.float32)
        for lo, hi in blocks(len(users), self.n_posts_):
            block = self.score_users(np.asarray(users[lo:hi]))
            it = items[lo:hi]
            ok = it >= 0
            rows = np.broadcast_to(np.arange(hi - lo)[:, None], it.shape)
            out[lo:hi][ok] = block[rows[ok], it[ok]]
        return out


@dataclass
class Retrieved:
    """A source's candidates of a block of users: ``scores`` (users x posts, CSR) holds each
    candidate's exact score. ``complete``: every post with a non-zero score is stored, so a
    post not stored scores 0 (:func:`lookup` answers every pair); otherwise pairs outside it
    are scored by :meth:`CandidateModel.score_pairs`."""

    scores: sp.csr_matrix
    complete: bool


def lookup(m: sp.spmatrix, items: np.ndarray) -> np.ndarray:
    """``m[i, items[i, j]]`` for a 2-d ``items`` (0 where nothing is stored, NaN for -1
    items), without densifying ``m``.

    >>> m = sp.csr_matrix(np.array([[0, 2.0, 0], [3.0, 0, 4.0]]))
    >>> lookup(m, np.array([[1, 0], [2, -1]])).tolist()
    [[2.0, 0.0], [4.0, nan]]
    """
    rows = np.broadcast_to(np.arange(len(items), dtype=np.int64)[:, None], items.shape)
    out = lookup_flat(m, rows.ravel(), np.maximum(items, 0).ravel()).reshape(items.shape)
    out[items < 0] = np.nan
    return out


def lookup_flat(m: sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``m[rows[k], cols[k]]`` as float32 (0 where nothing is stored), never a dense row: one
    binary search per pair among the stored entries' (row, column) keys.

    Not scipy's ``m[rows, cols]``: it scans a row linearly when the row holds fewer entries
    than the average row, which is most rows, so a lookup cost the row's length. With a
    source's candidates of a block of users (thousands of posts a row at 284k posts) that was
    nearly all the candidate stage's time.

    >>> m = sp.csr_matrix((np.array([1.0, 2.0, 3.0]), (np.array([0, 0, 1]), np.array([2, 0, 2]))))
    >>> lookup_flat(m, np.array([0, 0, 1, 1]), np.array([0, 2, 2, 1])).tolist()
    [2.0, 1.0, 3.0, 0.0]
    """
    m = canonical(m)  # sorted within rows, no duplicates: the keys ascend
    if not m.nnz or not len(rows):
        return np.zeros(len(rows), dtype=np.float32)
    width = m.shape[1]
    keys = np.repeat(np.arange(m.shape[0], dtype=np.int64) * width, np.diff(m.indptr))
    keys += m.indices
    want = np.asarray(rows, dtype=np.int64) * width + np.asarray(cols, dtype=np.int64)
    at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    return np.where(keys[at] == want, m.data[at], 0).astype(np.float32)


def row_max(m: sp.spmatrix) -> np.ndarray:
    """Each row's largest stored value (0 for an empty row, and for every row of a matrix
    without columns: a dataset without products has post x product links of width 0).

    >>> row_max(sp.csr_matrix((3, 0))).tolist(), row_max(sp.csr_matrix([[0, 2], [1, 0]])).tolist()
    ([0.0, 0.0, 0.0], [2.0, 1.0])
    """
    if m.shape[1] == 0:
        return np.zeros(m.shape[0])
    return np.asarray(sp.csr_matrix(m).max(axis=1).toarray(), dtype=np.float64).ravel()


def canonical(m: sp.spmatrix) -> sp.csr_matrix:
    """``m`` as CSR with sorted indices and no duplicates (a copy only when it is not): what
    :func:`lookup_flat` searches. A sparse product's rows come unsorted, and sorting a block
    of retrieved candidates costs more than every lookup in it, so sort once per matrix."""
    m = sp.csr_matrix(m)
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    return m


def blocks(n_rows: int, n_cols: int) -> Iterator[tuple[int, int]]:
    """Row ranges [lo, hi) so that a dense (rows x n_cols) block stays under BLOCK_FLOATS."""
    step = max(1, BLOCK_FLOATS // max(n_cols, 1))
    for lo in range(0, n_rows, step):
        yield lo, min(lo + step, n_rows)


def worker_count() -> int:
    """Threads for the block-parallel stages: the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parallel_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> list[R]:
    """``[fn(x) for x in items]``, on a pool of :func:`worker_count` threads.

    numpy, scipy.sparse and scikit-learn's tree predictors release the GIL in their heavy
    loops, so independent blocks of users run on every core; BLAS is pinned to one thread
    meanwhile (one busy thread per core). Results come back in the order of ``items``.
    """
    items = list(items)
    n = min(threads or worker_count(), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    with threadpool_limits(1, "blas"), ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, items))


@functools.cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()


def single_threaded() -> Any:
    """A context manager that limits the native thread pools (OpenMP, BLAS) of the calling
    thread to one thread, for work already spread over a pool of threads.

    ``threadpool_limits`` scans every loaded library each time (about 1 ms here: 8% of the
    candidate stage when it ran per chunk of ranker rows); this reuses the scan made on first
    use, so call it once the libraries it should limit are loaded (e.g. on a fitted model).
    """
    return _threadpools().limit(limits=1)


def mask_rows(block: np.ndarray, mask: sp.csr_matrix) -> None:
    """Set ``block[i, j] = -inf`` wherever ``mask[i, j]`` is stored (in place)."""
    mask = sp.csr_matrix(mask)
    rows = np.repeat(np.arange(mask.shape[0]), np.diff(mask.indptr))
    block[rows, mask.indices] = -np.inf


def topk(block: np.ndarray, n: int, ordered: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``n`` of a dense block, best first; -inf entries become item -1.

    ``ordered=False``: the same entries in no particular order (for callers that sort them
    their own way), without the cost of sorting them.
    """
    n_rows, n_cols = block.shape
    k = min(n, n_cols)
    items = np.full((n_rows, n), -1, dtype=np.int64)
    scores = np.full((n_rows, n), -np.inf, dtype=np.float32)
    if k == 0:
        return items, scores
    part = (
        np.argpartition(-block, k - 1, axis=1)[:, :k]
        if k < n_cols
        else np.tile(np.arange(n_cols), (n_rows, 1))
    )
    vals = np.take_along_axis(block, part, axis=1)
    if ordered:
        order = np.argsort(-vals, axis=1, kind="stable")
        part = np.take_along_axis(part, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
    valid = np.isfinite(vals)
    items[:, :k] = np.where(valid, part, -1)
    scores[:, :k] = np.where(valid, vals, -np.inf)
    return items, scores


def sparse_rows_dense(m: sp.csr_matrix) -> np.ndarray:
    """A sparse block as a dense float32 array."""
    return np.asarray(m.toarray(), dtype=np.float32)
