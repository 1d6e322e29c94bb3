"""Publish a model version from disk into Redis, then (optionally) make it live.

The order makes interruption safe: the registry marks the version ``publishing`` first; every
key is written in pipelined batches; the keys are counted against the manifest; only then is
the version marked ``ready`` and, with ``activate``, switched live in one ``SET``. A publish
killed half-way leaves a ``publishing`` version that cannot be activated, is listed as such,
and is removed by ``feed versions delete`` or overwritten by publishing again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from feed import artifacts
from feed import contract as c
from feed import versions as reg
from feed.redisclient import is_cluster

logger = logging.getLogger(__name__)

BATCH = 1000  # commands per pipeline


class PublishError(RuntimeError):
    """Publishing failed; the live version was not touched."""


@dataclass
class PublishResult:
    version: str
    counts: dict[str, int]
    seconds: float
    activated: bool
    previous: str | None


def _batched(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(it)
    while chunk := list(islice(it, n)):
        yield chunk


def _write(r: Any, pairs: Iterable[tuple[str, bytes]], progress: Any = None) -> list[str]:
    """Write every (key, value): one MSET per batch (on a cluster, where one command cannot
    span slots, pipelined SETs); returns the keys written."""
    keys: list[str] = []
    cluster = is_cluster(r)
    for chunk in _batched(pairs, BATCH):
        if cluster:
            pipe = r.pipeline(transaction=False)
            for k, v in chunk:
                pipe.set(k, v)
            pipe.execute()
        else:
            r.mset(dict(chunk))
        keys.extend(k for k, _ in chunk)
        if progress is not None:
            progress.update(len(chunk))
    return keys


def _count_existing(r: Any, keys: list[str]) -> int:
    """How many of ``keys`` exist: one multi-key EXISTS per batch (per key on a cluster,
    where one command cannot span slots)."""
    if not is_cluster(r):
        return sum(int(r.exists(*chunk)) for chunk in _batched(keys, BATCH))
    n = 0
    for chunk in _batched(keys, BATCH):
        pipe = r.pipeline(transaction=False)
        for k in chunk:
            pipe.exists(k)
        n += sum(int(x) for x in pipe.execute())
    return n


def _candidate_pairs(art: artifacts.Artifact) -> Iterator[tuple[str, bytes]]:
    cand = art.arrays("candidates")
    v = art.version
    blobs = c.encode_candidate_rows(cand["items"], cand["scores"], cand["reasons"])
    for uid, blob in zip(cand["users"], blobs, strict=True):
        yield c.user_key(str(uid), "cand", v), blob


def _neighbour_pairs(art: artifacts.Artifact, post_ids: np.ndarray) -> Iterator[tuple[str, bytes]]:
    nb = art.arrays("neighbours")
    reasons = np.full(nb["items"].shape, c.REASON_CODE["similar_to"])
    blobs = c.encode_candidate_rows(nb["items"], nb["scores"], reasons)
    for pid, first, blob in zip(post_ids, nb["items"][:, :1], blobs, strict=True):
        if len(first) and first[0] >= 0:
            yield c.neighbours_key(art.version, str(pid)), blob


def _write_seeds(r: Any, art: artifacts.Artifact, progress: Any = None) -> list[str]:
    """One seed key per user: the authors they follow and the products they bought in the
    training data (compact JSON; events keep adding to the real-time sets)."""
    seeds: dict[str, dict[str, list[str]]] = {}
    f, p = art.arrays("follows"), art.arrays("purchases")
    for field, (users, values) in {
        "follows": (f["follower"], f["followee"]),
        "bought": (p["user"], p["product"]),
    }.items():
        for uid, value in zip(users.tolist(), values.tolist(), strict=True):
            seeds.setdefault(uid, {"follows": [], "bought": []})[field].append(value)
    pairs = (
        (
            c.user_key(uid, c.USER_SEED),
            c.encode_json({k: sorted(set(v)) for k, v in seed.items() if v}),
        )
        for uid, seed in seeds.items()
    )
    return _write(r, pairs, progress)


def _seeded_users(art: artifacts.Artifact) -> int:
    """Users with follows or purchases in the training data (one seed key each)."""
    f, p = art.arrays("follows"), art.arrays("purchases")
    return len(set(f["follower"].tolist()) | set(p["user"].tolist()))


def _token_blob(art: artifacts.Artifact) -> bytes:
    """The version's token -> posts index (``interests=`` hint), verified against the manifest."""
    t = art.arrays("tokens")
    expected = art.manifest["counts"].get("tokens", len(t["token"]))
    if len(t["token"]) != expected:
        raise PublishError(
            f"{art.version}: tokens.npz has {len(t['token'])} tokens, manifest says {expected}"
        )
    return c.encode_token_index(t["token"].tolist(), t["indptr"], t["items"])


