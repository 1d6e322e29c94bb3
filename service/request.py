"""What every route shares: the request's store, its arguments and body, the admin token check,
and the one rule that routes a user to a model version."""

from __future__ import annotations

import hmac
import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import current_app, g, request

from feed import contract as c
from feed.serving.state import VersionTable
from service.errors import ApiError, bad_request, not_found, unavailable
from service.merchants import token_merchant
from service.state import Route
from service.store import Store


def store() -> Store:
    return current_app.extensions["feed_store"]  # type: ignore[no-any-return]


def redis() -> Any:
    """The process's Redis client, for the registry and experiment functions of :mod:`feed`."""
    return current_app.extensions["feed_redis"]


# --- arguments -------------------------------------------------------------------------------
def check_id(value: str, what: str) -> str:
    if not c.valid_id(value):
        raise bad_request(
            f"{what} {value[:40]!r} is not a valid id ({c.ID_RULE})",
            f"invalid_{what}",
        )
    return value


def limit_arg(default: int | None = None, most: int | None = None) -> int:
    """The ``limit=`` argument: ``default`` (else ``DEFAULT_LIMIT``) when absent, capped at
    ``most`` (else ``MAX_LIMIT``)."""
    cfg = current_app.config
    raw = request.args.get("limit", default or cfg["DEFAULT_LIMIT"])
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise bad_request(f"limit must be an integer, got {str(raw)[:20]!r}") from None
    if n < 1:
        raise bad_request("limit must be at least 1")
    return min(n, cfg["MAX_LIMIT"] if most is None else most)


def flag(name: str) -> bool:
    """A 0/1 or true/false query argument (false when absent)."""
    raw = request.args.get(name, "0").lower()
    if raw not in ("0", "1", "true", "false"):
        raise bad_request(f"{name} must be 0/1 or true/false")
    return raw in ("1", "true")


def request_id() -> str:
    rid = getattr(g, "request_id", None)
    if rid is None:
        rid = g.request_id = uuid.uuid4().hex
    return rid  # type: ignore[no-any-return]


MAX_TS = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second datetime can print


def parse_ts(raw: Any, where: str) -> float:
    """Unix seconds from a number or an ISO-8601 string; now when absent."""
    if raw is None:
        return time.time()
    if isinstance(raw, bool):
        raise bad_request(f"{where}.ts must be ISO-8601 or unix seconds")
    if isinstance(raw, int | float):
        if not math.isfinite(raw) or not 0 <= raw <= MAX_TS:
            raise bad_request(f"{where}.ts must be unix seconds between 0 and {MAX_TS:.0f}")
        return float(raw)
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            ts = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            raise bad_request(f"{where}.ts {raw[:40]!r} is not ISO-8601") from None
        if not 0 <= ts <= MAX_TS:
            raise bad_request(f"{where}.ts {raw[:40]!r} is out of range")
        return ts
    raise bad_request(f"{where}.ts must be ISO-8601 or unix seconds")


# --- admin -----------------------------------------------------------------------------------
def require_admin(why: str = "") -> None:
    """404 when the admin API is off; 401 unless ``Authorization: Bearer <token>`` matches."""
    token = current_app.config.get("ADMIN_TOKEN")
    if not token:
        raise not_found("the admin API is disabled: set FEED_ADMIN_TOKEN to enable it")
    if not _same(_bearer(), str(token)):
        raise ApiError(
            401,
            "unauthorized",
            f"{why}a valid 'Authorization: Bearer <admin token>' is required",
            {"WWW-Authenticate": 'Bearer realm="feed-admin"'},
        )


def require_merchant(merchant_id: str) -> str:
    """The merchant check of every ``/v1/merchants/<merchant_id>/...`` route: 400 for an
    invalid id; 401 without ``Authorization: Bearer <merchant token>`` or with a token that
    opens no merchant (revoked, rotated, never issued); 404 when the token is another
    merchant's (the same answer as for a merchant that does not exist, so ids do not leak).
    Reads Redis on every call (no cache): a rotation or revocation holds on the next request
    in every worker. Returns the merchant id. (``service/merchants.py``)"""
    check_id(merchant_id, "merchant_id")
    owner, opens = token_merchant(redis(), _bearer(), merchant_id)
    if owner is None:
        raise ApiError(
            401,
            "unauthorized",
            "a valid 'Authorization: Bearer <merchant token>' is required",
            {"WWW-Authenticate": 'Bearer realm="feed-merchant"'},
        )
    if owner != merchant_id or not opens:
        raise not_found(f"no merchant {merchant_id!r}")
    return merchant_id


def require_admin_if_set(what: str) -> None:
    """For what shows other users' data to an operator (``preview=1`` feeds, the viewer's
    example users): the admin token whenever one is configured; open when none is (a
    development setup)."""
    if current_app.config.get("ADMIN_TOKEN"):
        require_admin(f"{what} shows other users' data: ")


