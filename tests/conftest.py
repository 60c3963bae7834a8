"""Shared fixtures: a tiny catalog and log in our schema, and an isolated CHATREC_HOME.

Model fixtures (tiny random Llama with the real SmolLM2 tokenizer) live in
`tests/tokenizer_ext/conftest.py` next to the code that extends them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

GENRES = ["Comedy", "Drama", "Action", "Sci-Fi", "Horror", "Romance"]


@pytest.fixture(scope="session", autouse=True)
def _shared_chatrec_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep downloaded assets in a persistent cache but never write into the user's bundles."""
    os.environ.setdefault("CHATREC_HOME", str(Path.home() / ".cache" / "chatrec"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_catalog(n_items: int = 40, seed: int = 0) -> pd.DataFrame:
    """A small movie-like catalog in our schema: titles with years, one or two genres."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_items):
        genres = sorted(set(rng.choice(GENRES, size=int(rng.integers(1, 3)), replace=False).tolist()))
        year = int(rng.integers(1950, 2000))
        title = f"Movie {i} ({year})"
        rows.append({
            "item_id": f"m{i}",
            "title": title,
            "text": f"{title}. Genres: {', '.join(genres)}.",
            "categories": genres,
            "year": year,
        })
    return pd.DataFrame(rows)


def make_interactions(catalog: pd.DataFrame, n_users: int = 12, per_user: int = 10, seed: int = 0) -> pd.DataFrame:
    """A small log: each user mostly picks items of one favourite genre, in time order."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for u in range(n_users):
        fav = GENRES[u % len(GENRES)]
        liked = catalog[catalog["categories"].map(lambda g, fav=fav: fav in g)]["item_id"].tolist()
        others = catalog["item_id"].tolist()
        for k in range(per_user):
            pool = liked if (liked and rng.random() < 0.8) else others
            item = str(rng.choice(pool))
            action = "like" if item in liked else str(rng.choice(["watch", "dislike"]))
            rows.append({
                "user_id": f"u{u}",
                "item_id": item,
                "action": action,
                "timestamp": t0 + pd.Timedelta(hours=u * 1000 + k),
            })
    return pd.DataFrame(rows)


@pytest.fixture
def tiny_catalog() -> pd.DataFrame:
    return make_catalog()


@pytest.fixture
def tiny_interactions(tiny_catalog: pd.DataFrame) -> pd.DataFrame:
    return make_interactions(tiny_catalog)
