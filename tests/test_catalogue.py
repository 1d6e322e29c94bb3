"""The live catalogue (issue 19, item 2) through real HTTP against real Redis and a published
version: ``PUT /v1/products/<id>`` and ``POST /v1/products`` change price and stock on the
next page of another worker, take sold-out posts out of feeds, add products new posts can link
before the next training, are bounded, survive a publish and log ``product_upsert`` events."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from helpers import feed_app
from test_moderation import AS_ADMIN, AS_API, KEY, copy_version, events_of, page

from feed import contract as c
from feed.publish import publish


def workers(redis_url: str, **cfg: Any) -> tuple[Any, Any]:
    cfg = {"API_KEY": KEY, "ADMIN_TOKEN": AS_ADMIN["Authorization"][7:], **cfg}
    cfg.setdefault("GLOBAL_CACHE_S", 60.0)
    cfg.setdefault("VERSION_CACHE_S", 60.0)
    return feed_app(redis_url, **cfg).test_client(), feed_app(redis_url, **cfg).test_client()


def card(client: Any, post: str) -> dict[str, Any]:
    resp = client.get(f"/v1/posts/{post}", headers=AS_API)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def put(client: Any, product: str, body: dict[str, Any], headers: Any = None) -> Any:
    return client.put(f"/v1/products/{product}", json=body, headers=headers or AS_API)


def test_stock_and_price_show_on_the_next_page(
    r: Any, redis_url: str, published: str, artifact: Path, tmp_path: Path
) -> None:
    a, b = workers(redis_url)
    users = [f"u{i}" for i in range(1, 13)]
    pages = {u: page(b, u) for u in users}
    target = next(p for p in pages["u1"] if card(b, p)["products"])
    products = [x["product_id"] for x in card(b, target)["products"]]
    first = products[0]

    assert put(a, first, {"price": 12.5}).status_code == 200
    shown = card(b, target)["products"][0]
    assert shown["price"] == 12.5 and shown["in_stock"] is True
    feed = b.get("/v1/feed/u1?limit=30&preview=1", headers=AS_ADMIN).get_json()["items"]
    item = next(it for it in feed if it["post_id"] == target)
    assert item["products"][0]["price"] == 12.5

    body = {"products": [{"product_id": p, "in_stock": False} for p in products]}
    resp = a.post("/v1/products", json=body, headers=AS_API)
    assert resp.status_code == 200 and resp.get_json() == {"stored": len(products), "created": []}
    after = {u: page(b, u) for u in users}
    assert any(target in pg for pg in pages.values())
    assert not any(target in pg for pg in after.values())  # sold out: out of every feed
    assert all(not x["in_stock"] for x in card(b, target)["products"])

    # a publish of a new version (same data) keeps the catalogue
    publish(r, copy_version(artifact, tmp_path, f"{published}-cat"), activate=True)
    c2 = feed_app(redis_url, API_KEY=KEY, ADMIN_TOKEN=AS_ADMIN["Authorization"][7:]).test_client()
    assert not any(target in page(c2, u) for u in users)
    assert card(c2, target)["products"][0]["price"] == 12.5

    assert put(a, first, {"in_stock": True}).status_code == 200  # back in stock: back
    assert any(target in page(b, u) for u in users)

    logged = events_of(r, "product_upsert")
    assert logged[0]["product_id"] == first and logged[0]["price"] == "12.5"
    assert logged[0]["changed"] == "price" and logged[0]["by"] == "api"
    assert [e.get("in_stock") for e in logged if e["product_id"] == first] == [None, "0", "1"]


def test_a_new_product_is_linked_by_a_new_post(r: Any, redis_url: str, published: str) -> None:
    a, b = workers(redis_url)
    resp = put(a, "sku-new-1", {"price": 3})
    assert resp.status_code == 400 and "title" in resp.get_json()["error"]["message"]
    resp = put(a, "sku-new-1", {"title": "Cold brew kit", "category": "coffee", "price": 30})
    assert resp.status_code == 201 and resp.get_json()["created"] is True
    resp = a.post(
        "/v1/posts",
        json={"post_id": "cat-post-1", "author_id": "u5", "product_ids": ["sku-new-1"]},
        headers=AS_API,
    )
    assert resp.status_code == 201, resp.get_json()
    shown = card(b, "cat-post-1")["products"]
    assert [(x["product_id"], x["title"], x["price"], x["in_stock"]) for x in shown] == [
        ("sku-new-1", "Cold brew kit", 30.0, True)
    ]
    assert put(a, "sku-new-1", {"in_stock": False, "merchant_id": "m-7"}).status_code == 200
    shown = card(b, "cat-post-1")["products"][0]
    assert shown["in_stock"] is False and shown["merchant_id"] == "m-7"
    record = c.decode_json(r.hget(c.CATALOGUE_KEY, "sku-new-1"))
    assert record["title"] == "Cold brew kit" and record["in_stock"] is False
    ev = events_of(r, "product_upsert")[-1]
    assert ev["title"] == "Cold brew kit" and ev["category"] == "coffee" and ev["in_stock"] == "0"
    assert ev["merchant_id"] == "m-7"


def test_bulk_limits_and_bad_bodies(r: Any, redis_url: str, published: str) -> None:
    a, _ = workers(redis_url, API_PRODUCTS_MAX=3)
    too_many = {"products": [{"product_id": f"s{i}", "in_stock": True} for i in range(1001)]}
    resp = a.post("/v1/products", json=too_many, headers=AS_API)
    assert resp.status_code == 400 and "FEED_PRODUCTS_PER_REQUEST" in resp.text
    for body, field in (
        ({"products": []}, "products"),
        ({"products": [{"product_id": "s1", "title": "t", "category": "c", "price": -1}]}, "price"),
        ({"products": [{"product_id": "s1", "title": "t", "category": "c", "size": 3}]}, "size"),
        ({"products": [{"product_id": "s1", "in_stock": "no"}]}, "products[0].in_stock"),
        ({"products": [{"product_id": "s1"}, {"product_id": "s1"}]}, "twice"),
        (
            {
                "products": [
                    {"product_id": "s1", "title": "t", "category": "c"},
                    {"product_id": "s2", "title": "t"},
                ]
            },
            "products[1].category",
        ),
    ):
        resp = a.post("/v1/products", json=body, headers=AS_API)
        assert resp.status_code == 400, (body, resp.get_json())
        assert field in resp.get_json()["error"]["message"], (field, resp.get_json())
    assert r.hlen(c.CATALOGUE_KEY) == 0 and not events_of(r, "product_upsert")  # none half-stored

    new = [{"product_id": f"s{i}", "title": f"t{i}", "category": "c"} for i in range(4)]
    resp = a.post("/v1/products", json={"products": new}, headers=AS_API)
    assert resp.status_code == 507 and resp.get_json()["error"]["code"] == "catalogue_full"
    assert r.hlen(c.CATALOGUE_KEY) == 0
    resp = a.post("/v1/products", json={"products": new[:3]}, headers=AS_API)
    assert resp.status_code == 200 and resp.get_json()["created"] == ["s0", "s1", "s2"]
    assert put(a, "s1", {"price": 9}).status_code == 200  # an update needs no room
    assert put(a, "s9", {"title": "t", "category": "c"}).status_code == 507
    assert len(events_of(r, "product_upsert")) == 4


def test_catalogue_writes_need_a_credential(redis_url: str, published: str) -> None:
    a, _ = workers(redis_url)
    assert put(a, "s1", {"title": "t", "category": "c"}, headers={"X-None": "1"}).status_code == 401
    assert put(a, "s1", {"title": "t", "category": "c"}, headers=AS_ADMIN).status_code == 201
    open_app = feed_app(redis_url).test_client()
    resp = open_app.put("/v1/products/s1", json={"price": 1})
    assert resp.status_code == 403


def overlay_of(client: Any) -> Any:
    """The worker's cached moderation and catalogue (:class:`service.store.Overlay`)."""
    return client.application.extensions["feed_store"].overlay()


