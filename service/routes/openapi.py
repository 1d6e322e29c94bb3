"""The OpenAPI 3 description of the HTTP API, served at ``/openapi.json`` and read at ``/docs``.

The spec is written next to the code it describes; ``tests/test_openapi.py`` checks that it is
valid OpenAPI 3, that every Flask route is in it, and that real responses match its schemas.
"""

from __future__ import annotations

import html
from typing import Any

from flask import Blueprint, Response, jsonify

from feed.contract import ID_CHARS

bp = Blueprint("openapi", __name__)

ID = {
    "type": "string",
    "pattern": f"^[{ID_CHARS}]{{1,128}}$",
    "description": "no '..', spaces, zero-width or bidi-control characters",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": ID, "description": description}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


LIMIT = _query(
    "limit", {"type": "integer", "minimum": 1}, "Items per page (capped at FEED_MAX_LIMIT)."
)
ADMIN: list[dict[str, list[str]]] = [{"bearerAuth": []}]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Product": {
        "type": "object",
        "required": ["product_id", "title", "category", "price", "in_stock"],
        "properties": {
            "product_id": {"type": "string"},
            "title": {"type": "string"},
            "category": {"type": "string"},
            "brand": {"type": "string"},
            "price": {"type": ["number", "null"]},
            "in_stock": {"type": "boolean"},
        },
    },
    "Post": {
        "type": "object",
        "required": ["post_id", "author_id", "text", "created_at", "products"],
        "properties": {
            "post_id": {"type": "string"},
            "author_id": {"type": "string"},
            "text": {"type": "string"},
            "title": {"type": "string"},
            "created_at": {"type": ["string", "null"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "products": {"type": "array", "items": _ref("Product")},
        },
    },
    "FeedItem": {
        "allOf": [
            _ref("Post"),
            {
                "type": "object",
                "required": ["score", "reason"],
                "properties": {
                    "score": {"type": "number"},
                    "reason": {
                        "type": "string",
                        "description": "collaborative, content, followed_author, trending, "
                        "co_engagement, "
                        "fresh, purchased_together, interest, similar_to:<post_id>",
                    },
                },
            },
        ]
    },
    "FeedPage": {
        "type": "object",
        "required": [
            "user_id",
            "model_version",
            "experiment",
            "arm",
            "request_id",
            "degraded",
            "next_cursor",
            "items",
        ],
        "properties": {
            "user_id": {"type": "string"},
            "model_version": {"type": ["string", "null"]},
            "experiment": {"type": ["string", "null"]},
            "arm": {"type": ["string", "null"]},
            "request_id": {"type": "string"},
            "degraded": {"type": "boolean"},
            "next_cursor": {"type": ["string", "null"]},
            "items": {"type": "array", "items": _ref("FeedItem")},
        },
    },
    "Similar": {
        "type": "object",
        "required": ["post_id", "model_version", "items"],
        "properties": {
            "post_id": {"type": "string"},
            "model_version": {"type": "string"},
            "items": {"type": "array", "items": _ref("FeedItem")},
        },
    },
    "Event": {
        "type": "object",
        "required": ["type", "user_id"],
        "properties": {
            "type": {
                "type": "string",
                "enum": [
                    "impression",
                    "click",
                    "like",
                    "unlike",
                    "purchase",
                    "follow",
                    "unfollow",
                    "hide_post",
                    "see_fewer_author",
                ],
            },
            "user_id": ID,
            "post_id": ID,
            "product_id": ID,
            "author_id": ID,
            "ts": {
                "oneOf": [{"type": "string"}, {"type": "number"}],
                "description": "ISO-8601 or unix seconds; default now",
            },
            "request_id": {
                "type": "string",
                "maxLength": 64,
                "description": "the request_id of the page the event came from",
            },
        },
    },
    "NewPost": {
        "type": "object",
        "required": ["post_id", "author_id"],
        "properties": {
            "post_id": ID,
            "author_id": ID,
            "text": {"type": "string", "maxLength": 5000},
            "title": {"type": "string", "maxLength": 200},
            "product_ids": {"type": "array", "items": ID, "maxItems": 20},
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 50},
                "maxItems": 30,
            },
            "created_at": {"oneOf": [{"type": "string"}, {"type": "number"}]},
        },
    },
}

