"""A publish never changes what the live version serves (issue 18, item 1): a publish that is
never activated, two publishes at once, a publish that runs out of memory, and a rollback leave
the live feed pages, post pages and similar-posts pages byte-identical; deleting a version
removes every key it wrote.

Each test runs against real Redis servers, the publishes in real processes where they race.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port
from snapshots import (
    API_POST,
    create_api_post,
    edited_artifact,
    live_pages,
    redis_state,
    service_client,
    shown_posts,
)

from feed import artifacts, redisserver
from feed import contract as c
from feed import versions as reg
from feed.publish import publish
from feed.redisclient import from_url


@pytest.fixture(scope="module")
def edited(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's model as another version, with every document, seed and stock changed."""
    out = tmp_path_factory.mktemp("edited")
    return edited_artifact(artifact, out, f"{artifact.name}-edited")


@pytest.fixture
def live(r: Any, redis_url: str, published: str) -> tuple[Any, list[str], dict[str, bytes]]:
    """(service client, posts to watch, the live pages) with an API-created post among them."""
    client = service_client(redis_url)
    posts = shown_posts(client)
    product = client.get(f"/v1/posts/{posts[0]}").get_json()["products"][0]["product_id"]
    create_api_post(client, product)
    posts.append(API_POST)
    return client, posts, live_pages(client, posts)


def _cli(*args: str, gate: str | None = None) -> list[str]:
    """The command line of ``feed *args`` in a fresh interpreter; with ``gate`` (a Redis URL) the
    publish holds its lock, before counting its keys, until the key ``{test}:go`` exists."""
    script = "import sys\nfrom feed.cli import main\n"
    if gate:
        script += (
            "import time, redis, feed.publish as p\n"
            f"g = redis.Redis.from_url({gate!r})\n"
            "count = p._count_existing\n"
            "def held(r, keys):\n"
            "    while not g.exists('{test}:go'):\n"
            "        time.sleep(0.01)\n"
            "    return count(r, keys)\n"
            "p._count_existing = held\n"
        )
    script += "main(sys.argv[1:], prog_name='feed')\n"
    return [sys.executable, "-c", script, *args]


def _wait_for(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_publish_never_activated_changes_nothing_served(
    r: Any, live: tuple[Any, list[str], dict[str, bytes]], edited: Path
) -> None:
    """Publishing another version (other documents, seeds and stock) writes only keys of that
    version: every key that existed holds the same value, and the live pages are the same."""
    client, posts, before = live
    state = redis_state(r)
    v2 = publish(r, edited).version
    after = redis_state(r)
    assert reg.get_meta(r, v2)["state"] == c.STATE_READY  # type: ignore[index]
    changed = {k for k in state if k != c.VERSIONS_KEY and after.get(k) != state[k]}
    assert changed == set()
    added = set(after) - set(state)
    assert added and added == set(reg.version_keys(r, v2))
    assert live_pages(client, posts) == before


def test_rollback_restores_exactly_what_was_served(
    r: Any, live: tuple[Any, list[str], dict[str, bytes]], edited: Path, published: str
) -> None:
    """The edited version goes live (and its pages differ), rollback brings the first
    version's pages back byte for byte, and deleting the edited version leaves Redis as it was
    before it was published."""
    client, posts, before = live
    state = redis_state(r)
    v2 = publish(r, edited, activate=True).version
    switched = live_pages(client, posts)
    assert switched[f"/v1/posts/{posts[0]}"] != before[f"/v1/posts/{posts[0]}"]
    assert b"edited in" in switched[f"/v1/posts/{posts[0]}"]
    # the API post is not a version's: only its products' stock follows the live version
    api_before, api_after = (json.loads(p[f"/v1/posts/{API_POST}"]) for p in (before, switched))
    stock = {d["product_id"]: d["in_stock"] for d in artifacts.read(edited).documents("products")}
    for product in api_before["products"]:
        product["in_stock"] = stock.get(product["product_id"], product["in_stock"])
    assert api_after == api_before
    assert reg.rollback(r) == published
    assert live_pages(client, posts) == before
    assert reg.delete(r, v2) > 0
    assert reg.version_keys(r, v2) == []
    after = redis_state(r)
    assert set(after) == set(state)
    assert {k for k in state if after[k] != state[k]} <= {c.VERSIONS_KEY}
    assert after[c.VERSIONS_KEY][1].keys() == state[c.VERSIONS_KEY][1].keys()


def test_concurrent_publishes_are_serialised_or_refused(
    r: Any, redis_url: str, live: tuple[Any, list[str], dict[str, bytes]], edited: Path
) -> None:
    """Two `feed publish` processes at once: without --wait the second is refused in one line
    naming the one that holds the lock; with --wait it runs after the first has finished. The
    live pages never change."""
    client, posts, before = live
    first, second = edited.parent / "first", edited.parent / "second"
    for path in (first, second):
        if not path.exists():
            edited_artifact(edited, edited.parent, path.name)
    env = dict(os.environ)
    waiting = None
    holder = subprocess.Popen(
        _cli("publish", str(first), "--redis-url", redis_url, gate=redis_url), env=env
    )
    try:
        _wait_for(lambda: r.exists(c.PUBLISH_LOCK_KEY), "the first publish to take the lock")
        refused = subprocess.run(
            _cli("publish", str(second), "--redis-url", redis_url),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 1
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), refused.stderr
        assert "publish lock" in lines[0] and "first by pid" in lines[0]
        assert reg.get_meta(r, "second") is None  # nothing was written
        waiting = subprocess.Popen(
            _cli("publish", str(second), "--redis-url", redis_url, "--wait", "120"), env=env
        )
        r.set("{test}:go", 1)
        assert holder.wait(timeout=120) == 0
        assert waiting.wait(timeout=120) == 0
    finally:
        for proc in (holder, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
        r.delete("{test}:go")
    one, two = reg.get_meta(r, "first"), reg.get_meta(r, "second")
    assert one is not None and two is not None
    assert one["state"] == two["state"] == c.STATE_READY
    assert one["published_at"] <= two["started_at"]  # one after the other
    assert not r.exists(c.PUBLISH_LOCK_KEY)
    assert live_pages(client, posts) == before


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server that refuses writes beyond ``--maxmemory`` (noeviction)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            redisserver.redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            "256mb",
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    probe = from_url(url)
    try:
        _wait_for(lambda: _answers(probe), "the private redis-server")
        yield url
    finally:
        probe.close()
        proc.terminate()
        proc.wait(timeout=30)


def _answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_a_publish_out_of_memory_says_why_and_leaves_nothing(
    small_redis: str, artifact: Path, edited: Path
) -> None:
    """A publish into a full Redis (maxmemory, noeviction) fails with one line naming the
    cause, removes every key it wrote (the database is as before), and the live version keeps
    serving the same pages."""
    r = from_url(small_redis, socket_timeout=10.0)
    empty = int(r.info("memory")["used_memory"])
    publish(r, artifact, activate=True)
    used = int(r.info("memory")["used_memory"])
    client = service_client(small_redis)
    posts = shown_posts(client)
    before, state = live_pages(client, posts), redis_state(r)
    r.config_set("maxmemory", used + (used - empty) // 2)  # room for half a version
    run = subprocess.run(
        _cli("publish", str(edited), "--redis-url", small_redis),
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith(f"error: {edited.name}: Redis is out of memory")
    assert "removed the" in lines[0] and "the registry is as before" in lines[0]
    assert redis_state(r) == state
    assert live_pages(client, posts) == before
    assert client.get("/v1/feed/u1?limit=5").status_code == 200  # its write fits again
    r.close()
