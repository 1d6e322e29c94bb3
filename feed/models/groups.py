"""Group-buying recommendations (拼購): deals to launch, ties to invite, popular deals.

:class:`GroupRecs` is fitted on a :class:`~feed.features.matrices.TrainingData` whose ``source``
has groups. For every user it ranks **deals** (products to launch a group for) by a small
logistic blend of five features over a sparse candidate set (linear in users; no dense
users x products block):

* ``cf``: item-item BM25 co-membership over users x products (``data.purchases``: purchases
  and group memberships), row-normalised to [0, 1];
* ``taste``: the user's engagement with posts (likes, clicks, purchases) projected onto the
  products the posts link, row-normalised to [0, 1];
* ``friends``: ``log1p`` of the tie-weighted count of the user's top ties who bought the
  product or joined one of its groups;
* ``own``: ``log1p`` of the user's own purchase/membership weight of the product;
* ``popularity``: ``log1p`` of the product's number of groups;
* ``success``: the product's smoothed group success rate ``(succeeded + m * global) / (n + m)``.

Candidates are the union of the nonzeros of the first three and the :data:`POPULAR_CANDIDATES`
products with the most groups. The blend's weights are learned (scikit-learn's logistic
regression) on a seeded validation slice of the groups: the features are computed on data
without those groups, the labels are the slice's memberships; then every part is refitted on all
data. The score of a deal is the blend's probability, so scores compare across users (the
service multiplies them with tie strengths: :mod:`feed.serving.groups`).

Every user's **ties** are the strongest ``n_ties`` entries of the social graph
(``data.follows``: follows 1, co-membership and share ties below) plus one per group shared
with the user as initiator and member (:meth:`GroupRecs._tie_graph`). The **popular** list
(cold users) ranks products by the blend's product-only part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feed.data import Dataset
from feed.features.matrices import TrainingData, build

logger = logging.getLogger(__name__)

FEATURES = ("cf", "taste", "friends", "own", "popularity", "success")
#: Reason of a deal: the feature whose weighted value contributes most.
DEAL_REASONS = (
    "similar_to_bought",
    "liked_posts",
    "friends_bought",
    "bought_before",
    "popular_groups",
    "groups_succeed",
)
POPULAR_CANDIDATES = 50  # products with the most groups: candidates of every user
FRIENDS_PER_DEAL = 3  # ties shown per deal ("friends": who bought it or joined its groups)
BLOCK_USERS = 8192  # users per block of sparse scoring
#: The blend before it is learned (too few groups to learn from): a prior, not a tuned value.
DEFAULT_WEIGHTS = {
    "cf": 2.0,
    "taste": 1.0,
    "friends": 1.0,
    "own": 0.5,
    "popularity": 0.3,
    "success": 1.0,
}


def group_rows(ds: Dataset) -> pd.DataFrame:
    """Every membership, the initiator included: ``group_id``, ``user_id``, ``product_id``,
    ``initiator_id``, ``initiator`` (bool), ``succeeded`` (the stored status, or full when it
    is empty)."""
    g, m = ds.groups, ds.group_members
    joined = m.merge(g[["group_id", "product_id", "initiator_id"]], on="group_id", how="inner")
    joined = joined[joined["user_id"] != joined["initiator_id"]]
    count = joined.groupby("group_id").size().reindex(g["group_id"], fill_value=0).to_numpy()
    full = count + 1 >= g["size"].fillna(2).to_numpy()
    status = g["status"].to_numpy()
    ok = dict(zip(g["group_id"], np.where(status == "", full, status == "succeeded"), strict=True))
    starters = g.assign(user_id=g["initiator_id"])[["group_id", "user_id", "product_id",
                                                     "initiator_id"]]  # fmt: skip
    rows = pd.concat([starters, joined[starters.columns]], ignore_index=True)
    return rows.assign(
        initiator=(rows["user_id"] == rows["initiator_id"]).to_numpy(),
        succeeded=rows["group_id"].map(ok).to_numpy(bool),
    )


@dataclass
class GroupSplit:
    """Groups held out at random: ``train`` (the dataset without them, and without the
    purchases their members made of their products) and ``held`` (their memberships,
    :func:`group_rows`)."""

    train: Dataset
    held: pd.DataFrame


def split_groups(ds: Dataset, frac: float = 0.2, seed: int = 0) -> GroupSplit:
    """Hold out a seeded random ``frac`` of the groups (no timestamps needed)."""
    g = ds.groups
    rng = np.random.default_rng(seed)
    out = rng.random(len(g)) < frac
    held_ids = set(g["group_id"][out])
    rows = group_rows(ds)
    held = rows[rows["group_id"].isin(held_ids).to_numpy()].reset_index(drop=True)
    pairs = set(held["user_id"] + "\x00" + held["product_id"])
    pu = ds.purchases
    keep_pu = ~(pu["user_id"] + "\x00" + pu["product_id"]).isin(pairs).to_numpy()
    tables = {
        "groups": g[~out].reset_index(drop=True),
        "group_members": ds.group_members[
            ~ds.group_members["group_id"].isin(held_ids).to_numpy()
        ].reset_index(drop=True),
        "purchases": pu[keep_pu].reset_index(drop=True),
    }
    train = replace(ds, **tables, path=None, problems=[])
    train.counts = {name: len(getattr(train, name)) for name in ds.counts}
    return GroupSplit(train, held)


def row_topk(m: sp.csr_matrix, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``n`` largest stored entries, best first: (columns, values), -1 / 0 padded."""
    m = sp.csr_matrix(m)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))
    rank = np.arange(len(order)) - m.indptr[rows[order]]
    keep = rank < n
    cols = np.full((m.shape[0], n), -1, dtype=np.int64)
    vals = np.zeros((m.shape[0], n), dtype=np.float32)
    r, k = rows[order][keep], rank[keep]
    cols[r, k] = m.indices[order][keep]
    vals[r, k] = m.data[order][keep]
    return cols, vals


