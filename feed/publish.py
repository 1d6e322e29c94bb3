"""Publish a model version from disk into Redis, then (optionally) make it live.

Every key a publish writes belongs to the version it publishes (``{u:<user>}:cand:<v>``,
``{u:<user>}:seed:<v>``, ``{u:<user>}:deals:<v>``, ``{u:<user>}:ties:<v>``, ``{feed:<v>}:*``
(the audience index ``{feed:<v>}:aud:*`` among them, :func:`audience_index`),
``vdoc:<v>:*``), so no publish, finished or not,
changes what another version serves. The order makes interruption safe: one publish at a time
holds the publish lock (:data:`feed.contract.PUBLISH_LOCK_KEY`, renewed while it runs, expiring
:data:`LOCK_TTL_S` after its holder stops); the registry marks the version ``publishing``;
every key is written in pipelined batches; the keys are counted against the manifest; only then
is the version marked ``ready`` and, with ``activate``, switched live in one ``SET``.

A publish that fails (Redis out of memory, a lost connection, a count that does not match)
removes every key it added and puts the registry entry back as it was, then raises
:class:`PublishError` with one line saying why. A publish killed outright leaves a
``publishing`` version that cannot be activated, is listed as such, and is removed by
``feed versions delete`` or overwritten by publishing again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import redis

from feed import artifacts
from feed import contract as c
from feed import versions as reg
from feed.models.base import parallel_map
from feed.redisclient import is_cluster

logger = logging.getLogger(__name__)

BATCH = 1000  # commands per pipeline
LOCK_TTL_S = 30.0  # the publish lock expires this long after its holder stops renewing it


class PublishError(RuntimeError):
    """Publishing failed; the live version was not touched (the message is one line)."""


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


class _Lease:
    """The publish lock (redis-py's :class:`~redis.lock.Lock`: ``SET NX PX`` with a token,
    released only by its owner), renewed by a thread every third of its TTL while held."""

    def __init__(self, r: Any, version: str, wait: float) -> None:
        self.r = r
        self.version = version
        self.wait = wait
        self.lock = r.lock(c.PUBLISH_LOCK_KEY, timeout=LOCK_TTL_S, thread_local=False)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="publish-lock", daemon=True)

    def __enter__(self) -> _Lease:
        host, pid = socket.gethostname(), os.getpid()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        token = f"{self.version} by pid {pid} on {host} since {started} ({uuid.uuid4().hex})"
        try:
            acquired = self.lock.acquire(
                blocking=self.wait > 0, blocking_timeout=self.wait or None, token=token
            )
        except redis.RedisError as e:
            raise PublishError(f"{self.version}: {_why(e)}; nothing was written") from e
        if not acquired:
            raise PublishError(self._refusal())
        self._thread.start()
        return self

    def _refusal(self) -> str:
        holder = self.r.get(c.PUBLISH_LOCK_KEY)
        ttl = self.r.pttl(c.PUBLISH_LOCK_KEY)
        who = c.text(holder).rsplit(" (", 1)[0] if holder else "another publish"
        waited = f" after waiting {self.wait:g} s" if self.wait > 0 else ""
        return (
            f"another publish holds the publish lock{waited}: {who}; nothing was written. "
            f"Retry when it ends (if it died, its lock expires in {max(ttl, 0) / 1000:.0f} s), "
            "or pass --wait SECONDS"
        )

    def _renew(self) -> None:
        while not self._stop.wait(LOCK_TTL_S / 3):
            try:
                self.lock.reacquire()
            except redis.exceptions.LockError:
                self.lost = (
                    f"the publish lock expired (this publish stalled for over {LOCK_TTL_S:g} s)"
                )
                return
            except redis.RedisError as e:  # a blip: the next renewal may succeed
                logger.warning("renewing the publish lock failed: %s", e)

    def check(self) -> None:
        """Raise when the lock is no longer ours (so two publishes never write at once)."""
        if self.lost:
            raise PublishError(self.lost)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.lock.release()
        except (redis.exceptions.LockError, redis.RedisError) as e:
            logger.warning("releasing the publish lock failed (it expires by itself): %s", e)


class _Writer:
    """Writes a publish's keys in pipelined batches and remembers the keys it added, so a
    failed publish removes exactly those (keys that existed before, when a registered version
    is published again, are left: they held the same names before)."""

    def __init__(self, r: Any, lease: _Lease, *, rewrite: bool, bar: Any = None) -> None:
        self.r = r
        self.lease = lease
        self.rewrite = rewrite
        self.bar = bar
        self.cluster = is_cluster(r)
        self.added: list[str] = []

    def _adding(self, keys: list[str]) -> None:
        """Note ``keys`` as added before writing them (a write that fails half-way is undone
        too); on a rewrite, only those that do not exist yet."""
        self.lease.check()
        if self.rewrite:
            pipe = self.r.pipeline(transaction=False)
            for k in keys:
                pipe.exists(k)
            keys = [k for k, n in zip(keys, pipe.execute(), strict=True) if not n]
        self.added.extend(keys)

    def strings(self, pairs: Iterable[tuple[str, bytes]]) -> list[str]:
        """Write every (key, value): one MSET per batch (on a cluster, where one command cannot
        span slots, pipelined SETs); returns the keys written."""
        keys: list[str] = []
        for chunk in _batched(pairs, BATCH):
            self._adding([k for k, _ in chunk])
            if self.cluster:
                pipe = self.r.pipeline(transaction=False)
                for k, v in chunk:
                    pipe.set(k, v)
                pipe.execute()
            else:
                self.r.mset(dict(chunk))
            keys.extend(k for k, _ in chunk)
            if self.bar is not None:
                self.bar.update(len(chunk))
        return keys

    def members(self, key: str, members: list[str]) -> list[str]:
        """Write the set ``key`` with exactly ``members`` (nothing when empty); returns the
        keys written (``[key]`` or ``[]``)."""
        if not members:
            if self.rewrite:
                self.r.delete(key)  # an earlier publish of this version had some
            return []
        self._adding([key])
        self.r.delete(key)  # a rewrite replaces the set, never merges into it
        for chunk in _batched(members, BATCH):
            self.r.sadd(key, *chunk)
        return [key]

    def undo(self) -> int:
        """Remove every key this publish added; returns how many existed."""
        removed = 0
        for chunk in _batched(self.added, BATCH):
            if self.cluster:
                pipe = self.r.pipeline(transaction=False)
                for k in chunk:
                    pipe.unlink(k)
                removed += sum(int(x) for x in pipe.execute())
            else:
                removed += int(self.r.unlink(*chunk))
        return removed


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


def _seed_pairs(art: artifacts.Artifact) -> Iterator[tuple[str, bytes]]:
    """One seed key per user and version: the authors they follow and the products they bought
    in the training data (compact JSON; events keep adding to the real-time sets)."""
    seeds: dict[str, dict[str, list[str]]] = {}
    f, p = art.arrays("follows"), art.arrays("purchases")
    for field, (users, values) in {
        "follows": (f["follower"], f["followee"]),
        "bought": (p["user"], p["product"]),
    }.items():
        for uid, value in zip(users.tolist(), values.tolist(), strict=True):
            seeds.setdefault(uid, {"follows": [], "bought": []})[field].append(value)
    for uid, seed in seeds.items():
        yield (
            c.user_key(uid, c.USER_SEED, art.version),
            c.encode_json({k: sorted(set(v)) for k, v in seed.items() if v}),
        )


def _seeded_users(art: artifacts.Artifact) -> int:
    """Users with follows or purchases in the training data (one seed key each)."""
    f, p = art.arrays("follows"), art.arrays("purchases")
    return len(set(f["follower"].tolist()) | set(p["user"].tolist()))


Pairs = Iterator[tuple[str, bytes]]


def _has_groups(art: artifacts.Artifact) -> bool:
    """True when the version has group-buying lists (``groups.npz``: trained since issue 20)."""
    return "groups.npz" in art.manifest.get("files", {})


def _group_pairs(art: artifacts.Artifact) -> tuple[Pairs, Pairs]:
    """The version's group-buying keys: each user's deals and each user's ties (empty for a
    version trained before they existed)."""
    if not _has_groups(art):
        return iter(()), iter(())
    g = art.arrays("groups")
    users, products = g["user_ids"], g["product_ids"]
    names = g["deal_reason_names"]
    v = art.version

    def deals() -> Iterator[tuple[str, bytes]]:
        for u, items, scores, reasons, friends in zip(
            g["deal_users"], g["deal_items"], g["deal_scores"], g["deal_reasons"],
            g["deal_friends"], strict=True,
        ):  # fmt: skip
            ok = items >= 0
            yield (
                c.user_key(str(users[u]), c.USER_DEALS, v),
                c.encode_deals(
                    products[items[ok]].tolist(),
                    scores[ok].tolist(),
                    names[reasons[ok]].tolist(),
                    [users[f[f >= 0]].tolist() for f in friends[ok]],
                ),
            )

    def ties() -> Iterator[tuple[str, bytes]]:
        for u, items, weights in zip(g["tie_users"], g["tie_items"], g["tie_weights"], strict=True):
            ok = items >= 0
            yield (
                c.user_key(str(users[u]), c.USER_TIES, v),
                c.encode_ties(users[items[ok]].tolist(), weights[ok].tolist()),
            )

    return deals(), ties()


def _popular_deals(art: artifacts.Artifact) -> list[tuple[str, bytes]]:
    """The version's popular deals (cold users), when the artifact has them."""
    if not _has_groups(art):
        return []
    g = art.arrays("groups")
    items = g["popular_items"]
    blob = c.encode_deals(
        g["product_ids"][items].tolist(),
        g["popular_scores"].tolist(),
        ["popular_groups"] * len(items),
    )
    out = [(c.version_key(art.version, c.GROUP_POPULAR), blob)]
    serve = (art.manifest.get("group_model") or {}).get("serve_params")
    if serve:  # the pair model's weights (feed.serving.groups.pair_score); absent: older rule
        out.append((c.version_key(art.version, c.GROUP_PAIR), c.encode_json(serve)))
    return out


