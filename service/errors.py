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
        from service.observability import REDIS_ERRORS

        kind = "timeout" if isinstance(e, redis.TimeoutError) else type(e).__name__
        REDIS_ERRORS.labels(kind).inc()
        app.extensions["feed_store"].mark_down()
        app.logger.warning("redis unavailable: %s", e)
        return (
            _body("unavailable", "the feed store (Redis) is unavailable; retry shortly"),
            503,
            {"Retry-After": "1"},
        )