PATHS: dict[str, Any] = {
    "/v1/feed/{user_id}": {
        "get": {
            "summary": "A ranked, personalised page of posts with their linked products.",
            "parameters": [
                _path_param("user_id", "Any user id; unknown users get a cold-start page."),
                LIMIT,
                _query("cursor", {"type": "string"}, "next_cursor of the previous page."),
                _query(
                    "interests",
                    {"type": "string"},
                    "Comma-separated categories or words to seed a new user's page.",
                ),
                _query(
                    "preview",
                    {"type": "string", "enum": ["0", "1", "true", "false"]},
                    "1: change nothing (no served set, no exposure); for viewers. Needs the "
                    "admin token when the server has one (it shows any user's feed).",
                ),
                _query(
                    "version",
                    {"type": "string"},
                    "Rank with this published version (admin token; implies preview).",
                ),
            ],
            "responses": {
                "200": _json(_ref("FeedPage")),
                "400": _error("Bad parameter or cursor."),
                "401": _error(
                    "version=, or preview=1 on a server with an admin token, without a valid "
                    "admin token."
                ),
                "404": _error("version= names no published version."),
                "503": _error("Redis unreachable and no degraded page possible."),
            },
        }
    },
    "/v1/posts/{post_id}": {
        "get": {
            "summary": "One post with its products.",
            "parameters": [_path_param("post_id", "Post id.")],
            "responses": {
                "200": _json(_ref("Post")),
                "400": _error("Bad id."),
                "404": _error("Unknown post."),
            },
        }
    },
    "/v1/posts/{post_id}/similar": {
        "get": {
            "summary": "Posts like this one (content and co-engagement neighbours).",
            "parameters": [_path_param("post_id", "Post id."), LIMIT],
            "responses": {
                "200": _json(_ref("Similar")),
                "400": _error("Bad parameter."),
                "404": _error("Unknown post."),
            },
        }
    },
    "/v1/posts": {
        "post": {
            "summary": "Create a post; it reaches followers and fresh lists before the next "
            "training.",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("NewPost")}},
            },
            "responses": {
                "201": _json(
                    {"type": "object", "properties": {"post_id": {"type": "string"}}}, "Created"
                ),
                "400": _error("Invalid post, or over a size limit (FEED_POST_*), named."),
                "413": _error("Body too large."),
                "507": _error("Redis is full (store_full): nothing stored; retry later."),
            },
        }
    },
    "/v1/events": {
        "post": {
            "summary": "Record a batch of events; each changes the user's next page at once.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["events"],
                            "properties": {
                                "events": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": 500,
                                    "items": _ref("Event"),
                                }
                            },
                        }
                    }
                },
            },
            "responses": {
                "202": _json(
                    {
                        "type": "object",
                        "required": ["accepted"],
                        "properties": {
                            "accepted": {"type": "integer"},
                            "request_id": {"type": "string"},
                        },
                    },
                    "Accepted",
                ),
                "400": _error("Invalid event."),
                "413": _error("Body too large."),
                "503": _error("Not stored; retry after Retry-After seconds."),
                "507": _error(
                    "Redis is full (store_full): none of the batch stored; retry after "
                    "Retry-After seconds."
                ),
            },
        }
    },
    "/v1/users/{user_id}/gifts": {
        "get": {
            "summary": "Gift ideas (挑禮物): products the friend would like, with the posts "
            "showing "
            "them, excluding what the friend already bought.",
            "parameters": [
                _path_param("user_id", "The user asking."),
                {
                    "name": "for",
                    "in": "query",
                    "required": True,
                    "schema": ID,
                    "description": "The friend's user id.",
                },
                LIMIT,
            ],
            "responses": {"200": _json({"type": "object"}), "400": _error("Bad parameter.")},
        }
    },
    "/v1/viewer/examples": {
        "get": {
            "summary": "A few example users (authors with candidates in the live version), for the "
            "feed viewer's user picker.",
            "parameters": [
                _query(
                    "limit", {"type": "integer", "minimum": 1}, "How many (default 6, at most 20)."
                )
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["model_version", "users"],
                        "properties": {
                            "model_version": {"type": "string"},
                            "users": {"type": "array", "items": {"type": "string"}},
                        },
                    }
                ),
                "400": _error("Bad parameter."),
                "401": _error("The server has an admin token and the request does not carry it."),
                "503": _error("No live version."),
            },
        }
    },
    "/viewer": {
        "get": {
            "summary": "The feed viewer: a user's feed as the app shows it, history, and a second "
            "version side by side (docs/viewer.md). Reads the API from the browser; "
            "the page itself holds no user data and no token (no API key needed).",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness (no API key needed).",
            "security": [],
            "responses": {"200": _json({"type": "object"})},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: Redis reachable, a live version, and the live version and "
            "every running experiment arm's version servable by this release (no API key "
            "needed).",
            "security": [],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "status": {"type": "string"},
                            "model_version": {"type": "string"},
                            "redis": {
                                "type": "string",
                                "enum": ["ok", "full"],
                                "description": "full: Redis refuses writes (maxmemory): pages "
                                "are served, events and new posts get 507",
                            },
                            "message": {"type": "string"},
                        },
                    }
                ),
                "503": _error("Not ready."),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text format). With FEED_API_KEY set, the key is "
            "needed here too: X-API-Key, or 'Authorization: Bearer <key>' for scrapers.",
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {"summary": "This document.", "responses": {"200": _json({"type": "object"})}}
    },
    "/docs": {
        "get": {
            "summary": "This document, as a page to read.",
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}


def _admin(
    summary: str,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    ok: str = "200",
    body_required: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": ADMIN,
        "parameters": params or [],
        "responses": {
            ok: _json({"type": "object"}),
            "400": _error("Bad input."),
            "401": _error("Missing or wrong bearer token."),
            "404": _error("Unknown, or the admin API is off (no FEED_ADMIN_TOKEN)."),
            "409": _error(
                "Refused in the current state; `version_not_servable` names a version's "
                "Redis contract when this release cannot serve it."
            ),
        },
    }
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
    return op


VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]{1,64}$"},
}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
ARMS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["name", "version", "weight"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "weight": {"type": "number", "description": "percent; arms sum to 100"},
        },
    },
}

