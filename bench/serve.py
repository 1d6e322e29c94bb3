"""The feed endpoint under gunicorn against a bare Flask JSON endpoint in the same server.

1. Train (or take ``--artifact``) a model version and publish it into a private Redis server.
2. Round trips: 2 pages (first, then its cursor) for ``--rt-users`` users through the app
   in process, with a redis-py connection class that records every packet sent to Redis;
   round trips per page are counted, and which of them read and which write (one pipeline
   may do both).
3. Throughput: ``gunicorn -c gunicorn.conf.py`` serves ``bench.bare_app`` (the reference: the
   same route returning a real 20-post page saved in step 2) and then the service, in the same
   configuration, ``--rounds`` times alternately; ``wrk`` drives each on loopback with
   ``--conns`` connections for ``--seconds``; users are drawn at random from the artifact.
4. Latency: the service again at ``--load`` (70%) of its maximum throughput (wrk with an
   exponential think time per connection, calibrated), measured in the server: the duration
   the service logs for every request (``duration_ms`` of its JSON access log, the same
   interval its Prometheus histogram observes), cross-checked with the histogram
   ``feed_http_request_duration_seconds`` read from ``/metrics`` before and after.

    python -m bench.serve                        # 0.1M likes, 2 x 8 s rounds (~1.5 min + training)
    python -m bench.serve --seconds 20 --rounds 3 --artifact /tmp/bench-art/1M/artifacts/V
    python -m bench.serve --api-posts 500        # with posts created through the API since training
    python -m bench.serve --unix-socket          # Redis on a Unix socket, not a loopback port

Needs ``wrk`` (``apt-get install wrk``); without it only the round trips are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import (
    TARGET_HEADERS,
    feed_cli,
    free_port,
    generate,
    parse_count,
    print_table,
    private_redis,
    ratio,
)

ROOT = Path(__file__).resolve().parents[1]
ROUTE = "/v1/feed/<user_id>"
PAGE = 20
TARGET_THROUGHPUT = 0.8  # feed >= 80% of the floor app's throughput (issue 22)
FLOOR = "floor: bare + 2 Redis round trips"
TARGET_P99_MS = 10.0  # server-side p99 at LOAD of the maximum throughput
TARGET_READ_RTS = 2  # Redis round trips for the reads of a page
CALIBRATION_RUNS = 4  # 3-second wrk runs to find the think time of the latency run
PACED_RUNS = 3  # latency runs at most: one more (re-paced) while the rate misses by > 7%
RATE_TOLERANCE = 0.07
WRITES = {
    "SET",
    "SADD",
    "SREM",
    "HSET",
    "HDEL",
    "ZADD",
    "ZREM",
    "ZREMRANGEBYSCORE",
    "ZREMRANGEBYRANK",
    "XADD",
    "EXPIRE",
    "PEXPIRE",
    "DEL",
    "UNLINK",
    "LPUSH",
    "LTRIM",
}
_CMD = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")


# --- Redis round trips per page, counted in the client ----------------------------------------
def counting_connection(base: type) -> type:
    """``base`` (a redis-py connection class) recording every packet sent but the
    connection's own (handshake, health checks): its commands' names (``packets``) and its
    bytes (``raw``)."""

    class Counting(base):  # type: ignore[valid-type,misc]
        packets: list[list[str]] = []
        raw: list[bytes] = []

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            data = command if isinstance(command, bytes) else b"".join(command)
            names = [n.decode().upper() for n in _CMD.findall(data)]
            if names and names[0] not in ("HELLO", "CLIENT", "PING"):
                Counting.packets.append(names)
                Counting.raw.append(data)
            super().send_packed_command(command, check_health)

    return Counting


def create_posts(url: str, n: int, rng: random.Random) -> None:
    """``n`` posts through ``POST /v1/posts`` (in process), by authors of the live version, so
    some readers follow their authors: what a live service has between two trainings."""
    from service import create_app

    app = create_app({"REDIS_URL": url, "JSON_LOGS": False, "CURSOR_SECRET": "bench"})
    client = app.test_client()
    with app.app_context():
        s = app.extensions["feed_store"]
        table = s.table(s.live_version())
    authors = sorted(set(table.authors))
    products = sorted({p for ps in table.product_ids for p in ps})
    for i in range(n):
        post = {
            "post_id": f"api-{i}",
            "author_id": rng.choice(authors),
            "text": "今天入手的新品 new in today",
            "product_ids": [rng.choice(products)] if products else [],
        }
        resp = client.post("/v1/posts", json=post)
        if resp.status_code != 201:
            raise RuntimeError(f"POST /v1/posts: {resp.status_code} {resp.get_json()}")


def round_trips(url: str, users: list[str], out: Path, profile: bool = False) -> dict[str, Any]:
    """Reads and writes per page over 2 pages each for ``users``; saves a real page to ``out``.

    Also times each page in process (one thread, no HTTP server) and, with ``profile``, prints
    where that time goes (cProfile, the service's own functions).
    """
    import cProfile
    import pstats

    from service import create_app

    app = create_app({"REDIS_URL": url, "JSON_LOGS": False, "CURSOR_SECRET": "bench"})
    pool = app.extensions["feed_redis"].connection_pool
    counting = counting_connection(pool.connection_class)  # TCP or Unix socket
    pool.connection_class = counting
    client = app.test_client()
    reads, writes, trips, sizes, seconds = [], [], [], [], []
    profiler = cProfile.Profile() if profile else None
    for i, user in enumerate(users):
        if profiler is not None and i == 1:
            profiler.enable()
        cursor = None
        for _ in range(2):
            counting.packets.clear()
            counting.raw.clear()
            t = time.perf_counter()
            resp = client.get(
                f"/v1/feed/{user}",
                query_string={"limit": PAGE, "cursor": cursor} if cursor else {"limit": PAGE},
            )
            seconds.append(time.perf_counter() - t)
            body = resp.get_json()
            if resp.status_code != 200:
                raise RuntimeError(f"GET /v1/feed/{user}: {resp.status_code} {body}")
            reads.append(sum(1 for p in counting.packets if set(p) - WRITES))
            writes.append(sum(1 for p in counting.packets if WRITES & set(p)))
            trips.append(len(counting.packets))
            sizes.append(len(resp.data))
            cursor = body["next_cursor"]
            if i == 0 and len(body["items"]) == PAGE:
                out.write_bytes(resp.data)
    if profiler is not None:
        profiler.disable()
        print("\nwhere a page's time goes in process (cProfile, cumulative; profiled, so slower):")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"service/", 15)
    return {
        "ms_median": statistics.median(seconds[1:]) * 1000,
        "pages": len(reads),
        "cold_trips": trips[0],
        "trips_median": statistics.median(trips),
        "trips_mean": statistics.fmean(trips[1:]),
        "reads_median": statistics.median(reads),
        "reads_mean": statistics.fmean(reads[1:]),
        "reads_max": max(reads[1:]),
        "writes_median": statistics.median(writes),
        "bytes": statistics.fmean(sizes),
    }


# --- gunicorn and wrk -----------------------------------------------------------------------
@contextmanager
def gunicorn(app: str, work: Path, env: dict[str, str]) -> Iterator[tuple[int, Path, int]]:
    """Serve ``app`` with the repository's gunicorn.conf.py; yields (port, log file, pid)."""
    port = free_port()
    metrics = work / f"metrics-{port}"
    metrics.mkdir()
    log = work / f"gunicorn-{port}.log"
    full = {
        **os.environ,
        **env,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "GUNICORN_LOG_LEVEL": "warning",
        # No worker recycling mid-run (gunicorn.conf.py's max_requests): at 4,000+ req/s a
        # worker reaches it within a run, and a replaced worker's CPU goes uncounted.
        "GUNICORN_MAX_REQUESTS": "0",
    }
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), app],
            cwd=ROOT,
            env=full,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(port, proc, log)
        yield port, log, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer within 30 s: {log.read_text()[-2000:]}")


