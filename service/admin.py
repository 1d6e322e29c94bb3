"""Admin routes: model versions and A/B experiments, behind a bearer token.

The token comes from ``FEED_ADMIN_TOKEN`` (config ``ADMIN_TOKEN``). When it is unset every
``/v1/admin/*`` route answers 404, as if it did not exist; a missing or wrong token is a 401.
Changes take effect on every replica within ``VERSION_CACHE_S`` (the in-process cache of the live
version and the running experiment), without a restart.

==========  ==========================================  ======================================
method      path                                        what
==========  ==========================================  ======================================
GET         /v1/admin/versions                          versions, newest first, and the live one
POST        /v1/admin/versions/<version>/activate       make a ready version live
POST        /v1/admin/versions/rollback                 re-activate the previous live version
DELETE      /v1/admin/versions/<version>                delete every key of a version
GET         /v1/admin/experiments                       every experiment
POST        /v1/admin/experiments                       create ``{name, arms, salt?}``
GET         /v1/admin/experiments/<name>                one experiment's config
PATCH       /v1/admin/experiments/<name>                new arms/weights ``{arms}``
DELETE      /v1/admin/experiments/<name>                stop it (data stays for the report)
GET         /v1/admin/experiments/<name>/report         the per-arm report
GET         /v1/admin/users/<user_id>/history           recent likes, purchases, follows
==========  ==========================================  ======================================
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from feed import experiments as ex
from feed import versions as reg
from service.errors import ApiError, bad_request, not_found

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


def _redis() -> Any:
    return current_app.extensions["feed_redis"]


@bp.before_request
def require_admin() -> None:
    """404 when the admin API is off; 401 unless ``Authorization: Bearer <token>`` matches."""
    token = current_app.config.get("ADMIN_TOKEN")
    if not token:
        raise not_found("the admin API is disabled: set FEED_ADMIN_TOKEN to enable it")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    ok = hmac.compare_digest(given.strip().encode(), str(token).encode())
    if scheme.lower() != "bearer" or not ok:
        raise ApiError(
            401,
            "unauthorized",
            "a valid 'Authorization: Bearer <token>' is required",
            {"WWW-Authenticate": 'Bearer realm="feed-admin"'},
        )


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", "invalid_json")
    return body


def _arms(body: dict[str, Any]) -> list[Any]:
    arms = body.get("arms")
    if not isinstance(arms, list):
        raise bad_request("'arms' must be a list of {name, version, weight}", "invalid_experiment")
    return arms


def _experiment_error(e: ex.ExperimentError) -> ApiError:
    if isinstance(e, ex.UnknownExperiment):
        return not_found(str(e))
    if isinstance(e, ex.ExperimentConflict):
        return ApiError(409, "conflict", str(e))
    return bad_request(str(e), "invalid_experiment")


def _known_version(version: str) -> dict[str, Any]:
    meta = reg.get_meta(_redis(), version)
    if meta is None:
        raise not_found(f"unknown version {version!r}")
    return meta


# --- versions --------------------------------------------------------------------------------
@bp.get("/versions")
def list_versions() -> Any:
    r = _redis()
    return jsonify({"live": reg.live_version(r), "versions": reg.list_versions(r)})


@bp.post("/versions/<version>/activate")
def activate(version: str) -> Any:
    _known_version(version)
    try:
        previous = reg.activate(_redis(), version)
    except reg.VersionError as e:
        raise ApiError(409, "version_not_ready", str(e)) from e
    return jsonify({"live": version, "previous": previous})


@bp.post("/versions/rollback")
def rollback() -> Any:
    try:
        live = reg.rollback(_redis())
    except reg.VersionError as e:
        raise ApiError(409, "no_previous_version", str(e)) from e
    return jsonify({"live": live})


@bp.delete("/versions/<version>")
def delete_version(version: str) -> Any:
    _known_version(version)
    try:
        removed = reg.delete(_redis(), version)
    except reg.VersionError as e:
        raise ApiError(409, "version_in_use", str(e)) from e
    return jsonify({"deleted": version, "keys": removed})


# --- experiments -----------------------------------------------------------------------------
@bp.get("/experiments")
def list_experiments() -> Any:
    return jsonify({"experiments": ex.list_experiments(_redis())})


@bp.post("/experiments")
def create_experiment() -> Any:
    body = _body()
    name, salt = body.get("name"), body.get("salt")
    if not isinstance(name, str):
        raise bad_request("'name' must be a string", "invalid_experiment")
    try:
        cfg = ex.create(_redis(), name, _arms(body), salt=salt)
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e
    return jsonify(cfg), 201


@bp.get("/experiments/<name>")
def show_experiment(name: str) -> Any:
    try:
        return jsonify(ex.get(_redis(), name))
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e


@bp.patch("/experiments/<name>")
def update_experiment(name: str) -> Any:
    arms = _arms(_body())
    try:
        return jsonify(ex.update(_redis(), name, arms))
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e


@bp.delete("/experiments/<name>")
def stop_experiment(name: str) -> Any:
    try:
        return jsonify(ex.stop(_redis(), name))
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e


@bp.get("/experiments/<name>/report")
def experiment_report(name: str) -> Any:
    try:
        return jsonify(ex.report(_redis(), name))
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e


@bp.get("/users/<user_id>/history")
def user_history(user_id: str) -> Any:
    """What a user did: likes (newest first, with time), purchases and follows, as the
    service knows them (seeded at publish, then updated by events)."""
    from feed.redisclient import read_history
    from service.api import check_id, limit_arg

    check_id(user_id, "user_id")
    limit = limit_arg(20)
    return jsonify({"user_id": user_id, **read_history(_redis(), user_id, limit)})
