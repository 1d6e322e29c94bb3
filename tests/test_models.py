"""The contract every candidate model and the default model pass (implicit's
``RecommenderBaseTestMixin`` in spirit): on a block dataset whose right answer is known, the
model recommends the user's own block; a batch equals one user at a time; a refit equals a
fresh fit with the same ``random_state``; ``fit`` returns ``self``; recommending before
``fit`` raises :class:`NotFittedError`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from feed.data import Dataset, load
from feed.features.matrices import TrainingData, build
from feed.models import NotFittedError
from feed.models.base import lookup_flat, parallel_map, topk
from feed.models.candidates import (
    CandidateBlock,
    CandidateBuilder,
    FeatureContext,
    _ranks,
    best_per_group,
    merge,
    select_top,
    shared_content,
    shared_groups,
    topk_distinct,
)
from feed.models.default import TrainConfig, make_blend
from feed.models.ranker import (
    RANKER_GRID,
    LearnedBlend,
    LinearScores,
    RankerChoice,
    _drain,
    best_in_rows,
    make_ranker,
    score_block,
)
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
    twin_columns,
)

N_PER_BLOCK = 24  # users per block
POSTS_PER_BLOCK = 30
DAY_S = 86_400
WORDS = {"a": "red apple cherry strawberry 紅色 蘋果", "b": "blue ocean water whale 藍色 海洋"}

# name -> (factory, personalised)
MODELS: dict[str, tuple[Callable[[], Any], bool]] = {
    "popularity": (Popularity, False),
    "trending": (Trending, False),
    "als": (
        lambda: MatrixFactorization(
            "als", factors=2, iterations=10, regularization=1.0, random_state=3
        ),
        True,
    ),
    "bpr": (
        lambda: MatrixFactorization(
            "bpr", factors=8, iterations=20, learning_rate=0.05, random_state=3
        ),
        True,
    ),
    "itemknn": (lambda: ItemItem(K=20), True),
    "itemknn-cosine": (lambda: ItemItem(K=20, method="cosine"), True),
    "itemknn-rp3beta": (lambda: ItemItem(K=20, method="rp3beta"), True),
    "ease": (lambda: EASE(l2=10.0), True),
    "product_als": (
        lambda: ProductCF("als", factors=2, iterations=10, regularization=1.0, random_state=3),
        True,
    ),
    "product_knn": (lambda: ProductCF("itemknn", K=20), True),
    "content": (lambda: Content(min_df=1), True),
    "social": (Social, True),
    "fresh": (lambda: Fresh(min_df=1), True),
    "default": (
        lambda: make_blend(
            TrainConfig(factors=8, iterations=10, n_per_source=20, val_windows=2, random_state=3)
        ),
        True,
    ),
}


def block_dataset(root: Path, seed: int = 0) -> Path:
    """Two blocks of users, authors, posts and products: users like, buy and follow only
    inside their block; block "a" is bigger so that popularity has a known answer."""
    rng = np.random.default_rng(seed)
    posts, products, likes, purchases, follows = [], [], [], [], []
    t0 = 1_700_000_000
    for block in ("a", "b"):
        n_users = N_PER_BLOCK + (6 if block == "a" else 0)
        authors = [f"w{block}{i}" for i in range(3)]
        for j in range(POSTS_PER_BLOCK):
            prod = f"p{block}{j % 10}"
            posts.append(
                {
                    "post_id": f"{block}{j}",
                    "author_id": authors[j % 3],
                    "created_at": t0 + j * 3_600,
                    "text": f"{WORDS[block]} #{j}",
                    "product_ids": prod,
                }
            )
        for i in range(10):
            products.append(
                {"product_id": f"p{block}{i}", "title": f"{block} thing {i}", "category": block}
            )
        for u in range(n_users):
            user = f"u{block}{u}"
            follows += [{"follower_id": user, "followee_id": a} for a in authors]
            liked = rng.choice(POSTS_PER_BLOCK, size=8, replace=False)
            for k, j in enumerate(liked):
                likes.append(
                    {
                        "user_id": user,
                        "post_id": f"{block}{j}",
                        "ts": t0 + DAY_S * (1 + k + rng.random()),
                    }
                )
            for k, i in enumerate(rng.choice(10, size=2, replace=False)):
                purchases.append(
                    {
                        "user_id": user,
                        "product_id": f"p{block}{i}",
                        "ts": t0 + DAY_S * (2 + 4 * k + rng.random()),
                    }
                )
    # one post everybody in block "a" likes: the most popular post
    likes += [
        {"user_id": f"ua{u}", "post_id": "a0", "ts": t0 + DAY_S * 14}
        for u in range(N_PER_BLOCK + 6)
    ]
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (
        ("posts", posts),
        ("products", products),
        ("likes", likes),
        ("purchases", purchases),
        ("follows", follows),
    ):
        frame = pd.DataFrame(rows).drop_duplicates(
            subset=["user_id", "post_id"] if name == "likes" else None
        )
        frame.to_csv(root / f"{name}.csv", index=False)
    return root


@pytest.fixture(scope="module")
def block(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, TrainingData]:
    ds = load(block_dataset(tmp_path_factory.mktemp("block") / "data"))
    return ds, build(ds)


def users_of(data: TrainingData, prefix: str) -> np.ndarray:
    ext = [u for u in data.users.external if u.startswith(prefix)]
    return data.users.to_internal(ext)


_FITTED: dict[str, Any] = {}


def fitted(name: str, block: tuple[Dataset, TrainingData]) -> Any:
    """The model fitted on the block data (once per test session)."""
    if name not in _FITTED:
        ds, data = block
        _FITTED[name] = MODELS[name][0]().fit(data)
    return _FITTED[name]


def top(model: Any, users: np.ndarray, n: int, data: TrainingData) -> np.ndarray:
    return model.recommend(users, n, data.seen())[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_recommends_the_known_answer(name: str, block: tuple[Dataset, TrainingData]) -> None:
    _, data = block
    model = fitted(name, block)
    if not MODELS[name][1]:
        items = top(model, users_of(data, "ub"), 1, data)
        assert set(data.posts.to_external(items[:, 0])) == {"a0"}  # the most engaged post
        return
    for prefix in ("ua", "ub"):
        items = top(model, users_of(data, prefix), 5, data)
        assert (items[:, 0] >= 0).all(), name  # sparse sources may list fewer than 5
        shown = data.posts.to_external(items[items >= 0])
        assert all(p.startswith(prefix[1]) for p in shown), (name, prefix, shown)


@pytest.mark.parametrize("name", list(MODELS))
def test_batch_equals_single(name: str, block: tuple[Dataset, TrainingData]) -> None:
    _, data = block
    model = fitted(name, block)
    users = np.arange(data.n_users)[::3]
    items, scores = model.recommend(users, 7, data.seen())[:2]
    for i, u in enumerate(users):
        one_items, one_scores = model.recommend(np.array([u]), 7, data.seen())[:2]
        np.testing.assert_array_equal(one_items[0], items[i])
        np.testing.assert_allclose(one_scores[0], scores[i], rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_refit_equals_fresh_fit(name: str, block: tuple[Dataset, TrainingData]) -> None:
    ds, data = block
    model = MODELS[name][0]()
    users = np.arange(data.n_users)
    assert model.fit(data) is model  # fit returns self
    first = model.recommend(users, 10, data.seen())
    model.fit(data)
    again = model.recommend(users, 10, data.seen())
    other_instance = fitted(name, block).recommend(users, 10, data.seen())
    for other in (again, other_instance):
        np.testing.assert_array_equal(first[0], other[0])
        np.testing.assert_allclose(first[1], other[1], rtol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_recommend_before_fit_raises(name: str) -> None:
    model = MODELS[name][0]()
    with pytest.raises(NotFittedError):
        model.recommend(np.array([0]), 5)


def test_score_pairs_matches_recommend(block: tuple[Dataset, TrainingData]) -> None:
    _, data = block
    model = fitted("als", block)
    users = np.arange(5)
    items, scores = model.recommend(users, 4, data.seen())
    np.testing.assert_allclose(model.score_pairs(users, items), scores, rtol=1e-5)
    with pytest.raises(NotFittedError):
        Content().score_pairs(users, items)


def test_default_model_reports_its_validation_choice(block: tuple[Dataset, TrainingData]) -> None:
    model = fitted("default", block)
    assert isinstance(model, LearnedBlend)
    summary = model.summary()
    assert summary["metric"] == "like_ndcg" and "content" in summary["sources"]
    kinds = {"fusion"} | {f"source:{n}" for n in summary["sources"]}
    assert summary["kind"] in kinds or summary["kind"].startswith("ranker:")
    assert summary["within_noise"][0] == summary["best"]  # what was within the noise of it
    assert summary["kind"] in summary["within_noise"]  # served: one of them
    fits = {f"{stage}:{n}_s" for stage in ("validation", "final") for n in summary["sources"]}
    assert fits <= set(summary["timings"])  # every source fitted before the slice and on all
    tree = summary["params"].get("model") == "hgb"  # two-stage: a linear ranker cuts first
    assert (summary["rerank"] is not None) == tree
    assert not tree or f"{summary['kind'].split('+')[0]}:all" in summary["validation"]
    reasons = model.recommend_with_reasons(np.arange(4), 5, block[1].seen())[2]
    assert reasons.dtype == np.uint8
    # one Content fit serves the content and fresh sources (their profiles are held once)
    assert model.sources_["fresh"].content_ is model.sources_["content"]


def test_two_stage_ranking_rescores_only_the_linear_rankers_best() -> None:
    """A tree ranker with a prefilter scores each user's best ``max(depth, n)`` candidates by
    the linear ranker, exactly as it would score them alone; the others score -inf."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    y = x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=600) > 0.5
    linear = make_ranker({"model": "logistic", "C": 1.0}, 0).fit(x, y)
    trees = make_ranker(RANKER_GRID[1], 0).fit(x, y)
    items = np.arange(40).reshape(4, 10)
    items[3, 6:] = -1  # a user with six candidates
    features = rng.normal(size=(4, 10, 3)).astype(np.float32)
    features[items < 0] = np.nan
    ranks = np.zeros((1, 4, 10), np.int32)
    block = CandidateBlock(5, np.arange(4), items, features, ranks, np.zeros((4, 10), np.uint8))
    first = linear.predict_proba(features.reshape(-1, 3))[:, 1].reshape(4, 10)
    scorer = LinearScores.of(linear)  # the pipeline as one weighted sum: its log-odds
    x = features.copy()
    x[0, :4, 1] = np.nan  # a missing value counts as the imputer's median
    odds = scorer(x, items)
    want = linear.predict_proba(x[:3].reshape(-1, 3))[:, 1]
    np.testing.assert_allclose(1 / (1 + np.exp(-odds[:3].ravel())), want, rtol=1e-5)
    assert np.isneginf(odds[3, 6:]).all()
    choice = RankerChoice("ranker:1", estimator=trees, prefilter=scorer, depth=3)
    alone = trees.predict_proba(features.reshape(-1, 3))[:, 1].reshape(4, 10)
    for n, depth in ((2, 3), (5, 5)):
        scores = score_block(choice, block, ["x"], n)
        for row in range(4):
            valid = np.flatnonzero(items[row] >= 0)
            best = set(valid[np.argsort(-first[row, valid])][:depth].tolist())
            assert set(np.flatnonzero(np.isfinite(scores[row])).tolist()) == best
            picked = sorted(best)
            np.testing.assert_allclose(scores[row, picked], alone[row, picked], rtol=1e-6)
    assert best_in_rows(np.array([[0.3, 0.1]]), 5).all()