def gunicorn_pids(master: int) -> list[int]:
    """A gunicorn's master and its workers."""
    workers = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    return [master, *map(int, workers.stdout.split())]


def cpu_seconds(master: int, redis_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by a gunicorn (master and workers) and by the Redis server."""
    return sum(_ticks(p) for p in gunicorn_pids(master)), _ticks(redis_pid)


def _ticks(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lua_script(path: Path, users: list[str], think_ms: float | None = None) -> Path:
    """A wrk script requesting random users' first pages, with optional exponential think time."""
    names = ",".join(json.dumps(u) for u in users)
    text = (
        f"local users = {{{names}}}\n"
        "function init(args) math.randomseed(os.time() + math.floor(os.clock() * 1e6)) end\n"
        "function request()\n"
        f'  return wrk.format("GET", "/v1/feed/" .. users[math.random(#users)] .. '
        f'"?limit={PAGE}")\nend\n'
    )
    if think_ms is not None:
        text += f"function delay() return -math.log(1 - math.random()) * {think_ms:.3f} end\n"
    path.write_text(text)
    return path


def wrk(port: int, script: Path, conns: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {
        "rps": rps,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
        "client_p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
    }


# --- server-side latency ----------------------------------------------------------------------
def logged_ms(log: Path, offset: int) -> list[float]:
    """``duration_ms`` of the service's access-log lines for the feed route after ``offset``."""
    out = []
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f:
            if line.startswith(b"{") and b"/v1/feed/<user_id>" in line:
                entry = json.loads(line)
                if entry.get("route") == ROUTE:
                    out.append(float(entry["duration_ms"]))
    return out


def histogram(port: int) -> dict[float, float]:
    """Cumulative bucket counts (le seconds -> count) of the feed route from ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    buckets: dict[float, float] = {}
    for m in re.finditer(
        r"^feed_http_request_duration_seconds_bucket\{([^}]*)\} ([\d.e+]+)$", text, re.M
    ):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("route") == ROUTE:
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + float(m.group(2))
    return buckets


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def hist_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = delta.get(float("inf"), 0.0)
    return {"count": total, "share_10ms": delta.get(0.01, 0.0) / total if total else float("nan")}


# --- the run ----------------------------------------------------------------------------------
def prepare(args: argparse.Namespace, work: Path) -> Path:
    if args.artifact:
        return Path(args.artifact)
    posts = parse_count(args.posts) if getattr(args, "posts", None) else None
    print(f"generating {args.likes} likes, {posts or 'default'} posts, and training", flush=True)
    generate(work / "data", parse_count(args.likes), posts)
    _, out = feed_cli("train", str(work / "data"), "--out", str(work / "art"), "--no-progress")
    return work / "art" / out.strip().splitlines()[-1]


def paced(
    port: int, log: Path, work: Path, users: list[str], rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    """The service at ``rate`` requests/s: calibrate the think time, then measure.

    Each connection waits an exponential think time between its requests, so the rate is
    ``conns / (think + latency)``; the think time is found by a bracketed fixed-point search
    over short wrk runs (the rate falls as the think time grows). A measured run whose rate
    misses ``rate`` by more than :data:`RATE_TOLERANCE` is repeated with the think time
    corrected by its own rate, up to :data:`PACED_RUNS` runs; the last one is reported.
    """
    lo, hi = 0.0, args.conns / rate * 1000  # think time (ms) bounds: too fast, too slow
    think, best = hi, (float("inf"), hi)
    for i in range(CALIBRATION_RUNS):
        got = wrk(port, lua_script(work / f"cal{i}.lua", users, think), args.conns, 3)["rps"]
        best = min(best, (abs(got - rate), think))
        lo, hi = (think, hi) if got > rate else (lo, think)
        latency = args.conns / got * 1000 - think  # ms per request besides the think time
        think = min(
            max(args.conns / rate * 1000 - latency, lo + 0.1 * (hi - lo)), hi - 0.1 * (hi - lo)
        )
    think = best[1]
    for run in range(PACED_RUNS):
        before, offset = histogram(port), log.stat().st_size
        res = wrk(port, lua_script(work / "paced.lua", users, think), args.conns, args.seconds)
        if abs(res["rps"] / rate - 1) <= RATE_TOLERANCE or run == PACED_RUNS - 1:
            break
        latency = args.conns / res["rps"] * 1000 - think
        think = max(args.conns / rate * 1000 - latency, 0.0)
    time.sleep(0.5)
    ms = logged_ms(log, offset)
    return {
        **res,
        **hist_summary(before, histogram(port)),
        "n": len(ms),
        "p50": percentile(ms, 0.5),
        "p99": percentile(ms, 0.99),
        "share_10ms_log": sum(x <= TARGET_P99_MS for x in ms) / len(ms) if ms else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--likes", default="0.1m", help="size of the generated dataset (0.1m)")
    p.add_argument("--artifact", default=None, help="publish this model version instead")
    p.add_argument("--seconds", type=float, default=8.0, help="each wrk run (8)")
    p.add_argument("--rounds", type=int, default=2, help="bare/feed pairs, alternating (2)")
    p.add_argument("--conns", type=int, default=32, help="wrk connections (32)")
    p.add_argument("--load", type=float, default=0.7, help="share of max for the latency run")
    p.add_argument("--rt-users", type=int, default=100, help="users for the round-trip count")
    p.add_argument("--profile", action="store_true", help="cProfile the in-process pages")
    p.add_argument("--workers", default=None, help="GUNICORN_WORKERS (gunicorn.conf.py's)")
    p.add_argument(
        "--api-posts",
        type=int,
        default=0,
        help="posts created through POST /v1/posts before measuring, by the model's authors (0)",
    )
    p.add_argument(
        "--unix-socket",
        action="store_true",
        help="Redis on a Unix socket instead of a loopback port (a Redis on the same host)",
    )
    args = p.parse_args(argv)
    redis_server = private_redis(unix_socket=args.unix_socket)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, redis_server as url:
        work = Path(tmp)
        run(args, work, url)
    return 0


def run(args: argparse.Namespace, work: Path, url: str) -> None:
    from feed.artifacts import read
    from feed.publish import publish
    from feed.redisclient import from_url

    artifact = prepare(args, work)
    publish(from_url(url, socket_timeout=30.0), artifact, activate=True)
    users = [str(u) for u in read(artifact, verify=False).arrays("candidates")["users"]]
    rng = random.Random(0)
    if args.api_posts:
        create_posts(url, args.api_posts, rng)
    sample = rng.sample(users, min(args.rt_users, len(users)))
    rts = round_trips(url, sample, work / "page.json", args.profile)
    print_table(
        f"Redis round trips per {PAGE}-post page ({rts['pages']} pages: first pages and "
        "their cursors; version, experiment and global caches warm after the first)",
        ("figure", "value"),
        [
            ("round trips, cold process (first request)", rts["cold_trips"]),
            ("round trips per page, median", rts["trips_median"]),
            ("round trips per page, mean incl. cache refreshes", f"{rts['trips_mean']:.2f}"),
            ("round trips that read, per page: median", rts["reads_median"]),
            ("round trips that read, per page: mean", f"{rts['reads_mean']:.2f}"),
            ("round trips that read, per page: max", rts["reads_max"]),
            ("round trips that write, per page: median", rts["writes_median"]),
            ("time per page in process, median ms (test client)", f"{rts['ms_median']:.2f}"),
            ("response bytes, mean", f"{rts['bytes']:,.0f}"),
        ],
    )
    targets = [
        (
            "Redis round trips for a page's reads",
            rts["reads_median"],
            "-",
            "-",
            f"<= {TARGET_READ_RTS}",
            rts["reads_median"] <= TARGET_READ_RTS,
        )
    ]
    if shutil.which("wrk") is None:
        print("\nwrk is not installed (apt-get install wrk): throughput and latency skipped.")
        print_table("targets", TARGET_HEADERS, targets)
        return
    throughput(args, work, url, users, targets)


def throughput(
    args: argparse.Namespace, work: Path, url: str, users: list[str], targets: list[tuple[Any, ...]]
) -> None:
    env = {
        "FEED_REDIS_URL": url,
        "FEED_CURSOR_SECRET": "bench",
        "BENCH_BARE_BODY": str(work / "page.json"),
    }
    if args.workers:
        env["GUNICORN_WORKERS"] = str(args.workers)
    from feed.redisclient import from_url

    script = lua_script(work / "max.lua", users)
    redis_pid = int(from_url(url).info("server")["process_id"])
    rows, bare, feed, probe = [], [], [], []
    for i in range(args.rounds):
        for name, app, acc in (
            ("bare", "bench.bare_app:create_app()", bare),
            (FLOOR, "bench.bare_app:create_app(redis=True)", probe),
            ("feed", "service:create_app()", feed),
        ):
            with gunicorn(app, work, env) as (port, _, pid):
                wrk(port, script, args.conns, 1)  # warm-up: imports, caches, connections
                before = cpu_seconds(pid, redis_pid)
                res = wrk(port, script, args.conns, args.seconds)
                used = cpu_seconds(pid, redis_pid)
            n = res["rps"] * args.seconds
            acc.append(res["rps"])
            rows.append(
                (
                    i + 1,
                    name,
                    res["rps"],
                    f"{(used[0] - before[0]) / n * 1000:.2f}",
                    f"{(used[1] - before[1]) / n * 1000:.2f}",
                    f"{res['client_p99_ms']:.1f}",
                    res["non2xx"],
                    res["socket_errors"] or "-",
                )
            )
    print_table(
        f"maximum throughput, wrk -t1 -c{args.conns} -d{args.seconds:g}s, "
        f"gunicorn.conf.py (workers={args.workers or 'default'}); CPU ms per request",
        (
            "round",
            "app",
            "req/s",
            "gunicorn CPU",
            "Redis CPU",
            "client p99 ms",
            "non-2xx",
            "socket errors",
        ),
        rows,
    )
    share = ratio(statistics.median(feed), statistics.median(probe))
    with gunicorn("service:create_app()", work, env) as (port, log, _):
        wrk(port, script, args.conns, 1)
        lat = paced(port, log, work, users, args.load * statistics.median(feed), args)
    achieved = ratio(lat["rps"], statistics.median(feed))
    print_table(
        f"server-side latency of {PAGE}-post pages at {achieved:.0%} of the maximum "
        f"({lat['rps']:,.0f} req/s, {lat['n']:,} requests)",
        ("source", "p50 ms", "p99 ms", "share <= 10 ms"),
        [
            (
                "access log duration_ms",
                f"{lat['p50']:.2f}",
                f"{lat['p99']:.2f}",
                f"{lat['share_10ms_log']:.2%}",
            ),
            ("/metrics histogram", "-", "-", f"{lat['share_10ms']:.2%}"),
        ],
    )
    targets = [
        (
            "feed throughput (req/s)",
            statistics.median(feed),
            f"floor {statistics.median(probe):,.0f} (bare {statistics.median(bare):,.0f})",
            f"{share:.0%}",
            f">= {TARGET_THROUGHPUT:.0%}",
            share >= TARGET_THROUGHPUT,
        ),
        (
            f"server p99 at {achieved:.0%} of max (ms)",
            lat["p99"],
            "-",
            "-",
            f"<= {TARGET_P99_MS:g}",
            lat["p99"] <= TARGET_P99_MS,
        ),
        *targets,
    ]
    print_table("targets", TARGET_HEADERS, targets)


if __name__ == "__main__":
    raise SystemExit(main())
