"""The Flask service: ranked feed pages out of Redis.

>>> app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0"})
>>> {"admin", "api", "events", "gifts", "viewer"} <= set(app.blueprints)
True
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from flask import Flask

from service import config as config_mod
from service.errors import register as register_errors


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Application factory: defaults, then ``FEED_*`` environment variables, then ``test_config``.

    The Redis client is created lazily per process, so the app is safe to create before a
    gunicorn fork.
    """
    app = Flask(__name__)
    app.config.from_mapping(config_mod.DEFAULTS)
    app.config.from_prefixed_env("FEED", loads=str)
    if test_config:
        app.config.from_mapping(test_config)
    config_mod.check(app.config)
    secret = app.config.get("CURSOR_SECRET") or os.environ.get("FEED_CURSOR_SECRET")
    app.config["CURSOR_SECRET_BYTES"] = secret.encode() if secret else secrets.token_bytes(32)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from feed.contract import connect
    from service import admin, api, events, gifts, observability, openapi, viewer
    from service.store import Store

    client = connect(
        app.config["REDIS_URL"],
        socket_timeout=app.config["REDIS_SOCKET_TIMEOUT"],
        connect_timeout=app.config["REDIS_CONNECT_TIMEOUT"],
    )
    app.extensions["feed_redis"] = client
    app.extensions["feed_store"] = Store(client, app.config)
    register_errors(app)
    observability.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(gifts.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(viewer.bp)
    return app
