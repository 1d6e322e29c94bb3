"""Publishing: verification against the manifest, atomic activation, interrupted publishes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from feed import artifacts
from feed import contract as c
from feed import versions as reg
from feed.publish import PublishError, publish


def test_artifact_has_no_pickle_and_verifies(artifact: Path) -> None:
    art = artifacts.read(artifact)
    for name in artifacts.ARRAY_FILES:
        arrays = art.arrays(name[:-4])
        assert all(a.dtype != object for a in arrays.values())
    assert art.manifest["counts"]["users"] == len(art.arrays("candidates")["users"])


def test_tampered_artifact_is_refused(artifact: Path, tmp_path: Path, r: Any) -> None:
    copy = tmp_path / artifact.name
    shutil.copytree(artifact, copy)
    with open(copy / "trending.npz", "ab") as f:
        f.write(b"x")
    with pytest.raises(artifacts.ArtifactError, match="sha256"):
        publish(r, copy)
    assert r.hlen(c.VERSIONS_KEY) == 0


def test_publish_writes_every_key_and_activates(r: Any, artifact: Path) -> None:
    res = publish(r, artifact, activate=True)
    meta = reg.get_meta(r, res.version)
    assert meta is not None and meta["state"] == c.STATE_READY
    assert reg.live_version(r) == res.version
    cand = artifacts.read(artifact).arrays("candidates")
    user = str(cand["users"][0])
    items, _, _ = c.decode_candidates(r.get(c.user_key(user, "cand", res.version)))
    assert items.tolist() == [i for i in cand["items"][0].tolist() if i >= 0]
    # publishing the same version again is a no-op, not a duplicate
    again = publish(r, artifact)
    assert again.version == res.version


def test_activate_unknown_or_incomplete_is_refused(r: Any, artifact: Path) -> None:
    with pytest.raises(reg.VersionError, match="unknown"):
        reg.activate(r, "nope")
    reg.set_meta(r, "half", {"state": c.STATE_PUBLISHING})
    with pytest.raises(reg.VersionError, match="incomplete"):
        reg.activate(r, "half")


def test_versions_of_another_contract_are_republished_not_served(
    r: Any, artifact: Path, redis_url: str
) -> None:
    """A version published by a release with other Redis encodings is neither activated nor
    served; publishing it again rewrites it instead of skipping it as already published."""
    from service import create_app

    v = publish(r, artifact).version
    meta = reg.get_meta(r, v)
    assert meta is not None and meta["contract"] == c.CONTRACT_VERSION
    reg.set_meta(r, v, {**meta, "contract": c.CONTRACT_VERSION - 1})
    with pytest.raises(reg.VersionError, match="contract"):
        reg.activate(r, v)
    r.set(c.LIVE_KEY, v)  # as an upgrade in place would leave it
    app = create_app({"REDIS_URL": redis_url, "TESTING": True, "VERSION_CACHE_S": 0})
    client = app.test_client()
    resp = client.get("/v1/feed/u1")
    assert resp.status_code == 503 and "contract" in resp.get_json()["error"]["message"]
    publish(r, artifact, activate=True)
    assert reg.get_meta(r, v)["contract"] == c.CONTRACT_VERSION  # type: ignore[index]
    assert client.get("/v1/feed/u1").status_code == 200


def test_delete_refuses_live_and_removes_every_key(r: Any, artifact: Path, tmp_path: Path) -> None:
    v1 = publish(r, artifact, activate=True).version
    with pytest.raises(reg.VersionError, match="live"):
        reg.delete(r, v1)
    copy = tmp_path / "v2"
    shutil.copytree(artifact, copy)
    _rename_version(copy, "v2-test")
    publish(r, copy, activate=True)
    assert reg.live_version(r) == "v2-test"
    assert reg.rollback(r) == v1
    removed = reg.delete(r, "v2-test")
    assert removed > 0
    assert not list(r.scan_iter(match="*v2-test*"))
    assert reg.get_meta(r, "v2-test") is None


def test_activation_forgets_fresh_posts_the_versions_in_use_know(
    r: Any, artifact: Path, tmp_path: Path
) -> None:
    """A post created through the API leaves the fresh posts once the live version and the one
    a rollback returns to both list it, and its own document with it (each version serves its
    own copy)."""
    v1 = publish(r, artifact, activate=True).version
    posts = c.decode_json(r.get(c.version_key(v1, "posts")))
    known, newer = posts["post_id"][:2]
    for i, pid in enumerate((known, newer, "p-since")):
        r.zadd(c.FRESH_KEY, {pid: 1_800_000_000 + i})
        r.hset(c.FRESH_META_KEY, pid, c.encode_json({"author_id": "a"}))
        r.set(c.post_doc_key(pid), b"{}")
    # v1 as if trained before ``newer`` was written
    rows = [j for j, p in enumerate(posts["post_id"]) if p != newer]
    table = [[posts[k][j] for j in rows] for k in ("post_id", "author_id", "created_at")]
    table += [[posts["category"][j] for j in rows], [posts["product_ids"][j] for j in rows]]
    r.set(c.version_key(v1, "posts"), c.encode_post_table(*table))
    copy = tmp_path / "v2"
    shutil.copytree(artifact, copy)
    _rename_version(copy, "v2-fresh")
    publish(r, copy, activate=True)  # v2 lists both; v1 (a rollback away) only ``known``
    left = [m.decode() for m in r.zrange(c.FRESH_KEY, 0, -1)]
    assert left == [newer, "p-since"]
    assert sorted(k.decode() for k in r.hkeys(c.FRESH_META_KEY)) == sorted(left)
    assert not r.exists(c.post_doc_key(known)) and r.exists(c.post_doc_key(newer))
    assert r.exists(c.post_doc_key(known, v1)) and r.exists(c.post_doc_key(known, "v2-fresh"))
    assert reg.prune_fresh(r) == 0  # nothing more to forget


def test_activation_stands_when_pruning_the_fresh_posts_fails(
    r: Any, artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r.set(c.FRESH_KEY, b"not a zset")  # ZSCAN answers WRONGTYPE
    version = publish(r, artifact, activate=True).version
    assert reg.live_version(r) == version
    assert "pruning the fresh posts failed" in caplog.text
    assert r.get(c.FRESH_KEY) == b"not a zset"  # nothing else touched


def _rename_version(path: Path, version: str) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = version
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_interrupted_publish_never_damages_the_live_version(
    r: Any, redis_url: str, artifact: Path, tmp_path: Path
) -> None:
    """Kill a publisher mid-way (SIGKILL): live keeps serving the same pages; the partial
    version is marked, cannot be activated, can be deleted (Redis is then as before it);
    publishing again succeeds once the dead publisher's lock expires."""
    from snapshots import edited_artifact, live_pages, redis_state, service_client, shown_posts

    live = publish(r, artifact, activate=True).version
    client = service_client(redis_url)
    posts = shown_posts(client)
    pages, state = live_pages(client, posts), redis_state(r)
    big = edited_artifact(artifact, tmp_path, "partial-v")  # other documents, seeds, stock
    script = (
        "import sys, feed.publish as p\n"
        "p.BATCH = 5\n"  # many small pipelines, so there is time to kill it half-way
        "p.LOCK_TTL_S = 2.0\n"  # its lock outlives it by 2 s, not 30
        "from feed.redisclient import from_url\n"
        f"p.publish(from_url({redis_url!r}), {str(big)!r}, activate=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # killed once it is writing documents
        if any(True for _ in r.scan_iter(match="vdoc:partial-v:c:*", count=1000)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # first, while the dead publisher's 2-second lock surely holds (the snapshots below can
    # take longer than that on a loaded machine)
    with pytest.raises(PublishError, match=r"publish lock.*partial-v by pid \d+"):
        publish(r, big)
    meta = reg.get_meta(r, "partial-v")
    assert meta is not None and meta["state"] == c.STATE_PUBLISHING
    assert reg.live_version(r) == live
    assert live_pages(client, posts) == pages
    with pytest.raises(reg.VersionError):
        reg.activate(r, "partial-v")
    listed = {m["version"]: m for m in reg.list_versions(r)}
    assert listed["partial-v"]["state"] == c.STATE_PUBLISHING
    assert reg.delete(r, "partial-v") > 0
    after = redis_state(r)
    after.pop(c.PUBLISH_LOCK_KEY, None)  # the dead publisher's, until it expires
    assert after == state
    res = publish(r, big, activate=True, wait=60)  # ... and does, 2 s after it stopped
    assert reg.live_version(r) == res.version == "partial-v"


def test_a_version_in_use_is_not_published_again_over_itself(
    r: Any, artifact: Path, published: str, client: Any
) -> None:
    """`--force` on the live version would mark it `publishing` and rewrite its keys while it
    serves: refused in one line, nothing changed."""
    user = "u1"
    before = client.get(f"/v1/feed/{user}?preview=1&limit=10").get_json()["items"]
    stock = r.smembers(c.version_key(published, "oos"))
    with pytest.raises(PublishError, match="is in use"):
        publish(r, artifact, force=True)
    assert reg.get_meta(r, published)["state"] == c.STATE_READY
    assert r.smembers(c.version_key(published, "oos")) == stock
    assert client.get(f"/v1/feed/{user}?preview=1&limit=10").get_json()["items"] == before
    assert client.get("/readyz").status_code == 200


def test_a_version_being_published_is_served_by_no_route(
    r: Any, published: str, redis_url: str
) -> None:
    """Routing, pinned cursors and admin previews use the registry's one rule: only `ready`
    versions of this contract serve (`feed.versions.serving_problem`)."""
    from helpers import feed_app

    app = feed_app(redis_url, ADMIN_TOKEN="an-admin-token-of-32-characters!")
    client = app.test_client()
    auth = {"Authorization": "Bearer an-admin-token-of-32-characters!"}
    ok = client.get(f"/v1/feed/u1?preview=1&version={published}", headers=auth)
    assert ok.status_code == 200
    meta = reg.get_meta(r, published)
    reg.set_meta(r, published, {**meta, "state": c.STATE_PUBLISHING})
    resp = client.get(f"/v1/feed/u1?preview=1&version={published}", headers=auth)
    assert resp.status_code == 404
    assert client.get("/readyz").status_code == 503
    reg.set_meta(r, published, meta)
    assert client.get("/readyz").status_code == 200


def test_delete_and_activate_racing_never_leave_a_live_version_without_keys(
    r: Any, redis_url: str, artifact: Path, tmp_path: Path
) -> None:
    """`versions delete v2` and `versions activate v2` at the same moment, from two threads on
    their own connections, many times: exactly one of them wins each round, and the live
    version always has every key it needs."""
    import threading

    from feed.redisclient import from_url

    v1 = publish(r, artifact, activate=True).version
    copy = tmp_path / "v2"
    shutil.copytree(artifact, copy)
    _rename_version(copy, "v2-race")
    wins = {"activate": 0, "delete": 0}

    def run(name: str, op: Any, barrier: Any, outcome: dict[str, Any]) -> None:
        own = from_url(redis_url)
        barrier.wait()
        try:
            op(own)
            outcome[name] = None
        except reg.VersionError as err:
            outcome[name] = err

    for _ in range(6):
        publish(r, copy)
        barrier = threading.Barrier(2)
        outcome: dict[str, BaseException | None] = {}
        threads = [
            threading.Thread(
                target=run,
                args=("activate", lambda x: reg.activate(x, "v2-race"), barrier, outcome),
            ),
            threading.Thread(
                target=run, args=("delete", lambda x: reg.delete(x, "v2-race"), barrier, outcome)
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [n for n, e in outcome.items() if e is None]
        assert len(won) == 1, outcome
        wins[won[0]] += 1
        live = reg.live_version(r)
        assert live is not None and reg.missing_keys(r, live) == []
        assert reg.serving_problem(live, reg.get_meta(r, live)) is None
        if won == ["activate"]:
            assert live == "v2-race"
            reg.activate(r, v1)
            reg.delete(r, "v2-race")
        else:
            assert live == v1 and reg.get_meta(r, "v2-race") is None
    assert sum(wins.values()) == 6
