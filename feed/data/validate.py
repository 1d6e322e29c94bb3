"""Load and validate a dataset directory (``docs/data-format.md``) into typed tables.

Every cell is read as a string first (ids are strings: ``"007"`` and ``"7"`` differ), then
converted column by column with vectorised pandas code. Validation never stops at the first
problem: it collects every one, each naming the file, the physical line and the column.
"""

from __future__ import annotations

import csv
import io
import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from feed.contract import ID_RULE, valid_id
from feed.data.format import (
    FALSE,
    FLOAT_DEFAULTS,
    GROUP_STATUSES,
    INTERACTIONS,
    NON_NEGATIVE,
    POST_REFERENCES,
    REQUIRED,
    REQUIRED_FILES,
    SCHEMA,
    TRUE,
    Dataset,
    DatasetError,
    Problem,
    empty_table,
)

logger = logging.getLogger(__name__)

_MAX_PER_COLUMN = 20  # problems reported per (file, column); the rest are counted
_WARNING_EXAMPLES = 3  # example rows named in a "not in products" warning


def validate(path: str | Path) -> tuple[Dataset | None, list[Problem]]:
    """Read and check a dataset directory, collecting every problem.

    Parameters
    ----------
    path : str or Path
        The dataset directory (``posts.csv`` or ``posts.parquet`` and friends).

    Returns
    -------
    dataset : Dataset or None
        The typed tables, or None when any problem is an error.
    problems : list of Problem
        Errors and warnings in file order, at most ~20 per file and column (then a
        "... and N more" problem).
    """
    started = time.perf_counter()
    root = Path(path)
    report = _Report()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        report.add(str(root), None, None, f"dataset path {what}")
        return None, report.finish()
    tables: dict[str, _Table] = {}
    failed: set[str] = set()  # tables whose file is missing or unusable
    for name, file in _find_files(root, report, failed).items():
        read = _read_csv if file.suffix == ".csv" else _read_parquet
        table = read(name, file, report)
        if table is None:
            failed.add(name)
        else:
            tables[name] = _convert(name, table, report)
    _check_across(root, tables, failed, report)
    problems = report.finish()
    counts = {name: len(t.df) for name, t in tables.items()}
    logger.info("validated %s in %.2fs: %s", root, time.perf_counter() - started, counts)
    if any(p.severity == "error" for p in problems):
        return None, problems
    frames = {n: tables[n].df if n in tables else empty_table(n) for n in SCHEMA}
    return Dataset(**frames, path=root, problems=problems, counts=counts), problems


def load(path: str | Path) -> Dataset:
    """Load a dataset directory, raising :class:`DatasetError` if it has any error.

    Parameters
    ----------
    path : str or Path
        The dataset directory.

    Returns
    -------
    Dataset
        The typed tables; warnings (e.g. unknown products) are in ``dataset.problems``.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "posts.csv").write_text(
    ...     "post_id,author_id,created_at,text,product_ids\\n007,a1,2018-05-31,hi,p1|p2\\n")
    >>> _ = (root / "likes.csv").write_text("user_id,post_id,ts\\nu1,007,959670000\\n")
    >>> ds = load(root)
    >>> ds.posts.loc[0, "post_id"], ds.posts.loc[0, "product_ids"], ds.likes.loc[0, "weight"]
    ('007', ('p1', 'p2'), np.float64(1.0))
    """
    dataset, problems = validate(path)
    if dataset is None:
        raise DatasetError(problems)
    for problem in problems:
        logger.warning("%s", problem)
    return dataset


# --- problem collection -------------------------------------------------------------------


