"""``feed evaluate-groups``: the group-buying recommendations scored on held-out groups.

A seeded random share of the groups is held out (:func:`feed.models.groups.split_groups`: no
timestamps needed; the purchases their members made of their products leave the training part
too). :class:`~feed.models.groups.GroupRecs` and every baseline are fitted on the rest, and
three tasks are scored at ``k`` (recall and NDCG, per user or group, with the paired-bootstrap
interval of the model's lift over the best baseline, :func:`feed.evaluation.metrics.lift_interval`):

* **deals**: for a user who started or joined a held-out group, is its product among their
  top-``k`` deals? Baselines: the products with the most groups (``popular``), item-item BM25
  (``itemitem``) and implicit ALS (``als``) over users x products (purchases and memberships).
* **invitees**: for a held-out group, are its members among the initiator's top-``k``
  invitees (ties scored as the service scores them, :mod:`feed.serving.groups`, then, when
  they leave room, friends of friends, :func:`feed.serving.groups.hop_invitees`)? Baselines:
  the initiator's past co-members by count (``co_members``), their ties by strength alone
  (``ties_first``), the users ALS scores highest for the product (``als``).
* **join**: for a user who joined a held-out group (not as its initiator), with every held-out
  group open at once, is that group among their top-``k`` groups to join? The model sees only
  what the service gives the user: the groups fanned out to them (initiators whose published
  ties include them), then the groups fanned out to their strongest ties (friends of friends,
  :data:`feed.serving.groups.HOP_TIES`; tie weight :func:`feed.serving.groups.hop_weight`;
  the service's limits, :func:`feed.serving.groups.hop_groups`).
  Baselines: the same friends' groups by tie strength alone (``friends_first``), every open
  group by its product's popularity (``popular``) and by the user's item-item score for its
  product (``itemitem``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from feed.data import Dataset, load
from feed.evaluation.metrics import lift_interval, ndcg_at_k, recall_at_k
from feed.features.matrices import TrainingData, build
from feed.models.groups import GroupRecs, group_rows, row_topk, split_groups
from feed.serving.groups import (
    GROUP_FEED_MAX,
    HOP_TIES,
    hop_groups,
    hop_invitees,
    pair_scores,
)

TASKS = ("deals", "invitees", "join")
TARGET_LIFT = 1.05  # the bar: the model's metric over the best baseline's


@dataclass
class TaskReport:
    """One task: each method's recall and NDCG, the best baseline and the model's lift."""

    task: str
    n: int  # users (deals, join) or groups (invitees) scored
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    best_baseline: str = ""
    lift: float = math.nan  # model NDCG / best baseline NDCG
    interval: tuple[float, float] = (math.nan, math.nan)  # of lift - 1, 95% paired bootstrap

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "n": self.n,
            "metrics": self.metrics,
            "best_baseline": self.best_baseline,
            "lift": self.lift,
            "lift_interval": list(self.interval),
            "meets_target": bool(self.lift >= TARGET_LIFT),
        }


@dataclass
class GroupReport:
    k: int
    frac: float
    seed: int
    held_groups: int
    tasks: dict[str, TaskReport]
    blend: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "frac": self.frac,
            "seed": self.seed,
            "held_groups": self.held_groups,
            "blend": self.blend,
            "tasks": {name: t.to_json() for name, t in self.tasks.items()},
        }

    def table(self) -> str:
        """A readable table: one row per task and method."""
        lines = [f"{'task':<9} {'method':<14} {'recall@' + str(self.k):>10} "
                 f"{'ndcg@' + str(self.k):>9}"]  # fmt: skip
        for t in self.tasks.values():
            for name, m in t.metrics.items():
                lines.append(f"{t.task:<9} {name:<14} {m['recall']:>10.4f} {m['ndcg']:>9.4f}")
            lo, hi = t.interval
            lines.append(
                f"{t.task:<9} lift over {t.best_baseline}: {t.lift:.3f}x "
                f"(95% CI of lift-1 [{lo:+.3f}, {hi:+.3f}]; n={t.n}; target {TARGET_LIFT}x "
                f"{'met' if t.lift >= TARGET_LIFT else 'missed'})"
            )
        return "\n".join(lines)


def _score(task: str, lists: dict[str, np.ndarray], truth: sp.csr_matrix) -> TaskReport:
    per: dict[str, np.ndarray] = {}
    rep = TaskReport(task, int(truth.shape[0]))
    for name, items in lists.items():
        per[name] = ndcg_at_k(items, truth)
        rep.metrics[name] = {
            "recall": float(np.nanmean(recall_at_k(items, truth))),
            "ndcg": float(np.nanmean(per[name])),
        }
    base = [n for n in lists if n != "model"]
    rep.best_baseline = max(base, key=lambda n: rep.metrics[n]["ndcg"])
    b = rep.metrics[rep.best_baseline]["ndcg"]
    rep.lift = rep.metrics["model"]["ndcg"] / b if b > 0 else math.inf
    ok = np.isfinite(per["model"])
    rep.interval = lift_interval(per["model"][ok], per[rep.best_baseline][ok])
    return rep


def _als(x: sp.csr_matrix, seed: int) -> Any:
    from implicit.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=32, iterations=10, random_state=seed)
    model.fit(sp.csr_matrix(x), show_progress=False)
    return model


def _as_array(a: Any) -> np.ndarray:
    return np.asarray(a.to_numpy() if hasattr(a, "to_numpy") else a)


def _sample(rng: np.random.Generator, n: int, most: int) -> np.ndarray:
    return np.sort(rng.choice(n, most, replace=False)) if n > most else np.arange(n)


def _deals(model: GroupRecs, data: TrainingData, held: Any, k: int, rng: Any, most: int,
           seed: int) -> TaskReport:  # fmt: skip
    u = data.users.to_internal(held["user_id"], strict=False)
    p = data.products.to_internal(held["product_id"], strict=False)
    ok = (u >= 0) & (p >= 0)
    users = np.unique(u[ok])
    users = users[_sample(rng, len(users), most)]
    npr = len(data.products)
    truth = sp.csr_matrix((np.ones(ok.sum(), np.float32), (u[ok], p[ok])), (data.n_users, npr))
    truth = sp.csr_matrix(truth[users])
    truth.data[:] = 1.0
    als = _als(model.x_, seed)
    a_items, _ = als.recommend(users, model.x_[users], N=k, filter_already_liked_items=False)
    cf_items, _ = row_topk(model.x_[users] @ model.sim_, k)
    lists = {
        "model": model.deals(users, k)[0],
        "popular": np.tile(np.argsort(-model.popularity_, kind="stable")[:k], (len(users), 1)),
        "itemitem": cf_items,
        "als": _as_array(a_items).astype(np.int64),
    }
    return _score("deals", lists, truth)


def _invitees(model: GroupRecs, data: TrainingData, train: Dataset, held: Any, k: int,
              rng: Any, most: int, seed: int) -> TaskReport:  # fmt: skip
    members = held[~held["initiator"].to_numpy()]
    gids = members["group_id"].unique()
    starters = held[held["initiator"].to_numpy()].set_index("group_id")
    gids = gids[_sample(rng, len(gids), most)]
    init = data.users.to_internal(starters.loc[gids, "user_id"], strict=False)
    prod = data.products.to_internal(starters.loc[gids, "product_id"], strict=False)
    keep = (init >= 0) & (prod >= 0)
    gids, init, prod = gids[keep], init[keep], prod[keep]
    row = {g: i for i, g in enumerate(gids)}
    m = members[members["group_id"].isin(row).to_numpy()]
    mu = data.users.to_internal(m["user_id"], strict=False)
    mr = m["group_id"].map(row).to_numpy()
    ok = mu >= 0
    truth = sp.csr_matrix(
        (np.ones(ok.sum(), np.float32), (mr[ok], mu[ok])), (len(gids), data.n_users)
    )
    truth.data[:] = 1.0
    # the model: the initiator's published ties, scored by the pair model (published tie
    # probabilities and the candidates' affinity for the product, as the service scores them)
    ties, weights = model.tie_items_[init], model.tie_probs_[init]
    params = model.pair_params() if model.pair_learned_ else None
    valid = ties >= 0
    t_flat = np.where(valid, ties, 0).ravel()
    p_flat = np.repeat(prod, ties.shape[1])
    affm = model.affinity_matrix(np.unique(ties[valid]))
    a = np.asarray(affm[t_flat, p_flat]).ravel().reshape(ties.shape)
    cat = model.category_share(affm, t_flat, p_flat).reshape(ties.shape)
    s = np.where(valid, pair_scores(weights, a, params, cat), -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    model_items = np.where(np.take_along_axis(s, order, 1) > -np.inf,
                           np.take_along_axis(ties, order, 1), -1)  # fmt: skip
    _add_hop_invitees(model, model_items, init, prod, params)
    # past co-members of the initiator in the training groups, by count
    rows = group_rows(train)
    rows = rows[~rows["initiator"].to_numpy()]
    a_i = data.users.to_internal(rows["initiator_id"], strict=False)
    b_i = data.users.to_internal(rows["user_id"], strict=False)
    ok2 = (a_i >= 0) & (b_i >= 0)
    co = sp.csr_matrix(
        (np.ones(2 * ok2.sum(), np.float32),
         (np.r_[a_i[ok2], b_i[ok2]], np.r_[b_i[ok2], a_i[ok2]])),
        (data.n_users, data.n_users),
    )  # fmt: skip
    co.sum_duplicates()
    co_items, _ = row_topk(co[init], k)
    tie_items = ties[:, :k]
    # ALS: the users scoring highest for the product
    als = _als(model.x_, seed)
    uf, itf = _as_array(als.user_factors), _as_array(als.item_factors)
    als_items = np.concatenate(
        [row_topk(sp.csr_matrix(np.maximum(itf[prod[lo : lo + 256]] @ uf.T, 1e-9)), k)[0]
         for lo in range(0, len(prod), 256)]
    ) if len(prod) else np.zeros((0, k), np.int64)  # fmt: skip
    lists = {"model": model_items, "co_members": co_items, "ties_first": tie_items,
             "als": als_items}  # fmt: skip
    return _score("invitees", lists, truth)


def _published_ties(model: GroupRecs, u: int) -> dict[int, float]:
    t, w = model.tie_items_[u], model.tie_probs_[u]
    return dict(zip(t[t >= 0].tolist(), w[t >= 0].tolist(), strict=True))


def _add_hop_invitees(model: GroupRecs, items: np.ndarray, init: np.ndarray, prod: np.ndarray,
                      params: Any) -> None:  # fmt: skip
    """Fill each group's list (``items``, -1 padded, in place) past the initiator's ties with
    friends of friends (:func:`feed.serving.groups.hop_invitees`), scored by the same pair
    model, as the service does."""
    found: list[tuple[int, dict[int, float]]] = []
    for g, i in enumerate(init.tolist()):
        room = int((items[g] < 0).sum())
        if not room:
            continue
        ties = _published_ties(model, i)
        theirs = [_published_ties(model, v) for v in list(ties)[:HOP_TIES]]
        hop = hop_invitees(ties, theirs, {i})
        if hop:
            found.append((g, hop))
    if not found:
        return
    users = np.unique(np.concatenate([np.fromiter(h, np.int64) for _, h in found]))
    affm = model.affinity_matrix(users)
    for g, hop in found:
        cand = np.fromiter(hop, np.int64, len(hop))
        p = np.full(len(cand), prod[g])
        a = np.asarray(affm[cand, p]).ravel()
        s = pair_scores(np.fromiter(hop.values(), float, len(hop)), a, params,
                        model.category_share(affm, cand, p))  # fmt: skip
        n = int((items[g] >= 0).sum())
        top = cand[np.lexsort((cand, -s))][: items.shape[1] - n]
        items[g, n : n + len(top)] = top


def _group_feed(fanned: sp.csr_matrix, by_init: dict[int, list[int]], v: int,
                u: int) -> list[tuple[int, float]]:  # fmt: skip
    """Tie ``v``'s group feed as user ``u`` reads it: ``(group, fanned-out weight)`` of the
    groups whose initiators' published ties include ``v`` (``u``'s own groups left out), in
    group order (every held-out group is open at once: no expiry orders them)."""
    fl, fh = fanned.indptr[v], fanned.indptr[v + 1]
    out = [(gi, p_iv)
           for init, p_iv in zip(fanned.indices[fl:fh].tolist(), fanned.data[fl:fh].tolist(),
                                 strict=True) if init != u
           for gi in by_init.get(init, ())]  # fmt: skip
    out.sort()
    return out


def _join(model: GroupRecs, data: TrainingData, held: Any, k: int, rng: Any,
          most: int) -> TaskReport:  # fmt: skip
    starters = held[held["initiator"].to_numpy()].reset_index(drop=True)
    g_init = data.users.to_internal(starters["user_id"], strict=False)
    g_prod = data.products.to_internal(starters["product_id"], strict=False)
    pool = np.flatnonzero((g_init >= 0) & (g_prod >= 0))
    g_init, g_prod = g_init[pool], g_prod[pool]
    gindex = {g: i for i, g in enumerate(starters["group_id"].to_numpy()[pool])}
    joins = held[~held["initiator"].to_numpy()]
    ju = data.users.to_internal(joins["user_id"], strict=False)
    jg = joins["group_id"].map(gindex).fillna(-1).to_numpy(np.int64)
    ok = (ju >= 0) & (jg >= 0)
    users = np.unique(ju[ok])
    users = users[_sample(rng, len(users), most)]
    urow = {int(u): i for i, u in enumerate(users)}
    sel = ok & np.isin(ju, users)
    truth = sp.csr_matrix(
        (np.ones(sel.sum(), np.float32), ([urow[int(u)] for u in ju[sel]], jg[sel])),
        (len(users), len(pool)),
    )
    truth.data[:] = 1.0
    by_init: dict[int, list[int]] = {}
    for gi, i in enumerate(g_init.tolist()):
        by_init.setdefault(i, []).append(gi)
    by_prod: dict[int, list[int]] = {}
    for gi, p in enumerate(g_prod.tolist()):
        by_prod.setdefault(p, []).append(gi)
    reach = sp.csr_matrix(model.ties_.T)  # column initiator -> row user: the fan-out
    ok_t = model.tie_items_ >= 0
    fanned = sp.csr_matrix(
        (model.tie_probs_[ok_t],
         (model.tie_items_[ok_t], np.nonzero(ok_t)[0])), shape=reach.shape
    )  # fmt: skip  # the published tie probabilities, as the fan-out carries them
    params = model.join_params() if model.pair_learned_ else None
    affm = model.affinity_matrix(users)
    popular = np.argsort(-model.popularity_[g_prod], kind="stable")[:k]
    cf = sp.csr_matrix(model.x_[users] @ model.sim_)
    out = {n: np.full((len(users), k), -1, np.int64) for n in
           ("model", "friends_first", "popular", "itemitem")}  # fmt: skip
    for i, u in enumerate(users.tolist()):
        lo, hi = reach.indptr[u], reach.indptr[u + 1]
        cand, w = [], []
        prob = dict(zip(fanned.indices[fanned.indptr[u] : fanned.indptr[u + 1]].tolist(),
                        fanned.data[fanned.indptr[u] : fanned.indptr[u + 1]].tolist(),
                        strict=True))  # fmt: skip
        pw = []
        for init, weight in zip(reach.indices[lo:hi], reach.data[lo:hi], strict=True):
            for gi in by_init.get(int(init), ()):
                cand.append(gi)
                w.append(weight)
                pw.append(prob.get(int(init), 0.0))
        # friends of friends' groups: those fanned out to the user's strongest published
        # ties, at the weight of both steps, after the direct ones, with the service's limits
        # (hop_groups: GROUP_FEED_MAX entries read per tie's feed, the best GROUP_FEED_MAX kept)
        feeds = []
        for v, p_uv in zip(model.tie_items_[u][:HOP_TIES].tolist(),
                           model.tie_probs_[u][:HOP_TIES].tolist(), strict=True):  # fmt: skip
            if v < 0:
                break
            feeds.append((p_uv, _group_feed(fanned, by_init, v, u)))
        hop = hop_groups(feeds, set(cand), GROUP_FEED_MAX)
        picked_model: list[int] = []
        for ca_list, weights in ((cand, pw), (list(hop), list(hop.values()))):
            if not ca_list or len(picked_model) >= k:
                continue
            ca = np.array(ca_list)
            a = np.asarray(affm[np.full(len(ca), u), g_prod[ca]]).ravel()
            cs = model.category_share(affm, np.full(len(ca), u), g_prod[ca])
            s = pair_scores(np.array(weights), a, params, cs)
            picked_model += ca[np.lexsort((ca, -s))][: k - len(picked_model)].tolist()
        out["model"][i, : len(picked_model)] = picked_model
        if cand:
            ca, wa = np.array(cand), np.array(w)
            top = ca[np.lexsort((ca, -wa))][:k]
            out["friends_first"][i, : len(top)] = top
        out["popular"][i, : len(popular)] = popular
        lo, hi = cf.indptr[i], cf.indptr[i + 1]
        prods = cf.indices[lo:hi][np.argsort(-cf.data[lo:hi], kind="stable")]
        picked: list[int] = []
        for p in prods.tolist():
            picked += by_prod.get(p, [])[: k - len(picked)]
            if len(picked) >= k:
                break
        out["itemitem"][i, : len(picked)] = picked
    return _score("join", out, truth)


def evaluate_groups(
    dataset: Dataset | str | Path,
    k: int = 10,
    frac: float = 0.2,
    seed: int = 0,
    max_users: int = 2000,
    tasks: tuple[str, ...] = TASKS,
) -> GroupReport:
    """Score the three group-buying tasks (see the module doc) on held-out groups.

    >>> from feed.data.synth import SynthConfig, generate
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = generate(d, SynthConfig(n_users=300, n_posts=400, n_topics=4, seed=1))
    >>> sorted(evaluate_groups(d, k=5, max_users=200).tasks)
    ['deals', 'invitees', 'join']
    """
    ds = dataset if isinstance(dataset, Dataset) else load(dataset)
    if not len(ds.groups):
        raise ValueError("the dataset has no groups (groups.csv): nothing to evaluate")
    part = split_groups(ds, frac, seed)
    data = build(part.train)
    model = GroupRecs(random_state=seed).fit(data)
    rng = np.random.default_rng(seed)
    out: dict[str, TaskReport] = {}
    if "deals" in tasks:
        out["deals"] = _deals(model, data, part.held, k, rng, max_users, seed)
    if "invitees" in tasks:
        out["invitees"] = _invitees(model, data, part.train, part.held, k, rng, max_users, seed)
    if "join" in tasks:
        out["join"] = _join(model, data, part.held, k, rng, max_users)
    held_groups = int(part.held["group_id"].nunique())
    return GroupReport(k, frac, seed, held_groups, out, model.summary())
