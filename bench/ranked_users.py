"""What the ranker's budget of users costs in quality and saves in time (docs/scaling.md, "The
ranker's budget of users").

A validation slice is carved off DATA as training carves it (the protocol the data supports);
the default model is fitted on the rest (no source tuning, to keep the run short); for a seeded
sample of the slice's users it compares the learned ranker's top 20 with the fallback list the
users beyond ``TrainConfig.ranked_users`` get (:func:`feed.train.cohort_candidates`), by the
slice's primary metric, overall and by history length, with each list's cost per user.

    python -m bench.groupbuy --out /tmp/gb/data
    python -m bench.ranked_users /tmp/gb/data --users 4000      # about 3 min at scale 1.0
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from feed.data import load
from feed.evaluation.metrics import per_user
from feed.evaluation.splits import Splitter, choose_method
from feed.models.default import TrainConfig, make_blend
from feed.models.tuning import validation_slice
from feed.train import cohort_candidates, cohort_source

BUCKETS = ((1, 3), (3, 5), (5, 10), (10, 30), (30, 10**9))  # engaged posts in the history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--users", type=int, default=4000, help="validation users compared")
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()

    ds = load(args.data)
    method, _ = choose_method(ds, 0.2)
    cfg = replace(TrainConfig(tune=()), split=method)
    val = validation_slice(ds, Splitter(method), cfg.val_frac, 1, max_users=args.users)
    if val is None:
        raise SystemExit(f"{args.data}: no validation slice to compare on")
    data, truth = val.data, val.truth
    t = time.perf_counter()
    blend = make_blend(cfg).fit(data)
    fit_s = time.perf_counter() - t
    print(f"{method} split: {data.n_users} users, {data.n_posts} posts; fit {fit_s:.0f} s")
    users = truth.users
    t = time.perf_counter()
    ranked, _ = blend.recommend(users, args.k, val.exclude)
    t_ranked = time.perf_counter() - t
    t = time.perf_counter()
    fallback, _, _ = cohort_candidates(blend, data, users, args.k)
    t_fallback = time.perf_counter() - t
    a = per_user(ranked, truth, data, val.metric)
    b = per_user(fallback, truth, data, val.metric)
    ok = np.isfinite(a) & np.isfinite(b)
    history = np.diff(data.engagement.indptr)[users] + np.diff(data.follows.indptr)[users]
    print(f"fallback source: {cohort_source(blend)}; {val.metric}@{args.k} on {ok.sum()} users")
    print("| history | users | ranker | fallback | ratio | difference (95% interval) |")
    print("|---|---|---|---|---|---|")
    for lo, hi in (*BUCKETS, (0, 10**9)):
        m = ok & (history >= lo) & (history < hi)
        if m.sum() < 5:
            continue
        d = b[m] - a[m]
        half = 1.96 * d.std() / np.sqrt(m.sum())
        name = "all" if (lo, hi) == (0, 10**9) else f"{lo}-{hi - 1 if hi < 10**9 else '...'}"
        print(
            f"| {name} | {m.sum()} | {a[m].mean():.4f} | {b[m].mean():.4f} | "
            f"{b[m].mean() / max(a[m].mean(), 1e-12):.2f} | {d.mean():+.4f} ± {half:.4f} |"
        )
    n = max(len(users), 1)
    print(f"ms per user: ranker {1000 * t_ranked / n:.2f}, fallback {1000 * t_fallback / n:.3f}")


if __name__ == "__main__":
    main()
