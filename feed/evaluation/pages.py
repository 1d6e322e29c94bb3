"""Pages as the service would serve them, built offline: for ``feed evaluate`` (served figures
next to model-only ones) and for choosing a version's page policy on validation.

The page assembly is the service's own (:mod:`feed.serving.ranking`: gather the sources,
filter, pick a diverse page under the policy) over a :class:`~feed.serving.state.VersionTable`
built from training data, and user states holding what a just-published version knows of each
user: the candidate list exactly as published (scores scaled per row and quantised to a byte,
as the candidate blob carries them), nothing seen, liked or hidden since. No real-time events,
no posts created since training: the page a user gets on first opening the app after a
publish.

Examples
--------
>>> items = np.array([[4, 2, -1]])
>>> q_items, q_scores, _ = published(items, np.array([[2.0, 1.0, -np.inf]]), np.zeros((1, 3)))
>>> q_items.tolist(), [round(float(x), 3) for x in q_scores[0]]
([[4, 2, -1]], [1.0, 0.051, 0.0])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from feed import contract as c
from feed.evaluation.metrics import (
    author_diversity,
    author_diversity_per_user,
    category_diversity,
    ndcg_at_k,
    purchase_recall_at_k,
)
from feed.features.matrices import TrainingData
from feed.serving.policy import FRESHNESS_GRID, PATHS, PagePolicy, along
from feed.serving.ranking import (
    RANKING_DEFAULTS,
    Pool,
    diverse_page,
    filtered,
    gather,
    pool_size,
)
from feed.serving.state import FreshPosts, UserState, VersionTable

#: Relevance a page policy may cost at most on validation: served >= this x the model-only
#: lists', or x the pages without any discount when those serve less (:func:`cost_base`).
MAX_COST = 0.98
#: The freshness weight moves from the service's usual one only for this relative gain.
FRESHNESS_GAIN = 0.01
#: Pages must beat the reference's mean author diversity on validation by this many standard
#: errors of the per-user difference (the noise of a few hundred validation users).
DIVERSITY_SE = 1.0
#: Halvings of the bisection on a path's strength (:func:`search_policy`): 1/64 resolution.
SEARCH_STEPS = 6
#: Validation users a policy is judged on at most (a page costs about a millisecond to build).
POLICY_USERS = 400


def published(
    items: np.ndarray, scores: np.ndarray, reasons: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate lists as a published version serves them: scores scaled to [0.05, 1] per row
    (:func:`feed.contract.unit_scores`) and quantised to a byte (the candidate blob's)."""
    unit = _quantised(c.unit_scores(scores))
    return items, np.where(items >= 0, unit, 0.0), np.where(items >= 0, reasons, 0)


