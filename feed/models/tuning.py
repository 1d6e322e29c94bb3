"""Hyper-parameters chosen on a validation slice: the one implementation behind ``feed
evaluate``'s tuned baselines and the default model's tuned sources.

A validation slice is carved from a *training* part exactly as the default model carves its
first one (:class:`~feed.evaluation.splits.Splitter` of the evaluation's protocol, ``val_frac``
of the likes and purchases, the same seed): the models are fitted on what is left and judged on
the slice's held-out rows by the primary metric of their own top-``k`` lists. Nothing here sees
a test part: callers hand in the training part only.

:func:`tune` fits every point of a grid (on a pool of threads) and chooses by one of two rules:
``best`` (the highest mean validation score; ties go to the earlier point), how ``feed
evaluate`` tunes its baselines, as an outside checker would; ``noise`` (the default point
unless another beats it on the mean by more than one standard error of the per-user gain), how
the default model tunes its sources, over every validation slice its ranker uses: a point that
wins one window by noise must not replace a default that generalises. :data:`GRIDS` holds the
grids, a few points each.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

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
#: points, fitted on every validation slice the ranker uses; the source's configured point is
#: tried first and kept unless another beats it by more than the noise (the ``noise`` rule).
#: Under ``feed evaluate`` the points the baseline of the same name was scored on (the same
#: first slice) are not fitted again (:func:`tune` remembers them).
SOURCE_GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    "ease": tuple({"l2": v} for v in (125.0, 300.0, 800.0)),
    "als": GRIDS["als"][:3],
    # and RP3beta's popularity-penalised walk (feed.models.sources.knn_similarity)
    "itemknn": (
        *GRIDS["itemknn"],
        {"K": 100, "method": "rp3beta"},
        {"K": 400, "method": "rp3beta"},
    ),
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


#: Validation scores already computed in this process: (slice, model, k) -> per-user scores; and the
#: last chosen fits (``feed evaluate`` tunes a baseline and then the default model tunes the
#: source of the same name on the same slice: the second tuning fits nothing).
_SCORES: dict[tuple[str, str, int], np.ndarray] = {}
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
    """The chosen grid point, every point's validation score (the mean over the slices'
    users), and the models fitted at the chosen point on each validation slice's data
    (reusable as that slice's fit; ``model`` is the first slice's)."""

    params: dict[str, Any]
    scores: list[tuple[dict[str, Any], float]]
    metric: str
    model: CandidateModel | None = field(default=None, repr=False)
    seconds: float = 0.0
    rule: str = "best"
    fits: list[CandidateModel] = field(default_factory=list, repr=False)
    #: Under the ``noise`` rule: the best point's mean gain over the first point (the default)
    #: and the standard error of that gain over users.
    gain: tuple[float, float] | None = None

    def summary(self) -> dict[str, Any]:
        """Plain data for manifests and reports."""
        out = {
            "params": dict(self.params),
            "metric": self.metric,
            "rule": self.rule,
            "validation": [{**p, "score": round(s, 5)} for p, s in self.scores],
            "seconds": round(self.seconds, 2),
        }
        if self.gain is not None:
            out["gain_over_default"] = {
                "mean": round(self.gain[0], 6),
                "se": round(self.gain[1], 6),
            }
        return out


#: How :func:`tune` chooses: ``best``, the highest mean validation score (as an outside
#: checker tunes a baseline); ``noise``, the first point (the default) unless the best point
#: beats it on the mean by more than :data:`NOISE_SE` standard errors of the per-user gain.
RULES = ("best", "noise")
NOISE_SE = 1.0


def user_scores(model: CandidateModel, val: Validation, k: int, twins: Twins | None) -> np.ndarray:
    """Each validation user's metric (:attr:`Validation.metric`; NaN where it does not apply)
    of ``model``'s top-``k`` lists."""
    items = recommend_top(model, val.truth.users, k, val.exclude, twins)
    return np.asarray(per_user(items, val.truth, val.data, val.metric), dtype=np.float64)


def score_model(model: CandidateModel, val: Validation, k: int, twins: Twins | None) -> float:
    """Mean validation metric (:attr:`Validation.metric`) of ``model``'s top-``k`` lists."""
    return _nanmean(user_scores(model, val, k, twins))


def _nanmean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else 0.0


