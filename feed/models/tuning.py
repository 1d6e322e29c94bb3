"""Hyper-parameters chosen on a validation slice: the one implementation behind ``feed
evaluate``'s tuned baselines and the default model's tuned sources.

A validation slice is carved from a *training* part exactly as the default model carves its
first one (:class:`~feed.evaluation.splits.Splitter` of the evaluation's protocol, ``val_frac``
of the likes and purchases, the same seed): the models are fitted on what is left and judged on
the slice's held-out rows by the primary metric of their own top-``k`` lists. Nothing here sees
a test part: callers hand in the training part only.

:func:`tune` fits every point of a grid (on a pool of threads) and keeps the best; ties go to
the earlier point. :data:`GRIDS` holds the grids, a few points each.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from feed.data import Dataset
from feed.evaluation.metrics import HeldOut, per_user, primary_metric
from feed.evaluation.splits import Split, held_out, training_data
from feed.features.matrices import TrainingData
from feed.models.base import CandidateModel, NotFittedError, blocks, mask_rows, parallel_map
from feed.models.candidates import product_keys, shared_groups, topk_distinct
from feed.models.sources import EASE, ItemItem, MatrixFactorization, Popularity, twin_columns

logger = logging.getLogger(__name__)

#: Test (or validation) users scored per batch.
SCORE_BATCH = 512
#: Validation users a grid point is judged on at most (a seeded sample: bounds the time).
TUNE_USERS = 1000
#: The grids, a few points each. EASE's ridge penalty log-spaced over 50..2000; ALS's size,
#: penalty and confidence; BPR's size and step; item-item's neighbours and weighting.
GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    "ease": tuple({"l2": v} for v in (50.0, 125.0, 300.0, 800.0, 2000.0)),
    "als": (
        {"factors": 64, "regularization": 0.05, "alpha": 10.0},
        {"factors": 32, "regularization": 0.05, "alpha": 10.0},
        {"factors": 128, "regularization": 0.05, "alpha": 10.0},
        {"factors": 64, "regularization": 1.0, "alpha": 10.0},
        {"factors": 64, "regularization": 0.05, "alpha": 2.0},
        {"factors": 128, "regularization": 1.0, "alpha": 2.0},
    ),
    "bpr": (
        {"factors": 64, "learning_rate": 0.05},
        {"factors": 32, "learning_rate": 0.05},
        {"factors": 128, "learning_rate": 0.05},
        {"factors": 64, "learning_rate": 0.01},
        {"factors": 64, "learning_rate": 0.1},
    ),
    "itemknn": (
        {"K": 100, "method": "bm25"},
        {"K": 20, "method": "bm25"},
        {"K": 400, "method": "bm25"},
        {"K": 20, "method": "cosine"},
        {"K": 100, "method": "cosine"},
    ),
}
#: The default model's tuned sources (``TrainConfig.tune``): the same kinds of grid, fewer
#: points (``feed train`` fits each point once more on its first validation slice). Under
#: ``feed evaluate`` the points the baseline of the same name was scored on are not fitted
#: again (:func:`tune` remembers them).
SOURCE_GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    "ease": tuple({"l2": v} for v in (125.0, 300.0, 800.0)),
    "als": GRIDS["als"][:3],
    "itemknn": GRIDS["itemknn"],
}

#: Models whose scores come from engagement columns alone: posts with the same column (twins)
#: score alike, and a list shows one post of each twin group.
TWIN_BLIND = (Popularity, MatrixFactorization, ItemItem, EASE)
#: A key per post and the groups of posts sharing one (:func:`twin_groups`).
Twins = tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]


# --- lists ---------------------------------------------------------------------------------


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


# --- the validation slice ------------------------------------------------------------------


@dataclass
class Validation:
    """A validation slice of a training part: the data before it (``data``, what the grid is
    fitted on) and its held-out rows (``truth``, at most :data:`TUNE_USERS` users)."""

    data: TrainingData
    truth: HeldOut
    metric: str
    part: Split = field(repr=False)

    @property
    def exclude(self) -> sp.csr_matrix:
        return self.data.seen()


def validation_slice(
    dataset: Dataset,
    splitter: Callable[[Dataset, float, int], Split],
    val_frac: float = 0.2,
    random_state: int = 0,
    max_users: int = TUNE_USERS,
) -> Validation | None:
    """The first validation slice the default model carves off ``dataset`` (a training part),
    or None when the protocol cannot carve one or it holds no warm user."""
    try:
        part = splitter(dataset, val_frac, random_state)
    except ValueError as e:
        logger.info("no validation slice to tune on: %s", e)
        return None
    data = training_data(part)
    truth = held_out(part, data)
    if not len(truth.users):
        return None
    truth = sample_users(truth, max_users, random_state)
    return Validation(data, truth, primary_metric(truth), part)


def sample_users(truth: HeldOut, max_users: int, random_state: int) -> HeldOut:
    """At most ``max_users`` of ``truth``'s users (a seeded sample, in their order)."""
    if len(truth.users) <= max_users:
        return truth
    rng = np.random.default_rng(random_state)
    keep = np.sort(rng.permutation(len(truth.users))[:max_users])
    return HeldOut(
        truth.users[keep],
        sp.csr_matrix(truth.likes[keep]),
        sp.csr_matrix(truth.purchases[keep]),
        truth.counts,
    )


