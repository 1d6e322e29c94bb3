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
    validate_spec(doc)
    documented = {(path, m.upper()) for path, ops in doc["paths"].items() for m in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (_flask_to_openapi(rule.rule), method) in documented, rule.rule


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


def test_docs_page_lists_routes(client: Any) -> None:
    page = client.get("/docs").get_data(as_text=True)
    assert "GET /v1/feed/{user_id}" in page and "POST /v1/events" in page


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
