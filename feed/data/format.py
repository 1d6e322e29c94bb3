"""The dataset format: the tables, their columns and types (``docs/data-format.md``), and the
typed :class:`Dataset` that :func:`feed.data.load` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# Columns of every table after loading (optional columns are always present, filled with defaults).
# ts / created_at: float64 unix seconds, NaN when missing.
# Lists ("|"-separated cells): tuple[str, ...].
# fmt: off
SCHEMA: dict[str, dict[str, str]] = {
    "posts": {"post_id": "str", "author_id": "str", "created_at": "ts", "text": "str",
              "product_ids": "list", "title": "str", "tags": "list"},
    "products": {"product_id": "str", "title": "str", "category": "str", "brand": "str",
                 "price": "float", "in_stock": "bool", "merchant_id": "str"},
    "likes": {"user_id": "str", "post_id": "str", "ts": "ts", "weight": "float"},
    "purchases": {"user_id": "str", "product_id": "str", "ts": "ts", "post_id": "str",
                  "quantity": "float"},
    "follows": {"follower_id": "str", "followee_id": "str", "ts": "ts"},
    "clicks": {"user_id": "str", "post_id": "str", "ts": "ts"},
    "impressions": {"user_id": "str", "post_id": "str", "ts": "ts"},
    "shares": {"user_id": "str", "post_id": "str", "receiver_id": "str", "ts": "ts",
               "channel": "str"},
    "groups": {"group_id": "str", "product_id": "str", "initiator_id": "str", "created_at": "ts",
               "status": "str", "size": "float", "expires_at": "ts", "price": "float"},
    "group_members": {"group_id": "str", "user_id": "str", "ts": "ts"},
    "hides": {"user_id": "str", "post_id": "str", "author_id": "str", "ts": "ts"},
}
# fmt: on

# The unbracketed columns of DATA_FORMAT.md; required "*_id" columns must also be non-empty.
REQUIRED: dict[str, tuple[str, ...]] = {
    "posts": ("post_id", "author_id", "created_at", "text", "product_ids"),
    "products": ("product_id", "title", "category"),
    "likes": ("user_id", "post_id"),
    "purchases": ("user_id", "product_id"),
    "follows": ("follower_id", "followee_id"),
    "clicks": ("user_id", "post_id"),
    "impressions": ("user_id", "post_id"),
    "shares": ("user_id", "post_id"),
    "groups": ("group_id", "product_id", "initiator_id"),
    "group_members": ("group_id", "user_id"),
    "hides": ("user_id",),  # and one of post_id, author_id per row (checked by validate)
}
REQUIRED_FILES = ("posts",)
INTERACTIONS = ("likes", "purchases")  # at least one of them must have rows
# tables with a post_id (empty allowed in purchases and hides) and a user_id
POST_REFERENCES = ("likes", "clicks", "impressions", "purchases", "shares", "hides")
FLOAT_DEFAULTS = {("likes", "weight"): 1.0, ("purchases", "quantity"): 1.0, ("groups", "size"): 2}
NON_NEGATIVE = frozenset({("likes", "weight"), ("purchases", "quantity"), ("groups", "price")})
GROUP_STATUSES = ("open", "succeeded", "failed")  # groups.status; empty means unknown
TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")
_MAX_IN_MESSAGE = 50  # problems listed in str(DatasetError)


def empty_table(table: str, n: int = 0) -> pd.DataFrame:
    """``n`` rows of ``table`` with every column at its default (an absent optional column or
    file): "" for strings, () for lists, True for booleans, the column's default or NaN."""
    cols: dict[str, pd.Series] = {}
    for col, kind in SCHEMA[table].items():
        if kind == "str":
            cols[col] = pd.Series([""] * n, dtype=str)
        elif kind == "list":
            cols[col] = pd.Series([()] * n, dtype=object)
        elif kind == "bool":
            cols[col] = pd.Series(np.ones(n, dtype=bool))
        else:
            default = FLOAT_DEFAULTS.get((table, col), np.nan)
            cols[col] = pd.Series(np.full(n, default, dtype=float))
    return pd.DataFrame(cols)


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset: where it is and what is wrong."""

    file: str  # e.g. "likes.csv"
    line: int | None  # 1-based physical line in the file (header is line 1); None for file-level
    column: str | None
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        parts = [self.file]
        if self.line is not None:
            if self.file.endswith(".parquet"):
                parts.append(f"row {self.line}")  # Parquet has no lines: 1-based row number
            else:
                parts[0] += f":{self.line}"
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        text = ": ".join([*parts, self.message])
        return f"warning: {text}" if self.severity == "warning" else text


class DatasetError(ValueError):
    """Raised when a dataset has errors; ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        ordered = sorted(self.problems, key=lambda p: p.severity != "error")  # errors first
        lines = [str(p) for p in ordered[:_MAX_IN_MESSAGE]]
        if len(ordered) > _MAX_IN_MESSAGE:
            lines.append(f"... and {len(ordered) - _MAX_IN_MESSAGE} more")
        super().__init__("\n".join(lines))


@dataclass
class Dataset:
    """The typed tables of one dataset directory (columns and types as in :data:`SCHEMA`)."""

    posts: pd.DataFrame
    products: pd.DataFrame
    likes: pd.DataFrame
    purchases: pd.DataFrame
    follows: pd.DataFrame
    clicks: pd.DataFrame
    impressions: pd.DataFrame
    # optional tables of the social-shopping format: empty (every column) when absent, so code
    # written before them, and datasets without them, need nothing
    shares: pd.DataFrame = field(default_factory=lambda: empty_table("shares"))
    groups: pd.DataFrame = field(default_factory=lambda: empty_table("groups"))
    group_members: pd.DataFrame = field(default_factory=lambda: empty_table("group_members"))
    hides: pd.DataFrame = field(default_factory=lambda: empty_table("hides"))
    path: Path | None = None
    problems: list[Problem] = field(default_factory=list)  # warnings kept after a successful load
    counts: dict[str, int] = field(default_factory=dict)  # rows per file read

    @property
    def has_timestamps(self) -> bool:
        """True when likes + purchases have rows and every one of those rows has a ``ts``."""
        tables = [getattr(self, t) for t in INTERACTIONS]
        return sum(map(len, tables)) > 0 and not any(t["ts"].isna().any() for t in tables)

    def summary(self) -> dict[str, int]:
        """Rows per table plus distinct users, posts, products and authors.

        Users are those with a like, purchase, click or impression; products are those in
        ``products``, linked from a post or purchased.
        """
        out = {table: len(getattr(self, table)) for table in SCHEMA}
        users = pd.concat([getattr(self, t)["user_id"] for t in POST_REFERENCES])
        linked = self.posts["product_ids"].explode().dropna()
        products = pd.concat(
            [self.products["product_id"], linked, self.purchases["product_id"]]
        ).astype(str)
        out["n_users"] = int(users.nunique())
        out["n_posts"] = int(self.posts["post_id"].nunique())
        out["n_products"] = int(products.nunique())
        out["n_authors"] = int(self.posts["author_id"].nunique())
        return out
