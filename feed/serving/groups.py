"""Group-buying scores shared by the service and ``feed evaluate-groups`` (pure functions).

A user's affinity for a product is the probability of their published deal on it
(:class:`feed.models.groups.GroupRecs`, 0 when the product is not among their deals). Joining a
friend's open group and being invited to one score the same (initiator, candidate, product)
pair. A version trained since the pair model existed publishes, per tie, the pair model's tie
part as a probability (the tie weight) and, once per version, the weights of the candidate's
affinity (``params``): the score is then :func:`pair_score`, the learned model's probability.
Without ``params`` (an older version) the score is the tie's strength times
:data:`AFFINITY_FLOOR` plus the affinity (:func:`tie_score`).

Joining reaches one step further than the fan-out: besides the groups fanned out to the user
(initiators whose published ties include them), the groups fanned out to the user's
:data:`HOP_TIES` strongest ties (friends of friends' groups) are candidates too, after every
direct one; their tie weight is :func:`hop_weight` (the chance the tie carries over both steps).
Inviting reaches one step further the same way: after the initiator's ties come the ties of
their :data:`HOP_TIES` strongest ties (friends of friends, :func:`hop_invitees`: at most
:data:`HOP_INVITEES`, weighted by the chance some path of two steps carries).
"""

from __future__ import annotations

import json
import math
from collections.abc import Container, Iterable, Mapping
from typing import Any

import numpy as np

AFFINITY_FLOOR = 0.05  # what a tie counts for a product outside the user's deals (old versions)
HOP_TIES = 20  # a user's strongest ties whose fanned-out groups are the user's two-step candidates
HOP_INVITEES = 50  # friends of friends an initiator's invitees may add after the ties
GROUP_FEED_MAX = 200  # entries kept in, and read from, a group feed (FEED_GROUP_FEED_MAX)
_EPS = 1e-6