def _aligned(pattern: sp.csr_matrix, f: sp.csr_matrix) -> np.ndarray:
    """Values of ``f`` at the stored entries of ``pattern`` (a superset of ``f``'s), in
    ``pattern.data`` order."""
    ncol = pattern.shape[1]
    pr = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr)).astype(np.int64)
    keys = pr * ncol + pattern.indices
    f = sp.csr_matrix(f)
    fr = np.repeat(np.arange(f.shape[0]), np.diff(f.indptr)).astype(np.int64)
    out = np.zeros(len(keys), dtype=np.float32)
    pos = np.searchsorted(keys, fr * ncol + f.indices)
    out[pos] = f.data
    return out


class GroupRecs:
    """Deals, ties and popular deals of every user (see the module doc).

    Parameters
    ----------
    n_deals, n_ties : list lengths per user
    K : neighbours per product of the item-item model
    prior : pseudo-groups of the smoothed success rate
    val_frac : share of groups held out to learn the blend (0: :data:`DEFAULT_WEIGHTS`)
    max_val_users : validation users the blend is learned on (a seeded sample)
    random_state : int
    """

    def __init__(
        self,
        n_deals: int = 50,
        n_ties: int = 50,
        K: int = 100,
        prior: float = 5.0,
        val_frac: float = 0.2,
        max_val_users: int = 20_000,
        random_state: int = 0,
    ) -> None:
        self.n_deals = n_deals
        self.n_ties = n_ties
        self.K = K
        self.prior = prior
        self.val_frac = val_frac
        self.max_val_users = max_val_users
        self.random_state = random_state

    # --- fitting ---------------------------------------------------------------------------
    def fit(self, data: TrainingData) -> GroupRecs:
        ds = data.source
        self.weights_, self.intercept_ = dict(DEFAULT_WEIGHTS), 0.0
        self.learned_ = False
        if ds is not None and self.val_frac > 0 and len(ds.groups) >= 50:
            self._learn(ds)
        self._fit_parts(data)
        return self

    def _fit_parts(self, data: TrainingData) -> None:
        from feed.models.sources import knn_similarity

        self.data_ = data
        x = sp.csr_matrix(data.purchases, dtype=np.float32)
        x.data = np.log1p(x.data)
        self.x_ = x
        xb = x.copy()
        xb.data[:] = 1.0
        self.xbin_ = xb
        taste = sp.csr_matrix(data.engagement @ data.post_products, dtype=np.float32)
        self.taste_ = taste
        self.sim_ = knn_similarity(x, self.K, "bm25") if x.nnz else sp.csr_matrix((x.shape[1],) * 2)
        cols, vals = row_topk(self._tie_graph(data), self.n_ties)
        self.tie_items_, self.tie_weights_ = cols, vals
        ok = cols >= 0
        rows = np.broadcast_to(np.arange(len(cols))[:, None], cols.shape)
        self.ties_ = sp.csr_matrix(
            (vals[ok], (rows[ok], cols[ok])), shape=(data.n_users, data.n_users)
        )
        npr = len(data.products)
        n_groups = np.zeros(npr)
        n_succ = np.zeros(npr)
        ds = data.source
        if ds is not None and len(ds.groups):
            g = group_rows(ds)
            g = g[g["initiator"].to_numpy()]
            p = data.products.to_internal(g["product_id"])
            n_groups = np.bincount(p, minlength=npr).astype(float)
            n_succ = np.bincount(p, weights=g["succeeded"].to_numpy(float), minlength=npr)  # type: ignore[assignment]
        rate = n_succ.sum() / max(n_groups.sum(), 1.0)
        self.popularity_ = np.log1p(n_groups).astype(np.float32)
        self.success_ = ((n_succ + self.prior * rate) / (n_groups + self.prior)).astype(np.float32)
        w = getattr(self, "weights_", DEFAULT_WEIGHTS)
        product_part = w["popularity"] * self.popularity_ + w["success"] * self.success_
        self.product_part_ = product_part
        order = np.argsort(-product_part, kind="stable")
        self.popular_ = order[: max(POPULAR_CANDIDATES, self.n_deals)]
        self.popular_scores_ = _sigmoid(
            product_part[self.popular_] + getattr(self, "intercept_", 0.0)
        )

    @staticmethod
    def _tie_graph(data: TrainingData) -> sp.csr_matrix:
        """users x users: the social graph (``data.follows``) plus, per group two users were
        both in as initiator and member, one more (so past co-members, the strongest sign of
        who joins whose groups, rank first, and more shared groups rank higher)."""
        graph = sp.csr_matrix(data.follows, dtype=np.float32)
        ds = data.source
        if ds is None or not len(ds.groups):
            return graph
        rows = group_rows(ds)
        rows = rows[~rows["initiator"].to_numpy()]
        a = data.users.to_internal(rows["initiator_id"], strict=False)
        b = data.users.to_internal(rows["user_id"], strict=False)
        ok = (a >= 0) & (b >= 0) & (a != b)
        a, b = a[ok], b[ok]
        co = sp.csr_matrix(
            (np.ones(2 * len(a), np.float32), (np.r_[a, b], np.r_[b, a])), shape=graph.shape
        )
        co.sum_duplicates()
        return sp.csr_matrix(graph + co, dtype=np.float32)

    def _learn(self, ds: Dataset) -> None:
        """Fit the blend's weights on a validation slice of the groups."""
        from sklearn.linear_model import LogisticRegression

        part = split_groups(ds, self.val_frac, self.random_state)
        inner = GroupRecs(
            n_deals=self.n_deals, n_ties=self.n_ties, K=self.K, prior=self.prior, val_frac=0
        )
        data = build(part.train)
        inner._fit_parts(data)
        u = data.users.to_internal(part.held["user_id"], strict=False)
        p = data.products.to_internal(part.held["product_id"], strict=False)
        ok = (u >= 0) & (p >= 0)
        u, p = u[ok], p[ok]
        users = np.unique(u)
        if len(users) < 20:
            return
        rng = np.random.default_rng(self.random_state)
        if len(users) > self.max_val_users:
            users = np.sort(rng.choice(users, self.max_val_users, replace=False))
        pattern, feats = inner.features(users)
        truth = sp.csr_matrix(
            (np.ones(len(u), np.float32), (u, p)), shape=(data.n_users, len(data.products))
        )[users]
        y = _aligned(pattern, truth.multiply(pattern)) > 0
        if y.sum() < 10 or y.all():
            return
        mean, scale = feats.mean(axis=0), feats.std(axis=0) + 1e-6
        model = LogisticRegression(C=1.0, max_iter=300)
        model.fit((feats - mean) / scale, y)
        coef = model.coef_[0] / scale
        self.weights_ = {f: float(w) for f, w in zip(FEATURES, coef, strict=True)}
        self.intercept_ = float(model.intercept_[0] - (coef * mean).sum())
        self.learned_ = True
        self.validation_ = {
            "users": len(users),
            "candidates": int(len(y)),
            "positives": int(y.sum()),
            "held_memberships": int(len(u)),
        }
        logger.info("group blend learned: %s", self.weights_)

    # --- scoring ---------------------------------------------------------------------------
    def features(self, users: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """The candidate pattern of ``users`` (rows in ``users`` order) and their features
        (one row per stored entry, :data:`FEATURES` columns)."""
        x = self.x_[users]
        cf = sp.csr_matrix(x @ self.sim_)
        top = np.asarray(cf.max(axis=1).todense()).ravel()
        cf = sp.csr_matrix(sp.diags(1.0 / np.maximum(top, 1e-9)) @ cf)
        taste = sp.csr_matrix(self.taste_[users])
        top = np.asarray(taste.max(axis=1).todense()).ravel()
        taste = sp.csr_matrix(sp.diags(1.0 / np.maximum(top, 1e-9)) @ taste)
        friends = sp.csr_matrix(self.ties_[users] @ self.xbin_)
        friends.data = np.log1p(friends.data)
        npr = x.shape[1]
        k = len(self.popular_)
        popular = sp.csr_matrix(
            (np.ones(len(users) * k, np.float32), np.tile(self.popular_, len(users)),
             np.arange(0, len(users) * k + 1, k)),
            shape=(len(users), npr),
        )  # fmt: skip
        pattern = abs(cf) + abs(taste) + abs(friends) + abs(x) + popular
        pattern = sp.csr_matrix(pattern)
        pattern.sum_duplicates()
        pattern.sort_indices()
        pattern.data[:] = 1.0
        cols = pattern.indices
        feats = np.column_stack(
            [
                _aligned(pattern, cf),
                _aligned(pattern, taste),
                _aligned(pattern, friends),
                _aligned(pattern, x),
                self.popularity_[cols],
                self.success_[cols],
            ]
        ).astype(np.float32)
        return pattern, feats

    def deals(
        self, users: np.ndarray, n: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``n`` deals of ``users``: (products, probabilities, reason codes into
        :data:`DEAL_REASONS`), -1 / 0 padded."""
        n = n or self.n_deals
        out = []
        for lo in range(0, len(users), BLOCK_USERS):
            block = users[lo : lo + BLOCK_USERS]
            pattern, feats = self.features(block)
            w = np.array([self.weights_[f] for f in FEATURES], dtype=np.float32)
            contrib = feats * w
            s = sp.csr_matrix(
                (contrib.sum(axis=1) + self.intercept_, pattern.indices, pattern.indptr),
                shape=pattern.shape,
            )
            why = contrib.argmax(axis=1)
            items, scores = row_topk(s, n)
            reason_m = sp.csr_matrix((why + 1, pattern.indices, pattern.indptr), shape=s.shape)
            rows = np.broadcast_to(np.arange(len(block))[:, None], items.shape)
            ok = items >= 0
            reasons = np.zeros(items.shape, dtype=np.uint8)
            reasons[ok] = np.asarray(reason_m[rows[ok], items[ok]]).ravel() - 1
            probs = np.where(ok, _sigmoid(scores), 0.0).astype(np.float32)
            out.append((items, probs, reasons))
        if not out:
            z = np.zeros((0, n))
            return z.astype(np.int64) - 1, z.astype(np.float32), z.astype(np.uint8)
        items, probs, reasons = (np.concatenate(x) for x in zip(*out, strict=True))
        return items, probs, reasons

    def deal_friends(self, users: np.ndarray, items: np.ndarray, k: int = FRIENDS_PER_DEAL
                     ) -> np.ndarray:  # fmt: skip
        """(len(users), n, k) user indices: each deal's strongest ties who bought the product
        or joined one of its groups (-1 padded)."""
        n = items.shape[1]
        out = np.full((len(users), n, k), -1, dtype=np.int32)
        npr = self.xbin_.shape[1]
        for lo in range(0, len(users), BLOCK_USERS):
            block = users[lo : lo + BLOCK_USERS]
            t = sp.csr_matrix(self.ties_[block])
            eu = np.repeat(np.arange(len(block)), np.diff(t.indptr))
            et, ew = t.indices, t.data
            lens = np.diff(self.xbin_.indptr)[et]
            starts = self.xbin_.indptr[et]
            total = int(lens.sum())
            if not total:
                continue
            offs = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
            tp = self.xbin_.indices[np.repeat(starts, lens) + offs]
            tu, tt, tw = np.repeat(eu, lens), np.repeat(et, lens), np.repeat(ew, lens)
            deal = items[lo : lo + len(block)]
            dk = (np.arange(len(block))[:, None] * npr + deal).ravel()
            slot = np.tile(np.arange(n), len(block))
            valid = deal.ravel() >= 0
            dk, slot = dk[valid], slot[valid]
            order = np.argsort(dk)
            dk, slot = dk[order], slot[order]
            key = tu.astype(np.int64) * npr + tp
            pos = np.searchsorted(dk, key)
            pos = np.minimum(pos, len(dk) - 1) if len(dk) else pos
            hit = (len(dk) > 0) & (dk[pos] == key) if len(dk) else np.zeros(len(key), bool)
            tu, tt, tw, key, s = tu[hit], tt[hit], tw[hit], key[hit], slot[pos[hit]]
            o = np.lexsort((tt, -tw, key))
            tu, tt, key, s = tu[o], tt[o], key[o], s[o]
            first = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
            start = np.maximum.accumulate(np.where(first, np.arange(len(key)), 0))
            rank = np.arange(len(key)) - start
            keep = rank < k
            out[lo + tu[keep], s[keep], rank[keep]] = tt[keep]
        return out

    def summary(self) -> dict[str, Any]:
        """What the manifest records of the blend."""
        return {
            "weights": {k: round(v, 4) for k, v in self.weights_.items()},
            "intercept": round(self.intercept_, 4),
            "learned": self.learned_,
            "validation": getattr(self, "validation_", None),
            "n_deals": self.n_deals,
            "n_ties": self.n_ties,
        }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))).astype(np.float32)
