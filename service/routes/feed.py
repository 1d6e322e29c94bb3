"""The feed: ``GET /v1/feed/<user_id>``."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint

from service import observability
from service.errors import is_full
from service.pages import degraded, feed_page, page_request
from service.request import check_id, require_admin_if_set, store

bp = Blueprint("api", __name__)


@bp.get("/v1/feed/<user_id>")
def get_feed(user_id: str) -> Any:
    """A ranked feed page (see DESIGN.md "one feed request").

    Two Redis round trips: one pipelined read of the user's keys, then one pipeline that reads
    the page's cards (MGET) and writes what the page changes (served set, exposure, the page
    kept for cursor retries); the version table, the live version and the global state come
    from in-process caches. A cursor pins the scroll to its
    version; the served set keeps every page of a scroll distinct, also when the version
    changes; the same cursor sent again within ``PAGE_REPLAY_TTL_S`` returns the same page.

    ``preview=1`` changes nothing (no served set, no exposure): for viewers and debugging.
    ``version=V`` (admin token required, preview only) ranks with another published version.
    When Redis is unreachable the page comes from an in-process copy of trending posts,
    marked ``degraded: true``.
    """
    check_id(user_id, "user_id")
    req = page_request(user_id)
    if req.preview:  # any user's feed, looked at without being them
        require_admin_if_set("preview=1")
    s = store()
    if not s.available():
        return degraded(req)
    try:
        return feed_page(req)
    except redis.RedisError as e:
        kind = "timeout" if isinstance(e, redis.TimeoutError) else type(e).__name__
        observability.REDIS_ERRORS.labels(kind).inc()
        if not is_full(e):  # a full Redis still answers: no breaker for the next requests
            s.mark_down()
        return degraded(req)
