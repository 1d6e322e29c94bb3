"""A bounded soak run against gunicorn on loopback, in three phases on one server:

- **mixed**: feed reads (known users and a few cold ones) and event batches;
- **anonymous**: first pages (and a few scrolls) of ever new unknown user ids: Redis memory must
  stay flat, since an unknown visitor's pages write nothing;
- **full**: Redis gets ``maxmemory`` (a few MB above what it holds) under ``noeviction``, and
  mixed traffic with new posts fills it: pages must keep coming (normal, not degraded), writes
  answer 507 ``store_full`` once it is full, and nothing acknowledged is lost.

    python -m bench.soak --seconds 60 --anonymous-seconds 30 --full-seconds 30 --threads 8

During the mixed phase two sponsored campaigns of one merchant run (``--no-campaigns``: none),
flighted over the phase: one to an audience of its products (``POST .../audiences``, timed),
one to every user, each with a budget well below the pages the phase serves and a cap per
user. Afterwards the campaigns' counters in Redis and the sponsored items the clients received
must show 0 over-delivery: at most the budget in all, at most ``max_per_user`` to any user, and
the server's count equal to the sum of its per-user counts.

Each phase checks: no 5xx but the documented 507 of a full Redis, every event acknowledged with
202 is in the Redis event stream afterwards; the mixed phase also reports the workers' resident
memory (sampled every few seconds, the last sample against the one after warm-up). The load
comes from Python threads on the same machine, so the rate is what this machine sustains with
client, server and Redis sharing its cores. Every loop stops at its phase's deadline, and all
traffic goes to 127.0.0.1.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import biggest_merchant, print_table, private_redis
from bench.serve import gunicorn, prepare

EVENT_TYPES = (
    *("impression", "click", "like", "unlike", "hide_post", "follow", "unfollow", "purchase"),
)
FULL_HEADROOM_MB = 4.0  # the full phase's maxmemory: what Redis holds at its start + this
ADMIN_TOKEN = "soak-admin-token-0123456789"
#: the mixed phase's campaigns: (name, audience or "all", budget, max per user, slots)
CAMPAIGNS = (("audience", "audience", 300, 2, [1, 6]), ("all", "all", 400, 1, [3]))


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
    if kind in ("follow", "unfollow"):
        ev["author_id"] = rng.choice(users)
    elif kind == "purchase":
        ev["product_id"] = f"sku-{rng.randrange(100)}"
    else:
        ev["post_id"] = rng.choice(posts)
    return ev


@dataclass
class Request:
    """One request of a phase: what it is (``feed``, ``events``, ``post``), and for events how
    many it carries."""

    kind: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    n_events: int = 0


@dataclass
class Phase:
    """A phase's traffic: ``next_request(rng, worker state)`` picks each request."""

    name: str
    seconds: float
    next_request: Callable[[random.Random, dict[str, Any]], Request]
    stats: Counter[str] = field(default_factory=Counter)
    #: (campaign, user) -> sponsored items of the campaign the user's pages carried
    sponsored: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    full_seen: threading.Event = field(default_factory=threading.Event)


def _mixed(
    users: list[str], posts: list[str]
) -> Callable[[random.Random, dict[str, Any]], Request]:
    """70% feed pages (following the last cursor half the time), 30% event batches of 1-5."""

    def pick(rng: random.Random, state: dict[str, Any]) -> Request:
        if rng.random() < 0.7:
            scroll = state.get("scroll")
            if scroll and scroll[1] and rng.random() < 0.5:  # the next page of the last one
                user, cursor = scroll
            else:
                user, cursor = rng.choice(users), None
            state["user"] = user
            query = f"&cursor={cursor}" if cursor else ""
            return Request("feed", "GET", f"/v1/feed/{user}?limit=20{query}")
        batch = [_event(rng, users, posts) for _ in range(rng.randint(1, 5))]
        return Request("events", "POST", "/v1/events", {"events": batch}, len(batch))

    return pick


def _anonymous(seed: int) -> Callable[[random.Random, dict[str, Any]], Request]:
    """First pages of ever new unknown ids; one in five scrolls on for up to three pages."""

    def pick(rng: random.Random, state: dict[str, Any]) -> Request:
        scroll = state.get("scroll")
        if scroll and scroll[1] and state.get("depth", 0) < 3 and rng.random() < 0.2:
            user, cursor = scroll
            state["depth"] = state.get("depth", 0) + 1
            return Request("feed", "GET", f"/v1/feed/{user}?limit=20&cursor={cursor}")
        state["n"] = state.get("n", 0) + 1
        state["depth"] = 0
        state["user"] = user = f"anon-{seed}-{state['n']}"
        return Request("feed", "GET", f"/v1/feed/{user}?limit=20")

    return pick


