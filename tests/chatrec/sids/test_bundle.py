"""SIDs over a bundle: the file contract, determinism, cold-start assignment, RQ-VAE, the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chatrec.bundle import Bundle
from chatrec.cli import app
from chatrec.errors import BundleError, ConfigError, DataError
from chatrec.sids import SidConfig, assign_bundle, codes_matrix, fit_bundle, level_sizes, load_sids
from chatrec.tokens import sid_string
from tests.conftest import make_catalog

pytest.importorskip("faiss")
DIM = 32


def vectors(item_ids: list[str]) -> np.ndarray:
    """Deterministic stand-in embeddings per item id, clustered so codes collide."""
    rows = []
    for item in item_ids:
        k = int(item.lstrip("m"))
        rng = np.random.default_rng(k)
        center = np.random.default_rng(1000 + k % 5).normal(size=DIM)
        rows.append(center + 0.05 * rng.normal(size=DIM))
    return np.asarray(rows, dtype=np.float32)


def new_bundle(root: Path, n_items: int = 40) -> Bundle:
    bundle = Bundle(root).ensure()
    make_catalog(n_items).to_parquet(bundle.catalog_path, index=False)
    return bundle


def new_items() -> pd.DataFrame:
    """Ten new items (m40..m49) plus five the bundle already holds (m0..m4)."""
    more = make_catalog(50, seed=1)
    return pd.concat([more.iloc[40:], more.iloc[:5]], ignore_index=True)


CFG = SidConfig(levels=2, codebook_size=4, seed=0, progress=False)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    bundle = new_bundle(tmp_path_factory.mktemp("sids") / "bundle")
    catalog = pd.read_parquet(bundle.catalog_path)
    fit_bundle(bundle, CFG, embeddings=vectors(catalog["item_id"].tolist()))
    return bundle


def copy_of(bundle: Bundle, tmp_path: Path) -> Bundle:
    shutil.copytree(bundle.root, tmp_path / "copy")
    return Bundle(tmp_path / "copy")


def test_fit_bundle_writes_the_contract(fitted: Bundle) -> None:
    sids = load_sids(fitted)
    catalog = pd.read_parquet(fitted.catalog_path)
    assert list(sids.columns) == ["item_id", "codes", "sid"]
    assert sids["item_id"].tolist() == catalog["item_id"].tolist()
    assert all(len(c) == CFG.levels + 1 for c in sids["codes"])
    assert sids["sid"].tolist() == [sid_string(c) for c in sids["codes"]]
    assert sids["sid"].is_unique
    for name in ("codebooks.npz", "config.json", "report.json"):
        assert fitted.path("sids", name).exists()
    report = json.loads(fitted.path("sids", "report.json").read_text())
    assert report["after_disambiguation"]["collision_rate"] == 0.0
    assert report["before_disambiguation"]["collision_rate"] > 0  # 40 items in 16 cells
    assert report["level_sizes"] == level_sizes(fitted)
    stage = fitted.stage("sids")
    assert stage is not None and stage["counts"]["items"] == 40 and stage["config"]["levels"] == 2


def test_same_seed_same_sids_in_a_bundle(fitted: Bundle, tmp_path: Path) -> None:
    again = copy_of(fitted, tmp_path)
    fit_bundle(again, CFG, embeddings=vectors([f"m{i}" for i in range(40)]))
    assert load_sids(again).equals(load_sids(fitted))


def test_assign_keeps_existing_sids_and_stays_unique(fitted: Bundle, tmp_path: Path) -> None:
    bundle = copy_of(fitted, tmp_path)
    before = load_sids(bundle)
    items = new_items()
    rows = assign_bundle(bundle, items, embeddings=vectors(items["item_id"].tolist()))
    assert rows["item_id"].tolist() == [f"m{i}" for i in range(40, 50)]  # re-listed m0..m4 skipped
    after = load_sids(bundle)
    assert after.iloc[:40].equals(before)                                   # nothing existing changed
    assert len(after) == 50 and after["sid"].is_unique and after["item_id"].is_unique
    assert len(set(map(tuple, codes_matrix(after).tolist()))) == 50
    # new items land on the frozen codebooks: codes within the codebook, dis continues after existing
    assert (codes_matrix(rows)[:, :2] < 4).all()
    assert bundle.stage("sids_assign")["counts"]["new_items"] == 10
    # a second run finds nothing new and changes nothing
    again = assign_bundle(bundle, items, embeddings=vectors(items["item_id"].tolist()))
    assert again.empty and load_sids(bundle).equals(after)


def test_assign_needs_embeddings_when_fitted_on_embeddings(fitted: Bundle, tmp_path: Path) -> None:
    bundle = copy_of(fitted, tmp_path)
    with pytest.raises(DataError, match="supplied embeddings"):
        assign_bundle(bundle, new_items())
    with pytest.raises(DataError, match="duplicate item id"):
        items = pd.concat([new_items(), new_items().iloc[:1]], ignore_index=True)
        assign_bundle(bundle, items, embeddings=vectors(items["item_id"].tolist()))
    with pytest.raises(DataError, match="`item_id`"):
        assign_bundle(bundle, pd.DataFrame({"text": ["x"]}), embeddings=np.zeros((1, DIM), np.float32))


def test_missing_bundle_files_name_the_command(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="chatrec data import"):
        fit_bundle(tmp_path / "nothing", CFG)
    with pytest.raises(BundleError, match="chatrec sids fit"):
        assign_bundle(tmp_path / "nothing", new_items())


def test_rqvae_on_a_small_catalog(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    bundle = new_bundle(tmp_path / "b")
    ids = [f"m{i}" for i in range(40)]
    cfg = SidConfig(method="rqvae", levels=2, codebook_size=4, rqvae_epochs=4, rqvae_hidden=(32,),
                    rqvae_latent_dim=8, progress=False)
    result = fit_bundle(bundle, cfg, embeddings=vectors(ids))
    assert result.codes.shape == (40, 3) and len({tuple(r) for r in result.codes.tolist()}) == 40
    assert result.report["method"] == "rqvae" and result.report["reconstruction"]["mse"] > 0
    again = fit_bundle(new_bundle(tmp_path / "b2"), cfg, embeddings=vectors(ids))
    assert np.array_equal(again.codes, result.codes)                      # same seed, same SIDs
    before = load_sids(bundle)
    items = new_items()
    rows = assign_bundle(bundle, items, embeddings=vectors(items["item_id"].tolist()))
    after = load_sids(bundle)
    assert len(rows) == 10 and after.iloc[:40].equals(before) and after["sid"].is_unique


# CLI ------------------------------------------------------------------------------------------
runner = CliRunner()


def one_line_error(result) -> str:
    err = result.stderr.strip()
    assert result.exit_code != 0
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    return err


def test_cli_bad_input_gives_one_line_errors(tmp_path: Path) -> None:
    err = one_line_error(runner.invoke(app, ["sids", "fit", "--bundle", str(tmp_path / "missing")]))
    assert "catalog.parquet" in err and "chatrec data import" in err
    err = one_line_error(runner.invoke(app, ["sids", "assign", "--bundle", str(tmp_path / "missing"),
                                             "--items", str(tmp_path / "x.jsonl")]))
    assert "sids.parquet" in err
    bundle = new_bundle(tmp_path / "b")
    result = runner.invoke(app, ["sids", "fit", "--bundle", str(bundle.root), "--levels", "0"])
    assert result.exit_code == 2 and "`levels` must be >= 1, got 0" in one_line_error(result)
    result = runner.invoke(app, ["sids", "fit", "--bundle", str(bundle.root), "--method", "pq"])
    assert "`method`" in one_line_error(result)
    result = runner.invoke(app, ["sids", "fit", "--bundle", str(bundle.root), "--codebooks-from", "drop"])
    assert "`codebooks_from` must be one of all, warm" in one_line_error(result)
    for cmd in ("fit", "assign"):
        result = runner.invoke(app, ["sids", cmd, "--help"])
        assert result.exit_code == 0 and "--bundle" in result.output


def test_cli_fit_and_assign_with_the_real_text_encoder(tmp_path: Path) -> None:
    """The one test that runs all-MiniLM-L6-v2 (40 + 10 texts; cached after the first run)."""
    pytest.importorskip("sentence_transformers")
    bundle = new_bundle(tmp_path / "b")
    result = runner.invoke(app, ["sids", "fit", "--bundle", str(bundle.root), "--codebook-size", "64"])
    assert result.exit_code == 0, result.output
    assert "level 0:" in result.stdout and "collisions:" in result.stdout
    assert "warning: codebook_size 64 exceeds the 40 items; using 40" in result.stderr
    report = json.loads(bundle.path("sids", "report.json").read_text())
    assert report["embedding_dim"] == 384 and report["embeddings"] == "texts"
    before = load_sids(bundle)

    items_file = tmp_path / "new.jsonl"
    new_items().to_json(items_file, orient="records", lines=True)
    result = runner.invoke(app, ["sids", "assign", "--bundle", str(bundle.root), "--items", str(items_file)])
    assert result.exit_code == 0, result.output
    assert "assigned SIDs to 10 new item(s), skipped 5" in result.stdout
    after = load_sids(bundle)
    assert after.iloc[:40].equals(before) and len(after) == 50 and after["sid"].is_unique
    catalog = pd.read_parquet(bundle.catalog_path)
    try:
        import chatrec.data.store  # noqa: F401
    except ImportError:
        return
    assert len(catalog) == 50 and catalog["item_id"].is_unique  # new items joined the catalog


def test_collaborative_codes_use_only_training_events_and_still_assign_new_items(tmp_path: Path) -> None:
    from chatrec.sids.pipeline import collaborative_vectors, training_matrix
    from tests.conftest import make_interactions

    bundle = new_bundle(tmp_path / "b")
    catalog = pd.read_parquet(bundle.catalog_path)
    inter = make_interactions(catalog, n_users=12, per_user=14)
    inter.to_parquet(bundle.interactions_path, index=False)
    ids = catalog["item_id"].tolist()
    vecs = collaborative_vectors(training_matrix(bundle, ids), dim=8)
    assert vecs.shape == (40, 8)
    norms = np.linalg.norm(vecs, axis=1)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)
    # a user's last event (a held-out test target) changes nothing: only training events count
    last = inter.groupby("user_id")["timestamp"].idxmax()
    moved = inter.copy()
    moved.loc[last, "item_id"] = ids[-1]
    moved.to_parquet(bundle.interactions_path, index=False)
    assert np.allclose(np.abs(collaborative_vectors(training_matrix(bundle, ids), dim=8)), np.abs(vecs), atol=1e-4)

    cfg = SidConfig(levels=2, codebook_size=4, seed=0, progress=False, collaborative_weight=1.0, collaborative_dim=8)
    result = fit_bundle(bundle, cfg, embeddings=vectors(ids))
    assert result.report["embeddings"] == "given+collaborative" and result.report["embedding_dim"] == DIM + 8
    items = new_items()
    rows = assign_bundle(bundle, items, embeddings=vectors(items["item_id"].tolist()))
    assert len(rows) == 10 and len(set(map(tuple, codes_matrix(load_sids(bundle)).tolist()))) == 50


def test_cold_items_take_the_collaborative_part_of_the_code_nearest_their_text(tmp_path: Path) -> None:
    from tests.conftest import make_interactions

    bundle = new_bundle(tmp_path / "b")
    catalog = pd.read_parquet(bundle.catalog_path)
    ids = catalog["item_id"].tolist()
    warm = catalog.iloc[:30]
    make_interactions(warm, n_users=12, per_user=14).to_parquet(bundle.interactions_path, index=False)
    cfg = SidConfig(levels=2, codebook_size=4, seed=0, progress=False, collaborative_weight=8.0, collaborative_dim=8)
    result = fit_bundle(bundle, cfg, embeddings=vectors(ids))
    with np.load(bundle.path("sids", "codebooks.npz")) as f:
        words = f["codebooks"][0]                                   # [K, DIM + 8]

    def nearest_by_text(x: np.ndarray) -> np.ndarray:
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        return np.argmin(((unit[:, None, :] - words[None, :, :DIM]) ** 2).sum(-1), axis=1)

    codes = codes_matrix(load_sids(bundle))
    cold = np.arange(30, 40)
    assert result.report["cold_items"] == 10
    assert np.array_equal(codes[cold, 0], nearest_by_text(vectors(ids[30:])))
    # added later, never interacted with: the same rule
    items = new_items()
    rows = assign_bundle(bundle, items, embeddings=vectors(items["item_id"].tolist()))
    assert np.array_equal(codes_matrix(rows)[:, 0], nearest_by_text(vectors(rows["item_id"].tolist())))


def test_codebooks_from_all_items_keep_every_trained_code_and_impute_only_the_cold_ones() -> None:
    from chatrec.sids import fit_sids

    ids = [f"m{i}" for i in range(40)]
    collab = np.random.default_rng(3).normal(size=(40, 8)).astype(np.float32)
    collab[30:] = 0.0                                               # ten items nobody interacted with
    x = np.concatenate([vectors(ids), collab], axis=1)
    cfg = SidConfig(levels=2, codebook_size=4, seed=0, progress=False)
    as_is = fit_sids(x, cfg)                                        # no text/collaborative split: nothing is cold
    zero = fit_sids(x, dataclasses.replace(cfg, impute_cold=False), text_dim=DIM)
    assert np.array_equal(zero.codebooks, as_is.codebooks) and np.array_equal(zero.codes, as_is.codes)
    default = fit_sids(x, cfg, text_dim=DIM)                        # codebooks from all, cold items imputed
    assert np.array_equal(default.codebooks, as_is.codebooks)
    assert np.array_equal(default.codes[:30], as_is.codes[:30])     # no item with interactions moves
    assert np.array_equal(default.codes[30:, 0], impute_collaborative_nearest(x[30:], default.codebooks))
    warm = fit_sids(x, dataclasses.replace(cfg, codebooks_from="warm"), text_dim=DIM)
    assert not np.array_equal(warm.codebooks, as_is.codebooks)     # learned on the 30 warm items only
    assert zero.report["cold_items"] == default.report["cold_items"] == warm.report["cold_items"] == 10
    with pytest.raises(ConfigError, match="codebooks_from"):
        SidConfig(codebooks_from="drop")


def impute_collaborative_nearest(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Level-0 code of each row once its collaborative part is that of the codeword nearest its text."""
    words = codebooks[0]
    near = np.argmin(((x[:, None, :DIM] - words[None, :, :DIM]) ** 2).sum(-1), axis=1)
    filled = np.concatenate([x[:, :DIM], words[near, DIM:]], axis=1)
    return np.argmin(((filled[:, None, :] - words[None]) ** 2).sum(-1), axis=1)