def test_default_model_with_one_source_is_that_source(block: tuple[Dataset, TrainingData]) -> None:
    ds, data = block
    cfg = TrainConfig(
        weights=dict.fromkeys(("popularity",), 1.0)
        | dict.fromkeys(
            (
                "als",
                "bpr",
                "product_als",
                "product_knn",
                "ease",
                "itemknn",
                "content",
                "social",
                "trending",
                "fresh",
            ),
            0.0,
        )
    )
    model = make_blend(cfg).fit(data)
    users = np.arange(data.n_users)
    alone = Popularity().fit(data).recommend(users, 5, data.seen())[0]
    np.testing.assert_array_equal(model.recommend(users, 5, data.seen())[0], alone)


def test_ease_refuses_too_many_posts(block: tuple[Dataset, TrainingData]) -> None:
    with pytest.raises(ValueError, match="max_items"):
        EASE(max_items=10).fit(block[1])


def test_twin_columns_are_fitted_once() -> None:
    x = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 2, 0, 0], [1, 0, 1, 0]], dtype=np.float32))
    keep, twin = twin_columns(x)
    assert keep.tolist() == [0, 1, 3] and twin.tolist() == [0, 1, 0, 2]


def test_list_helpers() -> None:
    assert merge([np.array([[3, -1]]), np.array([[3, 2]])]).tolist() == [[2, 3]]
    block = np.array([[1.0, 5.0, 5.0, 0.5]], dtype=np.float32)
    best_per_group(block, shared_groups(np.array([7, 7, 7, 9])))
    assert block.tolist() == [[-np.inf, 5.0, -np.inf, 0.5]]
    items, scores, _ = select_top(np.array([[10, 11, 12]]), np.array([[0.2, 0.9, 0.5]]), 4, None)
    assert items.tolist() == [[11, 12, 10, -1]] and np.isneginf(scores[0, 3])