def _full(users: list[str], posts: list[str]) -> Callable[[random.Random, dict[str, Any]], Request]:
    """The mixed traffic, with one request in ten a new post (about 3 kB of text)."""
    mixed = _mixed(users, posts)

    def pick(rng: random.Random, state: dict[str, Any]) -> Request:
        if rng.random() < 0.1:
            state["posts"] = state.get("posts", 0) + 1
            post = {
                "post_id": f"soak-{state['seed']}-{state['posts']}",
                "author_id": rng.choice(users),
                "text": "今天入手的新品，分享一下 new in today " * 60,
            }
            return Request("post", "POST", "/v1/posts", post)
        return mixed(rng, state)

    return pick


def _worker(port: int, phase: Phase, stop: float, seed: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    local: Counter[str] = Counter()
    sponsored: Counter[tuple[str, str]] = Counter()
    state: dict[str, Any] = {"seed": seed}
    while time.monotonic() < stop:
        req = phase.next_request(rng, state)
        try:
            body = json.dumps(req.body) if req.body is not None else None
            headers = {"Content-Type": "application/json"} if body else {}
            conn.request(req.method, req.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            local["connection_errors"] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            continue
        local[f"{req.kind}_{resp.status}"] += 1
        if resp.status == 507:
            phase.full_seen.set()
        if req.kind == "feed" and resp.status == 200:
            page = json.loads(data)
            local["feed_degraded"] += bool(page.get("degraded"))
            local["feed_items"] += len(page.get("items", []))
            for item in page.get("items", []):
                if item.get("sponsored"):
                    sponsored[(item["campaign_id"], req.path.split("/")[3].split("?")[0])] += 1
            if phase.full_seen.is_set():
                local["feed_200_while_full"] += 1
            state["scroll"] = (state.get("user"), page.get("next_cursor"))
        elif req.kind == "events" and resp.status == 202:
            local["events_acknowledged"] += req.n_events
        elif req.kind == "post" and resp.status == 201:
            local["posts_created"] += 1
    conn.close()
    with phase.lock:
        phase.stats.update(local)
        phase.sponsored.update(sponsored)


def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _run_phase(
    port: int, phase: Phase, threads: int, seed: int, sample: Callable[[], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run ``phase`` with ``threads`` clients (seeded ``seed``, ``seed + 1``...); ``sample()``
    every second or so (plus one before and one after)."""
    stop = time.monotonic() + phase.seconds
    pool = [
        threading.Thread(target=_worker, args=(port, phase, stop, seed + i)) for i in range(threads)
    ]
    t0 = time.monotonic()
    samples = [{"t": 0.0, **sample()}]
    for t in pool:
        t.start()
    while any(t.is_alive() for t in pool):
        time.sleep(min(1.0, phase.seconds / 20))
        samples.append({"t": time.monotonic() - t0, **sample()})
    for t in pool:
        t.join()
    samples.append({"t": time.monotonic() - t0, **sample()})
    return samples


def _call(
    port: int, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def _start_campaigns(port: int, r: Any, version: str, seconds: float) -> dict[str, Any]:
    """A merchant, an audience of its products (timed) and :data:`CAMPAIGNS`, flighted over
    the next ``seconds``."""
    m, posts, products, _ = biggest_merchant(r, version)
    status, made = _call(port, "POST", "/v1/admin/merchants", {"merchant_id": m}, ADMIN_TOKEN)
    assert status == 201, made
    token = made["token"]
    t = time.perf_counter()
    status, aud = _call(
        port, "POST", f"/v1/merchants/{m}/audiences",
        {"product_ids": products[:20], "size": 100_000}, token,
    )  # fmt: skip
    audience_s = time.perf_counter() - t
    assert status == 201, aud
    out: dict[str, Any] = {"merchant": m, "audience": aud, "audience_s": audience_s, "runs": []}
    end = time.time() + seconds
    for name, target, budget, cap, slots in CAMPAIGNS:
        body = {
            "post_ids": posts[:4], "budget_impressions": budget, "max_per_user": cap,
            "slots": slots, "end": end, "holdout": 0.1,
            "audience_id": aud["audience_id"] if target == "audience" else "all",
        }  # fmt: skip
        status, cmp = _call(port, "POST", f"/v1/merchants/{m}/campaigns", body, token)
        assert status == 201, cmp
        out["runs"].append({"name": name, "budget": budget, "cap": cap, "id": cmp["campaign_id"]})
    return out


def _campaign_rows(r: Any, camps: dict[str, Any], phase: Phase) -> list[tuple[Any, ...]]:
    """Per campaign: delivered (Redis) against the budget, the largest per-user count (Redis
    and the clients) against the cap, and what the clients received."""
    from feed import contract as c

    aud = camps["audience"]
    rows: list[tuple[Any, ...]] = [
        (
            "audience created (POST .../audiences)",
            f"{camps['audience_s'] * 1000:.0f} ms",
            f"{aud['size']:,} users kept, estimated {aud['estimated_size']:,}, "
            f"ranked by {aud.get('ranked_by')}",
        )
    ]
    for run in camps["runs"]:
        cid, budget, cap = run["id"], run["budget"], run["cap"]
        delivered = int(r.get(c.campaign_key(cid, "n")) or 0)
        per_user = [int(x) for x in r.hgetall(c.campaign_key(cid, "u")).values()]
        seen = {u: n for (k, u), n in phase.sponsored.items() if k == cid}
        rows.append(
            (
                f"campaign '{run['name']}': delivered / budget",
                f"{delivered} / {budget}",
                f"clients received {sum(seen.values())} sponsored items from it, "
                f"{len(per_user)} users reached",
            )
        )
        rows.append(
            (
                f"campaign '{run['name']}': most to one user / cap",
                f"{max(per_user, default=0)} / {cap}",
                f"clients: {max(seen.values(), default=0)}",
            )
        )
        rows.append(
            (
                f"campaign '{run['name']}': 0 over-delivery",
                delivered <= budget
                and sum(per_user) == delivered
                and max(per_user, default=0) <= cap
                and max(seen.values(), default=0) <= cap
                and sum(seen.values()) <= delivered,
                "budget, per-user caps, server counts = sum of per-user counts",
            )
        )
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from feed.contract import EVENTS_KEY
    from feed.publish import publish
    from feed.redisclient import from_url

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp, private_redis() as url:
        work = Path(tmp)
        art = prepare(argparse.Namespace(artifact=args.artifact, likes=args.likes), work)
        r = from_url(url)
        publish(r, art, activate=True)
        counts = json.loads((art / "manifest.json").read_text())["counts"]
        users = [f"u{i}" for i in range(int(counts["users"]))] + ["cold-1", "cold-2"]
        posts = [f"p{i}" for i in range(int(counts["posts"]))]
        # gunicorn.conf.py's workers and threads (several need one cursor secret)
        env = {"FEED_REDIS_URL": url, "FEED_CURSOR_SECRET": "soak", "FEED_ADMIN_TOKEN": ADMIN_TOKEN}
        with gunicorn("service:create_app()", work, env) as (port, _log, master):
            phases = [
                Phase("mixed", args.seconds, _mixed(users, posts)),
                Phase("anonymous", args.anonymous_seconds, _anonymous(args.threads)),
                Phase("full", args.full_seconds, _full(users, posts)),
            ]
            for n, phase in enumerate(phases):
                if phase.seconds <= 0:
                    continue
                if phase.name == "full":
                    r.config_set("maxmemory-policy", "noeviction")
                    held = int(r.info("memory")["used_memory"])
                    r.config_set("maxmemory", held + int(args.headroom_mb * 1024 * 1024))
                before = r.xlen(EVENTS_KEY)
                keys = r.dbsize()

                def sample() -> dict[str, Any]:
                    status, ready = _readyz(port)
                    return {
                        "rss_kb": _children_rss_kb(master),
                        "used_memory": int(r.info("memory")["used_memory"]),
                        "readyz": status,
                        "redis": ready.get("redis"),
                    }

                camps = None
                if phase.name == "mixed" and args.campaigns:
                    version = r.get("{feed}:live").decode()
                    camps = _start_campaigns(port, r, version, phase.seconds)
                samples = _run_phase(port, phase, args.threads, 1000 * n, sample)
                s = phase.stats
                stored = r.xlen(EVENTS_KEY) - before - s["posts_created"]  # a post logs one
                out[phase.name] = {
                    "seconds": phase.seconds,
                    "stats": dict(s),
                    "events_stored": stored,
                    "keys": (keys, r.dbsize()),
                    "samples": samples,
                }
                if camps is not None:
                    out[phase.name]["campaigns"] = _campaign_rows(r, camps, phase)
            if args.full_seconds > 0:  # memory added: writes are accepted again
                r.config_set("maxmemory", 0)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                ev = {"events": [{"type": "click", "user_id": "u1", "post_id": posts[0]}]}
                conn.request(
                    "POST", "/v1/events", json.dumps(ev), {"Content-Type": "application/json"}
                )
                out["full"]["after_memory_added"] = conn.getresponse().status
                conn.close()
    return out


def _five_hundreds(stats: dict[str, int], allowed: tuple[int, ...] = ()) -> int:
    return sum(
        n
        for k, n in stats.items()
        if k.rsplit("_", 1)[-1].isdigit()
        and int(k.rsplit("_", 1)[-1]) >= 500
        and int(k.rsplit("_", 1)[-1]) not in allowed
    )


def _by_status(stats: dict[str, int], kind: str) -> str:
    found = sorted(
        (int(k.rsplit("_", 1)[1]), n)
        for k, n in stats.items()
        if k.startswith(kind + "_") and k.rsplit("_", 1)[1].isdigit()
    )
    return ", ".join(f"{status}: {n}" for status, n in found) or "none"


def _rows(name: str, res: dict[str, Any]) -> list[tuple[Any, ...]]:
    s, samples = res["stats"], res["samples"]
    requests = sum(n for k, n in s.items() if k.rsplit("_", 1)[-1].isdigit())
    acknowledged = s.get("events_acknowledged", 0)
    rows: list[tuple[Any, ...]] = [
        ("requests", requests, f"{requests / res['seconds']:.0f}/s over {res['seconds']:.0f} s"),
        ("feed pages by status", _by_status(s, "feed"), f"degraded: {s.get('feed_degraded', 0)}"),
    ]
    if any(k.startswith("events_") and k[7:].isdigit() for k in s):
        rows.append(("event batches by status", _by_status(s, "events"), ""))
    if name == "full":
        rows.append(("new posts by status", _by_status(s, "post"), ""))
        rows.append(("feed pages 200 after the first 507", s.get("feed_200_while_full", 0), ""))
        full = [x for x in samples if x["redis"] == "full"]
        first = full[0]["t"] if full else float("inf")
        ok_after = sum(x["redis"] == "ok" for x in samples if x["t"] > first)
        rows.append(
            (
                "/readyz while Redis was full",
                ", ".join(sorted({str(x["readyz"]) for x in full})) or "never full",
                f"{len(full)} of {len(samples)} samples said redis: full, the first at "
                f"{first:.1f} s; {ok_after} said ok after that",
            )
        )
        rows.append(("events accepted after memory was added", res.get("after_memory_added"), ""))
    rows.append(("connection errors", s.get("connection_errors", 0), ""))
    rows.append(
        (
            "events acknowledged / in the log",
            f"{acknowledged} / {res['events_stored']}",
            f"lost: {acknowledged - res['events_stored']}",
        )
    )
    used = [x["used_memory"] for x in samples]
    if name == "anonymous":
        rows.append(
            (
                "Redis used_memory start -> max -> end",
                f"{used[0] / 1e6:.2f} -> {max(used) / 1e6:.2f} -> {used[-1] / 1e6:.2f} MB",
                f"max x{max(used) / used[0]:.3f}",
            )
        )
        rows.append(("Redis keys before / after", " / ".join(map(str, res["keys"])), ""))
        rows.append(("unknown visitors", s.get("feed_200", 0), "pages of new ids and scrolls"))
    if name == "mixed":
        warm, end = samples[min(2, len(samples) - 1)]["rss_kb"], samples[-1]["rss_kb"]
        rows.append(
            (
                "worker RSS after warm-up -> end",
                f"{warm / 1024:.1f} -> {end / 1024:.1f} MiB",
                f"x{end / max(warm, 1):.3f}",
            )
        )
    rows += res.get("campaigns", [])
    allowed = (507,) if name == "full" else ()
    rows.append(("zero 5xx" + (" but 507" if allowed else ""), _five_hundreds(s, allowed) == 0, ""))
    rows.append(("zero lost events", acknowledged == res["events_stored"], ""))
    if name == "anonymous":
        rows.append(("Redis memory flat within 10%", max(used) <= 1.10 * used[0], ""))
    if name == "full":
        rows.append(
            (
                "pages kept coming, none degraded",
                bool(s.get("feed_200_while_full")) and not s.get("feed_degraded"),
                "",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="the mixed phase (60)")
    ap.add_argument("--anonymous-seconds", type=float, default=30.0, help="(30; 0: skip)")
    ap.add_argument("--full-seconds", type=float, default=30.0, help="(30; 0: skip)")
    ap.add_argument(
        "--headroom-mb",
        type=float,
        default=FULL_HEADROOM_MB,
        help=f"the full phase's maxmemory above what Redis holds at its start ({FULL_HEADROOM_MB})",
    )
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument(
        "--campaigns",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run two sponsored campaigns during the mixed phase (on)",
    )
    ap.add_argument("--likes", default="100k", help="size of the generated dataset")
    ap.add_argument("--artifact", default=None, help="publish this model version instead")
    args = ap.parse_args(argv)
    res = run(args)
    ok = True
    for name, phase in res.items():
        rows = _rows(name, phase)
        ok = ok and all(row[1] is not False for row in rows if isinstance(row[1], bool))
        print_table(
            f"soak, {name} phase: {args.threads} client threads, gunicorn.conf.py's workers",
            ("figure", "value", "note"),
            rows,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
