"""The feed viewer (/viewer): HTTP-level checks with the test client, then the page itself in a
real headless Chromium driven by Playwright against a real werkzeug server and the real Redis.

The browser tests skip, saying why, when no Chromium is installed (Debian's ``chromium`` at
/usr/bin/chromium, or the binary named by ``FEED_CHROMIUM``); ``.ci/run`` installs it. Set
``FEED_VIEWER_SCREENSHOT=docs/img/viewer.png`` to have the comparison test save the README's
screenshot.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import feed_app

from feed import contract as c

TOKEN = "viewer-admin-t0ken-5ec7e7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM = os.environ.get("FEED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STATIC = Path(__file__).resolve().parents[1] / "service" / "static"
HOSTILE_TEXT = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> 好用'
HOSTILE_TITLE = "<b onmouseover=alert(1)>bold</b>"
WAIT_MS = 15_000


def make_app(redis_url: str) -> Any:
    return feed_app(redis_url, ADMIN_TOKEN=TOKEN)


@pytest.fixture(scope="session")
def other_artifact(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different model version: popularity only (the A/B tests' weak version, in the
    same cache directory, so one session trains it once)."""
    from feed.train import TrainConfig, train
    from tools.simulate import weak_config

    out = tmp_path_factory.getbasetemp() / "weak-artifact"
    done = sorted(out.glob("*/manifest.json"))
    if done:
        return done[0].parent
    cfg = weak_config(TrainConfig(factors=16, iterations=8, n_candidates=100))
    return train(dataset_dir, out, cfg)


@pytest.fixture
def other(r: Any, published: str, other_artifact: Path) -> str:
    """The second version, published (ready) after the live one and not activated."""
    from feed.publish import publish

    version = publish(r, other_artifact).version
    assert version != published
    return version


# --- HTTP level -------------------------------------------------------------------------------
def test_page_holds_no_token_no_user_data_and_reflects_nothing(
    redis_url: str, published: str
) -> None:
    client = make_app(redis_url).test_client()
    resp = client.get("/viewer?user=<script>alert(1)</script>&compare=%3Cimg%3E", headers=AUTH)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert TOKEN not in page
    assert "alert(1)" not in page and "<img" not in page
    assert "Set-Cookie" not in resp.headers
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    for asset in ("/static/viewer.js", "/static/viewer.css"):
        got = client.get(asset)
        assert got.status_code == 200, asset
        assert TOKEN not in got.get_data(as_text=True)
        got.close()
    # the same page for everyone, with or without the token and a user
    assert client.get("/viewer").get_data(as_text=True) == page


def test_script_puts_text_with_text_content_and_keeps_the_token_in_session_storage() -> None:
    """Post text is user-generated: the script never assigns HTML. The token is kept in
    sessionStorage only, and every feed request is a preview."""
    js = (STATIC / "viewer.js").read_text(encoding="utf-8")
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "localStorage",
        "document.cookie",
        "new Function",
    ):
        assert sink not in js, sink
    assert "sessionStorage" in js and 'preview: "1"' in js


def test_examples_are_users_with_candidates_in_the_live_version(
    client: Any, r: Any, published: str
) -> None:
    body = client.get("/v1/viewer/examples").get_json()
    assert body["model_version"] == published
    assert 1 <= len(body["users"]) <= 6
    assert all(r.exists(c.user_key(u, "cand", published)) for u in body["users"])
    assert len(client.get("/v1/viewer/examples?limit=100").get_json()["users"]) <= 20
    assert client.get("/v1/viewer/examples?limit=0").status_code == 400
    assert client.get("/v1/viewer/examples?limit=x").status_code == 400


# --- in a real browser ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium) "
            "or set FEED_CHROMIUM to a Chromium binary to run the viewer's browser tests"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
    )
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def server(redis_url: str, published: str) -> Iterator[str]:
    """The app on a real werkzeug server on a free loopback port, in a thread."""
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, make_app(redis_url), threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join(10)
    srv.server_close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    yield pg
    context.close()


def post_json(url: str, body: Any) -> Any:
    from urllib.request import Request, urlopen

    req = Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urlopen(req) as resp:
        return json.load(resp)


def wait_cards(page: Any, column: str, n: int) -> list[str]:
    """Wait until ``column`` ("a" or "b") shows ``n`` cards; their post ids."""
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length === n",
        arg=[f"#col-{column} .card", n],
        timeout=WAIT_MS,
    )
    return page.eval_on_selector_all(
        f"#col-{column} .card", "cards => cards.map(c => c.dataset.postId)"
    )


def wait_version(page: Any, column: str, version: str) -> None:
    page.wait_for_function(
        "([sel, v]) => document.querySelector(sel).dataset.version === v",
        arg=[f"#col-{column}", version],
        timeout=WAIT_MS,
    )


