"""The OpenAPI 3.1 document, generated at ``/openapi.json`` from the models of
:mod:`service.schemas`, and ``/docs``, Swagger UI served offline from the assets of the
``swagger-ui-bundle-v2`` package (no CDN: the page loads nothing but this server's files).

A route's contract comes from its view's ``@api(...)`` registration (the routes with a JSON
body: the same model validates the body) or, for routes without a body and those registered
outside a blueprint (``/metrics``), from :data:`ENDPOINTS` below, keyed by Flask endpoint.
``tests/test_openapi.py`` checks that every route has exactly one contract, that the document
is valid OpenAPI 3.1, and that real responses match its schemas.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, send_from_directory
from werkzeug.exceptions import NotFound

from service import schemas as s
from service.schemas import Operation, Query

bp = Blueprint("openapi", __name__)

LIMIT = Query(
    "limit", {"type": "integer", "minimum": 1}, "Items per page (capped at FEED_MAX_LIMIT)."
)
ADMIN: list[dict[str, list[str]]] = [{"bearerAuth": []}]
PUBLIC: list[dict[str, list[str]]] = []
WRITER: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
_ADMIN_ERRORS = {
    401: "Missing or wrong bearer token.",
    404: "Unknown, or the admin API is off (no FEED_ADMIN_TOKEN).",
    409: "Refused in the current state; `version_not_servable` names a version's Redis contract "
    "when this release cannot serve it.",
}
_VERSION = {"version": "A published model version id."}


def _admin(summary: str, **more: Any) -> Operation:
    return Operation(summary, ok={200: s.Document}, errors=_ADMIN_ERRORS, security=ADMIN,
                     tags=("admin",), **more)  # fmt: skip


#: Contracts of the routes without a JSON body, by Flask endpoint (the routes with one carry
#: their contract on the view: ``@api`` in their blueprint).
ENDPOINTS: dict[str, Operation] = {
    "api.get_feed": Operation(
        "A ranked, personalised page of posts with their linked products.",
        path={"user_id": "Any user id; unknown users get a cold-start page."},
        query=(
            LIMIT,
            Query("cursor", {"type": "string"}, "next_cursor of the previous page."),
            Query(
                "interests",
                {"type": "string"},
                "Comma-separated categories or words to seed a new user's page.",
            ),
            Query(
                "preview",
                {"type": "string", "enum": ["0", "1", "true", "false"]},
                "1: change nothing (no served set, no exposure); for viewers. Needs the admin "
                "token when the server has one (it shows any user's feed).",
            ),
            Query(
                "version",
                {"type": "string"},
                "Rank with this published version (admin token; implies preview).",
            ),
        ),
        ok={200: s.FeedPage},
        errors={
            400: "Bad parameter or cursor.",
            401: "version=, or preview=1 on a server with an admin token, without a valid admin "
            "token.",
            404: "version= names no published version.",
            503: "Redis unreachable and no degraded page possible.",
        },
        tags=("feed",),
    ),
    "posts.get_post": Operation(
        "One post with its products.",
        ok={200: s.Post},
        errors={400: "Bad id.", 404: "Unknown post, deleted, or hidden (unless admin)."},
        tags=("posts",),
    ),
    "posts.similar": Operation(
        "Posts like this one (content and co-engagement neighbours).",
        query=(LIMIT,),
        ok={200: s.Similar},
        errors={400: "Bad parameter.", 404: "Unknown post."},
        tags=("posts",),
    ),
    "posts.delete_post": Operation(
        "Delete a post for good, from every version, now and after the next publish; logs a "
        "post_delete event.",
        description="Admin token; the API key only when no admin token is configured "
        "(docs/security.md).",
        ok={200: s.PostDeleted},
        errors={
            401: "No valid credential.",
            403: "API key where the admin token is required, or none configured.",
            404: "Unknown or already deleted post.",
            507: "FEED_MODERATION_MAX posts are moderated (moderation_full).",
        },
        security=WRITER,
        tags=("posts",),
    ),
    "events.post_events": Operation(
        "Record a batch of events; each valid one changes its user's next page at once.",
        description="Per-event results: the valid events are stored together, the invalid ones "
        "named by index. 202 when all were stored, 207 when some were rejected, 400 when all "
        "were (or the body is malformed; nothing stored). A bare JSON list of events is "
        "accepted too. Resend only the rejected indices.",
        body=s.EventBatch,
        ok={202: s.EventResults, 207: s.EventResults},
        errors={
            400: "Every event rejected (results name each), or a malformed body.",
            413: "Body too large.",
            503: "Not stored; retry after Retry-After seconds.",
            507: "Redis is full (store_full): none of the batch stored; retry after Retry-After.",
        },
        tags=("events",),
    ),
    "groups.get_group": Operation(
        "A group-buy's state (status failed once expired short).",
        ok={200: s.Group},
        errors={404: "Unknown group."},
        tags=("groups",),
    ),
    "groups.user_deals": Operation(
        "Products the user should launch a group-buy for, best first, with the posts that show "
        "each and the friends who bought it or joined its groups (popular deals for a user the "
        "version does not know).",
        query=(LIMIT,),
        ok={200: s.Deals},
        errors={400: "Bad parameter.", 503: "No live version, or Redis unavailable."},
        tags=("groups",),
    ),
    "groups.user_groups": Operation(
        "Friends' open group-buys the user may join, best first.",
        query=(LIMIT,),
        ok={200: s.JoinableGroups},
        errors={400: "Bad parameter.", 503: "No live version, or Redis unavailable."},
        tags=("groups",),
    ),
    "groups.group_invitees": Operation(
        "Whom the initiator should invite: their ties ranked by the version's pair model (tie "
        "features, affinity for the group's product and its category), members excluded.",
        query=(
            Query(
                "user_id",
                {"type": "string"},
                "The user asking: must be the group's initiator (403 not_initiator otherwise).",
                required=True,
            ),
            LIMIT,
        ),
        ok={200: s.Invitees},
        errors={400: "Bad parameter.", 404: "Unknown group.", 503: "Redis unavailable."},
        tags=("groups",),
    ),
    "gifts.gifts": Operation(
        "Gift ideas (挑禮物): products the friend would like, with the posts showing them, "
        "excluding what the friend already bought.",
        path={"user_id": "The user asking."},
        query=(Query("for", s.ID_SCHEMA, "The friend's user id.", required=True), LIMIT),
        ok={200: s.Gifts},
        errors={400: "Bad parameter.", 503: "No live version."},
        tags=("gifts",),
    ),
    "viewer.examples": Operation(
        "A few example users (authors with candidates in the live version), for the feed "
        "viewer's user picker.",
        query=(
            Query("limit", {"type": "integer", "minimum": 1}, "How many (default 6, at most 20)."),
        ),
        ok={200: s.ViewerExamples},
        errors={
            400: "Bad parameter.",
            401: "The server has an admin token and the request does not carry it.",
            503: "No live version.",
        },
        tags=("viewer",),
    ),
    "viewer.viewer": Operation(
        "The feed viewer: a user's feed as the app shows it, history, and a second version side "
        "by side (docs/viewer.md). The page holds no user data and no token (no API key needed).",
        ok={200: "html"},
        security=PUBLIC,
        tags=("viewer",),
    ),
    "health.healthz": Operation(
        "Liveness (no API key needed).", ok={200: s.Health}, security=PUBLIC, tags=("health",)
    ),
    "health.readyz": Operation(
        "Readiness: Redis reachable, a live version, and the live version and every running "
        "experiment arm's version servable by this release (no API key needed).",
        ok={200: s.Ready},
        errors={503: "Not ready."},
        security=PUBLIC,
        tags=("health",),
    ),
    "metrics": Operation(
        "Prometheus metrics (text format). With FEED_API_KEY set, the key is needed here too: "
        "X-API-Key, or 'Authorization: Bearer <key>' for scrapers.",
        ok={200: "text"},
        tags=("health",),
    ),
    "openapi.openapi_json": Operation(
        "This document, generated from the models of service/schemas.py.",
        ok={200: s.Document},
        tags=("docs",),
    ),
    "openapi.docs": Operation(
        "This document in Swagger UI (served offline: no CDN).", ok={200: "html"}, tags=("docs",)
    ),
    "openapi.docs_asset": Operation(
        "Swagger UI's static files (from the swagger-ui-bundle-v2 package).",
        path={"name": "A file of the bundled Swagger UI."},
        ok={200: "text"},
        errors={404: "No such file."},
        tags=("docs",),
    ),
    "admin.list_versions": _admin("Model versions, newest first, and the live one."),
    "admin.activate": _admin("Make a ready version live.", path=_VERSION),
    "admin.rollback": _admin("Re-activate the previous live version."),
    "admin.delete_version": _admin(
        "Delete every key of a version (not the live one, nor one in a running experiment).",
        path=_VERSION,
    ),
    "admin.list_experiments": _admin("Every experiment."),
    "admin.show_experiment": _admin("One experiment's configuration."),
    "admin.stop_experiment": _admin("Stop the experiment (its data stays for the report)."),
    "admin.experiment_report": _admin(
        "Per-arm users, impressions, clicks, likes, purchases, rates with 95% CIs, lift against "
        "control with p-values and its 95% CI (delta method), and the sample-ratio check."
    ),
    "admin.user_history": _admin(
        "A user's recent likes (with time), purchases and follows.", query=(LIMIT,)
    ),
}


def operations() -> list[tuple[str, str, Operation]]:
    """(rule, method, contract) of every route of the app: the view's ``@api`` contract, else
    :data:`ENDPOINTS`'; a route with neither is left out (the tests list it)."""
    out = []
    for rule in current_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = current_app.view_functions.get(rule.endpoint)
        op = s.contract_of(view) or ENDPOINTS.get(rule.endpoint)
        if op is None:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((rule.rule, method, op))
    return out


