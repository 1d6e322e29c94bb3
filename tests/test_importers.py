"""``feed import movielens`` on a few hand-written rows in both GroupLens layouts
(ml-latest-small and ml-100k): the mapping of shared/data/movielens-small/README.md, and the
result loads with :func:`feed.data.load`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from click.testing import CliRunner

from feed.cli import main
from feed.data import load
from feed.data.importers import (
    ImportError_,
    import_ciao,
    import_interactions,
    import_movielens,
    import_recbole,
)

LATEST = {
    "movies.csv": (
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        "40697,Babylon 5,Sci-Fi\n"
        "143410,Hyena Road,(no genres listed)\n"
    ),
    "ratings.csv": (
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n"
        "1,11,3.5,964981247\n"
        "2,11,5.0,828124615\n"
        "2,40697,4.5,1445714994\n"
        "7,143410,0.5,1445715000\n"
    ),
    "tags.csv": (
        "userId,movieId,tag,timestamp\n"
        "2,1,pixar,1445714994\n"
        "7,1,Pixar,1445714995\n"
        "7,1,fun,1445714996\n"
        "2,11,politics,1445714997\n"
    ),
}

ML100K = {
    "u.data": "196\t242\t3\t881250949\n186\t302\t4\t891717742\n22\t242\t5\t878887116\n",
    "u.genre": "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\n"
    "Crime|6\nDocumentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\n"
    "Musical|12\nMystery|13\nRomance|14\nSci-Fi|15\nThriller|16\nWar|17\n"
    "Western|18\n\n",
    "u.item": "242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)"
    "|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "302|L.A. Confidential (1997)|01-Jan-1997||http://x|0|0|0|0|0|0|1|0|0|0|1|0|0|1"
    "|0|0|1|0|0\n"
    "1682|Scream of Stone (Schrei aus Stein) (1991)|08-Mar-1996||http://x|0|0|0|0|0|0"
    "|0|0|1|0|0|0|0|0|0|0|0|0|0\n"
    "999|Caf\xe9 au lait|01-Jan-1994||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
}


def write(root: Path, files: dict[str, str], encoding: str = "utf-8") -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding=encoding)
    return root


def test_ml_latest_small_layout(tmp_path: Path) -> None:
    src = write(tmp_path / "ml-latest-small", LATEST)
    counts = import_movielens(src, tmp_path / "out")
    assert counts == {"posts": 4, "products": 4, "likes": 3}
    posts = (tmp_path / "out" / "posts.csv").read_text().splitlines()
    assert posts[0] == "post_id,author_id,created_at,text,product_ids,title,tags"
    assert posts[1] == (
        'm1,genre:Adventure,1995-01-01,"Toy Story (1995). Adventure, Animation, '
        'Children, Comedy, Fantasy. Tags: pixar, fun",p1,Toy Story (1995),'
        "Adventure|Animation|Children|Comedy|Fantasy|pixar|fun"
    )
    # no year in the title: the first rating's time; no genres: the GroupLens placeholder
    assert posts[3] == (
        "m40697,genre:Sci-Fi,1996-03-29T18:36:55Z,Babylon 5. Sci-Fi,p40697,Babylon 5,Sci-Fi"
    )
    assert posts[4].startswith("m143410,genre:no-genres-listed,1996-03-29T18:36:55Z,")
    ds = load(tmp_path / "out")
    assert ds.problems == []
    assert ds.likes[["user_id", "post_id"]].values.tolist() == [
        ["1", "m1"],
        ["2", "m11"],
        ["2", "m40697"],
    ]
    assert ds.likes["ts"].tolist() == [964982703.0, 828124615.0, 1445714994.0]
    assert ds.posts.loc[1, "title"] == "American President, The (1995)"
    assert ds.products.set_index("product_id").loc["p11", "category"] == "Comedy"


def test_ml_100k_layout(tmp_path: Path) -> None:
    src = write(tmp_path / "ml-100k", ML100K, encoding="latin-1")
    assert import_movielens(src, tmp_path / "out") == {"posts": 4, "products": 4, "likes": 2}
    ds = load(tmp_path / "out")
    posts = ds.posts.set_index("post_id")
    assert posts.loc["m302", "author_id"] == "genre:Crime"
    assert posts.loc["m302", "tags"] == ("Crime", "Film-Noir", "Mystery", "Thriller")
    assert posts.loc["m1682", "created_at"] == pd.Timestamp("1991-01-01", tz="UTC").timestamp()
    assert posts.loc["m999", "title"] == "Café au lait"
    assert posts.loc["m999", "created_at"] == 878887116.0  # no year: the first rating
    assert sorted(zip(ds.likes["user_id"], ds.likes["post_id"], strict=True)) == [
        ("186", "m302"),
        ("22", "m242"),
    ]


def test_cli_import_and_a_clear_error(tmp_path: Path) -> None:
    src = write(tmp_path / "src", LATEST)
    runner = CliRunner()
    res = runner.invoke(main, ["import", "movielens", str(src), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "likes.csv" in res.output and load(tmp_path / "out").counts["likes"] == 3
    empty = write(tmp_path / "empty", {"README.txt": "nothing"})
    res = runner.invoke(main, ["import", "movielens", str(empty), str(tmp_path / "x")])
    assert res.exit_code == 1 and "u.data" in res.output
    with pytest.raises(ImportError_, match="ratings.csv"):
        import_movielens(empty, tmp_path / "y")


def test_ciao_mat_files(tmp_path: Path) -> None:
    src = tmp_path / "ciao"
    src.mkdir()
    # userid, productid, categoryid, rating, helpfulness, unix time
    rating = np.array(
        [
            [6, 90, 8, 5, 4, 959670000],
            [7, 91, 4, 3, 4, 959756400],
            [7, 90, 5, 4, 2, 959756400],
            [8, 92, 1, 5, 5, 960000000],
            [9, 92, 2, 1, 3, 960100000],
            [9, 92, 2, 2, 3, 960200000],
        ],
        float,
    )
    scipy.io.savemat(src / "rating_with_timestamp.mat", {"rating": rating})
    scipy.io.savemat(src / "trustnetwork.mat", {"trustnetwork": np.array([[6, 7], [8, 6.0]])})
    counts = import_ciao(src, tmp_path / "out")
    assert counts == {"posts": 6, "products": 3, "purchases": 6, "follows": 2}
    posts = (tmp_path / "out" / "posts.csv").read_text().splitlines()
    assert posts[1] == "0,6,959670000,cat8,90,,"
    ds = load(tmp_path / "out")
    # product 90: categories 8 and 5 once each -> the first seen; 92: 2 (twice) beats 1
    assert ds.products[["product_id", "category"]].values.tolist() == [
        ["90", "8"],
        ["91", "4"],
        ["92", "2"],
    ]
    assert ds.follows[["follower_id", "followee_id"]].values.tolist() == [["6", "7"], ["8", "6"]]
    assert len(ds.purchases) == 6 and ds.has_timestamps
    with pytest.raises(ImportError_, match="trustnetwork.mat"):
        import_ciao(tmp_path / "out", tmp_path / "x")


# --- RecBole atomic files and generic interaction CSVs ---------------------------------------
RECBOLE = {
    "shop.inter": (
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t5\t1700000300\n"
        "1\t10\t4\t1700000100\n"  # the same pair again, earlier: one like, at its first time
        "2\t10\t2\t1700000200\n"  # rated below --min-rating
        "2\t11\t4.5\t1700000400\n"
        "3\t12\t4\t1700000500\n"
    ),
    "shop.item": (
        "item_id:token\ttitle:token_seq\tcategories:token_seq\tprice:float\n"
        "10\tRed Lipstick\tBeauty Makeup\t9.9\n"
        "11\tTrail Shoes\tSports\t59\n"
        "12\tMystery Box\t\t1\n"
        "13\tNever Bought\tHome\t5\n"
    ),
}


def _validate_cli(out: Path) -> None:
    res = CliRunner().invoke(main, ["validate", str(out)])
    assert res.exit_code == 0 and "0 error(s)" in res.output, res.output


def test_recbole_atomic_files_through_the_cli(tmp_path: Path) -> None:
    src = write(tmp_path / "src", RECBOLE)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["import", "recbole", str(src), str(out), "--min-rating", "4"])
    assert res.exit_code == 0, res.output
    assert "likes.csv" in res.output and str(out) in res.output
    _validate_cli(out)
    ds = load(out)
    posts = ds.posts.set_index("post_id")
    # every item of .item is a post linking one product, authored by its first category
    assert list(posts.index) == ["10", "11", "12", "13"]
    assert posts.loc["10", "author_id"] == "categories:Beauty"
    assert posts.loc["12", "author_id"] == "item:12"  # no category: the item itself
    assert posts.loc["10", "product_ids"] == ("10",)
    assert posts.loc["10", "text"] == "Red Lipstick Beauty"
    assert posts.loc["10", "created_at"] == 1700000100.0  # its first interaction
    assert np.isnan(posts.loc["13", "created_at"])  # never interacted with
    products = ds.products.set_index("product_id")
    assert (
        products.loc["11", "title"] == "Trail Shoes" and products.loc["11", "category"] == "Sports"
    )
    likes = sorted(zip(ds.likes["user_id"], ds.likes["post_id"], ds.likes["ts"], strict=True))
    assert likes == [
        ("1", "10", 1700000100.0),
        ("2", "11", 1700000400.0),
        ("3", "12", 1700000500.0),
    ]


def test_recbole_without_item_file_and_the_errors(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"a.inter": "user_id:token\titem_id:token\n1\t7\n2\t7\n"})
    counts = import_recbole(src / "a.inter", tmp_path / "out")
    assert counts == {"posts": 1, "products": 1, "likes": 2}
    ds = load(tmp_path / "out")
    assert ds.posts["author_id"].tolist() == ["item:7"] and not ds.has_timestamps
    _validate_cli(tmp_path / "out")
    (src / "b.inter").write_text("user_id:token\titem_id:token\n1\t8\n")
    with pytest.raises(ImportError_, match="2 .inter files .*--dataset"):
        import_recbole(src, tmp_path / "x")
    assert import_recbole(src, tmp_path / "y", dataset="b")["likes"] == 1
    (src / "c.inter").write_text("uid:token\titem_id:token\n1\t8\n")
    res = CliRunner().invoke(main, ["import", "recbole", str(src / "c.inter"), str(tmp_path / "z")])
    assert res.exit_code == 1 and "no 'user_id' column (found: uid, item_id)" in res.output
    with pytest.raises(ImportError_, match="no category column 'genre'"):
        write(
            tmp_path / "d",
            {
                "d.inter": "user_id:token\titem_id:token\n1\t8\n",
                "d.item": "item_id:token\ttitle:token\n8\tx\n",
            },
        )
        import_recbole(tmp_path / "d", tmp_path / "dd", category_field="genre")


def test_interactions_csv_with_named_columns(tmp_path: Path) -> None:
    src = tmp_path / "events.csv"
    src.write_text(
        "uid;sku;when;cat;name\n"
        "a;s1;2024-05-01T10:00:00Z;shoes;Runner\n"
        "b;s1;1714600000;shoes;Runner\n"
        "a;s2;2024-05-03;;Cap\n"
        "a;s1;2024-06-01;shoes;Runner\n"
    )
    out = tmp_path / "out"
    args = ["import", "interactions", str(src), str(out), "--sep", ";", "--user-col", "uid"]
    args += ["--item-col", "sku", "--time-col", "when", "--category-col", "cat"]
    res = CliRunner().invoke(main, [*args, "--title-col", "name"])
    assert res.exit_code == 0, res.output
    _validate_cli(out)
    ds = load(out)
    posts = ds.posts.set_index("post_id")
    assert posts.loc["s1", "author_id"] == "cat:shoes" and posts.loc["s2", "author_id"] == "item:s2"
    assert posts.loc["s1", "title"] == "Runner"
    assert posts.loc["s1", "created_at"] == pd.Timestamp("2024-05-01T10:00:00Z").timestamp()
    assert len(ds.likes) == 3  # (a, s1) once, at its first time
    first = ds.likes[(ds.likes["user_id"] == "a") & (ds.likes["post_id"] == "s1")]["ts"]
    assert first.tolist() == [pd.Timestamp("2024-05-01T10:00:00Z").timestamp()]


def test_interactions_csv_defaults_and_errors(tmp_path: Path) -> None:
    src = tmp_path / "plain.csv"
    src.write_text("user,item\nu1,i1\nu2,i1\nu2,i2\n")  # no timestamp column: no times
    assert import_interactions(src, tmp_path / "out") == {"posts": 2, "products": 2, "likes": 3}
    _validate_cli(tmp_path / "out")
    res = CliRunner().invoke(
        main, ["import", "interactions", str(src), str(tmp_path / "x"), "--item-col", "sku"]
    )
    assert res.exit_code == 1 and "no column 'sku' (--item-col; found: user, item)" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,timestamp\nu1,i1,yesterday\n")
    with pytest.raises(ImportError_, match="row 1: bad timestamp 'yesterday'"):
        import_interactions(bad, tmp_path / "y")
    res = CliRunner().invoke(
        main, ["import", "interactions", str(src), str(tmp_path / "z"), "--min-rating", "3"]
    )
    assert res.exit_code == 2 and "--min-rating needs --rating-col" in res.output
