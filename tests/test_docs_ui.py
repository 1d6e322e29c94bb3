"""``/docs``: Swagger UI rendered in a real headless Chromium against a live server, offline.

Every request the page makes to another host is aborted (as with no internet) and recorded;
the UI must still list the operations and show request bodies, from the server's own files.
Uses the viewer tests' Chromium, server and skip logic (skips saying why without Chromium).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from test_viewer import WAIT_MS, browser, page, server  # noqa: F401 - fixtures

LOCAL = {"127.0.0.1", "localhost"}


@pytest.mark.slow
def test_swagger_ui_lists_every_operation_offline(page: Any, server: str) -> None:  # noqa: F811
    elsewhere: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOCAL or url.startswith(("data:", "blob:")):
            route.continue_()
        else:  # no internet: the page must not need it
            elsewhere.append(url)
            route.abort()

    page.route("**/*", guard)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock", timeout=WAIT_MS)
    text = page.inner_text("#swagger-ui")
    for op in ("POST /v1/events", "GET /v1/feed/{user_id}", "PATCH /v1/posts/{post_id}",
               "PUT /v1/products/{product_id}", "POST /v1/groups"):  # fmt: skip
        method, path = op.split(" ")
        assert page.locator(f".opblock-{method.lower()} [data-path='{path}']").count() >= 1, op
    assert "shopfeed" in text

    # the events body is shown: open the operation, its request schema names the union
    page.locator(".opblock-post [data-path='/v1/events']").first.click()
    page.wait_for_selector(".opblock.is-open .opblock-section-request-body", timeout=WAIT_MS)
    body = page.inner_text(".opblock.is-open")
    assert "events" in body and "Multi-status" in body, body[:500]
    n_ops = page.locator(".opblock").count()
    assert n_ops >= 30, n_ops
    assert not elsewhere, elsewhere  # nothing was asked of another host
    assert not errors, errors
