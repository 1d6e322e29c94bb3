"""Tests of feed.data.synth: the synthetic dataset honours shared/DATA_FORMAT.md and plants
structure.

The files are read with plain pandas (every cell a string), not with feed.data, so that these
tests check the format contract itself.
"""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import feed.data.synth
from feed.data.synth import SynthConfig, generate

CONFIG = SynthConfig(n_users=400, n_posts=500, n_topics=12, likes_per_user=15.0, seed=3)

# Columns this generator writes, in DATA_FORMAT.md's order (optional ones included).
HEADERS = {
    "posts": ["post_id", "author_id", "created_at", "text", "product_ids", "title", "tags"],
    "products": ["product_id", "title", "category", "brand", "price", "in_stock", "merchant_id"],
    "likes": ["user_id", "post_id", "ts"],
    "purchases": ["user_id", "product_id", "ts", "post_id", "quantity"],
    "follows": ["follower_id", "followee_id", "ts"],
    "clicks": ["user_id", "post_id", "ts"],
    "shares": ["user_id", "post_id", "receiver_id", "ts", "channel"],
    "groups": [
        *("group_id", "product_id", "initiator_id", "created_at", "status", "size"),
        *("expires_at", "price"),
    ],
    "group_members": ["group_id", "user_id", "ts"],
}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
TS_COLUMNS = {"posts": "created_at", "likes": "ts", "purchases": "ts", "follows": "ts"}


def read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / f"{name}.csv", dtype=str, keep_default_na=False)


def seconds(column: pd.Series) -> np.ndarray:
    """Unix seconds of ISO-8601 cells (whatever resolution pandas parses them to)."""
    elapsed = pd.to_datetime(column, utc=True) - pd.Timestamp(0, tz="UTC")
    return (elapsed // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth")
    generate(path, CONFIG)
    return path


@pytest.fixture(scope="module")
def tables(out: Path) -> dict[str, pd.DataFrame]:
    return {name: read(out, name) for name in HEADERS}


@pytest.fixture(scope="module")
def truth(out: Path) -> dict:
    return json.loads((out / "synth_truth.json").read_text(encoding="utf-8"))


def test_files_have_the_contract_headers(out: Path) -> None:
    for name, columns in HEADERS.items():
        with open(out / f"{name}.csv", encoding="utf-8", newline="") as f:
            assert f.readline().rstrip("\n") == ",".join(columns), name
    assert not (out / "impressions.csv").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.csv" for name in HEADERS] + ["synth_truth.json"]
    )


def test_summary_counts_rows_per_file(tmp_path: Path, tables: dict) -> None:
    counts = generate(tmp_path, CONFIG)
    assert counts == {f"{name}.csv": len(frame) for name, frame in tables.items()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, out: Path) -> None:
    generate(tmp_path / "again", CONFIG)
    for path in out.iterdir():
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name
    other = SynthConfig(**{**CONFIG.__dict__, "seed": 4})
    generate(tmp_path / "other", other)
    for name in ("posts", "likes", "follows"):
        assert (tmp_path / "other" / f"{name}.csv").read_bytes() != (
            out / f"{name}.csv"
        ).read_bytes()


