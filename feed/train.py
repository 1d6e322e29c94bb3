"""The training pipeline: dataset -> features -> models -> per-user candidates -> artifact."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from feed import __version__, artifacts
from feed.contract import (
    CONTRACT_VERSION,
    REASON_CODE,
    iso_time,
    post_document,
    unit_scores,
)
from feed.data import Dataset, load
from feed.distributed import check as check_cluster
from feed.distributed import map_blocks
from feed.evaluation.splits import choose_method
from feed.features.matrices import EngagementWeights, TrainingData, build
from feed.models.base import blocks, parallel_map
from feed.models.candidates import is_global
from feed.models.default import TrainConfig, make_blend
from feed.models.groups import DEAL_REASONS, GroupRecs
from feed.models.ranker import LearnedBlend, WarmStartError, WarmState, trending_list
from feed.models.sources import Content, ItemItem, sparse_topk

logger = logging.getLogger(__name__)


def _progress(it: Any, enabled: bool, **kw: Any) -> Any:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, **kw)


class StageClock:
    """Each stage's wall seconds (``timings``: ``<stage>_s``) and this process's peak resident
    memory by the stage's end (``peak_rss_mb``: a high-water mark, so the stage where it
    rises is the one that needed the memory; Dask workers' memory is their own)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, int] = {}
        self._start = time.perf_counter()

    def split(self, name: str) -> None:
        """Record ``name`` as the time since the current stage began, without ending it."""
        self.timings[f"{name}_s"] = time.perf_counter() - self._start
        # ru_maxrss is in KiB on Linux
        self.peak_rss_mb[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

    def lap(self, name: str) -> None:
        """End stage ``name`` and begin the next."""
        self.split(name)
        self._start = time.perf_counter()


#: Users per task of the candidate stage at most (the blend's merge batches split them finer).
CANDIDATE_BLOCK_USERS = 1024


def _user_candidates(
    blend: LearnedBlend,
    data: TrainingData,
    users: np.ndarray,
    n: int,
    progress: bool,
    cluster: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's top-``n`` candidates with reasons, one task per batch of users the blend
    merges at once (:func:`feed.distributed.map_blocks`: threads here, or the Dask cluster at
    ``cluster``, the blend and the seen posts sent to each worker once)."""
    step = CANDIDATE_BLOCK_USERS
    batches = [
        batch
        for lo in range(0, len(users), step)
        for batch in blend.builder_.batches(users[lo : lo + step], blend.n_posts_)
    ]
    if not batches:
        z = np.zeros((0, n))
        return z.astype(np.int64), z.astype(np.float32), z.astype(np.uint8)
    bar = _progress(None, progress, total=len(batches), desc="candidates", unit="batch")
    try:
        shared = (blend, data.seen(), n)
        done = bar.update if bar is not None else None
        parts = map_blocks(_candidates_of, batches, shared, cluster=cluster, on_done=done)
    finally:
        if bar is not None:
            bar.close()
    items, scores, reasons = (np.concatenate(p) for p in zip(*parts, strict=True))
    return items, scores, reasons


def split_by_activity(
    data: TrainingData, users: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """``users`` (ascending indices) split into those the learned ranker ranks (the ``budget``
    most active) and the rest (:func:`cohort_candidates`), both ascending.

    Activity: a user's newest like or purchase (their interaction count when the data has no
    time, or for users without a timed event, after every timed user), then the count, then the
    lower index. ``budget`` <= 0: no limit."""
    if budget <= 0 or len(users) <= budget:
        return users, users[:0]
    count = np.asarray(data.engagement.getnnz(axis=1), dtype=np.float64)[users]
    count += np.asarray(data.follows.getnnz(axis=1), dtype=np.float64)[users]
    newest = np.full(data.n_users, -np.inf)
    ds = data.source
    if ds is not None:
        for table in (ds.likes, ds.purchases):
            ts = table["ts"].to_numpy(float)
            ok = np.isfinite(ts)
            if ok.any():
                idx = data.users.to_internal(table["user_id"].to_numpy(str)[ok])
                np.maximum.at(newest, idx, ts[ok])
    order = np.lexsort((users, -count, -newest[users]))  # the last key sorts first
    return np.sort(users[order[:budget]]), np.sort(users[order[budget:]])


def _unit_rows(scores: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``unit_scores(scores[order])`` computed a block of rows at a time (its temporaries are
    several copies of what it is given)."""
    out = np.empty((len(order), scores.shape[1]), dtype=np.float32)
    for lo, hi in blocks(len(order), scores.shape[1]):
        out[lo:hi] = unit_scores(scores[order[lo:hi]])
    return out


def cohort_source(blend: LearnedBlend) -> str:
    """The source that ranks the users beyond the ranker's budget (:func:`cohort_candidates`):
    the personal source (not the same list for everyone) with the best validation score of its
    own, else the first personal one, else the first source."""
    names = list(blend.names_)
    personal = [n for n in names if not is_global(blend.sources_[n])] or names
    score = blend.choice_.validation
    return max(personal, key=lambda n: (score.get(f"source:{n}", -np.inf), -personal.index(n)))


def cohort_candidates(
    blend: LearnedBlend, data: TrainingData, users: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of the users beyond the ranker's budget (:func:`split_by_activity`): the
    ranking of one source, :func:`cohort_source`, with its reason (no merge of sources, no
    ranker: a fraction of the learned ranker's cost per user), never a seen post."""
    model = blend.sources_[cohort_source(blend)]
    seen = data.seen()
    step = CANDIDATE_BLOCK_USERS
    parts = parallel_map(
        lambda lo: model.recommend(users[lo : lo + step], n, seen), range(0, len(users), step)
    )
    if not parts:
        z = np.zeros((0, n))
        return z.astype(np.int64), z.astype(np.float32), z.astype(np.uint8)
    items = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts]).astype(np.float32)
    why = np.where(items >= 0, REASON_CODE[model.reason], 0).astype(np.uint8)
    return items, np.where(items >= 0, scores, -np.inf).astype(np.float32), why


def _candidates_of(
    shared: tuple[LearnedBlend, Any, int], users: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task of the candidate stage (a module-level function: Dask sends it by name)."""
    blend, seen, n = shared
    return blend.recommend_with_reasons(users, n, seen)


def _neighbours(
    data: TrainingData,
    content: Content,
    item: ItemItem,
    n: int,
    max_content_posts: int,
    cluster: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Similar posts: the co-engagement and content neighbour lists fused by rank, one task per
    block of posts (:func:`feed.distributed.map_blocks`, as the candidates)."""
    npo = data.n_posts
    popularity = np.asarray(data.engagement.getnnz(axis=0)).ravel()
    pool = np.argsort(-popularity, kind="stable")[:max_content_posts]
    shared = _NeighbourInputs(item, content.post_vectors_, pool, content.post_vectors_[pool], n)
    # the widest row a block holds: its content matches over the pool
    parts = map_blocks(_neighbours_of, list(blocks(npo, len(pool) + n)), shared, cluster=cluster)
    if not parts:
        return np.full((0, n), -1, dtype=np.int64), np.full((0, n), -np.inf, dtype=np.float32)
    items, scores = (np.concatenate(p) for p in zip(*parts, strict=True))
    return items, scores


class _NeighbourInputs(NamedTuple):
    item: ItemItem
    post_vectors: Any  # sparse TF-IDF rows of every post
    pool: np.ndarray  # the posts eligible as content neighbours (the most engaged)
    pool_vectors: Any
    n: int


def _neighbours_of(
    shared: _NeighbourInputs, bounds: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The fused neighbour lists of posts ``[lo, hi)`` (one task of the neighbour stage):
    sparse rows throughout, so a post costs its neighbours and content matches, not the
    catalogue."""
    item, vectors, pool, pool_vecs, n = shared
    lo, hi = bounds
    npo = vectors.shape[0]
    cv = sp.csr_matrix(vectors[lo:hi] @ pool_vecs.T, dtype=np.float32)  # columns: the pool
    content = sp.csr_matrix((cv.data, pool[cv.indices], cv.indptr), shape=(hi - lo, npo))
    fused = _rank_scores(item.similar_posts(np.arange(lo, hi), n), n)
    fused += 0.7 * _rank_scores(_positive(content, lo), n)
    return sparse_topk(_positive(fused, lo), n)


def _positive(m: sp.csr_matrix, lo: int | None = None) -> sp.csr_matrix:
    """``m``'s entries > 0; with ``lo`` (the rows are posts ``lo, lo + 1, ...``), each post's
    own entry dropped too."""
    m = sp.csr_matrix(m, dtype=np.float32, copy=True)
    drop = ~(m.data > 0)
    if lo is not None:
        drop |= m.indices == np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)) + lo
    m.data[drop] = 0
    m.eliminate_zeros()
    return m


TOKEN_INDEX_MAX_TOKENS = 50_000  # most frequent tokens kept in the interests index
TOKEN_INDEX_POSTS = 50  # posts kept per token, best first


def token_index(
    content: Content,
    data: TrainingData,
    max_tokens: int = TOKEN_INDEX_MAX_TOKENS,
    per_token: int = TOKEN_INDEX_POSTS,
) -> dict[str, np.ndarray]:
    """Token -> best posts containing it, for the service's ``interests=`` hint (cold start).

    Tokens are the content model's vocabulary (jieba words, CJK bigrams, English words, product
    categories); a token's posts are ranked by TF-IDF weight times ``1 + log1p(engagement)``.

    Returns
    -------
    dict with ``token`` (str), ``indptr`` (int64, CSR) and ``items`` (int32 post indices).
    """
    vocab = getattr(content.vectorizer_, "vocabulary_", None) or {}
    names = np.empty(len(vocab), dtype=object)
    for tok, j in vocab.items():
        names[j] = tok
    x = content.post_vectors_.tocsc()
    df = np.diff(x.indptr)
    keep = np.argsort(-df, kind="stable")[:max_tokens]
    keep = np.sort(keep[df[keep] > 0]) if len(vocab) else np.zeros(0, dtype=np.int64)
    boost = 1.0 + np.log1p(np.asarray(data.engagement.getnnz(axis=0)).ravel())
    indptr, items = [0], []
    for j in keep.tolist():
        rows = x.indices[x.indptr[j] : x.indptr[j + 1]]
        weight = x.data[x.indptr[j] : x.indptr[j + 1]] * boost[rows]
        best = rows[np.argsort(-weight, kind="stable")[:per_token]]
        items.append(best)
        indptr.append(indptr[-1] + len(best))
    return {
        "token": np.array([names[j] for j in keep.tolist()], dtype=str),
        "indptr": np.asarray(indptr, dtype=np.int64),
        "items": (np.concatenate(items) if items else np.zeros(0)).astype(np.int32),
    }


def _rank_scores(m: sp.csr_matrix, n: int, k: float = 20.0) -> sp.csr_matrix:
    """Reciprocal-rank scores ``1 / (k + 1 + rank)`` of each row's top-``n`` positive entries
    (ranks from 0, ties: the lower column first), as sparse rows."""
    items, _ = sparse_topk(_positive(m), n)
    ok = items >= 0
    rows, rank = np.nonzero(ok)
    return sp.csr_matrix(
        ((1.0 / (k + 1 + rank)).astype(np.float32), (rows, items[ok])), shape=m.shape
    )


def post_documents(ds: Dataset) -> Iterator[dict[str, Any]]:
    """The JSON documents the service returns for posts (:func:`feed.contract.post_document`)."""
    p = ds.posts
    for row in zip(
        p["post_id"],
        p["author_id"],
        p["created_at"],
        p["text"],
        p["title"],
        p["tags"],
        p["product_ids"],
        strict=True,
    ):
        yield post_document(*row)


def product_documents(ds: Dataset) -> Iterator[dict[str, Any]]:
    """The JSON documents the service returns for products (linked products without a row in
    products.csv get a minimal document)."""
    pr = ds.products
    known = set()
    for row in zip(
        pr["product_id"],
        pr["title"],
        pr["category"],
        pr["brand"],
        pr["price"],
        pr["in_stock"],
        pr["merchant_id"],
        strict=True,
    ):
        known.add(row[0])
        yield {
            "product_id": row[0],
            "title": row[1],
            "category": row[2],
            "brand": row[3],
            "price": None if row[4] != row[4] else float(row[4]),
            "in_stock": bool(row[5]),
            **({"merchant_id": row[6]} if row[6] else {}),
        }
    for ids in ds.posts["product_ids"]:
        for pid in ids:
            if pid not in known:
                known.add(pid)
                yield {
                    "product_id": pid,
                    "title": pid,
                    "category": "",
                    "brand": "",
                    "price": None,
                    "in_stock": True,
                }


def fingerprint(ds: Dataset) -> str:
    """A short hash of the dataset's files (or of its tables when it has no directory)."""
    h = hashlib.sha256()
    if ds.path is not None:
        for f in sorted(Path(ds.path).iterdir()):
            if f.suffix in (".csv", ".parquet"):
                h.update(f.name.encode())
                h.update(f.read_bytes())
    else:
        for name in ("posts", "likes", "purchases", "follows"):
            h.update(getattr(ds, name).to_csv(index=False).encode())
    return h.hexdigest()[:16]


def new_version_id(data_fp: str, config: TrainConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    tag = hashlib.sha256((data_fp + repr(asdict(config)) + stamp).encode()).hexdigest()[:6]
    return f"{stamp}-{tag}"


def train(
    dataset: Dataset | str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    progress: bool = False,
    version: str | None = None,
    on_stage: Callable[[str], None] | None = None,
    warm_start: str | Path | None = None,
    cluster: str | None = None,
) -> Path:
    """Train every model on a dataset and write a model version.

    Parameters
    ----------
    dataset : Dataset or path
        A loaded dataset or its directory (validated on load).
    out_dir : path
        The artifacts directory; the version goes to ``out_dir/<version>/``.
    config : TrainConfig, optional
    progress : bool
        Show progress bars (the CLI turns this on).
    version : str, optional
        The version id; by default a timestamp and a hash.
    on_stage : callable, optional
        Called with the name of each stage as it starts: ``features``, ``fitting sources``
        (the sources and the ranker chosen on validation slices), ``candidates``,
        ``neighbours``, ``writing`` (``feed demo`` prints them).
    warm_start : path, optional
        A previous version's directory: reuse its sources' tuned parameters, ranker and page
        policy and start the ALS/BPR fits from its factors, with no validation fit
        (:meth:`~feed.models.ranker.LearnedBlend.fit_warm`); the manifest's ``warm_start``
        says what was reused and how old it is. :class:`~feed.models.ranker.WarmStartError`
        (naming what differs) when the version lacks the stored model, has another contract
        version, or the data or parameters changed the sources, their parameters or the
        ranker's features.
    cluster : str, optional
        A Dask scheduler's address (``tcp://host:8786``): the candidate and neighbour stages
        run on its workers (:mod:`feed.distributed`), with the same arrays as in process.
        :class:`~feed.distributed.ClusterError` before any work when it cannot be used.

    Returns
    -------
    Path of the written version directory.
    """
    cfg = config or TrainConfig()
    stage = on_stage or (lambda name: None)
    clock = StageClock()
    previous = previous_model(warm_start) if warm_start is not None else None
    engine = {"kind": "threads"} if cluster is None else {"kind": "dask", **check_cluster(cluster)}
    stage("features")
    ds = dataset if isinstance(dataset, Dataset) else load(dataset)
    clock.lap("load")
    data = build(ds, EngagementWeights())
    if cfg.split == "auto":  # validation mirrors the protocol the data supports
        method, why = choose_method(ds, cfg.val_frac)
        logger.info("validation split: %s (%s)", method, why)
        cfg = replace(cfg, split=method)
    clock.lap("features")

    stage("fitting sources")
    if previous is None:
        blend = make_blend(cfg).fit(data)
    else:
        blend = make_blend(cfg).fit_warm(data, previous[0], cfg.warm_refit_ranker)
    clock.lap("fit")
    content, item = _side_models(blend, data, ds, cfg)
    clock.lap("fit_side_models")

    stage("candidates")
    active = np.flatnonzero(np.diff(data.engagement.indptr) + np.diff(data.follows.indptr) > 0)
    ranked, cohort = split_by_activity(data, active, cfg.ranked_users)
    parts = [_user_candidates(blend, data, ranked, cfg.n_candidates, progress, cluster)]
    clock.split("candidates_ranked")
    parts.append(cohort_candidates(blend, data, cohort, cfg.n_candidates))
    order = np.argsort(np.concatenate([ranked, cohort]), kind="stable")
    # the artifact's types at once (int32 posts, unit float32 scores): the stages after this
    # one and the writing run beside these arrays, not beside int64/float64 copies of them
    items = np.concatenate([p[0].astype(np.int32, copy=False) for p in parts])[order]
    scores = _unit_rows(np.concatenate([p[1] for p in parts]), order)
    reasons = np.concatenate([p[2] for p in parts])[order]
    del parts
    clock.lap("candidates")

    stage("neighbours")
    nb_items, nb_scores = _neighbours(
        data, content, item, cfg.n_neighbours, cfg.max_content_neighbour_posts, cluster
    )
    clock.lap("neighbours")

    trend_items, trend_scores = trending_list(blend.sources_, data, cfg.n_trending)
    tokens = token_index(content, data)
    clock.lap("tokens")

    stage("group deals")
    group_recs, group_arrays = group_lists(data)
    clock.lap("group_deals")

    stage("writing")
    data_fp = fingerprint(ds)
    vid = version or new_version_id(data_fp, cfg)
    docs = {"posts": list(post_documents(ds)), "products": list(product_documents(ds))}
    clock.lap("documents")
    manifest = _manifest(vid, data_fp, cfg, data, ds, items, nb_items, clock)
    manifest["model"] = blend.summary()
    manifest["engine"] = engine  # where the candidate and neighbour stages ran
    manifest["group_model"] = group_recs.summary()
    state = blend.warm_state(data)
    state.meta["learned"] = (
        previous[0].meta["learned"]
        if previous is not None
        else {"version": vid, "created": manifest["created"]}
    )
    if previous is not None:
        manifest["warm_start"] = warm_record(blend, previous, manifest["created"])
    manifest["counts"].update(
        ranked_users=len(ranked),
        cohort_users=len(cohort),
        post_docs=len(docs["posts"]),
        product_docs=len(docs["products"]),
        tokens=len(tokens["token"]),
        deal_users=len(group_arrays["deal_users"]),
        tie_users=len(group_arrays["tie_users"]),
    )
    arrays = {
        "posts": {
            "post_id": data.posts.external,
            "author_id": ds.posts["author_id"].to_numpy(str),
            "created_at": data.post_created,
            "category": data.post_category,
            "product_ids": np.array(["|".join(x) for x in ds.posts["product_ids"]], dtype=str),
        },
        "candidates": {
            "users": data.users.to_external(active),
            "items": items,
            "scores": scores,
            "reasons": reasons.astype(np.uint8),
        },
        "neighbours": {"items": nb_items.astype(np.int32), "scores": unit_scores(nb_scores)},
        "trending": {"items": trend_items.astype(np.int32), "scores": trend_scores},
        "follows": {
            "follower": ds.follows["follower_id"].to_numpy(str),
            "followee": ds.follows["followee_id"].to_numpy(str),
        },
        "purchases": {
            "user": ds.purchases["user_id"].to_numpy(str),
            "product": ds.purchases["product_id"].to_numpy(str),
        },
        "tokens": tokens,
        "groups": group_arrays,
        "model": state.arrays,
    }
    stored = {artifacts.MODEL_JSON: (json.dumps(state.meta, indent=1) + "\n").encode()}
    if state.ranker is not None:
        stored[artifacts.MODEL_RANKER] = state.ranker
    out = artifacts.write(Path(out_dir) / vid, manifest, arrays, docs, stored)
    logger.info("wrote model version %s to %s", vid, out)
    return out


def previous_model(path: str | Path) -> tuple[WarmState, dict[str, Any]]:
    """The stored model of the version at ``path`` and its manifest, to start a warm fit
    from; :class:`~feed.models.ranker.WarmStartError` naming what is wrong when it cannot
    (not a version, corrupt, another contract version, no stored model)."""
    try:
        art = artifacts.read(path)
        meta, arrays, ranker = art.stored_model()
    except artifacts.ArtifactError as e:
        raise WarmStartError(f"cannot warm-start from {path}: {e}") from e
    contract = art.manifest.get("contract_version")
    if contract != CONTRACT_VERSION:
        raise WarmStartError(
            f"cannot warm-start from {path}: it was written for contract version {contract}, "
            f"this feed writes {CONTRACT_VERSION}"
        )
    meta.setdefault("learned", {"version": art.version, "created": art.manifest.get("created")})
    return WarmState(meta, arrays, ranker), art.manifest


def warm_record(
    blend: LearnedBlend, previous: tuple[WarmState, dict[str, Any]], created: str
) -> dict[str, Any]:
    """The manifest's ``warm_start``: the version started from, its age, and what was reused
    (and since when: ``learned`` is the version whose validation fits chose the ranker)."""
    meta, manifest = previous[0].meta, previous[1]

    def age_days(then: str | None) -> float | None:
        if not then:
            return None
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        delta = datetime.strptime(created, fmt) - datetime.strptime(then, fmt)
        return round(delta.total_seconds() / 86_400, 4)

    warm = blend.summary()["warm_start"] or {}
    kind = meta["choice"]["kind"]
    skipped = ["source tuning", "ranker choice", "page-policy search"]
    if warm.get("ranker") == "refitted":
        ranker = f"ranker choice ({kind}) and parameters, refitted on this data's validation"
    else:
        ranker = f"ranker ({kind})"
        skipped.insert(0, "validation slices")
    return {
        "from": manifest.get("version"),
        "from_created": manifest.get("created"),
        "age_days": age_days(manifest.get("created")),
        "learned": meta["learned"],
        "learned_age_days": age_days(meta["learned"].get("created")),
        "reused": ["sources and their tuned parameters", ranker, "page policy"],
        "skipped": skipped,
        "ranker": warm.get("ranker"),
        "validation_users": blend.summary()["validation_users"],
        "factors": warm.get("factors", {}),
        "share_of_iterations": warm.get("share_of_iterations"),
    }


def group_lists(data: TrainingData) -> tuple[GroupRecs, dict[str, np.ndarray]]:
    """The group-buying lists of every user (:class:`feed.models.groups.GroupRecs`): deals
    (products, scores, reason codes into ``deal_reason_names``, friends as user indices) of
    users with any signal, ties (user indices and weights) of users with any tie, and the
    popular deals of cold users; ``user_ids`` and ``product_ids`` name the indices."""
    recs = GroupRecs().fit(data)
    signal = (
        np.diff(recs.x_.indptr) + np.diff(recs.taste_.indptr) + np.diff(recs.ties_.indptr)
    ) > 0
    users = np.flatnonzero(signal) if len(data.products) else np.zeros(0, np.int64)  # no deals
    items, scores, reasons = recs.deals(users)
    friends = recs.deal_friends(users, items)
    has_ties = np.flatnonzero(recs.tie_items_[:, 0] >= 0)
    arrays = {
        "user_ids": data.users.external.astype(str),
        "product_ids": data.products.external.astype(str),
        "deal_reason_names": np.array(DEAL_REASONS, dtype=str),
        "deal_users": users.astype(np.int32),
        "deal_items": items.astype(np.int32),
        "deal_scores": scores.astype(np.float32),
        "deal_reasons": reasons.astype(np.uint8),
        "deal_friends": friends.astype(np.int32),
        "tie_users": has_ties.astype(np.int32),
        "tie_items": recs.tie_items_[has_ties].astype(np.int32),
        "tie_weights": recs.tie_probs_[has_ties].astype(np.float32),  # the pair model's tie part
        "popular_items": recs.popular_.astype(np.int32),
        "popular_scores": recs.popular_scores_.astype(np.float32),
    }
    return recs, arrays


def _side_models(
    blend: LearnedBlend,
    data: TrainingData,
    ds: Dataset,
    cfg: TrainConfig,
) -> tuple[Content, ItemItem]:
    """Content and co-engagement models for neighbours and tokens (the default model's own
    when it has them)."""
    fitted = blend.sources_
    content = fitted.get("content") or Content(min_df=cfg.content_min_df).fit(data)
    item = fitted.get("itemknn") or ItemItem(K=cfg.item_k).fit(data)
    return content, item  # type: ignore[return-value]


def _manifest(
    vid: str,
    data_fp: str,
    cfg: TrainConfig,
    data: TrainingData,
    ds: Dataset,
    items: np.ndarray,
    nb_items: np.ndarray,
    clock: StageClock,
) -> dict[str, Any]:
    import implicit
    import sklearn

    return {
        "version": vid,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "contract_version": CONTRACT_VERSION,
        "data": {
            "path": str(ds.path) if ds.path else None,
            "fingerprint": data_fp,
            "rows": dict(ds.counts),
            "now": iso_time(data.now),
        },
        "params": asdict(cfg),
        "libraries": {
            "shopfeed": __version__,
            "implicit": implicit.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "counts": {
            "users": int(items.shape[0]),
            "candidates": int((items >= 0).sum()),
            "posts": data.n_posts,
            "followers": int(ds.follows["follower_id"].nunique()),
            "buyers": int(ds.purchases["user_id"].nunique()),
            "neighbour_posts": int((nb_items[:, 0] >= 0).sum()) if len(nb_items) else 0,
        },
        "timings": {k: round(v, 3) for k, v in clock.timings.items()},
        "peak_rss_mb": clock.peak_rss_mb,
        "metrics": {},
    }
