"""The reference for ``bench.serve``: a bare Flask JSON endpoint, same route shape as the feed.

``gunicorn -c gunicorn.conf.py 'bench.bare_app:create_app()'`` with the same settings as the
service. ``GET /v1/feed/<user_id>`` serializes a fixed feed page on every request: the JSON
file named by ``BENCH_BARE_BODY`` (``bench.serve`` saves a real 20-post page there), else a
made-up page of 20 posts of similar size. No Redis, no ranking, no logging, no metrics.

``create_app(redis=True)`` (a diagnostic, not the reference) also makes the page's two Redis
round trips through the service's own store (``FEED_REDIS_URL``): the user's state, then the
saved page's cards with the served write. It shows how much of a page is Redis I/O and how much
is the service's own Python.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify


def sample_page(n: int = 20) -> dict[str, Any]:
    """A feed page shaped like the service's, for when no real page was saved."""
    text = "這支口紅顏色超好看 great swatch " * 3
    items = [
        {
            "post_id": f"p{i}",
            "author_id": f"u{i * 7}",
            "text": text,
            "title": "Lipstick swatch",
            "created_at": "2026-11-20T08:00:00Z",
            "tags": ["beauty", "lipstick"],
            "score": 0.8312,
            "reason": "collaborative",
            "products": [
                {
                    "product_id": f"sku-{i}",
                    "title": f"Lipstick #{i}",
                    "price": 129.0,
                    "category": "beauty",
                    "brand": "Lumi",
                    "in_stock": True,
                }
            ],
        }
        for i in range(n)
    ]
    return {
        "user_id": "u1",
        "model_version": "v",
        "experiment": None,
        "arm": None,
        "request_id": "0" * 32,
        "degraded": False,
        "next_cursor": "x" * 80,
        "items": items,
    }


def _redis_round_trips(page: dict[str, Any]) -> Any:
    """A function making a page's two Redis round trips for a user (the service's store)."""
    import time

    from feed.redisclient import from_url
    from service.config import DEFAULTS
    from service.state import Route, Served
    from service.store import Store

    store = Store(from_url(os.environ["FEED_REDIS_URL"]), dict(DEFAULTS))
    post_ids = [it["post_id"] for it in page["items"]]
    route = Route(page["model_version"])
    table = store.table(page["model_version"])

    def touch(user_id: str) -> None:
        now = time.time()
        store.user_state(user_id, page["model_version"], now)
        store.cards(table, post_ids, Served(user_id, now, route, "bench"))

    return touch


def create_app(redis: bool = False) -> Flask:
    app = Flask(__name__)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    path = os.environ.get("BENCH_BARE_BODY")
    page = json.loads(Path(path).read_text("utf-8")) if path else sample_page()

    touch = _redis_round_trips(page) if redis else None

    @app.get("/v1/feed/<user_id>")
    def feed(user_id: str) -> Any:
        if touch is not None:
            touch(user_id)
        return jsonify({**page, "user_id": user_id})

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    return app