@dataclass
class _Table:
    """One table being read: its file, its rows, and how to turn row positions into lines."""

    name: str  # file name, e.g. "likes.csv"
    df: pd.DataFrame  # every cell a string after reading; typed after _convert
    n_fields: int = 0  # fields per CSV record
    text: str | None = None  # CSV text; None for Parquet, whose "lines" are row numbers
    starts: np.ndarray | None = None  # start line of every record, computed on demand

    def line(self, pos: int) -> int | None:
        """The physical line where record ``pos`` starts (Parquet: its 1-based row)."""
        if self.text is None:
            return pos + 1
        if self.starts is None:
            lines = self.text.count("\n") + (not self.text.endswith("\n"))
            # one record per line: no blank lines and no newlines inside quotes
            if lines == len(self.df) + 1:
                self.starts = np.arange(2, len(self.df) + 2)
            else:
                self.starts = _scan_csv(self.text, self.n_fields)[0]
        return int(self.starts[pos]) if len(self.starts) == len(self.df) else None

    def where(self, pos: int) -> str:
        """``"line 5"`` or, for Parquet, ``"row 4"``."""
        return f"row {pos + 1}" if self.text is None else f"line {self.line(pos)}"


class _Report:
    """Collects problems, keeping at most ``_MAX_PER_COLUMN`` per (file, column)."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._shown: Counter[tuple[str, str | None]] = Counter()
        self._hidden: Counter[tuple[str, str | None]] = Counter()

    def add(
        self, file: str, line: int | None, column: str | None, message: str, severity: str = "error"
    ) -> None:
        """Keep a problem, or only count it once its (file, column) has shown enough."""
        key = (file, column)
        if self._shown[key] >= _MAX_PER_COLUMN:
            self._hidden[key] += 1
            return
        self._shown[key] += 1
        self.problems.append(Problem(file, line, column, message, severity))

    def rows(
        self, t: _Table, column: str, positions: np.ndarray, message: Callable[[int], str]
    ) -> None:
        """Report an error for each row position (only the first few are formatted)."""
        room = max(_MAX_PER_COLUMN - self._shown[(t.name, column)], 0)
        for pos in positions[:room]:
            self.add(t.name, t.line(int(pos)), column, message(int(pos)))
        self._hidden[(t.name, column)] += max(len(positions) - room, 0)

    def finish(self) -> list[Problem]:
        """The problems, each capped group followed by its "... and N more" problem."""
        last = {(p.file, p.column): i for i, p in enumerate(self.problems)}
        out = []
        for i, p in enumerate(self.problems):
            out.append(p)
            hidden = self._hidden[(p.file, p.column)]
            if hidden and last[(p.file, p.column)] == i:
                out.append(Problem(p.file, None, p.column, f"... and {hidden} more", p.severity))
        return out


def _show(value: object) -> str:
    """A cell value quoted for a message, shortened when long."""
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


# --- reading files -----------------------------------------------------------------------


def _find_files(root: Path, report: _Report, failed: set[str]) -> dict[str, Path]:
    """The file of every table present; reports missing required files and csv+parquet pairs."""
    files = {}
    for table in SCHEMA:
        csv_path, pq_path = root / f"{table}.csv", root / f"{table}.parquet"
        found = [p for p in (csv_path, pq_path) if p.is_file()]
        if len(found) == 2:
            failed.add(table)
            msg = f"both {csv_path.name} and {pq_path.name} exist; keep only one"
            report.add(csv_path.name, None, None, msg)
        elif found:
            files[table] = found[0]
        elif table in REQUIRED_FILES:
            failed.add(table)
            msg = f"required file is missing ({csv_path.name} or {pq_path.name})"
            report.add(csv_path.name, None, None, msg)
    return files


def _check_header(table: str, names: list[str], file: str, report: _Report) -> bool:
    """Report duplicated known columns and missing required columns; True when usable."""
    line = None if file.endswith(".parquet") else 1
    seen = Counter(names)
    for col in SCHEMA[table]:
        if seen[col] > 1:
            report.add(file, line, col, "column appears more than once in the header")
    missing = [c for c in REQUIRED[table] if c not in seen]
    for col in missing:
        report.add(file, line, col, f"required column is missing (columns: {', '.join(names)})")
    return not missing and all(seen[c] <= 1 for c in SCHEMA[table])


def _read_csv(table: str, path: Path, report: _Report) -> _Table | None:
    """Read a CSV file with every cell as a string; None after reporting why it cannot be."""
    name = path.name
    try:
        text = path.read_bytes().decode("utf-8-sig")  # tolerates a leading BOM
        csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))  # long texts are fine
        header = _first_row(text)
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1  # e.object lacks the BOM, if any
        report.add(name, line, None, f"not valid UTF-8 (byte {e.object[e.start]:#04x})")
        return None
    except (OSError, csv.Error) as e:
        report.add(name, None, None, f"cannot read: {e}")
        return None
    if header is None:
        report.add(name, 1, None, "empty file: no header row")
        return None
    stripped = [h.strip() for h in header]
    names = [h if h not in stripped[:i] else f"\0{i}" for i, h in enumerate(stripped)]
    if not _check_header(table, stripped, name, report):
        return None
    try:
        with warnings.catch_warnings():  # a long first row is a ParserWarning: make it an error
            warnings.simplefilter("error", pd.errors.ParserWarning)
            raw = pd.read_csv(  # from the file: a StringIO of the text would take 4 bytes a char
                path,
                encoding="utf-8-sig",
                names=names,
                header=0,
                dtype=str,
                index_col=False,
                usecols=[n for n in names if n in SCHEMA[table]],
                keep_default_na=False,
                na_filter=False,
            )
    except (ValueError, pd.errors.ParserWarning) as e:  # ParserError is a ValueError
        _report_unparseable(name, text, len(names), e, report)
        return None
    result = _Table(name, raw, len(names), text)
    # pandas pads short rows silently: count fields unless the commas prove every row is full
    if '"' in text or text.count(",") != (len(names) - 1) * (len(raw) + 1):
        result.starts, bad = _scan_csv(text, len(names))
        for line, message in bad:
            report.add(name, line, None, message)
        if bad:
            return None
    return result


def _first_row(text: str) -> list[str] | None:
    """The first non-blank CSV record of ``text``, parsed from as short a prefix as holds it.

    >>> _first_row("\\n a,b\\nc,d\\n"), _first_row('"x\\ny",z'), _first_row("")
    ([' a', 'b'], ['x\\ny', 'z'], None)
    """
    n = 1 << 16
    while True:
        whole = n >= len(text)
        rows = csv.reader(io.StringIO(text[:n], newline=""))
        try:
            first = next((row for row in rows if not _blank(row)), None)
            if whole or (first is not None and next(rows, None) is not None):
                return first  # a record after it: the prefix held all of it
        except csv.Error:
            if whole:
                raise
        n *= 4


def _scan_csv(text: str, n_fields: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Start line of each record, and (line, message) for rows without ``n_fields`` fields.

    Blank and whitespace-only lines are skipped, as pandas skips them.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    starts: list[int] = []
    bad: list[tuple[int, str]] = []
    end = 0  # last line of the previous record
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if _blank(row):
                continue
            starts.append(start)
            if n_fields and len(row) != n_fields:
                bad.append((start, f"expected {n_fields} fields, found {len(row)}"))
    except csv.Error as e:
        bad.append((reader.line_num, f"cannot parse CSV: {e}"))
    return np.asarray(starts[1:], dtype=np.int64), bad  # starts[0] is the header


def _blank(row: list[str]) -> bool:
    """True for a blank or whitespace-only line, which pandas skips."""
    return not row or (len(row) == 1 and not row[0].strip())


def _report_unparseable(
    name: str, text: str, n_fields: int, exc: Exception, report: _Report
) -> None:
    """Explain why pandas could not parse a CSV file, with line numbers when possible."""
    starts, bad = _scan_csv(text, n_fields)
    for line, message in bad:
        report.add(name, line, None, message)
    if bad:
        return
    message = str(exc).replace("Error tokenizing data. C error:", "").strip()
    if "EOF inside string" in message and len(starts):
        report.add(name, int(starts[-1]), None, "quoted field is not closed before end of file")
    else:
        report.add(name, None, None, f"cannot parse CSV: {message}")


def _read_parquet(table: str, path: Path, report: _Report) -> _Table | None:
    """Read a Parquet file and turn its (possibly typed) columns into strings."""
    try:
        df = pd.read_parquet(path).reset_index(drop=True)
    except (OSError, ValueError, TypeError, pa.ArrowException) as e:
        report.add(path.name, None, None, f"cannot read Parquet: {e}")
        return None
    names = [str(c).strip() for c in df.columns]
    if not _check_header(table, names, path.name, report):
        return None
    df.columns = pd.Index(names)
    return _Table(
        path.name, pd.DataFrame({c: _as_text(df[c]) for c in names if c in SCHEMA[table]})
    )


def _as_text(col: pd.Series) -> pd.Series:
    """A Parquet column as the strings a CSV cell would hold ("" for nulls)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        col = pd.Series(_seconds(col), index=col.index)
    if pd.api.types.is_string_dtype(col.dtype) and not pd.api.types.is_object_dtype(col.dtype):
        return col.fillna("").astype(str)
    if pd.api.types.is_numeric_dtype(col.dtype):  # ints, floats and bools, nullable or not
        return col.astype("string").fillna("").astype(str)
    return col.astype(object).map(_cell_text).astype(str)


