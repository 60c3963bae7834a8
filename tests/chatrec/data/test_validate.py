"""Validation rules and the bundle table I/O, on in-memory frames (library level)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chatrec.data import (
    RawTable,
    load_catalog,
    load_interactions,
    validate_catalog,
    validate_interactions,
    write_catalog,
    write_interactions,
)
from chatrec.errors import DataError
from tests.conftest import make_catalog, make_interactions


def log_frame(**cols: list) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    base = {"user_id": ["u1"] * n, "item_id": ["m1"] * n, "action": ["click"] * n,
            "timestamp": ["2024-01-01T00:00:00Z"] * n}
    base.update(cols)
    return pd.DataFrame(base, dtype=object)


def check_log(df: pd.DataFrame, known: set[str] | None = None):
    res = validate_interactions(RawTable.from_frame(df, "log"), known_items=known)
    assert res.rows_in == res.rows_kept + res.rows_quarantined == len(df)
    return res


def test_timestamps_iso_and_unix_seconds() -> None:
    values = ["2024-01-01T10:00:00Z", "2024-01-01T12:00:00+02:00", "2024-01-01 10:00:00", "2024-01-01",
              1704103200, "1704103200", 1704103200.5, pd.Timestamp("2024-01-01T10:00", tz="UTC")]
    res = check_log(log_frame(timestamp=values))
    assert res.rows_quarantined == 0
    ts = res.frame["timestamp"]
    assert str(ts.dtype) == "datetime64[ns, UTC]"
    ten = pd.Timestamp("2024-01-01T10:00", tz="UTC")
    assert ts.tolist() == [ten, ten, ten, pd.Timestamp("2024-01-01", tz="UTC"), ten, ten,
                           ten + pd.Timedelta("500ms"), ten]


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-45", 1_704_103_200_000, True, None, "", [2024]])
def test_bad_timestamps_are_quarantined(bad: object) -> None:
    res = check_log(log_frame(timestamp=["2024-01-01", bad]))
    assert res.rows_kept == 1
    (problem,) = res.problems
    assert (problem.loc, problem.loc_kind, problem.field) == (1, "row", "timestamp")
    assert str(problem).startswith("log:row 1: timestamp: ")


def test_datetime_column_naive_is_utc() -> None:
    df = log_frame(timestamp=[0, 0]).assign(timestamp=pd.to_datetime(["2024-01-01 10:00", None]))
    res = check_log(df)
    assert res.rows_kept == 1 and res.problems[0].reason == "missing value"
    assert res.frame["timestamp"].iloc[0] == pd.Timestamp("2024-01-01T10:00", tz="UTC")


def test_ids_actions_ratings_context() -> None:
    df = log_frame(
        user_id=[7, "u2", 1.5, True, "u5", "u6"],
        item_id=["m1", 3, "m1", "m1", "m1", "m1"],
        action=[" Click ", "add_to_cart", "click", "click", "add to cart", "like"],
        rating=[4, "3.5", None, 1, 2, "great"],
        context=[{"page": "home"}, None, None, None, None, "raw"],
    )
    res = check_log(df)
    assert res.frame["user_id"].tolist() == ["7", "u2"]
    assert res.frame["item_id"].tolist() == ["m1", "3"]
    assert res.frame["action"].tolist() == ["click", "add_to_cart"]
    assert res.frame["rating"].tolist() == [4.0, 3.5]
    assert res.frame["context"].tolist() == ['{"page": "home"}', None]
    fields = {p.loc: p.field for p in res.problems}
    assert fields == {2: "user_id", 3: "user_id", 4: "action", 5: "rating"}


def test_unknown_items_only_checked_with_a_catalog() -> None:
    df = log_frame(item_id=["m1", "zz"])
    assert check_log(df).rows_kept == 2
    res = check_log(df, known={"m1"})
    assert res.rows_kept == 1 and "unknown item_id 'zz'" in res.problems[0].reason


def test_catalog_defaults_and_categories() -> None:
    df = pd.DataFrame({
        "item_id": ["a", "b", "c", "d", "a", "e"],
        "title": ["A", "B", "C", "D", "A again", None],
        "categories": [["x", "y"], "x|y", '["x", "y"]', None, [], []],
        "price": [1.5, 2.0, None, 4.0, 5.0, 6.0],
    }, dtype=object)
    res = validate_catalog(RawTable.from_frame(df, "cat"))
    assert res.frame["item_id"].tolist() == ["a", "b", "c", "d"]
    assert res.frame["categories"].tolist() == [["x", "y"]] * 3 + [[]]
    assert res.frame["text"].tolist() == ["A. Categories: x, y.", "B. Categories: x, y.",
                                          "C. Categories: x, y.", "D"]
    assert res.frame["price"].tolist()[:2] == [1.5, 2.0]
    assert [(p.loc, p.field) for p in res.problems] == [(4, "item_id"), (5, "title")]
    assert "first at row 0" in res.problems[0].reason


def test_write_and_load_round_trip(tmp_path) -> None:
    catalog = make_catalog(30)
    log = make_interactions(catalog, n_users=6, per_user=5).sample(frac=1.0, random_state=0)
    write_catalog(catalog, tmp_path)
    write_interactions(log, tmp_path)
    got = load_catalog(tmp_path)
    assert got.columns.tolist()[:4] == ["item_id", "title", "text", "categories"]
    assert got["categories"].tolist() == catalog["categories"].tolist()
    assert str(got["year"].dtype) == "Int64"
    inter = load_interactions(tmp_path)
    assert str(inter["timestamp"].dtype) == "datetime64[ns, UTC]"
    keys = list(zip(inter["user_id"], inter["timestamp"], strict=True))
    assert keys == sorted(keys) and len(inter) == 30


def test_write_interactions_checks_items_and_writes_nothing_on_error(tmp_path) -> None:
    catalog = make_catalog(10)
    write_catalog(catalog, tmp_path)
    log = make_interactions(catalog, n_users=2, per_user=3)
    log.loc[1, "item_id"] = "new-item"
    with pytest.raises(DataError, match=r"interactions:row 1: item_id: unknown item_id 'new-item'"):
        write_interactions(log, tmp_path)
    assert not (tmp_path / "interactions.parquet").exists()
    # a new item is added to the catalog first (continual finetune), then its log rows are accepted
    new = pd.DataFrame([{"item_id": "new-item", "title": "New", "text": "New.", "categories": [], "year": 2024}])
    write_catalog(pd.concat([load_catalog(tmp_path), new], ignore_index=True), tmp_path)
    write_interactions(log, tmp_path)
    assert "new-item" in set(load_interactions(tmp_path)["item_id"])


def test_rows_in_equals_kept_plus_quarantined_on_random_garbage() -> None:
    rng = np.random.default_rng(0)
    pool = ["m1", 3, None, 2.5, "", [1], {"a": 1}, True, "2024-01-01", 1704103200, "click", "Bad Action"]
    cols = {c: [pool[i] for i in rng.integers(0, len(pool), 200)]
            for c in ("user_id", "item_id", "action", "timestamp", "rating", "context")}
    res = check_log(pd.DataFrame(cols, dtype=object), known={"m1", "3"})
    assert res.rows_quarantined > 0
    assert len({r.loc for r in res.rejected}) == res.rows_quarantined


def test_csv_with_byte_order_mark_and_tsv(tmp_path) -> None:
    from chatrec.data import validate_files

    (tmp_path / "cat.csv").write_bytes("\ufeffitem_id,title\nm1,Amélie\n".encode())
    (tmp_path / "log.tsv").write_text("user_id\titem_id\taction\ttimestamp\nu1\tm1\tclick\t1704103200\n")
    report = validate_files([tmp_path / "cat.csv", tmp_path / "log.tsv"])
    assert report.ok
    assert [t.kind for t in report.tables] == ["catalog", "interactions"]
    assert report.tables[0].frame["title"].tolist() == ["Amélie"]


def test_sort_keeps_input_order_for_ties(tmp_path) -> None:
    write_catalog(make_catalog(5), tmp_path)
    t = pd.Timestamp("2024-01-01", tz="UTC")
    log = pd.DataFrame({"user_id": ["u2", "u1", "u1", "u1"], "item_id": ["m4", "m3", "m1", "m2"],
                        "action": ["click"] * 4, "timestamp": [t, t + pd.Timedelta("1s"), t, t]})
    write_interactions(log, tmp_path)
    assert load_interactions(tmp_path)["item_id"].tolist() == ["m1", "m2", "m3", "m4"]
