"""Service configuration: defaults, then ``FEED_*`` environment variables, then test config."""

from __future__ import annotations

from typing import Any

SETTINGS: tuple[tuple[str, Any, str], ...] = (
    ("REDIS_URL", None, "None: `feed serve` starts a private server; the app itself requires it"),
    ("REDIS_SOCKET_TIMEOUT", 0.25, "seconds, every Redis command (one retry on top)"),
    ("REDIS_CONNECT_TIMEOUT", 0.25, "seconds to open a Redis connection"),
    ("REDIS_BREAKER_S", 1.0, "after a Redis error, answer degraded/503 at once for this long"),
    ("FALLBACK_SIZE", 100, "trending posts kept in process to serve degraded pages"),
    ("DEFAULT_LIMIT", 20, "items per page when limit= is absent"),
    ("MAX_LIMIT", 100, "largest limit= honoured (larger values are capped)"),
    ("SEEN_WINDOW_S", 3 * 86_400, "served/seen posts are not served again within this window"),
    ("SEEN_MAX", 2_000, "entries kept per user in the seen set"),
    ("RT_MAX", 300, "real-time candidates kept per user"),
    ("RT_NEIGHBOURS", 20, "neighbours of a liked post added to the user's real-time candidates"),
    ("RT_WEIGHT", 1.2, "real-time candidate scores (relative to precomputed ones in [0, 1])"),
    ("FOLLOW_WEIGHT", 1.0, "fresh posts of followed authors"),
    ("TRENDING_CANDIDATES", 100, "trending posts offered to every page as the fallback source"),
    ("TRENDING_WEIGHT", 0.15, "trending fallback"),
    ("FRESH_WEIGHT", 0.3, "posts created through the API, not followed"),
    ("FRESH_POSTS", 500, "newest posts created through the API offered to every page"),
    ("FRESHNESS_WEIGHT", 0.2, "bonus * 0.5 ** (age / half-life)"),
    ("FRESHNESS_HALF_LIFE_S", 3 * 86_400, "half-life of the freshness bonus, seconds"),
    ("AUTHOR_MAX_PER_PAGE", 2, "at most this many posts of one author on a page"),
    ("CATEGORY_DISCOUNT", 0.15, "score *= 1 - this, per earlier item of its category on a page"),
    ("DIVERSITY_POOL_FACTOR", 5, "a page is picked from the best limit * this (>= 50) candidates"),
    ("LIKES_MAX", 1_000, "likes since training kept per user (older ones stop steering the feed)"),
    ("RT_FOLLOW_POSTS", 20, "newest posts of a just-followed author added to real-time candidates"),
    ("INTEREST_WEIGHT", 0.8, "posts matching the interests= hint (categories or words)"),
    ("INTEREST_MAX_TERMS", 10, "interests= terms used; more are a 400"),
    ("INTEREST_POSTS_PER_TERM", 100, "matching posts taken per term, best first"),
    ("PAGE_REPLAY_TTL_S", 900, "a cursor retried within this time returns the same page again"),
    ("GIFT_DEFAULT_LIMIT", 10, "gift ideas per request when limit= is absent"),
    ("GIFT_POSTS_PER_PRODUCT", 3, "posts shown with each gift idea"),
    ("GIFT_MAX_PER_CATEGORY", 3, "at most this many gift ideas of one category"),
    ("GIFT_LIKED_WEIGHT", 1.5, "a post the friend liked since training (vs candidate scores <= 1)"),
    ("VERSION_CACHE_S", 1.0, "how long the live version / experiments are cached in process"),
    ("GLOBAL_CACHE_S", 2.0, "fresh posts and out-of-stock set"),
    ("EVENT_LOG_MAXLEN", 1_000_000, "approximate cap of the event stream"),
    ("MAX_EVENTS_PER_REQUEST", 500, "events in one POST /v1/events; more is a 400"),
    ("MAX_CONTENT_LENGTH", 1_000_000, "bytes; larger bodies get 413"),
    ("CURSOR_SECRET", None, "HMAC key for cursors; random per process when unset"),
    ("CURSOR_TTL_S", 86_400, "a cursor older than this is a 400 (seconds)"),
    ("ADMIN_TOKEN", None, "bearer token of /v1/admin/*; the admin API is off (404) when unset"),
    ("JSON_LOGS", True, "structured JSON logs on stderr (false: Flask's default logging)"),
    ("LOG_LEVEL", "INFO", "level of the service's loggers"),
)
DEFAULTS: dict[str, Any] = {name: default for name, default, _ in SETTINGS}


class ConfigError(ValueError):
    """Invalid configuration: the message names the variable."""


def check(config: dict[str, Any]) -> None:
    """Coerce numeric settings (environment values arrive as strings) and validate them."""
    for key, default, _ in SETTINGS:
        if isinstance(default, bool):
            config[key] = str(config.get(key)).lower() in ("1", "true", "yes", "on")
            continue
        if not isinstance(default, int | float):
            continue
        raw: Any = config.get(key)
        kind = type(default)
        try:
            value = kind(raw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"FEED_{key}={raw!r} is not a valid {kind.__name__}") from e
        if value < 0:
            raise ConfigError(f"FEED_{key}={raw!r} must not be negative")
        config[key] = value
    if not 1 <= config["DEFAULT_LIMIT"] <= config["MAX_LIMIT"]:
        raise ConfigError("FEED_DEFAULT_LIMIT must be between 1 and FEED_MAX_LIMIT")
    if str(config.get("DEBUG", "")).lower() in ("1", "true", "yes", "on"):
        raise ConfigError(
            "FEED_DEBUG is refused: Flask's debugger runs arbitrary code for "
            "anyone who can reach it; use FEED_LOG_LEVEL=DEBUG for more logs"
        )
    if not config.get("REDIS_URL"):
        raise ConfigError(
            "FEED_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0); "
            "`feed serve` starts a private server when it is unset"
        )


def reference() -> str:
    """The settings as a Markdown table (docs/configuration.md embeds it)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, help_text in SETTINGS:
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `FEED_{name}` | {shown} | {help_text} |")
    return "\n".join(rows) + "\n"
