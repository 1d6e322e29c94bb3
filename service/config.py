"""Service configuration: defaults, then ``FEED_*`` environment variables, then test config."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from typing import Any

from feed.serving.groups import GROUP_FEED_MAX
from feed.serving.policy import PagePolicy
from feed.serving.ranking import RANKING_SETTINGS

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
    (
        "USER_SET_MAX",
        5_000,
        "members of a user's hidden, muted, follows, unfollows and bought sets",
    ),
    ("RT_MAX", 300, "real-time candidates kept per user"),
    ("RT_NEIGHBOURS", 20, "neighbours of a liked post added to the user's real-time candidates"),
    ("FRESH_POSTS", 500, "newest posts created through the API offered to every page"),
    (
        "USER_STATE_TTL_S",
        30 * 86_400,
        "a user's likes, follows, hidden, muted, bought and real-time keys expire after this "
        "long without an event of theirs (give or take USER_RENEW_S; 0: never)",
    ),
    (
        "USER_RENEW_S",
        3_600,
        "a process renews a user's untouched real-time keys at most once this often (the keys "
        "an event writes are renewed every time), so their TTLs run from the last event within "
        "this lag; at most a tenth of USER_STATE_TTL_S and SEEN_WINDOW_S",
    ),
    ("FRESH_MAX_POSTS", 100_000, "posts created through the API kept (the oldest go first)"),
    (
        "FRESH_MAX_AGE_S",
        14 * 86_400,
        "an API post's document, card and metadata are removed this long after it was created "
        "(a trained version keeps its own copy)",
    ),
    (
        "STATELESS_MAX_PAGES",
        10,
        "pages of a scroll that records nothing (an unknown visitor, a preview, Redis full); "
        "page n ranks n pages again",
    ),
    (
        "CAMPAIGNS_LIVE_MAX",
        100,
        "scheduled or running sponsored campaigns over every merchant (each page's reservation "
        "script checks them all); a new one past it is a 409 too_many_live_campaigns",
    ),
    ("POST_TEXT_MAX", 5_000, "characters of a new post's text; longer is a 400"),
    ("POST_TITLE_MAX", 200, "characters of a new post's title; longer is a 400"),
    ("POST_TAGS_MAX", 30, "tags of a new post; more is a 400"),
    ("POST_TAG_MAX", 50, "characters of one tag; longer is a 400"),
    ("POST_PRODUCTS_MAX", 20, "products a new post links; more is a 400"),
    (
        "MODERATION_MAX",
        100_000,
        "posts hidden, deleted or edited through PATCH/DELETE /v1/posts kept (version-"
        "independent; an entry goes once no registered version and no API post has its post, "
        "pruned a few per moderation write); a new one past it is a 507 moderation_full",
    ),
    (
        "MODERATION_TOMBSTONE_S",
        30 * 86_400,
        "seconds a deleted post's id stays refused by POST /v1/posts after its moderation "
        "entry is pruned (a TTL'd tombstone key; 0: none)",
    ),
    (
        "API_PRODUCTS_MAX",
        10_000,
        "products in the live catalogue (PUT/POST /v1/products; after a change every process "
        "reads just the changed products); a new one past it is a 507 catalogue_full",
    ),
    ("PRODUCTS_PER_REQUEST", 1_000, "products in one POST /v1/products; more is a 400"),
    *RANKING_SETTINGS,  # how a page mixes its sources (feed.serving.ranking)
    # the page policy (docs/quality.md): unset, each field is the version's (chosen at training)
    ("AUTHOR_MAX_PER_PAGE", None, "hard cap per author beyond its catalogue share (0: none)"),
    ("PAGE_AUTHOR_DECAY", None, "an author's k-th repeat: score *= (1 - floor) * decay**k + floor"),
    ("PAGE_AUTHOR_FLOOR", None, "the author discount's floor (see PAGE_AUTHOR_DECAY)"),
    ("PAGE_CATEGORY_DECAY", None, "the same discount per repeated category"),
    ("PAGE_CATEGORY_FLOOR", None, "the category discount's floor"),
    ("PAGE_NO_ADJACENT_AUTHOR", None, "true: never one author twice in a row (when avoidable)"),
    ("LIKES_MAX", 1_000, "likes since training kept per user (older ones stop steering the feed)"),
    ("RT_FOLLOW_POSTS", 20, "newest posts of a just-followed author added to real-time candidates"),
    ("INTEREST_MAX_TERMS", 10, "interests= terms used; more are a 400"),
    ("PAGE_REPLAY_TTL_S", 900, "a cursor retried within this time returns the same page again"),
    ("GIFT_DEFAULT_LIMIT", 10, "gift ideas per request when limit= is absent"),
    ("GIFT_POSTS_PER_PRODUCT", 3, "posts shown with each gift idea"),
    ("GIFT_MAX_PER_CATEGORY", 3, "at most this many gift ideas of one category"),
    ("GIFT_LIKED_WEIGHT", 1.5, "a post the friend liked since training (vs candidate scores <= 1)"),
    ("GROUP_SIZE_MAX", 50, "members a group-buy may need (the initiator included); more is a 400"),
    ("GROUP_TTL_DEFAULT_S", 86_400, "a group-buy's time to fill up when ttl_s is absent"),
    ("GROUP_TTL_MAX_S", 7 * 86_400, "longest ttl_s of a group-buy; longer is a 400"),
    (
        "GROUP_KEEP_S",
        7 * 86_400,
        "a group-buy's state is kept this long after its expires_at, then its keys expire "
        "(its id may then be used again)",
    ),
    ("GROUP_OPEN_MAX", 20, "open group-buys one initiator may have; one more is a 409"),
    ("USER_GROUPS_MAX", 100, "groups kept in a user's index of groups started or joined"),
    (
        "GROUP_FEED_MAX",
        GROUP_FEED_MAX,
        "friends' open group-buys kept per user for GET /v1/users/<id>/groups (fan-out on "
        "start to the initiator's published ties; newest kept)",
    ),
    (
        "GROUPS_READ",
        10,
        "friends' open group-buys (soonest to expire first) read with each feed page to mark "
        "its items' `group` (at most FEED_GROUP_FEED_MAX; 0: no item carries a group)",
    ),
    ("VERSION_CACHE_S", 1.0, "how long the live version / experiments are cached in process"),
    ("GLOBAL_CACHE_S", 2.0, "fresh posts and out-of-stock set"),
    (
        "EVENT_LOG_MAXLEN",
        1_000_000,
        "entries the event stream keeps: beyond it the exported ones are trimmed, never an "
        "entry `feed events export` has not exported (below FEED_EVENT_LOG_HARD_MAX)",
    ),
    (
        "EVENT_LOG_HARD_MAX",
        5_000_000,
        "hard cap of the event stream (memory): beyond it the oldest entries go even when not "
        "exported, counted in feed_events_lost_unexported_total and logged as an error (0: none)",
    ),
    ("MAX_EVENTS_PER_REQUEST", 500, "events in one POST /v1/events; more is a 400"),
    ("MAX_CONTENT_LENGTH", 1_048_576, "bytes (1 MiB, nginx's 1m); larger bodies get 413"),
    ("CURSOR_SECRET", None, "HMAC key for cursors; random per process when unset"),
    ("CURSOR_TTL_S", 86_400, "a cursor older than this is a 400 (seconds)"),
    (
        "ADMIN_TOKEN",
        None,
        "bearer token (16+ characters) of /v1/admin/*, previews and viewer examples; "
        "the admin API is off (404) when unset",
    ),
    (
        "API_KEY",
        None,
        "X-API-Key (16+ characters) every route but /healthz, /readyz and the viewer page "
        "requires (docs/security.md); unset: no key",
    ),
    ("JSON_LOGS", True, "structured JSON logs on stderr (false: Flask's default logging)"),
    ("LOG_LEVEL", "INFO", "level of the service's loggers"),
)
DEFAULTS: dict[str, Any] = {name: default for name, default, _ in SETTINGS}

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Invalid configuration: the message names the variable."""


