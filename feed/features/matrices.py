"""Interaction matrices and per-post metadata, built once from a :class:`feed.data.Dataset`.

Every model is fitted on a :class:`TrainingData`: id maps for users, posts and products, the
user x post engagement matrix (likes, clicks and purchases spread to the posts that link the
bought product), the user x product purchase matrix, the follow graph, and post metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feed.data import Dataset
from feed.features.ids import IdMap

SECONDS_PER_DAY = 86_400.0
RECENT_SHARE = 0.1  # the trending half-life is the time span of this newest share of events


@dataclass(frozen=True)
class EngagementWeights:
    """How much each kind of interaction counts in the user x post engagement matrix."""

    like: float = 1.0
    click: float = 0.25
    purchase_attributed: float = 2.0  # the post a purchase came through
    purchase_spread: float = 1.0  # split over every post linking a bought product
    half_life_days: float | None = None  # optional time decay relative to the newest event


@dataclass
class TrainingData:
    """Everything the models fit on, in internal indices."""

    users: IdMap
    posts: IdMap
    products: IdMap
    post_author: np.ndarray  # int64 user index of each post's author
    post_created: np.ndarray  # float64 unix seconds (NaN unknown)
    post_products: sp.csr_matrix  # posts x products, 1 where a post links a product
    post_category: np.ndarray  # str: category of the first linked product ("" none)
    engagement: sp.csr_matrix  # users x posts, float32 weights
    likes: sp.csr_matrix  # users x posts, float32 like weights only
    purchases: sp.csr_matrix  # users x products, float32 quantities
    follows: sp.csr_matrix  # users x users, 1 where row follows column
    post_text: list[str]  # text + title + tags + linked product titles and categories
    now: float  # newest timestamp in the data (the training "now"), NaN when none
    product_titles: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    product_categories: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    #: The tables this was built from, for models that carve validation slices out of them or
    #: re-weight events by time (:func:`decayed`); None when built some other way.
    source: Dataset | None = field(default=None, repr=False)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_posts(self) -> int:
        return len(self.posts)

    def own_posts(self) -> sp.csr_matrix:
        """users x posts, 1 where the user wrote the post."""
        n = self.n_posts
        return sp.csr_matrix(
            (np.ones(n, dtype=np.float32), (self.post_author, np.arange(n))),
            shape=(self.n_users, n),
        )

    def seen(self) -> sp.csr_matrix:
        """users x posts, nonzero where a user engaged with or wrote a post (never recommended)."""
        m = (self.engagement + self.own_posts()).tocsr()
        m.data[:] = 1.0
        return m


def _user_ids(ds: Dataset) -> IdMap:
    return IdMap.from_values(
        ds.likes["user_id"],
        ds.purchases["user_id"],
        ds.clicks["user_id"],
        ds.impressions["user_id"],
        ds.follows["follower_id"],
        ds.follows["followee_id"],
        ds.posts["author_id"],
    )


def _product_ids(ds: Dataset) -> IdMap:
    linked = (p for ids in ds.posts["product_ids"] for p in ids)
    return IdMap.from_values(ds.products["product_id"], linked, ds.purchases["product_id"])


def _coo(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    m = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    return m


def _decay(ts: pd.Series, now: float, half_life_days: float | None) -> np.ndarray:
    if half_life_days is None or not np.isfinite(now):
        return np.ones(len(ts))
    age_days = (now - ts.to_numpy(dtype=np.float64)) / SECONDS_PER_DAY
    return np.where(np.isfinite(age_days), 0.5 ** (np.maximum(age_days, 0) / half_life_days), 1.0)


def _newest(ds: Dataset) -> float:
    stamps = [t["ts"].max() for t in (ds.likes, ds.purchases, ds.clicks) if len(t)]
    stamps.append(ds.posts["created_at"].max())
    finite = [s for s in stamps if s == s]
    return float(max(finite)) if finite else float("nan")


def build(ds: Dataset, weights: EngagementWeights | None = None) -> TrainingData:
    """Build the matrices and metadata of a dataset.

    Parameters
    ----------
    ds : Dataset
        A validated dataset (:func:`feed.data.load`).
    weights : EngagementWeights, optional
        Interaction weights and optional time decay.
    """
    w = weights or EngagementWeights()
    users, products = _user_ids(ds), _product_ids(ds)
    posts = IdMap(ds.posts["post_id"])
    nu, npo, npr = len(users), len(posts), len(products)
    now = _newest(ds)

    lengths = ds.posts["product_ids"].map(len).to_numpy()
    flat = [p for ids in ds.posts["product_ids"] for p in ids]
    post_products = _coo(
        np.repeat(np.arange(npo), lengths),
        products.to_internal(flat),
        np.ones(len(flat)),
        (npo, npr),
    )
    post_products.data[:] = 1.0

    lk = ds.likes
    likes = _coo(
        users.to_internal(lk["user_id"]),
        posts.to_internal(lk["post_id"]),
        lk["weight"].to_numpy() * _decay(lk["ts"], now, w.half_life_days),
        (nu, npo),
    )
    ck = ds.clicks
    clicks = _coo(
        users.to_internal(ck["user_id"]),
        posts.to_internal(ck["post_id"]),
        _decay(ck["ts"], now, w.half_life_days),
        (nu, npo),
    )
    pu = ds.purchases
    pu_users = users.to_internal(pu["user_id"])
    pu_prod = products.to_internal(pu["product_id"])
    pu_w = pu["quantity"].fillna(1.0).to_numpy() * _decay(pu["ts"], now, w.half_life_days)
    purchases = _coo(pu_users, pu_prod, pu_w, (nu, npr))

    engagement = w.like * likes + w.click * clicks
    # purchases spread to every post linking the bought product, split evenly
    links_per_product = np.asarray(post_products.sum(axis=0)).ravel()
    spread = purchases @ sp.diags(1.0 / np.maximum(links_per_product, 1.0)) @ post_products.T
    engagement = engagement + w.purchase_spread * spread
    has_post = pu["post_id"].to_numpy() != ""
    if has_post.any():
        attributed = _coo(
            pu_users[has_post],
            posts.to_internal(pu["post_id"][has_post]),
            pu_w[has_post],
            (nu, npo),
        )
        engagement = engagement + w.purchase_attributed * attributed
    engagement = sp.csr_matrix(engagement, dtype=np.float32)
    engagement.eliminate_zeros()

    fo = ds.follows
    follows = _coo(
        users.to_internal(fo["follower_id"]),
        users.to_internal(fo["followee_id"]),
        np.ones(len(fo)),
        (nu, nu),
    )
    follows.data[:] = 1.0

    prod_title = np.array([""] * npr, dtype=object)
    prod_cat = np.array([""] * npr, dtype=object)
    if len(ds.products):
        idx = products.to_internal(ds.products["product_id"])
        prod_title[idx] = ds.products["title"].to_numpy()
        prod_cat[idx] = ds.products["category"].to_numpy()
    first = [ids[0] if ids else "" for ids in ds.posts["product_ids"]]
    post_category = np.array([prod_cat[products.get(p)] if p else "" for p in first], dtype=object)

    return TrainingData(
        users=users,
        posts=posts,
        products=products,
        post_author=users.to_internal(ds.posts["author_id"]),
        post_created=ds.posts["created_at"].to_numpy(dtype=np.float64),
        post_products=post_products,
        post_category=post_category.astype(str),
        engagement=engagement,
        likes=likes,
        purchases=purchases,
        follows=follows,
        post_text=_post_documents(ds, post_products, prod_title, prod_cat),
        now=now,
        product_titles=prod_title.astype(str),
        product_categories=prod_cat.astype(str),
        source=ds,
    )


def decayed(data: TrainingData) -> TrainingData:
    """``data`` with every event of its source decayed by age (half-life: the time span of the
    newest :data:`RECENT_SHARE` of likes and purchases); ``data`` itself when its source has
    no timestamps."""
    ds = data.source
    if ds is None or not ds.has_timestamps:
        return data
    stamps = np.concatenate([ds.likes["ts"].to_numpy(float), ds.purchases["ts"].to_numpy(float)])
    span = (np.max(stamps) - np.quantile(stamps, 1.0 - RECENT_SHARE)) / SECONDS_PER_DAY
    return build(ds, EngagementWeights(half_life_days=max(float(span), 1.0)))


def _post_documents(
    ds: Dataset, post_products: sp.csr_matrix, prod_title: np.ndarray, prod_cat: np.ndarray
) -> list[str]:
    docs = []
    indptr, indices = post_products.indptr, post_products.indices
    for i, (text, title, tags) in enumerate(
        zip(ds.posts["text"], ds.posts["title"], ds.posts["tags"], strict=True)
    ):
        linked = indices[indptr[i] : indptr[i + 1]]
        parts = [text, title, " ".join(tags)]
        parts += [f"{prod_title[j]} {prod_cat[j]}" for j in linked]
        docs.append(" ".join(p for p in parts if p))
    return docs
