"""The Python API (``import feed``): lazy and light, the same functions the CLI calls; and the
notebook helpers (``tools.notebook``) rank with the service's own code without side effects."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import feed
import feed.redisclient
from feed import contract as c
from tools import notebook as nb

HEAVY = ("pandas", "sklearn", "implicit", "scipy", "flask", "matplotlib")


def _python(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.strip()


def test_import_feed_stays_light() -> None:
    """The service imports feed.contract: neither it nor `import feed` may pull heavy libraries."""
    code = (
        f"import sys, feed, feed.contract, feed.experiments; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert _python(code) == "[]"


def test_main_functions_are_the_modules_functions() -> None:
    assert feed.train_version is feed.train.train
    assert feed.evaluate_models is feed.evaluate.evaluate
    assert feed.publish_version is feed.publish.publish


def test_every_public_name_resolves() -> None:
    for name in feed.__all__:
        assert getattr(feed, name) is not None, name
    assert feed.TrainConfig is feed.train.TrainConfig
    assert feed.load is feed.data.load and feed.generate is feed.data.synth.generate
    assert set(feed.__all__) <= set(dir(feed))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = feed.nope


def test_docstring_examples_run() -> None:
    assert doctest.testmod(feed.redisclient).failed == 0
    assert doctest.testmod(nb).failed == 0
    assert doctest.testmod(feed).failed == 0


def test_redis_url_resolution(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("FEED_REDIS_URL", "redis://from-env:1/0")
    assert feed.redis_url("redis://given:2/0") == "redis://given:2/0"
    assert feed.redis_url() == "redis://from-env:1/0"
    monkeypatch.delenv("FEED_REDIS_URL")
    with pytest.raises(feed.RedisNotConfigured, match="FEED_REDIS_URL"):
        feed.redis_url(start_private=False)
    r = feed.connect(redis_url)
    assert r.ping() and feed.connect(feed.url_of(r)).ping()


def test_private_server_when_nothing_is_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from feed import redisserver

    monkeypatch.delenv("FEED_REDIS_URL", raising=False)
    try:
        r = feed.connect(private_dir=tmp_path / "redis")
        assert r.ping() and feed.url_of(r).startswith(f"unix://{tmp_path}")
    finally:
        redisserver.stop(tmp_path / "redis")


def test_as_of_drops_everything_after_the_cut(dataset_dir: Path) -> None:
    ds = feed.load(dataset_dir)
    cut = float(np.quantile(ds.likes["ts"], 0.6))
    old = feed.as_of(ds, cut)
    assert 0 < len(old.likes) < len(ds.likes) and 0 < len(old.posts) < len(ds.posts)
    assert (old.posts["created_at"] < cut).all()
    for name in ("likes", "purchases", "clicks", "follows"):
        table = getattr(old, name)
        assert not (table["ts"] >= cut).any(), name
        assert old.counts[name] == len(table)
    assert set(old.likes["post_id"]) <= set(old.posts["post_id"])
    assert old.path is None and len(feed.as_of(ds, "2000-01-01T00:00:00Z").likes) == 0


def test_evaluate_at_k(dataset_dir: Path) -> None:
    reports = feed.evaluate_at_k(dataset_dir, (5, 10), models=["most-popular", "itemknn"])
    assert sorted(reports) == [5, 10]
    frame = feed.metrics_frame(reports)
    assert sorted(zip(frame["model"], frame["k"], strict=True)) == [
        ("itemknn", 5),
        ("itemknn", 10),
        ("most-popular", 5),
        ("most-popular", 10),
    ]
    wide = frame.pivot(index="model", columns="k", values="like_recall")
    assert (wide[10] >= wide[5]).all()  # a longer list finds at least as much
    with pytest.raises(ValueError, match="ks"):
        feed.evaluate_at_k(dataset_dir, ())


def test_inspect_user_shows_what_the_service_serves_and_records_nothing(
    r: Any, published: str, client: Any, dataset_dir: Path
) -> None:
    ds = feed.load(dataset_dir)
    user = str(ds.likes["user_id"].value_counts().index[0])
    view = nb.inspect_user(r, user, dataset=ds, limit=8)
    served = client.get(f"/v1/feed/{user}?preview=1&limit=8").get_json()
    assert list(view.page["post_id"]) == [it["post_id"] for it in served["items"]]
    assert list(view.page["reason"]) == [it["reason"] for it in served["items"]]
    assert view.version == view.live == published and view.page["text"].notna().all()
    assert not r.exists(c.user_key(user, "seen")), "an inspection must not mark posts as seen"

    liked = set(ds.likes.loc[ds.likes["user_id"] == user, "post_id"])
    likes = view.history[view.history["kind"] == "like"]
    assert len(likes) > 0 and set(likes["post_id"]) <= liked
    assert likes["text"].notna().all() and likes["ts"].is_monotonic_decreasing

    assert set(view.history["source"]) == {"dataset"}  # Redis was seeded from the same data
    post = view.page["post_id"].iloc[0]
    event = {"type": "like", "user_id": user, "post_id": post}
    assert client.post("/v1/events", json={"events": [event]}).status_code == 202
    latest = nb.inspect_user(r, user, dataset=ds).history.iloc[0]
    assert (latest["kind"], latest["post_id"], latest["source"]) == ("like", post, "redis")

    other = nb.inspect_user(feed.url_of(r), user, version=published, limit=3)
    assert len(other.page) == 3 and set(other.history["source"]) <= {"redis"}
    with pytest.raises(feed.versions.VersionError, match="not published"):
        nb.inspect_user(r, user, version="20990101T000000-abcdef")


def test_pages_of_many_users(r: Any, published: str, dataset_dir: Path) -> None:
    ds = feed.load(dataset_dir)
    users = list(ds.likes["user_id"].unique()[:5])
    frame = nb.pages(r, users, limit=6)
    assert list(frame["user_id"].unique()) == users
    assert (frame.groupby("user_id").size() == 6).all()
    assert set(frame["version"]) == {published}
    assert set(frame["source"]) <= set(c.REASONS)


def _second_version(r: Any, dataset_dir: Path, tmp_path: Path) -> str:
    from tools.simulate import weak_config

    cfg = weak_config(feed.TrainConfig(factors=8, iterations=2, n_candidates=30))
    return str(feed.publish_version(r, feed.train_version(dataset_dir, tmp_path, cfg)).version)


def test_promote_keeps_control_without_evidence_or_takes_the_named_arm(
    r: Any, published: str, dataset_dir: Path, tmp_path: Path
) -> None:
    other = _second_version(r, dataset_dir, tmp_path)
    arms = [
        {"name": "control", "version": published, "weight": 50},
        {"name": "treatment", "version": other, "weight": 50},
    ]
    feed.experiments.create(r, "no-traffic", arms)
    out = feed.promote(r, "no-traffic")
    assert out["arm"] == "control" and out["live"] == out["previous"] == published
    assert feed.experiments.get(r, "no-traffic")["status"] == "stopped"

    feed.experiments.create(r, "by-hand", arms)
    out = feed.promote(r, "by-hand", arm="treatment")
    assert out["live"] == other and feed.versions.live_version(r) == other
    with pytest.raises(feed.experiments.ExperimentError, match="no arm 'x'"):
        feed.promote(r, "by-hand", arm="x")


def test_report_frame_has_every_arm_and_metric() -> None:
    rep = {
        "arms": [
            {
                "arm": "control",
                "version": "a",
                "users": 10,
                "vs_control": None,
                "metrics": {
                    "clicks_per_user": {"value": 1.0, "ci": [0.8, 1.2]},
                    "purchase_conversion": {"value": 0.1, "ci": None},
                },
            },
            {
                "arm": "treatment",
                "version": "b",
                "users": 12,
                "vs_control": {
                    "clicks_per_user": {
                        "diff": 0.5,
                        "diff_ci": [0.1, 0.9],
                        "lift": 0.5,
                        "p_value": 0.01,
                    }
                },
                "metrics": {
                    "clicks_per_user": {"value": 1.5, "ci": [1.2, 1.8]},
                    "purchase_conversion": {"value": 0.2, "ci": [0.1, 0.3]},
                },
            },
        ]
    }
    frame = feed.report_frame(rep).set_index(["arm", "metric"])
    assert len(frame) == 4
    assert frame.loc[("treatment", "clicks_per_user"), "diff_ci_high"] == 0.9
    assert frame.loc[("control", "purchase_conversion")].isna()["ci_low"]
