"""Where the block-parallel stages of training run: threads here, or a Dask cluster.

The candidate stage splits by user and the neighbour stage by post block; every block depends
only on read-only objects fitted before the stage (the model, the matrix of seen posts). One
function runs such a stage wherever it is told to::

    map_blocks(fn, blocks, shared, cluster=None) == [fn(shared, b) for b in blocks]

- ``cluster=None``: in this process, on :func:`feed.models.base.parallel_map`'s threads.
- ``cluster="tcp://scheduler:8786"``: on the workers of a Dask cluster (``dask.distributed``,
  the optional extra ``shopfeed[distributed]``; imported only here, only then). ``shared`` is
  scattered once to every worker (``Client.scatter(..., broadcast=True)``), each block is one
  task (``Client.map``) calling ``fn`` with the worker's copy, and the results are gathered in the
  order of ``blocks``. ``fn`` must be a module-level function (sent by reference): the workers
  run the same ``feed`` (:func:`check` compares their sources' hash with this process's).

Both run the same ``fn`` on the same blocks, each block on one thread with BLAS pinned to one
thread, so the results are the same arrays bit for bit (``tests/test_distributed.py``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from threadpoolctl import ThreadpoolController

from feed import __version__
from feed.models.base import parallel_map

logger = logging.getLogger(__name__)

#: The environment variable ``feed train`` reads the scheduler's address from.
SCHEDULER_ENV = "FEED_DASK_SCHEDULER"
#: Seconds to reach the scheduler, and then to wait for its first worker.
CONNECT_TIMEOUT_S = 10.0

S = TypeVar("S")
B = TypeVar("B")
R = TypeVar("R")


class ClusterError(RuntimeError):
    """The Dask cluster named by ``--cluster`` cannot run the stage (unreachable, no worker,
    another version of ``feed`` on a worker, a worker lost)."""


def map_blocks(
    fn: Callable[[S, B], R],
    blocks: Sequence[B],
    shared: S,
    *,
    cluster: str | None = None,
    on_done: Callable[[], Any] | None = None,
) -> list[R]:
    """``[fn(shared, b) for b in blocks]``, on threads here or on the Dask cluster at ``cluster``.

    Parameters
    ----------
    fn : callable
        ``fn(shared, block)``; a module-level function when ``cluster`` is given.
    blocks : sequence
        The independent pieces of work (user arrays, post ranges).
    shared : object
        What every block reads and no block changes; sent to each worker once.
    cluster : str, optional
        A Dask scheduler's address (``tcp://host:8786``); None runs in this process.
    on_done : callable, optional
        Called with no argument as each block finishes (a progress bar's ``update``).

    Returns
    -------
    list of ``fn``'s results, in the order of ``blocks``.

    Examples
    --------
    >>> map_blocks(lambda k, b: k * b, [1, 2, 3], 10)
    [10, 20, 30]
    """
    blocks = list(blocks)
    if cluster is None:

        def run(block: B) -> R:
            result = fn(shared, block)
            if on_done is not None:
                on_done()
            return result

        return parallel_map(run, blocks)
    if not blocks:
        return []
    client = _connect(cluster)
    try:
        return _dask_map(client, cluster, fn, blocks, shared, on_done)
    finally:
        client.close()


def check(cluster: str) -> dict[str, Any]:
    """Connect to the scheduler at ``cluster``, wait for a worker, check that every worker runs
    the same ``feed`` as this process (its version and a hash of its sources: a worker started
    from another checkout, or before an edit, would compute other arrays); returns
    ``{"scheduler", "workers", "threads"}`` (for the manifest).

    Raises
    ------
    ClusterError
        When the scheduler cannot be reached, has no worker, or a worker cannot import ``feed``
        or runs another build of it.
    """
    client = _connect(cluster)
    try:
        try:
            builds = client.run(feed_build)
        except Exception as e:  # what a worker without feed raises: unpickling the function
            raise ClusterError(
                f"a worker of the Dask cluster at {cluster} cannot run feed: {e}"
            ) from e
        ours = feed_build()
        other = {w: b for w, b in builds.items() if b != ours}
        if other:
            raise ClusterError(
                f"workers of the Dask cluster at {cluster} run another build of feed than this "
                f"process ({ours}): {other}"
            )
        nthreads = client.nthreads()
        return {
            "scheduler": cluster,
            "workers": len(nthreads),
            "threads": int(sum(nthreads.values())),
        }
    finally:
        client.close()


def _connect(cluster: str) -> Any:
    """A ``distributed.Client`` of the scheduler at ``cluster`` with at least one worker."""
    try:
        from distributed import Client
    except ImportError as e:
        raise ClusterError(
            f"--cluster {cluster} needs Dask's distributed scheduler: "
            "pip install 'shopfeed[distributed]'"
        ) from e
    try:
        client = Client(cluster, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {cluster} within {CONNECT_TIMEOUT_S:g} s: {e}"
        ) from e
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
    except TimeoutError as e:
        client.close()
        raise ClusterError(
            f"the Dask scheduler at {cluster} has no worker (waited {CONNECT_TIMEOUT_S:g} s)"
        ) from e
    return client


def _dask_map(
    client: Any,
    cluster: str,
    fn: Callable[[S, B], R],
    blocks: list[B],
    shared: S,
    on_done: Callable[[], Any] | None,
) -> list[R]:
    from distributed import KilledWorker, as_completed

    try:
        [handle] = client.scatter([shared], broadcast=True, hash=False)
        run = uuid.uuid4().hex[:8]
        keys = [f"{fn.__name__}-{run}-{i}" for i in range(len(blocks))]
        futures = client.map(_call, blocks, key=keys, fn=fn, shared=handle, pure=False)
        for _ in as_completed(futures, loop=client.loop):
            if on_done is not None:
                on_done()
        results: list[R] = client.gather(futures)
        return results
    except (OSError, KilledWorker) as e:  # CommClosedError is an OSError
        raise ClusterError(
            f"the Dask cluster at {cluster} failed the stage {fn.__name__}: {e}"
        ) from e


def _call(block: B, *, fn: Callable[[S, B], R], shared: S) -> R:
    """One task on a worker: one block on the worker's thread, BLAS pinned to one thread as
    :func:`~feed.models.base.parallel_map` pins it."""
    with _threadpools().limit(limits=1, user_api="blas"):
        return fn(shared, block)


@functools.cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()


def _sources_build() -> str:
    """``feed``'s version and the sha256 (16 hex digits) of its Python sources on disk now
    (``0.1.0+3f9a...``)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{h.hexdigest()[:16]}"


#: The build of ``feed`` this process loaded: its sources' hash when this module was imported
#: (with ``feed.train``, at the start of a run), so files edited since do not change it.
BUILD = _sources_build()


def feed_build() -> str:
    """The build of ``feed`` this process runs (:data:`BUILD`), what :func:`check` compares."""
    return BUILD
