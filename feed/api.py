"""The Python API: what a data scientist does from a notebook, and what the CLI calls.

``import feed`` is the one import needed; :mod:`feed` re-exports everything here lazily, next to
the functions of the other modules (``feed.load``, ``feed.generate``, ``feed.train``,
``feed.evaluate``, ``feed.publish``, ``feed.versions``, ``feed.experiments``). This module adds
what those do not: a Redis client resolved the way the CLI resolves it (:func:`connect`),
training data as of a past moment (:func:`as_of`), metrics at several list lengths
(:func:`evaluate_at_k`), what a user would see and why (:func:`inspect_user`, :func:`pages`),
the report of an experiment as a table (:func:`report_frame`), promoting an experiment's winner
(:func:`promote`), and the steps of ``feed demo`` (:func:`quickstart`).

Pages are ranked by the service's own code in process (``service.create_app`` and its test
client, with ``preview=1``: nothing is recorded as served), so what you inspect is what the
HTTP API would answer.

Examples
--------
>>> import feed
>>> feed.SynthConfig(n_users=50, n_posts=40).n_users
50
>>> feed.connect  # doctest: +ELLIPSIS
<function connect at ...>
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from feed import redisserver

if TYPE_CHECKING:
    import pandas as pd

    from feed.data import Dataset
    from feed.evaluate import EvalReport
    from feed.train import TrainConfig

logger = logging.getLogger(__name__)

ENV_URL = "FEED_REDIS_URL"
#: Timeouts of clients made by :func:`connect` (seconds): offline jobs wait longer than requests.
SOCKET_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0
#: Settings of the in-process service used to rank pages (no caching across calls).
_SERVICE_CONFIG = {
    "TESTING": True,
    "VERSION_CACHE_S": 0.0,
    "GLOBAL_CACHE_S": 0.0,
    "REDIS_SOCKET_TIMEOUT": 10.0,
    "REDIS_CONNECT_TIMEOUT": 5.0,
}


class RedisNotConfigured(RuntimeError):
    """No Redis URL was given, ``FEED_REDIS_URL`` is unset and no private server may start."""


# --- Redis -----------------------------------------------------------------------------------


def redis_url(
    url: str | None = None,
    *,
    start_private: bool = True,
    private_dir: str | Path = redisserver.DEFAULT_DIR,
) -> str:
    """The Redis URL to use: ``url``, else ``$FEED_REDIS_URL``, else a private server.

    Parameters
    ----------
    url : str, optional
        ``redis://``, ``rediss://``, ``unix://`` or ``redis+cluster://`` URL.
    start_private : bool
        Without a URL, start (or reuse) a private ``redis-server`` under ``private_dir``;
        when False, raise :class:`RedisNotConfigured` instead.
    private_dir : path
        Where the private server keeps its socket and data (``./.feed/redis`` by default).

    Returns
    -------
    str

    Examples
    --------
    >>> redis_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    """
    url = url or os.environ.get(ENV_URL)
    if url:
        return url
    if not start_private:
        raise RedisNotConfigured(f"set {ENV_URL} or pass a Redis URL")
    return redisserver.start(private_dir)


def connect(
    url: str | None = None,
    *,
    start_private: bool = True,
    private_dir: str | Path = redisserver.DEFAULT_DIR,
    socket_timeout: float = SOCKET_TIMEOUT_S,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> Any:
    """A Redis client for ``url``, else ``$FEED_REDIS_URL``, else the private server.

    The URL is resolved by :func:`redis_url`, with the same parameters.

    Returns
    -------
    redis.Redis or redis.cluster.RedisCluster
        Pooled and thread-safe, with the given timeouts and one retry.

    Examples
    --------
    >>> r = connect()  # doctest: +SKIP
    >>> feed.versions.live_version(r)  # doctest: +SKIP
    '20261124T201500-3f9a1c'
    """
    from feed.contract import connect as make_client

    resolved = redis_url(url, start_private=start_private, private_dir=private_dir)
    return make_client(resolved, socket_timeout=socket_timeout, connect_timeout=connect_timeout)


def url_of(client: Any) -> str:
    """The URL a redis-py client connects to (with its credentials), for :func:`connect`.

    Examples
    --------
    >>> import redis
    >>> url_of(redis.Redis.from_url("redis://:s3cret@10.0.0.5:6380/2"))
    'redis://:s3cret@10.0.0.5:6380/2'
    >>> url_of(redis.Redis.from_url("unix:///tmp/r.sock?db=1"))
    'unix:///tmp/r.sock?db=1'
    """
    from feed.contract import is_cluster

    if is_cluster(client):
        node = client.get_default_node()
        kw = client.nodes_manager.connection_kwargs
        scheme = "rediss+cluster" if kw.get("ssl") else "redis+cluster"
        return f"{scheme}://{_auth(kw)}{node.host}:{node.port}"
    kw = client.connection_pool.connection_kwargs
    if kw.get("path"):
        password = f"&password={quote(kw['password'], safe='')}" if kw.get("password") else ""
        return f"unix://{kw['path']}?db={kw.get('db', 0)}{password}"
    ssl = "SSL" in client.connection_pool.connection_class.__name__
    return (
        f"{'rediss' if ssl else 'redis'}://{_auth(kw)}{kw.get('host', 'localhost')}:"
        f"{kw.get('port', 6379)}/{kw.get('db', 0)}"
    )


def _auth(kw: Mapping[str, Any]) -> str:
    user, password = kw.get("username"), kw.get("password")
    if not user and not password:
        return ""
    return f"{quote(user or '', safe='')}:{quote(password or '', safe='')}@"


def _client_and_url(redis: Any) -> tuple[Any, str]:
    """(client, url) for a client, a URL, or None (``$FEED_REDIS_URL`` / private server)."""
    if redis is None or isinstance(redis, str):
        url = redis_url(redis)
        return connect(url), url
    return redis, url_of(redis)


# --- data ------------------------------------------------------------------------------------


def as_of(dataset: Dataset | str | Path, cut: float | str) -> Dataset:
    """The dataset as it was at ``cut``: only posts created and events timed before it.

    Likes, purchases, clicks, impressions and follows at or after ``cut`` are dropped, and so
    are posts created at or after it (with the events on them); rows without a time stay.
    Useful to rebuild a past version, or to see what retraining on fresh data adds.

    Parameters
    ----------
    dataset : Dataset or path
    cut : float or str
        Unix seconds, or an ISO-8601 time such as ``"2026-10-01T00:00:00Z"``.

    Returns
    -------
    Dataset
        A copy without a ``path`` (so its fingerprint hashes the tables).

    Examples
    --------
    >>> import tempfile, feed
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = feed.generate(d, feed.SynthConfig(n_users=60, n_posts=50, seed=1))
    ...     ds = feed.load(d)
    >>> old = as_of(ds, "2026-10-01T00:00:00Z")
    >>> len(old.likes) < len(ds.likes), bool((old.likes["ts"] < 1790812800).all())
    (True, True)
    """
    import numpy as np
    import pandas as pd

    from feed.data import Dataset, load

    ds = dataset if isinstance(dataset, Dataset) else load(dataset)
    t = float(pd.Timestamp(cut).timestamp()) if isinstance(cut, str) else float(cut)

    def before(frame: pd.DataFrame, column: str = "ts") -> np.ndarray:
        ts = frame[column].to_numpy(float)
        return np.isnan(ts) | (ts < t)

    posts = ds.posts[before(ds.posts, "created_at")]
    known = set(posts["post_id"])

    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        ok = before(frame)
        if "post_id" in frame:
            ok &= frame["post_id"].isin(known).to_numpy() | (frame["post_id"] == "").to_numpy()
        return frame[ok].reset_index(drop=True)

    tables = {
        name: keep(getattr(ds, name))
        for name in ("likes", "purchases", "clicks", "impressions", "follows")
    }
    out = replace(ds, posts=posts.reset_index(drop=True), **tables, path=None, problems=[])
    out.counts = {name: len(getattr(out, name)) for name in ds.counts}
    return out


# --- evaluation ------------------------------------------------------------------------------


def evaluate_at_k(
    dataset: Dataset | str | Path,
    ks: Sequence[int] = (5, 10, 20),
    *,
    test_frac: float = 0.2,
    models: Any = None,
    random_state: int = 0,
    progress: bool = False,
) -> dict[int, EvalReport]:
    """:func:`feed.evaluate` at several list lengths ``k`` (same split, same models).

    Each ``k`` fits the models again (the split and seeds are the same, so only the list length
    differs); on a small dataset that takes seconds.

    Parameters
    ----------
    dataset : Dataset or path
    ks : sequence of int
        List lengths, e.g. ``(5, 10, 20)``.
    test_frac, models, random_state
        As for :func:`feed.evaluate.evaluate`.
    progress : bool
        Show a progress bar over ``ks``.

    Returns
    -------
    dict of int to EvalReport
        Keyed by ``k``, in the order given; :func:`metrics_frame` makes one table of them.

    Examples
    --------
    >>> reports = evaluate_at_k("data/demo", (10, 20), models=["most-popular"])  # doctest: +SKIP
    >>> metrics_frame(reports)[["model", "k", "like_recall"]]  # doctest: +SKIP
              model   k  like_recall
    0  most-popular  10       0.0171
    1  most-popular  20       0.0280
    """
    from feed.data import Dataset, load
    from feed.evaluate import evaluate

    ds = dataset if isinstance(dataset, Dataset) else load(dataset)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive list lengths, got {ks}")
    out = {}
    for k in _bar(ks, progress, desc="evaluate", unit="k"):
        out[k] = evaluate(ds, test_frac=test_frac, k=k, models=models, random_state=random_state)
    return out


def metrics_frame(reports: EvalReport | Mapping[int, EvalReport]) -> pd.DataFrame:
    """One row per model and ``k``: every metric, fit and scoring seconds.

    Parameters
    ----------
    reports : EvalReport or mapping of k to EvalReport
        What :func:`feed.evaluate` or :func:`evaluate_at_k` returned.

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``k`` and the report's metric columns.

    Examples
    --------
    >>> from feed.evaluate import EvalReport
    >>> rep = EvalReport([{"model": "als", "like_recall": 0.1}], {"k": 20})
    >>> metrics_frame(rep).to_dict("records")
    [{'model': 'als', 'k': 20, 'like_recall': 0.1}]
    """
    import pandas as pd

    if not isinstance(reports, Mapping):
        reports = {int(reports.info["k"]): reports}
    rows = [
        {"model": row["model"], "k": k, **{c: v for c, v in row.items() if c != "model"}}
        for k, rep in reports.items()
        for row in rep.rows
    ]
    return pd.DataFrame(rows)


# --- what a user sees ------------------------------------------------------------------------


@dataclass
class UserView:
    """A user's history next to the feed page a version would serve them, with the reasons.

    ``history`` has one row per liked post, purchase and follow (newest first when timed):
    ``kind``, ``ts`` (UTC), ``post_id``, ``product_id``, ``author_id``, ``text``, ``products``
    and ``source`` (``dataset`` or ``redis``: since training, or seeded at publish).
    ``page`` has one row per item: ``rank``, ``post_id``, ``author_id``, ``text``, ``products``
    (titles), ``category``, ``score`` and ``reason``.
    """

    user_id: str
    version: str | None
    live: str | None
    experiment: str | None
    arm: str | None
    history: pd.DataFrame
    page: pd.DataFrame
    response: dict[str, Any] = field(repr=False, default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{self.user_id} on {self.version} (live {self.live}): "
            f"{len(self.history)} history rows, {len(self.page)} items"
        )


def service_client(redis: Any = None, **config: Any) -> Any:
    """A Flask test client of the service on this Redis, for previews and simulated traffic.

    The app is built by ``service.create_app`` with no in-process caching (a version activated
    a moment ago is seen at once) and a random admin token, which the returned client sends
    (so ``version=`` previews work). Extra keyword arguments override service settings.

    Parameters
    ----------
    redis : client, URL or None
        None: ``$FEED_REDIS_URL`` or the private server.

    Examples
    --------
    >>> client = service_client("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> page = client.get("/v1/feed/u1?preview=1&limit=5").get_json()  # doctest: +SKIP
    >>> page["items"][0]["reason"]  # doctest: +SKIP
    'collaborative'
    """
    from service import create_app

    _, url = _client_and_url(redis)
    token = secrets.token_hex(16)
    app = create_app({**_SERVICE_CONFIG, "REDIS_URL": url, "ADMIN_TOKEN": token, **config})
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def _preview(client: Any, user_id: str, version: str | None, limit: int) -> dict[str, Any]:
    """The page the service would serve ``user_id`` (preview: nothing recorded)."""
    from feed.versions import VersionError

    args: dict[str, Any] = {"preview": 1, "limit": limit}
    if version is not None:
        args["version"] = version
    resp = client.get(f"/v1/feed/{quote(user_id, safe='')}", query_string=args)
    body = resp.get_json(silent=True) or {}
    if resp.status_code != 200:
        message = (body.get("error") or {}).get("message", resp.status_code)
        raise VersionError(f"feed of {user_id!r} on {version or 'the live version'}: {message}")
    if body.get("degraded"):
        logger.warning("Redis did not answer: %s got a degraded (trending) page", user_id)
    return body  # type: ignore[no-any-return]


def _product_titles(products: Iterable[dict[str, Any]]) -> str:
    return " | ".join(str(p.get("title") or p.get("product_id")) for p in products)


_PAGE_COLUMNS = ["rank", "post_id", "author_id", "text", "products", "category", "score", "reason"]


def _page_frame(body: dict[str, Any]) -> pd.DataFrame:
    import pandas as pd

    rows = [
        {
            "rank": i + 1,
            "post_id": it["post_id"],
            "author_id": it.get("author_id"),
            "text": it.get("text"),
            "products": _product_titles(it.get("products") or []),
            "category": ", ".join(
                sorted({str(p.get("category") or "") for p in it.get("products") or []} - {""})
            ),
            "score": it.get("score"),
            "reason": it.get("reason"),
        }
        for i, it in enumerate(body.get("items", []))
    ]
    return pd.DataFrame(rows, columns=_PAGE_COLUMNS)


def pages(
    redis: Any, users: Iterable[str], version: str | None = None, *, limit: int = 20
) -> pd.DataFrame:
    """The first feed page of each user on ``version`` (the live one, or the user's arm).

    Parameters
    ----------
    redis : client, URL or None
    users : iterable of str
    version : str, optional
        A published version; None ranks as the service would (experiment arm, else live).
    limit : int
        Items per page.

    Returns
    -------
    pandas.DataFrame
        One row per item: ``user_id``, ``version``, the columns of :attr:`UserView.page`, and
        ``source``: the reason without its argument (``similar_to:p17`` gives ``similar_to``).

    Examples
    --------
    >>> both = pd.concat([pages(r, ["u1", "u2"], v) for v in (live, new)])  # doctest: +SKIP
    >>> both.groupby(["version", "source"]).size().unstack(fill_value=0)  # doctest: +SKIP
    """
    import pandas as pd

    client = service_client(redis)
    frames = []
    for user in users:
        body = _preview(client, str(user), version, limit)
        frame = _page_frame(body)
        frame.insert(0, "version", body.get("model_version"))
        frame.insert(0, "user_id", str(user))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["user_id", "version", *_PAGE_COLUMNS, "source"])
    out = pd.concat(frames, ignore_index=True)
    out["source"] = out["reason"].astype(str).str.split(":", n=1).str[0]
    return out


def _docs(r: Any, post_ids: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post documents and the documents of the products they link, in two MGETs."""
    from feed import contract as c

    posts = (
        dict(zip(post_ids, r.mget([c.post_doc_key(p) for p in post_ids]), strict=True))
        if post_ids
        else {}
    )
    posts = {p: c.decode_json(raw) or {} for p, raw in posts.items()}
    product_ids = sorted({x for d in posts.values() for x in d.get("product_ids") or []})
    raw = r.mget([c.product_doc_key(p) for p in product_ids]) if product_ids else []
    products = {
        p: c.decode_json(x) or {"product_id": p} for p, x in zip(product_ids, raw, strict=True)
    }
    return posts, products


def _dataset_history(ds: Dataset, user_id: str) -> list[dict[str, Any]]:
    """The user's likes, purchases and follows in the training data."""
    likes = ds.likes[ds.likes["user_id"] == user_id]
    bought = ds.purchases[ds.purchases["user_id"] == user_id]
    follows = ds.follows[ds.follows["follower_id"] == user_id]
    return [
        *(
            {"kind": "like", "ts": ts, "post_id": p}
            for p, ts in zip(likes["post_id"], likes["ts"], strict=True)
        ),
        *(
            {"kind": "purchase", "ts": ts, "post_id": p or None, "product_id": pr}
            for p, pr, ts in zip(bought["post_id"], bought["product_id"], bought["ts"], strict=True)
        ),
        *(
            {"kind": "follow", "ts": ts, "author_id": a}
            for a, ts in zip(follows["followee_id"], follows["ts"], strict=True)
        ),
    ]


def _redis_history(r: Any, user_id: str, n: int) -> list[dict[str, Any]]:
    """What Redis knows: likes since training (timed), purchases and follows (seeded at publish,
    then updated by events)."""

    h = read_history(r, user_id, n)
    return [
        *({"kind": "like", "ts": like["ts"], "post_id": like["post_id"]} for like in h["likes"]),
        *({"kind": "purchase", "product_id": p} for p in h["purchases"]),
        *({"kind": "follow", "author_id": a} for a in h["follows"]),
    ]


_HISTORY_KEY = {"like": "post_id", "purchase": "product_id", "follow": "author_id"}


def _history_rows(r: Any, user_id: str, ds: Dataset | None, n: int) -> list[dict[str, Any]]:
    """The dataset's history, then what only Redis knows; newest first, untimed rows last."""
    rows = [] if ds is None else [{**x, "source": "dataset"} for x in _dataset_history(ds, user_id)]
    known = {(x["kind"], x[_HISTORY_KEY[x["kind"]]]) for x in rows}
    for x in _redis_history(r, user_id, n):
        if (x["kind"], x[_HISTORY_KEY[x["kind"]]]) not in known:
            rows.append({**x, "source": "redis"})
    rows.sort(key=_newest_first)
    return rows[:n]


def _newest_first(row: dict[str, Any]) -> float:
    ts = row.get("ts")
    return -float(ts) if ts is not None and ts == ts else math.inf  # untimed rows last


def _s(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _history_frame(r: Any, rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    posts, products = _docs(r, sorted({x["post_id"] for x in rows if x.get("post_id")}))
    for x in rows:
        doc = posts.get(x.get("post_id") or "", {})
        x["author_id"] = x.get("author_id") or doc.get("author_id")
        x["text"] = doc.get("text")
        linked = [products.get(p, {"product_id": p}) for p in doc.get("product_ids") or []]
        if x.get("product_id") and not linked:
            linked = [{"product_id": x["product_id"]}]
        x["products"] = _product_titles(linked)
    columns = ["kind", "ts", "post_id", "product_id", "author_id", "text", "products", "source"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["ts"] = pd.to_datetime(frame["ts"].astype(float), unit="s", utc=True)
    return frame


def inspect_user(
    redis: Any,
    user_id: str,
    version: str | None = None,
    *,
    limit: int = 20,
    dataset: Dataset | str | Path | None = None,
    history: int = 20,
) -> UserView:
    """What ``user_id`` did, and the feed page ``version`` would serve them, with reasons.

    The page is ranked by the service's code in process with ``preview=1``, so it is exactly
    what ``GET /v1/feed/<user_id>`` would answer, and nothing is recorded as served.

    Parameters
    ----------
    redis : client, URL or None
        None: ``$FEED_REDIS_URL`` or the private server.
    user_id : str
    version : str, optional
        A published version (``ready``); None ranks as the service would (the user's
        experiment arm, else the live version).
    limit : int
        Items on the page.
    dataset : Dataset or path, optional
        The training data, for the user's timed likes, purchases and follows; without it the
        history is what Redis holds (likes since training, purchases, follows).
    history : int
        History rows kept, newest first.

    Returns
    -------
    UserView

    Examples
    --------
    >>> view = inspect_user(r, "u42", version=new, dataset=ds, limit=5)  # doctest: +SKIP
    >>> view.page[["rank", "text", "products", "reason"]]  # doctest: +SKIP
       rank                        text        products          reason
    0     1  這支口紅顏色超好看 great swatch   Lipstick #12   similar_to:p17
    """
    from feed.data import Dataset, load
    from feed.versions import live_version

    r, _ = _client_and_url(redis)
    ds = dataset if dataset is None or isinstance(dataset, Dataset) else load(dataset)
    body = _preview(service_client(r), user_id, version, limit)
    return UserView(
        user_id=user_id,
        version=body.get("model_version"),
        live=live_version(r),
        experiment=body.get("experiment"),
        arm=body.get("arm"),
        history=_history_frame(r, _history_rows(r, user_id, ds, history)),
        page=_page_frame(body),
        response=body,
    )


# --- experiments -----------------------------------------------------------------------------


def report_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """One row per arm and metric of an experiment report, ready to plot.

    Parameters
    ----------
    report : dict
        What :func:`feed.experiments.report` returned.

    Returns
    -------
    pandas.DataFrame
        ``arm``, ``version``, ``users``, ``metric``, ``value``, ``ci_low``, ``ci_high`` (95%),
        and against control ``diff``, ``diff_ci_low``, ``diff_ci_high``, ``lift`` and
        ``p_value`` (empty for the control arm).

    Examples
    --------
    >>> rep = {"arms": [{"arm": "control", "version": "v1", "users": 10, "vs_control": None,
    ...                  "metrics": {"clicks_per_user": {"value": 1.0, "ci": [0.5, 1.5]}}}]}
    >>> report_frame(rep)[["arm", "metric", "value", "ci_low", "ci_high"]].to_dict("records")
    [{'arm': 'control', 'metric': 'clicks_per_user', 'value': 1.0, 'ci_low': 0.5, 'ci_high': 1.5}]
    """
    import pandas as pd

    rows = []
    for arm in report["arms"]:
        for metric, m in arm["metrics"].items():
            vs = (arm.get("vs_control") or {}).get(metric) or {}
            ci, dci = m.get("ci") or [None, None], vs.get("diff_ci") or [None, None]
            rows.append(
                {
                    "arm": arm["arm"],
                    "version": arm.get("version"),
                    "users": arm.get("users"),
                    "metric": metric,
                    "value": m["value"],
                    "ci_low": ci[0],
                    "ci_high": ci[1],
                    "diff": vs.get("diff"),
                    "diff_ci_low": dci[0],
                    "diff_ci_high": dci[1],
                    "lift": vs.get("lift"),
                    "p_value": vs.get("p_value"),
                }
            )
    return pd.DataFrame(rows)


def winner(
    report: Mapping[str, Any], metric: str = "clicks_per_user", alpha: float = 0.05
) -> dict[str, Any]:
    """The arm to promote: the best arm significantly better than control on ``metric``.

    An arm wins when its lift over control is positive with ``p_value < alpha``; among such
    arms the highest value wins. Otherwise the control wins (keep what was live).

    Returns
    -------
    dict
        ``arm``, ``version``, ``metric``, ``value``, ``lift``, ``p_value`` and ``why``.

    Examples
    --------
    >>> rep = {"control": "control", "arms": [
    ...     {"arm": "control", "version": "v1", "vs_control": None,
    ...      "metrics": {"clicks_per_user": {"value": 1.0}}},
    ...     {"arm": "treatment", "version": "v2",
    ...      "vs_control": {"clicks_per_user": {"lift": 0.3, "p_value": 0.001}},
    ...      "metrics": {"clicks_per_user": {"value": 1.3}}}]}
    >>> winner(rep)["arm"], winner(rep, alpha=0.0001)["arm"]
    ('treatment', 'control')
    """
    arms = {a["arm"]: a for a in report["arms"]}
    control = arms[report["control"]]
    better = []
    for a in report["arms"]:
        vs = (a.get("vs_control") or {}).get(metric) or {}
        p, lift = vs.get("p_value"), vs.get("lift")
        if p is not None and lift is not None and lift > 0 and p < alpha:
            better.append((a["metrics"][metric]["value"], a, vs))
    if not better:
        return {
            "arm": control["arm"],
            "version": control["version"],
            "metric": metric,
            "value": control["metrics"][metric]["value"],
            "lift": None,
            "p_value": None,
            "why": f"no arm beats {control['arm']!r} on {metric} at p < {alpha}",
        }
    value, best, vs = max(better, key=lambda x: x[0])
    return {
        "arm": best["arm"],
        "version": best["version"],
        "metric": metric,
        "value": value,
        "lift": vs["lift"],
        "p_value": vs["p_value"],
        "why": f"{metric} {vs['lift']:+.1%} vs {control['arm']!r}, p = {vs['p_value']:.2g}",
    }


def promote(
    redis: Any,
    experiment: str,
    *,
    metric: str = "clicks_per_user",
    alpha: float = 0.05,
    arm: str | None = None,
) -> dict[str, Any]:
    """Stop ``experiment`` and make its winning arm's version live.

    The winner is chosen by :func:`winner` unless ``arm`` names it. A sample-ratio mismatch
    makes the report untrustworthy, so it is refused unless ``arm`` is given.

    Parameters
    ----------
    redis : client, URL or None
    experiment : str
    metric : str
        ``clicks_per_user``, ``likes_per_user`` or ``purchase_conversion``.
    alpha : float
        Significance level of the winner rule.
    arm : str, optional
        Promote this arm regardless of the numbers.

    Returns
    -------
    dict
        :func:`winner`'s answer plus ``experiment``, ``live`` (the version now live) and
        ``previous`` (the version live before).

    Examples
    --------
    >>> promote(r, "blend-v2")  # doctest: +SKIP
    {'arm': 'treatment', 'version': '20261124T2015-3f9a1c', ..., 'live': '20261124T2015-3f9a1c'}
    """
    from feed import experiments as ex
    from feed import versions as reg

    r, _ = _client_and_url(redis)
    rep = ex.report(r, experiment)
    if arm is None:
        if rep["srm"]["mismatch"]:
            raise ex.ExperimentError(
                f"experiment {experiment!r} fails the sample-ratio check "
                f"(p = {rep['srm']['p_value']:.2g}): fix the assignment or logging, "
                "or pass arm= to promote anyway"
            )
        choice = winner(rep, metric, alpha)
    else:
        row = next((a for a in rep["arms"] if a["arm"] == arm), None)
        if row is None:
            raise ex.ExperimentError(f"experiment {experiment!r} has no arm {arm!r}")
        choice = {
            "arm": arm,
            "version": row["version"],
            "metric": metric,
            "value": row["metrics"][metric]["value"],
            "lift": None,
            "p_value": None,
            "why": "chosen by hand",
        }
    ex.stop(r, experiment)
    previous = reg.live_version(r)
    if choice["version"] != previous:
        reg.activate(r, choice["version"])
    return {**choice, "experiment": experiment, "live": reg.live_version(r), "previous": previous}


# --- the demo --------------------------------------------------------------------------------


@dataclass
class Quickstart:
    """What :func:`quickstart` made: the dataset, the live version and where it lives."""

    data_dir: Path
    artifact: Path
    version: str
    redis_url: str
    users: list[str]  # a few users with precomputed candidates, to try


def sample_users(artifact: str | Path, n: int = 2) -> list[str]:
    """The first ``n`` users with precomputed candidates in a version directory."""
    from feed.artifacts import read

    users = read(artifact, verify=False).arrays("candidates")["users"]
    return [str(u) for u in users[:n]] or ["u1"]


def quickstart(
    work_dir: str | Path = ".feed/demo",
    *,
    users: int = 2000,
    posts: int = 3000,
    seed: int = 7,
    redis: str | None = None,
    progress: bool = False,
    config: TrainConfig | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Quickstart:
    """Generate a dataset, train, publish and activate: ``feed demo`` without the server.

    Parameters
    ----------
    work_dir : path
        The dataset goes to ``work_dir/data``, the version to ``work_dir/artifacts``.
    users, posts, seed : int
        Size and seed of the synthetic dataset.
    redis : str, optional
        Redis URL; None: ``$FEED_REDIS_URL`` or the private server.
    progress : bool
        Progress bars while training and publishing.
    config : TrainConfig, optional
    on_step : callable, optional
        Called with a line describing each step as it starts.

    Returns
    -------
    Quickstart

    Examples
    --------
    >>> qs = quickstart("/tmp/feed-demo", users=300, posts=400)  # doctest: +SKIP
    >>> inspect_user(qs.redis_url, qs.users[0]).page.head()  # doctest: +SKIP
    """
    from feed.publish import publish
    from feed.synth import SynthConfig, generate
    from feed.train import train

    say = on_step or (lambda line: logger.info("%s", line))
    work = Path(work_dir)
    data_dir = work / "data"
    say(f"generating {users} users and {posts} posts into {data_dir}")
    generate(data_dir, SynthConfig(n_users=users, n_posts=posts, seed=seed))
    say("training")
    path = train(data_dir, work / "artifacts", config, progress=progress)
    url = redis_url(redis)
    say(f"publishing {path.name} into {url}")
    res = publish(connect(url), path, activate=True, progress=progress)
    return Quickstart(data_dir, path, res.version, url, sample_users(path))


def _bar(items: Sequence[Any], enabled: bool, **kw: Any) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, **kw)


__all__ = [
    "ENV_URL",
    "Quickstart",
    "RedisNotConfigured",
    "UserView",
    "as_of",
    "connect",
    "evaluate_at_k",
    "inspect_user",
    "metrics_frame",
    "pages",
    "promote",
    "quickstart",
    "redis_url",
    "report_frame",
    "sample_users",
    "service_client",
    "url_of",
    "winner",
]