# --- tuning --------------------------------------------------------------------------------


#: Validation scores already computed in this process: (slice, model, k) -> score; and the
#: last chosen fits (``feed evaluate`` tunes a baseline and then the default model tunes the
#: source of the same name on the same slice: the second tuning fits nothing).
_SCORES: dict[tuple[str, str, int], float] = {}
_MODELS: dict[tuple[str, str, int], CandidateModel] = {}
_CACHE_LOCK = threading.Lock()
MAX_CACHED_SCORES = 256
MAX_CACHED_MODELS = 4


def fingerprint(val: Validation) -> str:
    """A digest of what a grid point is fitted on and judged by (the slice's data and truth)."""
    h = hashlib.sha256()
    for m in (val.data.engagement, val.data.purchases, val.truth.likes, val.truth.purchases):
        m = sp.csr_matrix(m)
        for a in (np.asarray(m.shape), m.indptr, m.indices, m.data):
            h.update(np.ascontiguousarray(a).tobytes())
    h.update(np.ascontiguousarray(val.truth.users).tobytes())
    h.update(repr((val.data.n_posts, float(val.data.now), val.metric)).encode())
    return h.hexdigest()


#: Parameters that decide whether a model may be fitted, never what the fit is.
NEUTRAL_PARAMS = frozenset({"max_items"})


def _model_key(model: CandidateModel) -> str:
    params = sorted((k, v) for k, v in model.get_params().items() if k not in NEUTRAL_PARAMS)
    return f"{type(model).__module__}.{type(model).__qualname__}{params}"


def _remember(store: dict[Any, Any], key: Any, value: Any, cap: int) -> None:
    with _CACHE_LOCK:
        store.pop(key, None)
        store[key] = value
        while len(store) > cap:
            store.pop(next(iter(store)))


@dataclass
class Tuned:
    """The chosen grid point, every point's validation score, and the model fitted at the
    chosen point on the validation slice's data (reusable as that slice's fit)."""

    params: dict[str, Any]
    scores: list[tuple[dict[str, Any], float]]
    metric: str
    model: CandidateModel | None = field(default=None, repr=False)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Plain data for manifests and reports."""
        return {
            "params": dict(self.params),
            "metric": self.metric,
            "validation": [{**p, "score": round(s, 5)} for p, s in self.scores],
            "seconds": round(self.seconds, 2),
        }


def score_model(model: CandidateModel, val: Validation, k: int, twins: Twins | None) -> float:
    """Mean validation metric (:attr:`Validation.metric`) of ``model``'s top-``k`` lists."""
    items = recommend_top(model, val.truth.users, k, val.exclude, twins)
    values = per_user(items, val.truth, val.data, val.metric)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else 0.0


def tune(
    make: Callable[[dict[str, Any]], CandidateModel],
    grid: Sequence[dict[str, Any]],
    val: Validation,
    k: int = 20,
    twins: Twins | None = None,
) -> Tuned:
    """Fit ``make(point)`` for every point of ``grid`` on ``val.data``, score each on the
    slice, and keep the best (the earlier point on ties).

    A point already scored on the same slice in this process (same data and truth,
    :func:`fingerprint`; same model parameters; same ``k``) is not fitted again; the chosen
    fit of the last few tunings is kept for the same reason. Fits are deterministic, so this
    changes only the time.

    Parameters
    ----------
    make : callable
        An unfitted model for one grid point.
    grid : sequence of dict
        At least one point.
    val : Validation
        From :func:`validation_slice` of a training part.
    k : int
        List length judged.
    twins : Twins, optional
        :func:`twin_groups` of ``val.data`` (one post per twin group in a list).
    """
    if not grid:
        raise ValueError("tune needs at least one grid point")
    started = time.perf_counter()
    where = fingerprint(val)
    keys = [(where, _model_key(make(dict(p))), k) for p in grid]

    def run(i: int) -> tuple[CandidateModel | None, float]:
        if keys[i] in _SCORES:  # scored before on this very slice: no fit
            return _MODELS.get(keys[i]), _SCORES[keys[i]]
        model = make(dict(grid[i])).fit(val.data)
        return model, score_model(model, val, k, twins)

    done = parallel_map(run, range(len(grid)))
    scores = [(dict(p), s) for p, (_, s) in zip(grid, done, strict=True)]
    best = int(np.argmax([s for _, s in scores]))
    model = done[best][0]
    if model is None:  # scored before, but its fit was not kept
        model = make(dict(grid[best])).fit(val.data)
    for key, (_, score) in zip(keys, done, strict=True):
        _remember(_SCORES, key, score, MAX_CACHED_SCORES)
    _remember(_MODELS, keys[best], model, MAX_CACHED_MODELS)
    out = Tuned(dict(grid[best]), scores, val.metric, model)
    out.seconds = time.perf_counter() - started
    logger.info(
        "tuned %s: %s (%s %.4f; %d points, %.1fs)",
        type(out.model).__name__,
        out.params,
        val.metric,
        scores[best][1],
        len(grid),
        out.seconds,
    )
    return out
