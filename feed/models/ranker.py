"""The default model: every candidate source, merged and re-ranked by a learned ranker.

:class:`LearnedBlend` learns on validation slices carved from the end of its training data (the
newest likes and purchases, held out exactly as :func:`feed.evaluate.split` holds out a test
part; when one slice has few users, the next-older slice is added, up to ``max_windows``):

1. fit every source on the data before the slice;
2. merge the sources' top lists for the slice's users and compute features
   (:mod:`feed.models.candidates`); a candidate is positive when the user liked it in the slice
   (for data without likes: when it links a product the user bought in the slice);
3. choose, by the validation metric on two folds of users, among a few rankers (gradient
   boosting, logistic regression), reciprocal-rank fusion and each single source, each with
   and without "one post per product" (options within one standard error of the best are
   tied, and a fixed :func:`preference` picks among them); a tree ranker orders only each
   user's best ``rerank_depth`` candidates by the best linear ranker (two-stage ranking: a row
   costs the trees far more than the linear model, and a user has some 770 candidates at 1M
   likes);
4. fit the chosen ranker on every slice, and keep its weights with every source refitted on
   all the data (those fits run alongside the first slice's: they do not depend on the choice).

Independent work runs on a pool of threads (:func:`~feed.models.base.parallel_map`): the source
fits, the candidate blocks of users, the rankers compared and their predictions.

Nothing here looks at a test part: :func:`feed.evaluate.evaluate` hands this model the training
part only, and the slices are carved from that.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np
import scipy.sparse as sp

from feed.contract import REASON_CODE, unit_scores
from feed.data import Dataset
from feed.evaluation.metrics import (
    author_diversity,
    author_diversity_per_user,
    hits,
    ndcg_at_k,
    primary_metric,
    purchase_recall_at_k,
)
from feed.evaluation.pages import (
    POLICY_USERS,
    PageBuilder,
    PolicyChoice,
    Truth,
    calibrate,
    choose_policy,
)
from feed.evaluation.splits import Split, Splitter, held_out, training_data
from feed.features.ids import IdMap
from feed.features.matrices import TrainingData, decayed
from feed.models.base import CandidateModel, NotFittedError, parallel_map, single_threaded, topk
from feed.models.candidates import (
    CandidateBlock,
    CandidateBuilder,
    FeatureContext,
    feature_names,
    fusion_scores,
    product_keys,
    select_top,
)
from feed.models.sources import (
    EASE,
    Content,
    Fresh,
    MatrixFactorization,
    ProductCF,
    Trending,
    twin_columns,
)
from feed.models.tuning import (
    NOISE_SE,
    TUNE_USERS,
    Tuned,
    Validation,
    sample_users,
    tune,
    twin_groups,
)
from feed.serving.policy import PagePolicy
from feed.serving.ranking import RANKING_DEFAULTS, pool_size

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The default validation protocol: the one the data supports (``feed.evaluation.splits``).
AUTO_SPLIT = Splitter("auto")
#: Rankers tried on the validation slice: gradient boosting of a few sizes, and a linear model.
RANKER_GRID: tuple[dict[str, Any], ...] = (
    {
        "model": "hgb",
        "max_iter": 150,
        "learning_rate": 0.05,
        "max_leaf_nodes": 15,
        "min_samples_leaf": 50,
        "l2_regularization": 1.0,
    },
    {
        "model": "hgb",
        "max_iter": 60,
        "learning_rate": 0.1,
        "max_leaf_nodes": 7,
        "min_samples_leaf": 100,
        "l2_regularization": 1.0,
    },
    {"model": "logistic", "C": 1.0},
    {"model": "logistic", "C": 0.1},
)
#: Posts in a version's trending list (``TrainConfig.n_trending``'s default).
TRENDING_LIST = 500
#: Sources that are also `feed evaluate`'s classic baselines: the served pages must be as
#: author-diverse as the lists of the best of them on validation (the strongest baseline).
REFERENCE_SOURCES = ("ease", "als", "bpr", "itemknn", "popularity", "content")
#: Candidates per user a tree ranker re-scores, the best by the linear ranker (at least the list
#: length asked for). On the 1M-like generated data, re-scoring the best 400 of about 770 gave
#: the same validation NDCG@20 as re-scoring all of them, and published lists sharing 99.6% of
#: their posts with the one-stage ranker's (BENCHMARKS.md).
RERANK_DEPTH = 400
MIN_POSITIVES = 20  # fewer positive candidates in the validation slices: no learned ranker
PREDICT_ROWS = 4096  # candidate rows per ranker call (see _predict)
#: Warm start (:meth:`LearnedBlend.fit_warm`): the share of the usual ALS iterations and BPR
#: epochs run from the previous version's factors (15 ALS iterations -> 3). ALS from a
#: converged solution moves little per sweep, and a new user's or post's row is solved exactly
#: in the first sweep, given the others: on MovieLens-small, warm-started from the full fit of
#: the same data, the published lists' NDCG@20 is the full train's within noise (+1.1%, one
#: standard error 1.2%; docs/scaling.md, "Warm start").
WARM_SHARE = 0.2
#: The format of what a version stores for the next warm start (``model.json``'s ``format``);
#: a version stored in another format is refused as a starting point.
WARM_FORMAT = 1
#: Types a stored ranker may hold beyond the ones skops trusts by default: the trees'
#: predictors (gradient boosting) and numpy dtypes (the imputer of the linear ranker). Anything
#: else in a ``ranker.skops`` file refuses to load.
RANKER_TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


@dataclass
class Stage:
    """One set of source fits: its name (for timings) and its data."""

    name: str
    data: TrainingData


@dataclass
class RankerChoice:
    """What was chosen on the validation slices, and every option's validation score."""

    kind: str  # "ranker:<i>", "fusion" or "source:<name>"
    params: dict[str, Any] = field(default_factory=dict)
    one_per_product: bool = False
    validation: dict[str, float] = field(default_factory=dict)
    metric: str = ""
    estimator: Any = None
    #: Two-stage ranking: the linear ranker that picks the ``depth`` candidates per user the
    #: tree ranker ``estimator`` re-scores (None: the estimator scores every candidate).
    prefilter: LinearScores | None = None
    prefilter_params: dict[str, Any] = field(default_factory=dict)
    depth: int = RERANK_DEPTH
    #: Two-stage ranking only: order the ``depth`` candidates by the mean of the tree ranker's
    #: and the linear ranker's log-odds rather than by the trees alone ("ranker:<i>+linear").
    ensemble: bool = False
    #: The chosen option's scores of the validation candidates (out of fold for a ranker):
    #: what the page policy is chosen on. Not kept in the manifest.
    val_scores: np.ndarray | None = field(default=None, repr=False)
    #: The option with the best mean validation score, and every option (with its
    #: ``one_per_product``) whose mean is within one standard error of the per-user
    #: difference to it (:func:`within_noise`, the best included).
    best: str = ""
    within_noise: list[str] = field(default_factory=list)


class WarmStartError(ValueError):
    """A previous fit cannot start this one: the message names what differs."""


