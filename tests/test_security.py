"""What a caller may learn and do (docs/security.md): the API key, the admin token on previews
and example users, credentials refused at start, and hostile ids and event types; through the
real app against real Redis."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from feed import contract as c
from feed.cli import main
from service import create_app
from service.config import ConfigError

API_KEY = "app-backend-key-0123456789"
ADMIN = "operator-token-0123456789"
KEY = {"X-API-Key": API_KEY}
BEARER = {"Authorization": f"Bearer {ADMIN}"}

PUBLIC = ("health.healthz", "health.readyz", "viewer.viewer", "merchants.merchant_page", "static")


def make_client(redis_url: str, **config: Any) -> Any:
    return create_app(
        {"REDIS_URL": redis_url, "TESTING": True, "VERSION_CACHE_S": 0.0, **config}
    ).test_client()


def concrete(rule: str) -> str:
    """A route's rule with every <variable> filled in with an existing id."""
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: "p1" if "post" in m[1] else "u1", rule)


# --- the API key -----------------------------------------------------------------------------
def test_with_an_api_key_nothing_but_health_and_the_viewer_page_answers_without_it(
    redis_url: str, published: str
) -> None:
    client = make_client(redis_url, API_KEY=API_KEY, ADMIN_TOKEN=ADMIN)
    public = {"/healthz", "/readyz", "/viewer", "/static/viewer.js", "/merchant"}
    for path in public:
        resp = client.get(path)
        assert resp.status_code == 200, path
        resp.close()
    routes = [
        (concrete(rule.rule), method)
        for rule in client.application.url_map.iter_rules()
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
        if rule.endpoint not in PUBLIC
    ]
    assert len(routes) >= 20 and ("/metrics", "GET") in routes
    for path, method in [*routes, ("/no/such/route", "GET")]:
        for headers, message in (
            ({}, "requires an API key: send it in the X-API-Key header"),
            ({"X-API-Key": API_KEY + "x"}, "does not match"),
            ({"X-API-Key": ""}, "does not match"),
            ({"Authorization": f"Bearer {API_KEY[:-1]}"}, "does not match"),
        ):
            resp = client.open(path, method=method, headers=headers, json={})
            assert resp.status_code == 401, (method, path, headers, resp.status_code)
            error = resp.get_json()["error"]
            assert error["code"] == "unauthorized" and message in error["message"], error
            assert "X-API-Key" in resp.headers["WWW-Authenticate"]


def test_the_api_key_opens_the_api_and_the_admin_token_opens_everything(
    redis_url: str, published: str
) -> None:
    client = make_client(redis_url, API_KEY=API_KEY, ADMIN_TOKEN=ADMIN)
    assert client.get("/v1/feed/u1?limit=3", headers=KEY).status_code == 200
    assert client.get("/v1/posts/p1/similar", headers=KEY).status_code == 200
    assert client.get("/v1/users/u9/gifts?for=u1", headers=KEY).status_code == 200
    click = {"events": [{"type": "click", "user_id": "u1", "post_id": "p1"}]}
    assert client.post("/v1/events", json=click, headers=KEY).status_code == 202
    assert client.get("/openapi.json", headers=KEY).status_code == 200
    # /metrics: the key as X-API-Key, or as a bearer token (what any Prometheus can send)
    assert client.get("/metrics", headers=KEY).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    # the API key is not an admin token
    assert client.get("/v1/admin/versions", headers=KEY).status_code == 401
    assert client.get("/v1/feed/u1?preview=1", headers=KEY).status_code == 401
    # the admin token opens everything (the viewer sends only it)
    for path in ("/v1/admin/versions", "/v1/feed/u1?preview=1", "/v1/viewer/examples"):
        assert client.get(path, headers=BEARER).status_code == 200, path


def test_without_an_api_key_the_api_is_open(client: Any) -> None:
    assert client.get("/v1/feed/u1?limit=3").status_code == 200
    assert client.get("/metrics").status_code == 200