def _cell_text(value: object) -> str:
    """One Parquet cell of an object column as CSV text (lists are joined with "|")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple, np.ndarray)):
        return "|".join(_cell_text(v) for v in value)
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return ""
    if isinstance(value, pd.Timestamp | np.datetime64):
        return _cell_text(float(_seconds(pd.Series([value]))[0]))
    return str(value)


def _seconds(dt: pd.Series) -> np.ndarray:
    """Datetimes (naive ones are UTC) as float unix seconds, NaN for NaT, in any resolution."""
    naive = pd.to_datetime(dt, utc=True).dt.tz_convert(None).to_numpy()
    return (naive - np.datetime64(0, "s")) / np.timedelta64(1, "s")


# --- typing columns ------------------------------------------------------------------------


def _convert(table: str, t: _Table, report: _Report) -> _Table:
    """Type the table's columns (reporting bad cells); absent optional columns get defaults."""
    raw = t.df.reset_index(drop=True)
    for col in REQUIRED[table]:
        if col.endswith("_id") and col in raw.columns:
            empty = np.flatnonzero((raw[col].str.strip() == "").to_numpy(bool))
            report.rows(t, col, empty, lambda _: "empty value; an id is required")
    out = {}
    for col, kind in SCHEMA[table].items():
        default = FLOAT_DEFAULTS.get((table, col), np.nan)
        if col not in raw.columns:
            out[col] = empty_table(table, len(raw))[col]
        else:
            non_negative = (table, col) in NON_NEGATIVE
            out[col] = _convert_column(raw[col], kind, default, non_negative, t, report)
    t.df = pd.DataFrame(out)
    return t


