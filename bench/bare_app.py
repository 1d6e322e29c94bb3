"""The reference for ``bench.serve``: a bare Flask JSON endpoint, same route shape as the feed.

``gunicorn -c gunicorn.conf.py 'bench.bare_app:create_app()'`` with the same settings as the
service. ``GET /v1/feed/<user_id>`` serializes a fixed feed page on every request: the JSON
file named by ``BENCH_BARE_BODY`` (``bench.serve`` saves a real 20-post page there), else a
made-up page of 20 posts of similar size. No Redis, no ranking, no logging, no metrics.
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


def create_app() -> Flask:
    app = Flask(__name__)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    path = os.environ.get("BENCH_BARE_BODY")
    page = json.loads(Path(path).read_text("utf-8")) if path else sample_page()

    @app.get("/v1/feed/<user_id>")
    def feed(user_id: str) -> Any:
        return jsonify({**page, "user_id": user_id})

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    return app