def test_block_helpers_match_a_row_by_row_reference() -> None:
    """The vectorised top-k helpers agree with a plain loop over rows."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        n_rows, n_cols, n = int(rng.integers(1, 8)), int(rng.integers(2, 40)), 5
        block = rng.random((n_rows, n_cols)).astype(np.float32)
        block[rng.random(block.shape) < 0.3] = -np.inf
        keys = rng.integers(0, max(n_cols // 3, 1), n_cols)
        got = topk_distinct(block, keys, shared_groups(keys), n, fetch=2)
        for row, out in zip(block, got, strict=True):
            order = np.argsort(-row, kind="stable")
            order = order[np.isfinite(row[order])]
            _, first = np.unique(keys[order], return_index=True)
            want = order[np.sort(first)][:n]
            assert out[: len(want)].tolist() == want.tolist() and (out[len(want) :] == -1).all()
        top = topk(block, n)[0]
        cand = merge([top, topk(-block, n)[0]])
        ranks = _ranks(top, cand, n)
        for t, c, r in zip(top, cand, ranks, strict=True):
            listed = {int(x): i for i, x in enumerate(t) if x >= 0}
            assert r.tolist() == [listed.get(int(x), n) if x >= 0 else n for x in c]


def test_validation_blocks_stack_as_padded_concatenation() -> None:
    """A validation slice's features and ranks, stacked block by block (each block dropped
    once copied), equal the padded concatenation of the blocks."""
    rng = np.random.default_rng(0)
    widths, depth = (3, 5, 2), 7
    blocks = [
        CandidateBlock(
            depth,
            np.arange(2),
            rng.integers(0, 9, (2, w)),
            rng.random((2, w, 4)).astype(np.float32),
            rng.integers(0, depth, (3, 2, w)).astype(np.int32),
            np.zeros((2, w), np.uint8),
        )
        for w in widths
    ]
    want_f = np.concatenate(
        [
            np.pad(
                b.features, ((0, 0), (0, 5 - b.features.shape[1]), (0, 0)), constant_values=np.nan
            )
            for b in blocks
        ]
    )
    want_r = np.concatenate(
        [
            np.pad(b.ranks, ((0, 0), (0, 0), (0, 5 - b.ranks.shape[2])), constant_values=depth)
            for b in blocks
        ],
        axis=1,
    )
    given = list(blocks)
    features, ranks = _drain(given, 5, depth)
    assert given == []  # every block released
    np.testing.assert_array_equal(features, want_f)
    np.testing.assert_array_equal(ranks, want_r)
    assert features.dtype == np.float32 and ranks.dtype == np.int32


def test_parallel_map_keeps_order() -> None:
    assert parallel_map(lambda x: x * x, range(7), threads=3) == [x * x for x in range(7)]


def test_bpr_sample_budget_only_shortens_large_fits(block: tuple[Dataset, TrainingData]) -> None:
    """``max_samples`` above ``5 * iterations * nnz`` changes nothing; below it, BPR runs
    ``ceil(max_samples / nnz)`` epochs, as reproducibly as before."""
    _, data = block
    nnz = sp.csr_matrix(data.engagement[:, twin_columns(data.engagement)[0]]).nnz
    params = {"factors": 8, "iterations": 4, "random_state": 3}
    plain = MatrixFactorization("bpr", **params).fit(data)
    roomy = MatrixFactorization("bpr", max_samples=20 * nnz, **params).fit(data)
    assert plain.epochs_ == roomy.epochs_ == 20
    np.testing.assert_array_equal(plain.user_factors_, roomy.user_factors_)
    short = MatrixFactorization("bpr", max_samples=3 * nnz - 1, **params).fit(data)
    again = MatrixFactorization("bpr", max_samples=3 * nnz - 1, **params).fit(data)
    assert short.epochs_ == 3
    np.testing.assert_array_equal(short.item_factors_, again.item_factors_)
    assert not np.array_equal(short.item_factors_, plain.item_factors_)


def test_fresh_reuses_content_scores_exactly(block: tuple[Dataset, TrainingData]) -> None:
    """The candidate builder derives Fresh's scores from the Content source's block; the
    candidates and features equal those of Fresh scoring on its own."""
    _, data = block
    sources = {"content": Content(min_df=1).fit(data), "fresh": Fresh(min_df=1).fit(data)}
    sources["als"] = fitted("als", block)
    context = FeatureContext(data)
    shared = CandidateBuilder(sources, context, 10)
    alone = CandidateBuilder(sources, context, 10)
    alone.shared_content = {}
    assert shared.shared_content == {"fresh": "content"}
    users = np.arange(data.n_users)
    a, b = shared.build(users, data.seen()), alone.build(users, data.seen())
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.reasons, b.reasons)
    other = Content(min_df=1).fit(replace(data, engagement=data.engagement[::-1]))
    assert shared_content({"content": other, "fresh": sources["fresh"]}) == {}


def test_fresh_takes_a_fitted_content_as_its_own_only_when_it_is_its_own_kind(
    block: tuple[Dataset, TrainingData],
) -> None:
    _, data = block
    content = Content(min_df=1).fit(data)
    shared = Fresh(min_df=1).fit(data, content=content)
    alone = Fresh(min_df=1).fit(data)
    assert shared.content_ is content
    users = np.arange(data.n_users)
    np.testing.assert_array_equal(shared.score_users(users), alone.score_users(users))
    with pytest.raises(ValueError, match="other settings"):
        Fresh(min_df=2).fit(data, content=content)


def test_default_model_bpr_budget_kicks_in_above_the_threshold(
    block: tuple[Dataset, TrainingData],
) -> None:
    """``TrainConfig.bpr_max_samples`` leaves small data alone; lowered under the block
    data's size, the default model's BPR runs fewer epochs (recorded in its summary)."""
    ds, data = block
    params = {"factors": 8, "iterations": 10, "n_per_source": 20, "val_windows": 2}
    assert fitted("default", block).summary()["epochs"]["bpr"] == 50
    low = make_blend(TrainConfig(random_state=3, bpr_max_samples=500, **params)).fit(data)
    nnz = sp.csr_matrix(data.engagement[:, twin_columns(data.engagement)[0]]).nnz
    assert low.summary()["epochs"]["bpr"] == -(-500 // nnz) < 50


def test_content_scores_equal_the_sparse_product(block: tuple[Dataset, TrainingData]) -> None:
    """Content scores each block of users as post vectors x dense profiles: the cosine of the
    sparse x sparse product, up to float32 rounding."""
    _, data = block
    model = fitted("content", block)
    users = np.arange(data.n_users)
    want = (model.profiles_[users] @ model.post_vectors_.T).toarray()
    np.testing.assert_allclose(model.score_users(users), want, rtol=1e-6, atol=1e-7)


def test_default_model_carves_validation_with_its_splitter(
    block: tuple[Dataset, TrainingData],
) -> None:
    """The learned ranker keeps the model contract: ``fit(data)`` alone (its validation slices
    come from ``data.source`` through the ``splitter`` it was given)."""
    from feed.evaluation.splits import random_split

    _, data = block
    calls: list[float] = []

    def by_user(ds: Dataset, frac: float, seed: int) -> Any:
        calls.append(frac)
        return random_split(ds, frac, seed)

    cfg = TrainConfig(factors=8, iterations=4, n_per_source=20, val_windows=2, random_state=3)
    model = make_blend(cfg)
    model.splitter = by_user
    assert model.fit(data) is model and calls and calls[0] == cfg.val_frac
    assert model.get_params()["splitter"].endswith("by_user")
    items, scores = model.recommend(np.arange(3), 5, data.seen())
    assert items.shape == scores.shape == (3, 5)
    no_source = replace(data, source=None)
    assert make_blend(cfg).fit(no_source).summary()["kind"] == "fusion"  # nothing to learn on


def test_default_model_chooses_its_ranker_on_at_most_max_val_users_a_slice(
    block: tuple[Dataset, TrainingData],
) -> None:
    """``TrainConfig.max_val_users`` reaches the blend and bounds each validation slice's
    users (a seeded sample); the manifest's summary says how many the choice rested on."""
    _, data = block
    cfg = TrainConfig(factors=8, iterations=4, n_per_source=20, val_windows=2, random_state=3)
    every = make_blend(cfg).fit(data).summary()["validation_users"]
    assert len(every) == 2 and min(every) > 10  # min_val_users (300) not reached: two slices
    capped = make_blend(replace(cfg, max_val_users=10))
    assert capped.get_params()["max_val_users"] == 10
    assert capped.fit(data).summary()["validation_users"] == [10, 10]


