"""The ranker's budget of users (``TrainConfig.ranked_users``): the most active users get the
learned ranker's candidates, the others the best single source's list, in one artifact that
publishes and serves like any other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feed import artifacts
from feed.contract import REASON_CODE
from feed.data import load
from feed.features.matrices import build
from feed.models.candidates import is_global
from feed.train import TrainConfig, cohort_candidates, cohort_source, split_by_activity, train

BUDGET = 120


@pytest.fixture(scope="module")
def budgeted(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("budgeted")
    cfg = TrainConfig(factors=16, iterations=8, n_candidates=60, ranked_users=BUDGET)
    return train(dataset_dir, out, cfg)


def test_the_most_recently_active_users_are_ranked_first(dataset_dir: Path) -> None:
    ds = load(dataset_dir)
    data = build(ds)
    users = np.arange(data.n_users)
    ranked, rest = split_by_activity(data, users, 50)
    assert len(ranked) == 50 and len(rest) == data.n_users - 50
    assert np.array_equal(np.sort(np.concatenate([ranked, rest])), users)
    newest = pd.concat([ds.likes[["user_id", "ts"]], ds.purchases[["user_id", "ts"]]])
    newest = newest.groupby("user_id")["ts"].max()
    last = newest.reindex(data.users.external).fillna(-np.inf).to_numpy()
    assert last[ranked].min() >= last[rest].max()  # nobody left out is more recent
    assert split_by_activity(data, users, 0)[0] is users  # 0: no budget
    assert len(split_by_activity(data, users[:10], 50)[1]) == 0


def test_without_timestamps_the_users_with_most_interactions_are_ranked(
    dataset_dir: Path, tmp_path: Path
) -> None:
    ds = load(dataset_dir)
    for name in ("likes", "purchases"):
        t = getattr(ds, name).copy()
        t["ts"] = np.nan
        setattr(ds, name, t)
    data = build(ds)
    users = np.arange(data.n_users)
    ranked, rest = split_by_activity(data, users, 60)
    count = np.diff(data.engagement.indptr) + np.diff(data.follows.indptr)
    assert count[ranked].min() >= count[rest].max()


def test_a_budgeted_artifact_ranks_the_active_users_and_lists_the_rest_by_one_source(
    budgeted: Path, dataset_dir: Path
) -> None:
    art = artifacts.read(budgeted)
    counts = art.manifest["counts"]
    assert counts["ranked_users"] == BUDGET and counts["cohort_users"] > 0
    assert counts["ranked_users"] + counts["cohort_users"] == counts["users"]
    cand = art.arrays("candidates")
    data = build(load(dataset_dir))
    idx = data.users.to_internal(cand["users"].astype(str))
    assert np.all(np.diff(idx) > 0)  # ascending user indices, as without a budget
    ranked, rest = split_by_activity(data, idx, BUDGET)
    reasons = cand["reasons"]
    # the rest: the cohort source's own reason only; the ranked: several sources' reasons
    pos = {u: i for i, u in enumerate(idx.tolist())}
    rest_reasons = {int(x) for u in rest for x in reasons[pos[u]][cand["items"][pos[u]] >= 0]}
    ranked_reasons = {int(x) for u in ranked for x in reasons[pos[u]][cand["items"][pos[u]] >= 0]}
    assert len(rest_reasons) == 1 and len(ranked_reasons) >= 3, (rest_reasons, ranked_reasons)
    seen = data.seen()
    for u in rest[:50]:
        row = cand["items"][pos[u]]
        row = row[row >= 0]
        assert len(row) > 0 and not set(row.tolist()) & set(seen[u].indices.tolist())


def test_the_cohort_lists_are_the_best_single_sources_ranking(dataset_dir: Path) -> None:
    from dataclasses import replace

    from feed.evaluation.splits import choose_method
    from feed.models.default import make_blend

    ds = load(dataset_dir)
    data = build(ds)
    cfg = TrainConfig(factors=16, iterations=8, tune=())
    cfg = replace(cfg, split=choose_method(ds, cfg.val_frac)[0])
    blend = make_blend(cfg).fit(data)
    name = cohort_source(blend)
    scores = blend.choice_.validation
    personal = [n for n in blend.names_ if not is_global(blend.sources_[n])]
    assert name in personal
    assert scores[f"source:{name}"] == max(scores.get(f"source:{n}", -1.0) for n in personal)
    users = np.arange(0, data.n_users, 7)
    items, got, why = cohort_candidates(blend, data, users, 30)
    want, _ = blend.sources_[name].recommend(users, 30, data.seen())
    assert np.array_equal(items, want)
    assert set(np.unique(why[items >= 0]).tolist()) == {REASON_CODE[blend.sources_[name].reason]}
    assert np.all(np.isfinite(got[items >= 0])) and np.all(got[items < 0] == -np.inf)


def test_feed_train_takes_the_budget_and_refuses_a_negative_one(runner: Any) -> None:
    from feed.cli import main

    res = runner.invoke(main, ["train", "nowhere", "--ranked-users", "-1"])
    assert res.exit_code == 2 and "--ranked-users" in res.output
    # the help states TrainConfig's default (written out: the CLI does not import training)
    res = runner.invoke(main, ["train", "--help"], terminal_width=400)
    assert f"[default: {TrainConfig().ranked_users}]" in " ".join(res.output.split())


def test_the_manifest_times_each_stage_and_records_the_peak_memory_by_its_end(
    budgeted: Path,
) -> None:
    mf = artifacts.read(budgeted).manifest
    stages = [k.removesuffix("_s") for k in mf["timings"]]
    assert stages[:3] == ["load", "features", "fit"] and "candidates_ranked" in stages
    assert all(v >= 0 for v in mf["timings"].values())
    # the sub-stage (the ranked users) is part of the candidate stage, not added to it
    assert mf["timings"]["candidates_ranked_s"] <= mf["timings"]["candidates_s"]
    rss = mf["peak_rss_mb"]
    assert list(rss) == stages  # one high-water mark per stage, in order
    marks = list(rss.values())
    assert marks[0] > 50 and marks == sorted(marks)  # a Python process with numpy; never falls
