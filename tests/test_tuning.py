"""Hyper-parameter tuning (``feed.models.tuning``): the grid point with the best validation
metric wins, the validation slice is carved from the training part only (never a test row),
and both ``feed evaluate``'s baselines and the default model's sources report their choices."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from feed.data import Dataset, load
from feed.data.synth import SynthConfig, generate
from feed.evaluate import evaluate
from feed.evaluation.splits import Splitter, split, training_data
from feed.models.candidates import CandidateBlock
from feed.models.default import TrainConfig, make_blend
from feed.models.ranker import (
    LinearScores,
    RankerChoice,
    log_odds,
    make_ranker,
    preference,
    score_block,
    within_noise,
)
from feed.models.sources import EASE, ItemItem
from feed.models.tuning import (
    GRIDS,
    SOURCE_GRIDS,
    noise_choice,
    score_model,
    tune,
    twin_groups,
    user_scores,
    validation_slice,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("tune") / "small"
    generate(root, SynthConfig(n_users=150, n_posts=200, n_topics=4, weeks=6, seed=5))
    return load(root)


def _pairs(frame: object) -> set[tuple[str, str]]:
    return set(zip(frame["user_id"], frame["post_id"], strict=True))  # type: ignore[index]


@pytest.mark.parametrize("method", ["random", "user-time", "global-time"])
def test_validation_slice_never_holds_a_test_row(small: Dataset, method: str) -> None:
    part = split(small, 0.2, 0, method)
    val = validation_slice(part.train, Splitter(method), 0.2, 0)
    assert val is not None and val.part.method == method
    test = _pairs(part.test_likes)
    slice_ = _pairs(val.part.test_likes)
    fitted = _pairs(val.part.train.likes)
    assert test and slice_
    assert not test & slice_  # the slice's held-out rows are no test rows
    assert not test & fitted  # ... and neither is anything the grid is fitted on
    assert slice_ | fitted == _pairs(part.train.likes)  # the slice is carved from training
    bought = set(zip(part.test_purchases["user_id"], part.test_purchases["ts"], strict=True))
    seen = set(
        zip(val.part.train.purchases["user_id"], val.part.train.purchases["ts"], strict=True)
    )
    assert not bought & seen
    # the held-out truth of the slice is in the slice data's indices, for its own users only
    users = set(val.data.users.to_external(val.truth.users))
    assert users <= set(val.part.test_likes["user_id"]) | set(val.part.test_purchases["user_id"])


def test_tune_picks_the_point_with_the_best_validation_metric(small: Dataset) -> None:
    part = split(small, 0.2, 0, "random")
    val = validation_slice(part.train, Splitter("random"), 0.2, 0)
    assert val is not None
    twins = twin_groups(val.data)
    grid: list[dict[str, Any]] = [{"l2": 0.01}, {"l2": 30.0}, {"l2": 1e6}]
    tuned = tune(lambda p: EASE(l2=p["l2"]), grid, val, 10, twins)
    # every point scored as an independent fit scores it, and the best one chosen
    again = [score_model(EASE(l2=p["l2"]).fit(val.data), val, 10, twins) for p in grid]
    assert [s for _, s in tuned.scores] == pytest.approx(again)
    assert tuned.params == grid[int(np.argmax(again))]
    assert len(set(again)) > 1  # the grid matters on this data
    assert isinstance(tuned.model, EASE) and tuned.model.l2 == tuned.params["l2"]
    summary = tuned.summary()
    assert summary["params"] == tuned.params and len(summary["validation"]) == 3
    # ties go to the earlier point
    same = tune(lambda p: ItemItem(K=50), [{"K": 1}, {"K": 2}], val, 10, twins)
    assert same.params == {"K": 1}
    with pytest.raises(ValueError, match="at least one grid point"):
        tune(lambda p: EASE(l2=p["l2"]), [], val, 10)


def test_evaluate_reports_tuned_baselines(small: Dataset) -> None:
    rep = evaluate(
        small, 0.2, 10, models=["most-popular", "ease", "itemknn"], split_method="random"
    )
    info = rep.info
    assert info["baselines_tuned"] is True
    assert set(info["tuning"]) == {"ease", "itemknn"}  # most-popular has nothing to tune
    assert info["tuning"]["ease"]["params"] in list(GRIDS["ease"])
    assert info["tuning"]["itemknn"]["params"] in list(GRIDS["itemknn"])
    assert info["tuning_slice"]["split"] == "random"
    assert "baselines tuned" in rep.table() and "never on the test part" in rep.table()
    plain = evaluate(small, 0.2, 10, models=["ease"], split_method="random", tune_baselines=False)
    assert plain.info["baselines_tuned"] is False and "untuned" in plain.table()


def test_default_model_tunes_its_sources_on_validation(small: Dataset) -> None:
    part = split(small, 0.2, 0, "random")
    data = training_data(part)
    blend = make_blend(TrainConfig(split="random", tune=("ease", "als")))
    blend.fit(data)
    tuned = blend.summary()["tuned"]
    assert set(tuned) == {"ease", "als"}
    ease = tuned["ease"]
    assert ease["rule"] == "noise"
    # the configured point is tried first, then the grid's
    tried = [{"l2": v["l2"]} for v in ease["validation"]]
    assert tried == [{"l2": TrainConfig().ease_l2}, *SOURCE_GRIDS["ease"]]
    assert ease["params"] in tried
    scores = {v["l2"]: v["score"] for v in ease["validation"]}
    if ease["params"]["l2"] != TrainConfig().ease_l2:  # moved only for a clear gain
        gain = ease["gain_over_default"]
        assert gain["mean"] > gain["se"] and scores[ease["params"]["l2"]] == max(scores.values())
    # the final fits use the chosen values
    assert blend.sources_["ease"].get_params()["l2"] == ease["params"]["l2"]
    assert blend.sources_["als"].get_params()["factors"] == tuned["als"]["params"]["factors"]
    off = make_blend(TrainConfig(split="random", tune=())).fit(data)
    assert (
        off.summary()["tuned"] == {}
        and off.sources_["ease"].get_params()["l2"] == TrainConfig().ease_l2
    )


def test_noise_rule_keeps_the_default_unless_a_point_wins_by_more_than_the_noise() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 1.0, 400)
    noise = rng.normal(0.0, 0.2, 400)
    noise -= noise.mean()
    noisy = base + noise + 0.5 * noise.std(ddof=1) / np.sqrt(400)  # higher by half a SE
    gain = noisy - base
    assert gain.mean() > 0 and gain.mean() < gain.std(ddof=1) / np.sqrt(len(gain))
    assert noise_choice([base, noisy])[0] == 0  # best on the mean, but within the noise
    clear = base + 0.02 + rng.normal(0.0, 0.01, 400)
    best, (mean, se) = noise_choice([base, noisy, clear])
    assert best == 2 and mean > se > 0
    assert noise_choice([clear, base])[0] == 0  # the default is the best: kept
    worse = base - 0.05
    assert noise_choice([base, worse])[0] == 0
    # NaN users (the metric does not apply) are left out of the gain
    with_nan = np.append(clear, np.nan)
    assert noise_choice([np.append(base, 0.5), with_nan])[0] == 1


def test_tune_rules_over_several_slices(small: Dataset) -> None:
    """Over several slices the scores pool every slice's users; ``best`` takes the highest
    mean (the baselines' rule), ``noise`` the first point unless the best wins clearly; the
    chosen point is fitted on every slice."""
    part = split(small, 0.2, 0, "random")
    first = validation_slice(part.train, Splitter("random"), 0.2, 0)
    assert first is not None
    second = validation_slice(first.part.train, Splitter("random"), 0.2, 0)
    assert second is not None
    vals = [first, second]
    twins = [twin_groups(v.data) for v in vals]
    grid = [{"l2": 2000.0}, {"l2": 50.0}, {"l2": 300.0}]
    best = tune(lambda p: EASE(l2=p["l2"]), grid, vals, 10, twins, rule="best")
    per_point = [
        np.concatenate(
            [
                user_scores(EASE(l2=p["l2"]).fit(v.data), v, 10, t)
                for v, t in zip(vals, twins, strict=True)
            ]
        )
        for p in grid
    ]
    means = [float(np.nanmean(v)) for v in per_point]
    assert [s for _, s in best.scores] == pytest.approx(means)
    assert best.params == grid[int(np.argmax(means))] and best.rule == "best"
    assert len(best.fits) == 2 and all(m.l2 == best.params["l2"] for m in best.fits)
    noise = tune(lambda p: EASE(l2=p["l2"]), grid, vals, 10, twins, rule="noise")
    assert noise.params == grid[noise_choice(per_point)[0]]
    assert noise.summary()["rule"] == "noise" and "gain_over_default" in noise.summary()
    with pytest.raises(ValueError, match="rule"):
        tune(lambda p: EASE(l2=p["l2"]), grid, vals, 10, twins, rule="median")


def test_tree_and_linear_ranker_together_score_the_mean_log_odds() -> None:
    rng = np.random.default_rng(0)
    users, width, n_features = 6, 30, 4
    features = rng.normal(size=(users, width, n_features)).astype(np.float32)
    labels = (features[..., 0] + 0.5 * rng.normal(size=(users, width))) > 1.0
    items = np.tile(np.arange(width), (users, 1))
    items[0, -3:] = -1  # padding
    x, y = features[items >= 0], labels[items >= 0]
    linear = make_ranker({"model": "logistic", "C": 1.0}, 0).fit(x, y)
    trees = make_ranker(
        {"model": "hgb", "max_iter": 20, "max_leaf_nodes": 7, "min_samples_leaf": 5}, 0
    ).fit(x, y)
    choice = RankerChoice(
        "ranker:1+linear", estimator=trees, prefilter=LinearScores.of(linear), ensemble=True
    )
    choice.depth = 10
    block = CandidateBlock(5, np.arange(users), items, features, np.zeros((0, users, width)), items)
    got = score_block(choice, block, [], 5)
    kept = np.isfinite(got)
    assert (kept.sum(axis=1) == 10).all()  # the linear ranker's best 10 per user
    assert not kept[items < 0].any()
    rows = features[kept]
    want = 0.5 * (log_odds(trees.predict_proba(rows)[:, 1]) + linear.decision_function(rows))
    assert got[kept] == pytest.approx(want, abs=1e-4)
    # the linear ranker's best 10 are the ones kept
    lin = np.where(
        items >= 0,
        linear.decision_function(features.reshape(-1, n_features)).reshape(users, width),
        -np.inf,
    )
    assert (
        np.sort(np.argsort(-lin, axis=1)[:, :10], axis=1)
        == np.sort(np.argwhere(kept)[:, 1].reshape(users, 10), axis=1)
    ).all()


def test_options_within_the_noise_go_by_the_preference_and_a_clear_winner_serves_alone() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.0, 1.0, 600)
    wobble = rng.normal(0.0, 0.2, 600)
    wobble -= wobble.mean()
    se = wobble.std(ddof=1) / np.sqrt(600)
    near = base + wobble + 0.5 * se  # higher on the mean by half a standard error
    far = base - 0.05 + rng.normal(0.0, 0.01, 600)  # clearly worse
    scores = {"ranker:0+linear": base, "ranker:1": near, "fusion": far}
    within = within_noise(scores, "ranker:1")
    assert within == ["ranker:1", "ranker:0+linear"]
    assert min(within, key=preference) == "ranker:0+linear"  # the best by noise does not win
    # a clearly better option wins alone, whatever the preference
    clear = base + 0.03 + rng.normal(0.0, 0.01, 600)
    assert within_noise(scores | {"source:ease": clear}, "source:ease") == ["source:ease"]
    # NaN users (the metric does not apply) are left out of the difference
    nan = {n: np.append(v, np.nan) for n, v in scores.items()}
    assert within_noise(nan, "ranker:1") == ["ranker:1", "ranker:0+linear"]
    order = ["ranker:0+linear", "ranker:1+linear", "ranker:0", "ranker:1", "ranker:2"]
    assert sorted([*reversed(order), "source:als", "fusion"], key=preference) == [
        *order,
        "fusion",
        "source:als",
    ]


def test_default_model_records_the_options_within_the_noise(small: Dataset) -> None:
    data = training_data(split(small, 0.2, 0, "random"))
    blend = make_blend(TrainConfig(split="random")).fit(data)
    summary = blend.summary()
    near = summary["within_noise"]
    assert near and near[0] == summary["best"]  # the best by the mean, then the others
    assert summary["kind"] == min(near, key=preference)  # what was served
    assert all(summary["validation"][n] <= summary["validation"][near[0]] for n in near)
