"""Tests for feed.data: loading, typing and validating dataset directories."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feed.data import SCHEMA, Dataset, DatasetError, Problem, load, validate

POSTS = (
    "post_id,author_id,created_at,text,product_ids\n"
    "p1,a1,2018-05-31,hello,x1|x2\n"
    "p2,a2,959670000,,\n"
    "p3,a1,,plain,x2\n"
)
LIKES = "user_id,post_id\nu1,p1\nu2,p2\n"


def make(root: Path, **tables: str | bytes | None) -> Path:
    """Write ``<table>.csv`` files into ``root`` (str as UTF-8, bytes as is); None skips one.

    posts and likes default to small valid tables.
    """
    tables = {"posts": POSTS, "likes": LIKES, **tables}
    for table, content in tables.items():
        if content is None:
            continue
        data = content.encode("utf-8") if isinstance(content, str) else content
        (root / f"{table}.csv").write_bytes(data)
    return root


def errors(root: Path) -> list[Problem]:
    dataset, problems = validate(root)
    assert dataset is None, "expected the dataset to be rejected"
    return [p for p in problems if p.severity == "error"]


def where(problems: list[Problem]) -> set[tuple[str, int | None, str | None]]:
    return {(p.file, p.line, p.column) for p in problems}


# --- loading valid data ---------------------------------------------------------------------


def test_minimal_dataset_loads_with_types_and_defaults(tmp_path: Path) -> None:
    ds = load(make(tmp_path))
    assert ds.counts == {"posts": 3, "likes": 2}
    assert ds.problems == []
    assert ds.path == tmp_path
    for table in SCHEMA:
        df = getattr(ds, table)
        assert list(df.columns) == list(SCHEMA[table]), table
        for col, kind in SCHEMA[table].items():
            if kind == "str":
                assert pd.api.types.is_string_dtype(df[col]), (table, col)
            elif kind in ("ts", "float"):
                assert df[col].dtype == np.float64, (table, col)
            elif kind == "bool":
                assert df[col].dtype == bool, (table, col)
    posts = ds.posts
    assert posts["post_id"].tolist() == ["p1", "p2", "p3"]
    assert posts["product_ids"].tolist() == [("x1", "x2"), (), ("x2",)]
    assert posts["tags"].tolist() == [(), (), ()]
    assert posts["title"].tolist() == ["", "", ""]
    assert posts["text"].tolist() == ["hello", "", "plain"]
    assert posts["created_at"].iloc[1] == 959670000.0
    assert math.isnan(posts["created_at"].iloc[2])
    assert ds.likes["weight"].tolist() == [1.0, 1.0]
    assert ds.likes["ts"].isna().all()
    assert len(ds.products) == 0 and len(ds.purchases) == 0
    assert not ds.has_timestamps


def test_ids_stay_strings(tmp_path: Path) -> None:
    posts = "post_id,author_id,created_at,text,product_ids\n007,0,,,\n7,NA,,,\nnull,nan,,,\n"
    likes = "user_id,post_id\n0012,007\n12,7\nNaN,null\n"
    ds = load(make(tmp_path, posts=posts, likes=likes))
    assert ds.posts["post_id"].tolist() == ["007", "7", "null"]
    assert ds.posts["author_id"].tolist() == ["0", "NA", "nan"]
    assert ds.likes["user_id"].tolist() == ["0012", "12", "NaN"]
    assert ds.likes["post_id"].tolist() == ["007", "7", "null"]


def test_unix_and_iso_timestamps_parse(tmp_path: Path) -> None:
    stamps = {
        "959670000": 959670000.0,
        "959670000.5": 959670000.5,
        "2018-05-31": 1527724800.0,
        "2018-05-31T08:00:00Z": 1527753600.0,
        "2018-05-31T08:00:00": 1527753600.0,  # naive means UTC
        "2018-05-31 08:00:00": 1527753600.0,
        "2018-05-31T16:00:00+08:00": 1527753600.0,
        "2018-05-31T08:00:00.250Z": 1527753600.25,
        " 2018-05-31 ": 1527724800.0,
        "+959670000": 959670000.0,
        "9.5967e8": 959670000.0,
        ".5": 0.5,
    }
    likes = "user_id,post_id,ts\n" + "".join(f'u{i},p1,"{s}"\n' for i, s in enumerate(stamps))
    ds = load(make(tmp_path, likes=likes))
    assert ds.likes["ts"].tolist() == pytest.approx(list(stamps.values()))
    assert ds.has_timestamps
    bad = likes + "".join(f"v{i},p1,{s}\n" for i, s in enumerate(["inf", "nan", "1e", "1.2.3"]))
    make(tmp_path, likes=bad)
    assert [p.message for p in errors(tmp_path)] == [
        f"bad timestamp '{s}'" for s in ("inf", "nan", "1e", "1.2.3")
    ]


def test_quoted_text_bom_and_line_numbers_after_multiline_record(tmp_path: Path) -> None:
    posts = (
        "\ufeffpost_id,author_id,created_at,text,product_ids,title,tags\n"
        'p1,a1,2018-05-31,"好看, 又便宜\n第二行 ""quoted""",x1,"Title, with comma", a | b ||\n'
        "p2,a2,2018-06-01,English and 中文,,,\n"
        "p3,a2,someday,bad time,,,\n"
    )
    root = make(tmp_path, posts=posts)
    problems = errors(root)
    assert where(problems) == {("posts.csv", 5, "created_at")}
    assert str(problems[0]) == "posts.csv:5: column 'created_at': bad timestamp 'someday'"
    (root / "posts.csv").write_text(posts.replace("someday", ""), encoding="utf-8")
    ds = load(root)
    assert ds.posts["text"].tolist() == [
        '好看, 又便宜\n第二行 "quoted"',
        "English and 中文",
        "bad time",
    ]
    assert ds.posts["title"].iloc[0] == "Title, with comma"
    assert ds.posts["tags"].iloc[0] == ("a", "b")


