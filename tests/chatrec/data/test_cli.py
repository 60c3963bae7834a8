"""`chatrec data validate` and `chatrec data import files` on bad input, through Typer's CliRunner.

Every bad-input case must give a one-line message naming the file, the line (or row) and the field,
exit non-zero for `validate`, and for `import files` keep the valid rows and quarantine the bad ones
with rows in = rows kept + rows quarantined.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chatrec.bundle import Bundle
from chatrec.cli import app
from chatrec.data import load_catalog, load_interactions
from tests.chatrec.data.files import read_quarantine, write_csv, write_jsonl, write_parquet
from tests.conftest import make_catalog, make_interactions

WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}


@pytest.fixture
def catalog() -> pd.DataFrame:
    return make_catalog(20)


@pytest.fixture
def log(catalog: pd.DataFrame) -> pd.DataFrame:
    return make_interactions(catalog, n_users=5, per_user=6)


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def manifest_counts(out: Path) -> dict[str, int]:
    return Bundle(out).stage("data")["counts"]  # type: ignore[index]


def assert_invariant(out: Path) -> dict[str, int]:
    counts = manifest_counts(out)
    for kind in ("catalog", "interactions"):
        assert counts[f"{kind}_rows_in"] == counts[f"{kind}_rows_kept"] + counts[f"{kind}_rows_quarantined"]
    assert counts["items"] == len(load_catalog(out))
    assert counts["interactions"] == len(load_interactions(out))
    return counts


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_clean_files_validate_and_import(tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame, fmt: str) -> None:
    cat = WRITERS[fmt](catalog, tmp_path / f"catalog.{fmt}")
    events = WRITERS[fmt](log, tmp_path / f"events.{fmt}")
    code, out, err = run("data", "validate", cat, events)
    assert code == 0, err
    assert "ok: no problems found" in out
    code, out, err = run("data", "import", "files", "--catalog", cat, "--interactions", events,
                         "--out", tmp_path / "b")
    assert code == 0, err
    assert "5 users, 20 items, 30 interactions" in out
    assert "warning" not in err
    counts = assert_invariant(tmp_path / "b")
    assert counts["interactions_rows_quarantined"] == counts["catalog_rows_quarantined"] == 0
    got = load_catalog(tmp_path / "b")
    assert got["categories"].tolist() == catalog["categories"].tolist()
    assert got["year"].tolist() == catalog["year"].tolist()
    inter = load_interactions(tmp_path / "b")
    assert str(inter["timestamp"].dtype) == "datetime64[ns, UTC]"
    expected = log.sort_values(["user_id", "timestamp"]).reset_index(drop=True)
    assert inter["item_id"].tolist() == expected["item_id"].tolist()
    assert inter["timestamp"].tolist() == expected["timestamp"].tolist()


def test_malformed_jsonl_line(tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame) -> None:
    cat = write_jsonl(catalog, tmp_path / "catalog.jsonl")
    events = write_jsonl(log, tmp_path / "events.jsonl", extra_lines={4: '{"user_id": "u0", "item_id": '})
    code, _, err = run("data", "validate", "--catalog", cat, "--interactions", events)
    assert code != 0
    msg = error_line(err)
    assert f"{events}:4: <line>: malformed JSON" in msg
    assert f"{events}:4: <line>: malformed JSON" in err.splitlines()[0]

    code, out, err = run("data", "import", "files", "--catalog", cat, "--interactions", events,
                         "--out", tmp_path / "b")
    assert code == 0, err
    assert "warning: 1 row(s) quarantined (events.jsonl: 1)" in err
    (rec,) = read_quarantine(tmp_path / "b" / "quarantine" / "events.jsonl.jsonl")
    assert rec == {"file": str(events), "line": 4, "field": "<line>", "reason": rec["reason"],
                   "row": '{"user_id": "u0", "item_id": '}
    assert rec["reason"].startswith("malformed JSON")
    counts = assert_invariant(tmp_path / "b")
    non_blank = sum(1 for line in events.read_text().splitlines() if line.strip())
    assert counts["interactions_rows_in"] == non_blank == 31
    assert counts["interactions_rows_kept"] == 30


def test_unknown_item_id_in_log(tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame) -> None:
    log.loc[5, "item_id"] = "ghost"
    cat = write_csv(catalog, tmp_path / "catalog.csv")
    events = write_jsonl(log, tmp_path / "events.jsonl")
    code, _, err = run("data", "validate", cat, events)
    assert code != 0
    assert f"{events}:6: item_id: unknown item_id 'ghost' (not in the catalog)" in error_line(err)

    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "b")
    assert code == 0, err
    (rec,) = read_quarantine(tmp_path / "b" / "quarantine" / "events.jsonl.jsonl")
    assert (rec["line"], rec["field"]) == (6, "item_id")
    assert rec["row"]["item_id"] == "ghost" and rec["row"]["user_id"] == log.loc[5, "user_id"]
    counts = assert_invariant(tmp_path / "b")
    assert (counts["interactions_rows_in"], counts["interactions_rows_kept"]) == (30, 29)
    assert "ghost" not in set(load_interactions(tmp_path / "b")["item_id"])


def test_duplicate_item_id_keeps_first(tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame) -> None:
    dup = catalog.iloc[[3]].assign(title="Impostor")
    cat = write_csv(pd.concat([catalog, dup], ignore_index=True), tmp_path / "catalog.csv")
    events = write_parquet(log, tmp_path / "events.parquet")
    code, _, err = run("data", "validate", cat, events)
    assert code != 0
    # header is line 1, m3 is on line 5, the duplicate is the 21st row: line 22
    assert f"{cat}:22: item_id: duplicate item_id 'm3' (first at line 5)" in error_line(err)

    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "b")
    assert code == 0, err
    got = load_catalog(tmp_path / "b").set_index("item_id")
    assert len(got) == 20 and got.loc["m3", "title"] == catalog.loc[3, "title"]
    (rec,) = read_quarantine(tmp_path / "b" / "quarantine" / "catalog.csv.jsonl")
    assert (rec["line"], rec["field"], rec["row"]["title"]) == (22, "item_id", "Impostor")
    counts = assert_invariant(tmp_path / "b")
    assert (counts["catalog_rows_in"], counts["catalog_rows_kept"], counts["catalog_rows_quarantined"]) == (21, 20, 1)


@pytest.mark.parametrize(("fmt", "kind", "column"), [
    ("csv", "catalog", "title"), ("jsonl", "interactions", "timestamp"), ("parquet", "interactions", "action"),
    ("parquet", "catalog", "item_id"),
])
def test_missing_column_is_a_whole_file_error(
    tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame, fmt: str, kind: str, column: str
) -> None:
    frames = {"catalog": catalog, "interactions": log}
    frames[kind] = frames[kind].drop(columns=[column])
    cat = WRITERS[fmt](frames["catalog"], tmp_path / f"catalog.{fmt}")
    events = WRITERS[fmt](frames["interactions"], tmp_path / f"events.{fmt}")
    bad = cat if kind == "catalog" else events
    code, _, err = run("data", "validate", "--catalog", cat, "--interactions", events)
    assert code == 3
    msg = error_line(err)
    assert f"{bad}{':1' if fmt == 'csv' else ''}: {column}: missing required {kind}" in msg

    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "b")
    assert code == 3
    assert f"{bad}" in error_line(err) and column in error_line(err)
    assert not (tmp_path / "b" / "catalog.parquet").exists()


@pytest.mark.parametrize("case", ["jsonl-0-bytes", "csv-header-only", "parquet-no-rows", "jsonl-blank-lines"])
def test_empty_file_is_a_whole_file_error(tmp_path: Path, catalog: pd.DataFrame, case: str) -> None:
    cat = write_jsonl(catalog, tmp_path / "catalog.jsonl")
    fmt = case.split("-")[0]
    events = tmp_path / f"events.{fmt}"
    if case == "jsonl-0-bytes":
        events.write_bytes(b"")
    elif case == "jsonl-blank-lines":
        events.write_text("\n  \n\n")
    elif case == "csv-header-only":
        events.write_text("user_id,item_id,action,timestamp\n")
    else:
        write_parquet(make_interactions(catalog).iloc[:0], events)
    code, _, err = run("data", "validate", "--catalog", cat, "--interactions", events)
    assert code == 3
    msg = error_line(err)
    assert str(events) in msg and "empty file" in msg
    assert "user_id, item_id, action, timestamp" in msg  # names the fields it needs
    if case == "csv-header-only":
        assert f"{events}:1: empty file" in msg


def test_missing_file(tmp_path: Path) -> None:
    code, _, err = run("data", "validate", tmp_path / "nope.csv")
    assert code == 3 and f"{tmp_path / 'nope.csv'}: file not found" in error_line(err)


def test_csv_line_numbers_are_physical_lines(tmp_path: Path) -> None:
    cat = tmp_path / "catalog.csv"
    cat.write_text('item_id,title,categories\nm0,"A long\ntitle",Comedy\nm1,Good,Drama|Action\n\n'
                   ',No id,Drama\nm2,Bad cats,"[1, 2]"\nm3,Fine,"[""Sci-Fi""]"\nm4,too,many,fields\n')
    code, _, err = run("data", "validate", cat, "--quarantine", tmp_path / "q")
    assert code == 3
    lines = err.splitlines()
    assert f"{cat}:6: item_id: missing value" in lines
    assert any(line.startswith(f"{cat}:7: categories: expected a list of non-empty strings") for line in lines)
    assert any(line.startswith(f"{cat}:9: <line>: expected 3 fields like the header, got 4") for line in lines)
    recs = read_quarantine(tmp_path / "q" / "catalog.csv.jsonl")
    assert [r["line"] for r in recs] == [6, 7, 9]
    assert recs[0]["row"] == {"item_id": "", "title": "No id", "categories": "Drama"}


def test_parquet_problems_name_the_row(tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame) -> None:
    log = log.assign(timestamp=log["timestamp"].map(lambda t: t.isoformat()))
    log.loc[7, "timestamp"] = "not a time"
    log.loc[9, "action"] = "Add To Cart"
    cat = write_parquet(catalog, tmp_path / "catalog.parquet")
    events = write_parquet(log, tmp_path / "events.parquet")
    code, _, err = run("data", "validate", cat, events)
    assert code == 3
    assert f"{events}:row 7: timestamp: unparseable timestamp 'not a time'" in err
    assert f"{events}:row 9: action: invalid action 'Add To Cart'" in err
    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "b")
    assert code == 0
    recs = read_quarantine(tmp_path / "b" / "quarantine" / "events.parquet.jsonl")
    assert [(r["line"], r["field"]) for r in recs] == [(7, "timestamp"), (9, "action")]
    counts = assert_invariant(tmp_path / "b")
    assert counts["interactions_rows_kept"] == 28


def test_strict_import_fails_and_writes_nothing(tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame) -> None:
    log.loc[2, "item_id"] = "ghost"
    cat = write_jsonl(catalog, tmp_path / "catalog.jsonl")
    events = write_csv(log, tmp_path / "events.csv")
    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events,
                       "--out", tmp_path / "b", "--strict")
    assert code == 3
    assert f"{events}:4: item_id: unknown item_id 'ghost'" in err
    assert "--strict" in error_line(err)
    assert not (tmp_path / "b").exists()


def test_many_problems_are_capped_but_all_quarantined(tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame) -> None:
    log["action"] = "bad action"
    log.loc[0, "action"] = "click"
    cat = write_parquet(catalog, tmp_path / "catalog.parquet")
    events = write_jsonl(log, tmp_path / "events.jsonl")
    code, _, err = run("data", "validate", cat, events, "--max-problems", "5", "--quarantine", tmp_path / "q")
    assert code == 3
    assert "... and 24 more" in err
    assert "29 problem(s) in 29 row(s)" in error_line(err)
    assert len(read_quarantine(tmp_path / "q" / "events.jsonl.jsonl")) == 29


def test_all_rows_bad_is_an_error_with_quarantine(tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame) -> None:
    log["timestamp"] = "soon"
    cat = write_parquet(catalog, tmp_path / "catalog.parquet")
    events = write_jsonl(log, tmp_path / "events.jsonl")
    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "b")
    assert code == 3
    assert f"{events}: no valid interactions rows (30 quarantined" in error_line(err)
    assert len(read_quarantine(tmp_path / "b" / "quarantine" / "events.jsonl.jsonl")) == 30


def test_extra_log_columns_are_reported(tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame) -> None:
    log["session"] = "s1"
    cat = write_parquet(catalog, tmp_path / "catalog.parquet")
    events = write_jsonl(log.assign(context=[{"device": "tv"}] * len(log)), tmp_path / "events.jsonl")
    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "b")
    assert code == 0
    assert "not imported: session" in err
    inter = load_interactions(tmp_path / "b")
    assert json.loads(inter["context"].iloc[0]) == {"device": "tv"}
    assert "session" not in inter


def test_column_mapping(tmp_path: Path, catalog: pd.DataFrame, log: pd.DataFrame) -> None:
    cat = write_csv(catalog.rename(columns={"item_id": "movieId", "title": "name"}), tmp_path / "movies.csv")
    events = write_jsonl(log.rename(columns={"item_id": "movieId", "timestamp": "ts"}), tmp_path / "ratings.jsonl")
    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "b")
    assert code == 3 and f"{cat}:1: item_id, title: missing required catalog column" in error_line(err)
    maps = ["--map", "item_id=movieId", "--map", "title=name", "--map", "timestamp=ts"]
    code, out, err = run("data", "import", "files", "--catalog", cat, "--interactions", events,
                         "--out", tmp_path / "b", *maps)
    assert code == 0, err
    assert "5 users, 20 items, 30 interactions" in out
    assert load_catalog(tmp_path / "b")["item_id"].tolist() == catalog["item_id"].tolist()
    code, _, err = run("data", "validate", cat, events, *maps)
    assert code == 0, err
    code, _, err = run("data", "validate", cat, "--map", "itemid=movieId")
    assert code == 2 and "unknown field 'itemid'" in error_line(err)


def test_deeply_nested_json_is_quarantined_not_a_traceback(tmp_path: Path, catalog: pd.DataFrame,
                                                           log: pd.DataFrame) -> None:
    cat = write_jsonl(catalog, tmp_path / "catalog.jsonl")
    first = log.iloc[0]
    row = {"user_id": str(first["user_id"]), "item_id": str(first["item_id"]), "action": "like",
           "timestamp": "2020-01-01T00:00:00Z"}
    too_deep = json.dumps(row)[:-1] + ', "context": ' + "[" * 5000 + "]" * 5000 + "}"  # json.loads cannot read it
    nested = json.dumps({**row, "context": "@"})[:-1].replace('"@"', '{"a": ' * 900 + "1" + "}" * 900) + "}"
    events = write_jsonl(log, tmp_path / "events.jsonl", extra_lines={3: too_deep, 5: nested})
    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "b")
    assert code == 0, err
    recs = read_quarantine(tmp_path / "b" / "quarantine" / "events.jsonl.jsonl")
    assert [(r["line"], r["field"]) for r in recs] == [(3, "<line>"), (5, "context")]
    assert "nested too deeply" in recs[0]["reason"] and "nested too deeply" in recs[1]["reason"]


def test_shop_log_action_roles_declared_or_read_from_names(tmp_path: Path, catalog: pd.DataFrame,
                                                           log: pd.DataFrame) -> None:
    cat = write_jsonl(catalog, tmp_path / "catalog.jsonl")
    shop = log.assign(action=[["impression", "click", "skip", "purchase"][i % 4] for i in range(len(log))])
    events = write_jsonl(shop, tmp_path / "events.jsonl")
    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "a",
                       "--domain", "product")
    assert code == 0, err
    assert "warning: positive actions ['purchase'], negative ['skip'] were read from the action names" in err
    stage = Bundle(tmp_path / "a").stage("data")
    assert stage["positive_actions"] == ["purchase"] and stage["negative_actions"] == ["skip"]
    assert Bundle(tmp_path / "a").domain == "product"
    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "b",
                       "--positive", "purchase,click", "--negative", "skip")
    assert code == 0 and "warning: positive" not in err
    assert Bundle(tmp_path / "b").stage("data")["positive_actions"] == ["purchase", "click"]
    code, _, err = run("data", "import", "files", "--catalog", cat, "--interactions", events, "--out", tmp_path / "c",
                       "--positive", "like")
    assert code != 0 and "declared actions ['like'] never occur in the log" in error_line(err)