@pytest.mark.slow
def test_browser_feed_paging_history_and_comparison(
    browser: Any, page: Any, server: str, r: Any, published: str, other: str
) -> None:
    """On a server with an admin token, shows nothing but a request for it; with the token, 20
    posts for an example user, paging, the history and another version's feed beside it; links
    are shareable; the token never leaves sessionStorage except as an Authorization header."""
    requests: list[Any] = []
    page.on("request", lambda req: requests.append(req))
    page.goto(f"{server}/viewer?user=u1")
    # without the token: no example users, no feed (they are other users' data), and why
    asks = "sel => document.querySelector(sel).textContent.includes('admin token')"
    for box in ("#examples", "#col-a .status"):
        page.wait_for_function(asks, arg=box, timeout=WAIT_MS)
    assert page.locator(".card").count() == 0

    page.goto(f"{server}/viewer")
    page.wait_for_function(asks, arg="#examples", timeout=WAIT_MS)
    before_token = len(requests)
    page.click("#admin summary")
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    example = page.locator("#examples button.example").first
    example.wait_for(timeout=WAIT_MS)
    user = example.text_content()
    liked = ["p1", "p2"]
    events = [{"type": "like", "user_id": user, "post_id": p} for p in liked]
    assert post_json(f"{server}/v1/events", {"events": events})["accepted"] == 2
    seen_before = r.zcard(c.user_key(user, c.USER_SEEN))
    example.click()

    first = wait_cards(page, "a", 20)
    assert parse_qs(urlsplit(page.url).query)["user"] == [user]
    assert page.get_attribute("#col-a", "data-version") == published
    card = page.locator("#col-a .card").first
    assert card.locator(".text").text_content().strip()
    assert card.locator(".user-link").text_content().startswith("@")
    assert card.locator(".why").get_attribute("data-reason")
    assert card.locator(".why-text").text_content().strip()
    assert page.locator("#col-a .product .p-price").count() > 0
    assert page.locator("#col-a .product .p-stock").count() > 0

    page.click("#col-a .more")  # paging
    both = wait_cards(page, "a", 40)
    assert both[:20] == first and len(set(both)) == 40

    wait_version(page, "b", other)
    second = wait_cards(page, "b", 20)
    assert set(second) != set(first)  # another version: (at least partly) other posts
    assert page.locator("#col-b .card.only-here").count() > 0
    assert page.input_value("#col-b select") == other
    assert parse_qs(urlsplit(page.url).query) == {"user": [user], "compare": [other]}
    page.locator("#history-body h3").nth(2).wait_for(timeout=WAIT_MS)
    assert "Follows" in page.text_content("#history-body")
    page.wait_for_function(  # liked posts, described by their titles
        "() => document.querySelector('.h-post[data-post-id=\"p1\"]').textContent"
        ".startsWith('p1: ')",
        timeout=WAIT_MS,
    )
    if os.environ.get("FEED_VIEWER_SCREENSHOT"):
        page.click("#admin summary")  # closed again, for the picture
        page.screenshot(path=os.environ["FEED_VIEWER_SCREENSHOT"])

    # the token: in this tab's sessionStorage only
    stored = page.evaluate("sessionStorage.getItem('shopfeed.viewer.adminToken')")
    assert stored == TOKEN
    assert page.evaluate("document.cookie") == "" and page.evaluate("localStorage.length") == 0
    assert TOKEN not in page.content() and page.input_value("#token") == ""

    # a shareable link opens straight on the comparison (same tab: the token is still there)
    page.goto(f"{server}/viewer?user={user}&compare={other}")
    wait_version(page, "b", other)
    assert wait_cards(page, "a", 20) == first and wait_cards(page, "b", 20) == second
    # ... and in a new browser session it asks for the token, showing nothing
    fresh = browser.new_context()
    try:
        p2 = fresh.new_page()
        p2.goto(f"{server}/viewer?user={user}&compare={other}")
        p2.wait_for_function(
            "() => document.querySelector('#col-a .status').textContent.includes('admin token')",
            timeout=WAIT_MS,
        )
        assert "admin token" in p2.text_content("#col-b .status")
        assert p2.locator(".card").count() == 0
    finally:
        fresh.close()

    # looking changed nothing, and the token only ever travelled as a header
    assert r.zcard(c.user_key(user, c.USER_SEEN)) == seen_before
    feeds = [q for q in requests if "/v1/feed/" in q.url]
    assert feeds and all(parse_qs(urlsplit(q.url).query)["preview"] == ["1"] for q in feeds)
    assert all(TOKEN not in q.url for q in requests)
    for i, q in enumerate(requests):  # the token: on every API call once it is set, only there
        api = "/v1/" in q.url and i >= before_token
        assert (q.headers.get("authorization") == f"Bearer {TOKEN}") == api, q.url


