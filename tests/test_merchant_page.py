"""The merchant page (/merchant) in headless Chromium: the merchant types its id and token, and
sees its funnel, top posts and authors, and its campaigns with their lift as inline SVG; nothing
is loaded from outside the server; a wrong token shows nothing. Skips like tests/test_viewer.py
when no Chromium is installed."""

from __future__ import annotations

import time
from typing import Any

from helpers import feed_app
from test_audiences import bearer, biggest
from test_viewer import AUTH, WAIT_MS, browser, page, server  # noqa: F401

from service import campaigns as cp


def _setup(r: Any, redis_url: str, version: str) -> tuple[str, str, dict[str, Any]]:
    client = feed_app(redis_url, ADMIN_TOKEN=AUTH["Authorization"].split()[1]).test_client()
    m, mine, _, _ = biggest(r, version)
    token = client.post("/v1/admin/merchants", json={"merchant_id": m}, headers=AUTH)
    token = token.get_json()["token"]
    now = time.time()
    camp = client.post(
        f"/v1/merchants/{m}/campaigns",
        json={
            "post_ids": sorted(mine["posts"])[:2],
            "audience_id": "all",
            "budget_impressions": 100,
            "max_per_user": 2,
            "slots": [3, 10],
            "start": now,
            "end": now + 600,
            "holdout": 0.2,
        },  # fmt: skip
        headers=bearer(token),
    ).get_json()
    users = [f"u{i}" for i in range(40)]
    for u in users:  # pages (the campaign's reach), impressions and purchases for the report
        items = client.get(f"/v1/feed/{u}?limit=12").get_json()["items"]
        evs = [{"type": "impression", "user_id": u, "post_id": x["post_id"]} for x in items]
        if not cp.in_holdout(camp["campaign_id"], 0.2, u):
            evs.append({"type": "purchase", "user_id": u, "product_id": camp["products"][0]})
        assert client.post("/v1/events", json={"events": evs}).status_code == 202
    return m, token, camp


def test_the_merchant_page_shows_its_funnel_and_campaigns(
    r: Any,
    redis_url: str,
    published: str,
    server: str,  # noqa: F811
    page: Any,  # noqa: F811
) -> None:
    m, token, camp = _setup(r, redis_url, published)
    outside: list[str] = []

    def guard(route: Any) -> None:
        if not route.request.url.startswith(server):
            outside.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    page.route("**/*", guard)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}/merchant")
    page.fill("#merchant", m)
    page.fill("#token", "not-the-token")
    page.click("#login button[type=submit]")
    # a function, not an expression string: Playwright polls a string with eval(), which the
    # page's Content-Security-Policy (no 'unsafe-eval') refuses whenever the first check fails
    page.wait_for_function(
        "sel => document.querySelector(sel).textContent.includes('Cannot')",
        arg="#status",
        timeout=WAIT_MS,
    )
    assert page.locator("#main").is_hidden()
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    page.wait_for_selector(f"[data-campaign='{camp['campaign_id']}'] svg", timeout=WAIT_MS)
    funnel = page.locator("svg[data-plot=funnel] rect.bar")
    assert funnel.count() == 6
    assert page.locator("#posts tr").count() > 1 and page.locator("#authors tr").count() > 1
    card = page.locator(f"[data-campaign='{camp['campaign_id']}']")
    assert "running" in card.locator("h3").text_content()
    assert card.locator("svg[data-plot=groups] rect.bar").count() == 2
    assert "lift" in card.locator(".lift").text_content()
    assert page.evaluate("sessionStorage.getItem('merchantToken')") == token
    assert token not in page.url and token not in page.content()
    assert not outside and not errors, (outside, errors)
    page.click("#forget")
    assert page.evaluate("sessionStorage.getItem('merchantToken')") is None