def test_crlf_blank_lines_and_unknown_columns(tmp_path: Path) -> None:
    likes = "user_id,post_id,mood\r\n\r\nu1,p1,happy\r\n   \r\nu2,p2,sad\r\n\r\n"
    root = make(tmp_path, likes=likes)
    ds = load(root)
    assert ds.likes["user_id"].tolist() == ["u1", "u2"]
    assert "mood" not in ds.likes.columns
    bad = likes.replace("u2,p2", "u2,nope")
    (root / "likes.csv").write_text(bad, encoding="utf-8", newline="")
    assert where(errors(root)) == {("likes.csv", 5, "post_id")}


def test_header_after_a_long_blank_start_and_a_long_header(tmp_path: Path) -> None:
    """The header is parsed from a prefix of the file grown until it holds the whole record."""
    long_name = '"' + "x\n" * 100_000 + '"'  # a quoted header cell across 100,000 lines
    likes = "\n" * 70_000 + f"user_id,post_id,{long_name}\nu1,p1,\nu2,p2,\n"
    root = make(tmp_path, likes=likes)
    assert load(root).likes["user_id"].tolist() == ["u1", "u2"]
    make(root, likes=likes.replace("u2,p2", "u2,nope"))
    assert where(errors(root)) == {("likes.csv", 170_003, "post_id")}


def test_products_purchases_and_optional_columns(tmp_path: Path) -> None:
    products = (
        "product_id,title,category,price,in_stock\n"
        "x1,Cup,kitchen,9.5,TRUE\nx2,Pan,kitchen,,no\nx3,Pot,kitchen,1e2,\nx4,Lid,kitchen,0,0\n"
    )
    purchases = "user_id,product_id,post_id,quantity,ts\nu1,x1,p1,2,1\nu2,x2,,,\n"
    ds = load(make(tmp_path, products=products, purchases=purchases, likes=None))
    assert ds.products["price"].tolist()[0] == 9.5 and math.isnan(ds.products["price"].iloc[1])
    assert ds.products["price"].iloc[2] == 100.0
    assert ds.products["in_stock"].tolist() == [True, False, True, False]
    assert ds.products["brand"].tolist() == ["", "", "", ""]
    assert ds.purchases["quantity"].tolist() == [2.0, 1.0]
    assert ds.purchases["post_id"].tolist() == ["p1", ""]
    assert ds.counts == {"posts": 3, "products": 4, "purchases": 2}
    assert not ds.has_timestamps  # the second purchase has no ts


