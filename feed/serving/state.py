"""The pure data a page is ranked from: a version's post table (:class:`VersionTable`), the posts
created through the API since training (:class:`FreshPosts`) and one user's state
(:class:`UserState`). The service builds them from Redis (``service.store``); ``feed evaluate``
builds them from a split, so both rank pages with the same code (:mod:`feed.serving.ranking`).
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from feed.serving.policy import DEFAULT, PagePolicy, Shares


@dataclass
class VersionTable:
    """A model version's post table and trending list, loaded once per process."""

    version: str
    post_ids: list[str]
    authors: list[str]
    created: list[float | None]
    categories: list[str]
    product_ids: list[list[str]]
    trending: np.ndarray  # post indices
    trending_scores: np.ndarray
    product_category: dict[str, str] = field(default_factory=dict)  # product id -> category
    policy: PagePolicy = DEFAULT  # the version's page policy (chosen at training)
    index: dict[str, int] = field(default_factory=dict)
    _by_author: dict[str, list[int]] | None = field(default=None, repr=False)
    _by_category: dict[str, list[int]] | None = field(default=None, repr=False)
    _sold_out: tuple[frozenset[str], np.ndarray] | None = field(default=None, repr=False)
    _unservable: tuple[frozenset[str], frozenset[str], np.ndarray] | None = field(
        default=None, repr=False
    )

    def __post_init__(self) -> None:
        self.index = {p: i for i, p in enumerate(self.post_ids)}

    def categories_of(self, i: int) -> tuple[str, ...]:
        """Categories of every product post ``i`` links (its first product's when unknown)."""
        cats = self._categories[i]
        if cats is None:
            found = {
                self.product_category[p]
                for p in self.product_ids[i]
                if self.product_category.get(p)
            }
            cats = tuple(sorted(found)) or ((self.categories[i],) if self.categories[i] else ())
            self._categories[i] = cats
        return cats

    @cached_property
    def _categories(self) -> list[tuple[str, ...] | None]:
        return [None] * len(self.post_ids)

    @cached_property
    def shares(self) -> Shares:
        """Each author's and category's share of the version's posts (a post counts for the
        category of its first product), for the page policy's allowances."""
        n = max(len(self.post_ids), 1)
        out = []
        for values in (self.authors, self.categories):
            keys, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
            out.append(dict(zip(keys.tolist(), (counts / n).tolist(), strict=True)))
        return Shares(out[0], {k: v for k, v in out[1].items() if k})

    # -- arrays over post indices, for vectorized ranking (built on first use) ------------
    @cached_property
    def created_s(self) -> np.ndarray:
        """Creation times as float64 seconds (-inf when unknown: infinitely old)."""
        return np.array([-np.inf if t is None else t for t in self.created], dtype=np.float64)

    @cached_property
    def author_index(self) -> dict[str, int]:
        """Author id -> author code (position of its first post)."""
        out: dict[str, int] = {}
        for i, a in enumerate(self.authors):
            out.setdefault(a, i)
        return out

    @cached_property
    def author_codes(self) -> np.ndarray:
        """Each post's author code (see :attr:`author_index`)."""
        index = self.author_index
        return np.array([index[a] for a in self.authors], dtype=np.int64)

    def sold_out(self, oos: frozenset[str]) -> np.ndarray:
        """Boolean mask of posts whose every linked product is in ``oos``; recomputed only
        when the out-of-stock set changes."""
        cached = self._sold_out
        if cached is not None and (cached[0] is oos or cached[0] == oos):
            return cached[1]
        mask = np.zeros(len(self.post_ids), dtype=bool)
        for p in oos:
            for i in self._posts_of_product.get(p, ()):
                mask[i] = all(q in oos for q in self.product_ids[i])
        self._sold_out = (oos, mask)
        return mask

    def unservable(self, oos: frozenset[str], gone: frozenset[str]) -> np.ndarray:
        """:meth:`sold_out` of ``oos`` plus the posts in ``gone`` (taken down by moderation);
        recomputed only when either set changes."""
        if not gone:
            return self.sold_out(oos)
        cached = self._unservable
        if cached is not None and cached[0] is oos and cached[1] is gone:
            return cached[2]
        mask = self.sold_out(oos).copy()
        mask[[self.index[p] for p in gone if p in self.index]] = True
        self._unservable = (oos, gone, mask)
        return mask

    @cached_property
    def _posts_of_product(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, products in enumerate(self.product_ids):
            for p in products:
                out.setdefault(p, []).append(i)
        return out

    def posts_by(self, author: str, n: int) -> list[int]:
        """The author's ``n`` newest posts in this version (post indices, newest first)."""
        if self._by_author is None:
            by: dict[str, list[int]] = {}
            for i, a in enumerate(self.authors):
                by.setdefault(a, []).append(i)
            for posts in by.values():
                posts.sort(key=lambda j: -(self.created[j] or 0.0))
            self._by_author = by
        return self._by_author.get(author, [])[:n]

    def posts_in_category(self, category: str) -> list[int]:
        """Posts linking a product of ``category`` (lowercase), trending first, then newest."""
        if self._by_category is None:
            rank = {int(i): r for r, i in enumerate(self.trending.tolist())}
            by: dict[str, list[int]] = {}
            for i in range(len(self.post_ids)):
                for cat in self.categories_of(i):
                    by.setdefault(cat.lower(), []).append(i)
            for posts in by.values():
                posts.sort(key=lambda j: (rank.get(j, len(rank)), -(self.created[j] or 0.0)))
            self._by_category = by
        return self._by_category.get(category, [])


@dataclass
class FreshPosts:
    """The newest posts created through the API, as arrays for vectorized ranking: built once
    per global-state refresh from their metadata (posts without metadata are left out)."""

    post_ids: list[str]
    authors: list[str]
    created: list[float | None]
    product_ids: list[list[str]]
    categories: list[str]  # each post's category, as in VersionTable
    linked_categories: list[tuple[str, ...]]  # every category it links (categories_of)
    sold_out: np.ndarray  # every linked product out of stock
    index: dict[str, int] = field(default_factory=dict)
    _in_table: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, meta: dict[str, Any], oos: frozenset[str] = frozenset()) -> FreshPosts:
        """From post id -> metadata (``POST /v1/posts``'s), in order (newest first); posts
        without a metadata object are left out."""
        posts = [(p, m) for p, m in meta.items() if isinstance(m, dict)]
        cats = [m.get("category", "") or "" for _, m in posts]
        products = [list(m.get("product_ids", [])) for _, m in posts]
        return cls(
            [p for p, _ in posts],
            [m.get("author_id", "") for _, m in posts],
            [m.get("created_at") for _, m in posts],
            products,
            cats,
            [
                tuple(m.get("categories") or ([cat] if cat else []))
                for (_, m), cat in zip(posts, cats, strict=True)
            ],
            np.array([bool(ps) and all(x in oos for x in ps) for ps in products], dtype=bool),
        )

    def __post_init__(self) -> None:
        self.index = {p: j for j, p in enumerate(self.post_ids)}

    def __len__(self) -> int:
        return len(self.post_ids)

    def categories_of(self, j: int) -> tuple[str, ...]:
        return self.linked_categories[j]

    def posts_by(self, author: str, n: int) -> list[str]:
        """The author's ``n`` newest posts here, newest first."""
        return [p for p, a in zip(self.post_ids, self.authors, strict=True) if a == author][:n]

    @cached_property
    def created_s(self) -> np.ndarray:
        """Creation times as float64 seconds (-inf when unknown)."""
        return np.array([-np.inf if t is None else t for t in self.created], dtype=np.float64)

    @cached_property
    def author_index(self) -> dict[str, int]:
        """Author id -> author code."""
        return {a: i for i, a in enumerate(dict.fromkeys(self.authors))}

    @cached_property
    def author_codes(self) -> np.ndarray:
        return np.array([self.author_index[a] for a in self.authors], dtype=np.int64)

    def in_table(self, table: VersionTable) -> np.ndarray:
        """Each post's index in ``table``, -1 where the version does not know it (the usual
        case: posts created since training); cached per version."""
        out = self._in_table.get(table.version)
        if out is None:
            out = np.array([table.index.get(p, -1) for p in self.post_ids], dtype=np.int64)
            self._in_table[table.version] = out
        return out


@dataclass
class UserState:
    """What one pipelined read returns about a user."""

    candidates: tuple[np.ndarray, np.ndarray, np.ndarray]
    seen: set[str]
    liked: set[str]
    realtime: list[tuple[str, float, str]]  # (post, strength in [0, 1], reason), newest first
    hidden: set[str]
    muted: set[str]
    follows: set[str]
    unfollows: set[str]
    bought: set[str]
    replay: list[tuple[str, float, str]] | None = None  # the page a retried cursor led to
    #: the (moderation, catalogue) counters, read with it (service.store.Overlay)
    overlay_generation: tuple[int, int] | None = None
    ties: frozenset[str] = frozenset()  # the version's published social ties (groups, shares)
    campaign_generation: int | None = None  # the campaigns counter, read with it (None: unread)
    #: the user's group feed (``"<group id> <tie weight>"``: friends' open groups), read with it
    group_feed: tuple[str, ...] = ()
