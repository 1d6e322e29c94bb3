"""What the benchmarks share: sizes, synthetic data, a private Redis server, tables."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LIKES_PER_USER = 20.0  # synthetic users like this many posts on average
POSTS_PER_USER = 0.4  # catalogue size relative to users ...
MAX_POSTS = 20_000  # ... capped here (the content-neighbour pool is 20k posts anyway)


def parse_count(text: str) -> int:
    """``"100k"``, ``"1m"``, ``"0.1M"``, ``"5000"`` -> an int."""
    t = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def human(n: float) -> str:
    """1_000_000 -> '1M', 100_000 -> '0.1M', 5_000 -> '5k'."""
    if n >= 100_000:
        return f"{n / 1e6:g}M"
    return f"{n / 1e3:g}k" if n >= 1_000 else f"{n:g}"


def shape_for(likes: int, posts: int | None = None) -> tuple[int, int]:
    """(users, posts) of a synthetic dataset with about ``likes`` likes."""
    users = max(50, round(likes / LIKES_PER_USER))
    return users, posts or min(MAX_POSTS, max(200, round(users * POSTS_PER_USER)))


def generate(out: Path, likes: int, posts: int | None = None, seed: int = 1) -> dict[str, int]:
    """A synthetic dataset of about ``likes`` likes in ``out`` (row counts per file)."""
    from feed.data.synth import SynthConfig
    from feed.data.synth import generate as gen

    users, n_posts = shape_for(likes, posts)
    return gen(
        out, SynthConfig(n_users=users, n_posts=n_posts, likes_per_user=LIKES_PER_USER, seed=seed)
    )


def feed_cli_measured(*args: str, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``feed ARGS`` in a fresh interpreter: (wall seconds, peak RSS in GB, stdout). Raises
    on failure."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "feed.cli", *args],
            stdout=out,
            stderr=err,
            env={**os.environ, **(env or {})},
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"feed {' '.join(args)} failed:\n{err.read()[-3000:]}")
        return seconds, usage.ru_maxrss / 1e6, out.read()  # ru_maxrss is in KB on Linux


def feed_cli(*args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """:func:`feed_cli_measured` without the memory: (wall seconds, stdout)."""
    seconds, _, stdout = feed_cli_measured(*args, env=env)
    return seconds, stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis(directory: Path | None = None, unix_socket: bool = False) -> Iterator[str]:
    """An empty, non-persistent Redis server on a loopback port (or a Unix socket), stopped on
    exit."""
    from feed import redisserver

    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        d = directory or Path(tmp)
        url = redisserver.start(d, port=None if unix_socket else free_port(), persist=False)
        try:
            yield url
        finally:
            redisserver.stop(d)


def ratio(measured: float, reference: float) -> float:
    return measured / reference if reference else float("nan")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain-text table (Markdown-compatible, so it pastes into BENCHMARKS.md)."""
    cells = [[_cell(x) for x in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    sys.stdout.flush()


def _cell(x: Any) -> str:
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


TARGET_HEADERS = ("figure", "measured", "reference", "ratio", "target", "met")


def biggest_merchant(r: Any, version: str) -> tuple[str, list[str], list[str], dict[str, Any]]:
    """The merchant with most posts in the published ``version`` (read from Redis): (its id,
    its posts, its products sorted, the version's post table)."""
    from feed import contract as c

    table = c.decode_json(r.get(c.version_key(version, "posts")))
    products = sorted({p for ps in table["product_ids"] for p in ps})
    docs = r.mget([c.product_doc_key(p, version) for p in products])
    owner = {
        p: (c.decode_json(d) or {}).get("merchant_id") for p, d in zip(products, docs, strict=True)
    }
    posts: dict[str, list[str]] = {}
    mine: dict[str, set[str]] = {}
    for post, ps in zip(table["post_id"], table["product_ids"], strict=True):
        for m in {str(owner[p]) for p in ps if owner.get(p)}:
            posts.setdefault(m, []).append(post)
            mine.setdefault(m, set()).update(p for p in ps if owner.get(p) == m)
    best = max(posts, key=lambda m: (len(posts[m]), m))
    return best, posts[best], sorted(mine[best]), table