def _doc_pairs(art: artifacts.Artifact) -> Iterator[tuple[str, bytes]]:
    """Post, product and card documents (cards: what the feed serves of each post)."""
    products = {d["product_id"]: d for d in art.documents("products")}
    for d in products.values():
        yield c.product_doc_key(d["product_id"]), c.encode_json(d)
    for d in art.documents("posts"):
        yield c.post_doc_key(d["post_id"]), c.encode_json(d)
        yield c.card_key(d["post_id"]), c.encode_json(c.card(d, products))


def _stock(r: Any, art: artifacts.Artifact) -> None:
    out = [d["product_id"] for d in art.documents("products") if not d.get("in_stock", True)]
    back = [d["product_id"] for d in art.documents("products") if d.get("in_stock", True)]
    for chunk in _batched(back, BATCH):
        r.srem(c.OUT_OF_STOCK_KEY, *chunk)
    for chunk in _batched(out, BATCH):
        r.sadd(c.OUT_OF_STOCK_KEY, *chunk)


def publish(
    r: Any, path: str | Path, *, activate: bool = False, progress: bool = False, force: bool = False
) -> PublishResult:
    """Write a model version into Redis and verify it.

    Parameters
    ----------
    r : redis client
    path : path of the version directory (``ARTIFACTS_DIR/<version>``)
    activate : make the version live once verified
    progress : show a progress bar
    force : publish again a version already ``ready`` (otherwise a no-op)
    """
    art = artifacts.read(path, verify=True)
    v = art.version
    if not c.valid_version(v):
        raise PublishError(f"manifest version {v!r} is not a valid version id")
    meta = reg.get_meta(r, v)
    t0 = time.perf_counter()
    counts = art.manifest["counts"]
    current = meta and meta.get("contract") == c.CONTRACT_VERSION
    if meta and meta.get("state") == c.STATE_READY and current and not force:
        logger.info("version %s is already published", v)
    else:
        reg.set_meta(
            r,
            v,
            {
                "state": c.STATE_PUBLISHING,
                "contract": c.CONTRACT_VERSION,
                "started_at": time.time(),
                "created": art.manifest.get("created"),
                "counts": counts,
            },
        )
        _write_version(r, art, progress)
        reg.set_meta(
            r,
            v,
            {
                "state": c.STATE_READY,
                "contract": c.CONTRACT_VERSION,
                "published_at": time.time(),
                "created": art.manifest.get("created"),
                "counts": counts,
                "data": art.manifest.get("data", {}),
                "metrics": art.manifest.get("metrics", {}),
            },
        )
    previous = reg.activate(r, v) if activate else None
    return PublishResult(v, counts, time.perf_counter() - t0, activate, previous)


def _write_version(r: Any, art: artifacts.Artifact, progress: bool) -> None:
    v = art.version
    posts = art.arrays("posts")
    trending = art.arrays("trending")
    counts = art.manifest["counts"]
    bar = None
    if progress:
        from tqdm import tqdm

        total = (
            counts["users"]
            + counts["neighbour_posts"]
            + 2 * counts["post_docs"]
            + counts["product_docs"]
            + counts["followers"]
            + counts["buyers"]
            + 4
        )
        bar = tqdm(total=total, desc=f"publish {v}", unit="key")
    try:
        shared = [
            (c.version_key(v, "manifest"), c.encode_json(art.manifest)),
            (
                c.version_key(v, "posts"),
                c.encode_post_table(
                    posts["post_id"].tolist(),
                    posts["author_id"].tolist(),
                    posts["created_at"].tolist(),
                    posts["category"].tolist(),
                    [p.split("|") if p else [] for p in posts["product_ids"].tolist()],
                    {d["product_id"]: d.get("category") or "" for d in art.documents("products")},
                ),
            ),
            (
                c.version_key(v, "trending"),
                c.encode_candidates(
                    trending["items"],
                    trending["scores"],
                    np.full(len(trending["items"]), c.REASON_CODE["trending"]),
                ),
            ),
            (c.version_key(v, "tokens"), _token_blob(art)),
        ]
        groups = {
            "version": _write(r, shared, bar),
            "users": _write(r, _candidate_pairs(art), bar),
            "neighbour_posts": _write(r, _neighbour_pairs(art, posts["post_id"]), bar),
            "docs": _write(r, _doc_pairs(art), bar),
            "seeds": _write_seeds(r, art, bar),
        }
        _stock(r, art)
    finally:
        if bar is not None:
            bar.close()
    expected = {
        "version": len(shared),
        "users": counts["users"],
        "neighbour_posts": counts["neighbour_posts"],
        "docs": 2 * counts["post_docs"] + counts["product_docs"],  # a card per post
        "seeds": _seeded_users(art),
    }
    for name, keys in groups.items():
        if len(keys) != expected[name]:
            raise PublishError(
                f"{v}: wrote {len(keys)} {name} keys, manifest says {expected[name]}"
            )
        found = _count_existing(r, keys)
        if found != expected[name]:
            raise PublishError(
                f"{v}: only {found} of {expected[name]} {name} keys are in Redis after writing"
            )