def noise_choice(per_point: Sequence[np.ndarray]) -> tuple[int, tuple[float, float]]:
    """The ``noise`` rule (:data:`RULES`) over per-user scores (one array per grid point, the
    same users in the same order; the first point is the default): the best point by the
    mean, if its mean per-user gain over the default exceeds :data:`NOISE_SE` standard errors
    of that gain, else 0; and the best point's (mean gain, standard error).

    >>> noise_choice([np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.2, 0.3, 0.4, 0.5])])[0]
    1
    >>> noise_choice([np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.3, 0.1, 0.4, 0.3])])[0]
    0
    """
    means = [_nanmean(v) for v in per_point]
    best = int(np.argmax(means))
    gain = per_point[best] - per_point[0]
    gain = gain[np.isfinite(gain)]
    if best == 0 or len(gain) < 2:
        return 0, (0.0, 0.0)
    mean, se = float(gain.mean()), float(gain.std(ddof=1) / np.sqrt(len(gain)))
    return (best if mean > NOISE_SE * se else 0), (mean, se)


def tune(
    make: Callable[[dict[str, Any]], CandidateModel],
    grid: Sequence[dict[str, Any]],
    val: Validation | Sequence[Validation],
    k: int = 20,
    twins: Twins | None | Sequence[Twins | None] = None,
    rule: str = "best",
) -> Tuned:
    """Fit ``make(point)`` for every point of ``grid`` on each validation slice's data, score
    each on the slice's users, and choose by ``rule`` (:data:`RULES`): ``best``, the highest
    mean score over the slices' users (the earlier point on ties); ``noise``, the first point
    unless another beats it by more than the noise (:func:`noise_choice`).

    A point already scored on the same slice in this process (same data and truth,
    :func:`fingerprint`; same model parameters; same ``k``) is not fitted again; the chosen
    fit of the last few tunings is kept for the same reason. Fits are deterministic, so this
    changes only the time. Points with the same parameters are fitted once.

    Parameters
    ----------
    make : callable
        An unfitted model for one grid point.
    grid : sequence of dict
        At least one point (under ``noise``, the first is the default).
    val : Validation or sequence of Validation
        From :func:`validation_slice` of a training part, or several slices (the default
        model's validation windows): the scores pool their users.
    k : int
        List length judged.
    twins : Twins, optional
        :func:`twin_groups` of each slice's data (one post per twin group in a list).
    """
    if not grid:
        raise ValueError("tune needs at least one grid point")
    if rule not in RULES:
        raise ValueError(f"tune rule must be one of {RULES}, got {rule!r}")
    vals = [val] if isinstance(val, Validation) else list(val)
    if not vals:
        raise ValueError("tune needs at least one validation slice")
    twin_list: list[Twins | None] = (
        list(twins) if isinstance(twins, list) else [cast(Twins | None, twins)] * len(vals)
    )
    started = time.perf_counter()
    names = [_model_key(make(dict(p))) for p in grid]
    first = {name: names.index(name) for name in names}  # the same parameters: one fit
    jobs = [(w, i) for w in range(len(vals)) for i in range(len(grid)) if first[names[i]] == i]
    keys = {(w, i): (fingerprint(vals[w]), names[i], k) for w, i in jobs}

    def run(job: tuple[int, int]) -> tuple[CandidateModel | None, np.ndarray]:
        w, i = job
        if keys[job] in _SCORES:  # scored before on this very slice: no fit
            return _MODELS.get(keys[job]), _SCORES[keys[job]]
        model = make(dict(grid[i])).fit(vals[w].data)
        return model, user_scores(model, vals[w], k, twin_list[w])

    done = dict(zip(jobs, parallel_map(run, jobs), strict=True))
    per_point = [
        np.concatenate([done[(w, first[names[i]])][1] for w in range(len(vals))])
        for i in range(len(grid))
    ]
    scores = [(dict(p), _nanmean(v)) for p, v in zip(grid, per_point, strict=True)]
    gain = None
    if rule == "best":
        best = int(np.argmax([s for _, s in scores]))
    else:
        best, gain = noise_choice(per_point)
    best = first[names[best]]
    fits = []
    for w in range(len(vals)):
        model = done[(w, best)][0]
        if model is None:  # scored before, but its fit was not kept
            model = make(dict(grid[best])).fit(vals[w].data)
        fits.append(model)
        _remember(_MODELS, keys[(w, best)], model, MAX_CACHED_MODELS)
    for job, (_, values) in done.items():
        _remember(_SCORES, keys[job], values, MAX_CACHED_SCORES)
    out = Tuned(dict(grid[best]), scores, vals[0].metric, fits[0], rule=rule, fits=fits, gain=gain)
    out.seconds = time.perf_counter() - started
    logger.info(
        "tuned %s (%s rule, %d slice(s)): %s (%s %.4f; %d points, %.1fs)",
        type(out.model).__name__,
        rule,
        len(vals),
        out.params,
        out.metric,
        scores[best][1],
        len(grid),
        out.seconds,
    )
    return out