# --- previews and example users: other users' data --------------------------------------------
def test_previews_and_examples_need_the_admin_token_whenever_one_is_configured(
    redis_url: str, published: str, r: Any
) -> None:
    r.sadd(c.user_key("u1", c.USER_FOLLOWS), "u7")  # a preview would show whom u1 follows
    client = make_client(redis_url, ADMIN_TOKEN=ADMIN)
    for path in ("/v1/feed/u1?preview=1", "/v1/feed/u1?preview=true", "/v1/viewer/examples"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
            resp = client.get(path, headers=headers)
            assert resp.status_code == 401, (path, headers)
            message = resp.get_json()["error"]["message"]
            assert "shows other users' data" in message and "admin token" in message
        assert client.get(path, headers=BEARER).status_code == 200, path
    assert client.get("/v1/feed/u1?limit=3").status_code == 200  # the app's own call: no token
    # no admin token configured (a development setup): previews and examples are open
    dev = make_client(redis_url)
    assert dev.get("/v1/feed/u1?preview=1").status_code == 200
    assert dev.get("/v1/viewer/examples").status_code == 200


# --- credentials at start --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ADMIN_TOKEN", "API_KEY"])
def test_short_or_blank_credentials_are_refused_at_start(redis_url: str, name: str) -> None:
    for value, words in (
        ("x", "is 1 characters long; it must be at least 16"),
        ("s3cret-admin", "is 12 characters long; it must be at least 16"),
        ("sixteen chars ok", "must be printable ASCII without spaces"),
        ("ключ-0123456789abcdef", "must be printable ASCII without spaces"),
    ):
        with pytest.raises(ConfigError, match=f"FEED_{name} {words}"):
            create_app({"REDIS_URL": redis_url, name: value})
    create_app({"REDIS_URL": redis_url, name: "x" * 16})  # long enough
    create_app({"REDIS_URL": redis_url, name: ""})  # empty: unset


def test_credentials_from_the_environment_and_the_same_secret_twice(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEED_API_KEY", "too-short")
    with pytest.raises(ConfigError, match="FEED_API_KEY is 9 characters long"):
        create_app({"REDIS_URL": redis_url})
    monkeypatch.setenv("FEED_API_KEY", ADMIN)
    monkeypatch.setenv("FEED_ADMIN_TOKEN", ADMIN)
    with pytest.raises(ConfigError, match="FEED_API_KEY and FEED_ADMIN_TOKEN must differ"):
        create_app({"REDIS_URL": redis_url})


# --- hostile ids and event types -------------------------------------------------------------
INVISIBLE = ["u\u200b1", "u\u200d1", "\u202eu1", "u1\u2066", "u\ufeff1", "u\u00ad1", "u1\u3000"]


@pytest.mark.parametrize("user", [*INVISIBLE, "..", "u..1", ".", "u1\n", "u\ufffd1"])
def test_invisible_and_dot_dot_ids_are_refused_before_redis(client: Any, r: Any, user: str) -> None:
    keys = r.dbsize()
    resp = client.get("/v1/users/u9/gifts", query_string={"for": user})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_for"
    assert (
        "no '/', '|', leading or trailing spaces, zero-width or bidi-control characters, no '..'"
        in (resp.get_json()["error"]["message"])
    )
    event = {"type": "like", "user_id": user, "post_id": "p1"}
    resp = client.post("/v1/events", json={"events": [event]})
    assert resp.status_code == 400 and "user_id" in resp.get_json()["error"]["message"]
    post = {"post_id": user, "author_id": "a1", "text": "hi"}
    assert client.post("/v1/posts", json=post).status_code == 400
    assert r.dbsize() == keys


def test_ids_refuse_every_invisible_character_and_keep_ordinary_ones(dataset_dir: Path) -> None:
    bad = {"Cc", "Cf", "Cs", "Co", "Zs", "Zl", "Zp"}
    for cp in range(0xC0, 0x10000):
        ch = chr(cp)
        if unicodedata.category(ch) in bad or 0xFDD0 <= cp <= 0xFDEF or cp >= 0xFFF0:
            assert not c.valid_id(f"u{ch}1"), hex(cp)
    for ok in (
        "u42",
        "p_1-2.3:x@y",
        "用户七",
        "ユーザー",
        "사용자",
        "خالد",
        "josé",
        "a" * 128,
        "female vocalists",
        "r&b",
        "80's",
        "Guns N' Roses (live)",
        "#1!",
        "a+b,c;d$e~f",
    ):
        assert c.valid_id(ok), ok
    # every id of a generated dataset (what `feed publish` writes) is still valid
    for name, columns in (
        ("posts", ["post_id", "author_id"]),
        ("products", ["product_id"]),
        ("likes", ["user_id", "post_id"]),
        ("follows", ["follower_id", "followee_id"]),
        ("purchases", ["user_id", "product_id"]),
    ):
        frame = pd.read_csv(dataset_dir / f"{name}.csv", dtype=str)
        for col in columns:
            assert frame[col].map(c.valid_id).all(), (name, col)


@pytest.mark.parametrize("kind", [{"like": 1}, ["like"], [], {}, 7, True, 1.5])
def test_an_event_type_that_is_not_a_string_is_400(client: Any, r: Any, kind: Any) -> None:
    before = r.xlen(c.EVENTS_KEY)
    resp = client.post(
        "/v1/events", json={"events": [{"type": kind, "user_id": "u1", "post_id": "p1"}]}
    )
    assert resp.status_code == 400, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["code"] == "unknown_event_type"
    assert error["message"].startswith("events[0].type must be one of impression")
    assert r.xlen(c.EVENTS_KEY) == before


# --- the CLI ---------------------------------------------------------------------------------
def test_deleting_an_unknown_version_fails_and_says_so(
    runner: CliRunner, r: Any, published: str
) -> None:
    keys = r.dbsize()
    result = runner.invoke(main, ["versions", "delete", "nosuch"])
    assert result.exit_code == 1
    assert "unknown version 'nosuch'" in result.output and "feed versions list" in result.output
    assert r.dbsize() == keys
