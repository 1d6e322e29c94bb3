"""What the live version serves, and what Redis holds, as values to compare before and after a
publish, a rollback or a failure (importable as ``snapshots``: pytest puts tests/ on the path).

:func:`edited_artifact` makes another version of the same model whose documents, seeds and
stock all differ from the original's, so any of them leaking into the live version shows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from feed import artifacts

USERS = ("u1", "u2", "u5", "u9", "u30")  # known users, with follows and purchases among them
API_POST = "p-api-1"  # a post created through POST /v1/posts (see :func:`create_api_post`)
_VOLATILE = re.compile(rb'"(request_id|next_cursor)":("[^"]*"|null)')


def edited_artifact(src: Path, out_dir: Path, version: str) -> Path:
    """A copy of the model version ``src`` as version ``version`` whose every post and product
    document is edited, every other product out of stock, and every follow and purchase moved
    to another author or product (the candidate lists stay)."""
    art = artifacts.read(src)
    arrays = {name[:-4]: art.arrays(name[:-4]) for name in artifacts.ARRAY_FILES}
    arrays["follows"]["followee"] = np.roll(arrays["follows"]["followee"], 1)
    arrays["purchases"]["product"] = np.roll(arrays["purchases"]["product"], 1)
    posts = [
        {**d, "text": f"edited in {version}: {d.get('text', '')}", "title": f"{version} title"}
        for d in art.documents("posts")
    ]
    products = [
        {**d, "title": f"{version} {d.get('title', '')}", "in_stock": i % 2 == 1}
        for i, d in enumerate(art.documents("products"))
    ]
    manifest = {k: v for k, v in art.manifest.items() if k != "files"}
    manifest["version"] = version
    return artifacts.write(
        out_dir / version, manifest, arrays, {"posts": posts, "products": products}
    )


def service_client(redis_url: str) -> Any:
    """A test client of the service with no caches and no freshness bonus, so a page is a
    function of what Redis holds (not of the clock)."""
    from service import create_app

    app = create_app(
        {
            "REDIS_URL": redis_url,
            "TESTING": True,
            "VERSION_CACHE_S": 0.0,
            "GLOBAL_CACHE_S": 0.0,
            "FRESHNESS_WEIGHT": 0.0,
            "CURSOR_SECRET": "test-secret",
        }
    )
    return app.test_client()


def create_api_post(client: Any, product_id: str) -> None:
    resp = client.post(
        "/v1/posts",
        json={
            "post_id": API_POST,
            "author_id": "u3",
            "text": "made through the API",
            "product_ids": [product_id],
        },
    )
    assert resp.status_code == 201, resp.get_json()


def live_pages(client: Any, posts: list[str]) -> dict[str, bytes]:
    """The bytes of the live feed pages of :data:`USERS` (previews: nothing is recorded; the
    request id and the cursor, new on every request, blanked), and the post and similar-posts
    pages of ``posts``."""
    out = {}
    for user in USERS:
        resp = client.get(f"/v1/feed/{user}?preview=1&limit=20")
        assert resp.status_code == 200, resp.get_json()
        out[f"feed {user}"] = _VOLATILE.sub(rb'"\1":"-"', resp.data)
    for post in posts:
        for path in (f"/v1/posts/{post}", f"/v1/posts/{post}/similar?limit=10"):
            resp = client.get(path)
            assert resp.status_code == 200, resp.get_json()
            out[path] = resp.data
    return out


def shown_posts(client: Any) -> list[str]:
    """Posts to follow through a change: the first user's first two posts with products."""
    items = client.get(f"/v1/feed/{USERS[0]}?preview=1&limit=20").get_json()["items"]
    return [it["post_id"] for it in items if it["products"]][:2]


def redis_state(r: Any, **scan: Any) -> dict[str, Any]:
    """Every key with its type and value, read back (to compare whole databases; ``scan``:
    more SCAN arguments, such as a cluster's ``target_nodes``)."""
    out: dict[str, Any] = {}
    for raw in r.scan_iter(count=1000, **scan):
        key = raw.decode()
        kind = r.type(key).decode()
        if kind == "string":
            value: Any = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "set":
            value = r.smembers(key)
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        else:  # a stream
            value = r.xrange(key)
        out[key] = (kind, value)
    return out