@pytest.mark.slow
def test_browser_experiment_arms_are_offered_for_comparison(
    page: Any, server: str, r: Any, published: str, other: str
) -> None:
    """Experiment arms are in the selectors; the main column shows the user's assigned arm."""
    from feed import experiments as ex

    ex.create(
        r,
        "viewer-ab",
        [
            {"name": "control", "version": published, "weight": 50},
            {"name": "treatment", "version": other, "weight": 50},
        ],
    )
    exp = ex.Experiment.from_config(ex.get(r, "viewer-ab"))
    users = (f"u{i}" for i in range(400))
    user = next(u for u in users if getattr(exp.arm_for(u), "name", "") == "treatment")
    page.goto(f"{server}/viewer")
    page.evaluate(f"sessionStorage.setItem('shopfeed.viewer.adminToken', {json.dumps(TOKEN)})")
    page.goto(f"{server}/viewer?user={user}&compare={published}")
    wait_version(page, "a", other)  # the user's assigned arm
    assert "arm treatment" in page.text_content("#col-a .meta")
    wait_version(page, "b", published)
    labels = page.eval_on_selector_all("#col-b optgroup", "gs => gs.map(g => g.label)")
    assert "experiment viewer-ab" in labels


@pytest.mark.slow
def test_browser_renders_hostile_post_text_inert(
    page: Any, server: str, r: Any, published: str
) -> None:
    """Post text, titles and product titles are user-generated: markup in them shows as text."""
    from urllib.request import Request, urlopen

    with urlopen(Request(f"{server}/v1/viewer/examples?limit=1", headers=AUTH)) as resp:
        user = json.load(resp)["users"][0]
    with urlopen(Request(f"{server}/v1/feed/{user}?preview=1&limit=20", headers=AUTH)) as resp:
        item = next(it for it in json.load(resp)["items"] if it["products"])
    card = c.card_key(item["post_id"], published)
    served = json.loads(r.get(card))  # the item as the feed serves it
    served["products"][0]["title"] = HOSTILE_TEXT
    r.set(card, c.encode_json({**served, "text": HOSTILE_TEXT, "title": HOSTILE_TITLE}))

    dialogs: list[Any] = []
    page.on("dialog", lambda d: dialogs.append(d))
    page.goto(f"{server}/viewer")
    page.evaluate(f"sessionStorage.setItem('shopfeed.viewer.adminToken', {json.dumps(TOKEN)})")
    page.goto(f"{server}/viewer?user={user}")
    wait_cards(page, "a", 20)
    card = page.locator(f'#col-a .card[data-post-id="{item["post_id"]}"]')
    assert card.locator(".text").text_content() == HOSTILE_TEXT
    assert card.locator(".title").text_content() == HOSTILE_TITLE
    assert card.locator(".p-title").first.text_content() == HOSTILE_TEXT
    assert card.locator("img, script, b").count() == 0
    card.locator(".title").hover()
    assert page.evaluate("typeof window.__pwned") == "undefined" and not dialogs


@pytest.mark.slow
def test_browser_group_panel_shows_a_friends_open_group_and_deals(
    page: Any, server: str, r: Any, published: str
) -> None:
    """The group-buying panel lists the user's friends' open groups (product, spots left,
    who started it) and the deals suggested to them, each with its reason."""
    initiator, user = "", ""
    for key in r.scan_iter(match=f"*:{c.USER_TIES}:{published}", count=500):
        ties = c.decode_ties(r.get(key))
        if ties:
            initiator = c.text(key).split("}")[0].split(":", 1)[1]
            user = next(iter(ties))
            break
    assert initiator and user, "the published version has ties"
    prefix = c.product_doc_key("", published)
    product = c.text(next(r.scan_iter(match=f"{prefix}*", count=500)))[len(prefix) :]
    group = post_json(f"{server}/v1/groups", {"initiator_id": initiator, "product_id": product,
                                              "size": 3, "group_id": "g-viewer"})  # fmt: skip
    assert group["status"] == "open"
    page.goto(f"{server}/viewer")
    page.evaluate(f"sessionStorage.setItem('shopfeed.viewer.adminToken', {json.dumps(TOKEN)})")
    page.goto(f"{server}/viewer?user={user}")
    page.locator("#groups-body h3").nth(1).wait_for(timeout=WAIT_MS)
    panel = page.locator("#groups-body .h-section")
    groups, deals = panel.nth(0), panel.nth(1)
    assert groups.locator("h3").text_content() == "Open groups to join"
    assert groups.locator(".g-product").first.text_content() == product
    assert "2 of 3 spots left" in groups.locator(".g-spots").first.text_content()
    assert f"started by friend {initiator}" in groups.locator(".why").first.text_content()
    assert deals.locator("h3").text_content().startswith("Deals to launch")
    assert deals.locator(".d-product").count() > 0
    assert deals.locator(".why").first.text_content().strip()