def test_counts_roughly_match_the_config(tables: dict) -> None:
    n_likes = len(tables["likes"])
    assert len(tables["posts"]) == CONFIG.n_posts
    assert len(tables["products"]) == CONFIG.product_count == max(50, CONFIG.n_posts // 3)
    assert 0.8 < n_likes / (CONFIG.n_users * CONFIG.likes_per_user) < 1.05
    assert 0.75 < len(tables["purchases"]) / (CONFIG.purchase_rate * n_likes) < 1.1
    assert 0.75 < len(tables["follows"]) / (CONFIG.n_users * CONFIG.follows_per_user) < 1.1
    assert len(tables["clicks"]) > 0.9 * n_likes
    per_user = tables["likes"].groupby("user_id").size()
    assert per_user.max() > 5 * per_user.median()  # heavy-tailed activity


def test_ids_timestamps_and_cells(tables: dict) -> None:
    assert tables["posts"]["post_id"].str.fullmatch(r"p\d+").all()
    assert tables["posts"]["author_id"].str.fullmatch(r"u\d+").all()
    assert tables["products"]["product_id"].str.fullmatch(r"sku-\d+").all()
    start = seconds(pd.Series([CONFIG.start]))[0]
    assert start == 1788220800  # 2026-09-01T00:00:00Z
    for name, column in TS_COLUMNS.items():
        ts = tables[name][column]
        assert ts.str.fullmatch(ISO).all(), name
        assert start <= seconds(ts).min() and seconds(ts).max() < start + CONFIG.weeks * 7 * 86400
    products = tables["products"]
    assert set(products["in_stock"]) == {"true", "false"}
    assert 0.85 < (products["in_stock"] == "true").mean() < 0.99
    assert products["price"].str.fullmatch(r"\d+\.\d\d").all()
    posts = tables["posts"]
    assert posts["text"].str.contains(r"[\u4e00-\u9fff]").mean() > 0.8
    assert posts["text"].str.contains(r"[a-z]").mean() > 0.5
    n_links = posts["product_ids"].map(lambda s: len(s.split("|")) if s else 0)
    assert n_links.max() <= 3 and 0.05 < (n_links == 0).mean() < 0.3


def test_likes_are_unique_known_and_after_the_post(tables: dict) -> None:
    likes, posts = tables["likes"], tables["posts"].set_index("post_id")
    assert not likes.duplicated(["user_id", "post_id"]).any()
    assert likes["post_id"].isin(posts.index).all()
    assert tables["clicks"]["post_id"].isin(posts.index).all()
    created = seconds(posts.loc[likes["post_id"], "created_at"])
    assert (seconds(likes["ts"]) >= created).all()
    assert (likes["user_id"].to_numpy() != posts.loc[likes["post_id"], "author_id"]).all()


def test_links_and_purchases_reference_what_exists(tables: dict) -> None:
    posts, buys = tables["posts"], tables["purchases"]
    skus = set(tables["products"]["product_id"])
    links = {
        p: set(s.split("|")) - {""}
        for p, s in zip(posts["post_id"], posts["product_ids"], strict=True)
    }
    assert set().union(*links.values()) <= skus
    assert buys["product_id"].isin(skus).all()
    through = buys[buys["post_id"] != ""]
    assert 0.6 < len(through) / len(buys) < 0.95
    for product, post in zip(through["product_id"], through["post_id"], strict=True):
        assert product in links[post]
    liked = tables["likes"].set_index(["user_id", "post_id"])["ts"]
    like_ts = seconds(liked.loc[list(zip(through["user_id"], through["post_id"], strict=True))])
    assert (seconds(through["ts"]) > like_ts).all()


def test_likes_concentrate_on_planted_topics(tables: dict, truth: dict) -> None:
    likes, topics = tables["likes"], truth["topics"]
    post_topic = likes["post_id"].map(truth["post_topic"])
    top2 = likes["user_id"].map(truth["user_topics"])
    share = np.mean([t in tops for t, tops in zip(post_topic, top2, strict=True)])
    assert share > 3 * 2 / len(topics)
    posts = tables["posts"]
    named = posts["post_id"].map(truth["post_topic"]).map(topics.__getitem__)
    assert (posts["tags"].str.split("|").str[0] == named).all()


def test_popularity_is_a_real_but_partial_signal(tables: dict) -> None:
    per_post = tables["likes"]["post_id"].value_counts()
    top_tenth = per_post.iloc[: CONFIG.n_posts // 10].sum() / per_post.sum()
    assert 0.2 < top_tenth < 0.7


def test_parquet_has_the_same_tables(tmp_path: Path, tables: dict) -> None:
    generate(tmp_path, CONFIG)  # a stale CSV dataset is replaced, not mixed in
    counts = generate(tmp_path, CONFIG, fmt="parquet")
    assert not list(tmp_path.glob("*.csv"))
    for name, columns in HEADERS.items():
        frame = pd.read_parquet(tmp_path / f"{name}.parquet")
        assert list(frame.columns) == columns and len(frame) == counts[f"{name}.parquet"]
    for name in ("posts", "likes", "follows", "clicks"):
        frame = pd.read_parquet(tmp_path / f"{name}.parquet").astype(object)
        pd.testing.assert_frame_equal(frame, tables[name].astype(object), check_dtype=False)
    products = pd.read_parquet(tmp_path / "products.parquet")
    assert products["in_stock"].dtype == bool
    assert products["price"].map("{:.2f}".format).tolist() == tables["products"]["price"].tolist()


def test_more_topics_than_built_in(tmp_path: Path) -> None:
    generate(tmp_path, SynthConfig(n_users=60, n_posts=80, n_topics=15, seed=1))
    truth = json.loads((tmp_path / "synth_truth.json").read_text(encoding="utf-8"))
    assert len(truth["topics"]) == len(set(truth["topics"])) == 15
    assert set(read(tmp_path, "products")["category"]) == set(truth["topics"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "json"}, "fmt"),
        ({"config": SynthConfig(n_users=0)}, "n_users"),
        ({"config": SynthConfig(purchase_rate=-1.0)}, "purchase_rate"),
        ({"config": SynthConfig(start="yesterday")}, "start"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path, **kwargs)


def test_docstring_examples_run() -> None:
    assert doctest.testmod(feed.data.synth).failed == 0
