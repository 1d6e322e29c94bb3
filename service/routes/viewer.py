"""The feed viewer: a page that shows what any user gets, and compares two versions side by side.

``GET /viewer`` is a static page (``templates/viewer.html`` with ``static/viewer.js`` and
``static/viewer.css``); everything it shows comes from the public and admin HTTP API, called
from the browser:

- ``GET /v1/feed/<user>?preview=1`` for every feed column, so looking never changes a feed
  (no served set, no exposure); ``&version=V`` (admin token) for another version's feed;
- ``GET /v1/admin/versions``, ``/v1/admin/experiments`` and ``/v1/admin/users/<user>/history``
  for the version and arm selectors and the history panel (admin token);
- ``GET /v1/viewer/examples`` (below) for a few example users of the live version.

When the server has an admin token (``FEED_ADMIN_TOKEN``), previews and examples need it too:
they show other users' feeds; the page then asks for the token before it shows anything. With
``FEED_API_KEY`` set, the page and its static files still load without the key (they hold no
data) and the admin token opens the rest.

The admin token is typed into the page and kept in the tab's ``sessionStorage``; the server
never renders it, never sets a cookie, and the page reflects nothing from the query string
(``?user=`` and ``&compare=`` are read by the script). The page is served with a strict
Content-Security-Policy (scripts and styles from this origin only, no inline script) as a second
line of defence behind the script's use of ``textContent`` for every user-generated string.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, render_template

from service.request import (
    limit_arg,
    require_admin_if_set,
    resolve_version,
    store,
    version_table,
)

bp = Blueprint("viewer", __name__)

#: Example users returned by default and at most.
EXAMPLES_DEFAULT = 6
EXAMPLES_MAX = 20
#: Authors (of the live version's trending posts, in that order) checked for candidates.
EXAMPLES_POOL = 60

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@bp.get("/viewer")
def viewer() -> Response:
    """The viewer page. It is the same for everyone: no user data, no token, no reflection."""
    resp = Response(render_template("viewer.html"), mimetype="text/html")
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-store"
    return resp


def example_users(version: str, n: int) -> list[str]:
    """Up to ``n`` users with precomputed candidates in ``version``: the authors of its trending
    posts, most trending first, kept when their candidate key exists (one pipelined EXISTS per
    author, at most ``EXAMPLES_POOL``). Author ids are public already (every feed item names
    its author); that one is also a user with a feed is not, hence the admin token (when one is
    configured) on the route."""
    table = version_table(version)
    order = [table.authors[i] for i in table.trending.tolist()] + table.authors
    pool = list(dict.fromkeys(a for a in order if a))[:EXAMPLES_POOL]
    if not pool:
        return []
    found = store().have_candidates(version, pool)
    return [a for a, ok in zip(pool, found, strict=True) if ok][:n]


@bp.get("/v1/viewer/examples")
def examples() -> Any:
    """A few example users of the live version, for the viewer's user picker (the admin
    token when one is configured: they are ids of users with a feed)."""
    require_admin_if_set("/v1/viewer/examples")
    n = limit_arg(EXAMPLES_DEFAULT, EXAMPLES_MAX)
    version = resolve_version("", None).model_version
    return jsonify({"model_version": version, "users": example_users(version, n)})