def _convert_column(
    cells: pd.Series, kind: str, default: float, non_negative: bool, t: _Table, report: _Report
) -> pd.Series:
    """One string column converted to its SCHEMA kind; bad cells are reported."""
    if kind == "str":
        return cells.astype(str)
    if kind == "list":
        lists = [tuple(filter(None, map(str.strip, v.split("|")))) for v in cells.tolist()]
        return pd.Series(lists, index=cells.index, dtype=object)
    values, bad = _parse(cells.str.strip(), kind, default)
    what = {"ts": "timestamp", "float": "number", "bool": "boolean"}[kind]
    name = str(cells.name)
    report.rows(t, name, np.flatnonzero(bad), lambda p: f"bad {what} {_show(cells.iat[p])}")
    if non_negative:
        negative = np.flatnonzero(values < 0)
        report.rows(t, name, negative, lambda p: f"must not be negative: {_show(cells.iat[p])}")
    return pd.Series(values, index=cells.index)


def _parse(text: pd.Series, kind: str, default: float) -> tuple[np.ndarray, np.ndarray]:
    """Values of stripped ts/float/bool cells, and the mask of bad cells (empty is default)."""
    empty = (text == "").to_numpy(bool)
    if kind == "bool":
        low = text.str.lower()
        false = low.isin(FALSE).to_numpy(bool)
        return ~false, ~(false | low.isin(TRUE).to_numpy(bool) | empty)
    values = _numbers(text)
    if kind == "ts":
        _parse_iso(text, values, empty)
    bad = ~empty & ~np.isfinite(values)
    values[bad] = np.nan
    values[empty] = default
    return values, bad


