"""The page picker against a plain reference: the lazy-greedy heap must pick exactly what a
full scan of the pool picks, on random pools with ties, shared categories and repeated
authors."""

from __future__ import annotations

import random
from typing import Any

import pytest

from service.ranking import Candidate, Pool, diverse_page, pool_size


def reference_page(cands: list[Candidate], limit: int, cfg: dict[str, Any]) -> list[Candidate]:
    """The rule as written: each pick scans the whole pool (best first) for the best adjusted
    score among candidates keeping the author rules, else among all; the first wins ties."""
    pool = sorted(cands, key=lambda x: (x.score, x.post_id), reverse=True)
    pool = pool[: pool_size(limit, cfg)]
    factor = 1.0 - min(max(cfg["CATEGORY_DISCOUNT"], 0.0), 1.0)
    per_author: dict[str, int] = {}
    per_cat: dict[str, int] = {}
    page: list[Candidate] = []

    def adjusted(c: Candidate) -> float:
        if not c.categories or c.score <= 0:
            return c.score
        return c.score * factor ** max(per_cat.get(k, 0) for k in c.categories)

    while pool and len(page) < limit:
        prev = page[-1].author_id if page else None
        best = None
        for strict in (True, False):
            for i, c in enumerate(pool):
                ok = c.author_id != prev and per_author.get(c.author_id, 0) < max(
                    cfg["AUTHOR_MAX_PER_PAGE"], 1
                )
                if strict and not ok:
                    continue
                if best is None or adjusted(c) > best[1]:
                    best = (i, adjusted(c))
            if best is not None:
                break
        assert best is not None
        chosen = pool.pop(best[0])
        chosen.score = best[1]
        page.append(chosen)
        per_author[chosen.author_id] = per_author.get(chosen.author_id, 0) + 1
        for k in chosen.categories:
            per_cat[k] = per_cat.get(k, 0) + 1
    return page


def random_pool(rng: random.Random, n: int) -> list[Candidate]:
    out = []
    for k in range(n):
        cats = tuple(sorted(rng.sample("abcdef", rng.randint(0, 2))))
        score = round(rng.choice([rng.random(), 1.2 * rng.random(), 0.5]), rng.choice([1, 3, 6]))
        author = f"a{rng.randint(0, 12)}"
        out.append(Candidate(f"p{k}", score, "collaborative", author, "", None, [], cats))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_lazy_greedy_picks_what_a_full_scan_picks(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        cfg = {
            "AUTHOR_MAX_PER_PAGE": rng.choice([1, 2, 3]),
            "CATEGORY_DISCOUNT": rng.choice([0.0, 0.15, 0.5, 1.0]),
            "DIVERSITY_POOL_FACTOR": rng.choice([1, 5]),
        }
        limit = rng.choice([5, 10, 20])
        n = rng.randint(0, 150)
        fast = diverse_page(Pool.of(random_pool(random.Random(seed * 1000 + n), n)), limit, cfg)
        slow = reference_page(random_pool(random.Random(seed * 1000 + n), n), limit, cfg)
        assert [(c.post_id, c.score) for c in fast] == [(c.post_id, c.score) for c in slow]
