"""One exception type for every API error, rendered as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    """An error with an HTTP status, a short machine code and a human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def unavailable(message: str, retry_after: int = 1) -> ApiError:
    return ApiError(503, "unavailable", message, {"Retry-After": str(retry_after)})


#: Seconds a client should wait before retrying a write Redis refused as full: an operator has
#: to add memory or delete data, which takes longer than an outage's breaker.
FULL_RETRY_AFTER_S = 30


def is_full(e: BaseException) -> bool:
    """True for Redis refusing a write because it is full (``maxmemory`` reached with the
    ``noeviction`` policy: an ``OOM`` error reply, also inside a refused transaction), as
    opposed to Redis being unreachable.

    >>> from redis.exceptions import ConnectionError, OutOfMemoryError, ResponseError
    >>> is_full(OutOfMemoryError("command not allowed when used memory > 'maxmemory'."))
    True
    >>> is_full(ConnectionError("refused")), is_full(ResponseError("WRONGTYPE"))
    (False, False)
    """
    from redis.exceptions import OutOfMemoryError, ResponseError

    if isinstance(e, OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, ResponseError) and ("OOM" in text or "'maxmemory'" in text)


def store_full(what: str) -> ApiError:
    """507: Redis is full and refused ``what``; nothing of it was stored."""
    return ApiError(
        507,
        "store_full",
        f"the feed store (Redis) is full and refused {what}: nothing was stored; "
        "feed pages are still served; retry later",
        {"Retry-After": str(FULL_RETRY_AFTER_S)},
    )


_FULL_WRITES = {
    "events.post_events": ("events", "the event batch"),
    "posts.create_post": ("post", "the new post"),
}


def _body(code: str, message: str) -> Any:
    return jsonify({"error": {"code": code, "message": message}})


def register(app: Flask) -> None:
    """Register JSON handlers for ApiError, HTTP errors and Redis outages."""
    import redis

    @app.errorhandler(ApiError)
    def _api(e: ApiError) -> Any:
        return _body(e.code, e.message), e.status, e.headers

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> Any:
        code = (e.name or "error").lower().replace(" ", "_")
        return _body(code, e.description or e.name), e.code or 500

    @app.errorhandler(redis.RedisError)
    def _redis(e: redis.RedisError) -> Any:
        from flask import request

        from service.observability import REDIS_ERRORS, REDIS_FULL

        if is_full(e):  # Redis answers: not an outage, so the breaker stays closed
            label, what = _FULL_WRITES.get(request.endpoint or "", ("other", "the write"))
            REDIS_FULL.labels(label).inc()
            app.logger.warning("redis full, %s refused: %s", label, e)
            full = store_full(what)
            return _body(full.code, full.message), full.status, full.headers
        kind = "timeout" if isinstance(e, redis.TimeoutError) else type(e).__name__
        REDIS_ERRORS.labels(kind).inc()
        app.extensions["feed_store"].mark_down()
        app.logger.warning("redis unavailable: %s", e)
        return (
            _body("unavailable", "the feed store (Redis) is unavailable; retry shortly"),
            503,
            {"Retry-After": "1"},
        )