#: a plain decimal number; other cells (ISO times, words, "inf") are not numbers
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def _numbers(text: pd.Series) -> np.ndarray:
    """Cells that are plain decimal numbers as float64, NaN elsewhere.

    Arrow finds and converts them: pandas' ``to_numeric`` over a column of ISO times tries each
    cell as a number one by one, half the time of a load.

    >>> _numbers(pd.Series(["1.5", "+2", ".5e1", "2024-01-01", "", "inf", "1e"])).tolist()
    [1.5, 2.0, 5.0, nan, nan, nan, nan]
    """
    if not len(text):
        return np.zeros(0)
    cells = pa.array(text)  # no copy: the column is Arrow strings already
    looks = pc.fill_null(pc.match_substring_regex(cells, _NUMBER), False)
    mask = looks.to_numpy(zero_copy_only=False)
    values = np.full(len(text), np.nan)
    if mask.any():
        try:
            values[mask] = pc.cast(cells.filter(looks), pa.float64()).to_numpy()
        except pa.ArrowInvalid:  # a form Arrow does not read: pandas reads them
            values[mask] = pd.to_numeric(text[mask], errors="coerce").to_numpy(float)
    return values


def _parse_iso(text: pd.Series, seconds: np.ndarray, empty: np.ndarray) -> None:
    """Fill in, in place, the non-numeric timestamps that parse as ISO-8601 (naive is UTC)."""
    iso = ~empty & np.isnan(seconds)
    if iso.any():
        dt = pd.to_datetime(text[iso], utc=True, format="ISO8601", errors="coerce")
        seconds[iso] = _seconds(dt)


# --- checks across tables ------------------------------------------------------------------


def _check_across(root: Path, tables: dict[str, _Table], failed: set[str], report: _Report) -> None:
    """Duplicate keys, references to unknown posts/products, and the interactions rule."""
    for name, key in (("posts", "post_id"), ("products", "product_id"), ("groups", "group_id")):
        if name in tables:
            _check_unique(tables[name], key, report)
    _check_social(tables, report)
    for name in POST_REFERENCES:
        if name in tables and "posts" in tables:
            _check_known(tables[name], tables["posts"], report)
    for name, col in (
        ("posts", "product_ids"),
        ("purchases", "product_id"),
        ("groups", "product_id"),
    ):
        if name in tables and "products" in tables:
            _warn_unknown_products(tables[name], col, tables["products"], report)
    for t in tables.values():
        _warn_unservable_ids(t, report)
    if failed.isdisjoint(INTERACTIONS) and not any(
        len(tables[n].df) for n in INTERACTIONS if n in tables
    ):
        msg = "no interactions: likes and purchases are both missing or empty"
        report.add(str(root), None, None, msg)


def _check_social(tables: dict[str, _Table], report: _Report) -> None:
    """Rules of the social-shopping tables: a hide names a post or an author; a group's status
    is one of :data:`GROUP_STATUSES` and its size a whole number of at least 2; members belong
    to a known group (warned, like unknown products)."""
    if "hides" in tables:
        h = tables["hides"]
        neither = (h.df["post_id"].str.strip() == "") & (h.df["author_id"].str.strip() == "")
        report.rows(
            h,
            "post_id",
            np.flatnonzero(neither.to_numpy(bool)),
            lambda _: "a hide needs a post_id or an author_id",
        )
    if "groups" in tables:
        g = tables["groups"]
        status = g.df["status"].str.strip()
        bad = ~status.isin(("", *GROUP_STATUSES)).to_numpy(bool)
        allowed = ", ".join(GROUP_STATUSES)
        report.rows(
            g,
            "status",
            np.flatnonzero(bad),
            lambda p: f"bad status {_show(status.iat[p])}: one of {allowed}, or empty",
        )
        size = g.df["size"].to_numpy(float)
        bad = np.isfinite(size) & ((size < 2) | (size != np.round(size)))
        report.rows(
            g,
            "size",
            np.flatnonzero(bad),
            lambda p: f"bad size {size[p]:g}: a whole number of members, at least 2",
        )
    if "group_members" in tables and "groups" in tables:
        m = tables["group_members"]
        unknown = ~_isin(m.df["group_id"], tables["groups"].df["group_id"])
        if unknown.any():
            first = int(np.flatnonzero(unknown)[0])
            message = f"{int(unknown.sum())} row(s) name a group not in {tables['groups'].name}"
            report.add(m.name, m.line(first), "group_id", message, "warning")


