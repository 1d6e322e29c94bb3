"""Experiments: assignment, bucket moves, routing through the feed, attribution, report maths,
and switching versions and experiments under load without a failed request."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from feed import experiments as ex
from feed import versions as reg


def weak_artifact_path(dataset_dir: Path, factory: pytest.TempPathFactory) -> Path:
    """The popularity-only version, trained once per session (shared by the A/B test modules)."""
    from feed.train import TrainConfig, train
    from tools.simulate import weak_config

    out = factory.getbasetemp() / "weak-artifact"
    done = sorted(out.glob("*/manifest.json"))
    if done:
        return done[0].parent
    return train(
        dataset_dir, out, weak_config(TrainConfig(factors=16, iterations=8, n_candidates=100))
    )


@pytest.fixture(scope="session")
def weak_artifact(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return weak_artifact_path(dataset_dir, tmp_path_factory)


@pytest.fixture
def weak(r: Any, weak_artifact: Path, published: str) -> str:
    """The weak version, published (not live) next to the live ``published`` one."""
    from feed.publish import publish

    return publish(r, weak_artifact).version


def arms(control: str, treatment: str, wc: float, wt: float) -> list[dict[str, Any]]:
    return [
        {"name": "control", "version": control, "weight": wc},
        {"name": "treatment", "version": treatment, "weight": wt},
    ]


def users_in(exp: ex.Experiment, arm: str, n: int, prefix: str = "u") -> list[str]:
    out = [
        f"{prefix}{i}"
        for i in range(10_000)
        if (a := exp.arm_for(f"{prefix}{i}")) is not None and a.name == arm
    ]
    return out[:n]


def feed(client: Any, user: str, **params: Any) -> dict[str, Any]:
    resp = client.get(f"/v1/feed/{user}", query_string=params)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def events(client: Any, *evs: dict[str, Any]) -> None:
    resp = client.post("/v1/events", json={"events": list(evs)})
    assert resp.status_code == 202, resp.get_json()


# --- assignment ------------------------------------------------------------------------------
def test_assignment_is_sticky_and_matches_the_weights() -> None:
    cfg = ex.new_config("e1", arms("v1", "v2", 90, 10), salt="salt-1")
    a, b = ex.Experiment.from_config(cfg), ex.Experiment.from_config(dict(cfg))  # two replicas
    users = [f"user-{i}" for i in range(20_000)]
    got = [a.arm_for(u).name for u in users]  # type: ignore[union-attr]
    assert got == [b.arm_for(u).name for u in users]  # type: ignore[union-attr]
    assert got == [a.arm_for(u).name for u in users]  # type: ignore[union-attr]
    share = got.count("treatment") / len(users)
    sigma = math.sqrt(0.1 * 0.9 / len(users))
    assert abs(share - 0.10) < 4 * sigma, share
    other = ex.Experiment.from_config(ex.new_config("e2", arms("v1", "v2", 90, 10)))
    same = sum(g == other.arm_for(u).name for g, u in zip(got, users, strict=True))  # type: ignore[union-attr]
    assert same < 0.9 * len(users)  # another salt shuffles users independently


def test_weight_changes_move_only_the_users_they_must() -> None:
    users = [f"u{i}" for i in range(20_000)]
    cfg = ex.new_config("e", arms("v1", "v2", 90, 10))
    before = ex.Experiment.from_config(cfg)
    cfg = {**cfg, "arms": ex.reallocate(cfg["arms"], arms("v1", "v2", 80, 20))}
    after = ex.Experiment.from_config(cfg)
    moves = [(before.arm_for(u).name, after.arm_for(u).name) for u in users]  # type: ignore[union-attr]
    assert ("treatment", "control") not in moves  # the growing arm keeps every user
    moved = sum(a != b for a, b in moves) / len(users)
    assert abs(moved - 0.10) < 4 * math.sqrt(0.09 / len(users)), moved

    three = ex.reallocate(
        cfg["arms"],
        [
            {"name": "control", "version": "v1", "weight": 70},
            {"name": "treatment", "version": "v2", "weight": 20},
            {"name": "b", "version": "v3", "weight": 10},
        ],
    )
    assert three[1]["buckets"] == cfg["arms"][1]["buckets"]  # unchanged arm: nobody moves


def test_reallocation_invariants_over_random_weight_sequences() -> None:
    rng = random.Random(1)
    old: list[dict[str, Any]] | None = None
    old_owner: list[str] = []
    for _ in range(200):
        names = rng.sample(["a", "b", "c", "d", "e"], rng.randint(2, 5))
        cuts = sorted(rng.sample(range(1, 100), len(names) - 1))
        weights = [hi - lo for lo, hi in zip([0, *cuts], [*cuts, 100], strict=True)]
        new = ex.reallocate(
            old,
            [{"name": n, "version": "v", "weight": w} for n, w in zip(names, weights, strict=True)],
        )
        owner = [""] * ex.N_BUCKETS
        for arm in new:
            assert sum(hi - lo for lo, hi in arm["buckets"]) == arm["weight"] * 100
            for lo, hi in arm["buckets"]:
                for i in range(lo, hi):
                    assert owner[i] == ""
                    owner[i] = arm["name"]
        assert "" not in owner  # the arms partition the buckets
        if old is not None:
            prev = {a["name"]: sum(hi - lo for lo, hi in a["buckets"]) for a in old}
            moved = sum(owner[i] != old_owner[i] for i in range(ex.N_BUCKETS))
            need = sum(max(0, a["weight"] * 100 - prev.get(a["name"], 0)) for a in new)
            assert moved == need  # the minimum the new weights require
        old, old_owner = new, owner


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"weights": (90, 20)}, "sum to 110, not 100"),
        ({"weights": (90.005, 9.995)}, "more than two decimals"),
        ({"weights": (-10, 110)}, "weight must be a number >= 0"),
        ({"names": ("control", "control")}, "appears twice"),
        ({"treatment": "no-such-version"}, "unknown version 'no-such-version'"),
    ],
)
def test_create_names_what_is_wrong(
    r: Any, published: str, spec: dict[str, Any], message: str
) -> None:
    wc, wt = spec.get("weights", (50, 50))
    a = arms(published, spec.get("treatment", published), wc, wt)
    for arm, name in zip(a, spec.get("names", ("control", "treatment")), strict=True):
        arm["name"] = name
    with pytest.raises(ex.ExperimentError, match=message):
        ex.create(r, "bad", a)


def test_lifecycle_and_conflicts(r: Any, published: str) -> None:
    with pytest.raises(ex.ExperimentError, match="at least two arms"):
        ex.create(r, "one", arms(published, published, 100, 0)[:1])
    cfg = ex.create(r, "first", arms(published, published, 50, 50))
    assert cfg["status"] == "running" and cfg["salt"] == "first" and cfg["control"] == "control"
    with pytest.raises(ex.ExperimentConflict, match="'first' is running; stop it first"):
        ex.create(r, "second", arms(published, published, 50, 50))
    with pytest.raises(ex.ExperimentConflict, match="already exists"):
        ex.create(r, "first", arms(published, published, 50, 50))
    assert reg.versions_in_experiments(r) == {published: ["first", "first"]}
    updated = ex.update(r, "first", [ex.parse_arm("control:30"), ex.parse_arm("treatment:70")])
    assert [a["weight"] for a in updated["arms"]] == [30, 70]
    assert ex.running(r).name == "first"  # type: ignore[union-attr]
    ex.stop(r, "first")
    assert ex.running(r) is None
    with pytest.raises(ex.ExperimentConflict, match="is stopped"):
        ex.update(r, "first", arms(published, published, 50, 50))
    with pytest.raises(ex.UnknownExperiment, match="unknown experiment 'nope'"):
        ex.get(r, "nope")
    assert ex.create(r, "second", arms(published, published, 50, 50))["status"] == "running"


# --- routing through the feed ----------------------------------------------------------------
def test_feed_routes_each_user_to_its_arm(r: Any, client: Any, published: str, weak: str) -> None:
    ex.create(r, "route", arms(weak, published, 50, 50))
    exp = ex.running(r)
    assert exp is not None
    for user in users_in(exp, "control", 3) + users_in(exp, "treatment", 3):
        arm = exp.arm_for(user)
        assert arm is not None
        for _ in range(2):  # sticky across requests
            body = feed(client, user, limit=3)
            assert (body["experiment"], body["arm"], body["model_version"]) == (
                "route",
                arm.name,
                arm.version,
            )
    stream = r.xrange("{feed}:exposures")
    assert len(stream) == 12
    assert {f[b"experiment"] for _, f in stream} == {b"route"}

    # a cursor keeps the scroll on its version; the response reports the user's current arm
    user = users_in(exp, "control", 1)[0]
    first = feed(client, user, limit=3)
    ex.update(r, "route", arms(weak, published, 0, 100))
    second = feed(client, user, limit=3, cursor=first["next_cursor"])
    assert (second["model_version"], second["arm"]) == (weak, "treatment")
    assert feed(client, user, limit=3)["model_version"] == published

    ex.stop(r, "route")
    body = feed(client, user, limit=3)
    assert (body["experiment"], body["arm"], body["model_version"]) == (None, None, published)


# --- attribution and the report --------------------------------------------------------------
def test_report_matches_hand_counts(r: Any, client: Any, published: str, weak: str) -> None:
    from scipy import stats

    cfg = ex.create(r, "hand", arms(weak, published, 50, 50), salt="hand-salt")
    exp = ex.Experiment.from_config(cfg)
    c1, c2, c3 = users_in(exp, "control", 3)
    t1, t2 = users_in(exp, "treatment", 2)
    p = {u: feed(client, u, limit=n) for u, n in ((c1, 5), (c2, 5), (c3, 3), (t1, 5), (t2, 4))}
    c1b = feed(client, c1, limit=5, cursor=p[c1]["next_cursor"])

    def ev(
        kind: str, user: str, page: dict[str, Any] | None, i: int = 0, **extra: Any
    ) -> dict[str, Any]:
        post = (page or p[user])["items"][i]
        out = {"type": kind, "user_id": user, "post_id": post["post_id"], **extra}
        if kind == "purchase":
            out["product_id"] = "sku-any"
        if page is not None:
            out["request_id"] = page["request_id"]
        return out

    events(
        client,
        ev("click", c1, p[c1]),
        ev("click", c1, c1b),
        ev("like", c1, p[c1]),
        ev("purchase", c1, None),  # no request id: the user's arm at the time
        ev("click", c3, p[c3]),
        ev("click", t1, p[t1]),
        ev("click", t1, p[t1], 1),
        ev("click", t1, p[t1], 2),
        ev("like", t1, p[t1]),
        ev("like", t1, p[t1], 1),
        ev("purchase", t1, p[t1]),
        ev("click", t2, None),
        ev("click", c2, None, ts=time.time() - 3600),  # before c2 was exposed: not counted
        {"type": "click", "user_id": "never-exposed", "post_id": "p1"},  # not counted
        {"type": "follow", "user_id": c1, "author_id": "u9"},
    )  # not a report event
    rep = ex.report(r, "hand")
    by = {a["arm"]: a for a in rep["arms"]}
    n = {u: len(page["items"]) for u, page in p.items()}
    assert {
        k: by["control"][k]
        for k in ("users", "pages", "impressions", "clicks", "likes", "purchases")
    } == {
        "users": 3,
        "pages": 4,
        "impressions": n[c1] + len(c1b["items"]) + n[c2] + n[c3],
        "clicks": 3,
        "likes": 1,
        "purchases": 1,
    }
    assert {
        k: by["treatment"][k]
        for k in ("users", "pages", "impressions", "clicks", "likes", "purchases")
    } == {
        "users": 2,
        "pages": 2,
        "impressions": n[t1] + n[t2],
        "clicks": 4,
        "likes": 2,
        "purchases": 1,
    }
    assert rep["unattributed_events"] == 2

    m = by["control"]["metrics"]
    assert m["clicks_per_user"]["value"] == pytest.approx(1.0)  # clicks per user [2, 0, 1]
    half = ex.Z95 * math.sqrt(1.0 / 3)  # sample variance 1
    assert m["clicks_per_user"]["ci"] == pytest.approx([1 - half, 1 + half])
    assert m["purchase_conversion"]["value"] == pytest.approx(1 / 3)
    vs = by["treatment"]["vs_control"]
    welch = stats.ttest_ind([3, 1], [2, 0, 1], equal_var=False)
    assert vs["clicks_per_user"]["diff"] == pytest.approx(1.0)
    assert vs["clicks_per_user"]["lift"] == pytest.approx(1.0)
    half = ex.Z95 * math.sqrt(2 / (2 * 1**2) + 2**2 * 1 / (3 * 1**4))  # delta method
    assert vs["clicks_per_user"]["lift_ci"] == pytest.approx([1 - half, 1 + half])
    assert vs["clicks_per_user"]["p_value"] == pytest.approx(welch.pvalue, rel=1e-9)
    pooled = 2 / 5
    z = (1 / 2 - 1 / 3) / math.sqrt(pooled * (1 - pooled) * (1 / 3 + 1 / 2))
    assert vs["purchase_conversion"]["p_value"] == pytest.approx(2 * stats.norm.sf(z))
    assert vs["purchase_conversion"]["lift"] == pytest.approx(0.5)
    assert rep["srm"]["observed"] == {"control": 3, "treatment": 2}
    assert rep["srm"]["p_value"] == pytest.approx(stats.chi2.sf(0.2, 1))
    assert rep["srm"]["mismatch"] is False


def test_request_id_beats_the_timeline(r: Any, client: Any, published: str, weak: str) -> None:
    """A page's events stay with the page's arm after the user moved to another arm."""
    exp = ex.Experiment.from_config(ex.create(r, "move", arms(weak, published, 50, 50)))
    user = users_in(exp, "treatment", 1)[0]
    page_a = feed(client, user, limit=2)
    ex.update(r, "move", arms(weak, published, 100, 0))
    page_b = feed(client, user, limit=2)
    assert (page_a["arm"], page_b["arm"]) == ("treatment", "control")
    post = page_a["items"][0]["post_id"]
    events(
        client,
        {"type": "click", "user_id": user, "post_id": post, "request_id": page_a["request_id"]},
        {"type": "click", "user_id": user, "post_id": post},
        {"type": "like", "user_id": user, "post_id": post, "request_id": page_b["request_id"]},
    )
    by = {a["arm"]: a for a in ex.report(r, "move")["arms"]}
    assert (by["treatment"]["clicks"], by["treatment"]["likes"]) == (1, 0)
    assert (by["control"]["clicks"], by["control"]["likes"]) == (1, 1)


def test_statistics_match_scipy() -> None:
    from scipy import stats

    rng = random.Random(0)
    x = [rng.expovariate(1.0) for _ in range(80)]
    y = [rng.expovariate(0.8) for _ in range(60)]
    res = ex.welch(x, y)
    assert res["p_value"] == pytest.approx(stats.ttest_ind(y, x, equal_var=False).pvalue, rel=1e-9)
    assert res["diff"] == pytest.approx(sum(y) / len(y) - sum(x) / len(x))
    ci = stats.binomtest(7, 40).proportion_ci(confidence_level=0.95, method="wilson")
    assert ex.wilson(7, 40) == pytest.approx([ci.low, ci.high], rel=1e-9)
    z = (30 / 200 - 20 / 200) / math.sqrt(0.125 * 0.875 * (2 / 200))
    assert ex.two_proportions(20, 200, 30, 200)["p_value"] == pytest.approx(2 * stats.norm.sf(z))
    check = ex.srm({"a": 530, "b": 470}, {"a": 50, "b": 50})
    assert check["p_value"] == pytest.approx(stats.chisquare([530, 470]).pvalue, rel=1e-9)
    assert ex.srm({"a": 600, "b": 400}, {"a": 50, "b": 50})["mismatch"] is True
    assert ex.srm({"a": 905, "b": 95}, {"a": 90, "b": 10})["mismatch"] is False
    assert ex.srm({"a": 5, "b": 5, "c": 1}, {"a": 50, "b": 50, "c": 0})["p_value"] == 0.0


def test_lift_interval_covers_the_true_lift() -> None:
    """The delta-method interval of ``m_t / m_c - 1`` covers the true lift about 95% of the
    time; ignoring the control's variance gives a narrower interval that covers it less."""
    rng = random.Random(7)
    true_lift, n, reps = 0.2, 300, 200
    covered = naive_covered = 0
    for _ in range(reps):
        x = [rng.expovariate(1.0) for _ in range(n)]  # control: mean 1, variance 1
        y = [rng.expovariate(1 / 1.2) for _ in range(n)]  # treatment: mean 1.2, variance 1.44
        (mx, vx), (my, vy) = ex.mean_var(x), ex.mean_var(y)
        lo, hi = ex.lift_ci(mx, vx, n, my, vy, n)  # type: ignore[misc]
        half = ex.Z95 * math.sqrt(vy / (n * mx**2))  # the treatment's variance only
        assert hi - lo > 2 * half
        assert lo < my / mx - 1 < hi
        covered += lo <= true_lift <= hi
        naive_covered += abs(my / mx - 1 - true_lift) <= half
    assert 0.90 <= covered / reps <= 0.99, covered
    assert naive_covered < covered
    assert ex.lift_ci(0.0, 0.0, n, 1.0, 1.0, n) is None  # no lift over a zero control
    assert ex.lift_ci(1.0, 1.0, 0, 1.0, 1.0, n) is None


