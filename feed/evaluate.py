"""Offline evaluation: a leak-free split, ranking metrics, and a table of every model.

The split holds out the newest likes and purchases (a global cut at the ``1 - test_frac``
quantile of their timestamps; a seeded per-user random split when the data has no
timestamps). Every model is fitted on the training part only and ranks, for each test user,
every post except the user's own and those the user engaged with in training; so posts nobody
engaged with yet are candidates too.

Metrics, averaged over test users (definitions in ``docs/quality.md``):

* ``like_recall`` and ``like_ndcg``: held-out likes found in the top-k posts;
* ``purchase_recall``: held-out bought products linked by at least one top-k post;
* ``coverage``: distinct posts in all top-k lists over the number of posts;
* ``author_diversity``: distinct authors over list length, per user.

Examples
--------
>>> items = np.array([[3, 1, 2]])
>>> liked = sp.csr_matrix(([1.0, 1.0], ([0, 0], [1, 5])), shape=(1, 6))
>>> recall_at_k(items, liked).tolist(), round(float(ndcg_at_k(items, liked)[0]), 4)
([0.5], 0.3869)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feed.data import Dataset, load
from feed.features.matrices import EngagementWeights, TrainingData, build
from feed.models.base import CandidateModel, NotFittedError, blocks, mask_rows
from feed.models.candidates import product_keys, shared_groups, topk_distinct
from feed.models.sources import (
    EASE,
    Content,
    ItemItem,
    MatrixFactorization,
    Popularity,
    twin_columns,
)

logger = logging.getLogger(__name__)

#: EASE needs a dense posts x posts matrix: it is a baseline only up to this many posts.
EASE_MAX_POSTS = 20_000
#: Test users scored per batch (each batch is split further into dense blocks by the models).
SCORE_BATCH = 512
METRICS = ("like_recall", "like_ndcg", "purchase_recall", "coverage", "author_diversity")
BOOTSTRAP_SAMPLES = 1000  # resamples of test users for the interval of the default's lift

ModelFactory = Callable[[], Any]
#: Models whose scores come from engagement columns alone: posts with the same column (twins)
#: score alike, and a list shows one post of each twin group.
TWIN_BLIND = (Popularity, MatrixFactorization, ItemItem, EASE)
#: A key per post and the groups of posts sharing one (:func:`twin_groups`).
Twins = tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]


# --- splits --------------------------------------------------------------------------------


@dataclass
class Split:
    """A dataset cut into a training part and held-out likes and purchases.

    ``cut`` is the time of the cut in unix seconds (NaN for a random split): every training
    like and purchase has ``ts < cut`` and every held-out one ``ts >= cut``.
    """

    train: Dataset
    test_likes: pd.DataFrame
    test_purchases: pd.DataFrame
    method: str  # "time" or "random"
    cut: float = math.nan


def split(ds: Dataset, test_frac: float = 0.2, random_state: int = 0) -> Split:
    """Hold out the newest ``test_frac`` of likes and purchases (or a random share per user).

    Parameters
    ----------
    ds : Dataset
    test_frac : float
        Share of like and purchase rows held out, in (0, 1).
    random_state : int
        Seed of the random split (used only when some like or purchase has no ``ts``).

    Returns
    -------
    Split
    """
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    if ds.has_timestamps:
        return time_split(ds, test_frac)
    return random_split(ds, test_frac, random_state)


def time_split(ds: Dataset, test_frac: float) -> Split:
    """A global cut at the ``1 - test_frac`` quantile of like and purchase timestamps.

    Clicks, impressions and follows at or after the cut leave the training part too (rows
    without a timestamp stay). Posts all stay: a post created after the cut is a candidate.
    """
    stamps = np.concatenate([ds.likes["ts"].to_numpy(float), ds.purchases["ts"].to_numpy(float)])
    cut = float(np.quantile(stamps, 1.0 - test_frac))
    if not (stamps < cut).any():
        cut = float(np.max(stamps))
    if not (stamps < cut).any():
        raise ValueError("cannot split by time: every like and purchase has the same ts")
    train = _subset(
        ds,
        likes=ds.likes[ds.likes["ts"].to_numpy() < cut],
        purchases=ds.purchases[ds.purchases["ts"].to_numpy() < cut],
        clicks=_before(ds.clicks, cut),
        impressions=_before(ds.impressions, cut),
        follows=_before(ds.follows, cut),
    )
    test_likes = ds.likes[ds.likes["ts"].to_numpy() >= cut]
    test_purchases = ds.purchases[ds.purchases["ts"].to_numpy() >= cut]
    return Split(
        train, test_likes.reset_index(drop=True), test_purchases.reset_index(drop=True), "time", cut
    )


def random_split(ds: Dataset, test_frac: float, random_state: int = 0) -> Split:
    """Hold out ``round(test_frac * n)`` random likes and purchases of every user with n >= 2.

    Clicks and impressions on a held-out liked post are dropped from the training part.
    """
    rng = np.random.default_rng(random_state)
    users = pd.concat([ds.likes["user_id"], ds.purchases["user_id"]], ignore_index=True)
    frame = pd.DataFrame({"user": users.to_numpy(object), "key": rng.random(len(users))})
    grouped = frame.groupby("user", sort=False)["key"]
    rank = grouped.rank(method="first").to_numpy() - 1
    size = grouped.transform("size").to_numpy()
    held = (size >= 2) & (rank < np.floor(test_frac * size + 0.5))
    n_likes = len(ds.likes)
    test_likes, test_purchases = ds.likes[held[:n_likes]], ds.purchases[held[n_likes:]]
    pairs = set(zip(test_likes["user_id"], test_likes["post_id"], strict=True))
    train = _subset(
        ds,
        likes=ds.likes[~held[:n_likes]],
        purchases=ds.purchases[~held[n_likes:]],
        clicks=_without_pairs(ds.clicks, pairs),
        impressions=_without_pairs(ds.impressions, pairs),
        follows=ds.follows,
    )
    return Split(
        train, test_likes.reset_index(drop=True), test_purchases.reset_index(drop=True), "random"
    )


def training_data(part: Split) -> TrainingData:
    """The matrices of a split's training part, as of the cut.

    ``now`` (post ages, recency) is the cut: posts created after it are candidates, but how
    new they are is not known at training time (their age is 0, as for a post published after
    a real training run).
    """
    data = build(part.train, EngagementWeights())
    return replace(data, now=part.cut) if part.method == "time" else data


def _before(table: pd.DataFrame, cut: float) -> pd.DataFrame:
    """Rows strictly before ``cut``, plus rows without a timestamp."""
    ts = table["ts"].to_numpy(float)
    return table[np.isnan(ts) | (ts < cut)]


def _without_pairs(table: pd.DataFrame, pairs: set[tuple[str, str]]) -> pd.DataFrame:
    if not len(table) or not pairs:
        return table
    keep = [(u, p) not in pairs for u, p in zip(table["user_id"], table["post_id"], strict=True)]
    return table[np.asarray(keep, dtype=bool)]


def _subset(ds: Dataset, **tables: pd.DataFrame) -> Dataset:
    """A copy of ``ds`` with some tables replaced (re-indexed) and counts recomputed."""
    fresh = {name: t.reset_index(drop=True) for name, t in tables.items()}
    out = replace(ds, **fresh, path=None, problems=[])
    out.counts = {name: len(getattr(out, name)) for name in ds.counts}
    return out


# --- held-out truth ------------------------------------------------------------------------


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


def held_out(part: Split, data: TrainingData) -> HeldOut:
    """The test users (held-out activity and some training interaction) and their targets.

    Parameters
    ----------
    part : Split
    data : TrainingData
        Built from ``part.train``.
    """
    seen = data.seen()
    warm = np.diff(data.engagement.indptr) + np.diff(data.purchases.indptr) > 0
    lk_u = data.users.to_internal(part.test_likes["user_id"], strict=False)
    lk_p = data.posts.to_internal(part.test_likes["post_id"], strict=False)
    pu_u = data.users.to_internal(part.test_purchases["user_id"], strict=False)
    pu_p = data.products.to_internal(part.test_purchases["product_id"], strict=False)
    all_test = np.union1d(
        part.test_likes["user_id"].unique(), part.test_purchases["user_id"].unique()
    )
    ok_l = (lk_u >= 0) & (lk_p >= 0)
    ok_l[ok_l] = warm[lk_u[ok_l]]
    ok_l[ok_l] = ~_member(seen, lk_u[ok_l], lk_p[ok_l])
    ok_p = (pu_u >= 0) & (pu_p >= 0)
    ok_p[ok_p] = warm[pu_u[ok_p]]
    ok_p[ok_p] = ~_member(data.purchases, pu_u[ok_p], pu_p[ok_p])
    users = np.union1d(lk_u[ok_l], pu_u[ok_p]).astype(np.int64)
    row = np.full(data.n_users, -1)
    row[users] = np.arange(len(users))
    likes = _binary((row[lk_u[ok_l]], lk_p[ok_l]), (len(users), data.n_posts))
    purchases = _binary((row[pu_u[ok_p]], pu_p[ok_p]), (len(users), len(data.products)))
    warm_ext = {u for u in all_test if u in data.users and warm[data.users.get(u)]}
    counts = {
        "test_users": len(users),
        "test_users_with_likes": int((np.diff(likes.indptr) > 0).sum()),
        "test_users_with_purchases": int((np.diff(purchases.indptr) > 0).sum()),
        "cold_users_skipped": len(all_test) - len(warm_ext),
        "held_out_likes": len(part.test_likes),
        "held_out_purchases": len(part.test_purchases),
        "target_likes": int(likes.nnz),
        "target_purchased_products": int(purchases.nnz),
    }
    return HeldOut(users, likes, purchases, counts)


def _member(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether each (rows[i], cols[i]) is stored in ``m``."""
    if not len(rows):
        return np.zeros(0, dtype=bool)
    return np.asarray(m[rows, cols]).ravel() != 0


