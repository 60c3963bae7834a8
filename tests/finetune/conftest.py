"""Fixtures for finetune tests: hand-made SIDs over the shared tiny catalog and log."""

from __future__ import annotations

import pandas as pd
import pytest

from chatrec.tokens import sid_string
from tests.conftest import make_catalog, make_interactions


def make_sids(catalog: pd.DataFrame, levels: int = 3, size: int = 4) -> pd.DataFrame:
    """Deterministic codes: item i -> its base-`size` digits, plus a 0 disambiguation code."""
    rows = []
    for i, item_id in enumerate(catalog["item_id"]):
        digits, n = [], i
        for _ in range(levels):
            digits.append(n % size)
            n //= size
        codes = [*digits[::-1], 0]
        rows.append({"item_id": item_id, "codes": codes, "sid": sid_string(codes)})
    return pd.DataFrame(rows)


@pytest.fixture
def tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    catalog = make_catalog(40)
    return catalog, make_interactions(catalog, n_users=12, per_user=14), make_sids(catalog)