# --- promotion -------------------------------------------------------------------------------
def _clear_winner(r: Any, client: Any, published: str, weak: str) -> dict[str, Any]:
    """An experiment (control: the live version, treatment: weak) whose treatment users click
    2 or 3 items of their page (2.5 per user) and control users 0 or 1 (0.5 per user)."""
    cfg = ex.create(r, "promo", arms(published, weak, 50, 50))
    exp = ex.Experiment.from_config(cfg)
    for arm, base in (("treatment", 2), ("control", 0)):
        for i, user in enumerate(users_in(exp, arm, 8)):
            page = feed(client, user, limit=3)
            clicks = [
                {"type": "click", "user_id": user, "post_id": item["post_id"]}
                for item in page["items"][: base + i % 2]
            ]
            if clicks:
                events(client, *[{**e, "request_id": page["request_id"]} for e in clicks])
    return cfg


def test_promote_activates_the_winner_then_stops(
    r: Any, client: Any, published: str, weak: str
) -> None:
    _clear_winner(r, client, published, weak)
    out = ex.promote(r, "promo")
    assert (out["arm"], out["version"], out["metric"]) == ("treatment", weak, "clicks_per_user")
    assert out["lift"] == pytest.approx(4.0)  # 2.5 clicks per user against 0.5
    assert out["p_value"] < 0.05 and out["experiment"] == "promo"
    assert (out["live"], out["previous"]) == (weak, published)
    assert reg.live_version(r) == weak
    assert ex.get(r, "promo")["status"] == ex.STATUS_STOPPED and ex.running(r) is None


