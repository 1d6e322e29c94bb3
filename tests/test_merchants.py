"""Merchant accounts: tokens issued by the CLI and the admin API, stored hashed, rotated and
revoked (effective on the next request in every worker), and a token that opens its own
merchant only: every merchant route answers 404 to another merchant's token, 401 to none."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import feed_app

from feed import contract as c
from feed.cli import main

ADMIN = "admin-token-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}

#: Every merchant route, as (method, path template): the cross-merchant test tries them all.
MERCHANT_ROUTES = [
    ("GET", "/v1/merchants/{m}"),
    ("GET", "/v1/merchants/{m}/report"),
    ("POST", "/v1/merchants/{m}/audiences"),
    ("GET", "/v1/merchants/{m}/audiences"),
    ("GET", "/v1/merchants/{m}/audiences/{a}.csv"),
    ("POST", "/v1/merchants/{m}/campaigns"),
    ("GET", "/v1/merchants/{m}/campaigns"),
    ("GET", "/v1/merchants/{m}/campaigns/{cp}"),
    ("POST", "/v1/merchants/{m}/campaigns/{cp}/stop"),
    ("GET", "/v1/merchants/{m}/campaigns/{cp}/report"),
]
#: What the own token gets where it is not a 200: POSTs are sent an empty body, so the
#: merchant check passes and the body check answers (another merchant's token never gets there).
OWN_STATUS = {
    ("POST", "/v1/merchants/{m}/audiences"): 400,
    ("POST", "/v1/merchants/{m}/campaigns"): 400,
}


def seed_objects(r: Any, m: str) -> dict[str, str]:
    """An audience and a campaign of merchant ``m``, written as the service writes them."""
    import time

    now = time.time()
    meta = {"audience_id": "aud-1", "merchant_id": m, "target": {"category": "x"}, "size": 1,
            "estimated_size": 1, "model_version": "v", "created_at": now}  # fmt: skip
    r.set(c.audience_key("aud-1", "meta"), c.encode_json(meta), ex=600)
    r.zadd(c.audience_key("aud-1", "users"), {"u1": 1.0})
    cfg = {"campaign_id": "cmp-1", "merchant_id": m, "post_ids": ["p1"], "authors": {},
           "products": ["x1"], "audience_id": "all", "budget_impressions": 1,
           "max_per_user": 1, "slots": [3], "start": now - 10, "end": now + 600,
           "holdout": 0.1, "salt": "cmp-1", "created_at": now, "stopped_at": None}  # fmt: skip
    r.hset(c.CAMPAIGNS_KEY, "cmp-1", c.encode_json(cfg))
    return {"a": "aud-1", "cp": "cmp-1"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def apps(redis_url: str, published: str) -> tuple[Any, Any]:
    """Two workers (two app instances, two processes' worth of state) on one Redis."""
    return (
        feed_app(redis_url, ADMIN_TOKEN=ADMIN).test_client(),
        feed_app(redis_url, ADMIN_TOKEN=ADMIN).test_client(),
    )


def create(client: Any, m: str) -> str:
    resp = client.post("/v1/admin/merchants", json={"merchant_id": m}, headers=AS_ADMIN)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["token"]  # type: ignore[no-any-return]


def test_every_merchant_route_is_in_the_list(apps: tuple[Any, Any]) -> None:
    a, _ = apps
    rules = {
        r.rule for r in a.application.url_map.iter_rules() if r.rule.startswith("/v1/merchants")
    }
    listed = {
        p.replace("{m}", "<merchant_id>")
        .replace("{a}", "<audience_id>")
        .replace("{cp}", "<campaign_id>")
        for _, p in MERCHANT_ROUTES
    }
    assert rules == listed


def test_admin_creates_lists_and_tokens_are_stored_hashed(r: Any, apps: tuple[Any, Any]) -> None:
    a, b = apps
    token = create(a, "m-a")
    assert len(token) >= 40
    raw = r.hget(c.MERCHANTS_KEY, "m-a")
    assert token.encode() not in raw and token.encode() not in b"".join(
        r.hgetall(c.MERCHANT_TOKENS_KEY)
    )
    assert c.decode_json(raw)["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    again = a.post("/v1/admin/merchants", json={"merchant_id": "m-a"}, headers=AS_ADMIN)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "merchant_exists"
    listed = b.get("/v1/admin/merchants", headers=AS_ADMIN).get_json()["merchants"]
    assert [m["merchant_id"] for m in listed] == ["m-a"] and listed[0]["active"] is True
    assert all("token_sha256" not in m for m in listed)
    ok = b.get("/v1/merchants/m-a", headers=bearer(token))
    assert ok.status_code == 200 and ok.get_json()["merchant_id"] == "m-a"


def test_admin_routes_need_the_admin_token(apps: tuple[Any, Any]) -> None:
    a, _ = apps
    token = create(a, "m-a")
    assert a.get("/v1/admin/merchants").status_code == 401
    assert a.get("/v1/admin/merchants", headers=bearer(token)).status_code == 401
    resp = a.post("/v1/admin/merchants", json={"merchant_id": "m-b"}, headers=bearer(token))
    assert resp.status_code == 401
    assert a.post("/v1/admin/merchants/m-a/rotate", headers=bearer(token)).status_code == 401
    assert a.delete("/v1/admin/merchants/m-a", headers=bearer(token)).status_code == 401


def test_bad_merchant_ids_are_400_naming_the_field(apps: tuple[Any, Any]) -> None:
    a, _ = apps
    resp = a.post("/v1/admin/merchants", json={"merchant_id": "a/b"}, headers=AS_ADMIN)
    assert resp.status_code == 400 and "merchant_id" in resp.get_json()["error"]["message"]
    resp = a.post("/v1/admin/merchants", json={"merchant_id": "x" * 200}, headers=AS_ADMIN)
    assert resp.status_code == 400
    token = create(a, "m-a")
    resp = a.get("/v1/merchants/a..b/report", headers=bearer(token))
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_merchant_id"


def test_a_token_never_opens_another_merchant(r: Any, apps: tuple[Any, Any]) -> None:
    """Every merchant route: another merchant's token gets 404 (as for a merchant that does
    not exist, so ids do not leak), no token or a garbage one gets 401, the own token 200."""
    a, b = apps
    ta, tb = create(a, "m-a"), create(a, "m-b")
    ids = seed_objects(r, "m-a")
    for method, route in MERCHANT_ROUTES:
        template = route.replace("{a}", ids["a"]).replace("{cp}", ids["cp"])
        for client in (a, b):
            own = client.open(template.format(m="m-a"), method=method, headers=bearer(ta))
            want = OWN_STATUS.get((method, route), 200)
            assert own.status_code == want, (template, own.get_json())
            other = client.open(template.format(m="m-a"), method=method, headers=bearer(tb))
            assert other.status_code == 404, template
            assert other.get_json()["error"]["code"] == "not_found"
            ghost = client.open(template.format(m="m-zzz"), method=method, headers=bearer(ta))
            assert ghost.status_code == 404 and ghost.get_json() == {
                **ghost.get_json(),
                "error": {"code": "not_found", "message": "no merchant 'm-zzz'"},
            }
            assert client.open(template.format(m="m-a"), method=method).status_code == 401
            junk = client.open(template.format(m="m-a"), method=method, headers=bearer("junk"))
            assert junk.status_code == 401
            admin = client.open(template.format(m="m-a"), method=method, headers=AS_ADMIN)
            assert admin.status_code == 401  # the admin token is not a merchant's


def test_rotate_and_revoke_hold_on_the_next_request_in_every_worker(
    apps: tuple[Any, Any],
) -> None:
    a, b = apps
    old = create(a, "m-a")
    assert b.get("/v1/merchants/m-a", headers=bearer(old)).status_code == 200
    rotated = a.post("/v1/admin/merchants/m-a/rotate", headers=AS_ADMIN)
    assert rotated.status_code == 200
    new = rotated.get_json()["token"]
    assert new != old
    assert b.get("/v1/merchants/m-a", headers=bearer(old)).status_code == 401
    assert b.get("/v1/merchants/m-a", headers=bearer(new)).status_code == 200
    revoked = b.delete("/v1/admin/merchants/m-a", headers=AS_ADMIN)
    assert revoked.status_code == 200 and revoked.get_json()["active"] is False
    assert a.get("/v1/merchants/m-a", headers=bearer(new)).status_code == 401
    assert b.get("/v1/merchants/m-a/report", headers=bearer(new)).status_code == 401
    assert a.delete("/v1/admin/merchants/m-a", headers=AS_ADMIN).status_code == 404
    assert a.post("/v1/admin/merchants/m-a/rotate", headers=AS_ADMIN).status_code == 404
    assert a.post("/v1/admin/merchants/nobody/rotate", headers=AS_ADMIN).status_code == 404
    fresh = create(a, "m-a")  # a revoked account can be given a token again
    assert b.get("/v1/merchants/m-a", headers=bearer(fresh)).status_code == 200
    assert b.get("/v1/merchants/m-a", headers=bearer(new)).status_code == 401


def test_cli_create_rotate_revoke_list(r: Any, runner: CliRunner, apps: tuple[Any, Any]) -> None:
    a, _ = apps
    res = runner.invoke(main, ["merchants", "create", "shop-x"])
    assert res.exit_code == 0, res.output
    token = res.output.strip().splitlines()[-1]
    assert a.get("/v1/merchants/shop-x", headers=bearer(token)).status_code == 200
    dup = runner.invoke(main, ["merchants", "create", "shop-x"])
    assert dup.exit_code == 1 and "rotate" in dup.output
    res = runner.invoke(main, ["merchants", "rotate", "shop-x"])
    assert res.exit_code == 0
    new = res.output.strip().splitlines()[-1]
    assert a.get("/v1/merchants/shop-x", headers=bearer(token)).status_code == 401
    assert a.get("/v1/merchants/shop-x", headers=bearer(new)).status_code == 200
    listed = runner.invoke(main, ["merchants", "list"])
    assert "shop-x\tactive" in listed.output and new not in listed.output
    assert runner.invoke(main, ["merchants", "revoke", "shop-x"]).exit_code == 0
    assert a.get("/v1/merchants/shop-x", headers=bearer(new)).status_code == 401
    assert runner.invoke(main, ["merchants", "revoke", "shop-x"]).exit_code == 1
    bad = runner.invoke(main, ["merchants", "create", "a/b"])
    assert bad.exit_code == 2 and "not a valid id" in bad.output


def test_another_merchants_objects_are_404_under_its_own_path_on_every_route(
    r: Any, redis_url: str, published: str
) -> None:
    """Merchant B, its own token on its own routes, given merchant A's audience, campaign,
    products and posts (every route of MERCHANT_ROUTES): a 404 wherever it names one of A's
    objects, and nothing of A's in what B lists or reports."""
    import time

    from test_audiences import biggest

    client = feed_app(redis_url, ADMIN_TOKEN=ADMIN).test_client()
    a, mine, b, theirs = biggest(r, published)
    ta, tb = create(client, a), create(client, b)
    a_products = sorted(mine["products"] - theirs["products"])
    a_posts = sorted(set(mine["posts"]) - set(theirs["posts"]))
    b_posts = sorted(set(theirs["posts"]) - set(mine["posts"]))
    aud = client.post(f"/v1/merchants/{a}/audiences", json={"product_ids": a_products[:3]},
                      headers=bearer(ta)).get_json()  # fmt: skip
    camp = client.post(
        f"/v1/merchants/{a}/campaigns", headers=bearer(ta),
        json={"post_ids": a_posts[:2], "audience_id": aud["audience_id"],
              "budget_impressions": 10, "max_per_user": 1, "slots": [3],
              "end": time.time() + 600},
    ).get_json()  # fmt: skip
    a_ids = {a, aud["audience_id"], camp["campaign_id"]}
    # purchases of A's product through A's post: in A's report, never in B's
    ev = {"type": "purchase", "user_id": "u1", "product_id": a_products[0], "post_id": a_posts[0]}
    assert client.post("/v1/events", json={"events": [ev]}).status_code == 202
    bodies = {
        ("POST", "/v1/merchants/{m}/audiences"): {"product_ids": a_products[:1]},
        ("POST", "/v1/merchants/{m}/campaigns"): {
            "post_ids": b_posts[:1], "audience_id": aud["audience_id"],
            "budget_impressions": 10, "max_per_user": 1, "slots": [3],
            "end": time.time() + 600,
        },
    }  # fmt: skip
    for method, route in MERCHANT_ROUTES:
        path = route.format(m=b, a=aud["audience_id"], cp=camp["campaign_id"])
        resp = client.open(path, method=method, json=bodies.get((method, route)),
                           headers=bearer(tb))  # fmt: skip
        names_a_object = "{a}" in route or "{cp}" in route or (method, route) in bodies
        if names_a_object:
            assert resp.status_code == 404, (path, resp.get_json())
        else:
            assert resp.status_code == 200, (path, resp.get_json())
            text = resp.get_data(as_text=True)
            assert not any(x in text for x in a_ids), path
    # B's report by product holds B's products only; A's holds the purchase
    rep_b = client.get(f"/v1/merchants/{b}/report?by=product", headers=bearer(tb)).get_json()
    assert a_products[0] not in {row["product_id"] for row in rep_b["rows"]}
    rep_a = client.get(f"/v1/merchants/{a}/report?by=product", headers=bearer(ta)).get_json()
    assert {row["product_id"]: row["purchases"] for row in rep_a["rows"]}[a_products[0]] == 1
