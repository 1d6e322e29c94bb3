"""A bounded soak run: mixed feed reads and event writes against gunicorn on loopback.

    python -m bench.soak --seconds 60 --threads 8

Checks what docs/reliability.md reports: zero 5xx, zero lost events (every event acknowledged
with 202 is in the Redis event stream), and flat worker memory (RSS sampled every few seconds;
the last sample against the one after warm-up). The load comes from Python threads on the same
machine, so the rate is what this machine sustains with client and server sharing its cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import print_table, private_redis
from bench.serve import gunicorn, prepare

EVENT_TYPES = ("impression", "click", "like", "hide_post", "follow", "purchase")


def _children_rss_kb(master: int) -> int:
    """Summed VmRSS of the gunicorn workers (children of ``master``)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(master):
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


def _event(rng: random.Random, users: list[str], posts: list[str]) -> dict[str, Any]:
    kind = rng.choice(EVENT_TYPES)
    ev: dict[str, Any] = {"type": kind, "user_id": rng.choice(users)}
    if kind == "follow":
        ev["author_id"] = rng.choice(users)
    elif kind == "purchase":
        ev["product_id"] = f"sku-{rng.randrange(100)}"
    else:
        ev["post_id"] = rng.choice(posts)
    return ev


def _worker(
    port: int,
    stop: float,
    users: list[str],
    posts: list[str],
    seed: int,
    stats: Counter[str],
    lock: threading.Lock,
) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    local: Counter[str] = Counter()
    while time.monotonic() < stop:
        try:
            if rng.random() < 0.7:
                conn.request("GET", f"/v1/feed/{rng.choice(users)}?limit=20")
                kind = "feed"
                n_events = 0
            else:
                batch = [_event(rng, users, posts) for _ in range(rng.randint(1, 5))]
                conn.request(
                    "POST",
                    "/v1/events",
                    body=json.dumps({"events": batch}),
                    headers={"Content-Type": "application/json"},
                )
                kind = "events"
                n_events = len(batch)
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            local["connection_errors"] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            continue
        local[f"{kind}_{resp.status // 100}xx"] += 1
        if kind == "events" and resp.status == 202:
            local["events_acknowledged"] += n_events
    conn.close()
    with lock:
        stats.update(local)


def run(seconds: float, threads: int, likes: str, artifact: str | None = None) -> dict[str, Any]:
    from feed.contract import EVENTS_KEY
    from feed.publish import publish
    from feed.redisclient import from_url

    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp, private_redis() as url:
        work = Path(tmp)
        art = prepare(argparse.Namespace(artifact=artifact, likes=likes), work)
        r = from_url(url)
        publish(r, art, activate=True)
        cand = json.loads((art / "manifest.json").read_text())["counts"]
        users = [f"u{i}" for i in range(int(cand["users"]))] + ["cold-1", "cold-2"]
        posts = [f"p{i}" for i in range(int(cand["posts"]))]
        env = {"FEED_REDIS_URL": url}  # gunicorn.conf.py's workers and threads
        with gunicorn("service:create_app()", work, env) as (port, _log, master):
            stats: Counter[str] = Counter()
            lock = threading.Lock()
            before = r.xlen(EVENTS_KEY)
            stop = time.monotonic() + seconds
            pool = [
                threading.Thread(target=_worker, args=(port, stop, users, posts, i, stats, lock))
                for i in range(threads)
            ]
            for t in pool:
                t.start()
            rss: list[tuple[float, int]] = []
            t0 = time.monotonic()
            while any(t.is_alive() for t in pool):
                rss.append((time.monotonic() - t0, _children_rss_kb(master)))
                time.sleep(min(5.0, seconds / 12))
            for t in pool:
                t.join()
            stored = r.xlen(EVENTS_KEY) - before
    requests = sum(v for k, v in stats.items() if k.endswith("xx"))
    warm = rss[min(2, len(rss) - 1)][1]
    return {
        "seconds": seconds,
        "threads": threads,
        "requests": requests,
        "rate": requests / seconds,
        "stats": dict(stats),
        "events_stored": stored,
        "rss_kb_after_warmup": warm,
        "rss_kb_end": rss[-1][1],
        "rss": rss,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--likes", default="100k", help="size of the generated dataset")
    ap.add_argument("--artifact", default=None, help="publish this model version instead")
    args = ap.parse_args(argv)
    res = run(args.seconds, args.threads, args.likes, args.artifact)
    s = res["stats"]
    five = s.get("feed_5xx", 0) + s.get("events_5xx", 0)
    growth = res["rss_kb_end"] / max(res["rss_kb_after_warmup"], 1)
    rows = [
        ("requests", res["requests"], f"{res['rate']:.0f}/s over {res['seconds']:.0f} s"),
        ("feed pages 2xx / 5xx", f"{s.get('feed_2xx', 0)} / {s.get('feed_5xx', 0)}", ""),
        (
            "event batches 2xx / 4xx / 5xx",
            f"{s.get('events_2xx', 0)} / {s.get('events_4xx', 0)} / {s.get('events_5xx', 0)}",
            "",
        ),
        ("connection errors", s.get("connection_errors", 0), ""),
        (
            "events acknowledged / in the log",
            f"{s.get('events_acknowledged', 0)} / {res['events_stored']}",
            "lost: " + str(s.get("events_acknowledged", 0) - res["events_stored"]),
        ),
        (
            "worker RSS after warm-up -> end",
            f"{res['rss_kb_after_warmup'] / 1024:.1f} -> {res['rss_kb_end'] / 1024:.1f} MiB",
            f"x{growth:.3f}",
        ),
        ("zero 5xx", five == 0, ""),
        ("zero lost events", s.get("events_acknowledged", 0) == res["events_stored"], ""),
    ]
    print_table(
        f"soak: {args.threads} client threads, gunicorn.conf.py's workers and threads",
        ("figure", "value", "note"),
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
