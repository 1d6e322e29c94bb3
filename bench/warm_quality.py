"""Quality of a warm-started ``feed train`` against a full one, on held-out likes.

``--test-frac`` of a dataset's likes are held out as ``feed evaluate`` holds them out (the
protocol the data supports, :func:`feed.evaluation.splits.split`: per-user time on MovieLens;
under a time cut the clicks, shares, follows and groups after it leave the training part
too); on the rest (the training part):

* **full**: ``feed train`` (validation fits, ranker choice, page policy);
* **warm, same data**: ``feed train --warm-start <full>`` on the same training part;
* **full, the day before**: ``feed train`` on the training part without its last day (the
  likes and purchases of its newest 24 hours, every timed table cut at the same time;
  ``--daily-frac`` cuts that share of the likes and purchases instead), judged as it is;
* **warm, daily**: ``feed train --warm-start`` from that version on the whole training part
  (the chosen ranker refitted on its validation slices), and the same with ``--warm-ranker
  reuse`` (the day before's fitted ranker as it is).

Each version's published candidate lists are judged on the held-out likes of the users it
lists (NDCG@20 and recall@20, as ``feed evaluate`` computes them; the published lists exclude
what a user engaged with in training). The gap is the mean of the per-user paired difference
with its standard error. The ranker column is each version's choice (a warm start keeps the
one it started from).

    python -m bench.warm_quality ../shared/data/movielens-small
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bench.common import feed_cli, print_table

if TYPE_CHECKING:
    from feed.data import Dataset

K = 20


def training_part(
    src: Path | Dataset, dst: Path, frac: float, method: str
) -> tuple[pd.DataFrame, str]:
    """Write to ``dst`` the training part of the dataset ``src`` (a directory, or loaded) as
    ``feed evaluate`` cuts it
    (:func:`feed.evaluation.splits.split`: ``frac`` of the likes and purchases held out by
    ``method``; a time cut takes the clicks, shares, follows and groups after it too, so none
    of the held-out period's events is trained on); returns the held-out likes and the protocol.
    """
    from feed.data import SCHEMA, load
    from feed.evaluation.splits import split
    from feed.events_export import write_tables

    part = split(load(src) if isinstance(src, Path) else src, frac, 0, method)
    write_tables(dst, {name: getattr(part.train, name) for name in SCHEMA})
    return part.test_likes[["user_id", "post_id"]].astype(str), part.method


def last_day_share(ds: Dataset, hours: float = 24.0) -> float | None:
    """The share of the likes and purchases of ``ds`` in its newest ``hours`` (None without
    timestamps)."""
    if not ds.has_timestamps:
        return None
    ts = np.concatenate([ds.likes["ts"].to_numpy(float), ds.purchases["ts"].to_numpy(float)])
    return float(np.mean(ts > ts.max() - hours * 3600))


def per_user_quality(version: Path, held: pd.DataFrame) -> pd.DataFrame:
    """NDCG@K and recall@K of a version's published lists per held-out user it lists."""
    from feed.evaluation.metrics import ndcg_at_k, recall_at_k

    with np.load(version / "candidates.npz", allow_pickle=False) as z:
        users, items = z["users"].astype(str), z["items"][:, :K]
    with np.load(version / "posts.npz", allow_pickle=False) as z:
        post_ids = z["post_id"].astype(str)
    post_index = {p: i for i, p in enumerate(post_ids)}
    row = {u: i for i, u in enumerate(users)}
    held = held[held["user_id"].isin(row) & held["post_id"].isin(post_index)]
    names = np.array(sorted(held["user_id"].unique()))
    rows = np.array([row[u] for u in names], dtype=np.int64)
    local = {u: i for i, u in enumerate(names)}
    truth = sp.csr_matrix(
        (
            np.ones(len(held)),
            (held["user_id"].map(local).to_numpy(), held["post_id"].map(post_index).to_numpy()),
        ),
        shape=(len(names), len(post_ids)),
    )
    truth.data[:] = 1.0
    top = items[rows].astype(np.int64)
    return pd.DataFrame(
        {"ndcg": ndcg_at_k(top, truth), "recall": recall_at_k(top, truth)}, index=names
    )


def train(data: Path, out: Path, *extra: str) -> tuple[Path, float, dict[str, Any]]:
    seconds, stdout = feed_cli("train", str(data), "--out", str(out), "--no-progress", *extra)
    version = out / stdout.strip().splitlines()[-1]
    return version, seconds, json.loads((version / "manifest.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.warm_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", type=Path, help="a dataset directory")
    p.add_argument("--test-frac", type=float, default=0.2, help="likes held out")
    p.add_argument(
        "--daily-frac",
        type=float,
        default=None,
        help="the day's share of new likes and purchases (default: those of the last 24 h)",
    )
    args = p.parse_args(argv)
    from feed.data import load

    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        work = Path(tmp)
        held, method = training_part(args.data, work / "train", args.test_frac, "auto")
        trained = load(work / "train")
        daily = args.daily_frac or last_day_share(trained)
        if daily is None:
            p.error("the day before is cut by time: the likes and purchases need timestamps")
        training_part(trained, work / "before", daily, "global-time")
        del trained
        full, full_s, full_m = train(work / "train", work / "art")
        same, same_s, same_m = train(work / "train", work / "art", "--warm-start", str(full))
        day, day_s, day_m = train(work / "before", work / "art")
        daily_v, daily_s, daily_m = train(work / "train", work / "art", "--warm-start", str(day))
        reuse_v, reuse_s, reuse_m = train(
            work / "train", work / "art", "--warm-start", str(day), "--warm-ranker", "reuse"
        )
        base = per_user_quality(full, held)
        rows = []
        for name, version, seconds, m in (
            ("full", full, full_s, full_m),
            ("warm, same data", same, same_s, same_m),
            (f"full, the day before (-{daily:.1%} likes), not updated", day, day_s, day_m),
            (f"warm, daily (+{daily:.1%} likes)", daily_v, daily_s, daily_m),
            ("warm, daily, the ranker reused", reuse_v, reuse_s, reuse_m),
        ):
            q = base if version == full else per_user_quality(version, held).reindex(base.index)
            gap = (q["ndcg"] - base["ndcg"]).to_numpy()
            gap = gap[np.isfinite(gap)]
            judged = version != full  # the full train is what the others are judged against
            rows.append(
                (
                    name,
                    m["model"]["kind"],
                    seconds,
                    q["ndcg"].mean(),
                    q["recall"].mean(),
                    f"{q['ndcg'].mean() / base['ndcg'].mean() - 1:+.2%}" if judged else "",
                    f"{gap.mean():+.5f} ± {gap.std(ddof=1) / np.sqrt(len(gap)):.5f}"
                    if judged
                    else "",
                )
            )
        print_table(
            f"{args.data}: {len(held):,} held-out likes ({method}, {args.test_frac:.0%}) of "
            f"{len(base):,} users; lists published by each version",
            (
                "version",
                "ranker",
                "train (s)",
                f"NDCG@{K}",
                f"recall@{K}",
                "vs full",
                "paired gap ± SE",
            ),
            rows,
        )
        for name, m in (("same data", same_m), ("daily", daily_m)):
            print(f"\nwarm ({name}) factors: {json.dumps(m['warm_start']['factors'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