def is_admin() -> bool:
    """True when the request carries the configured admin token."""
    admin = current_app.config.get("ADMIN_TOKEN")
    return bool(admin) and _same(_bearer(), str(admin))


def require_writer(what: str, admin_only: bool) -> str:
    """Who may change shared content (moderation, the catalogue; docs/security.md): ``"admin"``
    for the admin token; ``"api"`` for the API key (checked before every request), except
    when ``admin_only`` and an admin token is configured (then 403). 401 without either; 403
    when neither is configured (nobody could be told apart from anybody)."""
    admin, key = current_app.config.get("ADMIN_TOKEN"), current_app.config.get("API_KEY")
    if admin and _same(_bearer(), str(admin)):
        return "admin"
    if admin and admin_only:
        if key and (request.headers.get("X-API-Key") or _bearer()):
            raise ApiError(403, "forbidden", f"{what} needs the admin token, not the API key")
        require_admin(f"{what}: ")
    if key:  # require_api_key let the request in: it carries the key
        return "api"
    if admin:
        require_admin(f"{what}: ")
    raise ApiError(
        403,
        "forbidden",
        f"{what} is disabled: set FEED_ADMIN_TOKEN (or FEED_API_KEY) so callers can be told apart",
    )


#: Endpoints that answer without the API key: liveness, readiness, and the viewer's page and
#: its static files (the same for everyone, no data; what the page then reads needs a key).
PUBLIC_ENDPOINTS = frozenset(
    {"health.healthz", "health.readyz", "viewer.viewer", "merchants.merchant_page", "static"}
)


def require_api_key() -> None:
    """When ``API_KEY`` (``FEED_API_KEY``) is set, every request but :data:`PUBLIC_ENDPOINTS`
    carries it as ``X-API-Key`` (or as ``Authorization: Bearer``, for scrapers of
    ``/metrics``), or the admin token as ``Authorization: Bearer``; otherwise 401. Compared in
    constant time. ``create_app`` runs it before every request."""
    key = current_app.config.get("API_KEY")
    if not key or request.endpoint in PUBLIC_ENDPOINTS:
        return
    given, bearer = request.headers.get("X-API-Key"), _bearer()
    admin = current_app.config.get("ADMIN_TOKEN")
    if (
        (given is not None and _same(given, key))
        or _same(bearer, key)
        or (admin and _same(bearer, admin))
    ):
        return
    message = (
        "the X-API-Key header does not match this service's API key"
        if given is not None or bearer
        else "this service requires an API key: send it in the X-API-Key header"
    )
    raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": 'ApiKey header="X-API-Key"'})


def _bearer() -> str:
    """The token of the request's ``Authorization: Bearer <token>`` header ('' when none)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _same(given: str, secret: str) -> bool:
    """``given == secret`` in constant time (a non-empty secret; '' never matches)."""
    return bool(given) and hmac.compare_digest(given.encode(), secret.encode())


# --- versions --------------------------------------------------------------------------------
def version_table(version: str) -> VersionTable:
    """The version's post table; 503 when the version is not servable."""
    t = store().table(version)
    if t is None:
        raise unavailable(
            f"model version {version!r} is not servable: not in the registry, or published by "
            "a release with another Redis contract (publish it again)"
        )
    return t


def live_table() -> tuple[str | None, VersionTable | None]:
    """The live version and its post table; ``(None, None)`` when no version is live, a table
    of None when the live one is not servable."""
    live = store().live_version()
    return live, store().table(live) if live else None


def route_for(user_id: str, pinned: str | None) -> Route | None:
    """The version that serves ``user_id``, with the user's experiment and arm; None when no
    version is live and none of the below applies.

    The running experiment (cached in process) assigns the user an arm by a salted hash of the
    user id; the arm's version serves unless ``pinned`` (a cursor's version) pins the scroll
    to another servable version (the arm is still reported). Users outside the experiment, and
    arms whose version has no keys, get the live version with ``experiment`` and ``arm`` None.
    An empty ``user_id`` is in no experiment.
    """
    s = store()
    exp = s.experiment() if user_id else None
    arm = exp.arm_for(user_id) if exp is not None else None
    keep = bool(pinned) and s.table(pinned or "") is not None
    if arm is not None and not keep and s.table(arm.version) is None:
        arm = None
    experiment = exp.name if exp and arm else None
    arm_name = arm.name if arm else None
    if pinned and keep:
        return Route(pinned, experiment, arm_name)
    if arm is not None:
        return Route(arm.version, experiment, arm_name)
    live = s.live_version()
    return None if live is None else Route(live)


def resolve_version(user_id: str, pinned: str | None) -> Route:
    """:func:`route_for`, or 503 when no version is live."""
    route = route_for(user_id, pinned)
    if route is None:
        raise unavailable("no live model version: run `feed publish ARTIFACT --activate`")
    return route
