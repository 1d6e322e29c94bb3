"""The admin API (/v1/admin: versions and experiments, bearer token) and the `feed ab` CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from feed import contract as c
from feed.cli import main

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def weak_artifact(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_experiments import weak_artifact_path

    return weak_artifact_path(dataset_dir, tmp_path_factory)


@pytest.fixture
def weak(r: Any, weak_artifact: Path, published: str) -> str:
    from feed.publish import publish

    return publish(r, weak_artifact).version


@pytest.fixture
def admin(redis_url: str, published: str) -> Any:
    from service import create_app

    app = create_app(
        {"REDIS_URL": redis_url, "TESTING": True, "VERSION_CACHE_S": 0.0, "ADMIN_TOKEN": TOKEN}
    )
    return app.test_client()


def call(client: Any, method: str, path: str, status: int = 200, **kw: Any) -> Any:
    resp = client.open(f"/v1/admin{path}", method=method, headers=AUTH, **kw)
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()


def test_admin_is_off_without_a_token_and_needs_the_right_one(client: Any, admin: Any) -> None:
    resp = client.get("/v1/admin/versions", headers=AUTH)  # the default app: no ADMIN_TOKEN
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        resp = admin.get("/v1/admin/experiments", headers=headers)
        assert resp.status_code == 401, headers
        assert resp.get_json()["error"]["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert admin.get("/v1/admin/experiments", headers=AUTH).status_code == 200


def test_versions_over_http(r: Any, admin: Any, published: str, weak: str) -> None:
    body = call(admin, "GET", "/versions")
    assert body["live"] == published
    assert {v["version"]: v["live"] for v in body["versions"]} == {published: True, weak: False}

    assert call(admin, "POST", f"/versions/{weak}/activate") == {
        "live": weak,
        "previous": published,
    }
    assert call(admin, "POST", "/versions/rollback") == {"live": published}
    err = call(admin, "POST", "/versions/rollback", 409)
    assert "no previous version" in err["error"]["message"]
    assert (
        "unknown version 'nope'"
        in call(admin, "POST", "/versions/nope/activate", 404)["error"]["message"]
    )

    meta = json.loads(r.hget(c.VERSIONS_KEY, weak))
    r.hset(c.VERSIONS_KEY, weak, json.dumps({**meta, "state": c.STATE_PUBLISHING}))
    err = call(admin, "POST", f"/versions/{weak}/activate", 409)  # an interrupted publish
    assert "incomplete" in err["error"]["message"]
    r.hset(c.VERSIONS_KEY, weak, json.dumps(meta))
    posts_key = c.version_key(weak, "posts")
    blob = r.get(posts_key)
    r.delete(posts_key)  # a key lost after publishing
    err = call(admin, "POST", f"/versions/{weak}/activate", 409)
    assert f"{{feed:{weak}}}:posts" in err["error"]["message"]
    r.set(posts_key, blob)

    assert "is live" in call(admin, "DELETE", f"/versions/{published}", 409)["error"]["message"]
    call(
        admin,
        "POST",
        "/experiments",
        201,
        json={
            "name": "uses-weak",
            "arms": [
                {"name": "control", "version": published, "weight": 50},
                {"name": "treatment", "version": weak, "weight": 50},
            ],
        },
    )
    err = call(admin, "DELETE", f"/versions/{weak}", 409)
    assert "used by running experiment" in err["error"]["message"]
    call(admin, "DELETE", "/experiments/uses-weak")
    assert call(admin, "DELETE", f"/versions/{weak}")["keys"] > 100
    leftovers = [k for k in r.scan_iter(match="*", count=1000) if weak.encode() in k]
    assert leftovers == [] and r.hget(c.VERSIONS_KEY, weak) is None
    call(admin, "DELETE", f"/versions/{weak}", 404)


def test_experiments_over_http(admin: Any, client: Any, published: str, weak: str) -> None:
    arms = [
        {"name": "control", "version": published, "weight": 90},
        {"name": "treatment", "version": weak, "weight": 10},
    ]
    err = call(
        admin,
        "POST",
        "/experiments",
        400,
        json={"name": "x", "arms": [{**arms[0], "weight": 80}, arms[1]]},
    )
    assert "sum to 90, not 100" in err["error"]["message"]
    err = call(
        admin,
        "POST",
        "/experiments",
        400,
        json={"name": "x", "arms": [arms[0], {**arms[1], "version": "ghost"}]},
    )
    assert "unknown version 'ghost'" in err["error"]["message"]
    cfg = call(
        admin, "POST", "/experiments", 201, json={"name": "ab1", "arms": arms, "salt": "pepper"}
    )
    assert cfg["salt"] == "pepper" and cfg["arms"][1]["buckets"] == [[9000, 10000]]
    assert call(admin, "POST", "/experiments", 409, json={"name": "ab2", "arms": arms})
    assert call(admin, "GET", "/experiments/ab1")["status"] == "running"
    assert [e["name"] for e in call(admin, "GET", "/experiments")["experiments"]] == ["ab1"]
    cfg = call(
        admin,
        "PATCH",
        "/experiments/ab1",
        json={"arms": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}]},
    )
    assert [(a["version"], a["weight"]) for a in cfg["arms"]] == [(published, 50), (weak, 50)]
    for u in ("u1", "u2", "u3", "u4"):
        assert client.get(f"/v1/feed/{u}?limit=3").get_json()["experiment"] == "ab1"
    rep = call(admin, "GET", "/experiments/ab1/report")
    assert sum(a["users"] for a in rep["arms"]) == 4 and "srm" in rep
    assert call(admin, "DELETE", "/experiments/ab1")["status"] == "stopped"
    assert client.get("/v1/feed/u1?limit=3").get_json()["experiment"] is None
    call(admin, "PATCH", "/experiments/ab1", 409, json={"arms": arms})
    call(admin, "GET", "/experiments/nope", 404)
    call(admin, "GET", "/experiments/nope/report", 404)
    call(admin, "POST", "/experiments", 400, data="not json", content_type="application/json")
    call(admin, "POST", "/experiments", 400, json={"name": "x", "arms": {"control": 100}})
    call(admin, "POST", "/experiments", 400, json={"name": "x", "arms": [1, 2]})


def test_promote_over_http(r: Any, admin: Any, published: str, weak: str) -> None:
    """The admin route calls the one promote: the named arm goes live, then the experiment
    stops; bad bodies and unknown names are refused without changing anything."""
    from feed import experiments as ex
    from feed import versions as reg

    arms = [
        {"name": "control", "version": published, "weight": 50},
        {"name": "treatment", "version": weak, "weight": 50},
    ]
    call(admin, "POST", "/experiments", 201, json={"name": "promo", "arms": arms})
    call(admin, "POST", "/experiments/promo/promote", 400, json={"alpha": 2})
    call(admin, "POST", "/experiments/promo/promote", 400, json={"metric": "revenue"})
    call(admin, "POST", "/experiments/promo/promote", 400, json={"arm": "nobody"})
    call(admin, "POST", "/experiments/nope/promote", 404, json={})
    assert ex.get(r, "promo")["status"] == "running" and reg.live_version(r) == published
    out = call(admin, "POST", "/experiments/promo/promote", json={"arm": "treatment"})
    assert (out["live"], out["previous"], out["arm"]) == (weak, published, "treatment")
    assert reg.live_version(r) == weak and ex.get(r, "promo")["status"] == "stopped"
    reg.activate(r, published)
    call(admin, "POST", "/experiments", 201, json={"name": "promo2", "arms": arms})
    out = call(admin, "POST", "/experiments/promo2/promote")  # no body: the defaults
    assert out["arm"] == "control" and out["live"] == published  # no traffic: control stays
    assert ex.get(r, "promo2")["status"] == "stopped"


def test_ab_cli(runner: CliRunner, r: Any, client: Any, published: str, weak: str) -> None:
    def run(*args: str, code: int = 0) -> str:
        res = runner.invoke(main, ["ab", *args])
        assert res.exit_code == code, res.output
        return res.output

    out = run(
        "create",
        "cli-exp",
        "--arm",
        f"control={published}:90",
        "--arm",
        f"treatment={weak}:10",
        "--salt",
        "s1",
    )
    assert "cli-exp: running" in out and "9000-9999" in out
    assert "sum to 110, not 100" in run(
        "create", "bad", "--arm", f"control={published}:90", "--arm", f"treatment={weak}:20", code=1
    )
    assert "must look like NAME=VERSION:WEIGHT" in run(
        "create", "bad", "--arm", "oops", "--arm", "x", code=1
    )
    assert "treatment" in run("update", "cli-exp", "--arm", "control:80", "--arm", "treatment:20")
    assert json.loads(run("show", "cli-exp", "--json"))["arms"][1]["weight"] == 20
    for u in range(12):
        assert client.get(f"/v1/feed/u{u}?limit=2").status_code == 200
    out = run("report", "cli-exp")
    assert "clicks_per_user" in out and "sample ratio:" in out
    rep = json.loads(run("report", "cli-exp", "--json"))
    assert sum(a["users"] for a in rep["arms"]) == 12
    assert "stopped" in run("stop", "cli-exp")
    assert "cli-exp: stopped" in run("list")
    assert "unknown experiment 'zzz'" in run("show", "zzz", code=1)


@pytest.mark.slow
def test_ab_simulate_cli(runner: CliRunner, tmp_path: Path) -> None:
    """`feed ab simulate` runs the whole loop in a scratch directory with a throwaway Redis."""
    res = runner.invoke(
        main,
        ["ab", "simulate", "--users", "120", "--posts", "150", "--dir", str(tmp_path), "--json"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["stats"]["failed"] == 0 and out["stats"]["users"] == 120
    assert [a["arm"] for a in out["report"]["arms"]] == ["control", "treatment"]
    assert out["report"]["status"] == "stopped"


def test_versions_of_another_contract_are_refused_everywhere(
    r: Any, admin: Any, client: Any, runner: CliRunner, published: str, weak: str
) -> None:
    """Activate, rollback and experiment arms (create and update) refuse a version this release
    cannot serve (registered under another Redis contract): 409 ``version_not_servable`` naming
    the contract, and the CLI exits 1 saying so, nothing changed; /readyz is 503 while the live
    version or a running arm's version is such a version."""
    from feed import versions as reg

    old = c.CONTRACT_VERSION - 1

    def registered_under(version: str, contract: int) -> None:
        reg.set_meta(r, version, {**(reg.get_meta(r, version) or {}), "contract": contract})

    def refused(method: str, path: str, **kw: Any) -> str:
        err = call(admin, method, path, 409, **kw)["error"]
        assert err["code"] == "version_not_servable", err
        assert f"contract {old}" in err["message"] and weak in err["message"], err
        return str(err["message"])

    def cli(*args: str) -> str:
        res = runner.invoke(main, list(args))
        assert res.exit_code == 1, res.output
        return res.output

    assert client.get("/readyz").status_code == 200
    registered_under(weak, old)
    refused("POST", f"/versions/{weak}/activate")
    assert f"contract {old}" in cli("versions", "activate", weak)
    arms = [
        {"name": "control", "version": published, "weight": 50},
        {"name": "treatment", "version": weak, "weight": 50},
    ]
    refused("POST", "/experiments", json={"name": "old-arm", "arms": arms})
    assert f"contract {old}" in cli(
        "ab",
        "create",
        "old-arm",
        "--arm",
        f"control={published}:50",
        "--arm",
        f"treatment={weak}:50",
    )
    assert call(admin, "GET", "/experiments")["experiments"] == []
    assert reg.live_version(r) == published

    # an arm whose version became unservable: readiness fails; updates are refused
    registered_under(weak, c.CONTRACT_VERSION)
    call(admin, "POST", "/experiments", 201, json={"name": "ab", "arms": arms})
    assert client.get("/readyz").status_code == 200
    registered_under(weak, old)
    resp = client.get("/readyz")
    assert resp.status_code == 503, resp.get_json()
    assert "treatment" in resp.get_json()["error"]["message"]
    assert f"contract {old}" in resp.get_json()["error"]["message"]
    refused(
        "PATCH",
        "/experiments/ab",
        json={"arms": [{"name": "control", "weight": 20}, {"name": "treatment", "weight": 80}]},
    )
    assert [a["weight"] for a in call(admin, "GET", "/experiments/ab")["arms"]] == [50, 50]
    call(admin, "DELETE", "/experiments/ab")
    assert client.get("/readyz").status_code == 200

    # rolling back to it is refused: the live version and the history stay as they were
    registered_under(weak, c.CONTRACT_VERSION)
    call(admin, "POST", f"/versions/{weak}/activate")
    call(admin, "POST", f"/versions/{published}/activate")
    registered_under(weak, old)
    history = r.lrange(c.HISTORY_KEY, 0, -1)
    assert history[0].decode() == weak
    refused("POST", "/versions/rollback")
    assert f"contract {old}" in cli("versions", "rollback")
    assert reg.live_version(r) == published and r.lrange(c.HISTORY_KEY, 0, -1) == history

    # the live version itself unservable (as an upgrade in place leaves it): not ready
    registered_under(published, old)
    resp = client.get("/readyz")
    assert resp.status_code == 503 and "the live version" in resp.get_json()["error"]["message"]
    assert client.get("/v1/feed/u1").status_code == 503