def _top_per_group(
    group: np.ndarray, user: np.ndarray, score: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``n`` of each group (positive float32 scores; ties: the earlier entry), sorted
    by group then rank. One stable argsort of an int64 key: the group in the high 32 bits, the
    score's bits, inverted, in the low ones (a positive float's bits order as the float does)."""
    bits = np.ascontiguousarray(score, dtype="<f4").view("<u4").astype(np.int64)
    order = np.argsort((group.astype(np.int64) << 32) | (0xFFFFFFFF - bits), kind="stable")
    group, user, score = group[order], user[order], score[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else group
    rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    keep = rank < n
    return group[keep], user[keep], score[keep]


def _joined(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g, u, s = zip(*parts, strict=True)
    return np.concatenate(g), np.concatenate(u), np.concatenate(s)


#: Users whose audience scores are computed at once (sparse rows: memory is the block's
#: reachable products, never users x products).
AUDIENCE_BLOCK_USERS = 4096


def audience_index(
    art: artifacts.Artifact,
    n_max: int = c.AUDIENCE_INDEX_MAX,
    per_user: int = c.AUDIENCE_INDEX_PER_USER,
) -> tuple[list[str], list[str], np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The version's audience index: (user table, products, reach per product, per product the
    best ``n_max`` (user indices, scores, bought) among the users for whom it is one of their
    ``per_user`` best products; ``bought``: the score holds the +1 of a purchase).

    A user's score for a product is the audience score ``service.campaigns`` gave by scanning
    every candidate list: each post of the user's list weighs ``1 / log2(rank + 2)`` times 1 when
    it links the product, else half its best neighbour score from a post that does (the
    version's item neighbours, scaled per list as the service reads them); plus 1 when the user
    bought the product in the training data. ``reach``: users with a positive score, before
    either cut. The two cuts bound the index by ``min(products x n_max, users x per_user)``
    entries of 8 bytes (item neighbours give most users a small positive score for most
    products: uncut, the index would be users x products). Computed over blocks of
    users as sparse products (``candidates @ weights``): time and memory follow the scores
    stored, never users x products."""
    import scipy.sparse as sp

    cand, posts, nb = art.arrays("candidates"), art.arrays("posts"), art.arrays("neighbours")
    users = [str(u) for u in cand["users"].tolist()]
    n_posts = len(posts["post_id"])
    links = [x.split("|") if x else [] for x in posts["product_ids"].tolist()]
    products = sorted({x for ps in links for x in ps})
    pidx = {x: i for i, x in enumerate(products)}
    n_prod = len(products)
    if not users or not n_prod:
        return users, products, np.zeros(n_prod, dtype=np.int64), []
    link_post = np.repeat(np.arange(n_posts), [len(ps) for ps in links])
    link_prod = np.array([pidx[x] for ps in links for x in ps], dtype=np.int64)
    # weights: posts x products, 1 for a post linking the product, else 0.5 x the best unit
    # neighbour score from one of its posts
    nbi = nb["items"].astype(np.int64)
    unit = c.unit_scores(np.where(nbi >= 0, nb["scores"], -np.inf)).astype(np.float64)
    q, v = nbi[link_post], 0.5 * unit[link_post]
    pr = np.broadcast_to(link_prod[:, None], q.shape)
    ok = (q >= 0) & (q < n_posts) & (v > 0)
    q = np.concatenate([q[ok], link_post])
    pr = np.concatenate([pr[ok], link_prod])
    v = np.concatenate([v[ok], np.ones(len(link_post))])
    key = q * n_prod + pr
    order = np.lexsort((-v, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    weights = sp.csr_matrix((v[first], (q[first], pr[first])), shape=(n_posts, n_prod))
    # candidates: users x posts, the rank discount of each listed post
    items = cand["items"].astype(np.int64)
    valid = (items >= 0) & (items < n_posts)
    rank = np.cumsum(valid, axis=1) - 1
    rows = np.broadcast_to(np.arange(len(users))[:, None], items.shape)
    lists = sp.csr_matrix(
        (1.0 / np.log2(rank[valid] + 2.0), (rows[valid], items[valid])),
        shape=(len(users), n_posts),
    )
    uidx = {u: i for i, u in enumerate(users)}
    bought = [
        (uidx[u], pidx[x])
        for u, x in zip(art.arrays("purchases")["user"].tolist(),
                        art.arrays("purchases")["product"].tolist(), strict=True)
        if u in uidx and x in pidx
    ]  # fmt: skip
    buys = sp.csr_matrix(
        (np.ones(len(bought)), ([b[0] for b in bought], [b[1] for b in bought])),
        shape=(len(users), n_prod),
    )
    buys.data[:] = 1.0  # a product bought twice still adds 1
    reach = np.zeros(n_prod, dtype=np.int64)
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    held, limit = 0, 4_000_000

    def block(lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Users ``[lo, lo + AUDIENCE_BLOCK_USERS)``: (products, users, scores) of each user's
        ``per_user`` best products, and the block's reach per product."""
        hi = min(lo + AUDIENCE_BLOCK_USERS, len(users))
        m = sp.csr_matrix(lists[lo:hi] @ weights + buys[lo:hi])  # sparse: no user x product
        m.data[m.data <= 0] = 0.0
        m.eliminate_zeros()
        got = np.bincount(m.indices, minlength=n_prod)
        ends = m.indptr
        if n_prod > per_user and np.diff(ends).max(initial=0) > per_user:
            # each user enters the lists of its per_user best products only: one partition per
            # row, linear in the row's stored scores
            keep = [
                ends[i] + np.argpartition(-m.data[ends[i] : ends[i + 1]], per_user - 1)[:per_user]
                if ends[i + 1] - ends[i] > per_user
                else np.arange(ends[i], ends[i + 1])
                for i in range(hi - lo)
            ]
            at = np.concatenate(keep)
        else:
            at = np.arange(m.nnz)
        row = np.repeat(np.arange(hi - lo), np.diff(ends))[at] + lo
        return m.indices[at].astype(np.int64), row, m.data[at].astype(np.float32), got

    for p, u, sc, got in parallel_map(block, range(0, len(users), AUDIENCE_BLOCK_USERS)):
        reach += got
        kept.append((p, u, sc))
        held += len(p)
        if held > limit:  # prune to the best n_max of each product so far
            kept = [_top_per_group(*_joined(kept), n_max)]
            held = len(kept[0][0])
            limit = max(limit, 2 * held)
    g, u, s = _top_per_group(*_joined(kept), n_max)
    buys = buys.tocoo()
    flagged = np.isin(u * n_prod + g, buys.row.astype(np.int64) * n_prod + buys.col)
    bounds = np.searchsorted(g, np.arange(n_prod + 1))
    per = [(u[a:b], s[a:b], flagged[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return users, products, reach, per


def _audience_pairs(art: artifacts.Artifact) -> tuple[int, Pairs]:
    """(how many, the keys) of the audience index: the user table (its presence tells the
    service the version has an index) and one blob per product some user reaches
    (:func:`audience_index`); nothing for a version without candidates."""
    users, products, reach, per = audience_index(art)
    v = art.version
    if not users:
        return 0, iter(())

    def pairs() -> Pairs:
        yield c.audience_index_key(v), c.encode_json(users)
        for i, x in enumerate(products):
            if reach[i] > 0:
                yield c.audience_index_key(v, x), c.encode_audience_index(int(reach[i]), *per[i])

    return 1 + int((reach > 0).sum()), pairs()


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
    """The version's post, product and card documents (cards: what the feed serves of each
    post)."""
    v = art.version
    products = {d["product_id"]: d for d in art.documents("products")}
    for d in products.values():
        yield c.product_doc_key(d["product_id"], v), c.encode_json(d)
    for d in art.documents("posts"):
        yield c.post_doc_key(d["post_id"], v), c.encode_json(d)
        yield c.card_key(d["post_id"], v), c.encode_json(c.card(d, products))


def _out_of_stock(art: artifacts.Artifact) -> list[str]:
    """The version's products that are out of stock (its stock set)."""
    return [d["product_id"] for d in art.documents("products") if not d.get("in_stock", True)]


def _up_to_date(meta: dict[str, Any] | None) -> bool:
    """True when ``meta`` is a version already published, completely, under this contract."""
    return bool(
        meta and meta.get("state") == c.STATE_READY and meta.get("contract") == c.CONTRACT_VERSION
    )


def publish(
    r: Any,
    path: str | Path,
    *,
    activate: bool = False,
    progress: bool = False,
    force: bool = False,
    wait: float = 0.0,
) -> PublishResult:
    """Write a model version into Redis and verify it.

    Parameters
    ----------
    r : redis client
    path : path of the version directory (``ARTIFACTS_DIR/<version>``)
    activate : make the version live once verified
    progress : show a progress bar
    force : publish again a version already ``ready`` (otherwise a no-op)
    wait : seconds to wait for another publish into the same Redis to end (0: refuse at once)

    Raises
    ------
    PublishError
        One line: another publish holds the lock, or writing or verifying failed (Redis out of
        memory, a lost connection, a count that does not match the manifest); every key this
        publish added is gone again and the registry entry is as before.
    """
    art = artifacts.read(path, verify=True)
    v = art.version
    if not c.valid_version(v):
        raise PublishError(f"manifest version {v!r} is not a valid version id")
    t0 = time.perf_counter()
    counts = art.manifest["counts"]
    if _up_to_date(reg.get_meta(r, v)) and not force:
        logger.info("version %s is already published", v)
    else:
        with _Lease(r, v, wait) as lease:
            before = r.hget(c.VERSIONS_KEY, v)  # under the lock: no other publish changes it
            if _up_to_date(c.decode_json(before)) and not force:
                logger.info("version %s was published meanwhile", v)
            elif _up_to_date(c.decode_json(before)) and v in reg.in_use(r):
                raise PublishError(
                    f"version {v} is in use (live, the rollback target or an experiment arm): "
                    "publishing it again would change what it serves while it serves; "
                    "activate another version first, or train a new version"
                )
            else:
                _publish_locked(r, art, before, lease, progress)
    previous = reg.activate(r, v) if activate else None
    return PublishResult(v, counts, time.perf_counter() - t0, activate, previous)


def _publish_locked(
    r: Any, art: artifacts.Artifact, before: bytes | None, lease: _Lease, progress: bool
) -> None:
    """Write and verify the version under the publish lock; on any failure remove what was
    added, put the registry entry ``before`` back and raise :class:`PublishError`."""
    v, counts = art.version, art.manifest["counts"]
    started = time.time()
    bar = None
    if progress:
        from tqdm import tqdm

        total = (
            counts["users"]
            + counts["neighbour_posts"]
            + 2 * counts["post_docs"]
            + counts["product_docs"]
            + _seeded_users(art)
            + counts.get("deal_users", 0)
            + counts.get("tie_users", 0)
            + 5
        )
        bar = tqdm(total=total, desc=f"publish {v}", unit="key", disable=None)  # off: no tty
    writer = _Writer(r, lease, rewrite=before is not None, bar=bar)
    meta = {"contract": c.CONTRACT_VERSION, "created": art.manifest.get("created")}
    try:
        reg.set_meta(
            r, v, {**meta, "state": c.STATE_PUBLISHING, "started_at": started, "counts": counts}
        )
        _write_version(writer, art)
        lease.check()
        reg.set_meta(
            r,
            v,
            {
                **meta,
                "state": c.STATE_READY,
                "started_at": started,
                "published_at": time.time(),
                "counts": counts,
                "data": art.manifest.get("data", {}),
                "metrics": art.manifest.get("metrics", {}),
            },
        )
        if bar is not None:  # the total was an estimate: a finished publish ends at 100%
            bar.total = bar.n
            bar.refresh()
    except BaseException as e:
        undone = _undo(r, writer, v, before)
        if not isinstance(e, Exception):
            raise  # KeyboardInterrupt, SystemExit: undone, then on their way
        raise PublishError(f"{v}: {_why(e)}; {undone}") from e
    finally:
        if bar is not None:
            bar.close()


def _why(e: BaseException) -> str:
    """What went wrong, in one line."""
    text = " ".join(str(e).split()).rstrip(".")
    if isinstance(e, PublishError):
        return text
    if isinstance(e, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return f"Redis is out of memory (maxmemory reached, nothing to evict): {text}"
    if isinstance(e, redis.ConnectionError | redis.TimeoutError):
        return f"lost the connection to Redis ({type(e).__name__}: {text})"
    return f"{type(e).__name__}: {text}"


def _undo(r: Any, writer: _Writer, version: str, before: bytes | None) -> str:
    """Remove the keys a failed publish added and put its registry entry back; says what
    happened, in a few words."""
    try:
        removed = writer.undo()
        if before is None:
            r.hdel(c.VERSIONS_KEY, version)
        else:
            r.hset(c.VERSIONS_KEY, version, before)
    except redis.RedisError as e:
        return (
            f"removing what it wrote failed too ({type(e).__name__}: {' '.join(str(e).split())}); "
            f"`feed versions delete {version}` removes it"
        )
    return f"removed the {removed} keys it had written; the registry is as before"


def _write_version(w: _Writer, art: artifacts.Artifact) -> None:
    """Every key of the version, each group counted against the manifest."""
    v = art.version
    posts = art.arrays("posts")
    trending = art.arrays("trending")
    counts = art.manifest["counts"]
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
                (art.manifest.get("model") or {}).get("page_policy"),
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
        *_popular_deals(art),
    ]
    deal_pairs, tie_pairs = _group_pairs(art)
    out_of_stock = _out_of_stock(art)
    n_audience, audience_pairs = _audience_pairs(art)
    groups = {
        "version": w.strings(shared),
        "users": w.strings(_candidate_pairs(art)),
        "neighbour_posts": w.strings(_neighbour_pairs(art, posts["post_id"])),
        "docs": w.strings(_doc_pairs(art)),
        "seeds": w.strings(_seed_pairs(art)),
        "deals": w.strings(deal_pairs),
        "ties": w.strings(tie_pairs),
        "stock": w.members(c.stock_key(v), out_of_stock),
        "audience_index": w.strings(audience_pairs),
    }
    expected = {
        "version": len(shared),
        "users": counts["users"],
        "neighbour_posts": counts["neighbour_posts"],
        "docs": 2 * counts["post_docs"] + counts["product_docs"],  # a card per post
        "seeds": _seeded_users(art),
        "deals": counts.get("deal_users", 0) if _has_groups(art) else 0,
        "ties": counts.get("tie_users", 0) if _has_groups(art) else 0,
        "stock": 1 if out_of_stock else 0,
        "audience_index": n_audience,  # computed from the artifact, not in the manifest
    }
    for name, keys in groups.items():
        if len(keys) != expected[name]:
            raise PublishError(
                f"{v}: wrote {len(keys)} {name} keys, manifest says {expected[name]}"
            )
        found = _count_existing(w.r, keys)
        if found != expected[name]:
            raise PublishError(
                f"{v}: only {found} of {expected[name]} {name} keys are in Redis after writing"
            )
