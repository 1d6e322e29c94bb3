"""``feed train`` end to end against a bare implicit ALS fit on the same matrix.

For each size: generate a synthetic dataset, fit a bare ``AlternatingLeastSquares`` (64 factors,
15 iterations, BLAS pinned to one thread, implicit's own threads) on the pipeline's user x post
engagement matrix, run ``feed train`` in a fresh interpreter (load, features, every source,
candidates, neighbours, artifact), then fit the bare ALS again; the reference is the mean of
the two fits, so drift in machine load during the run shows up in both.

    python -m bench.train                        # 0.1M likes (20-80 s)
    python -m bench.train --likes 1m             # the target's size (about 5 min on 2 cores)
    python -m bench.train --likes 0.1m,1m,5m --keep /tmp/bench-art

With ``--warm-start``, the daily path: the newest 5% of the generated likes are held back,
``feed train`` runs on the rest (the day before), then ``feed train --warm-start <that
version>`` on all of it (the day's new likes added), against the bare ALS fit of the whole
matrix (before the full train and after the warm ones). The warm retrain runs twice from the
same version: as ``feed train`` runs it (the chosen ranker refitted on validation slices) and
with ``--warm-ranker reuse`` (the previous fitted ranker, no validation slice). The target: the
warm retrain <= 5x the bare fit at 1M likes.

    python -m bench.train --likes 1m --warm-start
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    TARGET_HEADERS,
    feed_cli,
    feed_cli_measured,
    generate,
    human,
    parse_count,
    print_table,
    ratio,
    shape_for,
)

TARGET_RATIO = 5.0  # feed train <= 5x the bare ALS fit on 1M likes
WARM_TARGET_RATIO = 5.0  # feed train --warm-start <= 5x the bare ALS fit on 1M likes
NEW_LIKES = 0.05  # the share of the likes a warm retrain adds to the previous version's
FACTORS, ITERATIONS = 64, 15


def engagement_matrix(data_dir: Path) -> Any:
    """The user x post matrix exactly as ``feed train`` builds it."""
    from feed.data import load
    from feed.features.matrices import EngagementWeights, build

    return build(load(data_dir), EngagementWeights()).engagement


def bare_als(matrix: Any) -> float:
    """Seconds of one bare implicit ALS fit (the training's own ALS settings)."""
    import numpy as np
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    x = sp.csr_matrix(matrix, dtype=np.float32)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=FACTORS, iterations=ITERATIONS, regularization=0.05, alpha=10.0, random_state=0
        )
        t = time.perf_counter()
        model.fit(x, show_progress=False)
        return time.perf_counter() - t


def run_size(likes: int, work: Path, posts: int | None) -> dict[str, Any]:
    data, out = work / "data", work / "artifacts"
    t = time.perf_counter()
    rows = generate(data, likes, posts)
    gen_s = time.perf_counter() - t
    matrix = engagement_matrix(data)
    als_before = bare_als(matrix)
    train_s, rss_gb, stdout = feed_cli_measured(
        "train", str(data), "--out", str(out), "--no-progress", "--factors", str(FACTORS)
    )
    als_after = bare_als(matrix)
    version = stdout.strip().splitlines()[-1]
    manifest = json.loads((out / version / "manifest.json").read_text())
    return {
        "size": likes,
        "likes": rows["likes.csv"],
        "users": matrix.shape[0],
        "posts": matrix.shape[1],
        "nnz": matrix.nnz,
        "generate_s": gen_s,
        "train_s": train_s,
        "rss_gb": rss_gb,
        "als_s": (als_before + als_after) / 2,
        "als_runs": (als_before, als_after),
        "timings": manifest["timings"],
        "peak_rss_mb": manifest.get("peak_rss_mb", {}),
        "fit_timings": manifest["model"].get("timings", {}),
        "artifact": out / version,
        "artifact_mb": sum(f.stat().st_size for f in (out / version).iterdir()) / 1e6,
    }


