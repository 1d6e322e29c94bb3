"""Group-buying scores shared by the service and ``feed evaluate-groups`` (pure functions).

A user's affinity for a product is the probability of their published deal on it
(:class:`feed.models.groups.GroupRecs`, 0 when the product is not among their deals). Joining a
friend's open group and being invited to one score the same way: the tie's strength times
:data:`AFFINITY_FLOOR` plus the affinity, so a strong tie counts without a known taste for the
product, and a taste for it lifts a weaker tie above a stronger indifferent one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

AFFINITY_FLOOR = 0.05  # what a tie counts for a product outside the user's deals


def affinities(deals: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Product -> affinity of a user's decoded deals (:func:`feed.contract.decode_deals`)."""
    return {d["product_id"]: float(d["score"]) for d in deals}


def tie_score(tie: float, affinity: float) -> float:
    """Score of a (user, friend's group) or (initiator, invitee) pair.

    >>> tie_score(0.5, 0.0) < tie_score(0.25, 0.2)
    True
    """
    return float(tie) * (AFFINITY_FLOOR + float(affinity))


def tie_scores(tie: np.ndarray, affinity: np.ndarray) -> np.ndarray:
    """:func:`tie_score` of arrays."""
    return np.asarray(tie, dtype=np.float64) * (AFFINITY_FLOOR + np.asarray(affinity, float))
