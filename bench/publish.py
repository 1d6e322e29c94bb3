"""``feed publish`` throughput against raw pipelined writes of the same bytes; memory per user.

Into one private, empty Redis server, ``--repeat`` times in alternating order:

* publish: ``feed.publish.publish(..., activate=True)`` in process (read and verify the
  artifact, encode, write in pipelined batches, count every key group, mark ready, activate);
* reference: FLUSHALL, then the exact keys and values that publish left in Redis (read back
  once after the first publish) written with plain pipelined SET/SADD/HSET in batches of the
  same size, nothing else.

Memory: INFO ``used_memory`` before and after, divided by the version's users, for the whole
version, for the per-user keys alone (``{u:<id>}:*``: candidates plus the training-time seed of
follows and purchases) and for the candidate keys alone; MEMORY USAGE of sampled keys per kind
cross-checks the split. A second version: the used_memory delta of publishing the same artifact
again under another version id beside the first (every key of a version carries its id).

    python -m bench.publish                          # 0.1M likes (~10 s + training)
    python -m bench.publish --artifact /tmp/bench-art/1M/artifacts/V --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import (
    TARGET_HEADERS,
    feed_cli,
    generate,
    parse_count,
    print_table,
    private_redis,
    ratio,
)

TARGET_THROUGHPUT = 0.5  # publish >= 50% of raw pipelined writes of the same bytes
TARGET_BYTES_PER_USER = 1536  # <= 1.5 KB of Redis memory per user with 200 candidates
SAMPLE = 500  # keys per kind for MEMORY USAGE
SEEN_SIZES = (20, 200, 600, 2000)  # seen-set entries (FEED_SEEN_MAX is 2000)
PAGE_SIZE = 20


def snapshot(r: Any) -> list[tuple[str, str, Any]]:
    """Every key as (type, key, value), read back with pipelined reads."""
    keys = [k.decode() for k in r.scan_iter(count=1000)]
    out = []
    for lo in range(0, len(keys), 1000):
        chunk = keys[lo : lo + 1000]
        pipe = r.pipeline(transaction=False)
        for k in chunk:
            pipe.type(k)
        kinds = [t.decode() for t in pipe.execute()]
        pipe = r.pipeline(transaction=False)
        for k, t in zip(chunk, kinds, strict=True):
            if t == "list":
                pipe.lrange(k, 0, -1)
            else:
                {"string": pipe.get, "set": pipe.smembers, "hash": pipe.hgetall}[t](k)
        out.extend(zip(kinds, chunk, pipe.execute(), strict=True))
    return out


def raw_write(r: Any, items: list[tuple[str, str, Any]], batch: int) -> float:
    """Seconds to write ``items`` with plain pipelined commands (no reads, no checks)."""
    t = time.perf_counter()
    for lo in range(0, len(items), batch):
        pipe = r.pipeline(transaction=False)
        for kind, k, v in items[lo : lo + batch]:
            if kind == "string":
                pipe.set(k, v)
            elif kind == "set":
                pipe.sadd(k, *v)
            elif kind == "hash":
                pipe.hset(k, mapping=v)
            else:
                pipe.rpush(k, *v)
        pipe.execute()
    return time.perf_counter() - t


def used_memory(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


def size_of(items: list[tuple[str, str, Any]]) -> int:
    """Bytes of keys and values (set and hash members counted once each)."""
    n = 0
    for kind, k, v in items:
        n += len(k)
        if kind == "string":
            n += len(v)
        elif kind == "hash":
            n += sum(len(a) + len(b) for a, b in v.items())
        else:
            n += sum(len(x) for x in v)
    return n


def kind_of(key: str) -> str:
    """``{u:42}:cand:v1`` -> 'user cand'; ``{feed:v}:nb:p1`` -> 'version nb'; ``vdoc:v:c:p1`` ->
    'doc c' (a version's card; ``p`` post, ``pr`` product documents).

    >>> kind_of("{u:42}:seed:v1"), kind_of("{feed:v1}:oos"), kind_of("vdoc:v1:pr:sku-1")
    ('user seed', 'version oos', 'doc pr')
    """
    if key.startswith("{u:"):
        return "user " + key.split("}:", 1)[1].split(":")[0]
    if key.startswith("{feed:"):
        return "version " + key.split("}:", 1)[1].split(":")[0]
    if key.startswith("vdoc:"):
        return "doc " + key.split(":", 3)[2]
    return "global"


def memory_per_user(
    r: Any, items: list[tuple[str, str, Any]], users: int, batch: int
) -> list[tuple[str, float]]:
    """used_memory delta per user for subsets of the version, written into an empty server."""
    subsets = {
        "per-user keys ({u:*}: candidates and the training-time seed)": [
            x for x in items if x[1].startswith("{u:")
        ],
        "candidate keys only ({u:*}:cand:<v>)": [x for x in items if kind_of(x[1]) == "user cand"],
    }
    out = []
    for name, subset in subsets.items():
        r.flushall()
        before = used_memory(r)
        raw_write(r, subset, batch)
        out.append((name, (used_memory(r) - before) / users))
    return out


def second_version(r: Any, artifact: Path, work: Path, users: int) -> tuple[str, float]:
    """used_memory delta per user of publishing the same artifact again as another version id,
    beside the first (what keeping a second version costs: rollback target, experiment arm)."""
    import json
    import shutil

    from feed.publish import publish

    copy = work / "second-version"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] += "-second"  # the checksums cover the other files
    (copy / "manifest.json").write_text(json.dumps(manifest))
    r.flushall()
    publish(r, artifact, activate=True)
    before = used_memory(r)
    publish(r, copy)
    return "a second version beside it (INFO used_memory delta)", (used_memory(r) - before) / users


def memory_by_kind(r: Any, items: list[tuple[str, str, Any]], users: int) -> list[tuple[Any, ...]]:
    """MEMORY USAGE sampled per kind of key, scaled to the kind's count, per user."""
    by: dict[str, list[str]] = defaultdict(list)
    for _, k, _ in items:
        by[kind_of(k)].append(k)
    rows = []
    for kind, keys in sorted(by.items(), key=lambda kv: -len(kv[1])):
        sample = keys[:: max(1, len(keys) // SAMPLE)][:SAMPLE]
        mean = statistics.fmean(int(r.memory_usage(k, samples=0) or 0) for k in sample)
        rows.append((kind, len(keys), f"{mean:,.0f}", mean * len(keys) / users))
    return rows


def seen_set_memory(r: Any) -> list[tuple[Any, ...]]:
    """MEMORY USAGE of one user's seen set (post id -> served time) by number of entries, with
    the server's default zset encoding and with ``zset-max-ziplist-entries 2048`` (compact)."""
    key = "{u:bench}:seen"
    default = r.config_get("zset-max-ziplist-entries")["zset-max-ziplist-entries"]
    rows = []
    for n in SEEN_SIZES:
        sizes = []
        for limit in (default, "2048"):
            r.config_set("zset-max-ziplist-entries", limit)
            r.delete(key)
            r.zadd(key, {f"p{100_000 + 37 * i}": time.time() - 60 * i for i in range(n)})
            sizes.append(int(r.memory_usage(key, samples=0)))
        rows.append((n, n // PAGE_SIZE, *sizes))
    r.config_set("zset-max-ziplist-entries", default)
    r.delete(key)
    return rows


def prepare(args: argparse.Namespace, work: Path) -> Path:
    if args.artifact:
        return Path(args.artifact)
    print(f"generating {args.likes} likes and training ...", flush=True)
    generate(work / "data", parse_count(args.likes))
    _, out = feed_cli("train", str(work / "data"), "--out", str(work / "art"), "--no-progress")
    return work / "art" / out.strip().splitlines()[-1]


def run(args: argparse.Namespace, work: Path, url: str) -> None:
    from feed.artifacts import read
    from feed.publish import BATCH, publish
    from feed.redisclient import from_url

    artifact = prepare(args, work)
    manifest = read(artifact, verify=False).manifest
    users, cands = manifest["counts"]["users"], manifest["params"].get("n_candidates")
    r = from_url(url, socket_timeout=120.0)
    pub_s: list[float] = []
    raw_s: list[float] = []
    version_mem: list[float] = []
    items: list[tuple[str, str, Any]] = []
    for i in range(args.repeat):  # publish first in round 0: the reference replays its keys
        for step in ("publish", "raw") if i % 2 == 0 else ("raw", "publish"):
            r.flushall()
            before = used_memory(r)
            if step == "raw":
                raw_s.append(raw_write(r, items, BATCH))
                continue
            t = time.perf_counter()
            publish(r, artifact, activate=True, force=True)
            pub_s.append(time.perf_counter() - t)
            version_mem.append((used_memory(r) - before) / users)
            items = items or snapshot(r)
    r.flushall()
    raw_write(r, items, BATCH)
    kinds = memory_by_kind(r, items, users)
    subsets = memory_per_user(r, items, users, BATCH)
    subsets.append(second_version(r, artifact, work, users))
    report(r, artifact, users, cands, items, pub_s, raw_s, version_mem, kinds, subsets)
    print_table(
        "real-time state: one user's seen set (the service writes it; not part of a version)",
        (
            "entries",
            "pages of 20 served",
            "bytes, default encoding",
            "bytes, zset-max-ziplist-entries 2048",
        ),
        seen_set_memory(r),
    )


def report(
    r: Any,
    artifact: Path,
    users: int,
    cands: Any,
    items: list[tuple[str, str, Any]],
    pub_s: list[float],
    raw_s: list[float],
    version_mem: list[float],
    kinds: list[tuple[Any, ...]],
    subsets: list[tuple[str, float]],
) -> None:
    nbytes, nkeys = size_of(items), len(items)
    p, w = statistics.median(pub_s), statistics.median(raw_s)
    print_table(
        f"publish {artifact.name}: {nkeys:,} keys, {nbytes / 1e6:,.1f} MB, {users:,} users "
        f"x {cands} candidates (Redis {r.info('server')['redis_version']}, "
        f"runs: publish {', '.join(f'{x:.2f}' for x in pub_s)} s; "
        f"raw {', '.join(f'{x:.2f}' for x in raw_s)} s)",
        ("writer", "seconds (median)", "keys/s", "MB/s"),
        [
            (
                "feed publish (read, verify, encode, write, count, activate)",
                p,
                nkeys / p,
                nbytes / p / 1e6,
            ),
            ("raw pipelined SET/SADD/HSET of the same bytes", w, nkeys / w, nbytes / w / 1e6),
        ],
    )
    print_table(
        "Redis memory by kind of key (MEMORY USAGE, sampled)",
        ("kind", "keys", "bytes/key", "bytes per user"),
        kinds,
    )
    whole = statistics.median(version_mem)
    rows = [("whole version (INFO used_memory delta)", whole, whole * 1e6 / 2**30)]
    rows += [(name, v, v * 1e6 / 2**30) for name, v in subsets]
    print_table("Redis memory per user", ("keys", "bytes per user", "GiB per million users"), rows)
    per_user = subsets[0][1]
    share = ratio(w, p)
    print_table(
        "targets",
        TARGET_HEADERS,
        [
            (
                "publish throughput (keys/s)",
                nkeys / p,
                f"raw {nkeys / w:,.0f}",
                f"{share:.0%}",
                f">= {TARGET_THROUGHPUT:.0%}",
                share >= TARGET_THROUGHPUT,
            ),
            (
                f"memory per user, {cands} candidates (B)",
                per_user,
                "-",
                "-",
                f"<= {TARGET_BYTES_PER_USER:,}",
                per_user <= TARGET_BYTES_PER_USER,
            ),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.publish",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--likes", default="0.1m", help="size of the generated dataset (0.1m)")
    p.add_argument("--artifact", default=None, help="publish this model version instead")
    p.add_argument("--repeat", type=int, default=3, help="publish/raw pairs (3)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp, private_redis() as url:
        run(args, Path(tmp), url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