def test_default_model_fits_data_without_any_time(block: tuple[Dataset, TrainingData]) -> None:
    """No timestamp anywhere (posts' created_at included): every age feature is empty, which
    scikit-learn's tree binning cannot take as it is; the default model still fits and ranks."""
    ds, _ = block
    untimed = replace(
        ds,
        posts=ds.posts.assign(created_at=np.nan),
        **{
            t: getattr(ds, t).assign(ts=np.nan) for t in ("likes", "purchases", "clicks", "follows")
        },
    )
    data = build(untimed)
    cfg = TrainConfig(factors=8, iterations=10, n_per_source=20, val_windows=2, random_state=3)
    model = make_blend(cfg).fit(data)
    items, _ = model.recommend(np.arange(data.n_users), 10, data.seen())
    assert (items >= 0).sum(axis=1).min() > 0


def test_decayed_data_reweights_events_and_shares_the_rest(dataset_dir: Path) -> None:
    """Time-decayed data (what trending fits on) is the dataset built with the half-life, its
    interaction matrices recomputed and everything else (id maps, social graph, texts) shared
    with the undecayed data rather than built again."""
    from feed.features.matrices import RECENT_SHARE, SECONDS_PER_DAY, EngagementWeights, decayed

    ds = load(dataset_dir)
    data = build(ds)
    assert ds.has_timestamps
    out = decayed(data)
    stamps = np.concatenate([ds.likes["ts"].to_numpy(float), ds.purchases["ts"].to_numpy(float)])
    span = (stamps.max() - np.quantile(stamps, 1.0 - RECENT_SHARE)) / SECONDS_PER_DAY
    ref = build(ds, EngagementWeights(half_life_days=max(float(span), 1.0)))
    for name in ("likes", "purchases", "engagement"):
        a, b = getattr(out, name), getattr(ref, name)
        assert (a != b).nnz == 0 and a.nnz == b.nnz
        assert (getattr(data, name) != a).nnz > 0  # events did decay
    assert out.users is data.users and out.follows is data.follows
    assert out.post_text is data.post_text and out.now == data.now