def test_collisions_are_ordered_by_training_popularity(tmp_path: Path) -> None:
    from chatrec.sids.pipeline import training_matrix
    from tests.conftest import make_interactions

    bundle = new_bundle(tmp_path / "b")
    catalog = pd.read_parquet(bundle.catalog_path)
    ids = catalog["item_id"].tolist()
    make_interactions(catalog, n_users=12, per_user=14).to_parquet(bundle.interactions_path, index=False)
    cfg = SidConfig(levels=2, codebook_size=4, seed=0, progress=False, collaborative_weight=0.0)
    fit_bundle(bundle, cfg, embeddings=vectors(ids))
    counts = np.asarray(training_matrix(bundle, ids).sum(axis=1)).ravel()
    codes = codes_matrix(load_sids(bundle))
    cells: dict[tuple[int, ...], list[int]] = {}
    for row, code in enumerate(map(tuple, codes[:, :-1].tolist())):
        cells.setdefault(code, []).append(row)
    assert any(len(rows) > 1 for rows in cells.values())
    for rows in cells.values():
        by_index = sorted(rows, key=lambda r: codes[r, -1])
        assert [codes[r, -1] for r in by_index] == list(range(len(rows)))
        assert [counts[r] for r in by_index] == sorted((counts[r] for r in rows), reverse=True)
