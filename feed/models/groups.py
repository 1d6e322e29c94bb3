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

Inviting and joining score (initiator, candidate, product) pairs by a learned logistic
**pair model** (:data:`PAIR_FEATURES`: the tie's strength, past co-membership either way, the
candidate's activity, the ties the two have in common, the candidate's affinity for the
product). Every user's **ties** are the strongest ``n_ties`` entries of the social graph
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
from feed.models.base import parallel_map, row_max

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
#: Features of an (initiator, candidate, product) pair, for inviting and joining (see
#: :meth:`GroupRecs.pair_features`): the first six are known per tie when the version is
#: published, the last two come from the candidate's deals at request time.
PAIR_FEATURES = (
    "strength",  # log1p of the social graph's weight (follows, co-membership, shares)
    "co_groups",  # log1p of the groups the two shared as initiator and member
    "joined_theirs",  # log1p of the initiator's groups the candidate joined
    "they_joined",  # log1p of the candidate's groups the initiator joined
    "activity",  # log1p of the groups the candidate joined (anyone's)
    "common",  # log1p of the ties the two have in common (friends of both)
    "affinity",  # the candidate's deal probability for the product (0 outside their deals)
    "wants",  # 1 when the product is among the candidate's deals
    "category",  # share of the candidate's deal probabilities on the product's category
)
TIE_FEATURES = PAIR_FEATURES[:6]
#: The pair model before it is learned: the tie's strength and the candidate's taste.
DEFAULT_PAIR = {f: 0.0 for f in PAIR_FEATURES} | {"strength": 1.0, "affinity": 2.0}
MAX_VAL_GROUPS = 20_000  # validation groups the pair model is learned on (a seeded sample)
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
        self.pair_weights_, self.pair_intercept_ = dict(DEFAULT_PAIR), 0.0
        self.learned_ = self.pair_learned_ = False
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
        ds = data.source
        members = group_rows(ds) if ds is not None and len(ds.groups) else None  # read once
        graph = self._tie_graph(data, members)
        self.graph_ = graph
        cols, vals = row_topk(graph, self.n_ties)
        self.tie_items_, self.tie_weights_ = cols, vals
        self.joins_ = self._joins(data, members)
        self.activity_ = np.log1p(np.asarray(self.joins_.sum(axis=0)).ravel()).astype(np.float32)
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
            g = members if members is not None else group_rows(ds)
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
        self.tie_probs_ = self.tie_probabilities(cols)

    @staticmethod
    def _joins(data: TrainingData, rows: pd.DataFrame | None = None) -> sp.csr_matrix:
        """users x users: how many of the row's groups (as initiator) the column joined."""
        n = data.n_users
        ds = data.source
        if ds is None or not len(ds.groups):
            return sp.csr_matrix((n, n), dtype=np.float32)
        rows = group_rows(ds) if rows is None else rows
        rows = rows[~rows["initiator"].to_numpy()]
        a = data.users.to_internal(rows["initiator_id"], strict=False)
        b = data.users.to_internal(rows["user_id"], strict=False)
        ok = (a >= 0) & (b >= 0) & (a != b)
        m = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (a[ok], b[ok])), shape=(n, n))
        m.sum_duplicates()
        return m

    def tie_features(self, init: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """:data:`TIE_FEATURES` of (initiator, candidate) index pairs, one row per pair."""
        init, cand = np.asarray(init, np.int64), np.asarray(cand, np.int64)
        if not len(init):
            return np.zeros((0, len(TIE_FEATURES)), np.float32)
        j = self.joins_
        joined = np.asarray(j[init, cand]).ravel()
        back = np.asarray(j[cand, init]).ravel()
        return np.column_stack(
            [
                np.log1p(np.asarray(self.graph_[init, cand]).ravel()),
                np.log1p(joined + back),
                np.log1p(joined),
                np.log1p(back),
                self.activity_[cand],
                np.log1p(self._common(init, cand)),
            ]
        ).astype(np.float32)

    def _common(self, init: np.ndarray, cand: np.ndarray, block: int = 20_000) -> np.ndarray:
        """How many social-graph neighbours each (initiator, candidate) pair shares."""
        g = self.graph_.copy()
        g.data[:] = 1.0
        out = np.zeros(len(init), np.float32)
        for lo in range(0, len(init), block):
            a, b = g[init[lo : lo + block]], g[cand[lo : lo + block]]
            out[lo : lo + len(a.indptr) - 1] = np.asarray(a.multiply(b).sum(axis=1)).ravel()
        return out

    def tie_probabilities(self, ties: np.ndarray) -> np.ndarray:
        """The pair model's tie part, as a probability, of every user's ties (``ties``: rows
        of user indices, -1 padded): what the version publishes as tie weights."""
        ok = ties >= 0
        init = np.broadcast_to(np.arange(len(ties))[:, None], ties.shape)[ok]
        f = self.tie_features(init, ties[ok])
        weights = getattr(self, "pair_weights_", DEFAULT_PAIR)
        w = np.array([weights[k] for k in TIE_FEATURES], np.float32)
        out = np.zeros(ties.shape, np.float32)
        out[ok] = _sigmoid(f @ w + getattr(self, "pair_intercept_", 0.0))
        return out

    def pair_params(self) -> dict[str, float]:
        """What the service needs to score a pair from a published tie weight and the
        candidate's deal probability (:func:`feed.serving.groups.pair_score`)."""
        w = self.pair_weights_
        return {"tie": 1.0, "affinity": w["affinity"], "wants": w["wants"],
                "category": w["category"]}  # fmt: skip

    @staticmethod
    def _tie_graph(data: TrainingData, rows: pd.DataFrame | None = None) -> sp.csr_matrix:
        """users x users: the social graph (``data.follows``) plus, per group two users were
        both in as initiator and member, one more (so past co-members, the strongest sign of
        who joins whose groups, rank first, and more shared groups rank higher)."""
        graph = sp.csr_matrix(data.follows, dtype=np.float32)
        ds = data.source
        if ds is None or not len(ds.groups):
            return graph
        rows = group_rows(ds) if rows is None else rows
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
        self._learn_pairs(inner, data, part.held)

    def _learn_pairs(self, inner: GroupRecs, data: TrainingData, held: pd.DataFrame) -> None:
        """Fit the pair model (:data:`PAIR_FEATURES`) on the validation groups: each group's
        initiator's ties are the candidates, its members the positives."""
        from sklearn.linear_model import LogisticRegression

        starters = held[held["initiator"].to_numpy()]
        gids = starters["group_id"].to_numpy()
        rng = np.random.default_rng(self.random_state + 1)
        if len(gids) > MAX_VAL_GROUPS:
            gids = gids[np.sort(rng.choice(len(gids), MAX_VAL_GROUPS, replace=False))]
        starters = starters.set_index("group_id").loc[gids]
        init = data.users.to_internal(starters["user_id"], strict=False)
        prod = data.products.to_internal(starters["product_id"], strict=False)
        ok = (init >= 0) & (prod >= 0)
        gids, init, prod = gids[ok], init[ok], prod[ok]
        ties = inner.tie_items_[init]
        has = ties >= 0
        g_row = np.broadcast_to(np.arange(len(gids))[:, None], ties.shape)[has]
        cand = ties[has]
        if len(cand) < 20:
            return
        members = held[~held["initiator"].to_numpy()]
        row = {g: i for i, g in enumerate(gids)}
        m = members[members["group_id"].isin(row).to_numpy()]
        mu = data.users.to_internal(m["user_id"], strict=False)
        mr = m["group_id"].map(row).to_numpy()
        n_u = np.int64(data.n_users)
        truth = set((mr[mu >= 0].astype(np.int64) * n_u + mu[mu >= 0]).tolist())
        y = np.fromiter(((r * n_u + v) in truth for r, v in zip(g_row.tolist(), cand.tolist(),
                         strict=True)), bool, len(cand))  # fmt: skip
        if y.sum() < 10 or y.all():
            return
        inner.weights_, inner.intercept_ = self.weights_, self.intercept_  # the learned blend
        aff = inner.affinity_matrix(np.unique(cand))
        a = np.asarray(aff[cand, prod[g_row]]).ravel()
        cat = inner.category_share(aff, cand, prod[g_row])
        feats = np.column_stack([inner.tie_features(init[g_row], cand), a, a > 0, cat])
        mean, scale = feats.mean(axis=0), feats.std(axis=0) + 1e-6
        model = LogisticRegression(C=1.0, max_iter=300)
        model.fit((feats - mean) / scale, y)
        coef = model.coef_[0] / scale
        self.pair_weights_ = {f: float(w) for f, w in zip(PAIR_FEATURES, coef, strict=True)}
        self.pair_intercept_ = float(model.intercept_[0] - (coef * mean).sum())
        self.pair_learned_ = True
        self._learn_join(feats, y, cand)
        self.pair_validation_ = {
            "groups": len(gids),
            "candidates": int(len(y)),
            "positives": int(y.sum()),
            "held_joins": int(len(m)),
        }
        logger.info("group pair model learned: %s", self.pair_weights_)

    def _learn_join(self, feats: np.ndarray, y: np.ndarray, user: np.ndarray) -> None:
        """Recalibrate the pair model for joining: a user picks among the open groups of
        their ties, so ``(tie logit, affinity, wants, category)`` are weighed against each
        other within the user (:func:`_conditional_logit`) on the validation pairs."""
        w = np.array([self.pair_weights_[k] for k in TIE_FEATURES])
        x = np.column_stack([feats[:, : len(TIE_FEATURES)] @ w + self.pair_intercept_,
                             feats[:, len(TIE_FEATURES) :]])  # fmt: skip
        coef = _conditional_logit(x, y, user)
        if coef is not None:
            self.join_params_ = dict(zip(("tie", "affinity", "wants", "category"),
                                         coef.tolist(), strict=True))  # fmt: skip

    def join_params(self) -> dict[str, float]:
        """:meth:`pair_params` for joining (the recalibration of :meth:`_learn_join`)."""
        return dict(getattr(self, "join_params_", None) or self.pair_params())

    def category_share(self, aff: sp.csr_matrix, users: np.ndarray, products: np.ndarray
                       ) -> np.ndarray:  # fmt: skip
        """Per (user, product): the share of the user's deal probabilities (rows of ``aff``)
        on the product's category (0 for a product without one)."""
        cats = np.asarray(self.data_.product_categories, dtype=str)
        if not len(cats):
            return np.zeros(len(users), np.float32)
        names, code = np.unique(cats, return_inverse=True)
        onehot = sp.csr_matrix(
            (np.ones(len(code), np.float32), (np.arange(len(code)), code)),
            shape=(len(code), len(names)),
        )
        mass = sp.csr_matrix(aff @ onehot)
        total = np.asarray(aff.sum(axis=1)).ravel()
        share = np.asarray(mass[users, code[products]]).ravel() / np.maximum(total[users], 1e-9)
        return np.where(cats[products] != "", share, 0.0).astype(np.float32)

    def affinity_matrix(self, users: np.ndarray) -> sp.csr_matrix:
        """users x products (all users' rows; only ``users`` filled): each user's deal
        probabilities, the affinity the service reads from their deals."""
        users = np.asarray(users, np.int64)
        items, probs, _ = self.deals(users)
        ok = items >= 0
        rows = np.broadcast_to(users[:, None], items.shape)[ok]
        return sp.csr_matrix(
            (probs[ok], (rows, items[ok])), shape=(self.x_.shape[0], self.x_.shape[1])
        )

    # --- scoring ---------------------------------------------------------------------------
    def features(self, users: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """The candidate pattern of ``users`` (rows in ``users`` order) and their features
        (one row per stored entry, :data:`FEATURES` columns)."""
        x = self.x_[users]
        cf = sp.csr_matrix(x @ self.sim_)
        top = row_max(cf)
        cf = sp.csr_matrix(sp.diags(1.0 / np.maximum(top, 1e-9)) @ cf)
        taste = sp.csr_matrix(self.taste_[users])
        top = row_max(taste)
        taste = sp.csr_matrix(sp.diags(1.0 / np.maximum(top, 1e-9)) @ taste)
        friends = sp.csr_matrix(self.ties_[users] @ self.xbin_)
        friends.data = np.log1p(friends.data)
        npr = x.shape[1]
        k = len(self.popular_)  # 0 without products
        ends = np.arange(len(users) + 1) * k
        popular = sp.csr_matrix(
            (np.ones(len(users) * k, np.float32), np.tile(self.popular_, len(users)), ends),
            shape=(len(users), npr),
        )
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
        w = np.array([self.weights_[f] for f in FEATURES], dtype=np.float32)

        def block_deals(lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            block = users[lo : lo + BLOCK_USERS]
            pattern, feats = self.features(block)
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
            return items, probs, reasons

        out = parallel_map(block_deals, range(0, len(users), BLOCK_USERS))
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

        def block_friends(lo: int) -> None:  # fills its own rows of out
            block = users[lo : lo + BLOCK_USERS]
            t = sp.csr_matrix(self.ties_[block])
            eu = np.repeat(np.arange(len(block)), np.diff(t.indptr))
            et, ew = t.indices, t.data
            lens = np.diff(self.xbin_.indptr)[et]
            starts = self.xbin_.indptr[et]
            total = int(lens.sum())
            if not total:
                return
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

        parallel_map(block_friends, range(0, len(users), BLOCK_USERS))
        return out

    def summary(self) -> dict[str, Any]:
        """What the manifest records of the blend."""
        return {
            "weights": {k: round(v, 4) for k, v in self.weights_.items()},
            "intercept": round(self.intercept_, 4),
            "learned": self.learned_,
            "validation": getattr(self, "validation_", None),
            "pair_weights": {k: round(v, 4) for k, v in self.pair_weights_.items()},
            "pair_intercept": round(self.pair_intercept_, 4),
            "pair_learned": self.pair_learned_,
            "join_params": {k: round(v, 4) for k, v in self.join_params().items()},
            # what the service scores pairs with (published as the version's ``gpair`` key)
            "serve_params": {"invite": self.pair_params(), "join": self.join_params()}
            if self.pair_learned_
            else None,
            "pair_validation": getattr(self, "pair_validation_", None),
            "n_deals": self.n_deals,
            "n_ties": self.n_ties,
        }


def _conditional_logit(x: np.ndarray, y: np.ndarray, unit: np.ndarray) -> np.ndarray | None:
    """Weights of ``x`` that rank the positives ``y`` first within each ``unit`` (a user, a
    group): a logistic regression without intercept on features centred per unit, over the
    units with a positive and a negative; None when there are too few."""
    from sklearn.linear_model import LogisticRegression

    _, inv, n = np.unique(unit, return_inverse=True, return_counts=True)
    pos = np.bincount(inv, weights=y.astype(float))
    keep = (pos[inv] > 0) & (pos[inv] < n[inv])
    if keep.sum() < 20 or y[keep].sum() < 10:
        return None
    x, yk, inv = x[keep], y[keep], inv[keep]
    counts = np.maximum(np.bincount(inv), 1)
    mean = np.stack([np.bincount(inv, weights=x[:, j]) for j in range(x.shape[1])], 1)
    xc = x - (mean / counts[:, None])[inv]
    scale = xc.std(axis=0) + 1e-6
    model = LogisticRegression(C=1.0, max_iter=300, fit_intercept=False)
    model.fit(xc / scale, yk)
    return np.asarray(model.coef_[0] / scale, dtype=np.float64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))).astype(np.float32)
