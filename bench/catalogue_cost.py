"""What a user's candidates and a post's neighbours cost on a dataset, and how much of each
source's exact top-100 its retrieval finds: the stages of ``feed train`` whose cost can grow
with the catalogue, measured on one fitted default model.

Fits the default model once (as ``feed train`` does), then, in this process:

- the candidate stage (``feed.train._candidates_of``) on ``--users`` users with engagement
  (seeded sample), after a warm-up of 50 users that builds the sources' indexes: CPU ms a user;
- the neighbour stage (``feed.train._neighbours_of``) on its first blocks of posts: CPU ms a post;
- each personal source's retrieval against its own exact top-100 (dense scores, one post per
  product, the user's excluded posts removed) at a few depths (``--recall``; dense scores of
  300 users x every post): the share of the exact list's posts it finds, and of its summed
  scores it reaches (posts that tie, e.g. posts of the same few words, lower only the first),
  over the users whose exact list is not empty (product sources have nothing for users who
  bought nothing).

    python -m bench.catalogue_cost ../shared/data/ciao
    python -m bench.catalogue_cost DIR --users 1000 --recall

Single-threaded figures (one block at a time): compare codes by running the same command in a
checkout of each (``git worktree add``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

from bench.common import print_table

RECALL_DEPTHS = (600, 1200, 2400, 4800)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.catalogue_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="a dataset directory")
    p.add_argument("--users", type=int, default=400, help="users whose candidates are timed")
    p.add_argument("--recall", action="store_true", help="also each retrieval's recall")
    args = p.parse_args(argv)

    from feed.data import load
    from feed.features.matrices import build
    from feed.models.base import lookup
    from feed.models.candidates import is_global, sparse_top_per_product
    from feed.models.default import TrainConfig, make_blend
    from feed.train import _candidates_of, _NeighbourInputs, _neighbours_of

    data = build(load(args.data))
    t = time.perf_counter()
    blend = make_blend(TrainConfig()).fit(data)
    fit_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    active = np.flatnonzero(data.engagement.getnnz(axis=1) > 0)
    picked = np.sort(rng.choice(active, min(args.users + 50, len(active)), replace=False))
    warm, users = picked[:50], picked[50:]
    seen = data.seen()
    _candidates_of((blend, seen, 200), warm)
    t = time.process_time()
    _candidates_of((blend, seen, 200), users)
    per_user = (time.process_time() - t) / max(len(users), 1)

    content, item = blend.sources_["content"], blend.sources_["itemknn"]
    popularity = np.asarray(data.engagement.getnnz(axis=0)).ravel()
    pool = np.argsort(-popularity, kind="stable")[: TrainConfig().max_content_neighbour_posts]
    vectors = content.post_vectors_
    shared = _NeighbourInputs(item, vectors, pool, vectors[pool], TrainConfig().n_neighbours)
    step = max(1, 8_000_000 // (len(pool) + shared.n))
    posts = min(data.n_posts, 3 * step)
    t = time.process_time()
    for lo in range(0, posts, step):
        _neighbours_of(shared, (lo, min(lo + step, posts)))
    per_post = (time.process_time() - t) / max(posts, 1)
    excluded = np.diff(seen[users].indptr)
    print_table(
        f"{args.data}: {data.n_users:,} users x {data.n_posts:,} posts (fit {fit_s:.0f} s)",
        ("stage", "CPU ms", "of"),
        [
            ("candidates, a user", f"{per_user * 1e3:.1f}", f"{len(users)} users"),
            ("neighbours, a post", f"{per_post * 1e3:.3f}", f"{posts} posts"),
            ("(excluded posts a user: mean / median)", f"{excluded.mean():.0f}",
             f"{np.median(excluded):.0f}"),
        ],
    )  # fmt: skip
    if not args.recall:
        return 0
    builder = blend.builder_
    sample = users[:300]
    excl = seen[sample]
    rows = []
    for name, model in builder.sources.items():
        if is_global(model):
            continue
        scores = sp.csr_matrix(model.score_users(sample))
        exact = sparse_top_per_product(
            scores, builder.context.keys, 100, excl, positive_only=model.sparse_scores
        )
        found = []
        for depth in RECALL_DEPTHS:
            got = model.retrieve(sample, np.full(len(sample), depth))
            items = exact if got is None else sparse_top_per_product(
                got.scores, builder.context.keys, 100, excl, positive_only=model.sparse_scores
            )  # fmt: skip
            some = (exact >= 0).any(axis=1)  # a user the source has nothing for is no miss
            hit = [len(set(a[a >= 0]) & set(b[b >= 0])) / int((a >= 0).sum())
                   for a, b in zip(exact[some], items[some], strict=True)]  # fmt: skip
            mass = np.nansum(lookup(scores[some], items[some]), axis=1) / np.maximum(
                np.nansum(lookup(scores[some], exact[some]), axis=1), 1e-12
            )
            found.append(f"{np.mean(hit):.3f} / {np.mean(mass):.3f}" if some.any() else "-")
        rows.append((name, *found))
    print_table(
        f"Each source's retrieval against its exact top-100, {len(sample)} users: the share of "
        "its posts found / of its summed scores reached (posts that tie, such as posts with "
        "the same few words, lower the first and not the second)",
        ("source", *(f"{d} deep" for d in RECALL_DEPTHS)),
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
