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
        live, problems = store().readiness()
    except Exception as e:  # noqa: BLE001 - any Redis failure means not ready
        raise ApiError(503, "not_ready", f"Redis unreachable: {type(e).__name__}") from e
    if live is None:
        raise ApiError(503, "not_ready", "no live model version")
    if problems:  # a version this release cannot serve would answer 503 to every page
        raise ApiError(503, "version_not_servable", "; ".join(problems))
    return jsonify({"status": "ready", "model_version": live, **_writes()})


def _writes() -> dict[str, Any]:
    """``redis``: ``ok``, or ``full`` when Redis refuses writes (maxmemory reached under
    ``noeviction``), with a message. A full Redis keeps the replica ready (200): pages are
    still served from it, and every replica shares it, so failing readiness would take the
    whole feed down to stop writes that fail anyway (docs/reliability.md)."""
    try:
        mem = store().memory()
    except Exception:  # noqa: BLE001 - INFO refused (e.g. a managed Redis): assume writable
        return {"redis": "ok"}
    if not mem["full"]:
        return {"redis": "ok"}
    used, most = mem["used_memory"], mem["maxmemory"]
    return {
        "redis": "full",
        "message": (
            f"Redis is full (used_memory {used:,} of maxmemory {most:,} bytes, policy "
            f"{mem['maxmemory_policy'] or 'unknown'}): feed pages are served, writes (events, "
            "new posts) get 507 store_full until memory is added or data removed"
        ),
    }