def test_a_catalogue_write_rereads_only_what_changed(
    r: Any, redis_url: str, published: str
) -> None:
    a, b = workers(redis_url)
    first = page(b, "u1")  # b has read moderation and the catalogue
    new = [{"product_id": f"k{i}", "title": "t", "category": "c"} for i in range(5)]
    seeded = {"products": new}
    assert a.post("/v1/products", json=seeded, headers=AS_API).status_code == 200
    assert patch_hidden(a, first[0])
    page(b, "u1")
    before = overlay_of(b)
    glob = b.application.extensions["feed_store"].global_state(None, before.generation)
    assert put(a, "k1", {"price": 7}).status_code == 200  # a price: no stock change
    page(b, "u1")
    after = overlay_of(b)
    assert after.products["k1"]["price"] == 7
    assert after.products["k2"] is before.products["k2"]  # not read again
    assert after.takedown is before.takedown  # the moderation hash was not read again
    assert after.generation == (before.generation[0], before.generation[1] + 1)
    again = b.application.extensions["feed_store"].global_state(None, after.generation)
    assert again["oos"] is glob["oos"]  # the stock set (and its cached masks) kept
    assert r.zscore(c.CATALOGUE_CHANGES_KEY, "k1") == after.generation[1]
    assert r.zcard(c.CATALOGUE_CHANGES_KEY) == 5  # one member per product

    assert put(a, "k2", {"in_stock": False}).status_code == 200
    page(b, "u1")
    store = b.application.extensions["feed_store"]
    assert "k2" in overlay_of(b).sold_out
    assert "k2" in store.global_state(None, overlay_of(b).generation)["oos"]

    # far behind (more changed products than it reads one by one): read whole, same result
    many = [{"product_id": f"m{i}", "title": "t", "category": "c", "price": i} for i in range(1200)]
    for at in range(0, 1200, 600):
        resp = a.post("/v1/products", json={"products": many[at : at + 600]}, headers=AS_API)
        assert resp.status_code == 200
    page(b, "u1")
    stored = {k.decode(): c.decode_json(v) for k, v in r.hgetall(c.CATALOGUE_KEY).items()}
    assert dict(overlay_of(b).products) == stored and len(stored) == 1205


