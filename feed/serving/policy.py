"""The page policy: how a page trades relevance for variety.

A page is picked greedily from the best candidates (:func:`feed.serving.ranking.diverse_page`).
Each pick's score is discounted by how often its author, and its categories, are already on
the page, softly, as X's home mixer discounts repeated authors: the ``k``-th repeat is
multiplied by ``(1 - floor) * decay ** k + floor``, so relevance still decides and a strong
post of a repeated author can win over a weak one of a new author.

Repeats count only beyond an author's (a category's) **allowance**: its share of the
catalogue times the page length, rounded down. An author holding a third of the posts gets six
slots of a 20-item page before any discount, as a random page would show it; a small creator
gets none. ``author_cap`` (0: none) is a hard cap per author on top of its allowance, and
``no_adjacent_author`` keeps one author from taking two slots in a row; both are relaxed only
when nothing else is left.

The policy also holds the weight of the freshness bonus new posts get (0 when recency does not
predict what users engage with, as on data split at random). ``feed train`` chooses the
policy on its validation slices (:func:`~feed.evaluation.pages.choose_policy`: the lightest
discount along :data:`PATHS` that does the job, found by bisection on its strength) and
stores it with the version; the service uses the version's policy unless configuration
overrides a field (:meth:`PagePolicy.overridden`).

Examples
--------
>>> p = PagePolicy(author_decay=0.5, author_floor=0.2)
>>> [round(p.author_factor(k), 3) for k in range(4)]
[1.0, 0.6, 0.4, 0.3]
>>> PagePolicy.from_json(p.to_json()) == p
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class PagePolicy:
    """Discounts and caps of a page (see the module doc)."""

    author_decay: float = 0.5
    author_floor: float = 0.25
    category_decay: float = 0.85
    category_floor: float = 0.5
    author_cap: int = 0
    no_adjacent_author: bool = True
    #: The freshness bonus: ``weight * 0.5 ** (age / FRESHNESS_HALF_LIFE_S)`` on each score.
    freshness_weight: float = 0.2

    def __post_init__(self) -> None:
        for name in ("author_decay", "author_floor", "category_decay", "category_floor"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"page policy {name} must be between 0 and 1, got {value!r}")
        w = self.freshness_weight
        if not (isinstance(w, int | float) and 0.0 <= w <= 10.0):
            raise ValueError(f"page policy freshness_weight must be between 0 and 10, got {w!r}")
        if not isinstance(self.author_cap, int) or self.author_cap < 0:
            raise ValueError(f"page policy author_cap must be an integer >= 0: {self.author_cap!r}")

    @staticmethod
    def _factor(decay: float, floor: float, k: int) -> float:
        return 1.0 if k <= 0 else (1.0 - floor) * decay**k + floor

    def author_factor(self, k: int) -> float:
        """Score multiplier of a post whose author is ``k`` posts past its allowance."""
        return self._factor(self.author_decay, self.author_floor, k)

    def category_factor(self, k: int) -> float:
        """Score multiplier of a post whose category is ``k`` posts past its allowance."""
        return self._factor(self.category_decay, self.category_floor, k)

    @staticmethod
    def allowance(share: float, limit: int) -> int:
        """Repeats free of discount for an author (category) holding ``share`` of the posts.

        >>> PagePolicy.allowance(1 / 3, 20), PagePolicy.allowance(0.01, 20)
        (6, 0)
        """
        return int(math.floor(share * limit + 1e-9))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> PagePolicy:
        """A policy from its JSON (unknown keys are ignored, missing ones default)."""
        if not raw:
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def overridden(self, cfg: Mapping[str, Any]) -> PagePolicy:
        """This policy with the fields configuration sets (``PAGE_AUTHOR_DECAY``, ...; a value
        of None leaves the field to the version).

        >>> PagePolicy().overridden({"PAGE_AUTHOR_DECAY": "1", "AUTHOR_MAX_PER_PAGE": 3})
        PagePolicy(author_decay=1.0, author_floor=0.25, category_decay=0.85, category_floor=0.5, \
author_cap=3, no_adjacent_author=True, freshness_weight=0.2)
        """
        changes: dict[str, Any] = {}
        for name, key in OVERRIDES.items():
            raw = cfg.get(key)
            if raw is None or raw == "":
                continue
            kind = type(getattr(self, name))
            if kind is bool:
                changes[name] = str(raw).lower() in ("1", "true", "yes", "on")
            else:
                changes[name] = kind(float(raw)) if kind is int else kind(raw)
        return replace(self, **changes) if changes else self


@dataclass(frozen=True)
class Shares:
    """Each author's and category's share of the catalogue (post counts over posts), for the
    policy's allowances (:meth:`PagePolicy.allowance`)."""

    authors: Mapping[str, float]
    categories: Mapping[str, float]


