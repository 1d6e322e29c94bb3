"""Configuration: documented in full, coerced from the environment, checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import create_app
from service.config import SETTINGS, ConfigError, reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_setting_is_documented_with_its_default() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert reference() in text, "docs/configuration.md is stale: regenerate its table"
    for name, _, _ in SETTINGS:
        assert f"`FEED_{name}`" in text


def test_environment_values_are_coerced(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("FEED_MAX_LIMIT", "50")
    monkeypatch.setenv("FEED_RT_WEIGHT", "2.5")
    monkeypatch.setenv("FEED_JSON_LOGS", "false")
    app = create_app({"REDIS_URL": redis_url})
    assert app.config["MAX_LIMIT"] == 50 and app.config["RT_WEIGHT"] == 2.5
    assert app.config["JSON_LOGS"] is False


@pytest.mark.parametrize(
    ("name", "value"), [("SEEN_MAX", "-1"), ("RT_WEIGHT", "heavy"), ("DEFAULT_LIMIT", "500")]
)
def test_invalid_values_name_the_variable(redis_url: str, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"FEED_{name}"):
        create_app({"REDIS_URL": redis_url, name: value})
