"""The model-version registry in Redis: list, activate, roll back, delete.

The registry is one hash (``{feed}:versions``: version -> JSON meta) and the live pointer is
one string (``{feed}:live``), both in one hash slot: switching the live version is one
transaction that checks, under ``WATCH``, that the version is still ``ready`` (every key
written and counted) as the pointer moves. ``delete`` first marks a version ``deleting`` under
the same kind of ``WATCH``, so no switch can race with the removal of its keys.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import redis

from feed import contract as c
from feed.redisclient import is_cluster

logger = logging.getLogger(__name__)

HISTORY_LEN = 20
DELETE_BATCH = 500


class VersionError(RuntimeError):
    """A version operation was refused (unknown, incomplete, live, or in use)."""


class VersionNotServable(VersionError):
    """The version was published under another Redis contract: this release cannot serve it."""


def not_servable(version: str, meta: dict[str, Any]) -> str | None:
    """Why this release cannot serve ``version`` (registry entry ``meta``), or None.

    >>> print(not_servable("v1", {"contract": 1}))  # doctest: +ELLIPSIS
    version 'v1' was published under Redis contract 1; this release serves contract ...
    """
    contract = meta.get("contract", 1)
    if contract == c.CONTRACT_VERSION:
        return None
    return (
        f"version {version!r} was published under Redis contract {contract}; this release "
        f"serves contract {c.CONTRACT_VERSION}: publish it again (feed publish ARTIFACT)"
    )


def serving_problem(version: str, meta: dict[str, Any] | None) -> str | None:
    """Why ``version`` (registry entry ``meta``) cannot serve pages now, or None: the one
    rule the service's routing, its readiness and the registry's switches share.

    >>> serving_problem("v1", None), serving_problem("v1", {"state": "publishing"})
    ("'v1' is not in the registry", "'v1' is 'publishing', not ready")
    """
    if not meta:
        return f"{version!r} is not in the registry"
    if meta.get("state") != c.STATE_READY:
        return f"{version!r} is {meta.get('state')!r}, not ready"
    return not_servable(version, meta)


def _text(raw: Any) -> str | None:
    return None if raw is None else c.text(raw)


def live_version(r: Any) -> str | None:
    """The live version id, or None."""
    return _text(r.get(c.LIVE_KEY))


def get_meta(r: Any, version: str) -> dict[str, Any] | None:
    """The registry entry of ``version``, or None when unknown."""
    meta = c.decode_json(r.hget(c.VERSIONS_KEY, version))
    return meta if isinstance(meta, dict) else None


def set_meta(r: Any, version: str, meta: dict[str, Any]) -> None:
    r.hset(c.VERSIONS_KEY, version, c.encode_json(meta))


def list_versions(r: Any) -> list[dict[str, Any]]:
    """Every registered version, newest first, with ``live`` and ``in_experiments`` marked."""
    live = live_version(r)
    used = versions_in_experiments(r)
    out = []
    for v, raw in r.hgetall(c.VERSIONS_KEY).items():
        meta = c.decode_json(raw) or {}
        name = _text(v) or ""
        out.append(
            {
                **meta,
                "version": name,
                "live": name == live,
                "in_experiments": sorted(used.get(name, [])),
            }
        )
    return sorted(out, key=lambda m: m.get("published_at") or 0, reverse=True)


def versions_in_experiments(r: Any) -> dict[str, list[str]]:
    """version -> names of running experiments that route traffic to it."""
    used: dict[str, list[str]] = {}
    for name, raw in r.hgetall(c.EXPERIMENTS_KEY).items():
        exp = c.decode_json(raw) or {}
        if exp.get("status", "running") != "running":
            continue
        for arm in exp.get("arms", []):
            used.setdefault(arm.get("version", ""), []).append(_text(name) or "")
    return used


REQUIRED_KINDS = ("manifest", "posts", "trending")  # version keys a request cannot do without


def missing_keys(r: Any, version: str) -> list[str]:
    """The version's shared keys that are not in Redis (the service needs every one)."""
    keys = [c.version_key(version, kind) for kind in REQUIRED_KINDS]
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.exists(k)
    return [k for k, n in zip(keys, pipe.execute(), strict=True) if not n]


