"""The default model's recipe: which candidate sources, with which parameters, under which
learned ranker. :func:`make_blend` is what ``feed train`` publishes and ``feed evaluate`` calls
"default"; :class:`TrainConfig` holds every parameter and is recorded in the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from feed.evaluation.splits import Splitter
from feed.models.ranker import RERANK_DEPTH, LearnedBlend
from feed.models.sources import (
    EASE,
    Content,
    Fresh,
    ItemItem,
    MatrixFactorization,
    Popularity,
    ProductCF,
    Social,
    Trending,
)
from feed.models.tuning import SOURCE_GRIDS

#: The candidate sources of the default model, in feature order.
SOURCES = (
    "als",
    "bpr",
    "product_als",
    "product_knn",
    "ease",
    "itemknn",
    "content",
    "social",
    "popularity",
    "trending",
    "fresh",
)


@dataclass
class TrainConfig:
    """Every training parameter, recorded in the manifest."""

    n_candidates: int = 200  # per user, published
    n_neighbours: int = 30  # per post
    n_trending: int = 500
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    alpha: float = 10.0
    item_k: int = 100
    content_min_df: int = 2
    ease_l2: float = 200.0
    #: BPR's budget of sampled updates (``MatrixFactorization.max_samples``): BPR runs
    #: ``5 * iterations`` epochs, each drawing one sample per stored entry of the (twin-free)
    #: engagement matrix, or ``ceil(bpr_max_samples / nnz)`` epochs when that is fewer. 30M
    #: leaves every dataset up to 400k non-zeros as before (0.1M generated likes: 226k,
    #: 75 epochs; Ciao 219k; MovieLens 46k); at 1M likes (2.9M) BPR runs 11 epochs, not 75.
    bpr_max_samples: int = 30_000_000
    #: EASE is left out of the default model above this many distinct engaged posts: its dense
    #: solve takes O(posts^3) time and three posts x posts float64 matrices of memory (2.4 GB
    #: at 10,000, 9.6 GB at 20,000; the validation and final fits run side by side).
    ease_max_posts: int = 10_000
    #: Content neighbours are computed among at most this many most-engaged posts.
    max_content_neighbour_posts: int = 20_000
    #: Candidate sources of the default model: a source with weight 0 is left out (a name not
    #: listed counts as 1). With a single source left, its own ranking is published.
    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SOURCES, 1.0))
    n_per_source: int = 100  # each source's list depth read into the ranker's candidates
    #: Users whose candidates the learned ranker precomputes, the most active first (newest
    #: like or purchase, else most interactions: ``feed.train.split_by_activity``); the others
    #: get the list of the one personal source with the best validation score
    #: (``feed.train.cohort_candidates``), 13 to 23 times cheaper per user than the ranker on
    #: the group-buy shape. 0: every user. docs/scaling.md has the measurements (time and quality).
    ranked_users: int = 20_000
    #: Candidates per user a tree ranker re-scores, the best by the linear ranker
    #: (:data:`~feed.models.ranker.RERANK_DEPTH`).
    rerank_depth: int = RERANK_DEPTH
    #: The validation protocol (``feed.evaluation.splits.METHODS``, or ``auto``: chosen from the
    #: data as ``feed evaluate`` chooses it; ``feed train`` records the one it used).
    split: str = "auto"
    #: Sources whose hyper-parameters are chosen on the first validation slice, each over its
    #: grid of :data:`feed.models.tuning.SOURCE_GRIDS` (points of the grids ``feed evaluate``
    #: tunes the baselines of the same name on); the values above are then the starting point,
    #: and the manifest's ``model.tuned`` holds the chosen ones. Empty: no tuning.
    tune: tuple[str, ...] = ("ease", "als", "itemknn")
    val_frac: float = 0.2  # share of the newest likes and purchases in a validation slice
    val_windows: int = 6  # validation slices at most, each older than the previous ...
    min_val_users: int = 300  # ... until this many validation users are collected
    #: Validation users the ranker is chosen and fitted on at most, per slice (a seeded sample).
    #: Options within 1-2% of each other are told apart only with thousands of users: at 1,000
    #: the choice flipped between two trains a day apart (docs/quality.md, "How many validation
    #: users"); the cost is the slice's candidates and the rankers' scoring, linear in this.
    max_val_users: int = 4000
    #: ``feed train --warm-start``: fit the reused ranker choice again on this data's
    #: validation slices (their sources warm-started too), rather than reuse the previous
    #: fitted ranker as it is (``feed.models.ranker.LearnedBlend.fit_warm``).
    warm_refit_ranker: bool = True
    random_state: int = 0


def make_blend(config: TrainConfig) -> LearnedBlend:
    """The default model: what ``feed train`` publishes and ``feed evaluate`` calls "default".

    Every source of :data:`SOURCES` with a positive weight, merged and re-ranked by a ranker
    learned on validation slices carved from the end of the training data
    (:class:`~feed.models.ranker.LearnedBlend`).
    """
    mf: dict[str, Any] = {
        "factors": config.factors,
        "iterations": config.iterations,
        "regularization": config.regularization,
        "random_state": config.random_state,
    }
    every = {
        "als": MatrixFactorization("als", alpha=config.alpha, **mf),
        "bpr": MatrixFactorization("bpr", max_samples=config.bpr_max_samples, **mf),
        "product_als": ProductCF("als", alpha=config.alpha, **mf),
        "product_knn": ProductCF("itemknn", K=config.item_k),
        "ease": EASE(l2=config.ease_l2, max_items=config.ease_max_posts),
        "itemknn": ItemItem(K=config.item_k),
        "content": Content(min_df=config.content_min_df),
        "social": Social(),
        "popularity": Popularity(),
        "trending": Trending(),
        "fresh": Fresh(min_df=config.content_min_df),
    }
    sources = {n: m for n, m in every.items() if config.weights.get(n, 1.0) > 0}
    return LearnedBlend(
        sources,
        n_per_source=config.n_per_source,
        rerank_depth=config.rerank_depth,
        n_published=config.n_candidates,
        val_frac=config.val_frac,
        max_windows=config.val_windows,
        min_val_users=config.min_val_users,
        max_val_users=config.max_val_users,
        splitter=Splitter(config.split),
        tune={n: SOURCE_GRIDS[n] for n in config.tune if n in sources},
        random_state=config.random_state,
    )