def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the running app (limits as configured)."""
    from feed import __version__

    info = {
        "title": "shopfeed",
        "version": __version__,
        "description": "A content-guided shopping feed: ranked posts that link products, served "
        "from Redis. When the server has an API key (FEED_API_KEY), every route but /healthz, "
        "/readyz and /viewer answers 401 without it (X-API-Key). Errors "
        'are {"error": {"code", "message"}}; a 400\'s message names the field and the limit.',
    }
    return s.openapi(operations(), current_app.config, info, s.EVENT_MODELS)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    ext = current_app.extensions
    if "feed_openapi" not in ext:  # the app's routes and config are fixed once it serves
        ext["feed_openapi"] = spec()
    return jsonify(ext["feed_openapi"])


def _assets() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


#: The only files of the bundle the page loads.
ASSETS = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
     "index.css", "favicon-32x32.png", "favicon-16x16.png"}
)  # fmt: skip


@bp.get("/docs/assets/<name>")
def docs_asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no Swagger UI file {name!r}")
    resp = send_from_directory(_assets(), name, max_age=86_400)
    return resp


# The initializer of the bundle, pointed at this server's document; validatorUrl null, or
# Swagger UI would send the document to validator.swagger.io.
_INIT = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: %s, dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "BaseLayout", tryItOutEnabled: false, displayRequestDuration: true
  });
};"""


@bp.get("/docs")
def docs() -> Response:
    """Swagger UI over ``/openapi.json``, from this server's own files."""
    root = current_app.config.get("APPLICATION_ROOT", "/").rstrip("/")
    base = f"{root}/docs/assets"
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>shopfeed API</title>"
        f"<link rel='stylesheet' href='{base}/swagger-ui.css'>"
        f"<link rel='icon' type='image/png' href='{base}/favicon-32x32.png'>"
        "</head><body><noscript>This page needs JavaScript; the document itself is "
        f"<a href='{html.escape(root)}/openapi.json'>/openapi.json</a>.</noscript>"
        "<div id='swagger-ui'></div>"
        f"<script src='{base}/swagger-ui-bundle.js'></script>"
        f"<script src='{base}/swagger-ui-standalone-preset.js'></script>"
        f"<script>{_INIT % repr(root + '/openapi.json')}</script>"
        "</body></html>"
    )
    return Response(page, mimetype="text/html")
