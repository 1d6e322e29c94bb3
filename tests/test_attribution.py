"""Merchant attribution (feed/merchants.py, GET /v1/merchants/<m>/report): a scripted scenario
posted over HTTP against a published version, checked against hand-computed numbers; the fold
is incremental (a second report folds nothing), exact on replay (wipe, fold the log again: the
same report) and under concurrent folds; the last-touch window."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import feed_app

from feed import contract as c
from feed import merchants as fm
from feed.cli import main

ADMIN = "admin-token-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pick(r: Any, version: str) -> tuple[str, str, str, str, str, dict[str, str]]:
    """(X, p1, p2, Y, p3, post -> author): X linked by p1 and p2, Y by p3; p1, p2 do not link
    Y and p3 does not link X."""
    table = c.decode_json(r.get(c.version_key(version, "posts")))
    posts = dict(zip(table["post_id"], table["product_ids"], strict=True))
    authors = dict(zip(table["post_id"], table["author_id"], strict=True))
    linking: dict[str, list[str]] = {}
    for p, products in posts.items():
        for x in products:
            linking.setdefault(x, []).append(p)
    for x, xs in linking.items():
        if len(xs) < 2:
            continue
        for y, ys in linking.items():
            if y == x:
                continue
            p1, p2 = xs[0], xs[1]
            p3 = next((p for p in ys if x not in posts[p] and p not in (p1, p2)), None)
            if p3 and y not in posts[p1] and y not in posts[p2]:
                return x, p1, p2, y, p3, authors
    raise AssertionError("no suitable products in the test dataset")


@pytest.fixture
def scene(r: Any, redis_url: str, published: str) -> dict[str, Any]:
    app = feed_app(redis_url, ADMIN_TOKEN=ADMIN)
    client = app.test_client()
    x, p1, p2, y, p3, authors = pick(r, published)
    for product, price in ((x, 10.0), (y, 5.0)):
        resp = client.put(
            f"/v1/products/{product}",
            json={"merchant_id": "m-a", "price": price},
            headers=AS_ADMIN,
        )
        assert resp.status_code == 200, resp.get_json()
    token = client.post(
        "/v1/admin/merchants", json={"merchant_id": "m-a"}, headers=AS_ADMIN
    ).get_json()["token"]
    other = client.post(
        "/v1/admin/merchants", json={"merchant_id": "m-b"}, headers=AS_ADMIN
    ).get_json()["token"]
    return {
        "client": client,
        "token": token,
        "other": other,
        "x": x,
        "y": y,
        "p1": p1,
        "p2": p2,
        "p3": p3,
        "authors": authors,
    }


def send(client: Any, *events: dict[str, Any]) -> None:
    resp = client.post("/v1/events", json={"events": list(events)})
    assert resp.status_code == 202, resp.get_json()


def script(s: dict[str, Any]) -> None:
    """The scenario, one request per step so the log keeps this order."""
    cl, x, y, p1, p2, p3 = s["client"], s["x"], s["y"], s["p1"], s["p2"], s["p3"]
    # u1: impression -> click -> purchase without post_id: last exposure p1, channel feed
    send(cl, {"type": "impression", "user_id": "u1", "post_id": p1})
    send(cl, {"type": "click", "user_id": "u1", "post_id": p1})
    send(cl, {"type": "like", "user_id": "u1", "post_id": p1})
    send(cl, {"type": "purchase", "user_id": "u1", "product_id": x})
    # u2: saw p1 but bought through p2 (purchase.post_id wins); a cart add from p1
    send(cl, {"type": "impression", "user_id": "u2", "post_id": p1})
    send(cl, {"type": "purchase", "user_id": "u2", "product_id": x, "post_id": p2})
    send(cl, {"type": "add_to_cart", "user_id": "u2", "product_id": x, "post_id": p1})
    # a share chain of depth 2: u3 -> u4 -> u5, u5 buys without post_id (last exposure p2)
    send(cl, {"type": "share", "user_id": "u3", "post_id": p2, "receiver_id": "u4"})
    send(cl, {"type": "impression", "user_id": "u4", "post_id": p2})
    send(cl, {"type": "share", "user_id": "u4", "post_id": p2, "receiver_id": "u5"})
    send(cl, {"type": "impression", "user_id": "u5", "post_id": p2})
    send(cl, {"type": "purchase", "user_id": "u5", "product_id": x})
    # a group-buy of Y: u6 starts, u7 joins (it fills up), u7 buys through p3: channel group
    g = cl.post("/v1/groups", json={"initiator_id": "u6", "product_id": y, "size": 2})
    assert g.status_code == 201, g.get_json()
    assert (
        cl.post(f"/v1/groups/{g.get_json()['group_id']}/join", json={"user_id": "u7"}).status_code
        == 200
    )
    send(cl, {"type": "purchase", "user_id": "u7", "product_id": y, "post_id": p3})


def report(s: dict[str, Any], by: str, token: str | None = None, **q: Any) -> dict[str, Any]:
    resp = s["client"].get(
        "/v1/merchants/m-a/report",
        query_string={"by": by, **q},
        headers=bearer(token or s["token"]),
    )
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def counts(**kw: float) -> dict[str, float]:
    base = dict.fromkeys(fm.METRICS, 0)
    base["revenue"] = 0.0
    return {**base, **kw}


def rows_by(body: dict[str, Any], key: str) -> dict[Any, dict[str, Any]]:
    return {row[key]: {k: v for k, v in row.items() if k != key} for row in body["rows"]}


def test_report_matches_the_hand_computed_scenario(scene: dict[str, Any]) -> None:
    s = scene
    script(s)
    p1, p2, p3, x, y = s["p1"], s["p2"], s["p3"], s["x"], s["y"]
    by_post = rows_by(report(s, "post"), "post_id")
    assert by_post == {
        p1: counts(impressions=2, clicks=1, likes=1, add_to_carts=1, purchases=1, revenue=10.0),
        p2: counts(impressions=2, shares=2, purchases=2, revenue=20.0),
        p3: counts(purchases=1, revenue=5.0),
    }
    by_channel = rows_by(report(s, "channel"), "channel")
    assert by_channel == {
        "feed": counts(
            impressions=2, clicks=1, likes=1, shares=1, add_to_carts=1, purchases=2, revenue=20.0
        ),
        "share": counts(impressions=2, shares=1, purchases=1, revenue=10.0),
        "group": counts(purchases=1, revenue=5.0),
    }
    body = report(s, "product")
    by_product = rows_by(body, "product_id")
    assert by_product[x] == {
        **counts(
            impressions=4, clicks=1, likes=1, shares=2, add_to_carts=1, purchases=3, revenue=30.0
        ),
        "group_launches": 0,
        "group_succeeded": 0,
        "group_members": 0,
        "group_success_rate": None,
    }
    assert by_product[y] == {
        **counts(purchases=1, revenue=5.0),
        "group_launches": 1,
        "group_succeeded": 1,
        "group_members": 2,
        "group_success_rate": 1.0,
    }
    assert body["share_chains"] == [
        {"sharer_id": "u4", "receiver_id": "u5", "depth": 2, "purchases": 1, "revenue": 10.0}
    ]
    assert body["totals"]["purchases"] == 4 and body["totals"]["revenue"] == 35.0
    assert body["totals"]["group_launches"] == 1 and body["totals"]["group_success_rate"] == 1.0
    by_author = rows_by(report(s, "author"), "author_id")
    expected: dict[str, dict[str, float]] = {}
    for post, row in by_post.items():
        a = s["authors"][post]
        acc = expected.setdefault(a, counts())
        for k, v in row.items():
            acc[k] = acc[k] + v
    assert by_author == expected
    # rows are keyed by their grouping with one field per count
    assert set(report(s, "post")["rows"][0]) == {"post_id", *fm.METRICS}
    # another merchant's token never reads m-a's report
    resp = s["client"].get("/v1/merchants/m-a/report", headers=bearer(s["other"]))
    assert resp.status_code == 404
    other = s["client"].get("/v1/merchants/m-b/report", headers=bearer(s["other"])).get_json()
    assert other["rows"] == [] and other["totals"]["purchases"] == 0


def test_the_fold_is_incremental_and_exact_on_replay(
    scene: dict[str, Any], r: Any, runner: CliRunner
) -> None:
    s = scene
    script(s)
    first = report(s, "post")
    logged = r.xlen(c.EVENTS_KEY)
    assert first["folded"]["entries"] == logged  # everything folded once...
    again = report(s, "post")
    assert again["folded"]["entries"] == 0  # ...and not again: a report reads day buckets
    assert again["rows"] == first["rows"]
    # more events: only they are folded
    send(s["client"], {"type": "purchase", "user_id": "u8", "product_id": s["x"]})
    more = report(s, "post")
    assert more["folded"]["entries"] == 1 and more["totals"]["purchases"] == 5
    snapshot = {by: report(s, by) for by in fm.DIMENSIONS}
    # wipe the aggregates and replay the log from its start (the CLI): the same report
    res = runner.invoke(main, ["merchants", "aggregate", "--replay"])
    assert res.exit_code == 0, res.output
    assert f"folded {logged + 1} events" in res.output
    for by, before in snapshot.items():
        after = report(s, by)
        assert after["folded"]["entries"] == 0
        strip = ("folded",)
        assert {k: v for k, v in after.items() if k not in strip} == {
            k: v for k, v in before.items() if k not in strip
        }, by


def test_concurrent_folds_count_every_entry_once(scene: dict[str, Any], r: Any) -> None:
    s = scene
    n = 120
    for i in range(0, n, 40):
        send(
            s["client"],
            *[
                {"type": "impression", "user_id": f"v{j}", "post_id": s["p1"]}
                for j in range(i, i + 40)
            ],
        )
    live = r.get(c.LIVE_KEY).decode()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            fm.fold(
                r.__class__(connection_pool=r.connection_pool),
                fm.Catalogue(r, live),
                batch=7,
                wait_s=30,
            )
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    body = report(s, "post")
    assert body["folded"]["entries"] == 0
    assert rows_by(body, "post_id")[s["p1"]]["impressions"] == n


def test_last_touch_window(r: Any, scene: dict[str, Any]) -> None:
    """Log entries with set ids (the attribution clock is the log's): an exposure 6 days before
    a purchase attributes it, 8 days before does not."""
    s = scene
    day = 86_400_000
    t0 = (int(time.time()) // 86_400 + 2) * day  # ms, a future midnight: ids after any logged
    entries = [
        (t0, {"type": "impression", "user_id": "w1", "post_id": s["p1"]}),
        (t0 + 1, {"type": "impression", "user_id": "w2", "post_id": s["p1"]}),
        (t0 + 6 * day, {"type": "purchase", "user_id": "w1", "product_id": s["x"]}),
        (t0 + 8 * day, {"type": "purchase", "user_id": "w2", "product_id": s["x"]}),
    ]
    for ms, fields in entries:
        r.xadd(c.EVENTS_KEY, {**fields, "ts": ms / 1000}, id=f"{ms}-0")
    first, last = fm.iso_day(t0 // day), fm.iso_day(t0 // day + 8)
    body = report(s, "post", **{"from": first, "to": last})
    rows = rows_by(body, "post_id")
    assert rows[s["p1"]]["purchases"] == 1 and rows[s["p1"]]["impressions"] == 2
    assert rows[None]["purchases"] == 1 and rows[None]["revenue"] == 10.0
    only_last = report(s, "post", **{"from": last, "to": last})
    assert rows_by(only_last, "post_id") == {None: counts(purchases=1, revenue=10.0)}


def test_report_arguments_are_checked(scene: dict[str, Any]) -> None:
    cl, h = scene["client"], bearer(scene["token"])
    for q, code in (
        ({"by": "colour"}, "invalid_by"),
        ({"from": "yesterday"}, "invalid_from"),
        ({"to": "2026-13-01"}, "invalid_to"),
        ({"from": "2026-02-01", "to": "2026-01-01"}, "invalid_from"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "invalid_from"),
    ):
        resp = cl.get("/v1/merchants/m-a/report", query_string=q, headers=h)
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == code, q


def test_a_report_folds_a_bounded_slice_of_a_backlog_and_says_what_is_left(
    r: Any, scene: dict[str, Any], redis_url: str
) -> None:
    """60,000 entries behind: the report request folds at most REPORT_FOLD_MAX of them (and
    for about REPORT_FOLD_S seconds), answers with ``behind`` (the entries left), and
    ``feed merchants aggregate`` catches up; nothing is lost or counted twice."""
    from service import merchants as accounts

    s = scene
    before = fm.behind(r)
    assert before is not None
    n, step = 60_000, 5_000
    for i in range(0, n, step):  # as the service logs: XADDs and the counter in one MULTI
        pipe = r.pipeline(transaction=True)
        for j in range(i, i + step):
            pipe.xadd(c.EVENTS_KEY, {"type": "impression", "user_id": f"b{j % 500}",
                                     "post_id": s["p1"], "ts": time.time()})  # fmt: skip
        pipe.incrby(c.EVENTS_SEQ_KEY, step)
        pipe.execute()
    t0 = time.monotonic()
    body = report(s, "post")
    took = time.monotonic() - t0
    folded = body["folded"]
    assert 0 < folded["entries"] <= accounts.REPORT_FOLD_MAX
    assert folded["entries"] + folded["behind"] == before + n
    assert folded["behind"] >= n - accounts.REPORT_FOLD_MAX
    assert took < accounts.REPORT_FOLD_S + 10, took
    out = CliRunner().invoke(main, ["merchants", "aggregate", "--redis-url", redis_url])
    assert out.exit_code == 0, out.output
    assert "behind 0" in out.output
    again = report(s, "post")
    assert again["folded"] == {**again["folded"], "entries": 0, "behind": 0}
    assert rows_by(again, "post_id")[s["p1"]]["impressions"] == n


def test_the_fold_keeps_its_lock_past_the_lease(
    r: Any, scene: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold longer than its lock's lease renews it after every batch: a second fold started
    meanwhile waits instead of running alongside."""
    monkeypatch.setattr(fm, "LOCK_S", 1)
    for i in range(0, 3000, 500):
        send(scene["client"], *[{"type": "impression", "user_id": f"k{j}",
                                 "post_id": scene["p1"]} for j in range(i, i + 500)])  # fmt: skip
    live = r.get(c.LIVE_KEY).decode()
    cat = fm.Catalogue(r, live)
    done = threading.Event()
    seen_free: list[float] = []

    def slow() -> None:
        orig = fm.fold_batch

        def batch(*a: Any, **k: Any) -> Any:
            time.sleep(0.4)
            return orig(*a, **k)

        monkeypatch.setattr(fm, "fold_batch", batch)
        try:
            fm.fold(r, cat, batch=200)
        finally:
            done.set()

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    while not done.is_set():
        if not r.exists(c.MERCHANT_AGG_LOCK_KEY) and not done.is_set():
            seen_free.append(time.monotonic())
        time.sleep(0.05)
    t.join()
    assert not seen_free, "the lock lapsed while the fold ran"
    assert fm.behind(r) == 0
