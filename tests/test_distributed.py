"""``feed train --cluster``: the candidate and neighbour stages on a real Dask cluster.

A ``LocalCluster`` of two single-threaded worker processes (started once for the module) runs
:func:`feed.distributed.map_blocks`: results in the blocks' order, the shared object sent to
each worker once, a task's error raised to the caller; ``feed train`` on it writes the same
candidate and neighbour arrays as in process; an unreachable scheduler is refused before any
work, naming the address, with no version written.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from distributed import LocalCluster
from helpers import free_port

from feed.artifacts import read
from feed.cli import main
from feed.distributed import check, map_blocks

#: Times a process unpickled each shared object (by its token): the workers' view of "sent once".
_UNPICKLED: Counter[str] = Counter()


class Shared:
    """A shared object that counts its arrivals in a process."""

    def __init__(self, scale: np.ndarray) -> None:
        self.token = uuid.uuid4().hex
        self.scale = scale

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _UNPICKLED[self.token] += 1


def scaled(shared: Shared, block: np.ndarray) -> tuple[np.ndarray, int, int]:
    """A block's values times the shared scale, with the process and its arrivals count."""
    return block * shared.scale, os.getpid(), _UNPICKLED[shared.token]


def fails_on_three(shared: Shared, block: int) -> int:
    if block == 3:
        raise ValueError("block 3 is bad")
    return block


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local:
        yield local.scheduler_address


def test_map_blocks_keeps_order_and_sends_the_shared_object_once(cluster: str) -> None:
    shared = Shared(np.arange(1, 4, dtype=np.float64))
    blocks = [np.full(3, float(i)) for i in range(12)]
    done: list[int] = []
    out = map_blocks(scaled, blocks, shared, cluster=cluster, on_done=lambda: done.append(1))
    here = map_blocks(scaled, blocks, shared)
    assert len(done) == len(blocks)
    for b, (values, pid, arrivals), (local, _, _) in zip(blocks, out, here, strict=True):
        assert np.array_equal(values, b * shared.scale) and np.array_equal(values, local)
        assert pid != os.getpid()  # ran on a worker process
        assert arrivals == 1  # the worker unpickled the shared object once for all its blocks
    assert check(cluster) == {"scheduler": cluster, "workers": 2, "threads": 2}


def test_a_task_error_reaches_the_caller(cluster: str) -> None:
    with pytest.raises(ValueError, match="block 3 is bad"):
        map_blocks(fails_on_three, list(range(6)), Shared(np.ones(1)), cluster=cluster)


def test_an_unreachable_scheduler_is_refused_before_any_work(
    dataset_dir: Path, tmp_path: Path
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "artifacts"
    res = CliRunner().invoke(
        main, ["train", str(dataset_dir), "--out", str(out), "--no-progress", "--cluster", address]
    )
    assert res.exit_code == 1, res.output
    assert f"cannot reach the Dask scheduler at {address}" in res.output
    assert "no version was written" in res.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_train_on_the_cluster_writes_the_in_process_arrays(
    cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feed.data.synth import SynthConfig, generate

    # 3,000 posts: two blocks of neighbours; 1,200 users: three blocks of candidates
    data = tmp_path / "data"
    generate(data, SynthConfig(n_users=1200, n_posts=3000, n_topics=6, likes_per_user=8, seed=5))
    args = ["train", str(data), "--no-progress", "--factors", "8", "--candidates", "50"]
    runner = CliRunner()
    monkeypatch.delenv("FEED_DASK_SCHEDULER", raising=False)
    here = runner.invoke(main, [*args, "--out", str(tmp_path / "here")], catch_exceptions=False)
    assert here.exit_code == 0, here.output
    monkeypatch.setenv("FEED_DASK_SCHEDULER", cluster)  # the option's environment variable
    there = runner.invoke(main, [*args, "--out", str(tmp_path / "there")], catch_exceptions=False)
    assert there.exit_code == 0, there.output

    a = read(tmp_path / "here" / here.output.strip().splitlines()[-1])
    b = read(tmp_path / "there" / there.output.strip().splitlines()[-1])
    assert a.manifest["engine"] == {"kind": "threads"}
    engine = {"kind": "dask", "scheduler": cluster, "workers": 2, "threads": 2}
    assert b.manifest["engine"] == engine
    assert a.manifest["counts"]["users"] > 1024 and a.manifest["counts"]["posts"] == 3000
    for name in ("candidates", "neighbours", "trending"):
        ours, theirs = a.arrays(name), b.arrays(name)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key].dtype == theirs[key].dtype, (name, key)
            assert np.array_equal(ours[key], theirs[key]), (name, key)
