"""``POST /v1/events`` under gunicorn against raw pipelined Redis writes of the same commands.

Issue 22's target: the event endpoint, in batches of 20, at >= 0.5x the throughput of the
same Redis commands written raw.

1. Train (or take ``--artifact``) a model version and publish it into a private Redis server.
2. Batches: ``--batches`` request bodies of ``--batch`` events each, drawn with a seed over the
   version's users and posts: impressions, clicks, likes (whose post's neighbours become the
   user's real-time candidates: one read), favorites, shares, follows of a post's author and
   purchases of its product, in the proportions of ``MIX``.
3. The commands: each body is posted once in process (caches warm, every user's keys renewed
   once, as in the steady state: ``FEED_USER_RENEW_S``) through a redis-py
   connection class that keeps every packet the service sends; read back, they are the
   commands the other two writers send for that body.
4. Throughput, ``--rounds`` times alternately, ``--seconds`` each:
   - **service**: ``gunicorn -c gunicorn.conf.py`` serves ``service:create_app()``; ``wrk``
     posts the bodies in turn over ``--conns`` connections;
   - **floor**: the same gunicorn configuration and load serve :func:`floor_app`, which does
     only what any event endpoint must: HTTP, the JSON body parsed, the body's commands in
     one round trip through the service's executor (:func:`service.wire.round_trip`);
   - **raw** (the issue's reference): as many client processes as gunicorn has workers, each
     with its own connection, sending a batch's commands pre-packed in one write and reading
     every reply (hiredis), batch after batch: no HTTP, no JSON, no validation.

   Events per second of each, and the CPU each batch cost gunicorn (master and workers) and
   the Redis server.

    python -m bench.events                       # 0.1M likes (trains first), 2 x 8 s rounds
    python -m bench.events --artifact A --rounds 3
    python -m bench.events --artifact A --in-process 3000   # CPU a batch, no HTTP server

Needs ``wrk`` (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import random
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hiredis
from hiredis import pack_command

from bench.common import TARGET_HEADERS, print_table, private_redis, ratio
from bench.serve import (
    _ticks,
    counting_connection,
    cpu_seconds,
    gunicorn,
    gunicorn_pids,
    prepare,
    wrk,
)

#: The two servers, under the same gunicorn configuration.
APPS = (("service", "service:create_app()"), ("floor", "bench.events:floor_app()"))
TARGET = 0.5  # events through the service >= half the raw writes' rate (issue 22)
#: Event types of a batch, with their weights (a feed's traffic: mostly impressions).
MIX = (
    ("impression", 8),
    ("click", 4),
    ("like", 3),
    ("favorite", 1),
    ("share", 1),
    ("follow", 1),
    ("purchase", 2),
)


def batches(users: list[str], table: Any, n: int, size: int, seed: int) -> list[bytes]:
    """``n`` JSON bodies of ``size`` events each: ``users`` (the version's) on the posts of
    ``table`` (its :class:`~feed.serving.state.VersionTable`)."""
    rng = random.Random(seed)
    linked = [i for i, ps in enumerate(table.product_ids) if ps]
    # purchases of a linked post's product: none when no post links one
    kinds = [k for k, w in MIX for _ in range(w) if k != "purchase" or linked]

    def event(kind: str) -> dict[str, Any]:
        user = rng.choice(users)
        post = rng.choice(linked) if kind == "purchase" else rng.randrange(len(table.post_ids))
        ev: dict[str, Any] = {"type": kind, "user_id": user}
        if kind == "follow":
            ev["author_id"] = table.authors[post]
        elif kind == "purchase":
            ev["product_id"] = table.product_ids[post][0]
            ev["post_id"] = table.post_ids[post]
        else:
            ev["post_id"] = table.post_ids[post]
        if kind == "share":
            ev["receiver_id"] = rng.choice(users)
        return ev

    return [
        json.dumps({"events": [event(rng.choice(kinds)) for _ in range(size)]}).encode()
        for _ in range(n)
    ]


def live_table(url: str) -> Any:
    """The live version's :class:`~feed.serving.state.VersionTable`."""
    from service import create_app

    app = create_app({"REDIS_URL": url, "JSON_LOGS": False, "CURSOR_SECRET": "bench"})
    with app.app_context():
        s = app.extensions["feed_store"]
        return s.table(s.live_version())


def commands(url: str, bodies: list[bytes]) -> list[list[tuple[bytes, ...]]]:
    """Each body posted once in process (caches warm): the commands the service sent for it."""
    from service import create_app

    app = create_app({"REDIS_URL": url, "JSON_LOGS": False, "CURSOR_SECRET": "bench"})
    pool = app.extensions["feed_redis"].connection_pool
    recording = counting_connection(pool.connection_class)  # before any connection is made
    pool.connection_class = recording
    client = app.test_client()
    # warm-up: version table, neighbour lists, scripts loaded, and every user's keys renewed,
    # so the commands are those of the steady state, where a process renews a user's untouched
    # keys once per FEED_USER_RENEW_S (the users here recur every few hundred batches)
    for body in bodies:
        client.post("/v1/events", data=body, content_type="application/json")
    out, trips = [], []
    for body in bodies:
        recording.packets.clear()
        recording.raw.clear()
        resp = client.post("/v1/events", data=body, content_type="application/json")
        if resp.status_code != 202:
            raise RuntimeError(f"POST /v1/events: {resp.status_code} {resp.get_data()!r}")
        trips.append(len(recording.raw))
        reader = hiredis.Reader()  # a request is RESP too: read the commands back
        reader.feed(b"".join(recording.raw))
        batch = []
        while (cmd := reader.gets()) is not False:
            batch.append(tuple(cmd))
        out.append(batch)
    print(f"round trips a batch: mean {statistics.mean(trips):.2f}, max {max(trips)}")
    return out


def _raw_client(
    port: int, packets: list[tuple[bytes, int]], start: float, seconds: float, offset: int,
    done: Any,
) -> None:  # fmt: skip
    """One raw writer: each batch's commands in one write, every reply read, until the end."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = hiredis.Reader()
    while time.time() < start:
        time.sleep(0.001)
    n, i, end = 0, offset, start + seconds
    while time.time() < end:
        packet, replies = packets[i % len(packets)]
        sock.sendall(packet)
        got = 0
        while got < replies:
            reply = reader.gets()
            if reply is False:
                reader.feed(sock.recv(1 << 16))
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"raw replay: {reply}")
            got += 1
        n += 1
        i += 1
    done.put(n)
    sock.close()


def raw(url: str, packets: list[tuple[bytes, int]], clients: int, seconds: float) -> float:
    """Batches a second of ``clients`` raw writers."""
    port = urlsplit(url).port or 6379
    ctx = mp.get_context("fork")
    done = ctx.Queue()
    start = time.time() + 0.5
    procs = [
        ctx.Process(target=_raw_client, args=(port, packets, start, seconds, k * 997, done))
        for k in range(clients)
    ]
    for proc in procs:
        proc.start()
    total = sum(done.get(timeout=seconds + 60) for _ in procs)
    for proc in procs:
        proc.join()
    return total / seconds


def floor_app() -> Any:
    """The floor (``gunicorn 'bench.events:floor_app()'``): what any event endpoint must do,
    and no more. ``POST /v1/events`` parses the JSON body, sends the commands the service sent
    for that body (``BENCH_EVENTS_COMMANDS``: a pickle of body digest -> commands, written by
    :func:`run`) in one round trip through :func:`service.wire.round_trip`, and answers 202
    with a short JSON body. No validation, no logging, no metrics."""
    from flask import Flask, jsonify, request

    from feed.redisclient import from_url
    from service.wire import round_trip

    batches = pickle.loads(Path(os.environ["BENCH_EVENTS_COMMANDS"]).read_bytes())
    r = from_url(os.environ["FEED_REDIS_URL"])
    app = Flask(__name__)

    @app.post("/v1/events")
    def post_events() -> Any:
        events = request.get_json()["events"]
        round_trip(r, batches[hashlib.sha1(request.get_data()).digest()])
        return jsonify({"accepted": len(events), "rejected": 0, "results": []}), 202

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    return app


def lua_bodies(path: Path, bodies: list[bytes]) -> Path:
    """A wrk script posting ``bodies`` in turn, each connection from its own place."""
    items = ",\n".join("[==[" + b.decode() + "]==]" for b in bodies)
    path.write_text(
        f"local bodies = {{{items}}}\n"
        "local i = 0\n"
        "function init(args) math.randomseed(os.time() + math.floor(os.clock() * 1e6));"
        " i = math.random(#bodies) end\n"
        "function request()\n"
        "  i = i % #bodies + 1\n"
        '  return wrk.format("POST", "/v1/events",'
        ' {["Content-Type"] = "application/json"}, bodies[i])\nend\n'
    )
    return path


def in_process(url: str, bodies: list[bytes], n: int, redis_pid: int) -> int:
    """CPU milliseconds a batch of this process (Flask's test client and the service) and of
    the Redis server, over ``n`` batches posted after every body was posted once."""
    from service import create_app

    app = create_app({"REDIS_URL": url, "JSON_LOGS": False, "CURSOR_SECRET": "bench"})
    client = app.test_client()
    for body in bodies:  # warm: caches, and every user's keys renewed once (the steady state)
        client.post("/v1/events", data=body, content_type="application/json")
    cpu, redis_cpu = time.process_time(), _ticks(redis_pid)
    for i in range(n):
        resp = client.post(
            "/v1/events", data=bodies[i % len(bodies)], content_type="application/json"
        )
        if resp.status_code != 202:
            raise RuntimeError(f"POST /v1/events: {resp.status_code} {resp.get_data()!r}")
    cpu, redis_cpu = time.process_time() - cpu, _ticks(redis_pid) - redis_cpu
    print_table(
        f"POST /v1/events in process ({n} batches of {len(json.loads(bodies[0])['events'])})",
        ("process CPU ms a batch", "Redis CPU ms a batch"),
        [(f"{cpu / n * 1e3:.3f}", f"{redis_cpu / n * 1e3:.3f}")],
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.events",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--likes", default="0.1m", help="size of the generated dataset (0.1m)")
    p.add_argument("--artifact", default=None, help="publish this model version instead")
    p.add_argument("--batch", type=int, default=20, help="events a request (20)")
    p.add_argument("--batches", type=int, default=500, help="distinct bodies (500)")
    p.add_argument("--seconds", type=float, default=8.0, help="each run (8)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--conns", type=int, default=16, help="wrk connections (16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--in-process",
        type=int,
        default=0,
        metavar="N",
        help="instead: post N batches through Flask's test client (no HTTP server) and report "
        "the CPU a batch cost this process and the Redis server, the steadier measure on a "
        "machine whose speed varies (run it in a checkout of each commit, alternately)",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp, private_redis() as url:
        return run(args, Path(tmp), url)


def run(args: argparse.Namespace, work: Path, url: str) -> int:
    from feed.artifacts import read
    from feed.publish import publish
    from feed.redisclient import from_url

    artifact = prepare(args, work)
    r = from_url(url, socket_timeout=30.0)
    publish(r, artifact, activate=True)
    users = [str(u) for u in read(artifact, verify=False).arrays("candidates")["users"]]
    bodies = batches(users, live_table(url), args.batches, args.batch, args.seed)
    if args.in_process:
        return in_process(url, bodies, args.in_process, int(r.info("server")["process_id"]))
    sent = commands(url, bodies)
    packets = [(b"".join(pack_command(cmd) for cmd in batch), len(batch)) for batch in sent]
    print(f"{len(bodies)} bodies of {args.batch} events: "
          f"{statistics.mean(n for _, n in packets):.1f} commands a batch")  # fmt: skip
    redis_pid = int(r.info("server")["process_id"])
    env = {"FEED_REDIS_URL": url, "FEED_CURSOR_SECRET": "bench", "FEED_JSON_LOGS": "0"}
    script = lua_bodies(work / "events.lua", bodies)
    (work / "commands.pickle").write_bytes(
        pickle.dumps({hashlib.sha1(b).digest(): c for b, c in zip(bodies, sent, strict=True)})
    )
    env["BENCH_EVENTS_COMMANDS"] = str(work / "commands.pickle")
    rows: list[tuple[Any, ...]] = []
    rates: dict[str, list[float]] = {"service": [], "floor": [], "raw": []}
    for i in range(args.rounds):
        workers = 0
        for name, app in APPS:
            with gunicorn(app, work, env) as (port, _, pid):
                wrk(port, script, args.conns, 3)  # warm-up (each worker renews the users once)
                workers = len(gunicorn_pids(pid)) - 1
                before = cpu_seconds(pid, redis_pid)
                res = wrk(port, script, args.conns, args.seconds)
                used = cpu_seconds(pid, redis_pid)
            rate = res["rps"]
            rates[name].append(rate * args.batch)
            n = rate * args.seconds
            rows.append((i + 1, name, f"{rate:,.0f}", f"{rate * args.batch:,.0f}",
                         f"{(used[0] - before[0]) / n * 1e3:.2f}",
                         f"{(used[1] - before[1]) / n * 1e3:.2f}", res["non2xx"]))  # fmt: skip
        redis_before = _ticks(redis_pid)
        rate = raw(url, packets, workers, args.seconds)
        rates["raw"].append(rate * args.batch)
        n = rate * args.seconds
        rows.append((i + 1, f"raw ({workers} clients)", f"{rate:,.0f}",
                     f"{rate * args.batch:,.0f}", "-",
                     f"{(_ticks(redis_pid) - redis_before) / n * 1e3:.2f}", 0))  # fmt: skip
    print_table(
        f"POST /v1/events, {args.batch} events a request: service (wrk -c{args.conns}) against "
        f"raw pipelined writes of the same commands, {args.seconds:g} s each",
        ("round", "writer", "batches/s", "events/s", "gunicorn CPU ms a batch",
         "Redis CPU ms a batch", "non-2xx"),
        rows,
    )  # fmt: skip
    median = {k: statistics.median(v) for k, v in rates.items()}
    print_table(
        "targets",
        TARGET_HEADERS,
        [
            (
                f"POST /v1/events (batches of {args.batch}) vs raw pipelined writes (issue 22)",
                f"{median['service']:,.0f} events/s",
                f"{median['raw']:,.0f} events/s",
                f"{ratio(median['service'], median['raw']):.0%}",
                f">= {TARGET:.0%}",
                ratio(median["service"], median["raw"]) >= TARGET,
            ),
            (
                "the same vs the floor app (HTTP, JSON, the same round trip)",
                f"{median['service']:,.0f} events/s",
                f"{median['floor']:,.0f} events/s",
                f"{ratio(median['service'], median['floor']):.0%}",
                "-",
                "-",
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