def test_summary(tmp_path: Path) -> None:
    purchases = "user_id,product_id\nu1,x9\nu3,x1\n"
    ds = load(make(tmp_path, purchases=purchases))
    assert ds.summary() == {
        **{"posts": 3, "products": 0, "likes": 2, "purchases": 2},
        **{"follows": 0, "clicks": 0, "impressions": 0},
        **{"shares": 0, "groups": 0, "group_members": 0, "hides": 0},
        **{"n_users": 3, "n_posts": 3, "n_products": 3, "n_authors": 2},
    }


# --- errors ---------------------------------------------------------------------------------

LIKES_BAD_TS = "user_id,post_id,ts\nu1,p1,959670000\nu2,p2,2018-05-31\nu3,p1,yesterday\n"

ERROR_CASES = {
    "missing posts": ({"posts": None}, ("posts.csv", None, None)),
    "missing column": ({"likes": "user_id\nu1\n"}, ("likes.csv", 1, "post_id")),
    "missing posts column": (
        {"posts": "post_id,author_id,created_at,text\np1,a,,\n"},
        ("posts.csv", 1, "product_ids"),
    ),
    "empty user id": ({"likes": "user_id,post_id\nu1,p1\n ,p2\n"}, ("likes.csv", 3, "user_id")),
    "empty author": (
        {"posts": POSTS.replace("p2,a2", "p2,")},
        ("posts.csv", 3, "author_id"),
    ),
    "empty follower": (
        {"follows": "follower_id,followee_id\nu1,a1\n,a2\n"},
        ("follows.csv", 3, "follower_id"),
    ),
    "bad timestamp": ({"likes": LIKES_BAD_TS}, ("likes.csv", 4, "ts")),
    "bad weight": ({"likes": "user_id,post_id,weight\nu1,p1,lots\n"}, ("likes.csv", 2, "weight")),
    "negative weight": (
        {"likes": "user_id,post_id,weight\nu1,p1,-1\n"},
        ("likes.csv", 2, "weight"),
    ),
    "infinite weight": (
        {"likes": "user_id,post_id,weight\nu1,p1,inf\n"},
        ("likes.csv", 2, "weight"),
    ),
    "negative quantity": (
        {"purchases": "user_id,product_id,quantity\nu1,x1,1\nu1,x1,-2\n"},
        ("purchases.csv", 3, "quantity"),
    ),
    "bad price": (
        {"products": "product_id,title,category,price\nx1,Cup,k,cheap\n"},
        ("products.csv", 2, "price"),
    ),
    "bad boolean": (
        {"products": "product_id,title,category,in_stock\nx1,Cup,k,yes\nx2,Pan,k,maybe\n"},
        ("products.csv", 3, "in_stock"),
    ),
    "duplicate post": ({"posts": POSTS + "p2,a9,,,\n"}, ("posts.csv", 5, "post_id")),
    "duplicate product": (
        {"products": "product_id,title,category\nx1,a,b\nx2,a,b\nx1,c,d\n"},
        ("products.csv", 4, "product_id"),
    ),
    "like of unknown post": (
        {"likes": "user_id,post_id\nu1,p1\nu2,p9\n"},
        ("likes.csv", 3, "post_id"),
    ),
    "click of unknown post": (
        {"clicks": "user_id,post_id\nu1,p1\nu1,P1\n"},
        ("clicks.csv", 3, "post_id"),
    ),
    "impression of unknown post": (
        {"impressions": "user_id,post_id,ts\nu1,p7,1\n"},
        ("impressions.csv", 2, "post_id"),
    ),
    "purchase via unknown post": (
        {"purchases": "user_id,product_id,post_id\nu1,x1,\nu1,x1,p0\n"},
        ("purchases.csv", 3, "post_id"),
    ),
    "no interactions": ({"likes": "user_id,post_id\n"}, (None, None, None)),
    "invalid utf-8": ({"likes": b"user_id,post_id\nu1,p1\nu\xff2,p2\n"}, ("likes.csv", 3, None)),
    "short row": ({"likes": "user_id,post_id\nu1,p1\nu2\nu3,p2\n"}, ("likes.csv", 3, None)),
    "long row": ({"likes": "user_id,post_id\nu1,p1\nu2,p1,p2\n"}, ("likes.csv", 3, None)),
    "long first row": ({"likes": "user_id,post_id\nu1,p1,p2\nu2,p1\n"}, ("likes.csv", 2, None)),
    "trailing empty field": ({"likes": "user_id,post_id\nu1,p1,\nu2,p1\n"}, ("likes.csv", 2, None)),
    "unclosed quote": (
        {"likes": 'user_id,post_id\nu1,p1\nu2,"p1\nu3,p2\n'},
        ("likes.csv", 3, None),
    ),
    "empty file": ({"follows": ""}, ("follows.csv", 1, None)),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_each_error_kind_names_file_line_and_column(tmp_path: Path, case: str) -> None:
    tables, (file, line, column) = ERROR_CASES[case]
    root = make(tmp_path, **tables)
    problems = errors(root)
    assert len(problems) == 1, problems
    p = problems[0]
    assert (p.file if file else None, p.line, p.column) == (file, line, column)
    with pytest.raises(DatasetError) as caught:
        load(root)
    assert [p for p in caught.value.problems if p.severity == "error"] == problems
    assert str(caught.value).splitlines()[0] == str(p)  # errors come first


def test_both_csv_and_parquet_is_an_error(tmp_path: Path) -> None:
    root = make(tmp_path)
    pd.DataFrame({"user_id": ["u1"], "post_id": ["p1"]}).to_parquet(root / "likes.parquet")
    assert where(errors(root)) == {("likes.csv", None, None)}


@pytest.mark.parametrize("missing", [True, False])
def test_path_that_is_not_a_directory(tmp_path: Path, missing: bool) -> None:
    path = tmp_path / "nothing"
    if not missing:
        path.write_text("x")
    with pytest.raises(DatasetError, match="nothing") as caught:
        load(path)
    assert len(caught.value.problems) == 1


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    likes = "user_id,post_id,ts,weight\nu1,p1,1,x\n,p9,soon,1\n"
    products = "product_id,title,category,in_stock\nx1,a,b,perhaps\n"
    problems = errors(make(tmp_path, likes=likes, products=products, posts=POSTS + "p1,a,,,\n"))
    assert where(problems) == {
        ("likes.csv", 2, "weight"),
        ("likes.csv", 3, "user_id"),
        ("likes.csv", 3, "post_id"),
        ("likes.csv", 3, "ts"),
        ("products.csv", 2, "in_stock"),
        ("posts.csv", 5, "post_id"),
    }


def test_problems_per_column_are_capped(tmp_path: Path) -> None:
    likes = "user_id,post_id,ts\n" + "u,p1,never\n" * 100 + "u,p1,1\n" + "u,zz,1\n" * 3
    problems = errors(make(tmp_path, likes=likes))
    ts = [p for p in problems if p.column == "ts"]
    assert [p.line for p in ts[:20]] == list(range(2, 22))
    assert len(ts) == 21 and ts[-1].line is None and "80 more" in ts[-1].message
    assert where(p for p in problems if p.column == "post_id") == {
        ("likes.csv", line, "post_id") for line in (103, 104, 105)
    }


def test_dataset_error_lists_problems_one_per_line(tmp_path: Path) -> None:
    lines = "".join(f"u,p1,{c},{c}\n" for c in "abcdefghijklmnopqrstuvwxyz")
    root = make(tmp_path, likes="user_id,post_id,ts,weight\n" + lines)
    with pytest.raises(DatasetError) as caught:
        load(root)
    text = str(caught.value).splitlines()
    assert len(caught.value.problems) == 42  # 2 columns x (20 + "... and 6 more")
    assert text == [str(p) for p in caught.value.problems]
    assert text[0] == "likes.csv:2: column 'ts': bad timestamp 'a'"
    assert "... and 6 more" in text[20]


def test_problem_str() -> None:
    assert str(Problem("likes.csv", 14, "ts", "bad timestamp 'x'")) == (
        "likes.csv:14: column 'ts': bad timestamp 'x'"
    )
    assert str(Problem("likes.parquet", 3, "ts", "bad")) == "likes.parquet: row 3: column 'ts': bad"
    assert str(Problem("posts.csv", None, None, "missing")) == "posts.csv: missing"
    warning = Problem("a.csv", 2, None, "odd", "warning")
    assert str(warning) == "warning: a.csv:2: odd"


def test_dataset_error_truncates_long_lists() -> None:
    problems = [Problem("likes.csv", i, "ts", "bad") for i in range(2, 62)]
    lines = str(DatasetError(problems)).splitlines()
    assert len(lines) == 51 and lines[-1] == "... and 10 more"


# --- warnings -------------------------------------------------------------------------------


def test_unknown_products_warn_but_load(tmp_path: Path) -> None:
    products = "product_id,title,category\nx1,Cup,kitchen\n"
    purchases = "user_id,product_id\nu1,x1\nu1,x7\nu2,x8\n"
    ds = load(make(tmp_path, products=products, purchases=purchases))
    assert {(p.file, p.line, p.column, p.severity) for p in ds.problems} == {
        ("posts.csv", 2, "product_ids", "warning"),
        ("purchases.csv", 3, "product_id", "warning"),
    }
    posts_warning = next(p for p in ds.problems if p.file == "posts.csv")
    assert "2 product id(s) in 2 row(s)" in posts_warning.message
    assert "'x2' (line 2)" in posts_warning.message
    assert str(posts_warning).startswith("warning: posts.csv:2: column 'product_ids': ")
    assert len(ds.purchases) == 3  # rows are kept


def test_unknown_products_without_products_file_are_fine(tmp_path: Path) -> None:
    ds = load(make(tmp_path, purchases="user_id,product_id\nu1,x7\n"))
    assert ds.problems == []


def test_ids_the_api_cannot_name_warn_but_load(tmp_path: Path) -> None:
    """The format allows any string as an id; the service's API refuses some ("/", "|",
    leading spaces...): validate says so, once per column, and the rows are kept. Inner spaces
    are fine."""
    likes = 'user_id,post_id\nu1,p1\nmary smith,p2\n" mary",p1\nu|2,p2\n'
    ds = load(make(tmp_path, likes=likes))
    assert [(p.file, p.line, p.column, p.severity) for p in ds.problems] == [
        ("likes.csv", 4, "user_id", "warning")
    ]
    message = ds.problems[0].message
    assert message.startswith("2 user_id value(s) the service's API cannot name")
    assert "' mary' (line 4)" in message and "'u|2' (line 5)" in message
    assert len(ds.likes) == 4


# --- parquet --------------------------------------------------------------------------------


def test_parquet_of_the_raw_strings_loads_like_the_csv(tmp_path: Path) -> None:
    csv_dir, pq_dir = tmp_path / "csv", tmp_path / "pq"
    csv_dir.mkdir()
    pq_dir.mkdir()
    products = "product_id,title,category,price,in_stock\nx1,Cup,k,9.5,yes\nx2,Pan,k,,\n"
    likes = "user_id,post_id,ts,weight\n007,p1,2018-05-31T08:00:00Z,2\n7,p2,,\n"
    make(csv_dir, products=products, likes=likes)
    for path in csv_dir.iterdir():
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        raw.to_parquet(pq_dir / f"{path.stem}.parquet")
    assert_same(load(csv_dir), load(pq_dir))


def test_parquet_of_a_loaded_dataset_loads_identically(tmp_path: Path) -> None:
    csv_dir, pq_dir = tmp_path / "csv", tmp_path / "pq"
    csv_dir.mkdir()
    pq_dir.mkdir()
    products = "product_id,title,category,price,in_stock\nx1,Cup,k,9.5,yes\nx2,Pan,k,,no\n"
    likes = "user_id,post_id,ts,weight\n007,p1,959670000.25,2\n7,p2,,\n"
    original = load(make(csv_dir, products=products, likes=likes))
    for table in original.counts:
        getattr(original, table).to_parquet(pq_dir / f"{table}.parquet")
    assert_same(original, load(pq_dir))


def test_parquet_typed_columns_and_row_numbers(tmp_path: Path) -> None:
    make(tmp_path, likes=None)
    when = pd.to_datetime(["2018-05-31T08:00:00Z", None, "2018-05-31T08:00:01Z"])
    likes = pd.DataFrame({"user_id": [1, 2, 3], "post_id": ["p1", "p2", "p3"], "ts": when})
    likes.to_parquet(tmp_path / "likes.parquet")
    ds = load(tmp_path)
    assert ds.likes["user_id"].tolist() == ["1", "2", "3"]
    assert ds.likes["ts"].iloc[0] == 1527753600.0 and math.isnan(ds.likes["ts"].iloc[1])
    likes["ts"] = ["1", "2", "later"]
    likes.to_parquet(tmp_path / "likes.parquet")
    problems = errors(tmp_path)
    assert where(problems) == {("likes.parquet", 3, "ts")}
    assert str(problems[0]).startswith("likes.parquet: row 3: column 'ts'")


def test_corrupt_parquet_is_reported(tmp_path: Path) -> None:
    make(tmp_path, likes=None)
    (tmp_path / "likes.parquet").write_bytes(b"PAR1 not really")
    assert where(errors(tmp_path)) == {("likes.parquet", None, None)}


def assert_same(a: Dataset, b: Dataset) -> None:
    assert a.counts == b.counts
    assert a.problems == b.problems
    for table in SCHEMA:
        left, right = getattr(a, table), getattr(b, table)
        pd.testing.assert_frame_equal(left, right, check_dtype=False, obj=table)
        assert [left[c].dtype.kind for c in left] == [right[c].dtype.kind for c in right]


# --- robustness -----------------------------------------------------------------------------

VALID_LIKES = 'user_id,post_id,ts,weight\nu1,p1,2018-05-31,1.5\n"u,2",p2,959670000,\n'


def load_or_dataset_error(root: Path) -> None:
    try:
        load(root)
    except DatasetError as e:
        assert e.problems and all(isinstance(p, Problem) for p in e.problems)
        assert str(e)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=200))
