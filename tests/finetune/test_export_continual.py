"""The continual finetune on new logs with new items, and the export of a sequence-recipe bundle."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from chatrec.bundle import Bundle
from finetune.data import BuildConfig, build_bundle


def _logits(model, ids):  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()

def _parent_and_new_logs(tmp_path, train):  # type: ignore[no-untyped-def]
    """A finetuned tiny parent (40 items) and new logs of its users, half on 6 new items."""
    from chatrec.sids import SidConfig, fit_bundle
    from chatrec.testing import make_catalog, make_interactions, smollm2_tokenizer, tiny_llama
    from tokenizer_ext import extend_bundle

    full = make_catalog(46)
    catalog, new_items = full.iloc[:40], full.iloc[40:]
    inter = make_interactions(catalog, n_users=12, per_user=12)
    parent = Bundle(tmp_path / "parent").ensure()
    catalog.to_parquet(parent.catalog_path, index=False)
    inter.to_parquet(parent.interactions_path, index=False)
    fit_bundle(parent, SidConfig(levels=2, codebook_size=4))
    tok = smollm2_tokenizer()
    extend_bundle(parent, base="tiny", model=tiny_llama(tok), tokenizer=tok, quiet=True)
    build_bundle(parent, BuildConfig(history_len=3))
    train(parent)

    # new logs: later events of existing users, half on the new items
    t0 = inter["timestamp"].max() + pd.Timedelta(days=1)
    rng = np.random.default_rng(1)
    rows = []
    for u in range(12):
        for k in range(4):
            item = new_items["item_id"].iloc[(u + k) % len(new_items)] if k % 2 else catalog["item_id"].iloc[rng.integers(40)]
            rows.append({"user_id": f"u{u}", "item_id": item, "action": "like",
                         "timestamp": (t0 + pd.Timedelta(hours=u * 10 + k)).isoformat()})
    logs = tmp_path / "new_logs.jsonl"
    logs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items_file = tmp_path / "new_items.jsonl"
    items_file.write_text(new_items.assign(categories=new_items["categories"].map(list)).to_json(orient="records", lines=True))
    return parent, catalog, new_items, logs, items_file


def _assert_new_items_retrievable(out, model, catalog, new_items, tokenizer, token_map):  # type: ignore[no-untyped-def]
    """Constrained retrieval restricted to the new items returns every one of them."""
    from chatrec.prompts import HistoryEvent, sequence_prompt
    from chatrec.retrieval import RetrievalConfig, top_k
    from chatrec.trie import ItemTrie
    from finetune.validation import CachedLogprobs

    trie = ItemTrie.load(out.model_dir / "trie.npz")
    new_ids = new_items["item_id"].tolist()
    assert all(trie.index_of_id(i) is not None for i in new_ids)
    sids = pd.read_parquet(out.sids_path)
    codes = {i: tuple(c) for i, c in zip(sids["item_id"], sids["codes"], strict=True)}
    history = [HistoryEvent(codes[i], "like") for i in catalog["item_id"].iloc[:3]]
    ids = tokenizer(sequence_prompt(history, "like"), add_special_tokens=False)["input_ids"]
    allowed = np.isin(np.asarray(trie.item_ids).astype(str), new_ids)
    found = top_k(CachedLogprobs(model), ids, trie, RetrievalConfig(k=len(new_ids)), allowed=allowed)
    assert sorted(s.item_id for s in found) == sorted(new_ids)
    # and the new period's training data names the new items
    train = [json.loads(x) for x in (out.train_dir / "train.jsonl").read_text().splitlines()]
    assert any(r["target_item_id"] in new_ids for r in train)


def test_continual_finetune_of_a_lora_parent_adds_new_items_to_the_trie(tmp_path):
    from finetune.continual import ContinualConfig, continual_finetune
    from finetune.sequence import SequenceConfig, train_sequences
    from tokenizer_ext import load_extended

    seq = SequenceConfig(lora=True, keep_layers=None, max_steps=3, batch_size=4, rows_steps=1, warmup_steps=1,
                         learning_rate=2e-2, eval_users=0, bf16="off", num_threads=1)
    parent, catalog, new_items, logs, items_file = _parent_and_new_logs(
        tmp_path, lambda b: train_sequences(b, seq, quiet=True))
    out = Bundle(tmp_path / "child")
    rec = continual_finetune(parent, logs, out, items=items_file, config=ContinualConfig(eval_users=4),
                             finetune_overrides={"max_steps": 2}, quiet=True)
    assert rec["new_items"] == 6 and rec["new_interactions"] == 48
    assert set(rec["before"]) >= {"hr@10", "ndcg@10"} and set(rec["after"]) >= {"hr@10", "ndcg@10"}
    assert out.stage("continual")["parent"] == str(parent.root)
    finetune_stage = out.stage("finetune")
    assert finetune_stage["config"]["lora"] and finetune_stage["counts"]["steps"] == 2  # LoRA again, on the merge
    assert (out.adapter_dir / "adapter_model.safetensors").exists()
    model, tokenizer, token_map = load_extended(out.path("trained"))
    _assert_new_items_retrievable(out, model.eval(), catalog, new_items, tokenizer, token_map)


def test_continual_finetune_of_a_sequence_recipe_parent(tmp_path):
    from finetune.continual import ContinualConfig, continual_finetune
    from finetune.sequence import SequenceConfig, train_sequences
    from tokenizer_ext import load_extended

    seq = SequenceConfig(max_steps=3, batch_size=4, keep_layers=1, rows_steps=1, warmup_steps=1, eval_users=0,
                         bf16="off")
    parent, catalog, new_items, logs, items_file = _parent_and_new_logs(
        tmp_path, lambda b: train_sequences(b, seq, quiet=True))
    out = Bundle(tmp_path / "child")
    rec = continual_finetune(parent, logs, out, items=items_file, config=ContinualConfig(eval_users=4),
                             finetune_overrides={"max_steps": 2}, quiet=True)
    assert rec["new_items"] == 6
    assert set(rec["before"]) >= {"hr@10", "ndcg@10"} and set(rec["after"]) >= {"hr@10", "ndcg@10"}
    model, tokenizer, token_map = load_extended(out.path("trained"))
    assert model.config.num_hidden_layers == 1  # continued from the parent's shallow model
    _assert_new_items_retrievable(out, model.eval(), catalog, new_items, tokenizer, token_map)


def test_export_of_a_sequence_recipe_bundle(tmp_path):
    from transformers import AutoModelForCausalLM

    from chatrec.testing import make_tiny_bundle
    from finetune.export import export_bundle
    from finetune.sequence import SequenceConfig, train_sequences
    from tokenizer_ext import load_extended

    b = make_tiny_bundle(tmp_path / "b")
    build_bundle(b, BuildConfig(history_len=3))
    counts = train_sequences(b, SequenceConfig(max_steps=4, batch_size=4, keep_layers=1, rows_steps=2,
                                               warmup_steps=1, eval_users=3, bf16="off"), quiet=True)
    assert counts["layers"] == 1 and counts["steps"] == 4 and 0 <= counts["valid_hr@10"] <= 1
    out = export_bundle(b)
    assert out == {"merged": str(b.export_dir)}
    trained, tok, token_map = load_extended(b.path("trained"))
    ids = tok("<|act_like|>", add_special_tokens=False)["input_ids"] + token_map.level_token_ids(0)[:3]
    want = _logits(trained.eval(), ids)
    # the trained rows moved away from the extended model's rows, and the export is that model
    assert not np.allclose(want[:, -len(token_map.all_ids()):],
                           _logits(load_extended(b.model_dir, num_layers=1)[0].eval(), ids)[:, -len(token_map.all_ids()):],
                           atol=1e-4)
    np.testing.assert_allclose(_logits(AutoModelForCausalLM.from_pretrained(str(b.export_dir)).eval(), ids), want,
                               atol=1e-4)
    for name in ("chatrec_tokens.json", "trie.npz", "tokenizer.json"):
        assert (b.export_dir / name).exists()


def test_logs_dated_before_the_parents_cut_are_refused(tmp_path):
    """One event from 1970 would make the whole parent history "new" for the continual split."""
    from chatrec.errors import DataError
    from finetune.continual import check_after_cut

    parent = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["m1", "m2"], "action": ["like", "like"],
                           "timestamp": pd.to_datetime(["2024-01-01", "2024-02-01"], utc=True)})
    later = parent.assign(timestamp=pd.to_datetime(["2024-03-01", "2024-03-02"], utc=True))
    check_after_cut(later, parent, "new.jsonl")  # all after the cut: accepted
    poisoned = pd.concat([later, later.iloc[:1].assign(user_id="evil", timestamp=pd.Timestamp("1970-01-01", tz="UTC"))])
    with pytest.raises(DataError, match=r"new.jsonl: 1 events are dated at or before .*'evil'.*`timestamp`"):
        check_after_cut(poisoned, parent, "new.jsonl")
