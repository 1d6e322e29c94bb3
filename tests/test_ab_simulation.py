"""Proof by simulation: users with planted tastes scroll through the HTTP API while an experiment
splits them between a normally trained version and a deliberately weak (popularity-only) one.
The report must find the strong arm significantly better, and a skewed assignment must trip the
sample-ratio check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import feed_app

from feed.publish import publish
from tools.simulate import Truth, ab_test


@pytest.fixture(scope="session")
def weak_artifact(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_experiments import weak_artifact_path

    return weak_artifact_path(dataset_dir, tmp_path_factory)


@pytest.mark.slow
def test_simulation_finds_the_better_arm_and_the_skew(
    r: Any, redis_url: str, published: str, weak_artifact: Path, dataset_dir: Path
) -> None:
    # A loaded CI machine can stall a command past the default 0.25 s: the page would then be a
    # degraded (trending) one and measure no model. A patient client keeps the arms honest.
    client = feed_app(redis_url, REDIS_SOCKET_TIMEOUT=10.0).test_client()
    weak = publish(r, weak_artifact).version
    truth = Truth.load(dataset_dir)

    stats, rep = ab_test(r, client, truth, weak, published, name="sim", seed=1, pages=2)
    assert stats.failed == 0 and stats.degraded == 0 and stats.users == len(truth.user_topics)
    by = {a["arm"]: a for a in rep["arms"]}
    assert by["control"]["version"] == weak and by["treatment"]["version"] == published
    assert by["control"]["users"] + by["treatment"]["users"] == stats.users
    vs = by["treatment"]["vs_control"]
    for metric in ("clicks_per_user", "likes_per_user"):
        assert vs[metric]["lift"] > 0.15, vs[metric]
        assert vs[metric]["p_value"] < 0.01, vs[metric]
        assert vs[metric]["diff_ci"][0] > 0
    assert rep["srm"]["mismatch"] is False, rep["srm"]

    stats, rep = ab_test(
        r, client, truth, weak, published, name="sim-skewed", seed=2, pages=1, lose_share=0.5
    )
    assert stats.skipped > 0 and stats.failed == 0 and stats.degraded == 0
    assert rep["srm"]["mismatch"] is True and rep["srm"]["p_value"] < 1e-3, rep["srm"]
