"""The training pipeline: dataset -> features -> models -> per-user candidates -> artifact."""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from feed import __version__, artifacts
from feed.contract import CONTRACT_VERSION, iso_time, post_document, unit_scores
from feed.data import Dataset, load
from feed.evaluation.splits import choose_method
from feed.features.matrices import EngagementWeights, TrainingData, build
from feed.models.base import blocks, parallel_map, topk
from feed.models.default import TrainConfig, make_blend, trending_list
from feed.models.groups import DEAL_REASONS, GroupRecs
from feed.models.ranker import LearnedBlend
from feed.models.sources import (
    Content,
    ItemItem,
)

logger = logging.getLogger(__name__)


def _progress(it: Any, enabled: bool, **kw: Any) -> Any:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, **kw)


def _user_candidates(
    blend: LearnedBlend, data: TrainingData, users: np.ndarray, n: int, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    exclude = data.seen()
    parts = []
    step = 4096  # users per progress step; the blend splits them into parallel batches
    chunks = range(0, len(users), step)
    for lo in _progress(chunks, progress, desc="candidates", unit="x4096 users"):
        parts.append(blend.recommend_with_reasons(users[lo : lo + step], n, exclude))
    if not parts:
        z = np.zeros((0, n))
        return z.astype(np.int64), z.astype(np.float32), z.astype(np.uint8)
    items, scores, reasons = (np.concatenate(p) for p in zip(*parts, strict=True))
    return items, scores, reasons


def _neighbours(
    data: TrainingData, content: Content, item: ItemItem, n: int, max_content_posts: int
) -> tuple[np.ndarray, np.ndarray]:
    """Similar posts: the co-engagement and content neighbour lists fused by rank."""
    npo = data.n_posts
    popularity = np.asarray(data.engagement.getnnz(axis=0)).ravel()
    pool = np.argsort(-popularity, kind="stable")[:max_content_posts]
    pool_vecs = content.post_vectors_[pool]

    def block_of(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = bounds
        rows = np.arange(lo, hi)
        block = np.zeros((hi - lo, npo), dtype=np.float32)
        block += _rank_scores(item.similar_posts(rows), n)
        cv = content.post_vectors_[rows] @ pool_vecs.T
        cdense = np.full((hi - lo, npo), 0.0, dtype=np.float32)
        cdense[:, pool] = cv.toarray()
        cdense[np.arange(hi - lo), rows] = 0.0  # a post is not its own content neighbour
        block += 0.7 * _rank_scores(cdense, n)
        block[np.arange(hi - lo), rows] = -np.inf
        block[block <= 0] = -np.inf
        return topk(block, n)

    parts = parallel_map(block_of, blocks(npo, npo))
    if not parts:
        return np.full((0, n), -1, dtype=np.int64), np.full((0, n), -np.inf, dtype=np.float32)
    items, scores = (np.concatenate(p) for p in zip(*parts, strict=True))
    return items, scores


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


def _rank_scores(block: np.ndarray, n: int, k: float = 20.0) -> np.ndarray:
    """Reciprocal-rank scores of each row's top-``n`` positive entries (0 elsewhere)."""
    block = np.where(block > 0, block, -np.inf).astype(np.float32)
    items, _ = topk(block, n)
    out = np.zeros_like(block)
    rows = np.broadcast_to(np.arange(block.shape[0])[:, None], items.shape)
    ok = items >= 0
    out[rows[ok], items[ok]] = (1.0 / (k + 1 + np.nonzero(ok)[1])).astype(np.float32)
    return out


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

    Returns
    -------
    Path of the written version directory.
    """
    cfg = config or TrainConfig()
    stage = on_stage or (lambda name: None)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    stage("features")
    ds = dataset if isinstance(dataset, Dataset) else load(dataset)
    timings["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    data = build(ds, EngagementWeights())
    if cfg.split == "auto":  # validation mirrors the protocol the data supports
        method, why = choose_method(ds, cfg.val_frac)
        logger.info("validation split: %s (%s)", method, why)
        cfg = replace(cfg, split=method)
    timings["features_s"] = time.perf_counter() - t

    t = time.perf_counter()
    stage("fitting sources")
    blend = make_blend(cfg).fit(data)
    timings["fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    content, item = _side_models(blend, data, ds, cfg)
    timings["fit_side_models_s"] = time.perf_counter() - t

    t = time.perf_counter()
    stage("candidates")
    active = np.flatnonzero(np.diff(data.engagement.indptr) + np.diff(data.follows.indptr) > 0)
    items, scores, reasons = _user_candidates(blend, data, active, cfg.n_candidates, progress)
    timings["candidates_s"] = time.perf_counter() - t

    t = time.perf_counter()
    stage("neighbours")
    nb_items, nb_scores = _neighbours(
        data, content, item, cfg.n_neighbours, cfg.max_content_neighbour_posts
    )
    timings["neighbours_s"] = time.perf_counter() - t

    t = time.perf_counter()
    trend_items, trend_scores = trending_list(blend, data, cfg.n_trending)
    tokens = token_index(content, data)
    timings["tokens_s"] = time.perf_counter() - t

    t = time.perf_counter()
    stage("group deals")
    group_recs, group_arrays = group_lists(data)
    timings["group_deals_s"] = time.perf_counter() - t

    t = time.perf_counter()
    stage("writing")
    data_fp = fingerprint(ds)
    vid = version or new_version_id(data_fp, cfg)
    docs = {"posts": list(post_documents(ds)), "products": list(product_documents(ds))}
    timings["documents_s"] = time.perf_counter() - t
    manifest = _manifest(vid, data_fp, cfg, data, ds, items, nb_items, timings)
    manifest["model"] = blend.summary()
    manifest["group_model"] = group_recs.summary()
    manifest["counts"].update(
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
            "items": items.astype(np.int32),
            "scores": unit_scores(scores),
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
    }
    out = artifacts.write(Path(out_dir) / vid, manifest, arrays, docs)
    logger.info("wrote model version %s to %s", vid, out)
    return out


def group_lists(data: TrainingData) -> tuple[GroupRecs, dict[str, np.ndarray]]:
    """The group-buying lists of every user (:class:`feed.models.groups.GroupRecs`): deals
    (products, scores, reason codes into ``deal_reason_names``, friends as user indices) of
    users with any signal, ties (user indices and weights) of users with any tie, and the
    popular deals of cold users; ``user_ids`` and ``product_ids`` name the indices."""
    recs = GroupRecs().fit(data)
    signal = (
        np.diff(recs.x_.indptr) + np.diff(recs.taste_.indptr) + np.diff(recs.ties_.indptr)
    ) > 0
    users = np.flatnonzero(signal)
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
    timings: dict[str, float],
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
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "metrics": {},
    }
