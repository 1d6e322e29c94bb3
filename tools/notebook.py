"""Notebook and CLI helpers that drive the service from outside: what a user would see and why
(:func:`inspect_user`, :func:`pages`), a test client of the service on any Redis
(:func:`service_client`), and the steps of ``feed demo`` (:func:`quickstart`).

These import both halves (``feed`` and ``service``), so they live outside both: ``feed``
never imports ``service``, and the service never imports training code. Pages are ranked by
the service's own code in process (``service.create_app`` and its test client, with
``preview=1``: nothing is recorded as served), so what you inspect is what the HTTP API would
answer.

Examples
--------
>>> from tools import notebook as nb
>>> nb.inspect_user  # doctest: +ELLIPSIS
<function inspect_user at ...>
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from feed import contract as c
from feed.redisclient import client_and_url, connect, read_history, redis_url

if TYPE_CHECKING:
    import pandas as pd

    from feed.data import Dataset
    from feed.models.default import TrainConfig

logger = logging.getLogger(__name__)

#: Settings of the in-process service used to rank pages (no caching across calls).
_SERVICE_CONFIG = {
    "TESTING": True,
    "VERSION_CACHE_S": 0.0,
    "GLOBAL_CACHE_S": 0.0,
    "REDIS_SOCKET_TIMEOUT": 10.0,
    "REDIS_CONNECT_TIMEOUT": 5.0,
}


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

    _, url = client_and_url(redis)
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


def _docs(
    r: Any, post_ids: Sequence[str], version: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post documents (``version``'s, else the API-created post's) and the documents of the
    products they link (``version``'s), in two MGETs."""
    n = len(post_ids)
    keys = [c.post_doc_key(p, version) for p in post_ids] if version else []
    keys += [c.post_doc_key(p) for p in post_ids]
    found = r.mget(keys) if n else []
    own = found[:n] if version else [None] * n
    posts = {
        p: c.decode_json(mine or api) or {}
        for p, mine, api in zip(post_ids, own, found[len(found) - n :], strict=True)
    }
    product_ids = sorted({x for d in posts.values() for x in d.get("product_ids") or []})
    raw = (
        r.mget([c.product_doc_key(p, version) for p in product_ids])
        if product_ids and version
        else [None] * len(product_ids)
    )
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


def _redis_history(r: Any, user_id: str, n: int, version: str | None) -> list[dict[str, Any]]:
    """What Redis knows: likes since training (timed), purchases and follows (seeded by
    ``version``'s publish, then updated by events)."""

    h = read_history(r, user_id, n, version)
    return [
        *({"kind": "like", "ts": like["ts"], "post_id": like["post_id"]} for like in h["likes"]),
        *({"kind": "purchase", "product_id": p} for p in h["purchases"]),
        *({"kind": "follow", "author_id": a} for a in h["follows"]),
    ]


_HISTORY_KEY = {"like": "post_id", "purchase": "product_id", "follow": "author_id"}


def _history_rows(
    r: Any, user_id: str, ds: Dataset | None, n: int, version: str | None
) -> list[dict[str, Any]]:
    """The dataset's history, then what only Redis knows; newest first, untimed rows last."""
    rows = [] if ds is None else [{**x, "source": "dataset"} for x in _dataset_history(ds, user_id)]
    known = {(x["kind"], x[_HISTORY_KEY[x["kind"]]]) for x in rows}
    for x in _redis_history(r, user_id, n, version):
        if (x["kind"], x[_HISTORY_KEY[x["kind"]]]) not in known:
            rows.append({**x, "source": "redis"})
    rows.sort(key=_newest_first)
    return rows[:n]


def _newest_first(row: dict[str, Any]) -> float:
    ts = row.get("ts")
    return -float(ts) if ts is not None and ts == ts else math.inf  # untimed rows last


def _history_frame(r: Any, rows: list[dict[str, Any]], version: str | None) -> pd.DataFrame:
    import pandas as pd

    posts, products = _docs(r, sorted({x["post_id"] for x in rows if x.get("post_id")}), version)
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

    r, _ = client_and_url(redis)
    ds = dataset if dataset is None or isinstance(dataset, Dataset) else load(dataset)
    body = _preview(service_client(r), user_id, version, limit)
    served_by = body.get("model_version")
    return UserView(
        user_id=user_id,
        version=served_by,
        live=live_version(r),
        experiment=body.get("experiment"),
        arm=body.get("arm"),
        history=_history_frame(r, _history_rows(r, user_id, ds, history, served_by), served_by),
        page=_page_frame(body),
        response=body,
    )


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
    on_stage: Callable[[str], None] | None = None,
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
    on_stage : callable, optional
        Called with each training stage as it starts (:func:`feed.train.train`'s ``on_stage``).

    Returns
    -------
    Quickstart

    Examples
    --------
    >>> qs = quickstart("/tmp/feed-demo", users=300, posts=400)  # doctest: +SKIP
    >>> inspect_user(qs.redis_url, qs.users[0]).page.head()  # doctest: +SKIP
    """
    from feed.data.synth import SynthConfig, generate
    from feed.publish import publish
    from feed.train import train

    say = on_step or (lambda line: logger.info("%s", line))
    work = Path(work_dir)
    data_dir = work / "data"
    say(f"generating {users} users and {posts} posts into {data_dir}")
    generate(data_dir, SynthConfig(n_users=users, n_posts=posts, seed=seed))
    say("training")
    path = train(data_dir, work / "artifacts", config, progress=progress, on_stage=on_stage)
    url = redis_url(redis)
    say(f"publishing {path.name} into {url}")
    res = publish(connect(url), path, activate=True, progress=progress)
    return Quickstart(data_dir, path, res.version, url, sample_users(path))
