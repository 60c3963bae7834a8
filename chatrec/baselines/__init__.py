"""Classic recommenders the LLM is measured against, all on item-index sequences.

`make_baseline(name)` builds one by name; each has `fit(sequences, n_items)`,
`score(histories) -> [B, n_items]` and `recommend(history, k, exclude)`.
"""

from __future__ import annotations

import dataclasses

from chatrec.baselines.base import Baseline, NotFittedError
from chatrec.baselines.itemknn import ItemKNN, ItemKNNConfig
from chatrec.baselines.popularity import Popularity, RandomBaseline
from chatrec.baselines.sasrec import SASRec, SASRecConfig
from chatrec.errors import ConfigError

BASELINES = ("random", "popularity", "itemknn", "sasrec")


def make_baseline(name: str, *, seed: int = 0, progress: bool = True, itemknn: ItemKNNConfig | None = None,
                  sasrec: SASRecConfig | None = None) -> Baseline:
    """A fresh, unfitted baseline by name (one of `BASELINES`); `seed` overrides the SASRec config's."""
    if name == "random":
        return RandomBaseline(seed=seed)
    if name == "popularity":
        return Popularity()
    if name == "itemknn":
        return ItemKNN(itemknn)
    if name == "sasrec":
        return SASRec(dataclasses.replace(sasrec or SASRecConfig(), seed=seed), progress=progress)
    raise ConfigError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


__all__ = [
    "BASELINES", "Baseline", "ItemKNN", "ItemKNNConfig", "NotFittedError", "Popularity",
    "RandomBaseline", "SASRec", "SASRecConfig", "make_baseline",
]