PATHS.update(
    {
        "/v1/admin/versions": {"get": _admin("Model versions, newest first, and the live one.")},
        "/v1/admin/versions/{version}/activate": {
            "post": _admin("Make a ready version live.", [VERSION])
        },
        "/v1/admin/versions/rollback": {"post": _admin("Re-activate the previous live version.")},
        "/v1/admin/versions/{version}": {
            "delete": _admin(
                "Delete every key of a version (not the live one, nor one in a running "
                "experiment).",
                [VERSION],
            )
        },
        "/v1/admin/experiments": {
            "get": _admin("Every experiment."),
            "post": _admin(
                "Create an experiment.",
                body={
                    "type": "object",
                    "required": ["name", "arms"],
                    "properties": {
                        "name": {"type": "string"},
                        "salt": {"type": "string"},
                        "arms": ARMS,
                    },
                },
                ok="201",
            ),
        },
        "/v1/admin/experiments/{name}": {
            "get": _admin("One experiment's configuration.", [NAME]),
            "patch": _admin(
                "Change arms and weights (users move only as the weights require).",
                [NAME],
                body={"type": "object", "required": ["arms"], "properties": {"arms": ARMS}},
            ),
            "delete": _admin("Stop the experiment (its data stays for the report).", [NAME]),
        },
        "/v1/admin/users/{user_id}/history": {
            "get": _admin(
                "A user's recent likes (with time), purchases and follows.",
                [_path_param("user_id", "User id."), LIMIT],
            )
        },
        "/v1/admin/experiments/{name}/report": {
            "get": _admin(
                "Per-arm users, impressions, clicks, likes, purchases, rates with 95% CIs, lift "
                "against control with p-values and its 95% CI (delta method), and the "
                "sample-ratio check.",
                [NAME],
            )
        },
        "/v1/admin/experiments/{name}/promote": {
            "post": _admin(
                "Make the winning arm's version live, then stop the experiment: the arm whose "
                "lift on `metric` is positive with p < `alpha` (else control), or `arm`. "
                "Refused on a sample-ratio mismatch unless `arm` is given; 409 when the "
                "version cannot be activated (the experiment keeps running).",
                [NAME],
                body={
                    "type": "object",
                    "properties": {
                        "metric": {
                            "type": "string",
                            "enum": ["clicks_per_user", "likes_per_user", "purchase_conversion"],
                        },
                        "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                        "arm": {"type": "string"},
                    },
                },
                body_required=False,
            )
        },
    }
)


def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    from feed import __version__

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shopfeed",
            "version": __version__,
            "description": "A content-guided shopping feed: ranked posts that link "
            "products, served from Redis. When the server has an API key (FEED_API_KEY), every "
            "route but /healthz, /readyz and /viewer answers 401 without it (X-API-Key).",
        },
        "paths": PATHS,
        "security": [{"apiKeyAuth": []}, {}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "FEED_ADMIN_TOKEN; admin routes are off without it",
                },
                "apiKeyAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "FEED_API_KEY, when the server has one (docs/security.md)",
                },
            },
        },
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(spec())


@bp.get("/docs")
def docs() -> Response:
    """A plain page listing every route, its parameters and responses (no external assets)."""
    doc = spec()
    parts = [
        f"<h1>{html.escape(doc['info']['title'])} API {doc['info']['version']}</h1>",
        f"<p>{html.escape(doc['info']['description'])} The machine-readable spec is "
        "<a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            parts.append(f"<h2><code>{method.upper()} {html.escape(path)}</code></h2>")
            parts.append(f"<p>{html.escape(op.get('summary', ''))}</p>")
            params = op.get("parameters", [])
            if params:
                rows = "".join(
                    f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
                    f"<td>{'yes' if p.get('required') else 'no'}</td>"
                    f"<td>{html.escape(p.get('description', ''))}</td></tr>"
                    for p in params
                )
                parts.append(
                    "<table><tr><th>parameter</th><th>in</th><th>required</th>"
                    f"<th>description</th></tr>{rows}</table>"
                )
            codes = ", ".join(
                f"{code} {html.escape(r['description'])}" for code, r in op["responses"].items()
            )
            parts.append(f"<p><b>Responses:</b> {codes}</p>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:.2rem .5rem;text-align:left}h2{margin-top:2rem;font-size:1.1rem}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>shopfeed API</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
    return Response(page, mimetype="text/html")
