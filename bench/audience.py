"""Audience creation from the version's audience index against the old SCAN of every user's
candidate list, on one published version in a private Redis; and what the index costs publish.

One model version (``--artifact``, or ``--users`` generated and trained here) is published
into an empty private Redis with ``feed.publish.publish`` (the index included). The service
(in process, its Flask test client: the same request path without a socket) creates audiences
of the biggest merchant for three targets (5 of its products, its biggest category, one of its
posts), ``--repeat`` times each, alternately from the index and by the scan (the scan is what a
version published before the index gets: the index's user table is renamed away meanwhile).

    python -m bench.audience --artifact /tmp/aud50k/art/VERSION --repeat 3
    python -m bench.audience --users 20000          # generate and train first (minutes)

Publish's side: the seconds ``feed.publish.audience_index`` takes on the artifact, its keys and
bytes, and the version's Redis memory with it. ``python -m bench.publish --artifact ...`` gives
publish's keys/s with the index written.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import biggest_merchant, feed_cli, print_table, private_redis

ADMIN = "bench-admin-token-0123456789"


def _targets(r: Any, version: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """(the merchant with most posts, its three audience bodies)."""
    m, posts, products, table = biggest_merchant(r, version)
    cats = Counter(table["product_category"].get(p, "") for p in products)
    return m, {
        "5 products": {"product_ids": products[:5], "size": 10_000},
        "category": {"category": cats.most_common(1)[0][0], "size": 10_000},
        "like_post": {"like_post": posts[0], "size": 10_000},
    }


def run(args: argparse.Namespace, work: Path, url: str) -> None:
    from feed import artifacts
    from feed import contract as c
    from feed.publish import audience_index, publish
    from feed.redisclient import from_url
    from service import create_app

    if args.artifact:
        art_dir = Path(args.artifact)
    else:
        print(f"generating {args.users} users and training ...", flush=True)
        feed_cli("generate", str(work / "data"), "--users", str(args.users), "--posts",
                 str(args.posts), "--seed", "1")  # fmt: skip
        _, out = feed_cli("train", str(work / "data"), "--out", str(work / "art"), "--no-progress")
        art_dir = work / "art" / out.strip().splitlines()[-1]
    art = artifacts.read(art_dir, verify=False)
    t = time.perf_counter()
    users, products, reach, per = audience_index(art)
    index_s = time.perf_counter() - t
    kept = sum(len(u) for u, _, _ in per)
    r = from_url(url, socket_timeout=300.0)
    r.flushall()
    before = int(r.info("memory")["used_memory"])
    t = time.perf_counter()
    v = publish(r, art_dir, activate=True).version
    publish_s = time.perf_counter() - t
    used = int(r.info("memory")["used_memory"]) - before
    index_bytes = sum(
        int(r.memory_usage(k) or 0) for k in r.scan_iter(match=f"{{feed:{v}}}:aud:*", count=1000)
    )
    print_table(
        f"audience index of {v}: {len(users):,} users with candidates, {len(products):,} products",
        ("figure", "value"),
        [
            ("audience_index() seconds (computed in publish)", f"{index_s:.1f}"),
            ("whole publish seconds (with the index)", f"{publish_s:.1f}"),
            ("products with a list / entries kept", f"{int((reach > 0).sum()):,} / {kept:,}"),
            ("lists cut at AUDIENCE_INDEX_MAX", f"{int((reach > c.AUDIENCE_INDEX_MAX).sum()):,}"),
            ("index memory (MEMORY USAGE)", f"{index_bytes / 1e6:.1f} MB"),
            ("version memory (used_memory delta)", f"{used / 1e6:.1f} MB"),
        ],
    )
    app = create_app({"REDIS_URL": url, "ADMIN_TOKEN": ADMIN, "CURSOR_SECRET": "bench"})
    for name in ("feed.access", "service.campaigns"):  # a line per request / per scan
        logging.getLogger(name).setLevel(logging.ERROR)
    client = app.test_client()
    m, bodies = _targets(r, v)
    resp = client.post("/v1/admin/merchants", json={"merchant_id": m},
                       headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
    auth = {"Authorization": f"Bearer {resp.get_json()['token']}"}
    table_key = c.audience_index_key(v)
    hidden = c.version_key(v, "aud:users-hidden")
    warm = client.post(f"/v1/merchants/{m}/audiences", json=bodies["like_post"], headers=auth)
    assert warm.status_code == 201  # the process's first: imports, the user table's one read
    times: dict[tuple[str, str], list[float]] = {}
    sizes: dict[tuple[str, str], tuple[int, int]] = {}
    for i in range(args.repeat):
        for how in ("index", "scan") if i % 2 == 0 else ("scan", "index"):
            if how == "scan":
                r.rename(table_key, hidden)
            try:
                for name, body in bodies.items():
                    # a new audience each time: the merchant keeps 20, so drop the old ones
                    for a in r.zrange(c.audiences_key(m), 0, -1):
                        r.zrem(c.audiences_key(m), a)
                    t = time.perf_counter()
                    got = client.post(f"/v1/merchants/{m}/audiences", json=body, headers=auth)
                    times.setdefault((name, how), []).append(time.perf_counter() - t)
                    out = got.get_json()
                    assert got.status_code == 201 and out["ranked_by"] == how, out
                    sizes[(name, how)] = (out["size"], out["estimated_size"])
            finally:
                if how == "scan":
                    r.rename(hidden, table_key)
    rows = []
    for name in bodies:
        fast, slow = (statistics.median(times[(name, h)]) for h in ("index", "scan"))
        rows.append(
            (
                name,
                f"{slow * 1000:,.0f}",
                f"{fast * 1000:,.0f}",
                f"x{slow / fast:,.0f}",
                "{:,} / {:,}".format(*sizes[(name, "scan")]),
                "{:,} / {:,}".format(*sizes[(name, "index")]),
            )
        )
    print_table(
        f"POST /v1/merchants/{m}/audiences (size 10,000), median of {args.repeat} "
        "(in-process test client, private Redis on loopback)",
        ("target", "scan ms", "index ms", "speed-up", "scan size / estimated",
         "index size / estimated"),
        rows,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=None, help="publish this model version")
    ap.add_argument("--users", type=int, default=20_000, help="else generate this many (20000)")
    ap.add_argument("--posts", type=int, default=6000, help="... with this many posts (6000)")
    ap.add_argument("--repeat", type=int, default=3, help="audiences per target and way (3)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-audience-") as tmp, private_redis() as url:
        run(args, Path(tmp), url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
