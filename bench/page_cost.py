"""What one feed page costs in process, against the bare endpoint, in a way load cannot blur.

CPU seconds on a shared 2-core machine move by 2x from run to run; instruction counts do not.
This benchmark serves pages through Flask's test client (no HTTP server; the same Redis server
over a real connection) and reports, for the service and for ``bench.bare_app`` (the reference
of ``bench.serve``):

- CPU milliseconds per page (``time.process_time``), interleaved in blocks so both see the
  same load;
- with ``--callgrind`` (valgrind installed): user-space instructions per page, counted by
  ``valgrind --tool=callgrind`` over ``--pages`` pages minus a run of 0 pages (start-up,
  imports, publish, warm-up), exact to a few thousand instructions from run to run.

The service's clock-driven caches (live version, global state) are held for the whole run, so
the figures are the cost of a page itself; their refreshes (a round trip or two per
``FEED_GLOBAL_CACHE_S`` and worker) are left out.

    python -m bench.page_cost                         # 0.1M likes (trains first), CPU only
    python -m bench.page_cost --artifact A --callgrind --pages 300
    python -m bench.page_cost --artifact A --callgrind --api-posts 500
    python -m bench.page_cost --likes 20k --catalogues 2k,200k   # a page vs catalogue size
    python -m bench.page_cost --catalogues 2k,200k --artifact A2K,A200K   # versions trained before

The page policy is each version's own (learned on its data) unless ``FEED_PAGE_*`` variables
(docs/configuration.md) set one for every version: the diverse page's work depends on the
policy's discounts, so hold them fixed to see what the catalogue itself costs.

To compare two commits, run the same command in a checkout of each (``git worktree add``).
Instructions are not time: system calls (the Redis round trips' send and receive) cost nothing
here; ``bench.serve`` measures those under gunicorn.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import print_table, private_redis, ratio
from bench.serve import create_posts, prepare

WARM_PAGES = 20
APPS = ("bare", "floor", "feed")  # floor: bare + the page's two Redis round trips (bench.bare_app)


def serve_pages(args: argparse.Namespace, url: str, work: Path) -> dict[str, float]:
    """Publish, warm up, then time ``args.pages`` pages of each app ({app: CPU s per page})."""
    from feed.artifacts import read
    from feed.publish import publish
    from feed.redisclient import from_url
    from service import create_app

    artifact = prepare(args, work)
    publish(from_url(url, socket_timeout=30.0), artifact, activate=True)
    users = [str(u) for u in read(artifact, verify=False).arrays("candidates")["users"]]
    rng = random.Random(0)
    if args.api_posts:
        create_posts(url, args.api_posts, rng)
    # caches that refresh on a clock are held for the whole run: under valgrind (50x slower)
    # they would refresh every few pages instead of every few hundred
    held = {"VERSION_CACHE_S": 1e9, "GLOBAL_CACHE_S": 1e9}
    feed = create_app({"REDIS_URL": url, "JSON_LOGS": False, "CURSOR_SECRET": "bench", **held})
    feed_client = feed.test_client()
    page = feed_client.get(f"/v1/feed/{users[0]}?limit=20&preview=1").data
    (work / "page.json").write_bytes(page)
    os.environ["BENCH_BARE_BODY"] = str(work / "page.json")
    from bench.bare_app import create_app as bare_app

    os.environ["FEED_REDIS_URL"] = url
    clients = {
        "bare": bare_app().test_client(),
        "floor": bare_app(redis=True).test_client(),
        "feed": feed_client,
    }
    apps = [args.app] if args.app else list(clients)
    for name in apps:
        for user in users[:WARM_PAGES]:
            clients[name].get(f"/v1/feed/{user}?limit=20")
    spent = dict.fromkeys(apps, 0.0)
    done = dict.fromkeys(apps, 0)
    block = 50
    while any(done[a] < args.pages for a in apps):
        for name in apps:
            n = min(block, args.pages - done[name])
            t = time.process_time()
            for _ in range(n):
                resp = clients[name].get(f"/v1/feed/{rng.choice(users)}?limit=20")
                if resp.status_code != 200:
                    raise RuntimeError(f"{name}: {resp.status_code} {resp.get_data(as_text=True)}")
            spent[name] += time.process_time() - t
            done[name] += n
    return {a: spent[a] / max(done[a], 1) for a in apps}


def catalogue_sweep(args: argparse.Namespace, work: Path) -> int:
    """CPU per feed page for versions trained on catalogues of each size in ``--catalogues``
    (same likes, same users), each in its own private Redis, pages interleaved in blocks so
    every version sees the same load; the ratio of the largest catalogue to the smallest is
    the target's (<= 1.2x)."""
    from contextlib import ExitStack

    from feed.artifacts import read
    from feed.publish import publish
    from feed.redisclient import from_url
    from service import create_app

    sizes = [s.strip() for s in args.catalogues.split(",")]
    given = args.artifact.split(",") if args.artifact else [None] * len(sizes)
    if len(given) != len(sizes):
        raise SystemExit("--artifact with --catalogues: one version directory per size")
    clients, users = {}, {}
    with ExitStack() as stack:
        for size, version in zip(sizes, given, strict=True):
            url = stack.enter_context(private_redis())
            sub = argparse.Namespace(**{**vars(args), "posts": size, "artifact": version})
            artifact = prepare(sub, work / size)
            publish(from_url(url, socket_timeout=60.0), artifact, activate=True)
            users[size] = [
                str(u) for u in read(artifact, verify=False).arrays("candidates")["users"]
            ]
            held = {"VERSION_CACHE_S": 1e9, "GLOBAL_CACHE_S": 1e9}
            app = create_app({"REDIS_URL": url, "JSON_LOGS": False, "CURSOR_SECRET": "b", **held})
            clients[size] = app.test_client()
            for user in users[size][:WARM_PAGES]:
                clients[size].get(f"/v1/feed/{user}?limit=20")
        rng = random.Random(0)
        spent = dict.fromkeys(sizes, 0.0)
        for _ in range(max(args.pages // 50, 1)):
            for size in sizes:
                t = time.process_time()
                for _ in range(50):
                    resp = clients[size].get(f"/v1/feed/{rng.choice(users[size])}?limit=20")
                    if resp.status_code != 200:
                        raise RuntimeError(f"{size}: {resp.status_code} {resp.get_data()!r}")
                spent[size] += time.process_time() - t
    pages = max(args.pages // 50, 1) * 50
    rows = [(size, f"{spent[size] / pages * 1000:.3f}") for size in sizes]
    rows.append(
        (f"{sizes[-1]} / {sizes[0]}", f"{ratio(spent[sizes[-1]], spent[sizes[0]]):.2f}x (<= 1.2x)")
    )
    print_table(
        f"CPU per feed page by catalogue size (test client, {pages} pages each, interleaved, "
        f"{args.likes} likes), ms",
        ("posts", "CPU ms"),
        rows,
    )
    return 0


def callgrind(args: argparse.Namespace, app: str, pages: int) -> int:
    """Instructions of this benchmark run under callgrind for ``app`` and ``pages``."""
    with tempfile.TemporaryDirectory(prefix="bench-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.page_cost",
            "--artifact",
            str(args.artifact),
            "--pages",
            str(pages),
            "--api-posts",
            str(args.api_posts),
            "--app",
            app,
            "--quiet",
        ]
        subprocess.run(cmd, check=True, capture_output=True)
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.page_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--likes", default="0.1m", help="size of the generated dataset (0.1m)")
    p.add_argument("--posts", default=None, help="posts of the generated dataset (its default)")
    p.add_argument("--artifact", default=None, help="publish this model version instead")
    p.add_argument(
        "--pages", type=int, default=1000, help="pages per app (1000; 300 for callgrind)"
    )
    p.add_argument("--api-posts", type=int, default=0, help="posts created through the API first")
    p.add_argument("--callgrind", action="store_true", help="count instructions under valgrind")
    p.add_argument(
        "--catalogues", default=None, help="compare the feed's page cost at these post counts"
    )
    p.add_argument("--app", choices=APPS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.catalogues:
        with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
            return catalogue_sweep(args, Path(tmp))
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp, private_redis() as url:
        work = Path(tmp)
        if args.callgrind:
            if shutil.which("valgrind") is None:
                print("valgrind is not installed (apt-get install valgrind)")
                return 0
            args.artifact = str(prepare(args, work))  # train once, outside valgrind
            rows = []
            per_page = {}
            for app in APPS:
                base, full = callgrind(args, app, 0), callgrind(args, app, args.pages)
                per_page[app] = (full - base) / args.pages
                rows.append((app, f"{per_page[app] / 1e6:.3f}"))
            rows += [
                ("bare / feed", f"{ratio(per_page['bare'], per_page['feed']):.1%}"),
                ("floor / feed", f"{ratio(per_page['floor'], per_page['feed']):.1%}"),
            ]
            print_table(
                f"instructions per page in process (callgrind, {args.pages} pages, "
                f"{args.api_posts} API posts), millions",
                ("app", "instructions"),
                rows,
            )
            return 0
        cpu = serve_pages(args, url, work)
    if args.quiet:
        return 0
    rows = [(app, f"{s * 1000:.3f}") for app, s in cpu.items()]
    if len(cpu) == len(APPS):
        rows += [
            ("bare / feed", f"{ratio(cpu['bare'], cpu['feed']):.1%}"),
            ("floor / feed", f"{ratio(cpu['floor'], cpu['feed']):.1%}"),
        ]
    print_table(
        f"CPU per page in process (test client, {args.pages} pages each, interleaved, "
        f"{args.api_posts} API posts), ms",
        ("app", "CPU ms"),
        rows,
    )
    print(json.dumps({a: round(s * 1000, 4) for a, s in cpu.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
