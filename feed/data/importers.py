"""Convert public datasets into the dataset format (``docs/data-format.md``).

:func:`import_ciao` converts Tang et al.'s Ciao download (reviews as posts and purchases,
trust as follows); :func:`import_movielens` reads the original GroupLens MovieLens files, as
downloaded, in either layout:

* ml-latest / ml-latest-small / ml-25m: ``ratings.csv``, ``movies.csv`` and optionally
  ``tags.csv``;
* ml-100k: ``u.data`` (tab-separated ratings), ``u.item`` (``|``-separated movies with 19 genre
  flags, Latin-1) and optionally ``u.genre``.

The mapping (one post per movie; a like is a rating of at least 4.0):

* ``posts.csv``: post_id ``m<movieId>``; author_id ``genre:<first listed genre>`` (spaces and
  punctuation as '-'; synthetic, so that author diversity means genre diversity); created_at
  ``<year in the title>-01-01``, or the first rating's time when the title has no year; text
  = title, genres and the movie's user tags without repeats (case-insensitive), as
  ``"<title>. <g1>, <g2>. Tags: <t1>, <t2>"``; product_ids ``p<movieId>``; title; tags =
  genres then user tags.
* ``products.csv``: product_id ``p<movieId>``, title, category = the first genre.
* ``likes.csv``: user_id (the original userId), post_id, ts (unix seconds), in file order.

Examples
--------
>>> import tempfile
>>> src, out = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp()) / "ml"
>>> _ = (src / "movies.csv").write_text("movieId,title,genres\\n1,Toy Story (1995),Comedy\\n")
>>> _ = (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\\n7,1,4.5,964982703\\n")
>>> import_movielens(src, out)
{'posts': 1, 'products': 1, 'likes': 1}
>>> (out / "posts.csv").read_text().splitlines()[1]
'm1,genre:Comedy,1995-01-01,Toy Story (1995). Comedy,p1,Toy Story (1995),Comedy'
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

LIKE_MIN_RATING = 4.0
#: ml-100k genre flag columns, in u.item order (used when u.genre is missing).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_YEAR = re.compile(r"\((\d{4})\)\s*$")


class ImportError_(ValueError):
    """The source directory is not a dataset this importer knows; the message says why."""


def import_movielens(
    src: str | Path, out: str | Path, min_rating: float = LIKE_MIN_RATING
) -> dict[str, int]:
    """Convert a GroupLens MovieLens download into a dataset directory.

    Parameters
    ----------
    src : path
        The unzipped download (``ratings.csv`` + ``movies.csv`` [+ ``tags.csv``], or
        ``u.data`` + ``u.item`` [+ ``u.genre``]).
    out : path
        The dataset directory to write (created; existing files are replaced).
    min_rating : float
        Ratings at or above this become likes.

    Returns
    -------
    dict of str to int
        Rows written per file.
    """
    root = Path(src)
    if (root / "ratings.csv").is_file() and (root / "movies.csv").is_file():
        movies, ratings, tags = _read_latest(root)
    elif (root / "u.data").is_file() and (root / "u.item").is_file():
        movies, ratings, tags = _read_100k(root)
    else:
        raise ImportError_(
            f"{root}: neither ratings.csv + movies.csv (ml-latest layout) nor "
            "u.data + u.item (ml-100k layout) found"
        )
    first_ts = float(ratings["timestamp"].min()) if len(ratings) else 0.0
    frames = {
        "posts": _posts(movies, tags, first_ts),
        "products": pd.DataFrame(
            {
                "product_id": "p" + movies["movieId"],
                "title": movies["title"],
                "category": movies["genres"].map(_first),
            }
        ),
        "likes": _likes(ratings, min_rating),
    }
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(target / f"{name}.csv", index=False, lineterminator="\n")
    counts = {name: len(frame) for name, frame in frames.items()}
    logger.info("imported MovieLens %s into %s: %s", root, target, counts)
    return counts


def _read_latest(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """movies (movieId, title, genres: list), ratings, tags (movieId, tag) of ml-latest."""
    movies = pd.read_csv(root / "movies.csv", dtype=str, keep_default_na=False)
    movies["genres"] = movies["genres"].map(lambda g: g.split("|") if g else [])
    ratings = _ratings(
        pd.read_csv(root / "ratings.csv", dtype=str, keep_default_na=False), root / "ratings.csv"
    )
    tags_file = root / "tags.csv"
    tags = (
        pd.read_csv(tags_file, dtype=str, keep_default_na=False)[["movieId", "tag"]]
        if tags_file.is_file()
        else pd.DataFrame({"movieId": [], "tag": []}, dtype=str)
    )
    return movies[["movieId", "title", "genres"]], ratings, tags


def _read_100k(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The same three tables from ml-100k's u.data, u.item and u.genre."""
    genre_file = root / "u.genre"
    genres = list(ML100K_GENRES)
    if genre_file.is_file():
        lines = genre_file.read_text(encoding="latin-1").splitlines()
        genres = [ln.rsplit("|", 1)[0] for ln in lines if ln.strip()]
    items = pd.read_csv(
        root / "u.item",
        sep="|",
        header=None,
        dtype=str,
        encoding="latin-1",
        keep_default_na=False,
        quoting=3,
    )
    flags = items.iloc[:, 5 : 5 + len(genres)].to_numpy() == "1"
    movies = pd.DataFrame(
        {
            "movieId": items[0].str.strip(),
            "title": items[1].str.strip(),
            "genres": [[g for g, on in zip(genres, row, strict=True) if on] for row in flags],
        }
    )
    raw = pd.read_csv(
        root / "u.data",
        sep="\t",
        header=None,
        dtype=str,
        names=["userId", "movieId", "rating", "timestamp"],
    )
    ratings = _ratings(raw, root / "u.data")
    return movies, ratings, pd.DataFrame({"movieId": [], "tag": []}, dtype=str)


