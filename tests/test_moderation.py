"""Moderation (issue 19, item 1) through real HTTP against real Redis and a published version:
``PATCH``/``DELETE /v1/posts/<post_id>`` take a post out of every feed, similar list and gift
list of every version on the next request of every worker (two apps on one Redis, with long
caches, stand for two processes), keep it out after a new version is published, edit what
cards show, and log ``post_update``/``post_delete`` events."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import feed_app

from feed import artifacts, versions
from feed import contract as c
from feed import experiments as ex
from feed.publish import publish

ADMIN = "admin-token-0123456789"
KEY = "api-key-0123456789abcdef"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_API = {"X-API-Key": KEY}
USERS = [f"u{i}" for i in range(1, 25)]


def copy_version(src: Path, out: Path, version: str) -> Path:
    """The model ``src`` as version ``version``: what training again on the same data gives."""
    art = artifacts.read(src)
    arrays = {name[:-4]: art.arrays(name[:-4]) for name in artifacts.ARRAY_FILES}
    manifest = {k: v for k, v in art.manifest.items() if k != "files"}
    manifest["version"] = version
    docs = {"posts": list(art.documents("posts")), "products": list(art.documents("products"))}
    return artifacts.write(out / version, manifest, arrays, docs)


@pytest.fixture
def workers(redis_url: str, published: str) -> tuple[Any, Any]:
    """Two workers (apps with their own Store) caching versions and global state for a
    minute: only the overlay counter can make them see a takedown at once."""
    cfg = {"ADMIN_TOKEN": ADMIN, "API_KEY": KEY, "VERSION_CACHE_S": 60.0, "GLOBAL_CACHE_S": 60.0}
    return feed_app(redis_url, **cfg).test_client(), feed_app(redis_url, **cfg).test_client()


def page(client: Any, user: str, limit: int = 30) -> list[str]:
    """A preview page (records nothing, so every call ranks the same state)."""
    resp = client.get(f"/v1/feed/{user}?limit={limit}&preview=1", headers=AS_ADMIN)
    assert resp.status_code == 200, resp.get_json()
    return [it["post_id"] for it in resp.get_json()["items"]]


def similar(client: Any, post: str) -> list[str]:
    resp = client.get(f"/v1/posts/{post}/similar?limit=50", headers=AS_API)
    assert resp.status_code == 200, resp.get_json()
    return [it["post_id"] for it in resp.get_json()["items"]]


def gift_posts(client: Any, friend: str) -> set[str]:
    resp = client.get(f"/v1/users/u900/gifts?for={friend}&limit=20", headers=AS_API)
    assert resp.status_code == 200, resp.get_json()
    return {p["post_id"] for it in resp.get_json()["items"] for p in it["posts"]}


def everywhere(client: Any, friends: list[str], sources: list[str]) -> dict[str, Any]:
    """Where each post shows: feed pages (per user), similar lists (of ``sources``), gifts."""
    return {
        "feeds": {u: page(client, u) for u in USERS},
        "similar": {p: similar(client, p) for p in sources},
        "gifts": {f: gift_posts(client, f) for f in friends},
    }


def shows(where: dict[str, Any], post: str) -> dict[str, int]:
    return {kind: sum(post in lst for lst in lists.values()) for kind, lists in where.items()}


def pick_target(client: Any) -> tuple[str, list[str], list[str]]:
    """A post shown in several feeds, in a similar list and in a gift list: (post, friends
    whose gifts show it, posts whose similar lists show it)."""
    counts = Counter(p for u in USERS for p in page(client, u))
    gifts = {f: gift_posts(client, f) for f in USERS}
    for post, n in counts.most_common(40):
        friends = [f for f, posts in gifts.items() if post in posts]
        sources = [q for q, _ in counts.most_common(60) if q != post and post in similar(client, q)]
        if n >= 2 and friends and sources:
            return post, friends[:3], sources[:3]
    raise AssertionError("no post shows in feeds, similar lists and gifts at once")


def patch(client: Any, post: str, body: dict[str, Any], headers: Any = None) -> Any:
    return client.patch(f"/v1/posts/{post}", json=body, headers=headers or AS_ADMIN)


def events_of(r: Any, kind: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in r.xrange(c.EVENTS_KEY)
        if fields[b"type"] == kind.encode()
    ]


def test_hide_leaves_every_list_of_the_other_worker_at_once(r: Any, workers: Any) -> None:
    a, b = workers
    post, friends, sources = pick_target(b)  # b has cached everything it needs
    before = shows(everywhere(b, friends, sources), post)
    assert before["feeds"] >= 2 and before["similar"] and before["gifts"], before

    resp = patch(a, post, {"hidden": True})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"post_id": post, "hidden": True, "changed": []}
    assert shows(everywhere(b, friends, sources), post) == {"feeds": 0, "similar": 0, "gifts": 0}
    assert b.get(f"/v1/posts/{post}", headers=AS_API).status_code == 404
    assert b.get(f"/v1/posts/{post}/similar", headers=AS_API).status_code == 404
    card = b.get(f"/v1/posts/{post}", headers=AS_ADMIN)  # an admin still sees it, marked
    assert card.status_code == 200 and card.get_json()["hidden"] is True

    assert patch(b, post, {"hidden": False}).get_json()["hidden"] is False
    assert shows(everywhere(a, friends, sources), post) == before
    assert b.get(f"/v1/posts/{post}", headers=AS_API).status_code == 200
    assert r.hlen(c.MODERATION_KEY) == 0  # unhidden and unedited: no entry left

    logged = events_of(r, "post_update")
    assert [(e["post_id"], e["hidden"], e["by"], e["changed"]) for e in logged] == [
        (post, "1", "admin", "hidden"),
        (post, "0", "admin", "hidden"),
    ]
    assert all(float(e["ts"]) > 0 for e in logged)


def test_takedowns_hold_in_experiment_arms_and_after_a_new_version(
    r: Any, workers: Any, published: str, artifact: Path, tmp_path: Path
) -> None:
    a, b = workers
    counts = Counter(p for u in USERS for p in page(b, u))
    (gone, _), (hidden, _) = counts.most_common(2)
    v2 = publish(r, copy_version(artifact, tmp_path, f"{published}-again")).version
    ex.create(
        r,
        "mod",
        [
            {"name": "control", "version": published, "weight": 0},
            {"name": "treatment", "version": v2, "weight": 100},
        ],
    )
    arm_users = [f"x{i}" for i in range(3)] + USERS[:6]
    c2 = feed_app(b.application.config["REDIS_URL"], ADMIN_TOKEN=ADMIN, API_KEY=KEY).test_client()
    for u in USERS[:6]:  # routed to the arm's version
        body = c2.get(f"/v1/feed/{u}?limit=3", headers=AS_API).get_json()
        assert body["model_version"] == v2, body
    arm_before = Counter(p for u in arm_users for p in page(c2, u))
    assert arm_before[gone] and arm_before[hidden]

    assert a.delete(f"/v1/posts/{gone}", headers=AS_ADMIN).get_json() == {
        "post_id": gone,
        "deleted": True,
    }
    assert patch(a, hidden, {"hidden": True}).status_code == 200
    arm_after = Counter(p for u in arm_users for p in page(c2, u))
    assert not arm_after[gone] and not arm_after[hidden]
    assert b.get(f"/v1/posts/{gone}", headers=AS_ADMIN).status_code == 404  # even for an admin
    assert a.delete(f"/v1/posts/{gone}", headers=AS_ADMIN).status_code == 404  # final
    assert patch(a, gone, {"hidden": False}).status_code == 404  # a delete is not undone

    ex.stop(r, "mod")  # the new version (same data) goes live: the takedowns stay
    publish(r, copy_version(artifact, tmp_path / "b", f"{published}-third"), activate=True)
    fresh = feed_app(b.application.config["REDIS_URL"], ADMIN_TOKEN=ADMIN, API_KEY=KEY)
    live = fresh.test_client()
    assert (
        live.get("/v1/feed/u1?limit=1", headers=AS_API)
        .get_json()["model_version"]
        .endswith("-third")
    )
    after = Counter(p for u in USERS for p in page(live, u))
    assert not after[gone] and not after[hidden]
    assert live.get(f"/v1/posts/{gone}", headers=AS_API).status_code == 404
    assert [e["post_id"] for e in events_of(r, "post_delete")] == [gone]
    assert events_of(r, "post_delete")[0]["by"] == "admin"


def test_edits_show_in_every_card(r: Any, workers: Any, published: str) -> None:
    a, b = workers
    post = page(b, "u1")[0]
    before = b.get(f"/v1/posts/{post}", headers=AS_API).get_json()
    other = next(
        p
        for u in USERS
        for p in page(b, u)
        for x in [b.get(f"/v1/posts/{p}", headers=AS_API)]
        if x.get_json()["products"]
        and x.get_json()["products"][0]["product_id"]
        not in {q["product_id"] for q in before["products"]}
    )
    product = b.get(f"/v1/posts/{other}", headers=AS_API).get_json()["products"][0]["product_id"]
    edit = {"text": "edited text 已編輯", "title": "new title", "tags": ["a", "b"]}
    resp = patch(a, post, {**edit, "product_ids": [product]})
    assert resp.status_code == 200 and resp.get_json()["changed"] == [*edit, "product_ids"]
    card = b.get(f"/v1/posts/{post}", headers=AS_API).get_json()
    assert {k: card[k] for k in edit} == edit
    assert [p["product_id"] for p in card["products"]] == [product]
    item = next(
        it
        for it in b.get("/v1/feed/u1?limit=30&preview=1", headers=AS_ADMIN).get_json()["items"]
        if it["post_id"] == post
    )
    assert item["title"] == "new title" and item["text"] == edit["text"]
    assert r.get(c.post_doc_key(post, published)) is not None  # the version's own doc stays

    # an API-created post is edited in place
    created = a.post(
        "/v1/posts",
        json={"post_id": "mod-api-1", "author_id": "u3", "text": "first", "product_ids": []},
        headers=AS_API,
    )
    assert created.status_code == 201, created.get_json()
    assert patch(a, "mod-api-1", {"text": "second"}).status_code == 200
    assert b.get("/v1/posts/mod-api-1", headers=AS_API).get_json()["text"] == "second"
    assert r.ttl(c.card_key("mod-api-1")) > 0  # still expires with the post
    assert r.hlen(c.MODERATION_KEY) == 1  # the trained post's edit only

    logged = events_of(r, "post_update")[0]
    assert logged["tags"] == "a|b" and logged["product_ids"] == product
    assert logged["text"] == edit["text"] and logged["hidden"] == "0"

    assert a.delete("/v1/posts/mod-api-1", headers=AS_ADMIN).status_code == 200
    assert b.get("/v1/posts/mod-api-1", headers=AS_ADMIN).status_code == 404
    assert r.get(c.card_key("mod-api-1")) is None and not r.zscore(c.FRESH_KEY, "mod-api-1")
    again = a.post("/v1/posts", json={"post_id": "mod-api-1", "author_id": "u3"}, headers=AS_API)
    assert again.status_code == 400 and again.get_json()["error"]["code"] == "duplicate_post"


def test_moderation_needs_the_admin_token(redis_url: str, published: str) -> None:
    both = feed_app(redis_url, ADMIN_TOKEN=ADMIN, API_KEY=KEY).test_client()
    post = page(both, "u1")[0]
    assert both.patch(f"/v1/posts/{post}", json={"hidden": True}).status_code == 401
    resp = both.patch(f"/v1/posts/{post}", json={"hidden": True}, headers=AS_API)
    assert resp.status_code == 403 and "admin token" in resp.get_json()["error"]["message"]
    assert both.delete(f"/v1/posts/{post}", headers=AS_API).status_code == 403
    wrong = {"Authorization": "Bearer " + "x" * 20}
    admin_only = feed_app(redis_url, ADMIN_TOKEN=ADMIN).test_client()
    assert admin_only.patch(f"/v1/posts/{post}", json={}, headers=wrong).status_code == 401
    key_only = feed_app(redis_url, API_KEY=KEY).test_client()
    assert key_only.patch(f"/v1/posts/{post}", json={"hidden": True}).status_code == 401
    resp = key_only.patch(f"/v1/posts/{post}", json={"hidden": True}, headers=AS_API)
    assert resp.status_code == 200
    open_app = feed_app(redis_url).test_client()
    resp = open_app.patch(f"/v1/posts/{post}", json={"hidden": False})
    assert resp.status_code == 403 and "FEED_ADMIN_TOKEN" in resp.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "text, title"),
        ({"hidden": "yes"}, "hidden"),
        ({"title": 7}, "title"),
        ({"tags": ["x" * 51]}, "tags[0]"),
        ({"product_ids": ["bad|id"]}, "product_id"),
        ({"author_id": "u2"}, "author_id"),
        ({"text": "x" * 5001}, "text"),
    ],
)
def test_bad_bodies_name_the_field(
    r: Any, redis_url: str, published: str, body: dict[str, Any], field: str
) -> None:
    client = feed_app(redis_url, ADMIN_TOKEN=ADMIN).test_client()
    post = page(client, "u1")[0]
    resp = patch(client, post, body)
    assert resp.status_code == 400, resp.get_json()
    assert field in resp.get_json()["error"]["message"]
    assert r.hlen(c.MODERATION_KEY) == 0 and not events_of(r, "post_update")
    assert patch(client, "no-such-post", {"hidden": True}).status_code == 404


def test_moderation_is_bounded(r: Any, redis_url: str, published: str) -> None:
    client = feed_app(redis_url, ADMIN_TOKEN=ADMIN, MODERATION_MAX=2).test_client()
    posts = page(client, "u1")[:3]
    for post in posts[:2]:
        assert patch(client, post, {"hidden": True}).status_code == 200
    resp = patch(client, posts[2], {"hidden": True})
    assert resp.status_code == 507 and "FEED_MODERATION_MAX" in resp.get_json()["error"]["message"]
    assert r.hlen(c.MODERATION_KEY) == 2 and len(events_of(r, "post_update")) == 2
    assert patch(client, posts[0], {"hidden": False}).status_code == 200  # frees its place
    assert patch(client, posts[2], {"hidden": True}).status_code == 200


def arm_only_version(src: Path, out: Path, version: str, post: str, new_id: str) -> Path:
    """The model ``src`` as version ``version`` with ``post`` renamed ``new_id``: a version
    whose post table lists a post the other lacks (as a retraining on newer data would)."""
    art = artifacts.read(src)
    arrays = {name[:-4]: dict(art.arrays(name[:-4])) for name in artifacts.ARRAY_FILES}
    ids = [str(p) for p in arrays["posts"]["post_id"]]
    ids[ids.index(post)] = new_id
    arrays["posts"]["post_id"] = np.array(ids)
    docs = art.documents("posts")
    posts = [{**d, "post_id": new_id} if d["post_id"] == post else d for d in docs]
    manifest = {k: v for k, v in art.manifest.items() if k != "files"}
    manifest["version"] = version
    docs = {"posts": posts, "products": list(art.documents("products"))}
    return artifacts.write(out / version, manifest, arrays, docs)


def test_a_post_only_an_experiment_arm_lists_is_taken_down(
    r: Any, redis_url: str, published: str, artifact: Path, tmp_path: Path
) -> None:
    live = feed_app(redis_url, ADMIN_TOKEN=ADMIN, API_KEY=KEY).test_client()
    popular = Counter(p for u in USERS for p in page(live, u)).most_common(1)[0][0]
    v2 = f"{published}-arm"
    publish(r, arm_only_version(artifact, tmp_path, v2, popular, "arm-only-1"))
    ex.create(
        r,
        "arm-mod",
        [
            {"name": "control", "version": published, "weight": 0},
            {"name": "t", "version": v2, "weight": 100},
        ],
    )
    arm = feed_app(redis_url, ADMIN_TOKEN=ADMIN, API_KEY=KEY).test_client()
    assert sum("arm-only-1" in page(arm, u) for u in USERS) >= 2  # the arm serves it
    assert arm.get("/v1/posts/arm-only-1", headers=AS_API).status_code == 404  # live lacks it

    edit = patch(arm, "arm-only-1", {"title": "edited in the arm", "hidden": True})
    assert edit.status_code == 200, edit.get_json()
    assert not any("arm-only-1" in page(arm, u) for u in USERS)
    assert r.get(c.override_keys("arm-only-1")[1]) is not None  # the arm's card is overridden
    assert patch(arm, "arm-only-1", {"hidden": False}).status_code == 200
    shown = [
        it
        for u in USERS
        for it in arm.get(f"/v1/feed/{u}?limit=30&preview=1", headers=AS_ADMIN).get_json()["items"]
        if it["post_id"] == "arm-only-1"
    ]
    assert shown and all(it["title"] == "edited in the arm" for it in shown)

    assert arm.delete("/v1/posts/arm-only-1", headers=AS_ADMIN).status_code == 200
    assert not any("arm-only-1" in page(arm, u) for u in USERS)
    assert arm.delete("/v1/posts/arm-only-1", headers=AS_ADMIN).status_code == 404
    assert [e["post_id"] for e in events_of(r, "post_delete")] == ["arm-only-1"]
    assert patch(arm, "never-listed", {"hidden": True}).status_code == 404


def new_post(client: Any, post: str) -> None:
    resp = client.post("/v1/posts", json={"post_id": post, "author_id": "u3"}, headers=AS_API)
    assert resp.status_code == 201, resp.get_json()


def test_entries_of_posts_nobody_serves_are_pruned(r: Any, redis_url: str, published: str) -> None:
    cfg = {"ADMIN_TOKEN": ADMIN, "API_KEY": KEY, "MODERATION_MAX": 3}
    client = feed_app(redis_url, **cfg, MODERATION_TOMBSTONE_S=2).test_client()
    for i in range(8):  # more deletions than the cap: each write prunes the earlier ones
        new_post(client, f"gone-{i}")
        assert client.delete(f"/v1/posts/gone-{i}", headers=AS_ADMIN).status_code == 200
    assert r.hlen(c.MODERATION_KEY) == 1  # the last one's: the others left tombstones
    assert 0 < r.ttl(c.tombstone_key("gone-0")) <= 2
    again = client.post("/v1/posts", json={"post_id": "gone-0", "author_id": "u3"}, headers=AS_API)
    assert again.status_code == 400 and again.get_json()["error"]["code"] == "duplicate_post"

    trained = page(client, "u1")[:2]
    for post in trained:  # trained posts the live version lists: their entries stay
        assert patch(client, post, {"hidden": True}).status_code == 200
    new_post(client, "hidden-api")
    assert patch(client, "hidden-api", {"hidden": True}).status_code == 200
    assert r.hlen(c.MODERATION_KEY) == 3  # full: the last deletion's entry was pruned
    assert patch(client, page(client, "u2")[0], {"hidden": True}).status_code == 507
    versions.forget_fresh(r, ["hidden-api"])  # the API post is pruned (age or count bound)
    resp = patch(client, page(client, "u2")[0], {"hidden": True})  # its entry makes room
    assert resp.status_code == 200, resp.get_json()
    assert not r.hexists(c.MODERATION_KEY, "hidden-api")
    assert all(r.hexists(c.MODERATION_KEY, p) for p in trained)

    time.sleep(2.1)  # the tombstone's window is over: the id may be used again
    new_post(client, "gone-0")


def test_an_edit_racing_a_prune_recreates_nothing(r: Any, redis_url: str, published: str) -> None:
    app = feed_app(redis_url, ADMIN_TOKEN=ADMIN, API_KEY=KEY)
    new_post(app.test_client(), "race-timed")
    start = time.perf_counter()
    assert patch(app.test_client(), "race-timed", {"text": "x"}).status_code == 200
    spread = 1.5 * (time.perf_counter() - start)  # an edit's duration, and some
    for i in range(30):
        post = f"race-{i}"
        new_post(app.test_client(), post)
        result: list[int] = []

        def edit(p: str = post, out: list[int] = result) -> None:
            out.append(patch(app.test_client(), p, {"text": "x", "product_ids": []}).status_code)

        editor = threading.Thread(target=edit)
        editor.start()
        time.sleep(spread * i / 30)  # the prune lands anywhere in the edit's span
        versions.forget_fresh(r, [post])
        editor.join()
        assert result[0] in (200, 404)
        for key in (c.post_doc_key(post), c.card_key(post)):
            assert r.ttl(key) != -1, (key, result)  # gone, or still expiring: never forever
        assert r.hexists(c.FRESH_META_KEY, post) == (r.zscore(c.FRESH_KEY, post) is not None)
