"""Group-buying (拼購) data: the generator's shares, groups, members and merchants validate and
carry their planted structure; training counts group purchases once, intents weaker, and turns
co-membership and shares into social ties, so data without follows still has Social candidates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from feed.cli import main
from feed.data import load
from feed.data.synth import SynthConfig, generate
from feed.features.matrices import EngagementWeights, build

CONFIG = SynthConfig(n_users=400, n_posts=500, n_topics=6, seed=5)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth_groups")
    generate(path, CONFIG)
    return path


def read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / f"{name}.csv", dtype=str, keep_default_na=False)


def friends(out: Path) -> set[tuple[str, str]]:
    truth = json.loads((out / "synth_truth.json").read_text(encoding="utf-8"))
    pairs = {(a, b) for a, b in truth["friendships"]}
    return pairs | {(b, a) for a, b in pairs}


def test_validates(out: Path) -> None:
    res = CliRunner().invoke(main, ["validate", str(out)])
    assert res.exit_code == 0, res.output
    assert "0 error(s), 0 warning(s)" in res.output
    ds = load(out)
    assert len(ds.groups) and len(ds.group_members) and len(ds.shares)


def test_groups_are_consistent(out: Path) -> None:
    groups, members = read(out, "groups"), read(out, "group_members")
    products = read(out, "products").set_index("product_id")
    assert set(groups["status"]) == {"succeeded", "failed", "open"}
    size = groups["size"].astype(int)
    assert size.between(2, 5).all()
    joined = members.groupby("group_id").size().reindex(groups["group_id"], fill_value=0)
    full = joined.to_numpy() == size.to_numpy() - 1
    assert (full == (groups["status"] == "succeeded").to_numpy()).all()
    assert (joined.to_numpy() <= size.to_numpy() - 1).all()
    assert not members.duplicated(["group_id", "user_id"]).any()
    by_group = groups.set_index("group_id")
    assert (
        members["user_id"].to_numpy() != by_group.loc[members["group_id"], "initiator_id"]
    ).all()
    created = pd.to_datetime(by_group.loc[members["group_id"], "created_at"]).to_numpy()
    expires = pd.to_datetime(by_group.loc[members["group_id"], "expires_at"]).to_numpy()
    ts = pd.to_datetime(members["ts"]).to_numpy()
    assert ((ts >= created) & (ts < expires)).all()
    price = groups["price"].astype(float).to_numpy()
    assert (price < products.loc[groups["product_id"], "price"].astype(float).to_numpy()).all()


def test_friends_join_each_others_groups(out: Path) -> None:
    groups, members = read(out, "groups"), read(out, "group_members")
    pairs = members.merge(groups[["group_id", "initiator_id"]], on="group_id")
    known = friends(out)
    share = np.mean([p in known for p in zip(pairs["initiator_id"], pairs["user_id"], strict=True)])
    chance = len(known) / CONFIG.n_users**2
    assert share > 0.5 and share > 50 * chance


def test_some_products_succeed_far_more(out: Path) -> None:
    groups = read(out, "groups")
    truth = json.loads((out / "synth_truth.json").read_text(encoding="utf-8"))
    appeal = groups["product_id"].map(truth["group_appeal"])
    lo, hi = appeal.quantile([0.25, 0.75])
    ok = groups["status"] == "succeeded"
    assert ok[appeal >= hi].mean() > 2 * ok[appeal <= lo].mean()


def test_shares_go_mostly_to_friends(out: Path) -> None:
    shares = read(out, "shares")
    to_friend = shares[shares["receiver_id"] != ""]
    assert 0.6 < len(to_friend) / len(shares) < 0.9
    known = friends(out)
    pairs = zip(to_friend["user_id"], to_friend["receiver_id"], strict=True)
    assert np.mean([p in known for p in pairs]) > 0.99
    liked = set(zip(*[read(out, "likes")[k] for k in ("user_id", "post_id")], strict=True))
    assert all(p in liked for p in zip(shares["user_id"], shares["post_id"], strict=True))
    assert set(shares["channel"]) == {"chat", "qq", "moments", "weibo"}


def test_merchants_are_few_and_skewed(out: Path) -> None:
    per_merchant = read(out, "products")["merchant_id"].value_counts()
    assert 3 <= len(per_merchant) <= 40
    assert per_merchant.iloc[0] > 3 * per_merchant.median()


def test_social_tables_do_not_change_the_others(tmp_path: Path, out: Path) -> None:
    generate(tmp_path, SynthConfig(**{**CONFIG.__dict__, "group_rate": 0.0, "share_rate": 0.0}))
    for name in ("posts", "likes", "purchases", "follows", "clicks"):
        assert (tmp_path / f"{name}.csv").read_bytes() == (out / f"{name}.csv").read_bytes()
    assert len(read(tmp_path, "groups")) == len(read(tmp_path, "shares")) == 0


# --- training ---------------------------------------------------------------------------------
def _tiny(root: Path, groups: str, members: str, purchases: str = "") -> Path:
    root.mkdir()
    (root / "posts.csv").write_text(
        "post_id,author_id,created_at,text,product_ids\np1,a1,2026-01-01,x,x1\np2,a2,2026-01-01,y,x2\n"
    )
    (root / "likes.csv").write_text("user_id,post_id\nu1,p1\n")
    (root / "purchases.csv").write_text("user_id,product_id\n" + purchases)
    (root / "groups.csv").write_text("group_id,product_id,initiator_id,status,size\n" + groups)
    (root / "group_members.csv").write_text("group_id,user_id\n" + members)
    return root


def test_group_purchases_count_once_and_intents_weaker(tmp_path: Path) -> None:
    root = _tiny(
        tmp_path / "d",
        groups="g1,x1,u1,succeeded,2\ng2,x2,u2,failed,3\ng3,x2,a1,,2\ng4,x1,u1,succeeded,2\n",
        members="g1,u3\ng2,u4\ng3,u5\ng4,u3\n",
        purchases="u1,x1\n",
    )
    data = build(load(root))
    bought = data.purchases.toarray()

    def w(user: str, product: str) -> float:
        return float(bought[data.users.get(user), data.products.get(product)])

    assert w("u1", "x1") == 1.0  # in purchases.csv and initiator of two succeeded groups: once
    assert w("u3", "x1") == 1.0  # member of two succeeded groups of x1: one purchase
    assert w("u2", "x2") == w("u4", "x2") == pytest.approx(EngagementWeights().group_intent)
    assert w("a1", "x2") == w("u5", "x2") == 1.0  # no status, full: succeeded
    ties = data.follows.toarray()
    tie = EngagementWeights().co_member_tie
    u1, u3 = data.users.get("u1"), data.users.get("u3")
    assert ties[u1, u3] == ties[u3, u1] == pytest.approx(min(2 * tie, EngagementWeights().tie_max))
    assert ties[data.users.get("u2"), data.users.get("u4")] == pytest.approx(tie)


def test_follows_outweigh_ties(tmp_path: Path) -> None:
    root = _tiny(tmp_path / "d", groups="g1,x1,u1,succeeded,2\n", members="g1,a1\n")
    (root / "follows.csv").write_text("follower_id,followee_id\nu1,a1\n")
    (root / "shares.csv").write_text("user_id,post_id,receiver_id\na2,p2,u1\na2,p2,\n")
    data = build(load(root))
    f = data.follows.toarray()
    u1, a1, a2 = (data.users.get(x) for x in ("u1", "a1", "a2"))
    w = EngagementWeights()
    assert f[u1, a1] == 1.0 and f[a1, u1] == pytest.approx(w.co_member_tie)
    assert f[u1, a2] == f[a2, u1] == pytest.approx(w.share_tie)


def test_train_without_follows_has_social_candidates(tmp_path: Path, out: Path) -> None:
    from feed.artifacts import read as read_artifact
    from feed.contract import REASON_CODE
    from feed.models.sources import Social
    from feed.train import TrainConfig, train

    data_dir = tmp_path / "nofollows"
    generate(data_dir, CONFIG)
    (data_dir / "follows.csv").unlink()
    ds = load(data_dir)
    assert len(ds.follows) == 0
    data = build(ds)
    assert data.follows.nnz > 0  # ties from groups and shares
    social = Social().fit(data)
    users = np.flatnonzero(np.diff(data.follows.indptr) > 0)[:50]
    items, _ = social.recommend(users, n=10)
    assert (items >= 0).sum() > len(users)  # posts of friends (group co-members, sharers)

    path = train(data_dir, tmp_path / "art", TrainConfig(factors=8, iterations=4, n_candidates=50))
    reasons = read_artifact(path).arrays("candidates")["reasons"]
    assert (np.asarray(reasons) == REASON_CODE["followed_author"]).any()