def run_warm(likes: int, work: Path, posts: int | None) -> dict[str, Any]:
    """Full train on the data but its newest :data:`NEW_LIKES`, then a warm retrain from that
    version on all of it; the bare ALS fit of the whole matrix before and after."""
    from bench.warm_quality import training_part

    data, before, out = work / "data", work / "before", work / "artifacts"
    rows = generate(data, likes, posts)
    new, _ = training_part(data, before, NEW_LIKES, "global-time")
    matrix = engagement_matrix(data)
    als_before = bare_als(matrix)
    full_s, stdout = feed_cli("train", str(before), "--out", str(out), "--no-progress")
    previous = out / stdout.strip().splitlines()[-1]
    warm_args = ("--no-progress", "--warm-start", str(previous), "--warm-ranker")
    warm = [
        feed_cli_measured("train", str(data), "--out", str(out), *warm_args, mode)
        for mode in ("refit", "reuse")
    ]
    als_after = bare_als(matrix)
    (warm_s, rss_gb, stdout), (reuse_s, _, reuse_out) = warm
    manifest = json.loads((out / stdout.strip().splitlines()[-1] / "manifest.json").read_text())
    reused = json.loads((out / reuse_out.strip().splitlines()[-1] / "manifest.json").read_text())
    return {
        "size": likes,
        "likes": rows["likes.csv"],
        "new_likes": len(new),
        "users": matrix.shape[0],
        "posts": matrix.shape[1],
        "nnz": matrix.nnz,
        "full_s": full_s,
        "train_s": warm_s,
        "rss_gb": rss_gb,
        "als_s": (als_before + als_after) / 2,
        "als_runs": (als_before, als_after),
        "timings": manifest["timings"],
        "peak_rss_mb": manifest.get("peak_rss_mb", {}),
        "fit_timings": manifest["model"].get("timings", {}),
        "factors": manifest["warm_start"]["factors"],
        "reuse_s": reuse_s,
        "reuse_fit_s": reused["timings"]["fit_s"],
    }


STAGE_HEADERS = ("stage", "seconds", "share", "x bare ALS", "peak RSS by its end (GB)")
SUB_STAGES = {"candidates_ranked_s"}  # a part of the stage after it, not a stage of its own


def stage_rows(res: dict[str, Any], breakdown: bool = False) -> list[tuple[Any, ...]]:
    """One row per stage of the manifest's timings (sub-stages indented, ``breakdown``: the
    fit's parts too), the rest of the wall time as "write, start-up", and the total."""
    total, rss = res["train_s"], res.get("peak_rss_mb", {})
    rows: list[tuple[Any, ...]] = []
    for k, v in res["timings"].items():
        name = k.removesuffix("_s")
        row = (v, f"{v / total:.0%}", ratio(v, res["als_s"]), rss.get(name, 0) / 1e3 or "")
        rows.append(((f"  {name}" if k in SUB_STAGES else name), *row))
        if breakdown and k == "fit_s":  # validation slices, choice, final fits per source
            rows += [
                (f"  {part.removesuffix('_s')}", s, f"{s / total:.0%}", "", "")
                for part, s in res["fit_timings"].items()
            ]
    rest = total - sum(v for k, v in res["timings"].items() if k not in SUB_STAGES)
    rows.append(("write, start-up", rest, f"{rest / total:.0%}", ratio(rest, res["als_s"]), ""))
    return rows + [("total", total, "100%", ratio(total, res["als_s"]), res["rss_gb"])]


