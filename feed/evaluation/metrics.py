"""Ranking metrics over top-k lists (definitions in ``docs/quality.md``), averaged over users.

* ``like_recall`` and ``like_ndcg``: held-out likes found in the top-k posts;
* ``purchase_recall``: held-out bought products linked by at least one top-k post;
* ``coverage``: distinct posts in all top-k lists over the number of posts;
* ``author_diversity`` and ``category_diversity``: distinct authors (categories) over list
  length, per user.

Examples
--------
>>> items = np.array([[3, 1, 2]])
>>> liked = sp.csr_matrix(([1.0, 1.0], ([0, 0], [1, 5])), shape=(1, 6))
>>> recall_at_k(items, liked).tolist(), round(float(ndcg_at_k(items, liked)[0]), 4)
([0.5], 0.3869)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from feed.features.matrices import TrainingData

METRICS = (
    "like_recall",
    "like_ndcg",
    "purchase_recall",
    "coverage",
    "author_diversity",
    "category_diversity",
)
BOOTSTRAP_SAMPLES = 1000  # resamples of test users for the interval of the default's lift


@dataclass
class HeldOut:
    """What the test users did after the cut, in the training data's indices.

    Row ``i`` of ``likes`` (posts) and ``purchases`` (products) belongs to user ``users[i]``.
    Only reachable targets are kept: likes on posts that are candidates for the user, and
    products the user had not bought in training.
    """

    users: np.ndarray
    likes: sp.csr_matrix
    purchases: sp.csr_matrix
    counts: dict[str, int] = field(default_factory=dict)


def member(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether each (rows[i], cols[i]) is stored in ``m``."""
    if not len(rows):
        return np.zeros(0, dtype=bool)
    return np.asarray(m[rows, cols]).ravel() != 0


def binary(coords: tuple[np.ndarray, np.ndarray], shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(coords[0]), dtype=np.float32), coords), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


# --- metrics -------------------------------------------------------------------------------


def hits(items: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean (users x k): whether ``items[i, j]`` is stored in row ``i`` of ``relevant``."""
    rows = np.broadcast_to(np.arange(items.shape[0])[:, None], items.shape)
    ok = items >= 0
    out = np.zeros(items.shape, dtype=bool)
    out[ok] = member(sp.csr_matrix(relevant), rows[ok], items[ok])
    return out


def recall_at_k(items: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Per user: relevant items in the top-k list / relevant items (NaN when none).

    ``items`` is (users x k) with -1 padding; ``relevant`` is (users x n_items).
    """
    n_rel = np.diff(sp.csr_matrix(relevant).indptr).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, hits(items, relevant).sum(axis=1) / n_rel, np.nan)


