"""The candidate stage on a Dask ``LocalCluster`` of 1 and of 2 single-threaded workers.

Fits the default model once on a dataset, then runs the candidate stage
(:func:`feed.train._user_candidates`) for the same users three ways: in this process (threads,
the reference), on a ``LocalCluster`` of one single-threaded worker process, and of two. Each
cluster run includes sending the model to the workers (``Client.scatter``, once a stage); the
clusters are started before their clock starts. The three results must be the same arrays.
Prints wall and CPU seconds (this process's, or the workers') and the load average around each
run: on a shared machine a wall-clock speed-up means little without them.

    feed generate /tmp/dk --users 20000 --posts 20000 --likes-per-user 20
    python -m bench.distributed /tmp/dk --users 6000
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np


def _timed(label: str, run: Any, cpu: Any = time.process_time) -> tuple[float, Any]:
    """``run()``'s wall seconds; prints them with the CPU seconds ``cpu()`` counts (this
    process, or the cluster's workers) and the load average before and after."""
    before, cpu0 = os.getloadavg()[0], cpu()
    t = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t
    print(
        f"{label:<28}{seconds:>8.1f} s wall {cpu() - cpu0:>8.1f} s CPU   "
        f"load average {before:.1f} -> {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return seconds, out


def main(argv: list[str] | None = None) -> None:
    from distributed import Client, LocalCluster

    from feed.data import load
    from feed.features.matrices import EngagementWeights, build
    from feed.models.default import TrainConfig, make_blend
    from feed.train import _user_candidates

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--users", type=int, default=0, help="active users timed (0: every one)")
    args = ap.parse_args(argv)

    data = build(load(args.data), EngagementWeights())
    fit_s, blend = _timed("fit (default model)", lambda: make_blend(TrainConfig()).fit(data))
    active = np.flatnonzero(np.diff(data.engagement.indptr) + np.diff(data.follows.indptr) > 0)
    users = active[: args.users] if args.users else active
    size = len(pickle.dumps((blend, data.seen()), protocol=5))
    print(f"{len(users):,} users x {data.n_posts:,} posts; model + seen posts {size / 1e6:.0f} MB")

    n = TrainConfig().n_candidates
    _, ref = _timed("in process (threads)", lambda: _user_candidates(blend, data, users, n, False))
    times = {}
    for workers in (1, 2):
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            address = cluster.scheduler_address
            times[workers], got = _timed(
                f"LocalCluster, {workers} worker(s)",
                lambda address=address: _user_candidates(blend, data, users, n, False, address),
                lambda client=client: sum(client.run(time.process_time).values()),
            )
        same = all(np.array_equal(a, b) for a, b in zip(ref, got, strict=True))
        print(f"  same arrays as in process: {same}")
    print(f"speed-up of 2 workers over 1: {times[1] / times[2]:.2f}x")


if __name__ == "__main__":
    main()