def activate(r: Any, version: str) -> str | None:
    """Make ``version`` live (atomically); returns the previously live version.

    Refused for an unknown version, one not ``ready`` (a publish that did not finish), one
    published under another Redis contract (an older release's encodings) and one whose
    shared keys are gone.
    """
    meta = get_meta(r, version)
    if meta is None:
        raise VersionError(f"unknown version {version!r}")
    if meta.get("state") != c.STATE_READY:
        raise VersionError(
            f"version {version!r} is {meta.get('state')!r}, not {c.STATE_READY!r}: "
            "its keys are incomplete; publish it again"
        )
    problem = not_servable(version, meta)
    if problem:
        raise VersionNotServable(problem)
    missing = missing_keys(r, version)
    if missing:
        raise VersionError(
            f"version {version!r} has incomplete keys (missing {missing}); "
            "publish it again with --force"
        )
    previous = _switch(r, version)
    try:
        prune_fresh(r)
    except redis.RedisError as e:  # the switch is done; the fresh posts wait for the next one
        logger.warning("activated %s, but pruning the fresh posts failed: %s", version, e)
    return previous


def _switch(r: Any, version: str, *, keep_history: int | None = None) -> str | None:
    """Make ``version`` live in one transaction with the registry: it must still be ``ready``
    as EXEC runs (``WATCH`` on the registry and the live pointer, so a concurrent
    :func:`delete` or publish makes it retry and look again). The previous live version goes
    on the history list, unless ``keep_history`` is given: then the history is cut to its
    entries from that index on (a rollback consumes entries instead). Returns the previous
    live version."""

    def run(pipe: Any) -> str | None:
        meta = get_meta(pipe, version)
        problem = serving_problem(version, meta)
        if problem:
            raise VersionError(f"cannot switch to version {problem}")
        previous = _text(pipe.get(c.LIVE_KEY))
        pipe.multi()
        pipe.set(c.LIVE_KEY, version)
        if keep_history is not None:
            pipe.ltrim(c.HISTORY_KEY, keep_history, -1)
        elif previous and previous != version:
            pipe.lpush(c.HISTORY_KEY, previous)
            pipe.ltrim(c.HISTORY_KEY, 0, HISTORY_LEN - 1)
        if keep_history is None:  # an activation is stamped; a rollback restores as it was
            stamped = {**(meta or {}), "activated_at": time.time()}
            pipe.hset(c.VERSIONS_KEY, version, c.encode_json(stamped))
        return previous

    watched = (c.LIVE_KEY, c.VERSIONS_KEY, c.HISTORY_KEY)  # one slot ({feed}): a cluster too
    return r.transaction(run, *watched, value_from_callable=True)  # type: ignore[no-any-return]


def in_use(r: Any) -> set[str]:
    """The versions in use: the live one, the one a rollback returns to, and every running
    experiment's arms."""
    used = {live_version(r), _text(r.lindex(c.HISTORY_KEY, 0)), *versions_in_experiments(r)}
    return {u for u in used if u}


def forget_fresh(r: Any, posts: list[str]) -> None:
    """Remove ``posts`` from the posts created through the API: their fresh entry and metadata
    (one slot) and their own document and card (a version that lists a post has its own
    copies under its id). The one removal rule of both pruners: :func:`prune_fresh` at
    activation, and the service's bound on age and count when a post is created."""
    for i in range(0, len(posts), DELETE_BATCH):
        batch = posts[i : i + DELETE_BATCH]
        pipe = r.pipeline(transaction=False)
        pipe.zrem(c.FRESH_KEY, *batch)
        pipe.hdel(c.FRESH_META_KEY, *batch)
        for p in batch:  # one DEL per key: documents spread over a cluster
            pipe.delete(c.post_doc_key(p))
            pipe.delete(c.card_key(p))
        pipe.execute()


def prune_fresh(r: Any) -> int:
    """Forget the posts created through the API that the versions in use all list; returns
    how many were forgotten.

    The fresh posts (``FRESH_KEY`` and ``FRESH_META_KEY``) carry posts created since training
    into feeds until a version includes them. The versions in use are the live one, the one
    before it (what a rollback returns to) and every running experiment's arms; a post leaves
    the fresh posts (:func:`forget_fresh`) once each of their post tables lists it, since each
    then serves its own copy of the post. Called by :func:`activate`.
    """
    known: set[str] | None = None
    for version in sorted(in_use(r)):
        table = c.decode_json(r.get(c.version_key(version, "posts")))
        ids = set(table["post_id"]) if isinstance(table, dict) else set()
        known = ids if known is None else known & ids
    if not known:
        return 0
    gone = [p for p in (_text(m) for m, _ in r.zscan_iter(c.FRESH_KEY, count=1000)) if p in known]
    forget_fresh(r, [p for p in gone if p])
    return len(gone)