def _binary(coords: tuple[np.ndarray, np.ndarray], shape: tuple[int, int]) -> sp.csr_matrix:
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
    out[ok] = _member(sp.csr_matrix(relevant), rows[ok], items[ok])
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
    out = []
    for row in items:
        row = row[row >= 0]
        if len(row):
            out.append(len(np.unique(post_author[row])) / len(row))
    return float(np.mean(out)) if out else math.nan


def score_lists(items: np.ndarray, truth: HeldOut, data: TrainingData) -> dict[str, float]:
    """Every metric of one model's top-k lists (rows aligned with ``truth.users``)."""
    return {
        "like_recall": _mean(recall_at_k(items, truth.likes)),
        "like_ndcg": _mean(ndcg_at_k(items, truth.likes)),
        "purchase_recall": _mean(purchase_recall_at_k(items, truth.purchases, data.post_products)),
        "coverage": coverage(items, data.n_posts),
        "author_diversity": author_diversity(items, data.post_author),
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


# --- the comparison ------------------------------------------------------------------------


@dataclass
class EvalReport:
    """One row per model (metrics at ``k``, fit and scoring seconds) plus split facts."""

    rows: list[dict[str, Any]]
    info: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: ``{"info": {...}, "rows": [...]}``."""
        return {"info": _plain(self.info), "rows": _plain(self.rows)}

    def row(self, model: str) -> dict[str, Any]:
        """The row of one model."""
        for r in self.rows:
            if r["model"] == model:
                return r
        raise KeyError(model)

    def table(self) -> str:
        """A Markdown table, the primary metric marked, then the split facts."""
        k, primary = self.info["k"], self.info["primary_metric"]
        names = {
            "like_recall": f"like-Recall@{k}",
            "like_ndcg": f"like-NDCG@{k}",
            "purchase_recall": f"purchase-Recall@{k}",
            "coverage": "coverage",
            "author_diversity": "author div.",
        }
        heads = ["model"] + [names[m] + (" *" if m == primary else "") for m in METRICS]
        lines = [
            "| " + " | ".join([*heads, "fit s", "score s"]) + " |",
            "|" + "---|" * (len(heads) + 2),
        ]
        for r in self.rows:
            cells = [r["model"]] + [_fmt(r[m]) for m in METRICS]
            cells += [f"{r['fit_s']:.1f}", f"{r['score_s']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *self._notes()]
        return "\n".join(lines)

    def _notes(self) -> list[str]:
        i = self.info
        c = i["counts"]
        how = (
            f"time split at {i['cut_iso']}"
            if i["split"] == "time"
            else f"random per-user split (seed {i['random_state']})"
        )
        notes = [
            f"* primary metric (*): {i['primary_metric']}; {how}, test_frac={i['test_frac']}",
            f"* {i['n_users']} users in the training part, {i['n_posts']} posts; "
            f"test users: {c['test_users']} "
            f"({c['test_users_with_likes']} with held-out likes, "
            f"{c['test_users_with_purchases']} with held-out purchases); "
            f"{c['cold_users_skipped']} cold test users skipped (no training interaction)",
        ]
        if i.get("best_baseline"):
            lo, hi = i.get("lift_ci95", (math.nan, math.nan))
            notes.append(
                f"* default vs best baseline ({i['best_baseline']}) on "
                f"{i['primary_metric']}: {i['lift_vs_best_baseline']:+.1%} "
                f"(95% paired bootstrap over test users: {lo:+.1%} .. {hi:+.1%})"
            )
        notes.append(f"* total {i['total_s']:.0f} s")
        return notes


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.4f}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def default_models(n_posts: int, random_state: int = 0) -> dict[str, ModelFactory]:
    """The baselines plus ``"default"``, the model ``feed train`` publishes.

    EASE is left out when there are more than :data:`EASE_MAX_POSTS` posts.
    """
    from feed.train import TrainConfig, make_blend

    models: dict[str, ModelFactory] = {
        "most-popular": Popularity,
        "als": lambda: MatrixFactorization("als", random_state=random_state),
        "bpr": lambda: MatrixFactorization("bpr", random_state=random_state),
        "itemknn": lambda: ItemItem(method="bm25"),
    }
    if n_posts <= EASE_MAX_POSTS:
        models["ease"] = EASE
    models["content"] = Content
    models["default"] = lambda: make_blend(TrainConfig(random_state=random_state))
    return models


def fit_model(model: Any, data: TrainingData, train: Dataset) -> Any:
    """Fit a candidate model, or the default model (which also needs the training tables)."""
    if getattr(model, "needs_dataset", False):
        return model.fit(data, train)
    return model.fit(data)


def evaluate(
    dataset: Dataset | str | Path,
    test_frac: float = 0.2,
    k: int = 20,
    models: Mapping[str, ModelFactory] | Iterable[str] | None = None,
    random_state: int = 0,
    *,
    progress: bool = False,
) -> EvalReport:
    """Split, fit every model on the training part, and score the held-out part.

    Parameters
    ----------
    dataset : Dataset or path
    test_frac : float
        Share of likes and purchases held out.
    k : int
        List length scored.
    models : mapping of name -> factory, or names, optional
        Default: :func:`default_models` (names select a subset of it).
    random_state : int
        Seed of the random split and of every model.
    progress : bool
        Show a progress bar over models.

    Returns
    -------
    EvalReport
    """
    started = time.perf_counter()
    ds = dataset if isinstance(dataset, Dataset) else load(dataset)
    part = split(ds, test_frac, random_state)
    data = training_data(part)
    truth = held_out(part, data)
    factories = _select(models, ds, random_state)
    logger.info("evaluating %d models on %d test users", len(factories), len(truth.users))
    exclude = data.seen()
    twins = twin_groups(data)
    rows, lists = [], {}
    for name, factory in _progress(factories.items(), progress):
        row, lists[name] = _evaluate_one(name, factory, data, part.train, truth, exclude, twins, k)
        rows.append(row)
    info = _info(ds, part, data, truth, test_frac, k, random_state, rows)
    _add_interval(info, truth, data, lists, random_state)
    info["total_s"] = time.perf_counter() - started
    return EvalReport(rows, info)


def _select(
    models: Mapping[str, ModelFactory] | Iterable[str] | None, ds: Dataset, random_state: int
) -> dict[str, ModelFactory]:
    if isinstance(models, Mapping):
        return dict(models)
    every = default_models(len(ds.posts), random_state)
    if models is None:
        return every
    names = list(models)
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(every)}")
    return {n: every[n] for n in names}


def _evaluate_one(
    name: str,
    factory: ModelFactory,
    data: TrainingData,
    train: Dataset,
    truth: HeldOut,
    exclude: sp.csr_matrix,
    twins: Twins,
    k: int,
) -> tuple[dict[str, Any], np.ndarray]:
    t = time.perf_counter()
    model = fit_model(factory(), data, train)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    items = recommend_top(model, truth.users, k, exclude, twins)
    score_s = time.perf_counter() - t
    metrics = score_lists(items, truth, data)
    row: dict[str, Any] = {"model": name, **metrics, "fit_s": fit_s, "score_s": score_s}
    logger.info("%s: %s", name, {m: round(metrics[m], 4) for m in METRICS})
    return row, items


def twin_groups(data: TrainingData) -> Twins:
    """A key per post shared by the posts that link the same (first) product and have the
    same engagement column, and :func:`~feed.models.candidates.shared_groups` of the keys.

    Models fitted on engagement cannot tell such posts apart (purchase-only data spreads a
    purchase over every post of the product); :func:`recommend_top` lists one of each group.
    """
    _, twin = twin_columns(data.engagement)
    pairs = np.stack([product_keys(data), twin], axis=1)
    _, combined = np.unique(pairs, axis=0, return_inverse=True)
    keys = combined.ravel().astype(np.int64)
    return keys, shared_groups(keys)


def recommend_top(
    model: Any, users: np.ndarray, k: int, exclude: sp.csr_matrix, twins: Twins | None = None
) -> np.ndarray:
    """Top-``k`` post indices (-1 padded) of a fitted model for ``users``, in batches.

    For :data:`TWIN_BLIND` models and given ``twins`` (:func:`twin_groups`), each twin group
    contributes at most one post (the first not excluded).
    """
    if not hasattr(model, "n_posts_"):
        raise NotFittedError(f"{type(model).__name__} is not fitted")
    if twins is not None and len(twins[1][0]) and isinstance(model, TWIN_BLIND):
        return _top_distinct(model, np.asarray(users, dtype=np.int64), k, exclude, twins)
    parts = [
        model.recommend(users[lo : lo + SCORE_BATCH], k, exclude)[0]
        for lo in range(0, len(users), SCORE_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


def _top_distinct(
    model: CandidateModel, users: np.ndarray, k: int, exclude: sp.csr_matrix, twins: Twins
) -> np.ndarray:
    out = np.full((len(users), k), -1, dtype=np.int64)
    for lo, hi in blocks(len(users), model.n_posts_):
        block = model.score_users(users[lo:hi]).astype(np.float32, copy=True)
        if model.sparse_scores:
            block[block <= 0] = -np.inf
        mask_rows(block, exclude[users[lo:hi]])
        out[lo:hi] = topk_distinct(block, twins[0], twins[1], k)
    return out


def _info(
    ds: Dataset,
    part: Split,
    data: TrainingData,
    truth: HeldOut,
    test_frac: float,
    k: int,
    random_state: int,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    primary = primary_metric(truth)
    info: dict[str, Any] = {
        "dataset": str(ds.path) if ds.path else None,
        "split": part.method,
        "cut": part.cut,
        "cut_iso": _iso(part.cut),
        "test_frac": test_frac,
        "k": k,
        "random_state": random_state,
        "n_users": data.n_users,
        "n_posts": data.n_posts,
        "primary_metric": primary,
        "counts": truth.counts,
    }
    base = [r for r in rows if r["model"] != "default" and r[primary] == r[primary]]
    default = [r for r in rows if r["model"] == "default"]
    if base and default:
        best = max(base, key=lambda r: r[primary])
        info["best_baseline"] = best["model"]
        lift = default[0][primary] / best[primary] - 1 if best[primary] > 0 else math.nan
        info["lift_vs_best_baseline"] = lift
    return info


def _add_interval(
    info: dict[str, Any],
    truth: HeldOut,
    data: TrainingData,
    lists: dict[str, np.ndarray],
    random_state: int,
) -> None:
    """The bootstrap interval of the default's lift over the best baseline, into ``info``."""
    best = info.get("best_baseline")
    if best is None:
        return
    metric = info["primary_metric"]
    lo, hi = lift_interval(
        per_user(lists["default"], truth, data, metric),
        per_user(lists[best], truth, data, metric),
        random_state,
    )
    info["lift_ci95"] = [lo, hi]


def _iso(ts: float) -> str | None:
    if ts != ts:
        return None
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _progress(it: Iterable[Any], enabled: bool) -> Iterable[Any]:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(list(it), desc="models", unit="model")
