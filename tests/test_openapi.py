"""The OpenAPI document: valid, complete, matching real responses, and fuzzed for 5xx."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate as validate_spec
from prometheus_client.parser import text_string_to_metric_families


def _flask_to_openapi(rule: str) -> str:
    import re

    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_spec_is_valid_openapi_and_covers_every_route(app: Any) -> None:
    doc = app.test_client().get("/openapi.json").get_json()
    validate_spec(doc)  # openapi-spec-validator: OpenAPI 3.1 (and its JSON Schema dialect)
    assert doc["openapi"].startswith("3.1")
    documented = {(path, m.upper()) for path, ops in doc["paths"].items() for m in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (_flask_to_openapi(rule.rule), method) in documented, rule.rule


#: Routes that take no JSON body (their arguments are in the path or the query).
NO_BODY = {
    ("POST", "/v1/admin/versions/{version}/activate"),
    ("POST", "/v1/admin/versions/rollback"),
}


def test_every_body_and_every_success_has_a_schema(app: Any) -> None:
    """Every POST/PUT/PATCH declares its request schema (a model of service/schemas.py), and
    every 2xx and error response its body's schema."""
    from service import schemas
    from service.routes import openapi

    doc = app.test_client().get("/openapi.json").get_json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in ("post", "put", "patch") and (method.upper(), path) not in NO_BODY:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                assert schema["$ref"].startswith("#/components/schemas/"), (method, path)
            for status, resp in op["responses"].items():
                assert "content" in resp, (method, path, status)
                if status.startswith("4") or status.startswith("5"):
                    assert resp["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"
                    }
    # one contract per route: on the view (@api) or in openapi.ENDPOINTS, never both
    with app.app_context():
        for rule in app.url_map.iter_rules():
            on_view = schemas.contract_of(app.view_functions[rule.endpoint]) is not None
            assert rule.endpoint == "static" or on_view != (rule.endpoint in openapi.ENDPOINTS), (
                rule.endpoint
            )


def test_spec_limits_are_the_apps_settings(redis_url: str, published: str) -> None:
    from helpers import feed_app

    doc = feed_app(redis_url, POST_TEXT_MAX=77, GROUP_SIZE_MAX=9).test_client()
    doc = doc.get("/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    assert schemas["NewPost"]["properties"]["text"]["maxLength"] == 77
    assert "FEED_POST_TEXT_MAX" in schemas["NewPost"]["properties"]["text"]["description"]
    assert schemas["NewGroup"]["properties"]["size"]["maximum"] == 9


def test_events_body_is_a_discriminated_union_of_every_event_type(client: Any) -> None:
    """The documented event types are the ones POST /v1/events accepts, each with its own
    required fields, discriminated on `type`."""
    doc = client.get("/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    events = schemas["EventBatch"]["properties"]["events"]
    union = events["items"]
    assert union["discriminator"]["propertyName"] == "type"
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == set(EVENT_FIELDS)
    for kind, ref in mapping.items():
        event = schemas[ref.rsplit("/", 1)[-1]]
        assert set(event["required"]) == {"type", "user_id", *EVENT_FIELDS[kind]}, kind
    op = doc["paths"]["/v1/events"]["post"]
    assert {"202", "207", "400"} <= set(op["responses"])
    assert op["responses"]["207"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EventResults"
    }


@pytest.mark.parametrize(
    ("path", "method", "body", "code", "words"),
    [
        ("/v1/posts", "post", {"post_id": "p-new", "author_id": "a/b"}, "invalid_author_id",
         ["author_id", "not a valid id"]),
        ("/v1/posts", "post", {"post_id": "p-new", "author_id": "u1", "colour": 1},
         "unknown_field", ["colour", "allowed are", "post_id"]),
        ("/v1/posts", "post", {"post_id": "p-new", "author_id": "u1", "tags": ["t"] * 31},
         "post_too_large", ["tags", "31 entries", "at most 30", "FEED_POST_TAGS_MAX"]),
        ("/v1/posts", "post", {"author_id": "u1"}, "invalid_post_id", ["post_id is required"]),
        ("/v1/groups", "post", {"initiator_id": "u1", "product_id": "x", "size": "3"},
         "invalid_size", ["size", "valid integer", "'3'"]),
        ("/v1/groups", "post", {"initiator_id": "u1", "product_id": "x", "price": -1},
         "invalid_price", ["price", "greater than or equal to 0"]),
    ],
)  # fmt: skip
def test_validation_errors_come_from_the_models(
    client: Any, path: str, method: str, body: Any, code: str, words: list[str]
) -> None:
    resp = getattr(client, method)(path, json=body)
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], (word, error)


def _validate(doc: dict[str, Any], schema_name: str, body: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    jsonschema.validate(body, schema)


def test_responses_match_the_spec(client: Any) -> None:
    doc = client.get("/openapi.json").get_json()
    _validate(doc, "FeedPage", client.get("/v1/feed/u1?limit=5").get_json())
    _validate(doc, "FeedPage", client.get("/v1/feed/someone-new?limit=5").get_json())
    _validate(doc, "Post", client.get("/v1/posts/p1").get_json())
    _validate(doc, "Similar", client.get("/v1/posts/p1/similar").get_json())
    _validate(doc, "Error", client.get("/v1/posts/nope").get_json())
    _validate(doc, "Health", client.get("/healthz").get_json())
    _validate(doc, "Ready", client.get("/readyz").get_json())
    _validate(doc, "Gifts", client.get("/v1/users/u1/gifts?for=u2").get_json())
    _validate(doc, "ViewerExamples", client.get("/v1/viewer/examples").get_json())
    results = client.post(
        "/v1/events", json=[{"type": "click", "user_id": "u1", "post_id": "p1"}, {"type": "x"}]
    )
    assert results.status_code == 207
    _validate(doc, "EventResults", results.get_json())


def test_docs_page_is_swagger_ui_from_local_files(client: Any) -> None:
    import re

    page = client.get("/docs").get_data(as_text=True)
    assert "SwaggerUIBundle" in page and "/openapi.json" in page
    assert "validatorUrl: null" in page  # else the UI sends the document to a public validator
    assert "://" not in page  # no absolute URL at all: every file is this server's
    urls = re.findall(r"(?:src|href)='([^']+)'", page)
    assert urls and all(u.startswith("/") for u in urls), urls  # no CDN, no other host
    for u in urls:
        if u.startswith("/docs/assets/"):
            resp = client.get(u)
            assert resp.status_code == 200 and len(resp.data) > 500, u
    assert client.get("/docs/assets/index.html").status_code == 404  # only the files it loads


def test_metrics_parse_and_move(client: Any) -> None:
    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = client.get("/metrics").get_data(as_text=True)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    before = samples()
    client.get("/v1/feed/u1?limit=3")
    client.post(
        "/v1/events", json={"events": [{"type": "click", "user_id": "u1", "post_id": "p1"}]}
    )
    after = samples()
    key = (
        "feed_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/v1/feed/<user_id>"), ("status", "200")),
    )
    assert after[key] == before.get(key, 0) + 1
    ev = ("feed_events_accepted_total", (("type", "click"),))
    assert after[ev] == before.get(ev, 0) + 1
    assert any(name == "feed_served_items_total" for name, _ in after)