def ndcg_at_k(items: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Per user: binary-gain NDCG of the top-k list (NaN when nothing is relevant)."""
    k = items.shape[1]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits(items, relevant) * discount).sum(axis=1)
    n_rel = np.minimum(np.diff(sp.csr_matrix(relevant).indptr), k)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[n_rel]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, dcg / ideal, np.nan)


def purchase_recall_at_k(
    items: np.ndarray, bought: sp.csr_matrix, post_products: sp.csr_matrix
) -> np.ndarray:
    """Per user: bought products linked by at least one top-k post / bought products."""
    n_users, k = items.shape
    ok = items >= 0
    rows = np.broadcast_to(np.arange(n_users)[:, None], items.shape)[ok]
    pick = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, items[ok])),
        shape=(n_users, post_products.shape[0]),
    )
    shown = pick @ post_products  # users x products: how many top-k posts link each product
    found = sp.csr_matrix(shown.multiply(bought))
    n_rel = np.diff(sp.csr_matrix(bought).indptr).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, np.diff(found.indptr) / n_rel, np.nan)


def coverage(items: np.ndarray, n_items: int) -> float:
    """Distinct items over all top-k lists / ``n_items``."""
    return len(np.unique(items[items >= 0])) / max(n_items, 1)


def author_diversity(items: np.ndarray, post_author: np.ndarray) -> float:
    """Mean over users of distinct authors in the top-k / items in the top-k."""
    out = author_diversity_per_user(items, post_author)
    out = out[np.isfinite(out)]
    return float(np.mean(out)) if len(out) else math.nan


def author_diversity_per_user(items: np.ndarray, post_author: np.ndarray) -> np.ndarray:
    """Per user (row), distinct authors in the list / items in it (NaN for an empty list).

    >>> author_diversity_per_user(np.array([[0, 1, 2], [-1, -1, -1]]), np.array([5, 5, 6]))
    array([0.66666667,        nan])
    """
    out = np.full(len(items), np.nan)
    for i, row in enumerate(items):
        row = row[row >= 0]
        if len(row):
            out[i] = len(np.unique(post_author[row])) / len(row)
    return out


def category_diversity(items: np.ndarray, post_category: np.ndarray) -> float:
    """Mean over users of distinct categories in the top-k / items in the top-k (a post counts
    with its first product's category; posts without one count as their own).

    >>> category_diversity(np.array([[0, 1, 2, -1]]), np.array(["a", "a", ""]))
    0.6666666666666666
    """
    out = []
    for row in items:
        row = row[row >= 0]
        if len(row):
            cats = [post_category[i] or f"#{i}" for i in row.tolist()]
            out.append(len(set(cats)) / len(row))
    return float(np.mean(out)) if out else math.nan


def score_lists(items: np.ndarray, truth: HeldOut, data: TrainingData) -> dict[str, float]:
    """Every metric of one model's top-k lists (rows aligned with ``truth.users``)."""
    return {
        "like_recall": _mean(recall_at_k(items, truth.likes)),
        "like_ndcg": _mean(ndcg_at_k(items, truth.likes)),
        "purchase_recall": _mean(purchase_recall_at_k(items, truth.purchases, data.post_products)),
        "coverage": coverage(items, data.n_posts),
        "author_diversity": author_diversity(items, data.post_author),
        "category_diversity": category_diversity(items, data.post_category),
    }


def per_user(items: np.ndarray, truth: HeldOut, data: TrainingData, metric: str) -> np.ndarray:
    """One user-level metric (NaN for users it does not apply to), rows as ``truth.users``."""
    if metric == "like_ndcg":
        return ndcg_at_k(items, truth.likes)
    if metric == "like_recall":
        return recall_at_k(items, truth.likes)
    return purchase_recall_at_k(items, truth.purchases, data.post_products)


def lift_interval(
    model: np.ndarray, base: np.ndarray, random_state: int = 0, n_boot: int = BOOTSTRAP_SAMPLES
) -> tuple[float, float]:
    """95% paired-bootstrap interval of ``mean(model) / mean(base) - 1`` over users.

    >>> lo, hi = lift_interval(np.array([2.0, 2.0, 2.0]), np.array([1.0, 1.0, 1.0]))
    >>> round(lo, 6), round(hi, 6)
    (1.0, 1.0)
    """
    ok = np.isfinite(model) & np.isfinite(base)
    a, b = model[ok], base[ok]
    if not len(a):
        return math.nan, math.nan
    idx = np.random.default_rng(random_state).integers(0, len(a), size=(n_boot, len(a)))
    with np.errstate(invalid="ignore", divide="ignore"):
        lifts = a[idx].mean(axis=1) / b[idx].mean(axis=1) - 1.0
    lo, hi = np.nanpercentile(lifts, [2.5, 97.5]) if np.isfinite(lifts).any() else (np.nan,) * 2
    return float(lo), float(hi)


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def primary_metric(truth: HeldOut) -> str:
    """``like_ndcg`` when the test users have held-out likes, else ``purchase_recall``."""
    return "like_ndcg" if truth.likes.nnz else "purchase_recall"
