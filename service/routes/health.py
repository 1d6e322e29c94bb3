"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from service.errors import ApiError
from service.request import store

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Any:
    try:
        live = store().ping_live()
    except Exception as e:  # noqa: BLE001 - any Redis failure means not ready
        raise ApiError(503, "not_ready", f"Redis unreachable: {type(e).__name__}") from e
    if live is None:
        raise ApiError(503, "not_ready", "no live model version")
    return jsonify({"status": "ready", "model_version": live})
