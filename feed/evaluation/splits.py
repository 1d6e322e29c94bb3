"""Splits of a dataset into a training part and held-out likes and purchases, and the held-out
truth in the training data's indices.

A split never leaks: every model is fitted on the training part only. Three protocols
(:data:`METHODS`):

* ``global-time``: one cut at the ``1 - test_frac`` quantile of like and purchase timestamps
  (:func:`time_split`): the future of everyone, as a deployment meets it;
* ``user-time``: each user's last ``test_frac`` of timed likes and purchases
  (:func:`user_time_split`): for data whose users are active in bursts at different times,
  where one global cut leaves most held-out users without a past to learn from;
* ``random``: a seeded random share of each user's likes and purchases (:func:`random_split`).

:func:`split` with ``method="auto"`` picks one from the data (:func:`choose_method`) and says
why. :func:`as_of` rebuilds the dataset as it was at a past moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from feed.data import Dataset, load
from feed.evaluation.metrics import HeldOut, binary, member
from feed.features.matrices import EngagementWeights, TrainingData, build

# --- splits --------------------------------------------------------------------------------


METHODS = ("global-time", "user-time", "random")
#: ``auto`` cuts globally when at least this share of the users with held-out rows also have
#: rows before the cut; below it, users are active in bursts: each is cut in their own time.
WARM_SHARE = 0.5


@dataclass
class Split:
    """A dataset cut into a training part and held-out likes and purchases.

    ``cut`` is the time of a global cut in unix seconds (NaN otherwise): every training like
    and purchase has ``ts < cut`` and every held-out one ``ts >= cut``. ``reason`` says why
    this protocol (when it was chosen from the data).
    """

    train: Dataset
    test_likes: pd.DataFrame
    test_purchases: pd.DataFrame
    method: str  # one of METHODS
    cut: float = math.nan
    reason: str = ""


def split(
    ds: Dataset, test_frac: float = 0.2, random_state: int = 0, method: str = "auto"
) -> Split:
    """Hold out ``test_frac`` of the likes and purchases by one of :data:`METHODS`.

    Parameters
    ----------
    ds : Dataset
    test_frac : float
        Share of like and purchase rows held out, in (0, 1).
    random_state : int
        Seed of the random split.
    method : str
        ``auto`` (:func:`choose_method`), or one of :data:`METHODS`.

    Returns
    -------
    Split
    """
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    reason = f"{method} as asked"
    if method == "auto":
        method, reason = choose_method(ds, test_frac)
    if method not in METHODS:
        raise ValueError(f"split method must be auto or one of {', '.join(METHODS)}: {method!r}")
    if method != "random" and not ds.has_timestamps:
        raise ValueError(f"a {method} split needs a ts on every like and purchase")
    try:
        if method == "global-time":
            part = time_split(ds, test_frac)
        elif method == "user-time":
            part = user_time_split(ds, test_frac)
        else:
            part = random_split(ds, test_frac, random_state)
    except ValueError as e:
        if reason.endswith("as asked"):
            raise
        raise ValueError(f"{e} (--split auto chose {method}: {reason})") from None
    return replace(part, reason=reason)


@dataclass(frozen=True)
class Splitter:
    """:func:`split` with a fixed ``method``, as a model's parameter: what the learned ranker
    carves its validation slices with (so validation mirrors the evaluation protocol)."""

    method: str = "auto"

    def __call__(self, ds: Dataset, test_frac: float, random_state: int) -> Split:
        return split(ds, test_frac, random_state, self.method)


def choose_method(ds: Dataset, test_frac: float = 0.2) -> tuple[str, str]:
    """The protocol the data supports, and why: ``random`` without timestamps; else
    ``global-time`` when at least :data:`WARM_SHARE` of the users a global cut holds out
    have rows before it, else ``user-time`` (users active in bursts)."""
    if not ds.has_timestamps:
        return "random", "some like or purchase has no ts"
    part = time_split(ds, test_frac)
    held = set(part.test_likes["user_id"]) | set(part.test_purchases["user_id"])
    before = set(part.train.likes["user_id"]) | set(part.train.purchases["user_id"])
    warm = len(held & before) / max(len(held), 1)
    if warm >= WARM_SHARE:
        return "global-time", f"{warm:.0%} of the users after a global cut have a past before it"
    return "user-time", (
        f"only {warm:.0%} of the users after a global cut have a past before it: "
        "users are active in bursts, so each user is cut in their own time"
    )


def time_split(ds: Dataset, test_frac: float) -> Split:
    """A global cut at the ``1 - test_frac`` quantile of like and purchase timestamps.

    Clicks, impressions, follows, shares, groups (by ``created_at``) and group members at or
    after the cut leave the training part too (rows without a timestamp stay, but for the
    members of groups created after it). Posts all stay: a post created after the cut is a
    candidate.
    """
    stamps = np.concatenate([ds.likes["ts"].to_numpy(float), ds.purchases["ts"].to_numpy(float)])
    cut = float(np.quantile(stamps, 1.0 - test_frac))
    if not (stamps < cut).any():
        cut = float(np.max(stamps))
    if not (stamps < cut).any():
        raise ValueError("cannot split by time: every like and purchase has the same ts")
    groups = _before(ds.groups.assign(ts=ds.groups["created_at"]), cut).drop(columns="ts")
    members = _before(ds.group_members, cut)
    gone = ds.groups["group_id"][~ds.groups["group_id"].isin(groups["group_id"])]
    train = _subset(
        ds,
        likes=ds.likes[ds.likes["ts"].to_numpy() < cut],
        purchases=ds.purchases[ds.purchases["ts"].to_numpy() < cut],
        clicks=_before(ds.clicks, cut),
        impressions=_before(ds.impressions, cut),
        follows=_before(ds.follows, cut),
        shares=_before(ds.shares, cut),
        groups=groups,
        group_members=members[~members["group_id"].isin(gone)],  # and untimed ones of those
    )
    test_likes = ds.likes[ds.likes["ts"].to_numpy() >= cut]
    test_purchases = ds.purchases[ds.purchases["ts"].to_numpy() >= cut]
    return Split(
        train,
        test_likes.reset_index(drop=True),
        test_purchases.reset_index(drop=True),
        "global-time",
        cut,
    )


def user_time_split(ds: Dataset, test_frac: float) -> Split:
    """Hold out each user's newest ``round(test_frac * n)`` likes and purchases (users with
    n >= 2; ties in time by file order).

    A user's clicks, impressions and follows at or after their first held-out row leave the
    training part too (rows without a timestamp stay). Posts all stay.
    """
    users = pd.concat([ds.likes["user_id"], ds.purchases["user_id"]], ignore_index=True)
    ts = np.concatenate([ds.likes["ts"].to_numpy(float), ds.purchases["ts"].to_numpy(float)])
    frame = pd.DataFrame({"user": users.to_numpy(object), "ts": ts, "row": np.arange(len(ts))})
    frame = frame.sort_values(["user", "ts", "row"], kind="stable")
    grouped = frame.groupby("user", sort=False)
    from_end = grouped.cumcount(ascending=False).to_numpy()
    size = grouped["ts"].transform("size").to_numpy()
    held_sorted = (size >= 2) & (from_end < np.floor(test_frac * size + 0.5))
    held = np.zeros(len(ts), dtype=bool)
    held[frame["row"].to_numpy()] = held_sorted
    if not held.any():
        raise ValueError("cannot split by user time: no user has two timed likes or purchases")
    cuts = frame[held_sorted].groupby("user", sort=False)["ts"].min()
    n_likes = len(ds.likes)
    train = _subset(
        ds,
        likes=ds.likes[~held[:n_likes]],
        purchases=ds.purchases[~held[n_likes:]],
        clicks=_before_user(ds.clicks, cuts, "user_id"),
        impressions=_before_user(ds.impressions, cuts, "user_id"),
        follows=_before_user(ds.follows, cuts, "follower_id"),
    )
    return Split(
        train,
        ds.likes[held[:n_likes]].reset_index(drop=True),
        ds.purchases[held[n_likes:]].reset_index(drop=True),
        "user-time",
    )


def random_split(ds: Dataset, test_frac: float, random_state: int = 0) -> Split:
    """Hold out ``round(test_frac * n)`` random likes and purchases of every user with n >= 2.

    Clicks and impressions on a held-out liked post are dropped from the training part.
    """
    rng = np.random.default_rng(random_state)
    users = pd.concat([ds.likes["user_id"], ds.purchases["user_id"]], ignore_index=True)
    frame = pd.DataFrame({"user": users.to_numpy(object), "key": rng.random(len(users))})
    grouped = frame.groupby("user", sort=False)["key"]
    rank = grouped.rank(method="first").to_numpy() - 1
    size = grouped.transform("size").to_numpy()
    held = (size >= 2) & (rank < np.floor(test_frac * size + 0.5))
    n_likes = len(ds.likes)
    test_likes, test_purchases = ds.likes[held[:n_likes]], ds.purchases[held[n_likes:]]
    pairs = set(zip(test_likes["user_id"], test_likes["post_id"], strict=True))
    train = _subset(
        ds,
        likes=ds.likes[~held[:n_likes]],
        purchases=ds.purchases[~held[n_likes:]],
        clicks=_without_pairs(ds.clicks, pairs),
        impressions=_without_pairs(ds.impressions, pairs),
        follows=ds.follows,
    )
    return Split(
        train, test_likes.reset_index(drop=True), test_purchases.reset_index(drop=True), "random"
    )


def training_data(part: Split) -> TrainingData:
    """The matrices of a split's training part, as of the cut.

    ``now`` (post ages, recency) is the cut: posts created after it are candidates, but how
    new they are is not known at training time (their age is 0, as for a post published after
    a real training run).
    """
    data = build(part.train, EngagementWeights())
    return replace(data, now=part.cut) if part.method == "global-time" else data


def _groups_without(
    g: pd.DataFrame, m: pd.DataFrame, purchases: pd.DataFrame, kept: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """``groups`` and ``group_members`` without the memberships that are purchases in
    ``purchases`` but not in ``kept`` (user and product)."""
    pairs = purchases["user_id"] + "\x00" + purchases["product_id"]
    held = set(pairs) - set(kept["user_id"] + "\x00" + kept["product_id"])
    if not held:
        return {"groups": g, "group_members": m}
    groups = g[~(g["initiator_id"] + "\x00" + g["product_id"]).isin(held).to_numpy()]
    product = m["group_id"].map(dict(zip(g["group_id"], g["product_id"], strict=True)))
    members = m[~(m["user_id"] + "\x00" + product.fillna("")).isin(held).to_numpy()]
    return {"groups": groups, "group_members": members}


def _before(table: pd.DataFrame, cut: float) -> pd.DataFrame:
    """Rows strictly before ``cut``, plus rows without a timestamp."""
    ts = table["ts"].to_numpy(float)
    return table[np.isnan(ts) | (ts < cut)]


def _before_user(table: pd.DataFrame, cuts: pd.Series, column: str) -> pd.DataFrame:
    """Rows before their user's cut (``cuts``: user -> time), rows of users without a cut,
    and rows without a timestamp."""
    if not len(table):
        return table
    cut = table[column].map(cuts).to_numpy(float)
    ts = table["ts"].to_numpy(float)
    return table[np.isnan(cut) | np.isnan(ts) | (ts < cut)]


def _without_pairs(table: pd.DataFrame, pairs: set[tuple[str, str]]) -> pd.DataFrame:
    if not len(table) or not pairs:
        return table
    keep = [(u, p) not in pairs for u, p in zip(table["user_id"], table["post_id"], strict=True)]
    return table[np.asarray(keep, dtype=bool)]


def _subset(ds: Dataset, **tables: pd.DataFrame) -> Dataset:
    """A copy of ``ds`` with some tables replaced (re-indexed) and counts recomputed. Group
    memberships that are purchases the training part no longer has (held out) leave too, so
    a held-out purchase never comes back as a group purchase: the groups whose initiator's
    purchase it is, and the member rows of the others."""
    if "purchases" in tables and len(ds.groups):
        groups = tables.get("groups", ds.groups)
        members = tables.get("group_members", ds.group_members)
        tables.update(_groups_without(groups, members, ds.purchases, tables["purchases"]))
    fresh = {name: t.reset_index(drop=True) for name, t in tables.items()}
    out = replace(ds, **fresh, path=None, problems=[])
    out.counts = {name: len(getattr(out, name)) for name in ds.counts}
    return out


# --- held-out truth ------------------------------------------------------------------------


def held_out(part: Split, data: TrainingData) -> HeldOut:
    """The test users (held-out activity and some training interaction) and their targets.

    Parameters
    ----------
    part : Split
    data : TrainingData
        Built from ``part.train``.
    """
    seen = data.seen()
    warm = np.diff(data.engagement.indptr) + np.diff(data.purchases.indptr) > 0
    lk_u = data.users.to_internal(part.test_likes["user_id"], strict=False)
    lk_p = data.posts.to_internal(part.test_likes["post_id"], strict=False)
    pu_u = data.users.to_internal(part.test_purchases["user_id"], strict=False)
    pu_p = data.products.to_internal(part.test_purchases["product_id"], strict=False)
    all_test = np.union1d(
        part.test_likes["user_id"].unique(), part.test_purchases["user_id"].unique()
    )
    ok_l = (lk_u >= 0) & (lk_p >= 0)
    ok_l[ok_l] = warm[lk_u[ok_l]]
    ok_l[ok_l] = ~member(seen, lk_u[ok_l], lk_p[ok_l])
    ok_p = (pu_u >= 0) & (pu_p >= 0)
    ok_p[ok_p] = warm[pu_u[ok_p]]
    ok_p[ok_p] = ~member(data.purchases, pu_u[ok_p], pu_p[ok_p])
    users = np.union1d(lk_u[ok_l], pu_u[ok_p]).astype(np.int64)
    row = np.full(data.n_users, -1)
    row[users] = np.arange(len(users))
    likes = binary((row[lk_u[ok_l]], lk_p[ok_l]), (len(users), data.n_posts))
    purchases = binary((row[pu_u[ok_p]], pu_p[ok_p]), (len(users), len(data.products)))
    warm_ext = {u for u in all_test if u in data.users and warm[data.users.get(u)]}
    counts = {
        "test_users": len(users),
        "test_users_with_likes": int((np.diff(likes.indptr) > 0).sum()),
        "test_users_with_purchases": int((np.diff(purchases.indptr) > 0).sum()),
        "cold_users_skipped": len(all_test) - len(warm_ext),
        "held_out_likes": len(part.test_likes),
        "held_out_purchases": len(part.test_purchases),
        "target_likes": int(likes.nnz),
        "target_purchased_products": int(purchases.nnz),
    }
    return HeldOut(users, likes, purchases, counts)


def as_of(dataset: Dataset | str | Path, cut: float | str) -> Dataset:
    """The dataset as it was at ``cut``: only posts created and events timed before it.

    Likes, purchases, clicks, impressions and follows at or after ``cut`` are dropped, and so
    are posts created at or after it (with the events on them); rows without a time stay.
    Useful to rebuild a past version, or to see what retraining on fresh data adds.

    Parameters
    ----------
    dataset : Dataset or path
    cut : float or str
        Unix seconds, or an ISO-8601 time such as ``"2026-10-01T00:00:00Z"``.

    Returns
    -------
    Dataset
        A copy without a ``path`` (so its fingerprint hashes the tables).

    Examples
    --------
    >>> import tempfile, feed
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = feed.generate(d, feed.SynthConfig(n_users=60, n_posts=50, seed=1))
    ...     ds = feed.load(d)
    >>> old = as_of(ds, "2026-10-01T00:00:00Z")
    >>> len(old.likes) < len(ds.likes), bool((old.likes["ts"] < 1790812800).all())
    (True, True)
    """
    ds = dataset if isinstance(dataset, Dataset) else load(dataset)
    t = float(pd.Timestamp(cut).timestamp()) if isinstance(cut, str) else float(cut)

    def before(frame: pd.DataFrame, column: str = "ts") -> np.ndarray:
        ts = frame[column].to_numpy(float)
        return np.isnan(ts) | (ts < t)

    posts = ds.posts[before(ds.posts, "created_at")]
    known = set(posts["post_id"])

    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        ok = before(frame)
        if "post_id" in frame:
            ok &= frame["post_id"].isin(known).to_numpy() | (frame["post_id"] == "").to_numpy()
        return frame[ok].reset_index(drop=True)

    tables = {
        name: keep(getattr(ds, name))
        for name in ("likes", "purchases", "clicks", "impressions", "follows")
    }
    out = replace(ds, posts=posts.reset_index(drop=True), **tables, path=None, problems=[])
    out.counts = {name: len(getattr(out, name)) for name in ds.counts}
    return out