def report_warm(res: dict[str, Any]) -> None:
    print_table(
        f"feed train --warm-start on {res['likes']:,} likes ({res['new_likes']:,} new since the "
        f"previous version): {res['users']:,} users x {res['posts']:,} posts",
        STAGE_HEADERS,
        stage_rows(res, breakdown=True),
    )
    print(f"\nfactors: {json.dumps(res['factors'])}")
    a, b = res["als_runs"]
    warm, full = ratio(res["train_s"], res["als_s"]), ratio(res["full_s"], res["als_s"])
    reuse, reuse_fit = ratio(res["reuse_s"], res["als_s"]), ratio(res["reuse_fit_s"], res["als_s"])
    fit = ratio(res["timings"]["fit_s"], res["als_s"])
    print_table(
        f"target at {human(res['size'])} likes (defined at 1M)",
        TARGET_HEADERS,
        [
            (
                "feed train --warm-start (s)",
                res["train_s"],
                f"bare ALS {res['als_s']:.2f} s ({a:.2f}, {b:.2f})",
                f"{warm:.1f}x",
                f"<= {WARM_TARGET_RATIO:g}x",
                warm <= WARM_TARGET_RATIO,
            ),
            ("  of which the fit (s)", res["timings"]["fit_s"], "", f"{fit:.1f}x", "", ""),
            (
                "feed train --warm-start --warm-ranker reuse (s)",
                res["reuse_s"],
                "",
                f"{reuse:.1f}x",
                f"<= {WARM_TARGET_RATIO:g}x",
                reuse <= WARM_TARGET_RATIO,
            ),
            ("  of which the fit (s)", res["reuse_fit_s"], "", f"{reuse_fit:.1f}x", "", ""),
            ("full feed train before it (s)", res["full_s"], "", f"{full:.1f}x", "", ""),
        ],
    )


def report(res: dict[str, Any]) -> None:
    size = human(res["size"])
    print_table(
        f"feed train on {res['likes']:,} likes: {res['users']:,} users x {res['posts']:,} posts, "
        f"{res['nnz']:,} non-zeros (artifact {res['artifact_mb']:.0f} MB)",
        STAGE_HEADERS,
        stage_rows(res, breakdown=True),
    )
    r = ratio(res["train_s"], res["als_s"])
    a, b = res["als_runs"]
    print_table(
        f"target at {size} likes (defined at 1M)",
        TARGET_HEADERS,
        [
            (
                "feed train (s)",
                res["train_s"],
                f"bare ALS {res['als_s']:.2f} s ({a:.2f}, {b:.2f})",
                f"{r:.1f}x",
                f"<= {TARGET_RATIO:g}x",
                r <= TARGET_RATIO,
            )
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--likes",
        default="0.1m",
        help="comma-separated sizes in likes, e.g. 0.1m,1m,5m (default 0.1m)",
    )
    p.add_argument(
        "--posts",
        type=int,
        default=None,
        help="catalogue size (default: 0.4 posts per user, at most 20,000)",
    )
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep each size's data and artifact under this directory",
    )
    p.add_argument(
        "--warm-start",
        action="store_true",
        help="measure the daily warm retrain (5%% new likes) instead of a full train",
    )
    args = p.parse_args(argv)
    sizes = [parse_count(x) for x in args.likes.split(",")]
    if args.warm_start:
        for likes in sizes:
            print(f"\n== {human(likes)} likes: full train on 95%, warm retrain on all", flush=True)
            with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
                work = args.keep / human(likes) if args.keep else Path(tmp)
                report_warm(run_warm(likes, work, args.posts))
        return 0
    summary = []
    for likes in sizes:
        users, posts = shape_for(likes, args.posts)
        print(
            f"\n== {human(likes)} likes: generating {users:,} users, {posts:,} posts; "
            "bare ALS, feed train, bare ALS ...",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            work = args.keep / human(likes) if args.keep else Path(tmp)
            res = run_size(likes, work, args.posts)
        report(res)
        summary.append(res)
    if len(summary) > 1:
        base = summary[0]
        print_table(
            "growth",
            (
                "likes",
                "users x posts",
                "feed train (s)",
                "bare ALS (s)",
                "ratio",
                "train growth",
                "likes growth",
                "peak RSS (GB)",
            ),
            [
                (
                    f"{s['likes']:,}",
                    f"{s['users']:,} x {s['posts']:,}",
                    s["train_s"],
                    s["als_s"],
                    f"{ratio(s['train_s'], s['als_s']):.1f}x",
                    f"{ratio(s['train_s'], base['train_s']):.1f}x",
                    f"{ratio(s['likes'], base['likes']):.1f}x",
                    s["rss_gb"],
                )
                for s in summary
            ],
        )
    if args.keep:
        print("\nartifacts kept: " + ", ".join(str(s["artifact"]) for s in summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