def test_content_profiles_by_blocks_of_users_equal_one_product(
    block: tuple[Dataset, TrainingData], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Content's profiles, computed a block of users at a time to bound the fit's memory, are
    exactly the row-normalised ``engagement @ posts + purchases @ products`` of every user."""
    from feed.models import sources

    _, data = block
    whole = Content(min_df=1).fit(data)
    monkeypatch.setattr(sources, "PROFILE_BLOCK_USERS", 7)
    blocked = Content(min_df=1).fit(data)
    assert data.n_users > 3 * 7 and data.purchases.nnz
    prod_docs = [
        f"{t} {c}" for t, c in zip(data.product_titles, data.product_categories, strict=True)
    ]
    raw = data.engagement @ whole.post_vectors_ + data.purchases @ whole.vectorizer_.transform(
        prod_docs
    )
    ref = sources._row_normalize(sp.csr_matrix(raw, dtype=np.float32))
    for got in (whole.profiles_, blocked.profiles_):
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert (got != ref).nnz == 0


@pytest.mark.parametrize("canonical", [True, False])
def test_lookup_flat_reads_the_stored_entries_of_any_csr(canonical: bool) -> None:
    """Every pair's value as the dense matrix has it: rows long and short, empty rows,
    entries not stored (0), and (``canonical`` False) unsorted columns with duplicates, which
    count summed as scipy counts them."""
    rng = np.random.default_rng(0)
    n_rows, n_cols = 60, 500
    lengths = rng.choice([0, 1, 5, 300], size=n_rows)
    r = np.repeat(np.arange(n_rows), lengths)
    c = rng.integers(0, n_cols, len(r))
    v = rng.random(len(r)).astype(np.float32) + 0.1
    if canonical:
        m = sp.csr_matrix((v, (r, c)), shape=(n_rows, n_cols))
        m.sum_duplicates()
    else:  # the raw arrays, in the order given: unsorted within rows, duplicates kept
        m = sp.csr_matrix((v, c, np.concatenate([[0], np.cumsum(lengths)])), (n_rows, n_cols))
        assert not m.has_canonical_format
    dense = m.toarray()
    stored = rng.integers(0, len(r), 2500)  # half the pairs are stored entries
    rows = np.concatenate([r[stored], rng.integers(0, n_rows, 2500)])
    cols = np.concatenate([c[stored], rng.integers(0, n_cols, 2500)])
    got = lookup_flat(m, rows, cols)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, dense[rows, cols], rtol=1e-6)
    assert (got[:2500] > 0).all() and (got[2500:] == 0).any()


def test_like_weights_count_by_their_log_whatever_their_unit(dataset_dir: Path) -> None:
    """A like's ``weight`` (a play count, a rating...) counts as ``log2(1 + weight / median)``:
    data without weights builds as before, the weight's unit changes nothing, and heavy-tailed
    weights that carry no taste (noise over several orders of magnitude) move a factor model's
    lists far less than the raw weights would."""
    from feed.features.matrices import EngagementWeights, like_strength

    ds = load(dataset_dir)
    plain, raw = build(ds), build(ds, EngagementWeights(like_scale="raw"))
    for name in ("likes", "engagement"):  # the generated data has no weight column: all 1
        assert (getattr(plain, name) != getattr(raw, name)).nnz == 0
    rng = np.random.default_rng(0)
    noisy = rng.lognormal(3.0, 2.0, len(ds.likes))  # a median of 20 plays, up to ~10^5
    heavy = replace(ds, likes=ds.likes.assign(weight=noisy))
    assert (
        build(heavy).likes != build(replace(ds, likes=ds.likes.assign(weight=noisy * 1e3))).likes
    ).nnz == 0
    strength = like_strength(noisy)
    assert np.median(strength) == pytest.approx(1.0, rel=1e-6)
    assert strength.max() < 20 and np.all(np.diff(strength[np.argsort(noisy)]) >= 0)
    with pytest.raises(ValueError, match="like_scale"):
        like_strength(noisy, "sqrt")

    def lists(data: TrainingData) -> np.ndarray:
        model = MatrixFactorization("als", factors=16, iterations=10, random_state=0).fit(data)
        return model.recommend(np.arange(data.n_users), 10, data.seen())[0]

    base = lists(plain)

    def overlap(other: np.ndarray) -> float:
        return float(
            np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(base, other, strict=True)])
        )

    scaled = overlap(lists(build(heavy)))
    unscaled = overlap(lists(build(heavy, EngagementWeights(like_scale="raw"))))
    assert scaled > unscaled + 0.1, (scaled, unscaled)


def test_rp3beta_weights_are_the_three_step_walk_with_a_popularity_penalty() -> None:
    """``W[i, j] = sum_u (x_ui / deg_i) (x_uj / deg_u) / deg_j ** beta``, the diagonal zero:
    what implicit's top-K product computes over the rescaled matrix, kept per row."""
    from feed.models.sources import RP3_BETA, knn_similarity

    rng = np.random.default_rng(0)
    x = sp.random(60, 25, density=0.2, random_state=1, format="csr", dtype=np.float32)
    x.data[:] = rng.integers(1, 5, x.nnz)
    dense = x.toarray()
    deg_u, deg_i = dense.sum(axis=1), dense.sum(axis=0)
    walk = (dense / np.maximum(deg_i, 1e-12)).T @ (dense / np.maximum(deg_u, 1e-12)[:, None])
    want = walk / np.maximum(deg_i, 1e-12) ** RP3_BETA
    np.fill_diagonal(want, 0.0)
    got = knn_similarity(x, 25, "rp3beta").toarray()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    top = knn_similarity(x, 6, "rp3beta").toarray()  # K counts the post itself, as for BM25
    for i in range(25):
        kept = np.flatnonzero(top[i])
        assert set(kept) == set(np.argsort(-want[i])[: len(kept)])
        assert np.allclose(top[i, kept], want[i, kept], rtol=1e-4)