def test_random_bytes_only_raise_dataset_error(tmp_path: Path, data: bytes) -> None:
    load_or_dataset_error(make(tmp_path, likes=data))


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.integers(0, 3),
            st.sampled_from(['"', ",", "\n", "\r", "|", "x", "-1", "\x00", "é", "\ufeff", ""]),
        ),
        max_size=6,
    ),
    table=st.sampled_from(["posts", "likes"]),
)
def test_mutated_csv_only_raises_dataset_error(
    tmp_path: Path, edits: list[tuple[int, int, str]], table: str
) -> None:
    text = {"posts": POSTS, "likes": VALID_LIKES}[table]
    for position, delete, insert in edits:
        i = position % (len(text) + 1)
        text = text[:i] + insert + text[i + delete :]
    load_or_dataset_error(make(tmp_path, **{table: text}))


def test_social_tables(tmp_path: Path) -> None:
    """shares, groups, group_members and hides load typed, with their own rules checked."""
    root = make(tmp_path)
    (root / "shares.csv").write_text(
        "user_id,post_id,receiver_id,channel\nu1,p1,u2,chat\nu2,p2,,\n"
    )
    (root / "groups.csv").write_text(
        "group_id,product_id,initiator_id,status,size,price\ng1,x1,u1,succeeded,3,9.9\ng2,x1,u2,,,\n"
    )
    (root / "group_members.csv").write_text("group_id,user_id\ng1,u2\ng1,u3\n")
    (root / "hides.csv").write_text("user_id,post_id,author_id\nu1,p1,\nu2,,a1\n")
    ds = load(root)
    assert ds.shares["receiver_id"].tolist() == ["u2", ""]
    assert ds.groups["size"].tolist() == [3.0, 2.0]  # 2 by default
    assert ds.groups["status"].tolist() == ["succeeded", ""]
    assert ds.group_members["group_id"].tolist() == ["g1", "g1"]
    assert ds.hides["author_id"].tolist() == ["", "a1"]


def test_social_tables_errors(tmp_path: Path) -> None:
    root = make(tmp_path)
    (root / "groups.csv").write_text(
        "group_id,product_id,initiator_id,status,size\ng1,x1,u1,opne,1\ng1,x1,u2,open,2.5\n"
    )
    (root / "hides.csv").write_text("user_id,post_id,author_id\nu1,,\n")
    (root / "shares.csv").write_text("user_id,post_id\nu1,nosuch\n")
    (root / "group_members.csv").write_text("group_id,user_id\ng9,u3\n")
    _, problems = validate(root)
    text = "\n".join(map(str, problems))
    assert "groups.csv:3: column 'group_id': duplicate group_id 'g1'" in text
    assert "groups.csv:2: column 'status': bad status 'opne'" in text
    assert "groups.csv:2: column 'size': bad size 1" in text
    assert "groups.csv:3: column 'size': bad size 2.5" in text
    assert "hides.csv:2: column 'post_id': a hide needs a post_id or an author_id" in text
    assert "shares.csv:2: column 'post_id': unknown post 'nosuch'" in text
    assert "warning: group_members.csv:2: column 'group_id': 1 row(s) name a group" in text