@pytest.mark.parametrize("breakage", ["not-ready", "meta-removed"])
def test_promote_changes_nothing_when_activation_fails(
    r: Any, published: str, weak: str, breakage: str
) -> None:
    from feed import contract as c

    before = ex.create(r, "promo", arms(published, weak, 50, 50))
    if breakage == "not-ready":
        reg.set_meta(r, weak, {**reg.get_meta(r, weak), "state": c.STATE_PUBLISHING})  # type: ignore[dict-item]
    else:
        r.hdel(c.VERSIONS_KEY, weak)
    with pytest.raises(reg.VersionError, match=weak):
        ex.promote(r, "promo", arm="treatment")
    assert ex.get(r, "promo") == before  # still running, weights and buckets untouched
    assert ex.running(r).name == "promo"  # type: ignore[union-attr]
    assert reg.live_version(r) == published


def test_ab_promote_cli(runner: Any, r: Any, published: str, weak: str) -> None:
    from feed import contract as c
    from feed.cli import main

    def run(*args: str, code: int = 0) -> str:
        res = runner.invoke(main, ["ab", "promote", *args])
        assert res.exit_code == code, res.output
        return str(res.output)

    assert "Example:" in run("--help")
    assert "unknown experiment 'nope'" in run("nope", code=1)
    ex.create(r, "promo", arms(published, weak, 50, 50))
    assert "has no arm 'x'" in run("promo", "--arm", "x", code=1)
    meta = reg.get_meta(r, weak)
    r.hdel(c.VERSIONS_KEY, weak)
    assert f"unknown version '{weak}'" in run("promo", "--arm", "treatment", code=1)
    assert ex.get(r, "promo")["status"] == ex.STATUS_RUNNING
    reg.set_meta(r, weak, meta)  # type: ignore[arg-type]
    out = json.loads(run("promo", "--arm", "treatment", "--metric", "likes_per_user"))
    assert (out["arm"], out["live"], out["previous"]) == ("treatment", weak, published)
    assert out["metric"] == "likes_per_user" and out["why"] == "chosen by hand"
    assert ex.get(r, "promo")["status"] == ex.STATUS_STOPPED


