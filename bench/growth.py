"""How much Redis memory one request of each route can add, at worst, and what bounds it.

Into a private, empty Redis server: publish a version, then for each route send ``--requests``
requests of its worst case through the real app (Flask's test client, real Redis) and divide
the growth of INFO ``used_memory`` by the requests. Worst cases: the longest ids (128
characters), the largest limits, the largest bodies the service accepts (``FEED_POST_*``,
``FEED_MAX_EVENTS_PER_REQUEST``), every request by a new user, four-byte characters in text.

    python -m bench.growth --artifact /tmp/xa/<version>
    python -m bench.growth --likes 20k           # trains a small version first
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import print_table, private_redis
from bench.serve import prepare

LONG = 128  # the longest valid id


def _id(prefix: str, n: int) -> str:
    return f"{prefix}{n}-".ljust(LONG, "x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=None, help="publish this model version")
    ap.add_argument("--likes", default="20k", help="else: the size of a generated dataset")
    ap.add_argument("--requests", type=int, default=40, help="requests per route (40)")
    args = ap.parse_args(argv)

    from feed.publish import publish
    from feed.redisclient import from_url
    from service import create_app

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp, private_redis() as url:
        art = prepare(argparse.Namespace(artifact=args.artifact, likes=args.likes), Path(tmp))
        r = from_url(url, socket_timeout=30.0)
        publish(r, art, activate=True)
        app = create_app({"REDIS_URL": url, "JSON_LOGS": False, "CURSOR_SECRET": "growth"})
        cfg = app.config
        client = app.test_client()
        with app.app_context():
            s = app.extensions["feed_store"]
            table = s.table(s.live_version())
        users = [u.decode().split("}")[0][3:] for u in r.scan_iter("{u:*}:cand:*", count=1000)]
        posts, products = table.post_ids, sorted({p for ps in table.product_ids for p in ps})
        limit, n = cfg["MAX_LIMIT"], args.requests
        client.get(f"/v1/feed/{users[0]}?limit=5")  # warm the caches
        cursors: dict[str, str] = {}

        def feed_known(i: int) -> Any:
            resp = client.get(f"/v1/feed/{users[i + 1]}?limit={limit}")
            cursors[users[i + 1]] = resp.get_json()["next_cursor"]
            return resp

        def events(i: int) -> Any:
            batch = [
                {
                    "type": "like",
                    "user_id": _id(f"e{i}-", j),
                    "post_id": posts[(i * 7 + j) % len(posts)],
                    "request_id": "r" * 64,
                }
                for j in range(cfg["MAX_EVENTS_PER_REQUEST"])
            ]
            return client.post("/v1/events", json={"events": batch})

        def new_post(i: int) -> Any:
            return client.post(
                "/v1/posts",
                json={
                    "post_id": _id("api", i),
                    "author_id": _id("author", i),
                    "text": "😀" * cfg["POST_TEXT_MAX"],
                    "title": "😀" * cfg["POST_TITLE_MAX"],
                    "tags": ["😀" * cfg["POST_TAG_MAX"]] * cfg["POST_TAGS_MAX"],
                    "product_ids": products[: cfg["POST_PRODUCTS_MAX"]],
                },
            )

        routes: list[tuple[str, str, Callable[[int], Any], str]] = [
            (
                "GET /v1/feed/<unknown user>",
                f"limit={limit}, a new 128-character id each",
                lambda i: client.get(f"/v1/feed/{_id('anon', i)}?limit={limit}"),
                "nothing written",
            ),
            (
                "GET /v1/feed/<user>",
                f"limit={limit}, first page of a new known user each",
                feed_known,
                f"seen set: {cfg['SEEN_MAX']} entries a user, expires "
                f"{cfg['SEEN_WINDOW_S'] / 86400:g} days after the user's last page",
            ),
            (
                "GET /v1/feed/<user>?cursor",
                f"limit={limit}, the next page of each of them",
                lambda i: client.get(
                    f"/v1/feed/{users[i + 1]}?limit={limit}&cursor={cursors[users[i + 1]]}"
                ),
                f"+ the page kept for retries: expires after {cfg['PAGE_REPLAY_TTL_S']} s",
            ),
            (
                "POST /v1/events",
                f"{cfg['MAX_EVENTS_PER_REQUEST']} likes, each by a new 128-character user id",
                events,
                f"log capped at {cfg['EVENT_LOG_MAXLEN']:,} entries; user keys expire "
                f"{cfg['USER_STATE_TTL_S'] / 86400:g} days after the user's last event",
            ),
            (
                "POST /v1/posts",
                "the largest post accepted: every FEED_POST_* limit, 4-byte characters",
                new_post,
                f"{cfg['FRESH_MAX_POSTS']:,} posts, each expiring after "
                f"{cfg['FRESH_MAX_AGE_S'] / 86400:g} days",
            ),
            (
                "GET /v1/posts/<post>/similar",
                "",
                lambda i: client.get(f"/v1/posts/{posts[i]}/similar?limit={limit}"),
                "nothing written",
            ),
            (
                "GET /v1/users/<user>/gifts",
                "",
                lambda i: client.get(f"/v1/users/{users[i]}/gifts?for={users[i + 1]}"),
                "nothing written",
            ),
        ]
        for route, case, call, bound in routes:
            r.execute_command("MEMORY", "PURGE")  # hands freed pages back (jemalloc only)
            before, keys = int(r.info("memory")["used_memory"]), r.dbsize()
            t = time.perf_counter()
            for i in range(n):
                resp = call(i)
                if resp.status_code >= 300:
                    raise RuntimeError(f"{route}: {resp.status_code} {resp.get_json()}")
            took = time.perf_counter() - t
            grown = int(r.info("memory")["used_memory"]) - before
            rows.append((route, case, f"{grown / n:,.0f}", f"{(r.dbsize() - keys) / n:g}", bound))
            print(f"{route}: {took:.1f} s", flush=True)
    print_table(
        f"Redis growth per request ({n} requests per route, INFO used_memory)",
        ("route", "worst case", "bytes / request", "keys / request", "bounded by"),
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
