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
POST        /v1/admin/experiments/<name>/promote        activate the winner, then stop it
GET         /v1/admin/users/<user_id>/history           recent likes, purchases, follows
==========  ==========================================  ======================================
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from feed import experiments as ex
from feed import versions as reg
from service.errors import ApiError, bad_request, not_found
from service.request import check_id, limit_arg, redis, require_admin, store
from service.schemas import Document, ExperimentArms, NewExperiment, Promote, api, body

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")
bp.before_request(require_admin)


def _arms(arms: Any) -> list[dict[str, Any]]:
    """Validated arms (:class:`service.schemas.Arm`) as :mod:`feed.experiments` takes them."""
    return [arm.model_dump(exclude_none=True) for arm in arms]


_ADMIN_ERRORS = {
    401: "Missing or wrong bearer token.",
    404: "Unknown, or the admin API is off (no FEED_ADMIN_TOKEN).",
    409: "Refused in the current state; `version_not_servable` names a version's Redis "
    "contract when this release cannot serve it.",
}
_ADMIN: dict[str, Any] = {"security": [{"bearerAuth": []}], "tags": ("admin",)}


def _experiment_error(e: ex.ExperimentError) -> ApiError:
    if isinstance(e, ex.UnknownExperiment):
        return not_found(str(e))
    if isinstance(e, ex.ArmNotServable):
        return ApiError(409, "version_not_servable", str(e))
    if isinstance(e, ex.ExperimentConflict):
        return ApiError(409, "conflict", str(e))
    return bad_request(str(e), "invalid_experiment")


def _version_error(e: reg.VersionError, code: str) -> ApiError:
    """409: ``version_not_servable`` for a version of another Redis contract (the message names
    it), else ``code``."""
    if isinstance(e, reg.VersionNotServable):
        return ApiError(409, "version_not_servable", str(e))
    return ApiError(409, code, str(e))


def _known_version(version: str) -> dict[str, Any]:
    meta = reg.get_meta(redis(), version)
    if meta is None:
        raise not_found(f"unknown version {version!r}")
    return meta


# --- versions --------------------------------------------------------------------------------
@bp.get("/versions")
def list_versions() -> Any:
    r = redis()
    return jsonify({"live": reg.live_version(r), "versions": reg.list_versions(r)})


@bp.post("/versions/<version>/activate")
def activate(version: str) -> Any:
    _known_version(version)
    try:
        previous = reg.activate(redis(), version)
    except reg.VersionError as e:
        raise _version_error(e, "version_not_ready") from e
    return jsonify({"live": version, "previous": previous})


@bp.post("/versions/rollback")
def rollback() -> Any:
    try:
        live = reg.rollback(redis())
    except reg.VersionError as e:
        raise _version_error(e, "no_previous_version") from e
    return jsonify({"live": live})


@bp.delete("/versions/<version>")
def delete_version(version: str) -> Any:
    _known_version(version)
    try:
        removed = reg.delete(redis(), version)
    except reg.VersionError as e:
        raise ApiError(409, "version_in_use", str(e)) from e
    return jsonify({"deleted": version, "keys": removed})


# --- experiments -----------------------------------------------------------------------------
@bp.get("/experiments")
def list_experiments() -> Any:
    return jsonify({"experiments": ex.list_experiments(redis())})


@bp.post("/experiments")
@api("Create an experiment.", body=NewExperiment, ok={201: Document}, errors=_ADMIN_ERRORS,
     **_ADMIN)  # fmt: skip
def create_experiment() -> Any:
    new: NewExperiment = body()
    try:
        cfg = ex.create(redis(), new.name, _arms(new.arms), salt=new.salt)
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e
    return jsonify(cfg), 201


@bp.get("/experiments/<name>")
def show_experiment(name: str) -> Any:
    try:
        return jsonify(ex.get(redis(), name))
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e


@bp.patch("/experiments/<name>")
@api(
    "Change arms and weights (users move only as the weights require).",
    body=ExperimentArms,
    ok={200: Document},
    errors=_ADMIN_ERRORS,
    **_ADMIN,
)
def update_experiment(name: str) -> Any:
    arms = _arms(body().arms)
    try:
        return jsonify(ex.update(redis(), name, arms))
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e


@bp.delete("/experiments/<name>")
def stop_experiment(name: str) -> Any:
    try:
        return jsonify(ex.stop(redis(), name))
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e


@bp.get("/experiments/<name>/report")
def experiment_report(name: str) -> Any:
    try:
        return jsonify(ex.report(redis(), name))
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e


@bp.post("/experiments/<name>/promote")
@api(
    "Make the winning arm's version live, then stop the experiment: the arm whose lift on "
    "`metric` is positive with p < `alpha` (else control), or `arm`. Refused on a sample-ratio "
    "mismatch unless `arm` is given; 409 when the version cannot be activated (the experiment "
    "keeps running).",
    body=Promote,
    body_required=False,
    ok={200: Document},
    errors=_ADMIN_ERRORS,
    **_ADMIN,
)
def promote_experiment(name: str) -> Any:
    """Make the winning arm's version live, then stop the experiment
    (:func:`feed.experiments.promote`; body ``{metric?, alpha?, arm?}``, all optional)."""
    p: Promote = body()
    try:
        return jsonify(ex.promote(redis(), name, metric=p.metric, alpha=p.alpha, arm=p.arm))
    except ex.ExperimentError as e:
        raise _experiment_error(e) from e
    except reg.VersionError as e:
        raise _version_error(e, "version_not_ready") from e


@bp.get("/users/<user_id>/history")
def user_history(user_id: str) -> Any:
    """What a user did: likes (newest first, with time), purchases and follows, as the
    service knows them (seeded at publish, then updated by events)."""
    check_id(user_id, "user_id")
    limit = limit_arg(20)
    return jsonify({"user_id": user_id, **store().history(user_id, limit)})
