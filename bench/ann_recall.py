"""How much of a factor source's exact top-100 the approximate index finds, by graph degree.

Fits ALS and BPR (the default model's settings) on a dataset, builds
:class:`feed.models.sources.FactorIndex` over their item vectors with the HNSW graph forced
(``min_items=0``) at each ``--degrees``, and asks it for ``--users`` users' best ``--depth``
posts the way the candidate stage does (depth rounded up to a power of two, the search breadth
``max(HNSW_EF_MIN, depth)``). Prints, per source and degree: the share of each user's exact
top-100 (dense scores) found, the index's build seconds and the search's milliseconds per
1,000 users, beside the exact product's (the same index below ``ANN_MIN_ITEMS``).

    python -m bench.groupbuy --out /tmp/gb          # the group-buy shape (30k products)
    python -m bench.ann_recall /tmp/gb
    python -m bench.ann_recall ../shared/data/ciao --algorithms als

Wall seconds of one thread-pool run: compare degrees within one run, not across machines.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import print_table

EXACT_K = 100


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.ann_recall",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="a dataset directory")
    p.add_argument("--algorithms", default="als,bpr", help="factor sources to fit (als,bpr)")
    p.add_argument("--degrees", default="16,32,64", help="HNSW graph degrees compared")
    p.add_argument("--depth", type=int, default=200, help="posts asked per user (the stage's)")
    p.add_argument("--users", type=int, default=1000, help="users queried (seeded sample)")
    args = p.parse_args(argv)

    from feed.data import load
    from feed.features.matrices import build
    from feed.models.base import topk
    from feed.models.sources import FactorIndex, MatrixFactorization

    data = build(load(args.data))
    rng = np.random.default_rng(0)
    active = np.flatnonzero(data.engagement.getnnz(axis=1) > 0)
    users = np.sort(rng.choice(active, min(args.users, len(active)), replace=False))
    rows = []
    for algorithm in args.algorithms.split(","):
        t = time.perf_counter()
        mf = MatrixFactorization(algorithm).fit(data)
        fit_s = time.perf_counter() - t
        exact, _ = topk(mf.score_users(users), EXACT_K)
        n_distinct = len(np.unique(mf.item_factors_, axis=0))
        for degree in [0, *(int(d) for d in args.degrees.split(","))]:
            t = time.perf_counter()
            if degree:
                index = FactorIndex(mf.item_factors_, min_items=0, degree=degree)
            else:  # the exact product, as below ANN_MIN_ITEMS
                index = FactorIndex(mf.item_factors_, min_items=n_distinct)
            build_s = time.perf_counter() - t
            t = time.perf_counter()
            found = index.search(mf.user_factors_[users], np.full(len(users), args.depth))
            search_ms = (time.perf_counter() - t) / len(users) * 1e6
            hits = [
                len(np.intersect1d(found[i].indices, exact[i][exact[i] >= 0]))
                / max(int((exact[i] >= 0).sum()), 1)
                for i in range(len(users))
            ]
            rows.append(
                (
                    algorithm,
                    str(degree) if degree else "exact",
                    f"{build_s:.1f}",
                    f"{search_ms:.0f}",
                    f"{np.mean(hits):.3f}",
                    f"{n_distinct:,} distinct vectors; fit {fit_s:.1f} s",
                )
            )
    print_table(
        f"{args.data}: {len(users)} users, depth {args.depth}, recall of the exact top-{EXACT_K}",
        ("source", "HNSW degree", "build s", "ms per 1k users", "recall", ""),
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