#: ``FEED_*`` names read outside :data:`SETTINGS` (refused, or the tests' and tools' own).
OTHER_ENV = (
    "FEED_DEBUG",
    "FEED_TEST_REDIS_URL",
    "FEED_NGINX",
    "FEED_CHROMIUM",
    "FEED_VIEWER_SCREENSHOT",
)
#: Settings that are booleans (``PAGE_NO_ADJACENT_AUTHOR`` may also be unset).
BOOLEANS = ("JSON_LOGS", "PAGE_NO_ADJACENT_AUTHOR")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
_warned: set[str] = set()


def parse_bool(key: str, raw: Any) -> bool:
    """A boolean setting's value; anything but the accepted words is a :class:`ConfigError`.

    >>> parse_bool("JSON_LOGS", "Off")
    False
    >>> parse_bool("JSON_LOGS", "flase")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    service.config.ConfigError: FEED_JSON_LOGS='flase' is not a boolean: use one of 1, true, ...
    """
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ConfigError(
        f"FEED_{key}={raw!r} is not a boolean: use one of {', '.join(TRUE_WORDS)} "
        f"(true) or {', '.join(FALSE_WORDS)} (false)"
    )


def check_environment(environ: Mapping[str, str]) -> list[str]:
    """Refuse a boolean ``FEED_*`` variable that is not one; warn (once per process and
    name) about ``FEED_*`` names no setting reads, with the closest known name. Returns the
    unknown names. ``create_app`` and gunicorn's master (``gunicorn.conf.py``) call it.
    """
    for key in BOOLEANS:
        if f"FEED_{key}" in environ:
            parse_bool(key, environ[f"FEED_{key}"])
    known = [f"FEED_{name}" for name, _, _ in SETTINGS] + list(OTHER_ENV)
    unknown = sorted(k for k in environ if k.startswith("FEED_") and k not in known)
    for name in unknown:
        if name not in _warned:
            _warned.add(name)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            logger.warning("unknown environment variable %s is ignored%s", name, hint)
    return unknown


