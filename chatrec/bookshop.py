"""A synthetic bookshop: a non-movie catalog with categories and descriptive text, built in code.

Used by `benchmarks/conversation.py` and the tests to check that chat understands a catalog from
its own categories and item texts (nothing in the chat code knows these words). Each book has a
title, an author, one or two categories, a year and a two-sentence blurb drawn from its
category's themes; the interaction log has readers who mostly pick one favourite category.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

THEMES: dict[str, dict[str, list[str]]] = {
    "Mystery": {"title": ["Murder", "Clue", "Alibi", "Inspector", "Vanishing", "Secret"],
                "blurb": ["a detective untangles a murder in a quiet village", "a missing heiress and a locked room",
                          "an inspector follows a trail of false alibis", "a cold case reopens after forty years"]},
    "Romance": {"title": ["Heart", "Kiss", "Summer", "Promise", "Love", "Wedding"],
                "blurb": ["two strangers fall in love over one summer", "a wedding planner meets her match",
                          "old flames rekindle a love affair", "a slow-burning courtship across letters"]},
    "Science Fiction": {"title": ["Star", "Orbit", "Android", "Nebula", "Colony", "Signal"],
                        "blurb": ["a starship crew answers a signal from a distant planet",
                                  "an android questions its makers on a space colony",
                                  "humanity's first contact with an alien species",
                                  "time travellers repair a broken future"]},
    "Fantasy": {"title": ["Dragon", "Crown", "Sword", "Sorcerer", "Realm", "Spell"],
                "blurb": ["a young wizard must tame a dragon", "a lost heir reclaims an enchanted crown",
                          "an apprentice sorceress battles a dark lord", "elves and dwarves defend a magic realm"]},
    "History": {"title": ["Empire", "Revolution", "Century", "Republic", "Siege", "Dynasty"],
                "blurb": ["the rise and fall of an ancient empire", "how a revolution remade a nation",
                          "a sweeping account of a medieval siege", "the true story of a royal dynasty"]},
    "Cookbooks": {"title": ["Kitchen", "Feast", "Bread", "Spice", "Table", "Recipes"],
                  "blurb": ["one hundred recipes for weeknight dinners", "baking bread and pastry at home",
                            "vegetarian dishes from a farmhouse kitchen", "spices and slow cooking from around the world"]},
    "Travel": {"title": ["Road", "Journey", "Island", "Voyage", "Passage", "Trail"],
               "blurb": ["a walking journey across the mountains", "an island-hopping voyage by ferry and sail",
                         "a guide to hidden streets of old cities", "backpacking along a famous trail"]},
    "Biography": {"title": ["Life", "Memoir", "Portrait", "Legacy", "Years", "Story"],
                  "blurb": ["the life of a pioneering scientist", "a memoir of a musician's rise to fame",
                            "a portrait of a statesman in war and peace", "the remarkable life of an explorer"]},
    "Self-Help": {"title": ["Habits", "Mindset", "Focus", "Calm", "Growth", "Balance"],
                  "blurb": ["small daily habits that change your life", "how to stay calm and beat stress",
                            "practical steps to build confidence", "finding focus and productivity at work"]},
    "Poetry": {"title": ["Verses", "Songs", "Sonnets", "Rhymes", "Odes", "Lines"],
               "blurb": ["a collection of poems about the sea", "sonnets on love and loss",
                         "short verses on the changing seasons", "lyrical poems of city life"]},
    "Horror": {"title": ["Haunting", "Shadows", "Curse", "Nightmare", "Crypt", "Fear"],
               "blurb": ["a family moves into a haunted house", "a curse awakens in a village graveyard",
                         "terrifying ghost stories for long nights", "a creature stalks a snowbound town"]},
    "Children's": {"title": ["Bunny", "Adventure", "Puppy", "Picnic", "Treehouse", "Bedtime"],
                   "blurb": ["a picture book about a brave little bunny", "bedtime stories for young children",
                             "a puppy's first day at school", "friends build a treehouse in the garden"]},
}
_ADJ = ["Silent", "Golden", "Last", "Hidden", "Broken", "Distant", "Little", "Endless", "Crimson", "Winter", "Wild",
        "Bright"]
_AUTHORS = ["Ada Moreno", "Ben Okafor", "Clara Lind", "Dev Sharma", "Elena Rossi", "Finn Walsh", "Grace Chen",
            "Hugo Brandt", "Iris Novak", "Jonas Berg", "Kira Tanaka", "Liam Doyle"]


def make_book_catalog(n_items: int = 600, seed: int = 0) -> pd.DataFrame:
    """`n_items` books in the bundle schema (item_id, title, text, categories, year)."""
    rng = np.random.default_rng(seed)
    names = list(THEMES)
    rows = []
    for i in range(n_items):
        main = names[i % len(names)]
        cats = [main]
        if rng.random() < 0.25:
            cats.append(str(rng.choice([c for c in names if c != main])))
        theme = THEMES[main]
        title = f"The {rng.choice(_ADJ)} {rng.choice(theme['title'])} {i}"
        blurbs = rng.choice(theme["blurb"], size=2, replace=False).tolist()
        year = int(rng.integers(1950, 2024))
        text = (f"{title} by {rng.choice(_AUTHORS)} ({year}). {blurbs[0].capitalize()}; {blurbs[1]}. "
                f"Category: {', '.join(cats)}.")
        rows.append({"item_id": f"b{i}", "title": title, "text": text, "categories": cats, "year": year})
    frame = pd.DataFrame(rows)
    frame["year"] = frame["year"].astype("Int64")
    return frame


def make_book_interactions(catalog: pd.DataFrame, n_users: int = 300, per_user: int = 20,
                           seed: int = 0) -> pd.DataFrame:
    """Readers who mostly pick books of one favourite category (liked), sometimes others."""
    rng = np.random.default_rng(seed)
    names = list(THEMES)
    by_cat = {c: catalog.loc[catalog["categories"].map(lambda g, c=c: c in list(g)), "item_id"].tolist()
              for c in names}
    every = catalog["item_id"].tolist()
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for u in range(n_users):
        fav = names[u % len(names)]
        for k in range(per_user):
            fan = rng.random() < 0.8
            item = str(rng.choice(by_cat[fav] if fan else every))
            rows.append({"user_id": f"r{u}", "item_id": item, "action": "like" if fan else "dislike",
                         "timestamp": t0 + pd.Timedelta(hours=u * 1000 + k)})
    frame = pd.DataFrame(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).astype("datetime64[ns, UTC]")
    return frame


def make_book_bundle(root: str | os.PathLike[str], n_items: int = 600, seed: int = 0) -> Path:
    """A servable bundle of the bookshop: catalog, interactions, random SIDs and a tiny random model
    (the model ranks nothing useful: what chat gets right here comes from reading the words)."""
    from chatrec.bundle import Bundle
    from chatrec.testing import make_sids, smollm2_tokenizer, tiny_llama
    from tokenizer_ext import extend_bundle

    bundle = Bundle(Path(root)).ensure()
    catalog = make_book_catalog(n_items, seed)
    interactions = make_book_interactions(catalog, seed=seed)
    sids = make_sids(catalog, levels=(16, 16), seed=seed)
    catalog.to_parquet(bundle.catalog_path, index=False)
    interactions.to_parquet(bundle.interactions_path, index=False)
    sids.to_parquet(bundle.sids_path, index=False)
    bundle.record_stage("data", config={"source": "chatrec.bookshop", "domain": "book"},
                        counts={"items": len(catalog), "interactions": len(interactions)})
    bundle.record_stage("sids", config={"method": "random", "levels": [16, 16], "seed": seed},
                        counts={"items": len(sids)})
    tokenizer = smollm2_tokenizer()
    model = tiny_llama(tokenizer, hidden=64, layers=2, seed=seed)
    extend_bundle(bundle, base="tiny-llama", init="mean", model=model, tokenizer=tokenizer, quiet=True)
    return bundle.root