def test_request_id_header(client: Any) -> None:
    resp = client.get("/healthz", headers={"X-Request-ID": "abcdef123456"})
    assert resp.headers["X-Request-ID"] == "abcdef123456"
    body = client.get("/v1/feed/u1?limit=1")
    assert body.headers["X-Request-ID"] == body.get_json()["request_id"]


@pytest.mark.slow
def test_generated_requests_never_get_a_server_error(redis_url: str, published: str) -> None:
    """Property-based: schemathesis generates requests for every operation from the spec,
    admin routes included (with the token)."""
    from service import create_app

    app = create_app(
        {"REDIS_URL": redis_url, "TESTING": True, "ADMIN_TOKEN": "fuzz-token-0123456789"}
    )
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for op in operations:
        _fuzz(op)


def _fuzz(op: Any) -> None:
    @given(case=op.as_strategy())
    @settings(
        max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case: Any) -> None:
        resp = case.call(headers={"Authorization": "Bearer fuzz-token-0123456789"})
        assert resp.status_code < 500, (
            op.label,
            case.path_parameters,
            case.query,
            case.body,
            resp.status_code,
            resp.text[:300],
        )

    run()


#: The contract of each event type: its required fields besides type and user_id.
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "impression": ("post_id",),
    "click": ("post_id",),
    "like": ("post_id",),
    "unlike": ("post_id",),
    "purchase": ("product_id",),
    "follow": ("author_id",),
    "unfollow": ("author_id",),
    "hide_post": ("post_id",),
    "see_fewer_author": ("author_id",),
    "add_to_cart": ("product_id",),
    "favorite": ("post_id",),
    "unfavorite": ("post_id",),
    "share": ("post_id",),
}


def _event_samples() -> list[Any]:
    out: list[Any] = [[], "click", None, {"type": None, "user_id": "u1"}, {"type": 3},
                      {"type": "teleport", "user_id": "u1", "post_id": "p1"}]  # fmt: skip
    ids = {"post_id": "p1", "product_id": "s1", "author_id": "a1"}
    for kind, required in EVENT_FIELDS.items():
        ok = {"type": kind, "user_id": "u1", **{f: ids[f] for f in required}}
        out += [ok, {**ok, "ts": 1_700_000_000}, {**ok, "ts": "2026-01-02T03:04:05Z"}]
        out += [{**ok, "ts": "yesterday"}, {**ok, "ts": -5}, {**ok, "ts": True}]
        out += [{**ok, "request_id": "r" * 64}, {**ok, "request_id": "r" * 65}]
        out += [{**ok, "user_id": "a b"}, {**ok, "user_id": "a b "}, {**ok, "user_id": 7}]
        out += [{**ok, "surface": "home"}]
        for f in required:
            out += [{k: v for k, v in ok.items() if k != f}, {**ok, f: "x..y"}, {**ok, f: None}]
    share = {"type": "share", "user_id": "u1", "post_id": "p1"}
    out += [{**share, "receiver_id": "u2", "channel": "moments"}, {**share, "channel": "c" * 33},
            {**share, "receiver_id": "a b"}]  # fmt: skip
    return out


def test_the_events_route_validates_with_the_models(client: Any) -> None:
    """POST /v1/events answers each rejected event with the models' own message: one source
    of truth for what an event is."""
    from service.errors import ApiError
    from service.schemas import parse_event

    samples = _event_samples()
    resp = client.post("/v1/events", json={"events": samples})
    assert resp.status_code == 207, resp.get_json()
    rejected = {r["index"]: r["error"]["message"] for r in resp.get_json()["results"]}
    with client.application.app_context():
        for i, sample in enumerate(samples):
            try:
                parse_event(sample, i)
            except ApiError as e:
                assert rejected.get(i) == e.message, sample
            else:  # the model takes it; only its time can still be refused
                assert i not in rejected or ".ts" in rejected[i] or "ts " in rejected[i], sample