def patch_hidden(client: Any, post: str) -> bool:
    resp = client.patch(f"/v1/posts/{post}", json={"hidden": True}, headers=AS_ADMIN)
    return bool(resp.status_code == 200)


def test_concurrent_writes_reach_a_reading_worker_exactly(
    r: Any, redis_url: str, published: str
) -> None:
    a, b = workers(redis_url)
    page(b, "u1")
    stop = threading.Event()
    errors: list[Any] = []

    def writer(w: int) -> None:
        client = a.application.test_client()
        for i in range(40):
            body = {"title": f"w{w}", "category": "c", "price": i, "in_stock": i % 3 != 0}
            resp = put(client, f"w{w}-{i % 7}", body)
            if resp.status_code not in (200, 201):
                errors.append(resp.get_json())

    def reader() -> None:
        client = b.application.test_client()
        while not stop.is_set():
            page(client, "u2")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in [*readers, *writers]:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    page(b, "u1")  # the next request after the last write sees every write, exactly
    stored = {k.decode(): c.decode_json(v) for k, v in r.hgetall(c.CATALOGUE_KEY).items()}
    ov = overlay_of(b)
    assert dict(ov.products) == stored and len(stored) == 28
    assert ov.sold_out == {p for p, d in stored.items() if d["in_stock"] is False}
    assert ov.generation[1] == int(r.get(c.CATALOGUE_GEN_KEY)) == 160
