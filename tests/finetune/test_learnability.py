"""The model learns: a tiny random model, the real `data build` and the sequence recipe, a planted rule.

The log follows a rule no popularity or co-occurrence count can read off a single event: each user
walks the catalog in a fixed cyclic order, one step per event, and every event is a like. The
next item is a function of the last one, so a recipe that trains on the right tokens reaches a hit
rate near 1; one that masks the wrong positions, shifts the sequence format or maps codes to the
wrong items cannot (the `broken` cases below show that each such break fails the bar).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chatrec.testing import make_tiny_bundle

pytest.importorskip("torch")
pytest.importorskip("transformers")

N_ITEMS, N_USERS, PER_USER = 40, 80, 14
BAR = 0.9  # HR@10 the recipe must reach; each break below must miss it


def planted_log(item_ids: list[str], seed: int = 0) -> pd.DataFrame:
    """Each user starts at a random item and likes the next one in a fixed cyclic order, step by step."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(item_ids))
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for u in range(N_USERS):
        start = int(rng.integers(len(item_ids)))
        for k in range(PER_USER):
            item = item_ids[int(order[(start + k) % len(item_ids)])]
            rows.append({"user_id": f"u{u:03d}", "item_id": item, "action": "like",
                         "timestamp": t0 + pd.Timedelta(hours=u * 100 + k)})
    frame = pd.DataFrame(rows)
    frame["timestamp"] = frame["timestamp"].astype("datetime64[ns, UTC]")
    return frame


def train_and_score(root: Path) -> float:
    from finetune.data import BuildConfig, build_bundle
    from finetune.sequence import SequenceConfig, train_sequences

    bundle = make_tiny_bundle(root, n_items=N_ITEMS, n_users=12, levels=(8, 8), hidden=64, layers=2)
    catalog = pd.read_parquet(bundle.catalog_path)
    planted_log(catalog["item_id"].astype(str).tolist()).to_parquet(bundle.interactions_path, index=False)
    build_bundle(bundle, BuildConfig(window_tokens=64, task_weights={"next_item": 1.0}))
    counts = train_sequences(bundle, SequenceConfig(
        max_steps=160, batch_size=16, learning_rate=3e-3, rows_learning_rate=1e-2, rows_steps=0, warmup_steps=10,
        chat_share=0.0, eval_users=N_USERS, keep_layers=None, bf16="off", seed=0), quiet=True)
    return float(counts["valid_hr@10"])


def test_planted_rule_is_learned(tmp_path: Path) -> None:
    assert train_and_score(tmp_path / "b") >= BAR


def _shifted_loss(rm, windows, pad_id, device, head_rows_multiple=256):  # type: ignore[no-untyped-def]
    """The loss mask off by one: each position is trained on its own token, not the next one."""
    import torch.nn.functional as F

    from finetune.rows_model import right_padded

    ids, attn = right_padded(windows, pad_id, device)
    h = rm.hidden(ids, attn)
    keep = attn.bool()
    logits = rm.logits(h[keep], full=False).float()
    return F.cross_entropy(logits, ids[keep] - rm.first), int(keep.sum())


def _shuffled_codes(catalog_frame: pd.DataFrame, sids: pd.DataFrame) -> pd.DataFrame:
    out = sids.copy()
    out["codes"] = list(np.random.default_rng(1).permutation(np.array(sids["codes"].tolist())))
    return out


@pytest.mark.parametrize("broken", ["loss_mask", "sequence_format", "trie_mapping"])
def test_broken_pipeline_fails_the_bar(broken: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each break that the learnability bar exists to catch does fail it (seen here: below 0.6)."""
    import finetune.data
    import finetune.rows_model

    if broken == "loss_mask":
        monkeypatch.setattr(finetune.rows_model, "sequence_loss", _shifted_loss)
    elif broken == "sequence_format":  # events written newest first: the order the rule lives in is lost
        original = finetune.data.ConversationBuilder.events_text
        monkeypatch.setattr(finetune.data.ConversationBuilder, "events_text",
                            lambda self, events: original(self, list(events)[::-1]))
    else:  # training sequences name items by another item's codes than the trie and serving use
        original_infos = finetune.data.item_infos
        monkeypatch.setattr(finetune.data, "item_infos",
                            lambda catalog, sids: original_infos(catalog, _shuffled_codes(catalog, sids)))
    assert train_and_score(tmp_path / "b") < BAR