def affinities(deals: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Product -> affinity of a user's decoded deals (:func:`feed.contract.decode_deals`)."""
    return {d["product_id"]: float(d["score"]) for d in deals}


def tie_score(tie: float, affinity: float) -> float:
    """Score of a (user, friend's group) or (initiator, invitee) pair of an older version.

    >>> tie_score(0.5, 0.0) < tie_score(0.25, 0.2)
    True
    """
    return float(tie) * (AFFINITY_FLOOR + float(affinity))


def hop_weight(to_tie: float, tie_to_initiator: float) -> float:
    """The tie weight of a friend of a friend's group: the user's published tie to their tie
    times the fanned-out weight the group reached that tie with (both probabilities), so it is
    below either step.

    >>> hop_weight(0.5, 0.4)
    0.2
    """
    return float(to_tie) * float(tie_to_initiator)


def hop_groups(
    feeds: Iterable[tuple[float, Iterable[tuple[Any, float]]]],
    skip: Container[Any] = (),
    most: int = GROUP_FEED_MAX,
) -> dict[Any, float]:
    """Friends of friends' groups to join: ``feeds`` holds, per strong tie of the user, the
    user's tie weight to it and its group feed (``(group, fanned-out weight)``, in the order
    the feed is read); at most ``most`` entries of each feed are read, ``skip`` (the direct
    groups) left out, each group at the best :func:`hop_weight` of its paths; the ``most``
    best are kept (ties broken by group), best first.

    >>> hop_groups([(0.5, [("g1", 0.4), ("g2", 0.8)]), (1.0, [("g1", 0.3)])], {"g2"}, 2)
    {'g1': 0.3}
    """
    hop: dict[Any, float] = {}
    for to_tie, feed in feeds:
        for n, (gid, weight) in enumerate(feed):
            if n >= most:
                break
            if gid not in skip:
                hop[gid] = max(hop.get(gid, 0.0), hop_weight(to_tie, weight))
    best = sorted(hop, key=lambda g: (-hop[g], g))[:most]
    return {g: hop[g] for g in best}


def hop_invitees(
    ties: Mapping[Any, float],
    their_ties: Iterable[Mapping[Any, float]],
    exclude: Container[Any] = (),
    n: int = HOP_INVITEES,
) -> dict[Any, float]:
    """Friends of friends to invite after the initiator's ``ties`` (``their_ties``: the
    published ties of the first :data:`HOP_TIES` of them, in order), best first: each at the
    chance that some path of two steps carries (``1 - prod(1 - hop_weight)``, so common friends
    add up and the weight stays a probability below 1), the ties themselves and ``exclude``
    left out; the ``n`` best (ties broken by id).

    >>> hop_invitees({"b": 0.5, "c": 0.5}, [{"d": 0.4, "a": 0.9}, {"d": 0.4, "e": 0.6}], {"a"})
    {'d': 0.36, 'e': 0.3}
    """
    first = list(ties.items())[:HOP_TIES]
    miss: dict[Any, float] = {}
    for (_, to_tie), theirs in zip(first, their_ties, strict=False):
        for w, weight in theirs.items():
            if w in ties or w in exclude:
                continue
            miss[w] = miss.get(w, 1.0) * (1.0 - hop_weight(to_tie, weight))
    best = sorted(miss, key=lambda w: (miss[w], str(w)))[:n]
    return {w: round(1.0 - miss[w], 12) for w in best}


def tie_scores(tie: np.ndarray, affinity: np.ndarray) -> np.ndarray:
    """:func:`tie_score` of arrays."""
    return np.asarray(tie, dtype=np.float64) * (AFFINITY_FLOOR + np.asarray(affinity, float))


def category_shares(
    deals: Iterable[Mapping[str, Any]], category: Mapping[str, str]
) -> dict[str, float]:
    """Category -> share of a user's deal probabilities on it (``category``: product ->
    category, e.g. the version table's).

    >>> category_shares([{"product_id": "a", "score": 0.3}, {"product_id": "b", "score": 0.1}],
    ...                 {"a": "tea", "b": "tea"})
    {'tea': 1.0}
    """
    mass: dict[str, float] = {}
    total = 0.0
    for d in deals:
        s = float(d["score"])
        total += s
        cat = category.get(d["product_id"], "")
        if cat:
            mass[cat] = mass.get(cat, 0.0) + s
    return {k: v / total for k, v in mass.items()} if total > 0 else {}


def pair_scores(
    tie: np.ndarray,
    affinity: np.ndarray,
    params: Mapping[str, float] | None,
    category: np.ndarray | None = None,
) -> np.ndarray:
    """The pair model's probability from published tie weights (probabilities of the tie
    part) and the candidate's affinities; :func:`tie_scores` when ``params`` is None.

    >>> p = {"affinity": 2.0, "wants": 0.5}
    >>> s = pair_scores(np.array([0.3, 0.3, 0.5]), np.array([0.0, 0.4, 0.0]), p)
    >>> bool(s[1] > s[0]) and bool(s[2] > s[0]) and bool(np.all((s > 0) & (s < 1)))
    True
    """
    if not params:
        return tie_scores(tie, affinity)
    w = np.clip(np.asarray(tie, np.float64), _EPS, 1 - _EPS)
    a = np.asarray(affinity, np.float64)
    cs = np.zeros_like(a) if category is None else np.asarray(category, np.float64)
    z = (float(params.get("tie", 1.0)) * np.log(w / (1 - w)) + float(params["affinity"]) * a
         + float(params["wants"]) * (a > 0) + float(params.get("category", 0.0)) * cs)  # fmt: skip
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def pair_score(
    tie: float,
    affinity: float,
    params: Mapping[str, float] | None,
    category: float = 0.0,
) -> float:
    """:func:`pair_scores` of one pair.

    >>> round(pair_score(0.5, 0.0, {"affinity": 1.0, "wants": 0.0}), 3)
    0.5
    >>> pair_score(0.5, 0.0, None) == tie_score(0.5, 0.0)
    True
    """
    if not params:
        return tie_score(tie, affinity)
    return float(
        pair_scores(np.array([tie]), np.array([affinity]), params, np.array([category]))[0]
    )


def _params(raw: Any) -> dict[str, float] | None:
    params = {k: float(raw.get(k, 0.0)) for k in ("tie", "affinity", "wants", "category")}
    return params if all(math.isfinite(v) for v in params.values()) else None


def decode_serve_params(raw: bytes | str | None) -> dict[str, dict[str, float]]:
    """The version's published pair weights (``{"invite": ..., "join": ...}``, the manifest's
    ``group_model.serve_params``); empty when absent or unreadable (the older rule applies).

    >>> p = decode_serve_params(b'{"invite": {"tie": 1, "affinity": 2}, "join": {"tie": 0.5}}')
    >>> p["invite"], p["join"]["tie"]
    ({'tie': 1.0, 'affinity': 2.0, 'wants': 0.0, 'category': 0.0}, 0.5)
    >>> decode_serve_params(None)
    {}
    """
    if not raw:
        return {}
    try:
        out = json.loads(raw)
        parsed = {task: _params(out[task]) for task in ("invite", "join")}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {k: v for k, v in parsed.items() if v is not None}