def _check_unique(t: _Table, key: str, report: _Report) -> None:
    """Report every repeat of a key (posts.post_id, products.product_id)."""
    ids = t.df[key]
    dup = np.flatnonzero((ids.duplicated() & (ids.str.strip() != "")).to_numpy(bool))

    def message(pos: int) -> str:
        first = int(np.flatnonzero((ids == ids.iat[pos]).to_numpy(bool))[0])
        return f"duplicate {key} {_show(ids.iat[pos])} (first on {t.where(first)})"

    report.rows(t, key, dup, message)


def _check_known(t: _Table, posts: _Table, report: _Report) -> None:
    """Report each non-empty post_id that is not a known post."""
    ids = t.df["post_id"]
    unknown = (ids.str.strip() != "").to_numpy(bool) & ~_isin(ids, posts.df["post_id"])

    def message(pos: int) -> str:
        return f"unknown post {_show(ids.iat[pos])} (not in {posts.name})"

    report.rows(t, "post_id", np.flatnonzero(unknown), message)


def _warn_unknown_products(t: _Table, col: str, products: _Table, report: _Report) -> None:
    """One warning per file counting product ids missing from products, with examples."""
    ids = t.df[col].explode().dropna()  # one row per linked product, keeping the row's index
    ids = ids[(ids.astype(str).str.strip() != "").to_numpy(bool)]
    ids = ids[~_isin(ids, products.df["product_id"])]
    if ids.empty:
        return
    some = ids.iloc[:_WARNING_EXAMPLES].items()
    examples = ", ".join(f"{_show(v)} ({t.where(int(p))})" for p, v in some)
    message = f"{len(ids)} product id(s) in {ids.index.nunique()} row(s) are not in "
    message += f"{products.name}, e.g. {examples}"
    report.add(t.name, t.line(int(ids.index[0])), col, message, "warning")


def _warn_unservable_ids(t: _Table, report: _Report) -> None:
    """One warning per id column counting the ids the service's API refuses
    (:func:`feed.contract.valid_id`: "/", "|", leading or trailing spaces, some other ASCII
    punctuation, invisible characters, more than 128 characters): they train and publish, but
    no request can name them, so such a user's page or such an author's follow is a 400."""
    for col in t.df.columns:
        if not (col.endswith("_id") or col == "product_ids"):
            continue
        ids = t.df[col].explode() if col == "product_ids" else t.df[col]
        ids = ids.dropna().astype(str)
        ids = ids[ids.str.strip() != ""]
        unique = pd.Series(ids.unique())
        bad = set(unique[~unique.map(valid_id).to_numpy(bool)])
        if not bad:
            continue
        rows = ids[ids.isin(bad)]
        some = ", ".join(f"{_show(v)} ({t.where(int(p))})" for p, v in rows.iloc[:3].items())
        message = (
            f"{len(bad)} {col} value(s) the service's API cannot name (valid ids: {ID_RULE}), "
            f"e.g. {some}"
        )
        report.add(t.name, t.line(int(rows.index[0])), col, message, "warning")


def _isin(values: pd.Series, known: pd.Series) -> np.ndarray:
    """``values.isin(known)`` through object arrays (Arrow-backed ``isin`` is slow for big sets)."""
    values_obj = pd.Series(values.to_numpy(object), dtype=object)
    return values_obj.isin(pd.Series(known.to_numpy(object), dtype=object)).to_numpy(bool)