def check(config: dict[str, Any]) -> None:
    """Coerce numeric settings (environment values arrive as strings) and validate them."""
    for key, default, _ in SETTINGS:
        if key in BOOLEANS:
            if default is not None or config.get(key) is not None:
                config[key] = parse_bool(key, config.get(key) or False)
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
    try:
        PagePolicy().overridden(config)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"a FEED_PAGE_* or FEED_AUTHOR_MAX_PER_PAGE setting is invalid: {e}"
        ) from e
    if 0 < config["EVENT_LOG_HARD_MAX"] < config["EVENT_LOG_MAXLEN"]:
        raise ConfigError("FEED_EVENT_LOG_HARD_MAX must be 0 (none) or >= FEED_EVENT_LOG_MAXLEN")
    if config["GROUPS_READ"] > config["GROUP_FEED_MAX"]:
        raise ConfigError("FEED_GROUPS_READ must be at most FEED_GROUP_FEED_MAX")
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
    check_secrets(config)


#: Shortest admin token and API key accepted at start.
MIN_SECRET_LENGTH = 16
_NEW_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check_secrets(config: dict[str, Any]) -> None:
    """Refuse guessable credentials: ``ADMIN_TOKEN`` and ``API_KEY``, when set, are at least
    :data:`MIN_SECRET_LENGTH` printable ASCII characters without spaces, and differ.

    >>> check_secrets({"ADMIN_TOKEN": "s3cret"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    service.config.ConfigError: FEED_ADMIN_TOKEN is 6 characters long; it must be at least 16 ...
    """
    for key in ("ADMIN_TOKEN", "API_KEY"):
        value = config.get(key)
        if value is None or value == "":
            config[key] = None  # an empty variable is unset, not a key anyone could send
            continue
        text = str(value)
        if not text.isascii() or not text.isprintable() or any(ch.isspace() for ch in text):
            raise ConfigError(
                f"FEED_{key} must be printable ASCII without spaces (make one with: {_NEW_SECRET})"
            )
        if len(text) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"FEED_{key} is {len(text)} characters long; it must be at least "
                f"{MIN_SECRET_LENGTH} (make one with: {_NEW_SECRET})"
            )
    if config["API_KEY"] is not None and config["API_KEY"] == config["ADMIN_TOKEN"]:
        raise ConfigError(
            "FEED_API_KEY and FEED_ADMIN_TOKEN must differ: app back-ends hold the API key, "
            "only operators the admin token"
        )


def reference() -> str:
    """The settings as a Markdown table (docs/configuration.md embeds it)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, help_text in SETTINGS:
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `FEED_{name}` | {shown} | {help_text} |")
    return "\n".join(rows) + "\n"
