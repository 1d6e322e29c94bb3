"""Candidate sources: popularity, matrix factorisation (implicit ALS/BPR), item-item
co-engagement, content (TF-IDF with Chinese segmentation) and social (followed authors).

Each is a :class:`~feed.models.base.CandidateModel`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from feed.features.matrices import SECONDS_PER_DAY, TrainingData
from feed.features.text import make_vectorizer
from feed.models.base import CandidateModel, sparse_rows_dense

logger = logging.getLogger(__name__)


def _row_normalize(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m)


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
            age = (data.now - data.post_created) / SECONDS_PER_DAY
            decay = np.where(np.isfinite(age), 0.5 ** (np.maximum(age, 0) / self.half_life_days), 0.5)
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
    alpha : ALS confidence scale (``1 + alpha * weight``); learning_rate for BPR
    random_state : int
    """

    name = "als"
    reason = "collaborative"

    def __init__(self, algorithm: str = "als", factors: int = 64, iterations: int = 15,
                 regularization: float = 0.05, alpha: float = 10.0, learning_rate: float = 0.05,
                 random_state: int = 0) -> None:
        self.algorithm = algorithm
        self.factors = factors
        self.iterations = iterations
        self.regularization = regularization
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.random_state = random_state

    def _make(self) -> Any:
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        if self.algorithm == "als":
            return AlternatingLeastSquares(
                factors=self.factors, iterations=self.iterations,
                regularization=self.regularization, alpha=self.alpha,
                random_state=self.random_state,
            )
        if self.algorithm == "bpr":
            return BayesianPersonalizedRanking(
                factors=self.factors, iterations=self.iterations * 5,
                regularization=self.regularization, learning_rate=self.learning_rate,
                random_state=self.random_state,
            )
        raise ValueError(f"algorithm must be 'als' or 'bpr', got {self.algorithm!r}")

    def fit(self, data: TrainingData, matrix: sp.csr_matrix | None = None) -> MatrixFactorization:
        x = sp.csr_matrix(data.engagement if matrix is None else matrix, dtype=np.float32)
        with threadpool_limits(1, "blas"):
            model = self._make()
            model.fit(x, show_progress=False)
        self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)
        self.n_posts_ = data.n_posts
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors_[users] @ self.item_factors_.T


class ItemItem(CandidateModel):
    """Item-item co-engagement (implicit's cosine or BM25 nearest neighbours).

    Parameters
    ----------
    K : int
        Neighbours kept per post.
    method : {"bm25", "cosine"}
    """

    name = "itemknn"
    sparse_scores = True
    reason = "co_engagement"

    def __init__(self, K: int = 100, method: str = "bm25") -> None:
        self.K = K
        self.method = method

    def fit(self, data: TrainingData) -> ItemItem:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        if self.method not in ("bm25", "cosine"):
            raise ValueError(f"method must be 'bm25' or 'cosine', got {self.method!r}")
        model = BM25Recommender(K=self.K) if self.method == "bm25" else CosineRecommender(K=self.K)
        x = sp.csr_matrix(data.engagement, dtype=np.float32)
        with warnings.catch_warnings():
            # implicit's BM25Recommender passes its own bm25_weight() COO output to a CSR-only
            # kernel and warns about the conversion it then does; nothing we pass is COO.
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(x, show_progress=False)
        self.similarity_ = sp.csr_matrix(model.similarity, dtype=np.float32)
        self.similarity_.setdiag(0)
        self.similarity_.eliminate_zeros()
        self.user_items_ = x
        self.n_posts_ = data.n_posts
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return sparse_rows_dense(self.user_items_[users] @ self.similarity_)

    def neighbours(self, n: int) -> sp.csr_matrix:
        """posts x posts similarities (each row: its top neighbours)."""
        return self.similarity_


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

    def __init__(self, min_df: int = 2) -> None:
        self.min_df = min_df

    def fit(self, data: TrainingData) -> Content:
        vec = make_vectorizer(min_df=min(self.min_df, max(1, data.n_posts // 2)))
        try:
            self.post_vectors_ = sp.csr_matrix(vec.fit_transform(data.post_text), dtype=np.float32)
        except ValueError:  # empty vocabulary: no text at all
            self.post_vectors_ = sp.csr_matrix((data.n_posts, 1), dtype=np.float32)
        self.vectorizer_ = vec
        profiles = data.engagement @ self.post_vectors_
        if data.purchases.nnz and hasattr(vec, "vocabulary_"):
            prod_docs = [f"{t} {c}" for t, c in zip(data.product_titles, data.product_categories,
                                                    strict=True)]
            prod_vecs = vec.transform(prod_docs)
            profiles = profiles + data.purchases @ prod_vecs
        self.profiles_ = _row_normalize(sp.csr_matrix(profiles, dtype=np.float32))
        self.n_posts_ = data.n_posts
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return sparse_rows_dense(self.profiles_[users] @ self.post_vectors_.T)

    def transform_text(self, texts: list[str]) -> sp.csr_matrix:
        """TF-IDF vectors of new texts (for cold-start interests)."""
        return sp.csr_matrix(self.vectorizer_.transform(texts), dtype=np.float32)


class Social(CandidateModel):
    """Posts of authors the user follows or engaged with, weighted by affinity and recency.

    Parameters
    ----------
    follow_weight : float
        Affinity of a follow, added to the user's engagement share with the author.
    half_life_days : float
        Newer posts of an author score higher.
    """

    name = "social"
    sparse_scores = True
    reason = "followed_author"

    def __init__(self, follow_weight: float = 1.0, half_life_days: float = 14.0) -> None:
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
            self.follow_weight * data.follows + share @ engaged_authors, dtype=np.float32)
        age = (data.now - data.post_created) / SECONDS_PER_DAY if np.isfinite(data.now) else None
        recency = np.ones(n) if age is None else np.where(
            np.isfinite(age), 0.5 ** (np.maximum(age, 0) / self.half_life_days), 0.5)
        self.author_posts_ = sp.csr_matrix(author_posts.T @ sp.diags(recency), dtype=np.float32)
        self.n_posts_ = n
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return sparse_rows_dense(self.affinity_[users] @ self.author_posts_)