def rollback(r: Any) -> str:
    """Re-activate the most recent previously live version that is still ready.

    History entries that are gone or incomplete are dropped on the way. A version this release
    cannot serve (another Redis contract) is refused with :class:`VersionNotServable`, and
    then nothing changes: the live version and the history stay as they were.
    """
    live = live_version(r)
    history = [_text(x) or "" for x in r.lrange(c.HISTORY_KEY, 0, -1)]
    for i, prev in enumerate(history):
        meta = get_meta(r, prev)
        if prev == live or not meta or meta.get("state") != c.STATE_READY:
            continue
        problem = not_servable(prev, meta)
        if problem:
            raise VersionNotServable(f"cannot roll back: {problem}")
        if missing_keys(r, prev):
            continue
        _switch(r, prev, keep_history=i + 1)
        return prev
    if history:
        r.ltrim(c.HISTORY_KEY, len(history), -1)
    raise VersionError("no previous version to roll back to")


def _version_key_re(version: str) -> re.Pattern[str]:
    """Every key publish writes for ``version``: a user's candidates, seed, deals and ties,
    the version's own keys (``{feed:<v>}:*``, its stock set and its audience index
    ``{feed:<v>}:aud:*`` among them), its documents and cards."""
    v = re.escape(version)
    kinds = "|".join(("cand", c.USER_SEED, c.USER_DEALS, c.USER_TIES))
    pattern = rf"\{{u:[^}}]*\}}:({kinds}):{v}|\{{feed:{v}\}}:.*|vdoc:{v}:.*"
    return re.compile(pattern, re.DOTALL)


def version_keys(r: Any, version: str) -> list[str]:
    """Every key of a version (see :func:`_version_key_re`): one SCAN over each primary for the
    keys containing the version id, filtered exactly."""
    wanted = _version_key_re(version)
    keys: list[str] = []
    nodes = r.get_primaries() if is_cluster(r) else [None]
    for node in nodes:
        it = (
            r.scan_iter(match=f"*{version}*", count=1000, target_nodes=node)
            if node is not None
            else r.scan_iter(match=f"*{version}*", count=1000)
        )
        keys.extend(k for k in (_text(x) or "" for x in it) if wanted.fullmatch(k))
    return keys


def delete(r: Any, version: str, *, force: bool = False) -> int:
    """Delete every key of ``version`` and its registry entry; returns keys removed.

    Refuses the live version and versions used by a running experiment. The version is first
    marked ``deleting`` in one transaction with those checks (``WATCH`` on the live pointer,
    the experiments and the registry), so an activation, a rollback or an experiment arm that
    races with the delete either happens first (and the delete is refused) or sees the mark
    (and is refused); its keys go only after that.
    """

    def mark(pipe: Any) -> None:
        meta = get_meta(pipe, version)
        if not force:
            if version == _text(pipe.get(c.LIVE_KEY)):
                raise VersionError(f"version {version!r} is live; activate another one first")
            users = versions_in_experiments(pipe).get(version)
            if users:
                raise VersionError(f"version {version!r} is used by running experiment(s) {users}")
        pipe.multi()
        if meta is not None:
            pipe.hset(c.VERSIONS_KEY, version, c.encode_json({**meta, "state": c.STATE_DELETING}))

    r.transaction(mark, c.LIVE_KEY, c.EXPERIMENTS_KEY, c.VERSIONS_KEY)
    keys = version_keys(r, version)
    removed = 0
    for i in range(0, len(keys), DELETE_BATCH):
        pipe = r.pipeline(transaction=False)
        for k in keys[i : i + DELETE_BATCH]:
            pipe.unlink(k)
        removed += sum(int(x) for x in pipe.execute())
    r.hdel(c.VERSIONS_KEY, version)
    r.lrem(c.HISTORY_KEY, 0, version)
    return removed
