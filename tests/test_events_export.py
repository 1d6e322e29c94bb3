"""`feed events export`: the event log merged into a dataset, and the loop closed by training
a new version on it (through the real service, real Redis and the real CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from feed.cli import main
from feed.data import load
from feed.events_export import merge


def _send(client: Any, *events: dict[str, Any]) -> None:
    resp = client.post("/v1/events", json={"events": list(events)})
    assert resp.status_code == 202, resp.get_json()


@pytest.mark.slow
def test_export_merges_events_and_retrains(
    client: Any, runner: CliRunner, dataset_dir: Path, tmp_path: Path
) -> None:
    from feed.artifacts import read
    from feed.train import TrainConfig, train

    base = load(dataset_dir)
    liked_before = base.likes.iloc[0]
    new_user = "loop-user"
    resp = client.post(
        "/v1/posts",
        json={
            "post_id": "p-loop",
            "author_id": "u3",
            "text": "手沖咖啡豆 pourover beans",
            "title": "V60",
            "product_ids": ["sku-1"],
            "tags": ["coffee"],
        },
    )
    assert resp.status_code == 201
    _send(
        client,
        *({"type": "like", "user_id": new_user, "post_id": p} for p in ("p1", "p2", "p3")),
        {"type": "like", "user_id": new_user, "post_id": "p-loop"},
        {"type": "like", "user_id": new_user, "post_id": "p4"},
        {"type": "unlike", "user_id": new_user, "post_id": "p4"},
        {"type": "unlike", "user_id": liked_before["user_id"], "post_id": liked_before["post_id"]},
        {"type": "like", "user_id": new_user, "post_id": "no-such-post"},
        {"type": "follow", "user_id": new_user, "author_id": "u3"},
        {"type": "follow", "user_id": new_user, "author_id": "u4"},
        {"type": "unfollow", "user_id": new_user, "author_id": "u4"},
        {"type": "purchase", "user_id": new_user, "product_id": "sku-1", "post_id": "p-loop"},
        {"type": "click", "user_id": new_user, "post_id": "p5"},
        {"type": "impression", "user_id": new_user, "post_id": "p6"},
        {"type": "hide_post", "user_id": new_user, "post_id": "p7"},
    )

    out = tmp_path / "next"
    res = runner.invoke(
        main, ["events", "export", str(out), "--data", str(dataset_dir)], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    assert "skipped like_unknown_post: 1" in res.output
    merged = load(out)
    assert len(merged.posts) == len(base.posts) + 1
    assert len(merged.likes) == len(base.likes) + 4 - 1  # p1-p3, p-loop; one unliked
    liked = set(zip(merged.likes["user_id"], merged.likes["post_id"], strict=True))
    assert (new_user, "p4") not in liked
    assert (liked_before["user_id"], liked_before["post_id"]) not in liked
    assert len(merged.follows) == len(base.follows) + 1
    assert len(merged.purchases) == len(base.purchases) + 1
    assert len(merged.clicks) == len(base.clicks) + 1
    assert len(merged.impressions) == len(base.impressions) + 1
    new_post = merged.posts.set_index("post_id").loc["p-loop"]
    assert new_post["product_ids"] == ("sku-1",) and new_post["text"].startswith("手沖")

    again = runner.invoke(main, ["events", "export", str(out), "--data", str(dataset_dir)])
    assert again.exit_code == 0, again.output
    assert "0 events after" in again.output  # exactly once: the second export adds nothing
    assert len(load(out).likes) == len(merged.likes)
    assert len(load(out).hides) == len(merged.hides) == 1  # the hide_post, in hides.csv

    # the loop closes: a version trained on the export knows the new post, likes and follow
    art = read(
        train(out, tmp_path / "artifacts", TrainConfig(factors=8, iterations=3, n_candidates=50))
    )
    rows = art.manifest["data"]["rows"]
    assert rows["likes"] == len(merged.likes) and rows["posts"] == len(merged.posts)
    assert "p-loop" in art.arrays("posts")["post_id"].tolist()
    follows = art.arrays("follows")
    assert ("loop-user", "u3") in set(
        zip(follows["follower"].tolist(), follows["followee"].tolist(), strict=True)
    )
    cand = art.arrays("candidates")
    users = cand["users"].tolist()
    assert new_user in users
    row = cand["items"][users.index(new_user)]
    assert int((row >= 0).sum()) > 0


def test_like_unlike_like_replays_in_log_order(dataset_dir: Path) -> None:
    ds = load(dataset_dir)
    ev = [
        {"type": t, "user_id": "x", "post_id": "p1", "ts": str(1.8e9 + i)}
        for i, t in enumerate(("like", "unlike", "like", "like"))
    ]
    ev += [
        {"type": "unlike", "user_id": "y", "post_id": "p2", "ts": "1.8e9"},
        {"type": "follow", "user_id": "x", "author_id": "u1", "ts": "1.8e9"},
        {"type": "unfollow", "user_id": "x", "author_id": "u1", "ts": "1.8e9"},
        {"type": "see_fewer_author", "user_id": "x", "author_id": "u2", "ts": "1.8e9"},
    ]
    tables, added, skipped = merge(ds, ev, [])
    pairs = list(zip(tables["likes"]["user_id"], tables["likes"]["post_id"], strict=True))
    assert pairs.count(("x", "p1")) == 1
    assert added["likes"] == 1 and added["follows"] == 0
    assert skipped == {}
    hides = tables["hides"]
    assert list(zip(hides["user_id"], hides["post_id"], hides["author_id"], strict=True)) == [
        ("x", "", "u2")
    ]
    assert np.isclose(tables["likes"]["ts"].iloc[-1], 1.8e9 + 3)