def _ratings(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    """userId, movieId (str), rating (float), timestamp (int64); bad numbers raise."""
    out = raw[["userId", "movieId"]].astype(str).apply(lambda c: c.str.strip())
    for col, kind in (("rating", float), ("timestamp", np.int64)):
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise ImportError_(f"{path}: row {bad[0] + 1}: bad {col} {raw[col].iat[bad[0]]!r}")
        out[col] = values.astype(kind)
    return out


def _first(genres: list[str]) -> str:
    """The first genre as an id the service's API can name (:func:`feed.contract.valid_id`):
    runs of other characters become one '-' ("(no genres listed)": "no-genres-listed",
    MovieLens 100k's "Children's": "Children-s")."""
    return re.sub(r"[^A-Za-z0-9_.:@-]+", "-", genres[0]).strip("-") if genres else ""


def _posts(movies: pd.DataFrame, tags: pd.DataFrame, first_ts: float) -> pd.DataFrame:
    """One post per movie (see the module docstring for the mapping)."""
    per_movie = {m: _distinct(t.str.strip()) for m, t in tags.groupby("movieId", sort=False)["tag"]}
    fallback = pd.Timestamp(first_ts, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = []
    for movie, title, genres in zip(
        movies["movieId"], movies["title"], movies["genres"], strict=True
    ):
        user_tags = [t for t in per_movie.get(movie, []) if t]
        year = _YEAR.search(title)
        text = f"{title}. {', '.join(genres)}" if genres else title
        if user_tags:
            text += f". Tags: {', '.join(user_tags)}"
        rows.append(
            {
                "post_id": f"m{movie}",
                "author_id": f"genre:{_first(genres)}",
                "created_at": f"{year.group(1)}-01-01" if year else fallback,
                "text": text,
                "product_ids": f"p{movie}",
                "title": title,
                "tags": "|".join(genres + user_tags),
            }
        )
    return pd.DataFrame(
        rows, columns=["post_id", "author_id", "created_at", "text", "product_ids", "title", "tags"]
    )


def _distinct(tags: pd.Series) -> list[str]:
    """Tags without repeats (case-insensitive), each first spelling kept, in file order."""
    seen: dict[str, str] = {}
    for tag in tags:
        seen.setdefault(tag.lower(), tag)
    return list(seen.values())


def _likes(ratings: pd.DataFrame, min_rating: float) -> pd.DataFrame:
    liked = ratings[ratings["rating"] >= min_rating]
    return pd.DataFrame(
        {
            "user_id": liked["userId"].to_numpy(),
            "post_id": ("m" + liked["movieId"]).to_numpy(),
            "ts": liked["timestamp"].to_numpy(),
        }
    )


def import_ciao(src: str | Path, out: str | Path) -> dict[str, int]:
    """Convert Tang et al.'s Ciao download (``rating_with_timestamp.mat``, ``trustnetwork.mat``).

    Every rating row is a review post and a purchase: post_id is the 0-based row index,
    author_id the user, created_at the rating time, text ``cat<categoryid>`` (the data has no
    review text), product_ids the product; products get their most frequent category (the
    first seen among equally frequent ones); each trust edge is a follow. Ratings and
    helpfulness scores are not used.

    Parameters
    ----------
    src : path
        The directory with the two ``.mat`` files (each holds one matrix, whatever its name).
    out : path
        The dataset directory to write.

    Returns
    -------
    dict of str to int
        Rows written per file.
    """
    root = Path(src)
    rating = _mat_matrix(root / "rating_with_timestamp.mat", min_cols=6)
    trust = _mat_matrix(root / "trustnetwork.mat", min_cols=2)
    user, product, category, ts = (rating[:, c] for c in (0, 1, 2, 5))
    frames = {
        "posts": pd.DataFrame(
            {
                "post_id": np.arange(len(rating)),
                "author_id": user,
                "created_at": ts,
                "text": [f"cat{c}" for c in category],
                "product_ids": product,
                "title": "",
                "tags": "",
            }
        ),
        "products": _ciao_products(product, category),
        "purchases": pd.DataFrame({"user_id": user, "product_id": product, "ts": ts}),
        "follows": pd.DataFrame({"follower_id": trust[:, 0], "followee_id": trust[:, 1]}),
    }
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(target / f"{name}.csv", index=False, lineterminator="\n")
    counts = {name: len(frame) for name, frame in frames.items()}
    logger.info("imported Ciao %s into %s: %s", root, target, counts)
    return counts


def _mat_matrix(path: Path, min_cols: int) -> np.ndarray:
    """The one matrix of a MATLAB file, as int64 (ids and unix seconds)."""
    from scipy.io import loadmat

    if not path.is_file():
        raise ImportError_(
            f"{path}: file not found (the Ciao download has "
            "rating_with_timestamp.mat and trustnetwork.mat)"
        )
    found = [v for k, v in loadmat(path).items() if not k.startswith("__")]
    if len(found) != 1 or np.ndim(found[0]) != 2 or found[0].shape[1] < min_cols:
        raise ImportError_(f"{path}: expected one matrix with at least {min_cols} columns")
    return np.asarray(found[0]).astype(np.int64)


def _ciao_products(product: np.ndarray, category: np.ndarray) -> pd.DataFrame:
    """One row per product in first-seen order; category: the most frequent, the first seen
    among equally frequent ones."""
    pairs = pd.DataFrame({"product": product, "category": category, "row": np.arange(len(product))})
    stats = pairs.groupby(["product", "category"]).agg(n=("row", "size"), first=("row", "min"))
    best = stats.reset_index().sort_values(["product", "n", "first"], ascending=[True, False, True])
    best = best.drop_duplicates("product").set_index("product")["category"]
    order = pd.unique(product)
    return pd.DataFrame({"product_id": order, "title": order, "category": best.loc[order].values})


# --- generic interactions: RecBole atomic files and user,item[,timestamp] CSVs ---------------
#
# Both become the same dataset (see ``docs/data-format.md``, "Importing interactions"):
#
# * ``posts.csv``: one post per item: post_id = the item id, product_ids = the item id (one
#   product per post), author_id ``<category column>:<its first value>`` when a category column
#   is given (so that author diversity means category diversity, as for MovieLens), else
#   ``item:<item id>`` (each item its own author; the prefix keeps authors apart from users,
#   whose ids may look the same); created_at the item's first interaction (empty without
#   timestamps); text = the title and the category values; tags = the category values.
# * ``products.csv``: product_id = the item id, title (the item id without a title column),
#   category = the first category value.
# * ``likes.csv``: one like per (user, item), its first time; with a rating column only the
#   rows rated at least ``min_rating``.

#: RecBole's default field names (``USER_ID_FIELD``, ``ITEM_ID_FIELD``, ``RATING_FIELD``,
#: ``TIME_FIELD``).
RECBOLE_FIELDS = {"user": "user_id", "item": "item_id", "rating": "rating", "time": "timestamp"}
#: ``.item`` columns tried as the title, then as the category, when none is named.
RECBOLE_TITLE_FIELDS = ("title", "movie_title", "name", "item_name")
RECBOLE_CATEGORY_FIELDS = ("categories", "genre", "class", "category", "cate_id")


def import_recbole(
    src: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    min_rating: float | None = None,
    title_field: str | None = None,
    category_field: str | None = None,
) -> dict[str, int]:
    """Convert RecBole atomic files (``<name>.inter`` [+ ``<name>.item``]) into a dataset.

    The ``.inter`` file is tab-separated with typed headers (``user_id:token item_id:token
    rating:float timestamp:float``; rating and timestamp optional). The ``.item`` file, when
    present, gives each item a title (``title_field``, else the first of
    :data:`RECBOLE_TITLE_FIELDS` present) and a category (``category_field``, else the first of
    :data:`RECBOLE_CATEGORY_FIELDS` present; ``token_seq`` values are space-separated, the
    first one counts). The mapping is :func:`import_interactions`'s.

    Parameters
    ----------
    src : path
        A ``.inter`` file, or a directory holding one (``dataset`` names it when several).
    out : path
        The dataset directory to write.
    dataset : str, optional
        The atomic files' base name (``ml-100k`` for ``ml-100k.inter``).
    min_rating : float, optional
        Keep only interactions rated at least this (default: every interaction is a like).
    title_field, category_field : str, optional
        ``.item`` columns (names without the ``:type`` suffix).

    Returns
    -------
    dict of str to int
        Rows written per file.

    Examples
    --------
    >>> import tempfile
    >>> src, out = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp()) / "ds"
    >>> _ = (src / "toy.inter").write_text(
    ...     "user_id:token\\titem_id:token\\trating:float\\ttimestamp:float\\n"
    ...     "u1\\ti9\\t5\\t964982703\\nu2\\ti9\\t2\\t964982800\\n")
    >>> import_recbole(src, out, min_rating=4)
    {'posts': 1, 'products': 1, 'likes': 1}
    """
    inter_path = _recbole_file(Path(src), dataset)
    inter = _recbole_read(inter_path)
    names = dict(RECBOLE_FIELDS)
    for role in ("user", "item"):
        if names[role] not in inter.columns:
            raise ImportError_(
                f"{inter_path}: no {names[role]!r} column (found: {', '.join(inter.columns)})"
            )
    items = None
    item_path = inter_path.with_suffix(".item")
    if item_path.is_file():
        raw = _recbole_read(item_path)
        if names["item"] not in raw.columns:
            raise ImportError_(f"{item_path}: no {names['item']!r} column")
        title = _pick(raw, title_field, RECBOLE_TITLE_FIELDS, item_path, "title")
        category = _pick(raw, category_field, RECBOLE_CATEGORY_FIELDS, item_path, "category")
        items = pd.DataFrame({"item": raw[names["item"]].str.strip()})
        items["title"] = raw[title].str.strip() if title else ""
        items["category"] = raw[category].map(_first_token) if category else ""
        items["category_name"] = category or ""
    elif title_field or category_field:
        raise ImportError_(f"{item_path}: not found (--title-field/--category-field need it)")
    return _write_interactions(
        inter,
        out,
        user=names["user"],
        item=names["item"],
        time=names["time"] if names["time"] in inter.columns else None,
        rating=names["rating"] if names["rating"] in inter.columns else None,
        min_rating=min_rating,
        items=items,
        source=inter_path,
    )


def _recbole_file(src: Path, dataset: str | None) -> Path:
    if src.is_file():
        return src
    if not src.is_dir():
        raise ImportError_(f"{src}: no such file or directory")
    if dataset:
        path = src / f"{dataset}.inter"
        if not path.is_file():
            raise ImportError_(f"{path}: file not found")
        return path
    found = sorted(src.glob("*.inter"))
    if len(found) != 1:
        raise ImportError_(
            f"{src}: {'no' if not found else len(found)} .inter files"
            + (f" ({', '.join(p.name for p in found)}); name one with --dataset" if found else "")
        )
    return found[0]


def _recbole_read(path: Path) -> pd.DataFrame:
    """An atomic file as strings, columns named without their ``:type`` suffix."""
    frame = pd.read_csv(
        path, sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8"
    )
    frame.columns = [str(c).split(":", 1)[0].strip() for c in frame.columns]
    return frame


def _pick(
    frame: pd.DataFrame, named: str | None, defaults: tuple[str, ...], path: Path, what: str
) -> str | None:
    if named:
        if named not in frame.columns:
            raise ImportError_(
                f"{path}: no {what} column {named!r} (found: {', '.join(frame.columns)})"
            )
        return named
    return next((c for c in defaults if c in frame.columns), None)


def _first_token(value: str) -> str:
    parts = str(value).replace(",", " ").split()
    return parts[0] if parts else ""


def import_interactions(
    src: str | Path,
    out: str | Path,
    *,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str | None = "timestamp",
    rating_col: str | None = None,
    min_rating: float | None = None,
    category_col: str | None = None,
    title_col: str | None = None,
    sep: str = ",",
) -> dict[str, int]:
    """Convert a CSV of interactions (``user,item[,timestamp]``) into a dataset.

    Each item becomes a post linking one product (the mapping above this function);
    ``category_col`` and ``title_col``, when given, are columns of the same file (an item's
    first row counts). Timestamps are unix seconds or ISO-8601; ``time_col`` absent from the
    file means no times (a ``time_col`` of None too).

    Parameters
    ----------
    src : path
        The CSV file (header row).
    out : path
        The dataset directory to write.
    user_col, item_col, time_col, rating_col, category_col, title_col : str
        Column names.
    min_rating : float, optional
        With ``rating_col``: keep rows rated at least this.
    sep : str
        The field separator.

    Returns
    -------
    dict of str to int
        Rows written per file.

    Examples
    --------
    >>> import tempfile
    >>> src = Path(tempfile.mkdtemp()) / "events.csv"
    >>> _ = src.write_text("user,item,timestamp\\nu1,i1,2024-05-01\\nu2,i1,1714600000\\n")
    >>> import_interactions(src, src.parent / "ds")
    {'posts': 1, 'products': 1, 'likes': 2}
    """
    path = Path(src)
    if not path.is_file():
        raise ImportError_(f"{path}: file not found")
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    frame.columns = [str(c).strip() for c in frame.columns]
    for flag, col in (
        ("--user-col", user_col),
        ("--item-col", item_col),
        ("--rating-col", rating_col),
        ("--category-col", category_col),
        ("--title-col", title_col),
    ):
        if col and col not in frame.columns:
            raise ImportError_(
                f"{path}: no column {col!r} ({flag}; found: {', '.join(frame.columns)})"
            )
    items = None
    if category_col or title_col:
        first = frame.drop_duplicates(item_col)
        items = pd.DataFrame({"item": first[item_col].str.strip()})
        items["title"] = first[title_col].str.strip() if title_col else ""
        items["category"] = first[category_col].str.strip() if category_col else ""
        items["category_name"] = category_col or ""
    return _write_interactions(
        frame,
        out,
        user=user_col,
        item=item_col,
        time=time_col if time_col and time_col in frame.columns else None,
        rating=rating_col,
        min_rating=min_rating,
        items=items,
        source=path,
    )


def _times(values: pd.Series, path: Path, col: str) -> pd.Series:
    """Unix seconds (float, NaN when empty) from unix seconds or ISO-8601 strings."""
    text = values.str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    iso = text[numeric.isna() & (text != "")]
    if len(iso):
        parsed = pd.to_datetime(iso, utc=True, errors="coerce", format="ISO8601")
        bad = parsed[parsed.isna()]
        if len(bad):
            row = int(bad.index[0])
            raise ImportError_(f"{path}: row {row + 1}: bad {col} {values.iat[row]!r}")
        epoch = pd.Timestamp(0, tz="UTC")  # any resolution pandas parsed them at
        numeric.loc[parsed.index] = (parsed - epoch) / pd.Timedelta(seconds=1)
    return numeric.astype(float)


def _seconds(ts: pd.Series) -> pd.Series:
    """Unix seconds as integers when they all are (NaN stays empty), else floats."""
    values = ts.reset_index(drop=True)
    known = values.dropna()
    if len(known) and (known == known.round()).all():
        return values.round().astype("Int64")
    return values


def _write_interactions(
    frame: pd.DataFrame,
    out: str | Path,
    *,
    user: str,
    item: str,
    time: str | None,
    rating: str | None,
    min_rating: float | None,
    items: pd.DataFrame | None,
    source: Path,
) -> dict[str, int]:
    inter = pd.DataFrame(
        {"user_id": frame[user].str.strip(), "item": frame[item].str.strip()}, index=frame.index
    )
    empty = np.flatnonzero(((inter["user_id"] == "") | (inter["item"] == "")).to_numpy())
    if len(empty):
        raise ImportError_(f"{source}: row {empty[0] + 1}: empty user or item id")
    inter["ts"] = _times(frame[time], source, time) if time else np.nan
    if rating and min_rating is not None:
        values = pd.to_numeric(frame[rating], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise ImportError_(
                f"{source}: row {bad[0] + 1}: bad {rating} {frame[rating].iat[bad[0]]!r}"
            )
        inter = inter[(values >= min_rating).to_numpy()]
    # one like per (user, item): its first time (rows without a time keep file order)
    likes = inter.sort_values("ts", kind="stable").drop_duplicates(["user_id", "item"])
    likes = likes.sort_index()
    order = pd.unique(
        pd.concat([items["item"], inter["item"]]) if items is not None else inter["item"]
    )
    meta = (
        items.drop_duplicates("item").set_index("item")
        if items is not None
        else pd.DataFrame(columns=["title", "category", "category_name"])
    )
    meta = meta.reindex(order).fillna("")
    first_ts = inter.groupby("item")["ts"].min().reindex(order)
    kind = meta["category_name"].astype(str)
    category = meta["category"].astype(str)
    title = meta["title"].astype(str)
    author = np.where(
        category != "", kind + ":" + category, "item:" + pd.Series(order, index=order)
    )
    text = [" ".join(x for x in (t, c) if x) for t, c in zip(title, category, strict=True)]
    frames = {
        "posts": pd.DataFrame(
            {
                "post_id": order,
                "author_id": author,
                "created_at": _seconds(first_ts),
                "text": text,
                "product_ids": order,
                "title": title.to_numpy(),
                "tags": category.to_numpy(),
            }
        ),
        "products": pd.DataFrame(
            {
                "product_id": order,
                "title": np.where(title != "", title, order),
                "category": category.to_numpy(),
            }
        ),
        "likes": pd.DataFrame(
            {
                "user_id": likes["user_id"].to_numpy(),
                "post_id": likes["item"].to_numpy(),
                "ts": _seconds(likes["ts"]),
            }
        ),
    }
    if frames["likes"]["ts"].isna().all():
        frames["likes"] = frames["likes"].drop(columns="ts")
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name, table in frames.items():
        table.to_csv(target / f"{name}.csv", index=False, lineterminator="\n")
    counts = {name: len(table) for name, table in frames.items()}
    logger.info("imported %s into %s: %s", source, target, counts)
    return counts
