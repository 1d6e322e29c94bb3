"""The Flask service: ranked feed pages out of Redis. The routes are in :mod:`service.routes`.

>>> app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0"})
>>> {"admin", "api", "events", "gifts", "viewer"} <= set(app.blueprints)
True
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

from service import config as config_mod
from service.errors import register as register_errors


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON through orjson: UTF-8 (no ``\\u`` escapes), keys in insertion order,
    compact; types orjson does not know go through Flask's ``default`` (dates, decimals...)."""

    def _bytes(self, obj: Any, indent: bool) -> bytes:
        options = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
        if indent:
            options |= orjson.OPT_INDENT_2
        return orjson.dumps(obj, default=self.default, option=options)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return self._bytes(obj, bool(kwargs.get("indent"))).decode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """``jsonify``: the body as orjson wrote it (no round trip through ``str``)."""
        obj = self._prepare_response_obj(args, kwargs)
        indent = (self.compact is None and self._app.debug) or self.compact is False
        return Response(self._bytes(obj, indent) + b"\n", mimetype=self.mimetype)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Application factory: defaults, then ``FEED_*`` environment variables, then ``test_config``.

    The Redis client is created lazily per process, so the app is safe to create before a
    gunicorn fork.
    """
    config_mod.check_environment(os.environ)  # unknown FEED_* names: a warning; bad booleans
    app = Flask(__name__)
    app.config.from_mapping(config_mod.DEFAULTS)
    app.config.from_prefixed_env("FEED", loads=str)
    if test_config:
        app.config.from_mapping(test_config)
    config_mod.check(app.config)
    secret = app.config.get("CURSOR_SECRET") or os.environ.get("FEED_CURSOR_SECRET")
    app.config["CURSOR_SECRET_BYTES"] = secret.encode() if secret else secrets.token_bytes(32)
    app.json = OrjsonProvider(app)

    from feed.redisclient import from_url
    from service import observability
    from service.request import require_api_key
    from service.routes import BLUEPRINTS
    from service.store import Store

    client = from_url(
        app.config["REDIS_URL"],
        socket_timeout=app.config["REDIS_SOCKET_TIMEOUT"],
        connect_timeout=app.config["REDIS_CONNECT_TIMEOUT"],
    )
    app.extensions["feed_redis"] = client
    app.extensions["feed_store"] = Store(client, app.config)
    register_errors(app)
    observability.init_app(app)
    app.before_request(require_api_key)  # after the request id is set
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    return app
