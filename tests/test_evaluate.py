"""Offline evaluation: the split leaks nothing, metrics equal hand-computed values, the
default model beats popularity on generated data, and ``feed evaluate`` runs end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from feed.cli import main
from feed.data import Dataset, load
from feed.data.synth import SynthConfig, generate
from feed.evaluate import EvalReport, evaluate
from feed.evaluation.metrics import (
    author_diversity,
    coverage,
    ndcg_at_k,
    purchase_recall_at_k,
    recall_at_k,
)
from feed.evaluation.splits import held_out, random_split, split, training_data


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("eval") / "small"
    generate(root, SynthConfig(n_users=150, n_posts=200, n_topics=4, weeks=6, seed=11))
    return load(root)


@pytest.fixture(scope="module")
def report(small: Dataset) -> EvalReport:
    return evaluate(small, test_frac=0.2, k=10, models=["most-popular", "als", "default"])


# --- splits --------------------------------------------------------------------------------
def test_time_split_has_no_leakage(small: Dataset) -> None:
    part = split(small, test_frac=0.2)
    assert part.method == "time"
    train, cut = part.train, part.cut
    for table in (train.likes, train.purchases):
        assert (table["ts"] < cut).all()  # train ts < cut
    for table in (part.test_likes, part.test_purchases):
        assert (table["ts"] >= cut).all()  # cut <= test ts
    for table in (train.clicks, train.follows):
        assert not (table["ts"] >= cut).any()  # later clicks and follows are not training data
    assert len(train.posts) == len(small.posts)  # posts created later stay candidates
    held = len(part.test_likes) + len(part.test_purchases)
    assert held == pytest.approx(0.2 * (len(small.likes) + len(small.purchases)), rel=0.05)
    assert len(train.likes) + len(part.test_likes) == len(small.likes)
    assert training_data(part).now == cut  # post ages are as of the cut


def test_random_split_without_timestamps(small: Dataset) -> None:
    untimed = Dataset(**{**small.__dict__, "likes": small.likes.assign(ts=np.nan)})
    part = split(untimed, test_frac=0.25, random_state=4)
    again = random_split(untimed, 0.25, random_state=4)
    assert part.method == "random" and math.isnan(part.cut)
    pd.testing.assert_frame_equal(part.test_likes, again.test_likes)
    events = pd.concat([untimed.likes["user_id"], untimed.purchases["user_id"]])
    held = pd.concat([part.test_likes["user_id"], part.test_purchases["user_id"]])
    sizes, taken = events.value_counts(), held.value_counts()
    expected = np.floor(0.25 * sizes + 0.5).where(sizes >= 2, 0)
    assert (taken.reindex(sizes.index, fill_value=0) == expected).all()
    train_pairs = set(zip(part.train.likes["user_id"], part.train.likes["post_id"], strict=True))
    test_pairs = set(zip(part.test_likes["user_id"], part.test_likes["post_id"], strict=True))
    assert not train_pairs & test_pairs


def test_held_out_targets_are_reachable(small: Dataset) -> None:
    part = split(small, test_frac=0.2)
    data = training_data(part)
    truth = held_out(part, data)
    seen = data.seen()[truth.users]
    assert truth.likes.multiply(seen).nnz == 0  # never a seen or own post
    assert truth.purchases.multiply(data.purchases[truth.users]).nnz == 0  # no repeat buys
    warm = np.diff(data.engagement.indptr) + np.diff(data.purchases.indptr) > 0
    assert warm[truth.users].all()
    counts = truth.counts
    assert counts["test_users"] == len(truth.users) > 0
    assert counts["cold_users_skipped"] >= 0


# --- metrics -------------------------------------------------------------------------------
def test_metrics_on_a_hand_made_example() -> None:
    items = np.array([[3, 1, 2], [0, 4, -1]])
    liked = sp.csr_matrix(
        np.array(
            [
                [0, 1, 0, 0, 0, 1],  # user 0: posts 1 and 5
                [0, 0, 0, 0, 0, 0],
            ],
            dtype=np.float32,
        )
    )  # user 1: none
    recall = recall_at_k(items, liked)
    assert recall[0] == 0.5 and math.isnan(recall[1])
    # user 0: one hit at rank 2 -> DCG 1/log2(3); ideal: two hits -> 1 + 1/log2(3)
    dcg, ideal = 1 / math.log2(3), 1 + 1 / math.log2(3)
    assert ndcg_at_k(items, liked)[0] == pytest.approx(dcg / ideal)
    # post -> products: 0->{0}, 1->{1}, 2->{0, 2}, 3->{}, 4->{3}
    links = sp.csr_matrix(
        np.array(
            [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float32
        )
    )
    bought = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 0, 1, 1]], dtype=np.float32))
    # user 0 bought 0 and 3; post 2 links 0 -> 1/2. user 1 bought 2 and 3; post 4 links 3 -> 1/2
    assert purchase_recall_at_k(items, bought, links).tolist() == [0.5, 0.5]
    assert coverage(items, 10) == 0.5  # posts 0..4 of 10
    authors = np.array([7, 7, 8, 9, 9])  # post -> author
    assert author_diversity(items, authors) == pytest.approx((3 / 3 + 2 / 2) / 2)


# --- the comparison ------------------------------------------------------------------------
def test_default_model_beats_popularity(report: EvalReport) -> None:
    default, popular = report.row("default"), report.row("most-popular")
    assert report.info["primary_metric"] == "like_ndcg"
    assert default["like_ndcg"] > popular["like_ndcg"]
    assert default["like_recall"] > popular["like_recall"]
    table = report.table()
    assert "| default |" in table and "cold test users skipped" in table
    plain = json.loads(json.dumps(report.to_dict()))
    assert [r["model"] for r in plain["rows"]] == ["most-popular", "als", "default"]


def test_evaluate_cli_writes_json(small: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    res = CliRunner().invoke(
        main,
        ["evaluate", str(small.path), "--k", "5", "--no-progress", "--json", str(out)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    body = json.loads(out.read_text())
    names = [r["model"] for r in body["rows"]]
    assert names[0] == "most-popular" and names[-1] == "default" and "ease" in names
    assert body["info"]["k"] == 5 and body["info"]["split"] == "time"
    assert "like-NDCG@5 *" in res.output


def test_evaluate_cli_rejects_unknown_models(small: Dataset) -> None:
    res = CliRunner().invoke(main, ["evaluate", str(small.path), "--models", "nope"])
    assert res.exit_code == 1 and "unknown model" in res.output
