"""``feed evaluate-groups``: the three group-buying tasks on held-out groups, with baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from feed.cli import main
from feed.evaluate_groups import TASKS, evaluate_groups

BASELINES = {
    "deals": {"popular", "itemitem", "als"},
    "invitees": {"co_members", "ties_first", "als"},
    "join": {"friends_first", "popular", "itemitem"},
}


def test_every_task_reports_every_baseline(dataset_dir: Path) -> None:
    report = evaluate_groups(dataset_dir, k=10, max_users=300)
    assert set(report.tasks) == set(TASKS) and report.held_groups > 0
    for name, task in report.tasks.items():
        assert set(task.metrics) == {"model"} | BASELINES[name]
        for m in task.metrics.values():
            assert 0.0 <= m["recall"] <= 1.0 and 0.0 <= m["ndcg"] <= 1.0
        assert task.best_baseline in BASELINES[name] and task.n > 0
        lo, hi = task.interval
        assert lo <= task.lift - 1 + 1e-9 <= hi + 1e-9 or task.lift == float("inf")
    # the planted structure is recovered: deals beat the most popular products, invitees
    # beat past co-members, friends' groups beat popular groups for joining
    deals = report.tasks["deals"].metrics
    assert deals["model"]["ndcg"] > 1.05 * deals["popular"]["ndcg"]
    inv = report.tasks["invitees"].metrics
    assert inv["model"]["recall"] > inv["co_members"]["recall"]
    join = report.tasks["join"].metrics
    assert join["model"]["ndcg"] > 2 * join["popular"]["ndcg"]
    assert report.blend["learned"] is True
    # the pair model (invitees, join) is learned on a validation slice and recorded
    assert report.blend["pair_learned"] is True
    assert set(report.blend["serve_params"]) == {"invite", "join"}
    assert report.blend["pair_validation"]["positives"] >= 10
    assert inv["model"]["ndcg"] > 0.9 * inv["ties_first"]["ndcg"]  # ~1.1x on 2000 users


def test_cli_prints_the_table_and_writes_json(
    runner: Any, dataset_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "groups.json"
    res = runner.invoke(
        main, ["evaluate-groups", str(dataset_dir), "--k", "5", "--max-users", "200",
               "--json", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "lift over" in res.output and "co_members" in res.output
    body = json.loads(out.read_text())
    assert set(body["tasks"]) == set(TASKS) and body["k"] == 5
    assert "meets_target" in body["tasks"]["join"]
    help_text = runner.invoke(main, ["evaluate-groups", "--help"]).output
    assert "Example:" in help_text


def test_a_dataset_without_groups_is_refused(runner: Any, tmp_path: Path) -> None:
    d = tmp_path / "nogroups"
    d.mkdir()
    (d / "posts.csv").write_text("post_id,author_id,created_at,text,product_ids\np1,a,,x,s1\n")
    (d / "likes.csv").write_text("user_id,post_id\nu1,p1\n")
    res = runner.invoke(main, ["evaluate-groups", str(d)])
    assert res.exit_code != 0 and "no groups" in res.output