def _quantised(scores: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] as a candidate blob stores them (a byte each), in float64 as
    :func:`feed.contract.decode_candidates` reads them back: ties between discounted scores
    must break as they do in the service."""
    return np.rint(np.clip(scores, 0.0, 1.0).astype(np.float64) * 255) / 255.0


def version_table(
    data: TrainingData,
    trending: tuple[np.ndarray, np.ndarray] | None = None,
    policy: PagePolicy | None = None,
    version: str = "offline",
) -> VersionTable:
    """The post table a version trained on ``data`` publishes (``trending``: its trending
    list's post indices and scores in [0, 1], quantised here as the trending blob is)."""
    pp = data.post_products.tocsr()
    product_ids = data.products.external
    linked = [
        [str(product_ids[j]) for j in pp.indices[pp.indptr[i] : pp.indptr[i + 1]]]
        for i in range(data.n_posts)
    ]
    created = [None if t != t else float(t) for t in data.post_created.tolist()]
    cats = data.product_categories
    t_items, t_scores = trending if trending is not None else (np.zeros(0, np.int64), np.zeros(0))
    return VersionTable(
        version,
        [str(p) for p in data.posts.external],
        [str(a) for a in data.users.to_external(data.post_author)],
        created,
        [str(x) for x in data.post_category],
        linked,
        np.asarray(t_items, dtype=np.int64),
        _quantised(np.asarray(t_scores, dtype=np.float64)),
        {str(p): str(cat) for p, cat in zip(product_ids, cats, strict=False) if cat},
        policy or PagePolicy(),
    )


def out_of_stock(data: TrainingData) -> frozenset[str]:
    """Products marked out of stock in the training data's products table."""
    ds = data.source
    if ds is None or not len(ds.products):
        return frozenset()
    sold = ds.products[~ds.products["in_stock"].astype(bool)]
    return frozenset(str(p) for p in sold["product_id"])


@dataclass
class PageBuilder:
    """Builds served pages of a version's users (see the module doc).

    ``cfg`` holds the ranking settings (:data:`~feed.serving.ranking.RANKING_DEFAULTS`, what
    the service uses unless configured otherwise); ``now`` is the moment of serving (the
    training data's "now" by default: the freshness bonus as right after a publish).
    """

    data: TrainingData
    table: VersionTable
    now: float
    oos: frozenset[str] = frozenset()
    cfg: Mapping[str, Any] = field(default_factory=lambda: dict(RANKING_DEFAULTS))

    @classmethod
    def of(
        cls,
        data: TrainingData,
        trending: tuple[np.ndarray, np.ndarray] | None = None,
        now: float | None = None,
    ) -> PageBuilder:
        when = data.now if now is None else now
        table = version_table(data, trending)
        return cls(data, table, float(when) if when == when else 0.0, out_of_stock(data))

    def pools(
        self,
        users: Sequence[str],
        items: np.ndarray,
        scores: np.ndarray,
        reasons: np.ndarray,
        limit: int,
        policy: PagePolicy,
        now: float | None = None,
    ) -> Iterator[Pool]:
        """Each user's (external ids) filtered candidate pool: the best ``pool_size(limit)``
        offers, with ``policy``'s freshness bonus as the service would rank them at ``now``
        (default, and for a NaN ``now``, the "now" of data without timestamps: the builder's)."""
        glob = {"fresh": FreshPosts.build({}), "oos": self.oos}
        depth = pool_size(limit, self.cfg)
        # a NaN "now" would make every score NaN, and every pool empty
        when = now if now is not None and math.isfinite(now) else self.now
        q_items, q_scores, q_reasons = published(items, scores, reasons)
        for uid, row_i, row_s, row_r in zip(users, q_items, q_scores, q_reasons, strict=True):
            ok = row_i >= 0
            state = UserState(
                candidates=(row_i[ok], row_s[ok], row_r[ok].astype(np.uint8)),
                seen=set(),
                liked=set(),
                realtime=[],
                hidden=set(),
                muted=set(),
                follows=set(),
                unfollows=set(),
                bought=set(),
            )
            offers = gather(state, self.table, glob, self.cfg)
            yield filtered(str(uid), offers, state, self.table, glob, self.cfg, when, depth, policy)

    def page(self, pool: Pool, limit: int, policy: PagePolicy) -> np.ndarray:
        """The page's post indices (-1 padded to ``limit``); ``pool`` is left as it was."""
        fresh = Pool(pool.rows, pool.table, pool.reasons, pool.fresh)  # candidates built anew
        picked = diverse_page(fresh, limit, policy, self.table.shares)
        out = np.full(limit, -1, dtype=np.int64)
        idx = [self.table.index.get(cand.post_id, -1) for cand in picked]
        out[: len(idx)] = idx
        return out

    def pages(
        self,
        users: Sequence[str],
        items: np.ndarray,
        scores: np.ndarray,
        reasons: np.ndarray,
        limit: int,
        policy: PagePolicy,
    ) -> np.ndarray:
        """Served pages (users x ``limit`` post indices, -1 padded) under ``policy``."""
        pools = self.pools(users, items, scores, reasons, limit, policy)
        rows = [self.page(p, limit, policy) for p in pools]
        return np.stack(rows) if rows else np.zeros((0, limit), dtype=np.int64)


def diversity(pages: np.ndarray, data: TrainingData) -> tuple[float, float]:
    """(author diversity, category diversity) of lists of post indices."""
    return (
        author_diversity(pages, data.post_author),
        category_diversity(pages, data.post_category),
    )


@dataclass
class Truth:
    """What users did after a cut, to score their lists: ``likes`` (users x posts) and
    ``purchases`` (users x products, linked by ``post_products``), by ``metric``
    (``like_ndcg`` or ``purchase_recall``)."""

    likes: sp.csr_matrix
    purchases: sp.csr_matrix
    post_products: sp.csr_matrix
    metric: str

    def score(self, lists: np.ndarray) -> float:
        """The mean per-user metric of ``lists`` (users x k post indices, -1 padded)."""
        if self.metric == "like_ndcg":
            values = ndcg_at_k(lists, self.likes)
        else:
            values = purchase_recall_at_k(lists, self.purchases, self.post_products)
        values = values[np.isfinite(values)]
        return float(values.mean()) if len(values) else 0.0


@dataclass
class PolicyChoice:
    """The page policy chosen on validation, with every option's figures."""

    policy: PagePolicy
    model_only: float  # the validation metric of the model's own top-k lists
    reference_diversity: float  # the reference lists' author diversity
    options: list[dict[str, Any]]
    target: float = math.nan  # author diversity the pages must reach (reference + margin)
    #: the strength re-judged on the pages the fitted version serves (:func:`calibrate`)
    calibration: dict[str, Any] | None = None

    def chosen(self) -> Option:
        """The option validation chose (before :func:`calibrate`)."""
        policy = self.calibration["validation_policy"] if self.calibration else self.policy
        return next(o for o in self.options if o["policy"] == policy.to_json())

    def summary(self) -> dict[str, Any]:
        chosen = self.chosen()
        out = {
            "policy": self.policy.to_json(),
            "model_only": round(self.model_only, 5),
            "served": round(chosen["served"], 5),
            "author_diversity": round(chosen["author_diversity"], 4),
            "reference_diversity": round(self.reference_diversity, 4),
            "target_diversity": round(self.target, 4),
            "max_cost": MAX_COST,
            "options_tried": len(self.options),
        }
        if self.calibration:
            cal = dict(self.calibration)
            cal["validation_policy"] = cal["validation_policy"].to_json()
            out["served_calibration"] = cal
        return out


#: An option: a policy's figures on validation (``policy`` as JSON, ``served``,
#: ``author_diversity``; the search adds ``path`` and ``strength``).
Option = dict[str, Any]


def cost_base(model_only: float, plain: float) -> float:
    """What a policy's cost is measured from: the model-only lists' metric, or the pages'
    without any discount (``plain``) when they serve less. The pages lose some relevance
    before any discount (sold-out and own posts are never served, scores are published in
    8 bits); that is no cost of the policy, and counting it would leave no room for
    diversity: on a timestamp-free generated dataset the undiscounted pages were already at
    0.981x, and every discount was out of bounds.

    >>> cost_base(0.10, 0.098), cost_base(0.10, 0.11)
    (0.098, 0.1)
    """
    return min(model_only, plain)


def search_policy(
    judge: Callable[[PagePolicy], Option],
    model_only: float,
    target: float,
    freshness_weight: float = PagePolicy().freshness_weight,
    paths: Sequence[str] = tuple(PATHS),
    steps: int = SEARCH_STEPS,
) -> tuple[Option, list[Option]]:
    """The lightest intervention whose pages reach ``target`` author diversity within the
    cost bound, and every option judged.

    No discount at all when that already reaches the target. Otherwise, along each path of
    :data:`~feed.serving.policy.PATHS` whose strongest policy reaches the target, a bisection
    on the strength (``steps`` halvings) finds the weakest policy that still does; of these
    (one per path), the one serving best among those within :data:`MAX_COST` x
    :func:`cost_base` wins. When none reaches the target within the cost: along each path a
    bisection on the cost finds the strongest policy still within it, and the most diverse
    option within it wins (no discount at least is, by :func:`cost_base`). Before that
    second search, only the paths' strongest ends were tried there, so a target out of reach
    meant no discount at all: on a 17,000-post tag-author set whose reference (ALS's lists,
    0.221) was out of reach, the pages stayed at 0.076 author diversity, below EASE's 0.117.
    ``judge(policy)`` gives a policy's option (its pages' served metric and author diversity
    on validation).
    """
    options: list[Option] = []

    def run(path: str, strength: float) -> Option:
        option = {**judge(along(path, strength, freshness_weight)), "path": path}
        option["strength"] = round(strength, 6)
        options.append(option)
        return option

    def meets(o: Option) -> bool:
        return bool(o["author_diversity"] >= target)

    plain = run(paths[0], 0.0) if paths else judge(along("author", 0.0, freshness_weight))
    base = cost_base(model_only, plain["served"])

    def cheap(o: Option) -> bool:
        return bool(o["served"] >= MAX_COST * base)

    if meets(plain):
        return plain, options
    lightest = []
    for path in paths:
        hi = run(path, 1.0)
        if not meets(hi):
            continue
        lo_s, hi_s = 0.0, 1.0
        for _ in range(steps):
            mid = run(path, (lo_s + hi_s) / 2)
            if meets(mid):
                hi, hi_s = mid, (lo_s + hi_s) / 2
            else:
                lo_s = (lo_s + hi_s) / 2
        lightest.append(hi)
    within = [o for o in lightest if cheap(o)]
    if within:
        return max(within, key=lambda o: (o["served"], -o["strength"])), options
    # none reaches the target within the cost: along each path, the strongest policy still
    # within it (a bisection on the cost, below the path's lightest reaching policy if any)
    reaching = {o["path"]: o["strength"] for o in lightest}
    for path in paths:
        lo_s, hi_s = 0.0, reaching.get(path, 1.0)
        for _ in range(steps):
            mid = (lo_s + hi_s) / 2
            if cheap(run(path, mid)):
                lo_s = mid
            else:
                hi_s = mid
    affordable = [o for o in options if cheap(o)] or [plain]
    return max(affordable, key=lambda o: (o["author_diversity"], o["served"])), options


def choose_policy(
    builder: PageBuilder,
    users: Sequence[str],
    lists: tuple[np.ndarray, np.ndarray, np.ndarray],
    truth: Truth,
    k: int,
    reference: float | np.ndarray,
    now: float | None = None,
    paths: Sequence[str] = tuple(PATHS),
) -> PolicyChoice:
    """The lightest page policy whose pages are at least as author-diverse as the reference
    lists within the cost bound (served metric at least :data:`MAX_COST` x the model-only
    lists'): :func:`search_policy`. Relevance decides, and variety is bought only as far as
    the reference asks (the least intervention is also the least exposed to noise in a small
    validation).

    ``reference``: the reference lists' (the best classic baseline's) author diversity, per
    user (rows as ``users``) or as a mean. Per user, the target is their mean plus
    :data:`DIVERSITY_SE` standard errors of the per-user difference between the pages' (with
    no discount) and the reference's diversity: the pages must beat the reference by more
    than the validation's noise, so that they still do on other users.

    The freshness weight is chosen first, on pages without variety rules, among
    :data:`~feed.serving.policy.FRESHNESS_GRID`: the service's usual weight unless another
    serves :data:`FRESHNESS_GAIN` better. The winner is tried once more with
    ``no_adjacent_author``, kept only when the winner misses the target and it does not.

    ``lists``: each user's ranked candidates (items, scores, reason codes); ``truth``: what
    ``users`` did after the cut, and the metric.
    """
    items, scores, reasons = lists
    model_only = truth.score(items[:, :k])
    authors = builder.data.post_author

    def pages_of(policy: PagePolicy, pools: list[Pool]) -> np.ndarray:
        return np.stack([builder.page(p, k, policy) for p in pools])

    def option(policy: PagePolicy, pools: list[Pool]) -> Option:
        pages = pages_of(policy, pools)
        return {
            "policy": policy.to_json(),
            "served": truth.score(pages),
            "author_diversity": author_diversity(pages, authors),
        }

    plain = PagePolicy(1.0, 1.0, 1.0, 1.0, 0, False)
    by_weight = {}
    for weight in FRESHNESS_GRID:  # first the freshness bonus, on pages without variety rules
        policy = replace(plain, freshness_weight=weight)
        pools = list(builder.pools(users, items, scores, reasons, k, policy, now))
        by_weight[weight] = (option(policy, pools)["served"], pools)
    best_w = max(FRESHNESS_GRID, key=lambda w: (by_weight[w][0], -w))
    usual = PagePolicy().freshness_weight  # kept unless another weight is clearly better
    clearly = by_weight[best_w][0] > (1.0 + FRESHNESS_GAIN) * by_weight[usual][0]
    weight = best_w if clearly else usual
    pools = by_weight[weight][1]
    per_user = np.asarray(reference, dtype=np.float64)
    if per_user.ndim:
        ref = float(np.nanmean(per_user)) if len(per_user) else math.nan
        mine = author_diversity_per_user(
            pages_of(replace(plain, freshness_weight=weight), pools), authors
        )
        diff = (mine - per_user)[np.isfinite(mine) & np.isfinite(per_user)]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        target = ref + DIVERSITY_SE * se
    else:
        ref = target = float(reference)
    ref = ref if ref == ref else 0.0
    target = target if target == target else 0.0
    best, options = search_policy(
        lambda p: option(p, pools), model_only, target, weight, paths, SEARCH_STEPS
    )
    adjacent = option(replace(PagePolicy.from_json(best["policy"]), no_adjacent_author=True), pools)
    adjacent.update(path=best.get("path"), strength=best.get("strength"))
    options.append(adjacent)
    if best["author_diversity"] < target and adjacent["author_diversity"] >= target:
        if adjacent["served"] >= MAX_COST * cost_base(model_only, by_weight[weight][0]):
            best = adjacent
    chosen = PagePolicy.from_json(best["policy"])
    return PolicyChoice(chosen, model_only, ref, options, target)


def calibrate(
    choice: PolicyChoice,
    diversity_of: Callable[[PagePolicy], float],
    users: int,
    steps: int = SEARCH_STEPS,
) -> PolicyChoice:
    """The chosen discount made no stronger than the pages the fitted version serves need.

    Validation pages come from out-of-fold scores of sources fitted without the slice; the
    final version's scores lie closer together at the top, so the same discount reorders its
    pages more. On a dataset whose authors are a dozen tags (docs/quality.md) the strength
    chosen on validation (0.625, diversity 0.148 there) spread the served pages to 0.163 and
    cost 4.4% of their NDCG instead of 1.8%. So, along the chosen option's path (its
    adjacency rule and freshness weight kept), a bisection (``steps`` halvings) between no
    discount and the chosen strength finds the weakest one whose served pages
    (``diversity_of(policy)``: the author diversity of the pages the version serves ``users``
    users, the validation users themselves) still reach what validation bought: the target,
    or, when no option reached it within the cost bound, the chosen option's validation
    diversity (on a 17,000-post tag-author set: 4.6% of the served NDCG spent against 2% on
    validation without this).
    Never stronger than validation chose: the relevance bound was judged there, and a
    lighter discount costs no more. Unchanged when nothing was discounted, or when the
    served pages fall short at the chosen strength too."""
    chosen = choice.chosen()
    path, strength = chosen.get("path"), chosen.get("strength") or 0.0
    if path is None or strength <= 0 or choice.calibration is not None:
        return choice
    base = choice.policy
    goal = min(choice.target, chosen["author_diversity"])

    def at(s: float) -> PagePolicy:
        return replace(
            along(path, s, base.freshness_weight), no_adjacent_author=base.no_adjacent_author
        )

    reached = diversity_of(base)
    best, best_div = strength, reached
    if reached >= goal:
        lo, hi = 0.0, strength
        for _ in range(steps):
            mid = (lo + hi) / 2
            got = diversity_of(at(mid))
            if got >= goal:
                hi, best, best_div = mid, mid, got
            else:
                lo = mid
    calibration = {
        "validation_policy": base,
        "validation_strength": round(strength, 6),
        "goal_diversity": round(goal, 4),
        "strength": round(best, 6),
        "served_diversity_at_validation_strength": round(reached, 4),
        "served_diversity": round(best_div, 4),
        "users": users,
    }
    policy = at(best) if best < strength else base
    return replace(choice, policy=policy, calibration=calibration)