NO_SHARES = Shares({}, {})


#: Policy field -> the service setting that overrides it (unset: the version's policy).
OVERRIDES: dict[str, str] = {
    "author_decay": "PAGE_AUTHOR_DECAY",
    "author_floor": "PAGE_AUTHOR_FLOOR",
    "category_decay": "PAGE_CATEGORY_DECAY",
    "category_floor": "PAGE_CATEGORY_FLOOR",
    "author_cap": "AUTHOR_MAX_PER_PAGE",
    "no_adjacent_author": "PAGE_NO_ADJACENT_AUTHOR",
    "freshness_weight": "FRESHNESS_WEIGHT",
}

#: The strongest discounts ``feed train`` searches up to, as (decay, floor): an author's
#: fourth repeat past its allowance keeps about 0.1 of its score, a category's about 0.4.
STRONGEST_AUTHOR = (0.3, 0.1)
STRONGEST_CATEGORY = (0.7, 0.3)
#: The directions of intervention ``feed train`` searches (:func:`along`): how much of the
#: author discount and of the category discount grows with the strength.
PATHS: dict[str, tuple[float, float]] = {
    "author": (1.0, 0.0),
    "category": (0.0, 1.0),
    "both": (1.0, 1.0),
}


def along(path: str, strength: float, freshness_weight: float = 0.2) -> PagePolicy:
    """The policy of ``strength`` (0: no discount, 1: the strongest) along ``path`` of
    :data:`PATHS`: each discounted field moves linearly from 1 towards its strongest value
    (rounded to 4 decimals), no cap, no adjacency rule.

    >>> along("author", 0.5)
    PagePolicy(author_decay=0.65, author_floor=0.55, category_decay=1.0, category_floor=1.0, \
author_cap=0, no_adjacent_author=False, freshness_weight=0.2)
    >>> along("both", 0.0) == along("category", 0.0)
    True
    """
    s = min(max(float(strength), 0.0), 1.0)
    wa, wc = PATHS[path]

    def towards(end: float, weight: float) -> float:
        return round(1.0 - s * weight * (1.0 - end), 4)

    return PagePolicy(
        towards(STRONGEST_AUTHOR[0], wa),
        towards(STRONGEST_AUTHOR[1], wa),
        towards(STRONGEST_CATEGORY[0], wc),
        towards(STRONGEST_CATEGORY[1], wc),
        0,
        False,
        freshness_weight,
    )


def searched(policy: PagePolicy) -> bool:
    """Whether ``policy`` is one ``feed train``'s search can choose: on a path of
    :data:`PATHS` (discounts between none and the strongest), no cap, with or without the
    adjacency rule, a freshness weight of :data:`FRESHNESS_GRID`."""
    return (
        STRONGEST_AUTHOR[0] <= policy.author_decay <= 1.0
        and STRONGEST_AUTHOR[1] <= policy.author_floor <= 1.0
        and STRONGEST_CATEGORY[0] <= policy.category_decay <= 1.0
        and STRONGEST_CATEGORY[1] <= policy.category_floor <= 1.0
        and policy.author_cap == 0
        and policy.freshness_weight in FRESHNESS_GRID
    )


FRESHNESS_GRID = (0.0, 0.1, 0.2)
#: A version published before page policies (or trained without validation) serves this.
DEFAULT = PagePolicy()
