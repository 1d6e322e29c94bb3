"""Interaction matrices and per-post metadata, built once from a :class:`feed.data.Dataset`.

Every model is fitted on a :class:`TrainingData`: id maps for users, posts and products, the
user x post engagement matrix (likes, clicks and purchases spread to the posts that link the
bought product), the user x product purchase matrix, the social graph, and post metadata.

The social-shopping tables count too: membership of a succeeded group-buy (the initiator
included) is a purchase of its product, unless ``purchases.csv`` already has that user and
product (one purchase is never counted twice); membership of a failed or open one is an intent
(a weaker weight). The social graph (``follows``) holds explicit follows at 1 and, below them,
ties from group co-membership (initiator and member) and shares (sharer and receiver), so a
dataset with groups and no follows still has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    #: How a like's ``weight`` column becomes its strength: "log" (``log2(1 + weight / median)``,
    #: so the median like counts 1 and a play count 1,000x the median about 10: see
    #: :func:`like_strength`) or "raw" (the weight as given).
    like_scale: str = "log"
    click: float = 0.25
    purchase_attributed: float = 2.0  # the post a purchase came through
    purchase_spread: float = 1.0  # split over every post linking a bought product
    half_life_days: float | None = None  # optional time decay relative to the newest event
    group_intent: float = 0.3  # a failed or open group's member, in the purchase matrix
    co_member_tie: float = 0.5  # social tie of a group's initiator and a member, per group
    share_tie: float = 0.25  # social tie of a sharer and the receiver, per share
    tie_max: float = 0.8  # ties add up to at most this (an explicit follow is 1)


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
    follows: sp.csr_matrix  # users x users: 1 where row follows column, ties below 1 (social)
    post_text: list[str]  # text + title + tags + linked product titles and categories
    now: float  # newest timestamp in the data (the training "now"), NaN when none
    product_titles: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    product_categories: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    #: The tables this was built from, for models that carve validation slices out of them or
    #: re-weight events by time (:func:`decayed`); None when built some other way.
    source: Dataset | None = field(default=None, repr=False)
    #: users x posts, 1 where the user hid the post or asked to see fewer of its author
    #: (``hides.csv``): such pairs are out of ``engagement`` and ``likes`` and never
    #: recommended (:meth:`seen`). None when built some other way.
    hidden: sp.csr_matrix | None = field(default=None, repr=False)

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
        if self.hidden is not None and self.hidden.nnz:
            m = (m + self.hidden).tocsr()
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
        ds.shares["user_id"],
        ds.shares["receiver_id"][ds.shares["receiver_id"] != ""],
        ds.groups["initiator_id"],
        ds.group_members["user_id"],
    )


def _product_ids(ds: Dataset) -> IdMap:
    linked = (p for ids in ds.posts["product_ids"] for p in ids)
    return IdMap.from_values(
        ds.products["product_id"], linked, ds.purchases["product_id"], ds.groups["product_id"]
    )


def _group_members(ds: Dataset) -> pd.DataFrame:
    """Every member of every group, the initiator included: ``user_id``, ``product_id``,
    ``succeeded`` (the stored status, or full when it is empty), ``initiator_id``, ``ts``."""
    g, m = ds.groups, ds.group_members
    joined = m.merge(g[["group_id", "product_id", "initiator_id"]], on="group_id", how="inner")
    joined = joined[joined["user_id"] != joined["initiator_id"]]
    count = joined.groupby("group_id").size().reindex(g["group_id"], fill_value=0).to_numpy()
    full = count + 1 >= g["size"].fillna(2).to_numpy()
    status = g["status"].to_numpy()
    ok = np.where(status == "", full, status == "succeeded")
    succeeded = dict(zip(g["group_id"], ok, strict=True))
    starters = g.assign(user_id=g["initiator_id"], ts=g["created_at"])
    rows = pd.concat([starters, joined], ignore_index=True)[
        ["group_id", "user_id", "product_id", "initiator_id", "ts"]
    ]
    return rows.assign(succeeded=rows["group_id"].map(succeeded).to_numpy(bool))


def _group_purchases(
    ds: Dataset, users: IdMap, products: IdMap, w: EngagementWeights, now: float
) -> sp.csr_matrix:
    """users x products: 1 for a succeeded group's member, ``group_intent`` for a failed or
    open one's, none where ``purchases.csv`` has the pair (or a bigger group weight does)."""
    rows = _group_members(ds)
    shape = (len(users), len(products))
    if not len(rows):
        return sp.csr_matrix(shape, dtype=np.float32)
    u = users.to_internal(rows["user_id"])
    p = products.to_internal(rows["product_id"])
    weight = np.where(rows["succeeded"].to_numpy(), 1.0, w.group_intent)
    weight = weight * _decay(rows["ts"], now, w.half_life_days)
    # the strongest membership of each pair: a user in two groups of a product buys it once
    key = u.astype(np.int64) * shape[1] + p
    order = np.lexsort((-weight, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    bought = users.to_internal(ds.purchases["user_id"]).astype(np.int64) * shape[1]
    bought += products.to_internal(ds.purchases["product_id"])
    keep = first[~np.isin(key[first], bought)]
    return _coo(u[keep], p[keep], weight[keep], shape)


def _social_graph(
    ds: Dataset, users: IdMap, w: EngagementWeights, follows: sp.csr_matrix
) -> sp.csr_matrix:
    """users x users: explicit follows at 1, and where there is none, co-membership and share
    ties (both directions, summed, at most ``tie_max``)."""
    rows = _group_members(ds)
    rows = rows[rows["user_id"] != rows["initiator_id"]]
    sh = ds.shares[ds.shares["receiver_id"] != ""]
    a = np.concatenate([users.to_internal(rows["initiator_id"]), users.to_internal(sh["user_id"])])
    b = np.concatenate([users.to_internal(rows["user_id"]), users.to_internal(sh["receiver_id"])])
    weight = np.concatenate([np.full(len(rows), w.co_member_tie), np.full(len(sh), w.share_tie)])
    ok = a != b
    a, b, weight = a[ok], b[ok], weight[ok]
    n = len(users)
    ties = _coo(np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([weight, weight]),
                (n, n))  # fmt: skip
    ties.data = np.minimum(ties.data, w.tie_max)
    graph = sp.csr_matrix(follows.maximum(ties), dtype=np.float32)
    graph.eliminate_zeros()
    return graph


def _coo(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    m = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    return m


def like_strength(weight: np.ndarray, scale: str = "log") -> np.ndarray:
    """The strength of each like of ``weight`` (the ``weight`` column: 1 by default, or a play
    count, a rating, a dwell time...): "log" maps it to ``log2(1 + weight / median)`` over the
    positive weights, so that it does not depend on the weight's unit, the median like counts 1
    (every like counts 1 when all weights are equal, as by default) and a heavy-tailed count
    (plays: a few pairs thousands of times the median) counts about 10, not thousands: with
    ALS's ``1 + alpha * strength``, the log confidence of Hu, Koren and Volinsky. "raw" keeps
    the weight."""
    weight = np.asarray(weight, dtype=np.float64)
    if scale == "raw":
        return weight
    if scale != "log":
        raise ValueError(f"like_scale must be 'log' or 'raw', not {scale!r}")
    positive = weight[weight > 0]
    if not len(positive):
        return weight
    return np.log2(1.0 + weight / float(np.median(positive)))


def _decay(ts: pd.Series, now: float, half_life_days: float | None) -> np.ndarray:
    if half_life_days is None or not np.isfinite(now):
        return np.ones(len(ts))
    age_days = (now - ts.to_numpy(dtype=np.float64)) / SECONDS_PER_DAY
    return np.where(np.isfinite(age_days), 0.5 ** (np.maximum(age_days, 0) / half_life_days), 1.0)


def _hidden(ds: Dataset, users: IdMap, posts: IdMap, post_author: np.ndarray) -> sp.csr_matrix:
    """users x posts, 1 where a hide names the pair: the post itself (``post_id``), or every
    post of an author the user asked to see fewer of (``author_id``): the simplest sound
    reading of "see fewer", the one the service applies between trainings (its muted filter).
    Hides of users or posts the data does not otherwise know are left out."""
    hd = ds.hides
    shape = (len(users), len(posts))
    if not len(hd):
        return sp.csr_matrix(shape, dtype=np.float32)
    u = users.to_internal(hd["user_id"], strict=False)
    p = posts.to_internal(hd["post_id"], strict=False)
    ok = (u >= 0) & (p >= 0)
    rows, cols = [u[ok]], [p[ok]]
    by_author = (hd["author_id"] != "").to_numpy()
    if by_author.any():
        au = users.to_internal(hd["author_id"][by_author], strict=False)
        hu = u[by_author]
        keep = (au >= 0) & (hu >= 0)
        author_posts = sp.csr_matrix(
            (np.ones(len(post_author), np.float32), (post_author, np.arange(len(post_author)))),
            shape=shape,
        )
        muted = _coo(hu[keep], au[keep], np.ones(int(keep.sum())), (shape[0], shape[0]))
        m = (muted @ author_posts).tocoo()
        rows.append(m.row.astype(np.int64))
        cols.append(m.col.astype(np.int64))
    r, c = np.concatenate(rows), np.concatenate(cols)
    out = _coo(r, c, np.ones(len(r)), shape)
    out.data[:] = 1.0
    return out


def _without(m: sp.csr_matrix, hidden: sp.csr_matrix) -> sp.csr_matrix:
    """``m`` without the entries ``hidden`` marks."""
    if not hidden.nnz:
        return m
    out = sp.csr_matrix(m - m.multiply(hidden), dtype=np.float32)
    out.eliminate_zeros()
    return out


def _newest(ds: Dataset) -> float:
    stamps = [t["ts"].max() for t in (ds.likes, ds.purchases, ds.clicks) if len(t)]
    stamps.append(ds.posts["created_at"].max())
    finite = [s for s in stamps if s == s]
    return float(max(finite)) if finite else float("nan")


def _interactions(
    ds: Dataset,
    maps: tuple[IdMap, IdMap, IdMap],
    post_products: sp.csr_matrix,
    hidden: sp.csr_matrix,
    w: EngagementWeights,
    now: float,
) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """(likes, purchases, engagement) of ``ds`` under the weights ``w`` (decayed by age when it
    has a half-life), hidden pairs left out: the part of :func:`build` that the weights change."""
    users, posts, products = maps
    nu, npo, npr = len(users), len(posts), len(products)
    lk = ds.likes
    likes = _coo(
        users.to_internal(lk["user_id"]),
        posts.to_internal(lk["post_id"]),
        like_strength(lk["weight"].to_numpy(), w.like_scale)
        * _decay(lk["ts"], now, w.half_life_days),
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
    purchases = sp.csr_matrix(
        purchases + _group_purchases(ds, users, products, w, now), dtype=np.float32
    )

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
    return _without(likes, hidden), purchases, _without(engagement, hidden)


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

    post_author = users.to_internal(ds.posts["author_id"])
    hidden = _hidden(ds, users, posts, post_author)
    # hides are negatives: a hidden pair leaves the engagement (and is never recommended)
    likes, purchases, engagement = _interactions(
        ds, (users, posts, products), post_products, hidden, w, now
    )

    fo = ds.follows
    follows = _coo(
        users.to_internal(fo["follower_id"]),
        users.to_internal(fo["followee_id"]),
        np.ones(len(fo)),
        (nu, nu),
    )
    follows.data[:] = 1.0
    follows = _social_graph(ds, users, w, follows)

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
        hidden=hidden,
    )


def decayed(data: TrainingData) -> TrainingData:
    """``data`` with every event of its source decayed by its age at ``data.now`` (a validation
    slice's cut, on a slice), half-life the time span of the newest :data:`RECENT_SHARE` of
    likes and purchases; ``data`` itself when its source has no timestamps."""
    ds = data.source
    if ds is None or not ds.has_timestamps:
        return data
    stamps = np.concatenate([ds.likes["ts"].to_numpy(float), ds.purchases["ts"].to_numpy(float)])
    span = (np.max(stamps) - np.quantile(stamps, 1.0 - RECENT_SHARE)) / SECONDS_PER_DAY
    w = EngagementWeights(half_life_days=max(float(span), 1.0))
    hidden = data.hidden
    if hidden is None:
        hidden = _hidden(ds, data.users, data.posts, data.post_author)
    likes, purchases, engagement = _interactions(
        ds, (data.users, data.posts, data.products), data.post_products, hidden, w, data.now
    )  # the id maps, the social graph and the texts are the same: shared, not rebuilt
    return replace(data, likes=likes, purchases=purchases, engagement=engagement, hidden=hidden)


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