@dataclass
class WarmState:
    """What a fit stores for the next warm start (:meth:`LearnedBlend.warm_state`): ``meta``
    (plain JSON), ``arrays`` (plain numeric and string arrays: factors keyed by ``user_ids``
    and ``post_ids``, the linear prefilter) and ``ranker`` (the fitted ranker as skops bytes,
    None without a learned ranker). Nothing here is a pickle."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    ranker: bytes | None


class LearnedBlend:
    """Candidate sources merged and re-ranked by a ranker learned on validation slices.

    Parameters
    ----------
    sources : mapping of name -> CandidateModel
        Unfitted prototypes (cloned for each fit). Sources named in ``decayed`` are fitted on
        engagement decayed by event age (:func:`~feed.features.matrices.decayed`);
        :class:`ProductCF` sources are dropped when there are no purchases and :class:`EASE`
        when too many distinct posts have engagement.
    n_per_source : int
        How deep each source's list is read into the candidates.
    val_frac : float
        Share of the newest likes and purchases held out as one validation slice.
    k : int
        List length the validation metric looks at.
    max_windows : int
        Validation slices at most (each one older than the previous).
    min_val_users : int
        No further slice once this many validation users are collected.
    max_val_users : int
        Validation users sampled at most per slice (bounds time and memory).
    max_train_rows : int
        Candidate rows a ranker is fitted on at most (all positives, sampled negatives).
    rerank_depth : int
        Candidates per user a tree ranker re-scores: the best by the best linear ranker (at
        least the list length asked for).
    n_published : int
        Candidates per user the version publishes (``TrainConfig.n_candidates``): the page
        policy is chosen on validation lists of this depth, scaled as published (a list's
        scores are scaled to [0.05, 1] over the whole list, so its depth changes how close
        the top scores are, and so how far a discount reorders them).
    decayed : tuple of str
        Names of the sources fitted on time-decayed engagement.
    splitter : callable, optional
        ``splitter(dataset, val_frac, random_state) -> Split`` carves a validation slice off a
        dataset: :class:`~feed.evaluation.splits.Splitter` of the evaluation's (the data's)
        protocol, so validation mirrors how the model is judged.
    tune : mapping of name -> grid, optional
        Sources whose hyper-parameters are chosen on the first validation slice
        (:func:`feed.models.tuning.tune`, by the slice's metric of the source's own lists, as
        ``feed evaluate`` tunes its baselines); each grid point overrides some of the
        prototype's parameters. The chosen values are in :meth:`summary` (``tuned``) and
        every later fit of the source (the other slices, the final fit) uses them.
    random_state : int
    """

    name = "default"

    def __init__(
        self,
        sources: Mapping[str, CandidateModel],
        n_per_source: int = 100,
        val_frac: float = 0.2,
        k: int = 20,
        max_windows: int = 6,
        min_val_users: int = 300,
        max_val_users: int = 4000,
        max_train_rows: int = 60_000,
        rerank_depth: int = RERANK_DEPTH,
        n_published: int = 200,
        decayed: tuple[str, ...] = ("trending",),
        splitter: Callable[[Dataset, float, int], Split] = AUTO_SPLIT,
        tune: Mapping[str, tuple[dict[str, Any], ...]] | None = None,
        random_state: int = 0,
    ) -> None:
        self.sources = dict(sources)
        self.tune = dict(tune or {})
        self.decayed = tuple(decayed)
        self.splitter = splitter
        self.n_per_source = n_per_source
        self.val_frac = val_frac
        self.k = k
        self.max_windows = max_windows
        self.min_val_users = min_val_users
        self.max_val_users = max_val_users
        self.max_train_rows = max_train_rows
        self.rerank_depth = rerank_depth
        self.n_published = n_published
        self.random_state = random_state

    # --- fitting ---------------------------------------------------------------------------

    def fit(self, data: TrainingData) -> LearnedBlend:
        """Learn the ranker on validation slices of ``data.source`` (the tables ``data`` was
        built from), then fit the sources on all of ``data``.

        Without a source there is no slice to learn from: reciprocal-rank fusion. With a
        single source, that source's own ranking. The final fits run alongside the first
        slice's (:meth:`fit_sources`): they do not depend on the choice.
        """
        dataset = data.source
        self.timings_: dict[str, float] = {}
        self.tuned_: dict[str, Tuned] = {}
        self.names_ = self._applicable(data)
        self.choice_ = RankerChoice("fusion")
        self.val_users_: list[int] = []  # validation users per slice the ranker was chosen on
        self.val_split_: str | None = None  # how the validation slices were carved
        self.pool_: _Pool | None = None
        self.val_trending_: tuple[np.ndarray, np.ndarray] | None = None
        final = Stage("final", data)
        if len(self.names_) == 1:
            self.choice_ = RankerChoice(f"source:{self.names_[0]}")
        if len(self.names_) == 1 or dataset is None:
            self.sources_ = self.fit_sources([final])[0]
        else:
            metric = "like_ndcg" if data.likes.nnz else "purchase_recall"
            self.choice_, self.sources_ = self._learn(dataset, metric, final)
        self.builder_ = CandidateBuilder(self.sources_, FeatureContext(data), self.n_per_source)
        self.keys_ = product_keys(data)
        self.n_posts_ = data.n_posts
        t = time.perf_counter()
        self.policy_choice_ = self._choose_policy(data)
        if self.policy_choice_ is not None and self.pool_ is not None and self._same_clock():
            judged = self.pool_.slices[0].users[self._policy_rows()]
            self.policy_choice_ = self._calibrate_policy(data, self.policy_choice_, judged)
        self.pool_ = None  # the validation tables are not needed any more
        self.page_policy_ = self.policy_choice_.policy if self.policy_choice_ else PagePolicy()
        self._add_time("validation:page_policy", time.perf_counter() - t)
        logger.info(
            "default model: %s (one post per product: %s), page policy %s",
            self.choice_.kind,
            self.choice_.one_per_product,
            self.page_policy_,
        )
        return self

    # --- warm start ------------------------------------------------------------------------

    def warm_state(self, data: TrainingData) -> WarmState:
        """What the next training needs to start from this fit (:meth:`fit_warm`): the
        applicable sources and their parameters (tuned values included), the ranker choice
        and the fitted ranker, the page policy, the feature list, and the factors of the
        ALS/BPR sources keyed by user and post ids. Plain JSON, arrays and skops bytes: no
        pickle."""
        import skops.io as sio

        if not hasattr(self, "n_posts_"):
            raise NotFittedError("LearnedBlend is not fitted; call fit() first")
        c = self.choice_
        meta: dict[str, Any] = {
            "format": WARM_FORMAT,
            "sources": list(self.names_),
            "source_params": {
                n: {"class": type(self.sources[n]).__name__, **self.sources[n].get_params()}
                for n in self.names_
            },
            "tuned_params": {n: dict(t.params) for n, t in self.tuned_.items()},
            "tuned": self.summary()["tuned"],
            "features": feature_names(self.sources_),
            "blend": {"n_per_source": self.n_per_source, "k": self.k},
            "choice": {
                "kind": c.kind,
                "params": c.params,
                "one_per_product": c.one_per_product,
                "metric": c.metric,
                "validation": c.validation,
                "best": c.best,
                "within_noise": list(c.within_noise),
                "prefilter_params": c.prefilter_params if c.prefilter is not None else None,
                "depth": c.depth,
                "ensemble": c.ensemble,
            },
            "page_policy": self.page_policy_.to_json(),
            "page_policy_choice": (
                self._policy_summary()
                if self.policy_choice_
                else getattr(self, "warm_policy_", None)
            ),
            "factors": [],
        }
        arrays = {
            "user_ids": data.users.external.astype(str),
            "post_ids": data.posts.external.astype(str),
        }
        for name, model in self.sources_.items():
            if isinstance(model, MatrixFactorization):
                meta["factors"].append(name)
                arrays[f"{name}__user_factors"] = model.user_factors_
                arrays[f"{name}__item_factors"] = model.item_factors_
        if c.prefilter is not None:
            arrays["prefilter__fill"] = np.asarray(c.prefilter.fill, dtype=np.float64)
            arrays["prefilter__weights"] = np.asarray(c.prefilter.weights, dtype=np.float64)
            arrays["prefilter__bias"] = np.array([c.prefilter.bias])
        ranker = sio.dumps(c.estimator) if c.estimator is not None else None
        return WarmState(meta, arrays, ranker)

    def warm_differences(self, data: TrainingData, previous: WarmState) -> list[str]:
        """Why ``previous`` cannot start a fit on ``data`` (empty when it can): another
        stored format, other applicable sources, other source or blend parameters, another
        feature list or validation metric."""
        meta, problems = previous.meta, []
        if meta.get("format") != WARM_FORMAT:
            return [f"stored model format {meta.get('format')!r}, this feed reads {WARM_FORMAT}"]
        names = self._applicable(data)
        if list(meta["sources"]) != names:
            added = sorted(set(names) - set(meta["sources"]))
            dropped = sorted(set(meta["sources"]) - set(names))
            problems.append(
                f"the applicable sources differ (added: {', '.join(added) or 'none'}; "
                f"dropped: {', '.join(dropped) or 'none'}; "
                f"order: {meta['sources']} -> {names})"
            )
        for n in names:
            if n not in meta["source_params"]:
                continue
            now = {"class": type(self.sources[n]).__name__, **self.sources[n].get_params()}
            was = meta["source_params"][n]
            changed = [
                f"{k} {was.get(k)!r} -> {now.get(k)!r}"
                for k in sorted((set(now) | set(was)) - {"random_state"})  # a seed: any start
                if _plain(now.get(k)) != _plain(was.get(k))
            ]
            if changed:
                problems.append(f"source {n}: {', '.join(changed)}")
        blend = {"n_per_source": self.n_per_source, "k": self.k}
        if meta["blend"] != blend:
            problems.append(f"blend parameters {meta['blend']} -> {blend}")
        if not problems:  # the sources match, so the feature lists can be compared
            protos = {n: self.sources[n] for n in names}
            if list(meta["features"]) != feature_names(protos):
                problems.append(
                    f"the ranker's feature list differs ({len(meta['features'])} stored, "
                    f"{len(feature_names(protos))} now)"
                )
        metric = "like_ndcg" if data.likes.nnz else "purchase_recall"
        stored_metric = meta["choice"].get("metric")
        if stored_metric and stored_metric != metric:
            problems.append(f"validation metric {stored_metric} -> {metric}")
        return problems

    def fit_warm(
        self, data: TrainingData, previous: WarmState, refit_ranker: bool = True
    ) -> LearnedBlend:
        """Fit on ``data`` starting from a previous fit (:meth:`warm_state`), the daily path:
        the previous sources' tuned parameters, ranker choice and page policy are reused; the
        ALS/BPR sources start from the previous factors (rows matched by user and post id;
        new users and posts start fresh) for :data:`WARM_SHARE` of their usual iterations.
        No tuning, ranker choice or policy search.

        With ``refit_ranker`` (and a learned ranker chosen), the chosen ranker (and its linear
        prefilter) is fitted again, with the chosen parameters, on this data's validation
        slices (:meth:`_windows`, as a full fit carves them; their sources warm-started as
        well): the ranker learns from the newest days as a full train's does. Without it, the
        previous fitted ranker is reused as it is and no validation slice is carved.

        Raises :class:`WarmStartError` naming what differs when ``previous`` does not fit
        (:meth:`warm_differences`).
        """
        import skops.io as sio

        problems = self.warm_differences(data, previous)
        if problems:
            raise WarmStartError("; ".join(problems))
        meta = previous.meta
        self.timings_ = {}
        self.names_ = list(meta["sources"])
        self.tuned_ = {
            n: Tuned(dict(p), [], meta["choice"].get("metric", ""), rule="reused")
            for n, p in meta["tuned_params"].items()
        }
        self.reused_tuned_ = dict(meta.get("tuned") or {})
        stored = meta["choice"]
        choice = RankerChoice(
            stored["kind"],
            params=dict(stored["params"]),
            one_per_product=bool(stored["one_per_product"]),
            validation=dict(stored["validation"]),
            metric=stored["metric"],
            depth=int(stored["depth"]),
            ensemble=bool(stored["ensemble"]),
            best=stored["best"],
            within_noise=list(stored["within_noise"]),
        )
        if choice.kind.startswith("ranker:"):
            if previous.ranker is None:
                raise WarmStartError(f"the stored choice is {choice.kind} but no ranker is stored")
            untrusted = sio.get_untrusted_types(data=previous.ranker)
            unknown = sorted(set(untrusted) - set(RANKER_TRUSTED_TYPES))
            if unknown:
                raise WarmStartError(f"the stored ranker holds untrusted types: {unknown}")
            choice.estimator = sio.loads(previous.ranker, trusted=list(untrusted))
        if stored.get("prefilter_params") is not None:
            a = previous.arrays
            choice.prefilter_params = dict(stored["prefilter_params"])
            choice.prefilter = LinearScores(
                a["prefilter__fill"], a["prefilter__weights"], float(a["prefilter__bias"][0])
            )
        self.choice_ = choice
        self.pool_ = None
        self.val_trending_ = None
        self.policy_choice_ = None
        self.warm_policy_ = meta.get("page_policy_choice")
        self.page_policy_ = PagePolicy.from_json(meta["page_policy"])
        self.val_users_ = []
        self.warm_ranker_ = "reused"
        final = Stage("final", data)
        init, self.warm_factors_ = self._warm_factors(data, previous)
        windows = []
        if refit_ranker and choice.estimator is not None and data.source is not None:
            windows = self._windows(data.source)
        self.sources_, tables = self._fit_windows(windows, final, choice.metric, previous, init)
        del init  # the starting factors are not needed any more
        for name, info in self.warm_factors_.items():
            model = self.sources_[name]
            if isinstance(model, MatrixFactorization):
                info["iterations"] = int(model.epochs_)
        if tables:
            t = time.perf_counter()
            pool = _Pool(tables, choice.metric)
            del tables
            if fit_chosen(choice, pool, self.max_train_rows, self.random_state):
                self.warm_ranker_ = "refitted"
                self.val_users_ = [len(s.users) for s in pool.slices]
            else:
                logger.warning("the validation slices hold one class only: ranker reused")
            self._add_time("validation:ranker_refit", time.perf_counter() - t)
        logger.info(
            "default model warm-started: %s (%s; one post per product: %s), page policy %s",
            choice.kind,
            self.warm_ranker_,
            choice.one_per_product,
            self.page_policy_,
        )
        self.builder_ = CandidateBuilder(self.sources_, FeatureContext(data), self.n_per_source)
        self.keys_ = product_keys(data)
        self.n_posts_ = data.n_posts
        return self

    def _warm_factors(
        self, data: TrainingData, previous: WarmState
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, dict[str, Any]]]:
        """The starting factors of each stored ALS/BPR source, rows in ``data``'s user and
        post order (NaN rows: new users and posts), and how many rows were kept and new."""
        a = previous.arrays
        users = IdMap(a["user_ids"]).to_internal(data.users.external, strict=False)
        posts = IdMap(a["post_ids"]).to_internal(data.posts.external, strict=False)
        init, info = {}, {}
        for name in previous.meta["factors"]:
            if name not in self.names_:
                continue
            rows = []
            pairs = ((users, a[f"{name}__user_factors"]), (posts, a[f"{name}__item_factors"]))
            for index, stored in pairs:
                out = np.full((len(index), stored.shape[1]), np.nan, dtype=np.float32)
                out[index >= 0] = stored[index[index >= 0]]
                rows.append(out)
            init[name] = (rows[0], rows[1])
            info[name] = {
                "users_kept": int((users >= 0).sum()),
                "users_new": int((users < 0).sum()),
                "posts_kept": int((posts >= 0).sum()),
                "posts_new": int((posts < 0).sum()),
            }
        return init, info

    def _fit_windows(
        self,
        windows: list[tuple[Split, TrainingData, Any]],
        final: Stage,
        metric: str,
        previous: WarmState,
        init: dict[str, tuple[np.ndarray, np.ndarray]],
    ) -> tuple[dict[str, CandidateModel], list[_Slice]]:
        """The warm path's fits: the sources for ``final`` (ALS/BPR from ``init``) and, for
        each validation slice, sources warm-started from ``previous`` and the slice's
        candidate table; the final fits run alongside the first slice's."""
        sources: dict[str, CandidateModel] | None = None
        tables = []
        for _, sub, truth in windows:
            todo, inits = [Stage("validation", sub)], [self._warm_factors(sub, previous)[0]]
            if sources is None:
                todo.append(final)
                inits.append(init)
            done = self.fit_sources(todo, init=inits)
            if sources is None:
                sources = done.pop()
            tables.append(self._slice(done[0], sub, truth, metric))
            del done, inits
        if sources is None:
            sources = self.fit_sources([final], init=[init])[0]
        return sources, tables

    def _applicable(self, data: TrainingData) -> list[str]:
        names = []
        for name, model in self.sources.items():
            if isinstance(model, ProductCF) and data.purchases.nnz == 0:
                continue
            if isinstance(model, EASE) and _distinct_engaged(data) > model.max_items:
                continue
            names.append(name)
        return names

    def prototype(self, name: str) -> CandidateModel:
        """An unfitted copy of source ``name`` with its tuned parameters (when tuned)."""
        model = self.sources[name]
        tuned = getattr(self, "tuned_", {}).get(name)
        if tuned is None:
            return clone(model)
        return type(model)(**{**model.get_params(), **tuned.params})

    def fit_sources(
        self,
        stages: list[Stage],
        given: Mapping[tuple[int, str], CandidateModel] | None = None,
        skip: set[str] | frozenset[str] = frozenset(),
        init: Sequence[Mapping[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    ) -> list[dict[str, CandidateModel]]:
        """Fresh copies of the applicable sources (:meth:`prototype`) fitted for each stage,
        in ``names_`` order (but the ``skip``ped ones); ``given`` holds fits already made
        (stage index, name); ``init`` (the warm path), per stage, the starting factors of the
        ALS/BPR sources (rows in the stage's data's order) fitted for :data:`WARM_SHARE` of
        their iterations.

        The fits are independent, so they run on a pool of threads (the slowest sources
        first, :func:`fit_cost`); each fit's seconds go to ``timings_["<stage>:<source>_s"]``.
        """
        given = dict(given or {})
        names = [n for n in self.names_ if n not in skip]
        jobs = [(i, name) for i in range(len(stages)) for name in names if (i, name) not in given]
        jobs.sort(key=lambda job: -fit_cost(self.sources[job[1]]))
        decayed_data = [_Lazy(partial(decayed, s.data)) for s in stages]
        # Fresh's profiles are Content's (the fit's largest arrays: 380 terms a user at 1M
        # likes): when both are fitted on the same data, one Content fit per stage serves both
        share = self._content_for_fresh(names)
        content_fits = (
            [_Lazy(partial(self.prototype("content").fit, s.data)) for s in stages] if share else []
        )

        def fit(job: tuple[int, str]) -> tuple[CandidateModel, float]:
            # the time-decayed data is built on the pool too (by the first job that needs it)
            i, name = job
            t = time.perf_counter()
            data = decayed_data[i].get() if name in self.decayed else stages[i].data
            model = self.prototype(name)
            start = init[i].get(name) if init is not None else None
            if share and name == "content":
                model = content_fits[i].get()
            elif share and name == "fresh":
                model = model.fit(data, content=content_fits[i].get())  # type: ignore[call-arg]
            elif start is not None and isinstance(model, MatrixFactorization):
                try:
                    model.fit(data, init=start, share=WARM_SHARE)
                except ValueError as e:  # stored factors that do not fit this source
                    raise WarmStartError(f"source {name}: {e}") from e
            else:
                model = model.fit(data)
            logger.info("fitted %s (%s) in %.1fs", name, stages[i].name, time.perf_counter() - t)
            return model, time.perf_counter() - t

        done = parallel_map(fit, jobs)
        fitted: list[dict[str, tuple[CandidateModel, float]]] = [{} for _ in stages]
        for (i, name), result in zip(jobs, done, strict=True):
            fitted[i][name] = result
        for (i, name), model in given.items():
            fitted[i][name] = (model, 0.0)
        for stage, results in zip(stages, fitted, strict=True):
            for name in names:
                self._add_time(f"{stage.name}:{name}", results[name][1])
        return [{name: f[name][0] for name in names} for f in fitted]

    def _content_for_fresh(self, names: list[str]) -> bool:
        """Whether the fresh source can take the content source's fit of a stage as its own
        (both fitted here, on the same data, with the same text settings)."""
        if "content" not in names or "fresh" not in names:
            return False
        if "content" in self.decayed or "fresh" in self.decayed:
            return False
        content, fresh = self.prototype("content"), self.prototype("fresh")
        return isinstance(content, Content) and isinstance(fresh, Fresh) and fresh.shares(content)

    def _learn(
        self, dataset: Dataset, metric: str, final: Stage
    ) -> tuple[RankerChoice, dict[str, CandidateModel]]:
        """Carve the validation slices (newest first), fit the sources for each (the tuned
        ones tuned over all of them first) and choose the ranker on them; the sources for
        ``final`` are fitted alongside the first slice's."""
        windows = self._windows(dataset)
        tables: list[_Slice] = []
        tuned: dict[str, list[CandidateModel]] = {}
        if windows and self.tuned_names():
            first, tuned = self._fit_tuning(windows, [Stage("validation", windows[0][1]), final])
            sources = first.pop()
        else:
            first = None
            sources = self.fit_sources([final])[0] if not windows else {}
        for w, (_, sub, truth) in enumerate(windows):
            if first is not None and w == 0:
                fitted = first[0]
            else:
                given = {(0, n): fits[w] for n, fits in tuned.items()}
                todo = [Stage("validation", sub)] + ([final] if not sources else [])
                done = self.fit_sources(todo, given)
                if not sources:
                    sources = done.pop()
                fitted = done[0]
            if not tables:  # the newest slice's trending list, for its served pages
                self.val_trending_ = _trending(fitted.get("trending"))
            tables.append(self._slice(fitted, sub, truth, metric))
        if not tables:
            return RankerChoice("fusion", metric=metric), sources
        t = time.perf_counter()
        self.pool_ = _Pool(tables, metric)
        self.val_users_ = [len(table.users) for table in tables]
        choice = choose(
            self.pool_,
            self.names_,
            self.k,
            self.max_train_rows,
            self.random_state,
            self.rerank_depth,
        )
        self._add_time("validation:choose", time.perf_counter() - t)
        return choice, sources

    def _windows(self, dataset: Dataset) -> list[tuple[Split, TrainingData, Any]]:
        """The validation slices, newest first: (split, the data before it, its held-out
        rows), each carved from what is left before the previous one, until
        ``min_val_users`` validation users are collected (at most ``max_val_users`` a slice)
        or ``max_windows``; slices without a warm user are skipped."""
        out = []
        users = 0
        rest = dataset
        for _ in range(self.max_windows):
            t = time.perf_counter()
            try:
                part = self.splitter(rest, self.val_frac, self.random_state)
            except ValueError as e:
                logger.info("no further validation slice: %s", e)
                break
            sub = training_data(part)
            truth = held_out(part, sub)
            self._add_time("validation:data", time.perf_counter() - t)
            if len(truth.users):
                out.append((part, sub, truth))
                users += min(len(truth.users), self.max_val_users)
            if users >= self.min_val_users:
                break
            rest = part.train
        self.val_split_ = out[0][0].method if out else None
        return out

    def _same_clock(self) -> bool:
        """Whether the validation pages were built at the final version's "now": a random
        slice holds out rows from the whole period, so its pages differ from the served ones
        only by the model (out-of-fold scores, sources fitted without the slice), which is what
        :meth:`_calibrate_policy` corrects. A time-based slice's pages are built at its cut,
        with the fresh posts and trending list of then: the same users' served pages differ in
        more than the model. On the project's simulated A/B test (planted tastes, global-time
        data) they were 0.74 author-diverse at the validation strength against 0.53 on
        validation, the calibration took the discount to nothing, and the trained arm's click
        lift over a popularity arm fell from 0.28 to 0.19 (likes 0.31 to 0.13)."""
        return self.val_split_ == "random"

    def tuned_names(self) -> list[str]:
        """The applicable sources whose parameters are chosen on validation."""
        return [n for n in self.names_ if n in self.tune and n not in self.decayed]

    def _fit_tuning(
        self, windows: list[tuple[Split, TrainingData, Any]], stages: list[Stage]
    ) -> tuple[list[dict[str, CandidateModel]], dict[str, list[CandidateModel]]]:
        """The first slice's and the final fits with tuning: the sources that are not tuned
        are fitted for ``stages`` while the tuned ones are tuned over every slice (side by
        side, on threads); then the tuned ones are fitted, at their chosen points, for the
        final stage. Returns the fits of ``stages`` and each tuned source's fit per slice."""
        names = set(self.tuned_names())
        with ThreadPoolExecutor(1) as pool:
            tuning = pool.submit(self._tune_sources, windows)
            rest = self.fit_sources(stages, skip=names)
            tuned = tuning.result()
        given = {(0, n): fits[0] for n, fits in tuned.items()}
        done = self.fit_sources(stages, given, skip=set(self.names_) - names)
        fits = [{n: (d | r)[n] for n in self.names_} for d, r in zip(done, rest, strict=True)]
        return fits, tuned

    def _tune_sources(
        self, windows: list[tuple[Split, TrainingData, Any]]
    ) -> dict[str, list[CandidateModel]]:
        """Choose the parameters of the sources in ``tune`` over every validation slice (at
        most :data:`~feed.models.tuning.TUNE_USERS` users of each) by the ``noise`` rule: the
        source's configured point unless a point of its grid beats it on the mean by more
        than one standard error of the per-user gain. Returns each tuned source fitted at its
        chosen point for each slice."""
        t = time.perf_counter()
        names = self.tuned_names()
        if not names:
            return {}
        vals, twins = [], []
        for part, sub, truth in windows:
            truth = sample_users(truth, TUNE_USERS, self.random_state)
            vals.append(Validation(sub, truth, primary_metric(truth), part))
            twins.append(twin_groups(sub))
        out = {}
        for name in names:
            base = self.sources[name]

            def make(point: dict[str, Any], base: CandidateModel = base) -> CandidateModel:
                return type(base)(**{**base.get_params(), **point})

            grid = self.tune[name]
            params = base.get_params()
            default = {key: params[key] for key in grid[0] if key in params}
            points = (default, *(p for p in grid if p != default))
            self.tuned_[name] = tuned = tune(make, points, vals, self.k, twins, rule="noise")
            if tuned.fits:
                out[name] = tuned.fits
        self._add_time("validation:tune", time.perf_counter() - t)
        return out

    def _choose_policy(self, data: TrainingData) -> PolicyChoice | None:
        """The page policy (:mod:`feed.serving.policy`,
        :func:`~feed.evaluation.pages.choose_policy`: the least intervention that reaches the
        reference diversity within the cost bound), judged on the newest slice's users (at most
        :data:`~feed.evaluation.pages.POLICY_USERS`) with the chosen option's out-of-fold
        scores, as the service would build their pages (with the slice's own trending list).
        The pages must be as author-diverse as the lists of the best classic baseline among
        the sources (:data:`REFERENCE_SOURCES`) on validation. None without validation."""
        pool, choice = self.pool_, self.choice_
        if pool is None or choice.val_scores is None:
            return None
        s = pool.slices[0]
        rows = self._policy_rows()
        width = s.items.shape[1]
        depth = max(self.n_published, pool_size(self.k, RANKING_DEFAULTS))
        keys = s.keys if choice.one_per_product else None
        items, scores, _ = select_top(s.items[rows], choice.val_scores[rows, :width], depth, keys)
        sources = {n: i for i, n in enumerate(self.names_)}
        baselines = [
            (v, name.split(":", 1)[1])
            for name, v in choice.validation.items()
            if name.split(":", 1)[-1] in REFERENCE_SOURCES and name.startswith("source:")
        ]
        reference_source = max(baselines)[1] if baselines else None
        reference: float | np.ndarray = 0.0
        if reference_source is not None:
            ranks = -s.ranks[sources[reference_source]][rows].astype(np.float32)
            ranks = np.where(s.items[rows] >= 0, ranks, -np.inf)
            top = select_top(s.items[rows], ranks, self.k, None)[0]
            reference = author_diversity_per_user(top, data.post_author)
        truth = Truth(s.likes[rows], s.purchases[rows], s.post_products, pool.metric)
        return choose_policy(
            PageBuilder.of(data, self.val_trending_),
            [str(u) for u in s.users[rows]],
            (items, scores, np.zeros(items.shape, np.uint8)),
            truth,
            self.k,
            reference,
            now=s.now,
        )

    def _policy_summary(self) -> dict[str, Any]:
        """The page policy's choice for the manifest, with how validation was carved."""
        assert self.policy_choice_ is not None
        return {**self.policy_choice_.summary(), "validation_split": self.val_split_}

    def _policy_rows(self) -> np.ndarray:
        """The rows of the newest validation slice the page policy is judged on: at most
        :data:`~feed.evaluation.pages.POLICY_USERS`, a seeded sample."""
        assert self.pool_ is not None
        n_users = len(self.pool_.slices[0].users)
        rng = np.random.default_rng(self.random_state)
        return np.sort(rng.permutation(n_users)[: min(n_users, POLICY_USERS)])

    def _calibrate_policy(
        self, data: TrainingData, choice: PolicyChoice, judged: np.ndarray
    ) -> PolicyChoice:
        """The chosen discount made no stronger than the pages this fitted version serves need
        (:func:`~feed.evaluation.pages.calibrate`), judged on the users the policy was chosen
        on (``judged``, external ids): their pages from this version's published lists and
        trending list, as the service builds them: the same users, so that only the model
        differs from validation, not the population. Only diversity is read there (no
        held-out truth is needed)."""
        exclude = data.seen()
        users = data.users.to_internal(np.asarray(judged), strict=False)
        users = np.sort(users[users >= 0])
        if not len(users):
            return choice
        depth = max(self.n_published, pool_size(self.k, RANKING_DEFAULTS))
        items, scores, reasons = self.recommend_with_reasons(users, depth, exclude)
        builder = PageBuilder.of(data, trending_list(self.sources_, data))
        external = [str(u) for u in data.users.to_external(users)]
        pools = list(builder.pools(external, items, scores, reasons, self.k, choice.policy))

        def diversity_of(policy: PagePolicy) -> float:
            pages = np.stack([builder.page(p, self.k, policy) for p in pools])
            return author_diversity(pages, data.post_author)

        return calibrate(choice, diversity_of, len(users))

    def _add_time(self, key: str, seconds: float) -> None:
        """Add ``seconds`` to ``timings_[key + "_s"]``."""
        key += "_s"
        self.timings_[key] = self.timings_.get(key, 0.0) + seconds

    def _slice(
        self, sources: dict[str, CandidateModel], sub: TrainingData, truth: Any, metric: str
    ) -> _Slice:
        """The candidate table of one validation slice's users (at most ``max_val_users``),
        from sources fitted on the data before the slice (``sub``)."""
        t = time.perf_counter()
        rng = np.random.default_rng(self.random_state)
        keep = np.sort(rng.permutation(len(truth.users))[: self.max_val_users])
        builder = CandidateBuilder(sources, FeatureContext(sub), self.n_per_source)
        table = _Slice.collect(
            builder,
            sub,
            truth.users[keep],
            sp.csr_matrix(truth.likes[keep]),
            sp.csr_matrix(truth.purchases[keep]),
            metric,
        )
        self._add_time("validation:candidates", time.perf_counter() - t)
        return table

    # --- recommending ----------------------------------------------------------------------

    def recommend(
        self,
        users: np.ndarray,
        n: int,
        exclude: sp.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` posts per user: ``(items, scores)``, each (len(users), n), as every
        candidate model answers (:meth:`~feed.models.base.CandidateModel.recommend`)."""
        items, scores, _ = self.recommend_with_reasons(users, n, exclude)
        return items, scores

    def recommend_with_reasons(
        self,
        users: np.ndarray,
        n: int,
        exclude: sp.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`recommend` plus each item's reason code (``feed.contract.REASON_CODE``: the
        source that put it among the candidates), for the published candidate lists."""
        if not hasattr(self, "n_posts_"):
            raise NotFittedError("LearnedBlend is not fitted; call fit() first")
        users = np.asarray(users, dtype=np.int64)
        if len(self.names_) == 1:  # a single source: its own ranking
            model = self.sources_[self.names_[0]]
            items, top = model.recommend(users, n, exclude)
            why = np.where(items >= 0, REASON_CODE[model.reason], 0).astype(np.uint8)
            return items, top, why
        keys = self.keys_ if self.choice_.one_per_product else None

        def rank(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            block = self.builder_.build(batch, exclude)
            ranked = score_block(self.choice_, block, self.names_, n)
            items, scores, order = select_top(block.items, ranked, n, keys)
            why = np.take_along_axis(block.reasons, order, axis=1)
            return items, scores, np.where(items >= 0, why, 0).astype(np.uint8)

        parts = parallel_map(rank, self.builder_.batches(users, self.n_posts_))
        if not parts:
            empty = np.zeros((0, n))
            return empty.astype(np.int64), empty.astype(np.float32), empty.astype(np.uint8)
        items, scores, reasons = (np.concatenate(p) for p in zip(*parts, strict=True))
        return items, scores, reasons

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters (each source as its class and parameters)."""
        params = {
            k: getattr(self, k)
            for k in (
                "n_per_source",
                "val_frac",
                "k",
                "max_windows",
                "min_val_users",
                "max_val_users",
                "max_train_rows",
                "rerank_depth",
                "n_published",
                "decayed",
                "tune",
                "random_state",
            )
        }
        sp_ = self.splitter
        params["splitter"] = (
            sp_.method
            if isinstance(sp_, Splitter)
            else f"{getattr(sp_, '__module__', '')}.{getattr(sp_, '__qualname__', repr(sp_))}"
        )
        params["sources"] = {
            n: {"class": type(m).__name__, **m.get_params()} for n, m in self.sources.items()
        }
        return params

    def summary(self) -> dict[str, Any]:
        """What the validation chose and where the fit's time went, for manifests and reports."""
        c = self.choice_
        return {
            "kind": c.kind,
            "params": c.params,
            "best": c.best or c.kind,
            "within_noise": list(c.within_noise),
            "rerank": (
                {"by": c.prefilter_params, "depth": c.depth, "ensemble": c.ensemble}
                if c.prefilter is not None
                else None
            ),
            "one_per_product": c.one_per_product,
            "metric": c.metric,
            "sources": list(self.names_),
            "epochs": {
                n: m.epochs_ for n, m in self.sources_.items() if isinstance(m, MatrixFactorization)
            },
            "validation": {k: round(v, 5) for k, v in c.validation.items()},
            "validation_users": list(getattr(self, "val_users_", ())),
            "tuned": getattr(self, "reused_tuned_", None)
            or {n: t.summary() for n, t in getattr(self, "tuned_", {}).items()},
            "warm_start": (
                {
                    "factors": self.warm_factors_,
                    "share_of_iterations": WARM_SHARE,
                    "ranker": self.warm_ranker_,
                }
                if getattr(self, "warm_factors_", None) is not None
                else None
            ),
            "page_policy": self.page_policy_.to_json(),
            "page_policy_choice": self._policy_summary() if self.policy_choice_ else None,
            "timings": {k: round(v, 3) for k, v in self.timings_.items()},
        }


class _Lazy(Generic[T]):
    """A value computed once, by the first thread that asks for it."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._value: list[T] = []

    def get(self) -> T:
        with self._lock:
            if not self._value:
                self._value.append(self._make())
            return self._value[0]


def trending_list(
    sources: dict[str, CandidateModel], data: TrainingData, n: int = TRENDING_LIST
) -> tuple[np.ndarray, np.ndarray]:
    """A version's trending list: the ``n`` best posts of its trending source (a trending
    model fitted on time-decayed engagement when it has none), as post indices and scores
    scaled to [0, 1] (:func:`feed.contract.unit_scores`)."""
    got = _trending(sources.get("trending") or Trending().fit(decayed(data)), n)
    assert got is not None
    return got


def _trending(
    model: CandidateModel | None, n: int = TRENDING_LIST
) -> tuple[np.ndarray, np.ndarray] | None:
    """A fitted trending source's list as a version publishes it (``n`` post indices, scores
    in [0, 1]); None without one."""
    if model is None:
        return None
    trend = np.asarray(model.scores_, dtype=np.float32)  # type: ignore[attr-defined]
    items, scores = topk(trend[None, :].copy(), n)
    return items[0], unit_scores(scores)[0]


def fit_cost(model: CandidateModel) -> int:
    """A rough rank of how long a source takes to fit (higher: slower), to start the slowest
    fits first: single-threaded BPR, then ALS, then everything else."""
    if isinstance(model, MatrixFactorization):
        return 2 if model.algorithm == "bpr" else 1
    return 1 if isinstance(model, ProductCF) and model.method == "als" else 0


def clone(model: CandidateModel) -> CandidateModel:
    """An unfitted copy with the same parameters."""
    return type(model)(**model.get_params())


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists), for comparing stored
    parameters with current ones.

    >>> _plain({"a": (1, 2)}) == _plain({"a": [1, 2]})
    True
    """
    return json.loads(json.dumps(value, default=str))


def _distinct_engaged(data: TrainingData) -> int:
    keep, _ = twin_columns(data.engagement)
    return int((data.engagement[:, keep].getnnz(axis=0) > 0).sum())


# --- validation slices -------------------------------------------------------------------------


@dataclass
class _Slice:
    """Candidates, features and labels of one validation slice's users."""

    users: np.ndarray  # external ids
    items: np.ndarray  # (U, C)
    features: np.ndarray  # (U, C, F)
    ranks: np.ndarray  # (S, U, C)
    labels: np.ndarray  # (U, C) bool
    likes: sp.csr_matrix  # (U, posts) held-out likes
    purchases: sp.csr_matrix  # (U, products) held-out purchases
    post_products: sp.csr_matrix
    keys: np.ndarray  # product key per post
    depth: int
    now: float  # the slice's cut: "now" for its pages

    @classmethod
    def collect(
        cls,
        builder: CandidateBuilder,
        data: TrainingData,
        users: np.ndarray,
        likes: sp.csr_matrix,
        purchases: sp.csr_matrix,
        metric: str,
    ) -> _Slice:
        exclude = data.seen()
        blocks = parallel_map(
            lambda b: builder.build(b, exclude), builder.batches(users, data.n_posts)
        )
        width = max(b.items.shape[1] for b in blocks)
        items = np.concatenate([_pad(b.items, width, -1) for b in blocks])
        if metric == "like_ndcg":
            labels = hits(items, likes)
        else:
            shown = data.post_products[np.maximum(items, 0).ravel()]
            owner = np.repeat(np.arange(len(users)), items.shape[1])
            bought = np.asarray(purchases[owner].multiply(shown).sum(axis=1)).ravel()
            labels = (bought > 0).reshape(items.shape) & (items >= 0)
        logger.info(
            "validation slice: %d users, %d candidates, %d positive",
            len(users),
            int((items >= 0).sum()),
            int(labels.sum()),
        )
        features, ranks = _drain(blocks, width, builder.n_per_source)
        return cls(
            data.users.to_external(users),
            items,
            features,
            ranks,
            labels,
            likes,
            purchases,
            data.post_products,
            product_keys(data),
            builder.n_per_source,
            float(data.now),
        )


def _drain(blocks: list[CandidateBlock], width: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The blocks' features (users x width x F, NaN padding) and ranks (sources x users x
    width, ``depth`` padding) stacked, each block dropped from ``blocks`` once copied: the
    slice's largest arrays are not held twice (3.3M candidates x 49 features x 4 bytes, 650 MB
    and more with the padding, at 4,000 users of the 1M-like data; pages of the outputs are
    committed only as they are written)."""
    n_users = sum(len(b.items) for b in blocks)
    f, r = blocks[0].features, blocks[0].ranks
    features = np.empty((n_users, width, f.shape[2]), dtype=f.dtype)
    ranks = np.empty((r.shape[0], n_users, width), dtype=r.dtype)
    del f, r
    row = 0
    blocks.reverse()
    while blocks:
        b = blocks.pop()
        n, w = b.items.shape
        features[row : row + n, :w], features[row : row + n, w:] = b.features, np.nan
        ranks[:, row : row + n, :w], ranks[:, row : row + n, w:] = b.ranks, depth
        row += n
    return features, ranks


class _Pool:
    """Several validation slices as one padded table; metrics are computed slice by slice."""

    def __init__(self, slices: list[_Slice], metric: str) -> None:
        width = max(s.items.shape[1] for s in slices)
        self.slices = slices
        self.metric = metric
        self.items = _join([_pad(s.items, width, -1) for s in slices])
        self.features = _join([_pad(s.features, width, np.nan) for s in slices])
        self.labels = _join([_pad(s.labels, width, False) for s in slices])
        self.ranks = _join([_pad(s.ranks, width, s.depth, axis=2) for s in slices], axis=1)
        self.users = _join([s.users for s in slices])
        self.bounds = np.cumsum([0] + [len(s.items) for s in slices])
        # the features are the largest arrays (users x candidates x features, >= 650 MB at 4,000
        # users of the 1M-like data): each slice keeps a view of the pool's, not a second copy
        for s, lo, hi in zip(slices, self.bounds[:-1], self.bounds[1:], strict=True):
            s.features = self.features[lo:hi, : s.features.shape[1]]

    def score(self, scores: np.ndarray, k: int, one_per_product: bool) -> float:
        """Mean per-user validation metric of the lists that ``scores`` (users x C) rank."""
        every = self.per_user(scores, k, one_per_product)
        every = every[np.isfinite(every)]
        return float(every.mean()) if len(every) else 0.0

    def per_user(self, scores: np.ndarray, k: int, one_per_product: bool) -> np.ndarray:
        """Each pooled user's validation metric of the list ``scores`` ranks (NaN where the
        metric does not apply), in the pool's row order."""
        values = []
        for s, lo, hi in zip(self.slices, self.bounds[:-1], self.bounds[1:], strict=True):
            width = s.items.shape[1]
            keys = s.keys if one_per_product else None
            items = select_top(s.items, scores[lo:hi, :width], k, keys)[0]
            if self.metric == "like_ndcg":
                values.append(ndcg_at_k(items, s.likes))
            else:
                values.append(purchase_recall_at_k(items, s.purchases, s.post_products))
        return np.asarray(np.concatenate(values), dtype=np.float64)


def _join(parts: list[np.ndarray], axis: int = 0) -> np.ndarray:
    """``np.concatenate(parts, axis)``, but one part is returned as it is (no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)


def _pad(a: np.ndarray, width: int, fill: Any, axis: int = 1) -> np.ndarray:
    missing = width - a.shape[axis]
    if missing <= 0:
        return a
    shape = list(a.shape)
    shape[axis] = missing
    return np.concatenate([a, np.full(shape, fill, dtype=a.dtype)], axis=axis)


# --- the choice --------------------------------------------------------------------------------


def choose(
    pool: _Pool,
    names: list[str],
    k: int,
    max_rows: int,
    random_state: int,
    depth: int = RERANK_DEPTH,
) -> RankerChoice:
    """Pick the best option on two folds of users of the pooled slices; fit it on all of them.

    A tree ranker is judged as it will run: on each user's best ``depth`` candidates by the
    best linear ranker (its score on every candidate is reported as ``ranker:<i>:all``).
    """
    n_pos = int(pool.labels.sum())
    if n_pos < MIN_POSITIVES or len(np.unique(pool.users)) < 4:
        logger.warning("validation too small (%d positives): rank fusion", n_pos)
        return RankerChoice("fusion", metric=pool.metric)
    distinct, owner = np.unique(pool.users, return_inverse=True)
    folds = (np.random.default_rng(random_state).permutation(len(distinct)) % 2)[owner]
    users: dict[tuple[str, bool], np.ndarray] = {}
    # each option's scores (users x candidates) are made again for the one served, not kept
    # for all of them: two dozen options, each as large as the pool's candidates
    makers: dict[str, Callable[[], np.ndarray]] = {}

    def judge(name: str, make: Callable[[], np.ndarray]) -> None:
        makers[name] = make
        scores = make()
        for dedupe in (False, True):
            users[(name, dedupe)] = pool.per_user(scores, k, dedupe)

    judge("fusion", partial(_fixed_scores, pool, None))
    for i, n in enumerate(names):
        judge(f"source:{n}", partial(_fixed_scores, pool, i))
    jobs = [(params, f) for params in RANKER_GRID for f in (0, 1)]
    with quiet_sklearn():
        fits = parallel_map(
            lambda job: _fit_ranker(pool, folds != job[1], job[0], max_rows, random_state), jobs
        )
    oofs = {
        i: oof
        for i in range(len(RANKER_GRID))
        if (oof := _out_of_fold(pool, folds, fits[2 * i : 2 * i + 2])) is not None
    }
    linear = [i for i in oofs if not _is_tree(RANKER_GRID[i])]
    pre = max(linear, key=lambda i: pool.score(oofs[i], k, False), default=None)
    report: dict[str, float] = {}
    kept = best_in_rows(oofs[pre], depth) if pre is not None else None
    for i, oof in oofs.items():
        if kept is not None and pre is not None and _is_tree(RANKER_GRID[i]):
            report[f"ranker:{i}:all"] = pool.score(oof, k, False)
            # the trees and the linear ranker together: the mean of their log-odds
            judge(f"ranker:{i}+linear", partial(_with_linear, oof, oofs[pre], kept))
            judge(f"ranker:{i}", partial(_masked, oof, kept))
        else:
            judge(f"ranker:{i}", partial(np.asarray, oof))
    options = {key: _mean(v) for key, v in users.items()}
    (best, dedupe), value = max(options.items(), key=lambda kv: kv[1])
    logger.info(
        "validation %s: best %s%s = %.4f",
        pool.metric,
        best,
        " (one post per product)" if dedupe else "",
        value,
    )
    # the options whose mean is within the noise of the best one's (one standard error of the
    # per-user difference): the order among them is noise, so a fixed preference picks
    near = within_noise({name: v for (name, d), v in users.items() if d == dedupe}, best)
    served = min(near, key=preference)
    if served != best:
        logger.info("within the noise of %s: %s; served %s", best, ", ".join(near[1:]), served)
    choice = RankerChoice(
        served,
        one_per_product=dedupe,
        metric=pool.metric,
        validation={f"{n}{'+1pp' if d else ''}": v for (n, d), v in options.items()} | report,
        val_scores=makers[served](),
        best=best,
        within_noise=near,
    )
    if served.startswith("ranker:"):
        index, _, extra = served.split(":")[1].partition("+")
        choice.params = dict(RANKER_GRID[int(index)])
        choice.ensemble = extra == "linear"
        if pre is not None and _is_tree(choice.params):
            choice.prefilter_params, choice.depth = dict(RANKER_GRID[pre]), depth
        fit_chosen(choice, pool, max_rows, random_state)
    return choice


def fit_chosen(choice: RankerChoice, pool: _Pool, max_rows: int, random_state: int) -> bool:
    """Fit the chosen ranker (``choice.params``) and its linear prefilter
    (``choice.prefilter_params``, when set) on every user of ``pool``, into ``choice``; False
    (``choice`` unchanged) when the pool holds one class only."""
    stages = [choice.params]
    if choice.prefilter_params:
        stages.append(choice.prefilter_params)
    every = np.ones(len(pool.items), dtype=bool)
    with quiet_sklearn():
        fitted = parallel_map(
            lambda params: _fit_ranker(pool, every, params, max_rows, random_state), stages
        )
    if any(f is None for f in fitted):
        return False
    choice.estimator = fitted[0]
    choice.prefilter = LinearScores.of(fitted[1]) if len(fitted) > 1 else None
    return True


def _fixed_scores(pool: _Pool, source: int | None) -> np.ndarray:
    """The pool's scores of reciprocal-rank fusion (``source`` None) or of one source's
    ranks; -inf where a user's row has no candidate."""
    if source is None:
        scores = fusion_scores(pool.ranks, pool.slices[0].depth)
    else:
        scores = -pool.ranks[source].astype(np.float32)
    return _masked(scores, pool.items >= 0)


def _masked(scores: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``scores`` where ``kept``, -inf elsewhere."""
    return np.where(kept, scores, -np.inf)


def _with_linear(tree: np.ndarray, linear: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """A tree ranker and the linear ranker together, on the candidates the linear one kept:
    the mean of their log-odds."""
    return _masked(0.5 * (log_odds(tree) + log_odds(linear)), kept)


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else 0.0


def within_noise(per_user: Mapping[str, np.ndarray], best: str) -> list[str]:
    """The options (per-user validation scores, the same users in the same order; NaN where
    the metric does not apply) whose mean is below ``best``'s by at most :data:`NOISE_SE`
    standard errors of the per-user difference, ``best`` first, then by mean.

    >>> within_noise({"a": np.array([0.2, 0.4, 0.3]), "b": np.array([0.3, 0.3, 0.3]),
    ...               "c": np.array([0.0, 0.1, 0.0])}, "a")
    ['a', 'b']
    """
    near = []
    for name, values in per_user.items():
        gap = per_user[best] - values
        gap = gap[np.isfinite(gap)]
        if name == best or len(gap) < 2:
            continue
        if gap.mean() <= NOISE_SE * gap.std(ddof=1) / np.sqrt(len(gap)):
            near.append(name)
    near.sort(key=lambda n: -_mean(per_user[n]))
    return [best, *near]


def preference(name: str) -> tuple[int, int]:
    """Where an option stands in the fixed order that picks among the options within the noise
    of the best (:func:`within_noise`): trees with the linear ranker (``ranker:<i>+linear``, an
    average of two rankers: the least variance), then the trees alone, the linear rankers,
    reciprocal-rank fusion (no weights learned) and single sources; within a kind, grid order
    (the larger tree ranker and the weaker regularisation first).

    >>> sorted(["source:ease", "ranker:3", "ranker:1", "fusion", "ranker:1+linear"], key=preference)
    ['ranker:1+linear', 'ranker:1', 'ranker:3', 'fusion', 'source:ease']
    """
    if name.startswith("ranker:"):
        index, _, extra = name.split(":")[1].partition("+")
        i = int(index)
        return (0 if extra else 1 if _is_tree(RANKER_GRID[i]) else 2), i
    return (3, 0) if name == "fusion" else (4, 0)


@dataclass
class LinearScores:
    """A fitted linear option of :func:`make_ranker` (imputer, scaler, logistic regression) as
    one weighted sum over the feature axis of a candidate block: the order of its
    probabilities, without gathering rows or scikit-learn's checks on every call."""

    fill: np.ndarray  # per feature: what a missing value counts as (the imputer's median)
    weights: np.ndarray
    bias: float

    @classmethod
    def of(cls, pipeline: Any) -> LinearScores:
        imputer, scaler, model = (pipeline[i] for i in range(3))
        weights = model.coef_[0] / scaler.scale_
        bias = float(model.intercept_[0] - weights @ scaler.mean_)
        return cls(imputer.statistics_, weights, bias)

    def __call__(self, features: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of (users x C x F) ``features`` (users x C); padding (item -1) -inf."""
        x = np.where(np.isnan(features), self.fill, features)
        return np.where(items >= 0, x @ self.weights + self.bias, -np.inf)


def log_odds(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities (clipped away from 0 and 1; -inf stays -inf).

    >>> log_odds(np.array([0.5, -np.inf])).tolist()
    [0.0, -inf]
    """
    q = np.clip(p, 1e-6, 1 - 1e-6)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(p), np.log(q / (1 - q)), -np.inf).astype(np.float32)


def _is_tree(params: dict[str, Any]) -> bool:
    return bool(params["model"] == "hgb")


def best_in_rows(scores: np.ndarray, depth: int) -> np.ndarray:
    """Mask of the ``depth`` best entries of every row (all of a row no wider than that).

    >>> best_in_rows(np.array([[0.1, 0.7, 0.3, 0.5]]), 2).tolist()
    [[False, True, False, True]]
    """
    if scores.shape[1] <= depth:
        return np.ones(scores.shape, dtype=bool)
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def _out_of_fold(pool: _Pool, folds: np.ndarray, models: list[Any]) -> np.ndarray | None:
    """Scores of every fold's candidates by ``models[f]``, the ranker fitted on the users out
    of fold ``f`` (None when one of them could not be fitted)."""
    if any(m is None for m in models):
        return None
    oof = np.full(pool.labels.shape, -np.inf, dtype=np.float32)
    for f, model in enumerate(models):
        rows = (folds == f)[:, None]
        oof = np.where(rows, _predict(model, pool.features, (pool.items >= 0) & rows), oof)
    return oof


def _fit_ranker(
    pool: _Pool, users: np.ndarray, params: dict[str, Any], max_rows: int, random_state: int
) -> Any:
    """A classifier of the candidate rows of ``users`` (None when they hold one class only)."""
    valid = np.flatnonzero((pool.items >= 0) & users[:, None])
    y = pool.labels.ravel()[valid]
    if y.all() or not y.any():
        return None
    negatives = np.flatnonzero(~y)
    room = max(max_rows - int(y.sum()), 1)
    if len(negatives) > room:
        rng = np.random.default_rng(random_state)
        sampled = rng.choice(negatives, room, replace=False)
        keep = np.sort(np.concatenate([np.flatnonzero(y), sampled]))
        valid, y = valid[keep], y[keep]
    # only the rows fitted on are gathered (the pool holds millions)
    x = _rows(pool.features)[valid]
    # a feature with no value at all (e.g. every age on data without timestamps) crashes the
    # trees' binning; as a constant it is simply never split on, here or when predicting
    empty = np.isnan(x).all(axis=0)
    if empty.any():
        x = np.where(empty, 0.0, x).astype(x.dtype, copy=False)
    model = make_ranker(params, random_state)
    with single_threaded():  # OpenMP oversubscribes busy hosts
        return model.fit(x, y)


@contextmanager
def quiet_sklearn() -> Iterator[None]:
    """Ignore scikit-learn's warnings (e.g. lbfgs ConvergenceWarning) meanwhile, on every thread.

    Enter it on the thread that starts the fits, around the whole pool: the warnings filters
    are global, and entering and leaving them on several threads at once is not safe.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="sklearn")
        yield


def make_ranker(params: dict[str, Any], random_state: int) -> Any:
    """An unfitted scikit-learn classifier for one entry of :data:`RANKER_GRID`."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rest = {k: v for k, v in params.items() if k != "model"}
    if params["model"] == "hgb":
        return HistGradientBoostingClassifier(
            early_stopping=False, random_state=random_state, **rest
        )
    return make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(max_iter=300, **rest),
    )


def _rows(features: np.ndarray) -> np.ndarray:
    """Candidate features (users x C x F) as rows (users * C, F): a view when contiguous."""
    return features.reshape(-1, features.shape[-1])


def _predict(
    model: Any, features: np.ndarray, valid: np.ndarray, threads: int | None = None
) -> np.ndarray:
    """Ranker scores (users x C) of the candidates where ``valid``; the others score -inf.

    Rows are gathered and go to the ranker in chunks of :data:`PREDICT_ROWS` (on ``threads``
    threads, default every core): a tree ensemble reads a chunk once per tree, a small chunk
    stays in cache, and no copy of all the rows is made.
    """
    out = np.full(valid.shape, -np.inf, dtype=np.float32)
    index = np.flatnonzero(valid)
    rows = _rows(features)

    def proba(lo: int) -> np.ndarray:
        with single_threaded():
            chunk = rows[index[lo : lo + PREDICT_ROWS]]
            return np.asarray(model.predict_proba(chunk)[:, 1])

    if len(index):
        chunks = parallel_map(proba, range(0, len(index), PREDICT_ROWS), threads)
        out.ravel()[index] = np.concatenate(chunks)
    return out


def score_block(
    choice: RankerChoice, block: CandidateBlock, names: list[str], n: int = 0
) -> np.ndarray:
    """Scores of a block's candidates under the chosen option (padding -inf), on the calling
    thread (:meth:`LearnedBlend.recommend` runs blocks on a pool of threads).

    Two-stage ranking (``choice.prefilter``): the tree ranker scores each user's best
    ``max(choice.depth, n)`` candidates by the linear ranker; the rest score -inf.
    """
    if choice.kind.startswith("ranker:"):
        items = block.items
        if choice.prefilter is not None:
            first = choice.prefilter(block.features, items)
            items = np.where(best_in_rows(first, max(choice.depth, n)), items, -1)
            if choice.ensemble:  # the linear score is a log-odds already
                trees = _predict(choice.estimator, block.features, items >= 0, threads=1)
                both = 0.5 * (log_odds(trees) + first.astype(np.float32))
                return np.where(items >= 0, both, -np.inf).astype(np.float32)
        return _predict(choice.estimator, block.features, items >= 0, threads=1)
    if choice.kind.startswith("source:"):
        scores = -block.ranks[names.index(choice.kind.split(":", 1)[1])].astype(np.float32)
    else:
        scores = fusion_scores(block.ranks, block.depth)
    return np.where(block.items >= 0, scores, -np.inf).astype(np.float32)
