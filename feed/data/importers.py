"""Convert public datasets into the dataset format (``docs/data-format.md``).

:func:`import_ciao` converts Tang et al.'s Ciao download (reviews as posts and purchases,
trust as follows); :func:`import_movielens` reads the original GroupLens MovieLens files, as
downloaded, in either layout:

* ml-latest / ml-latest-small / ml-25m: ``ratings.csv``, ``movies.csv`` and optionally
  ``tags.csv``;
* ml-100k: ``u.data`` (tab-separated ratings), ``u.item`` (``|``-separated movies with 19 genre
  flags, Latin-1) and optionally ``u.genre``.

The mapping (one post per movie; a like is a rating of at least 4.0):

* ``posts.csv``: post_id ``m<movieId>``; author_id ``genre:<first listed genre>`` (synthetic,
  so that author diversity means genre diversity); created_at ``<year in the title>-01-01``, or
  the first rating's time when the title has no year; text = title, genres and the movie's
  user tags without repeats (case-insensitive), as ``"<title>. <g1>, <g2>. Tags: <t1>, <t2>"``;
  product_ids ``p<movieId>``; title; tags = genres then user tags.
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
    return genres[0] if genres else ""


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