# --- live switches under load ----------------------------------------------------------------
def test_switches_under_load_fail_no_request(
    r: Any, redis_url: str, published: str, weak: str
) -> None:
    """Versions and experiments change while a thread keeps scrolling; nothing fails, and each
    change shows up within the cache time, without restarting the app."""
    from service import create_app

    app = create_app(
        {
            "REDIS_URL": redis_url,
            "TESTING": True,
            "VERSION_CACHE_S": 0.05,
            "GLOBAL_CACHE_S": 0.05,
            "CURSOR_SECRET": "s",
            "REDIS_SOCKET_TIMEOUT": 5.0,  # the machine may be busy: this test is not about timeouts
        }
    )
    seen: list[tuple[int, str | None, str | None]] = []
    failures: list[Any] = []
    stop = threading.Event()

    def scroll() -> None:
        client = app.test_client()
        i = 0
        try:
            while not stop.is_set():
                i += 1
                resp = client.get(f"/v1/feed/u{i % 50}", query_string={"limit": 5})
                body = resp.get_json() or {}
                seen.append((resp.status_code, body.get("model_version"), body.get("arm")))
                if resp.status_code != 200:
                    failures.append(body)
                elif body.get("next_cursor"):
                    params = {"limit": 5, "cursor": body["next_cursor"]}
                    resp = client.get(f"/v1/feed/u{i % 50}", query_string=params)
                    seen.append((resp.status_code, None, None))
                    if resp.status_code != 200:
                        failures.append(resp.get_json())
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            failures.append(repr(e))

    def wait_for(check: Any) -> None:
        start = len(seen)
        deadline = time.monotonic() + 30
        while not any(check(v, a) for _, v, a in seen[start:]):
            assert time.monotonic() < deadline and thread.is_alive(), (seen[start:][-5:], failures)
            time.sleep(0.02)

    thread = threading.Thread(target=scroll, daemon=True)
    thread.start()
    try:
        wait_for(lambda v, a: v == published)
        reg.activate(r, weak)
        wait_for(lambda v, a: v == weak)
        ex.create(r, "live", arms(weak, published, 50, 50))
        wait_for(lambda v, a: a == "treatment")
        ex.update(r, "live", arms(weak, published, 10, 90))
        ex.stop(r, "live")
        wait_for(lambda v, a: a is None and v == weak)
        reg.rollback(r)
        wait_for(lambda v, a: v == published)
    finally:
        stop.set()
        thread.join(10)
    assert not failures, failures[:5]
    assert len(seen) > 20 and all(status == 200 for status, _, _ in seen)
