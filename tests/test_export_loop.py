"""The retraining loop: incremental, exactly-once `feed events export`, a log cap that never
trims unexported events, the backlog metric, hides as training negatives. Real Redis, the real
service over its test client, the real CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import feed_app

from feed import contract as c
from feed.cli import main
from feed.data import load
from feed.events_export import MANIFEST, export, read_manifest, redis_checkpoint
from service import writes


def _send(client: Any, *events: dict[str, Any]) -> None:
    resp = client.post("/v1/events", json={"events": list(events)})
    assert resp.status_code == 202, resp.get_json()


def _clicks(user: str, *posts: str) -> list[dict[str, Any]]:
    return [{"type": "click", "user_id": user, "post_id": p} for p in posts]


def _log(r: Any, *entries: dict[str, Any]) -> None:
    """Entries written as the service writes them (XADD + the counter in one transaction)."""
    pipe = r.pipeline(transaction=True)
    for cmd in writes.counted([writes.log_append(e) for e in entries]):
        pipe.execute_command(*cmd)
    pipe.execute()


def _files(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.iterdir())}


def test_export_twice_adds_nothing_and_later_exports_only_new_events(
    client: Any, r: Any, runner: CliRunner, dataset_dir: Path, tmp_path: Path
) -> None:
    base = load(dataset_dir)
    out = tmp_path / "next"
    _send(client, *_clicks("ex1", "p1", "p2", "p3"))
    first = runner.invoke(main, ["events", "export", str(out), "--data", str(dataset_dir)])
    assert first.exit_code == 0, first.output
    assert len(load(out).clicks) == len(base.clicks) + 3
    cp = read_manifest(out)["checkpoint"]  # type: ignore[index]
    assert redis_checkpoint(r).id == cp["id"]  # type: ignore[union-attr]
    files = _files(out)

    again = runner.invoke(main, ["events", "export", str(out)])  # --data not needed any more
    assert again.exit_code == 0, again.output
    assert "0 events after" in again.output
    assert _files(out) == files  # nothing added, nothing rewritten

    _send(
        client, *_clicks("ex1", "p4"), {"type": "purchase", "user_id": "ex1", "product_id": "sku-1"}
    )
    third = export(r, dataset_dir, out)
    assert third.events == 2 and third.added["clicks"] == 1 and third.added["purchases"] == 1
    merged = load(out)
    assert len(merged.clicks) == len(base.clicks) + 4
    assert len(merged.purchases) == len(base.purchases) + 1
    assert len(read_manifest(out)["exports"]) == 2  # type: ignore[index]


@pytest.mark.parametrize("stage", ["written", "moved_aside", "swapped"])
def test_a_crash_during_export_never_counts_twice(
    stage: str, client: Any, r: Any, dataset_dir: Path, tmp_path: Path
) -> None:
    base = load(dataset_dir)
    out = tmp_path / "next"
    _send(client, *_clicks("cr1", "p1"))
    export(r, dataset_dir, out)
    _send(client, *_clicks("cr1", "p2", "p3"))
    before = redis_checkpoint(r)

    def crash(at: str) -> None:
        if at == stage:
            raise KeyboardInterrupt(f"killed at {at}")

    with pytest.raises(KeyboardInterrupt):
        export(r, dataset_dir, out, hook=crash)
    assert redis_checkpoint(r) == before  # the checkpoint was never saved
    res = export(r, dataset_dir, out)  # recovers, then exports what the directory lacks
    merged = load(out)
    assert len(merged.clicks) == len(base.clicks) + 3  # p1, p2, p3: each once
    assert redis_checkpoint(r).id == read_manifest(out)["checkpoint"]["id"]  # type: ignore
    # killed before the swap: the directory was as before; after it: the next export finishes
    # the swap and has nothing left to add
    assert res.events == (2 if stage == "written" else 0)
    assert not out.with_name("next.export-tmp").exists()
    assert not out.with_name("next.export-old").exists()
    assert export(r, None, out).events == 0


def test_the_cap_trims_only_exported_events(
    redis_url: str, published: str, r: Any, dataset_dir: Path, tmp_path: Path
) -> None:
    app = feed_app(redis_url, EVENT_LOG_MAXLEN=20, EVENT_LOG_HARD_MAX=1_000)
    client = app.test_client()
    for i in range(6):  # 60 events, none exported: nothing may be trimmed
        _send(client, *_clicks(f"cap{i}", *(f"p{j}" for j in range(1, 11))))
    assert r.xlen(c.EVENTS_KEY) == 60
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "feed_events_unexported 60.0" in metrics
    out = tmp_path / "next"
    res = export(r, dataset_dir, out)
    assert res.events == 60
    assert "feed_events_unexported 0.0" in client.get("/metrics").get_data(as_text=True)
    _send(client, *_clicks("cap-late", "p1", "p2", "p3", "p4", "p5"))
    # the write trimmed the exported entries down to the cap, and kept every new one
    assert r.xlen(c.EVENTS_KEY) == 20
    kept = [c.text(f[b"user_id"]) for _, f in r.xrange(c.EVENTS_KEY)]
    assert kept.count("cap-late") == 5
    assert "feed_events_unexported 5.0" in client.get("/metrics").get_data(as_text=True)
    again = export(r, None, out)
    assert again.events == 5 and again.added["clicks"] == 5
    assert len(load(out).clicks) == len(load(dataset_dir).clicks) + 65


def test_the_cap_waits_for_the_merchants_fold_too(
    redis_url: str, published: str, r: Any, dataset_dir: Path, tmp_path: Path
) -> None:
    """Once the merchants' attribution fold has run, the cap trims only entries both it and the
    export have read: an export ahead of the fold trims nothing the fold has not folded."""
    app = feed_app(redis_url, EVENT_LOG_MAXLEN=20, EVENT_LOG_HARD_MAX=1_000)
    client = app.test_client()
    for i in range(3):
        _send(client, *_clicks(f"fold{i}", *(f"p{j}" for j in range(1, 11))))
    ids = [c.text(i) for i, _ in r.xrange(c.EVENTS_KEY)]
    r.hset(c.MERCHANT_AGG_CHECKPOINT_KEY, "id", ids[9])  # the fold has read 10 of 30
    export(r, dataset_dir, tmp_path / "next")  # the export has read all 30
    _send(client, *_clicks("fold-late", "p1"))
    kept = [c.text(i) for i, _ in r.xrange(c.EVENTS_KEY)]
    assert kept[0] == ids[10] and len(kept) == 21  # only the folded ten went
    r.hset(c.MERCHANT_AGG_CHECKPOINT_KEY, "id", kept[-1])  # the fold caught up
    _send(client, *_clicks("fold-later", "p2"))
    assert r.xlen(c.EVENTS_KEY) == 20


def test_catalogue_writes_trim_the_log_too(
    redis_url: str, published: str, r: Any, dataset_dir: Path, tmp_path: Path
) -> None:
    """A catalogue change logs an event and trims the exported ones, as an event batch does."""
    key = {"X-API-Key": "k" * 20}
    app = feed_app(
        redis_url, EVENT_LOG_MAXLEN=5, EVENT_LOG_HARD_MAX=1_000, API_KEY=key["X-API-Key"]
    )
    client = app.test_client()

    def put(price: int) -> None:
        resp = client.put("/v1/products/sku-1", json={"price": price}, headers=key)
        assert resp.status_code == 200, resp.get_json()

    for i in range(8):
        put(10 + i)
    assert r.xlen(c.EVENTS_KEY) >= 8  # none exported: none trimmed
    export(r, dataset_dir, tmp_path / "next")
    put(99)
    assert r.xlen(c.EVENTS_KEY) == 5


def test_the_hard_cap_counts_and_logs_what_it_loses(
    redis_url: str, published: str, r: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = feed_app(redis_url, EVENT_LOG_MAXLEN=10, EVENT_LOG_HARD_MAX=30)
    client = app.test_client()
    with caplog.at_level("ERROR", logger="service.writes"):
        for i in range(5):
            _send(client, *_clicks(f"hard{i}", *(f"p{j}" for j in range(1, 11))))
    assert r.xlen(c.EVENTS_KEY) == 30
    assert int(r.get(c.EVENTS_LOST_KEY)) == 20
    assert any("EVENTS LOST" in rec.message for rec in caplog.records)
    text = client.get("/metrics").get_data(as_text=True)
    assert "feed_events_lost_unexported_total 20.0" in text


def test_new_types_and_moderation_reach_the_dataset_files(
    client: Any, r: Any, dataset_dir: Path, tmp_path: Path
) -> None:
    base = load(dataset_dir)
    liked = base.likes.iloc[0]
    _send(
        client,
        {"type": "hide_post", "user_id": "nt1", "post_id": "p7"},
        {"type": "hide_post", "user_id": "nt1", "post_id": "p7"},  # once in hides.csv
        {"type": "see_fewer_author", "user_id": "nt1", "author_id": "u3"},
        {"type": "share", "user_id": "nt1", "post_id": "p8", "receiver_id": "u4"},
        {"type": "share", "user_id": "nt1", "post_id": "p8", "channel": "moments"},
        {"type": "favorite", "user_id": "nt1", "post_id": "p9"},
        {"type": "like", "user_id": "nt2", "post_id": "p9"},
        {"type": "favorite", "user_id": "nt2", "post_id": "p9"},
        {"type": "unfavorite", "user_id": "nt2", "post_id": "p9"},
        {"type": "add_to_cart", "user_id": "nt1", "product_id": "sku-1", "post_id": "p10"},
        {"type": "add_to_cart", "user_id": "nt1", "product_id": "sku-1"},
        {"type": "like", "user_id": "nt1", "post_id": "p11"},
    )
    _log(
        r,
        {"type": "post_update", "post_id": "p12", "title": "new title", "tags": "a|b", "ts": 1},
        {"type": "post_update", "post_id": "p11", "hidden": "1", "ts": 2},
        {"type": "post_delete", "post_id": liked["post_id"], "ts": 3},
        {"type": "product_upsert", "product_id": "sku-new", "title": "Kettle",
         "category": "kitchen", "price": "19.5", "in_stock": "0", "merchant_id": "m1", "ts": 4},
        {"type": "product_upsert", "product_id": "sku-1", "price": "3.25", "ts": 5},
    )  # fmt: skip
    out = tmp_path / "next"
    res = export(r, dataset_dir, out)
    assert (out / "hides.csv").exists() and (out / "shares.csv").exists()
    ds = load(out)  # loadable
    hides = set(zip(ds.hides["user_id"], ds.hides["post_id"], ds.hides["author_id"], strict=True))
    assert hides - set(zip(base.hides["user_id"], base.hides["post_id"], base.hides["author_id"],
                           strict=True)) == {("nt1", "p7", ""), ("nt1", "", "u3")}  # fmt: skip
    shares = ds.shares[ds.shares["user_id"] == "nt1"].set_index("channel")
    assert len(ds.shares) == len(base.shares) + 2 - res.removed.get("shares", 0)
    assert shares.loc["moments", "receiver_id"] == "" and shares.loc["", "receiver_id"] == "u4"
    likes = {(u, p): w for u, p, w in zip(ds.likes["user_id"], ds.likes["post_id"],
                                            ds.likes["weight"], strict=True)}  # fmt: skip
    assert likes[("nt1", "p9")] == 2.0 and likes[("nt2", "p9")] == 1.0
    assert res.skipped.get("add_to_cart_without_post") == 1
    assert ("nt1", "p10") in set(zip(ds.clicks["user_id"], ds.clicks["post_id"], strict=True))
    posts = ds.posts.set_index("post_id")
    assert posts.loc["p12", "title"] == "new title" and posts.loc["p12", "tags"] == ("a", "b")
    assert "p11" not in posts.index and liked["post_id"] not in posts.index
    assert ("nt1", "p11") not in likes  # the hidden post's rows went with it
    assert res.removed["posts"] == 2 and res.removed["likes"] >= 1
    products = ds.products.set_index("product_id")
    assert products.loc["sku-new", "merchant_id"] == "m1"
    assert not products.loc["sku-new", "in_stock"] and products.loc["sku-1", "price"] == 3.25


@pytest.mark.slow
def test_a_hidden_post_never_comes_back_after_retraining(
    client: Any, r: Any, published: str, artifact: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    from feed.artifacts import read
    from feed.publish import publish
    from feed.train import TrainConfig, train

    cand = read(artifact).arrays("candidates")
    posts = read(artifact).arrays("posts")["post_id"].tolist()
    users = cand["users"].tolist()
    user = users[0]
    top = [posts[i] for i in cand["items"][0][:5].tolist() if i >= 0]
    table = read(artifact).arrays("posts")
    authors = dict(zip(table["post_id"].tolist(), table["author_id"].tolist(), strict=True))
    hidden, muted = top[0], authors[top[1]]
    _send(
        client,
        {"type": "hide_post", "user_id": user, "post_id": hidden},
        {"type": "see_fewer_author", "user_id": user, "author_id": muted},
    )
    out = tmp_path / "next"
    export(r, dataset_dir, out)
    new = train(out, tmp_path / "art", TrainConfig(factors=8, iterations=3, n_candidates=100))
    version = publish(r, new).version
    table = c.decode_json(r.get(c.version_key(version, "posts")))
    idx, _, _ = c.decode_candidates(r.get(c.user_key(user, "cand", version)))
    served = {table["post_id"][i] for i in idx.tolist()}
    assert len(served) > 0
    assert hidden not in served
    assert not any(table["author_id"][i] == muted for i in idx.tolist())
    assert np.all(idx >= 0)
    assert (out / MANIFEST).exists()
