"""Hostile input: nothing malformed crashes the service or reaches a Redis key it should not."""

from __future__ import annotations

from typing import Any

import pytest

from service import create_app
from service.config import ConfigError

# a space first or last, "/" even percent-encoded, braces (hash tags), globs, "|"
BAD_IDS = ["a" * 129, "u1%0Ad", "..%2F..", "u%7Bx%7D", "%20", "%20u1", "u1%20", "a%2Fb", "u*"]
BAD_IDS += ["a|b", "a=b"]


@pytest.mark.parametrize("user", BAD_IDS)
def test_bad_ids_are_rejected_before_redis(client: Any, r: Any, user: str) -> None:
    keys_before = r.dbsize()
    resp = client.get(f"/v1/feed/{user}")
    assert resp.status_code in (400, 404)
    assert r.dbsize() == keys_before  # no key was written for it


def test_limit_is_capped(client: Any) -> None:
    body = client.get("/v1/feed/u1?limit=100000").get_json()
    assert len(body["items"]) <= 100


@pytest.mark.parametrize(
    "body",
    [
        {"events": "like"},
        {"events": [{"type": "like", "user_id": ["u1"], "post_id": "p1"}]},
        {"events": [{"type": "like", "user_id": "u1", "post_id": "p1", "ts": {"x": 1}}]},
        {"events": [{"type": "like", "user_id": "u1", "post_id": "p1", "ts": True}]},
        {"events": [{"type": "like", "user_id": "u1", "post_id": "p1", "request_id": "x" * 65}]},
        {"events": [{"type": "like", "user_id": "u1", "post_id": "{u:u2}:cand"}]},
        {"events": [{"type": None, "user_id": "u1"}]},
        [1, 2, 3],
    ],
)
def test_malformed_events_are_400(client: Any, r: Any, body: Any) -> None:
    from feed.contract import EVENTS_KEY

    before = r.xlen(EVENTS_KEY)
    resp = client.post("/v1/events", json=body)
    assert resp.status_code == 400
    assert set(resp.get_json()["error"]) == {"code", "message"}
    assert r.xlen(EVENTS_KEY) == before  # nothing of a rejected batch is stored


def test_oversized_body_is_413(redis_url: str, published: str) -> None:
    app = create_app({"REDIS_URL": redis_url, "TESTING": True, "MAX_CONTENT_LENGTH": 2_000})
    big = {"events": [{"type": "click", "user_id": "u1", "post_id": "p1"}] * 100}
    resp = app.test_client().post("/v1/events", json=big)
    assert resp.status_code == 413 and resp.get_json()["error"]["code"]


def test_tampered_cursor_is_400_not_another_users_page(client: Any) -> None:
    import base64
    import json

    cursor = client.get("/v1/feed/u1?limit=2").get_json()["next_cursor"]
    body, sig = cursor.split(".")
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    fields["u"] = "u2"
    forged = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    resp = client.get(f"/v1/feed/u2?cursor={forged}.{sig}")
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_cursor"


def test_admin_version_override_needs_the_token(redis_url: str, published: str) -> None:
    off = create_app({"REDIS_URL": redis_url, "TESTING": True}).test_client()
    assert off.get(f"/v1/feed/u1?version={published}").status_code == 404
    on = create_app(
        {"REDIS_URL": redis_url, "TESTING": True, "ADMIN_TOKEN": "s3cret-0123456789"}
    ).test_client()
    assert on.get(f"/v1/feed/u1?version={published}").status_code == 401
    assert (
        on.get(
            f"/v1/feed/u1?version={published}", headers={"Authorization": "Bearer wrong"}
        ).status_code
        == 401
    )
    ok = on.get(
        f"/v1/feed/u1?version={published}", headers={"Authorization": "Bearer s3cret-0123456789"}
    )
    assert ok.status_code == 200 and ok.get_json()["model_version"] == published


def test_preview_changes_nothing(client: Any, r: Any) -> None:
    from feed.contract import USER_SEEN, user_key

    first = client.get("/v1/feed/u5?limit=5&preview=1").get_json()["items"]
    assert not r.exists(user_key("u5", USER_SEEN))
    again = client.get("/v1/feed/u5?limit=5&preview=1").get_json()["items"]
    assert [i["post_id"] for i in first] == [i["post_id"] for i in again]


def test_debug_mode_is_refused(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="FEED_DEBUG"):
        create_app({"REDIS_URL": redis_url, "DEBUG": "1"})


def test_invalid_configuration_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="FEED_MAX_LIMIT"):
        create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "MAX_LIMIT": "lots"})
    with pytest.raises(ConfigError, match="FEED_REDIS_URL"):
        create_app({"REDIS_URL": None})
