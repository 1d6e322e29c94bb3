"""A dataset whose likes carry heavy-tailed weights (play counts), from MovieLens ratings: what
``feed evaluate`` compares the like strengths on (``EngagementWeights.like_scale``).

MovieLens ratings of 4 and more become likes of the converted dataset (``../movielens-small``,
the same rows); each gets a ``weight`` drawn like a play count: lognormal, with a per-user
level (some users play hundreds of times more than others), a small lift for a higher rating
(so the weight carries a little taste) and noise. Seeded; the posts and products are copied.

    python -m bench.weighted_likes ../shared/data/raw/ml-latest-small \
        ../shared/data/movielens-small OUT
    feed evaluate OUT --split random --json new.json   # and old.json in a checkout of
    feed evaluate-compare old.json new.json            # the other code: user by user

The weights are made up, so what this can show is robustness (the served pages should not
fall when the likes gain a unit and a heavy tail), not what a real play count is worth.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.weighted_likes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("raw", type=Path, help="ml-latest-small as GroupLens ships it (ratings.csv)")
    p.add_argument("converted", type=Path, help="the same data converted (posts.csv, products.csv)")
    p.add_argument("out", type=Path)
    p.add_argument("--user-sigma", type=float, default=1.5, help="spread of the per-user level")
    p.add_argument("--noise", type=float, default=1.2, help="spread of a like's own noise")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    r = pd.read_csv(args.raw / "ratings.csv")
    r = r[r["rating"] >= 4.0]
    users = r["userId"].unique()
    level = pd.Series(rng.normal(3.0, args.user_sigma, len(users)), index=users)
    log_plays = (
        level.loc[r["userId"]].to_numpy()
        + (r["rating"].to_numpy() - 4.0)
        + rng.normal(0.0, args.noise, len(r))
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("posts.csv", "products.csv"):
        shutil.copyfile(args.converted / name, args.out / name)
    likes = pd.DataFrame(
        {
            "user_id": r["userId"],
            "post_id": "m" + r["movieId"].astype(str),
            "ts": r["timestamp"],
            "weight": np.maximum(1, np.round(np.exp(log_plays))).astype(int),
        }
    )
    likes.to_csv(args.out / "likes.csv", index=False)
    q = likes["weight"].quantile([0.1, 0.5, 0.9, 0.99]).to_dict()
    print(f"{len(likes):,} likes; weight quantiles {q}, max {likes['weight'].max():,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
