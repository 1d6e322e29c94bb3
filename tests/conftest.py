"""Fixtures: a real Redis server (FEED_TEST_REDIS_URL, or a private one started here), a small
generated dataset trained once per session, and the Flask app/client/runner trio."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import feed_app, free_port

from feed import redisserver
from feed.redisclient import from_url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("FEED_TEST_REDIS_URL")
    if url:
        yield url
        return
    d = tmp_path_factory.mktemp("redis")
    url = redisserver.start(d, port=free_port(), persist=False)
    yield url
    redisserver.stop(d)


@pytest.fixture
def r(redis_url: str) -> Iterator[Any]:
    client = from_url(redis_url, socket_timeout=10.0)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from feed.data.synth import SynthConfig, generate

    d = tmp_path_factory.mktemp("data") / "small"
    generate(d, SynthConfig(n_users=400, n_posts=600, n_topics=6, seed=3))
    return d


@pytest.fixture(scope="session")
def artifact(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from feed.train import TrainConfig, train

    out = tmp_path_factory.mktemp("artifacts")
    return train(dataset_dir, out, TrainConfig(factors=16, iterations=8, n_candidates=100))


@pytest.fixture
def published(r: Any, artifact: Path) -> str:
    from feed.publish import publish

    return publish(r, artifact, activate=True).version


@pytest.fixture
def app(redis_url: str, published: str) -> Any:
    return feed_app(redis_url)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def runner(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FEED_REDIS_URL", redis_url)
    return CliRunner()
