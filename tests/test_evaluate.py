"""Offline evaluation: the split leaks nothing, metrics equal hand-computed values, the
default model beats popularity on generated data, and ``feed evaluate`` runs end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace
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
    assert part.method == "global-time" and "past before it" in part.reason
    train, cut = part.train, part.cut
    for table in (train.likes, train.purchases):
        assert (table["ts"] < cut).all()  # train ts < cut
    for table in (part.test_likes, part.test_purchases):
        assert (table["ts"] >= cut).all()  # cut <= test ts
    for table in (train.clicks, train.follows):
        assert not (table["ts"] >= cut).any()  # later clicks and follows are not training data
    assert len(train.posts) == len(small.posts)  # posts created later stay candidates
    assert (train.groups["created_at"] < cut).all() and len(train.groups) < len(small.groups)
    assert train.group_members["group_id"].isin(train.groups["group_id"]).all()
    untimed = split(replace(small, group_members=small.group_members.assign(ts=np.nan)), 0.2)
    members = untimed.train.group_members  # untimed memberships stay, but of later groups
    assert members["group_id"].isin(untimed.train.groups["group_id"]).all() and len(members)
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


def test_user_time_split_holds_out_each_users_newest(small: Dataset) -> None:
    part = split(small, test_frac=0.2, method="user-time")
    assert part.method == "user-time" and math.isnan(part.cut)
    held = pd.concat([part.test_likes, part.test_purchases])
    kept = pd.concat([part.train.likes, part.train.purchases])
    newest_kept = kept.groupby("user_id")["ts"].max()
    oldest_held = held.groupby("user_id")["ts"].min()
    both = oldest_held.index.intersection(newest_kept.index)
    assert len(both) > 0.8 * held["user_id"].nunique()
    assert (newest_kept[both] <= oldest_held[both]).all()  # every user cut in their own time
    events = pd.concat([small.likes["user_id"], small.purchases["user_id"]]).value_counts()
    taken = held["user_id"].value_counts().reindex(events.index, fill_value=0)
    assert (taken == np.floor(0.2 * events + 0.5).where(events >= 2, 0)).all()
    cut = oldest_held.to_dict()  # a user's later clicks and follows are not training data
    for table, who in ((part.train.clicks, "user_id"), (part.train.follows, "follower_id")):
        later = table["ts"].to_numpy() >= table[who].map(cut).to_numpy(float)
        assert not later.any()


def test_auto_split_follows_the_shape_of_the_data(small: Dataset) -> None:
    """Users active all along: one global cut. Users active in bursts, each at their own
    time (a global cut holds out mostly users with no past): each user's own newest rows.
    No timestamps: random."""
    assert split(small, 0.2).method == "global-time"
    users = sorted(set(small.likes["user_id"]))
    start = {u: 1_000_000.0 * i for i, u in enumerate(users)}  # each user's own burst
    likes = small.likes.copy()
    likes["ts"] = likes["user_id"].map(start) + likes.groupby("user_id").cumcount()
    bursty = Dataset(**{**small.__dict__, "likes": likes, "purchases": small.purchases[:0]})
    part = split(bursty, 0.2)
    assert part.method == "user-time" and "bursts" in part.reason
    untimed = Dataset(**{**small.__dict__, "likes": small.likes.assign(ts=np.nan)})
    assert split(untimed, 0.2).method == "random"
    with pytest.raises(ValueError, match="needs a ts"):
        split(untimed, 0.2, method="user-time")
    with pytest.raises(ValueError, match="auto or one of"):
        split(small, 0.2, method="sideways")
    # one timed like a user, each at its own time: nothing to hold out, and the error says
    # which protocol auto chose and why, not only the chosen one's complaint
    once = bursty.likes.drop_duplicates("user_id")
    single = Dataset(**{**bursty.__dict__, "likes": once})
    with pytest.raises(ValueError, match=r"no user has two .*\(--split auto chose user-time: "):
        split(single, 0.2)


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
    names = [r["model"] for r in plain["rows"]]
    assert names == ["most-popular", "als", "default", "default (served)"]
    served = report.row("default (served)")
    assert served["like_ndcg"] > popular["like_ndcg"]
    assert "category_diversity" in served and 0 < served["author_diversity"] <= 1
    assert "served_lift" in report.info and "served_lift_ci95" in report.info


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
    assert names[0] == "most-popular" and names[-2:] == ["default", "default (served)"]
    assert "ease" in names
    assert body["info"]["k"] == 5 and body["info"]["split"] == "global-time"
    assert "like-NDCG@5 *" in res.output and "split global-time" in res.output
    assert "too few to conclude" in res.output  # 150 users: fewer than 500 test users
    res = CliRunner().invoke(main, ["evaluate", str(small.path), "--split", "sideways"])
    assert res.exit_code == 2 and "sideways" in res.output


def test_two_reports_compare_user_by_user(report: EvalReport, small: Dataset) -> None:
    """Each row's per-user figures average to its table figure; two reports of the same split
    compare user by user (a row against itself: no lift, every user equal; two rows: their
    ratio, inside its interval); reports of another split are refused, naming the difference."""
    from feed.evaluate import NotComparable, compare

    plain = json.loads(json.dumps(report.to_dict()))
    per = plain["per_user"]
    assert per["metric"] == "like_ndcg" and len(per["users"]) == report.info["counts"]["test_users"]
    for row in report.rows:
        values = np.array([np.nan if v is None else v for v in per["values"][row["model"]]])
        assert np.nanmean(values) == pytest.approx(row["like_ndcg"], abs=1e-6)
    same = compare(plain, report, "default (served)")
    assert same["lift"] == 0 and same["lift_ci95"] == [0, 0]
    assert same["a_better"] == same["b_better"] == 0
    c = compare(report, plain, "most-popular", "default (served)")
    ratio = report.row("default (served)")["like_ndcg"] / report.row("most-popular")["like_ndcg"]
    assert c["lift"] == pytest.approx(ratio - 1, rel=1e-4)
    assert c["lift_ci95"][0] <= c["lift"] <= c["lift_ci95"][1] and c["b_better"] > c["a_better"]
    other = evaluate(small, test_frac=0.3, k=10, models=["most-popular"])
    with pytest.raises(NotComparable, match="differ in cut"):  # a later cut for a 30% test
        compare(report, other, "most-popular")
    with pytest.raises(NotComparable, match="no row 'ease'"):
        compare(report, plain, "ease")
    with pytest.raises(NotComparable, match="no per-user figures"):
        compare(report, {**plain, "per_user": None}, "als")


def test_evaluate_compare_cli(report: EvalReport, tmp_path: Path) -> None:
    a, b, bad = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "bad.json"
    a.write_text(json.dumps(report.to_dict()))
    b.write_text(json.dumps(report.to_dict()))
    bad.write_text("{not json")
    res = CliRunner().invoke(
        main, ["evaluate-compare", str(a), str(b), "--model", "als", "--model-b", "default"]
    )
    assert res.exit_code == 0, res.output
    lift = report.row("default")["like_ndcg"] / report.row("als")["like_ndcg"] - 1
    assert f"lift of the second: {lift:+.2%}" in res.output and "better for" in res.output
    res = CliRunner().invoke(main, ["evaluate-compare", str(a), str(bad)])
    assert res.exit_code == 1 and "bad.json is not a feed evaluate --json report" in res.output
    res = CliRunner().invoke(main, ["evaluate-compare", str(a), str(b), "--model", "nope"])
    assert res.exit_code == 1 and "no row 'nope'" in res.output


def test_evaluate_at_k_fits_once_and_cuts_the_lists(small: Dataset) -> None:
    from feed.evaluate import evaluate_at_k

    reports = evaluate_at_k(small, (3, 6), models=["als", "default"], split_method="random")
    fits = {k: {r["model"]: r["fit_s"] for r in rep.rows} for k, rep in reports.items()}
    assert fits[3] == fits[6]  # one fit per model, whatever k
    assert reports[3].info["split"] == reports[6].info["split"] == "random"
    for name in ("als", "default", "default (served)"):
        assert reports[6].row(name)["like_recall"] >= reports[3].row(name)["like_recall"]


def test_evaluate_cli_rejects_unknown_models(small: Dataset) -> None:
    res = CliRunner().invoke(main, ["evaluate", str(small.path), "--models", "nope"])
    assert res.exit_code == 1 and "unknown model" in res.output
