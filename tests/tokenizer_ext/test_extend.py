"""Tokenizer + model extension: ids, tokenisation of SID spans, resizing, re-extension, init."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from chatrec import tokens
from chatrec.bundle import Bundle
from chatrec.errors import ConfigError, DataError
from chatrec.testing import make_catalog, make_sids, make_tiny_bundle, tiny_llama
from chatrec.trie import ItemTrie
from tokenizer_ext import (
    TokenMap,
    build_trie,
    extend,
    extend_bundle,
    load_extended,
    semantic_code_vectors,
    sid_token_ids,
)


def _span_ids(codes: list[int], tm: TokenMap) -> list[int]:
    return [tm.sid_begin, *sid_token_ids(codes, tm), tm.sid_end]


# save / load ------------------------------------------------------------------------------------
def test_save_load_keeps_every_id(tiny_bundle: Bundle) -> None:
    model_dir = tiny_bundle.model_dir
    tm = TokenMap.load(model_dir / "chatrec_tokens.json")
    model, tok, tm2 = load_extended(model_dir)
    assert tm2 == tm
    vocab = tok.get_vocab()
    for tid, text in tm.meanings().items():
        assert vocab[text] == tid
        assert tok.convert_ids_to_tokens(tid) == text
    # span markers, 8 + 8 codes at most on the first levels, a disambiguation level, 3 actions
    assert set(tm.actions) == {"like", "watch", "dislike"}
    assert len(tm.level_sizes) == 3
    assert tm.vocab_size == len(tok)
    assert model.get_input_embeddings().weight.shape[0] % 64 == 0
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    # the written trie maps each item's code ids back to the item
    trie = ItemTrie.load(model_dir / "trie.npz")
    sids = pd.read_parquet(tiny_bundle.sids_path)
    for item_id, codes in zip(sids["item_id"], sids["codes"], strict=True):
        assert trie.item_id(sid_token_ids(codes, tm)) == item_id
    # the manifest records the tokens and their meaning
    record = tiny_bundle.stage("tokenizer")
    assert record is not None
    assert record["tokens"][str(tm.sid_begin)] == tokens.SID_BEGIN
    assert record["counts"]["added_tokens"] == len(tm.meanings())


def test_token_map_round_trip(tmp_path: Path) -> None:
    tm = TokenMap(sid_begin=10, sid_end=11, codes={"0_0": 12, "0_1": 13, "1_0": 14}, actions={"like": 15},
                  vocab_size=16)
    tm.save(tmp_path / "t.json")
    assert TokenMap.load(tmp_path / "t.json") == tm
    assert tm.code_id(0, 1) == 13
    assert tm.level_sizes == [2, 1]
    with pytest.raises(DataError, match="level 1"):
        tm.code_id(1, 5)


# tokenisation ------------------------------------------------------------------------------------
def _check_spans_tokenise(tok: Any, model: Any, sids: pd.DataFrame) -> TokenMap:
    template_before = tok.chat_template
    levels = (np.asarray(sids["codes"].tolist()).max(axis=0) + 1).tolist()
    tm = extend(model, tok, levels=levels, actions=["like", "dislike"])
    assert tok.chat_template == template_before
    prefix, suffix = "Try", " (Alien, 1979) — a classic."
    for codes, span in zip(sids["codes"], sids["sid"], strict=True):
        ids = tok(span, add_special_tokens=False)["input_ids"]
        assert ids == _span_ids(list(codes), tm), span
        # surrounding text tokenises as it would alone: no merges across the span's boundaries
        mixed = tok(prefix + span + suffix, add_special_tokens=False)["input_ids"]
        alone = tok(prefix, add_special_tokens=False)["input_ids"]
        after = tok(suffix, add_special_tokens=False)["input_ids"]
        assert mixed == alone + _span_ids(list(codes), tm) + after
    # two spans and an action back to back stay separate tokens
    a, b = sids["sid"].iloc[0], sids["sid"].iloc[1]
    ids = tok(a + tokens.action_token("like") + b, add_special_tokens=False)["input_ids"]
    assert ids == _span_ids(list(sids["codes"].iloc[0]), tm) + [tm.actions["like"]] + \
        _span_ids(list(sids["codes"].iloc[1]), tm)
    # the chat template renders an assistant turn with a span to the same ids, contiguous
    span_ids = _span_ids(list(sids["codes"].iloc[0]), tm)
    chat = tok.apply_chat_template([{"role": "user", "content": "Recommend a film."},
                                    {"role": "assistant", "content": f"Try {a}."}], tokenize=True)
    chat = list(chat["input_ids"]) if isinstance(chat, dict) or hasattr(chat, "keys") else list(chat)
    assert any(chat[i:i + len(span_ids)] == span_ids for i in range(len(chat)))
    # decoding without skipping specials gives the span text back
    assert tok.decode(span_ids) == a
    return tm


def test_sid_spans_tokenise_one_to_one_smollm2(smol_tok: Any) -> None:
    sids = make_sids(make_catalog(60), levels=(16, 8))
    model = tiny_llama(smol_tok)
    tm = _check_spans_tokenise(smol_tok, model, sids)
    assert tm.sid_begin == 49152  # first id after SmolLM2's 49152 tokens


def test_sid_spans_tokenise_one_to_one_qwen2(qwen2_tok: Any) -> None:
    sids = make_sids(make_catalog(60), levels=(16, 8))
    n_before = len(qwen2_tok)
    model = tiny_llama(qwen2_tok, hidden=32, layers=1, heads=2)
    rows_before = model.get_input_embeddings().weight.shape[0]
    tm = _check_spans_tokenise(qwen2_tok, model, sids)
    assert tm.sid_begin == n_before
    assert model.get_input_embeddings().weight.shape[0] >= len(qwen2_tok)
    assert model.get_input_embeddings().weight.shape[0] >= rows_before


@pytest.mark.slow
def test_shipped_qwen2_tokenizer_matches_gguf(qwen2_gguf: Path, qwen2_tok: Any) -> None:
    from transformers import AutoTokenizer

    from_gguf = AutoTokenizer.from_pretrained(str(qwen2_gguf.parent), gguf_file=qwen2_gguf.name)
    assert from_gguf.get_vocab() == qwen2_tok.get_vocab()
    assert from_gguf.chat_template == qwen2_tok.chat_template
    text = "Hello world! Try Alien (1979) — 東京 <|im_start|>user\n  code: x = 1"
    assert from_gguf(text)["input_ids"] == qwen2_tok(text)["input_ids"]


# resizing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [True, False])
def test_resize_keeps_old_rows_bit_identical(smol_tok: Any, tie: bool) -> None:
    model = tiny_llama(smol_tok, tie=tie)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    n_old = old_in.shape[0]
    tm = extend(model, smol_tok, levels=[100, 40, 3], actions=["like", "watch"])
    new_in = model.get_input_embeddings().weight
    new_out = model.get_output_embeddings().weight
    assert new_in.shape[0] % 64 == 0 and new_in.shape[0] >= len(smol_tok) > n_old
    assert torch.equal(new_in[:n_old], old_in)
    assert torch.equal(new_out[:n_old], old_out)
    assert (new_out.data_ptr() == new_in.data_ptr()) is tie
    assert model.config.vocab_size == new_in.shape[0]
    # mean init: each new row is the mean of the base rows (input and, when untied, output)
    new_ids = torch.tensor(tm.all_ids())
    assert torch.allclose(new_in[new_ids], old_in.mean(0).expand(len(new_ids), -1), atol=1e-6)
    if not tie:
        assert torch.allclose(new_out[new_ids], old_out.mean(0).expand(len(new_ids), -1), atol=1e-6)
    # the model still runs over the new ids
    with torch.no_grad():
        logits = model(torch.tensor([[1, *tm.all_ids()[:5]]])).logits
    assert logits.shape[-1] == new_in.shape[0]


def test_extend_rejects_bad_init(smol_tok: Any) -> None:
    with pytest.raises(ConfigError, match="`init`"):
        extend(tiny_llama(smol_tok), smol_tok, levels=[4], actions=[], init="random")
    with pytest.raises(ConfigError, match="semantic"):
        extend(tiny_llama(smol_tok), smol_tok, levels=[4], actions=[], init="semantic")


# re-extension -------------------------------------------------------------------------------------
def test_reextension_adds_only_missing_and_keeps_ids(tiny_bundle: Bundle) -> None:
    tm1 = TokenMap.load(tiny_bundle.model_dir / "chatrec_tokens.json")
    model1, _, _ = load_extended(tiny_bundle.model_dir)
    rows1 = model1.get_input_embeddings().weight.detach().clone()

    # re-running with nothing new changes nothing
    assert extend_bundle(tiny_bundle, quiet=True) == tm1

    # `sids assign` added items: a new code at level 0, a deeper disambiguation, and a new action
    sids = pd.read_parquet(tiny_bundle.sids_path)
    catalog = pd.read_parquet(tiny_bundle.catalog_path)
    new_items = pd.DataFrame({"item_id": ["n1", "n2"], "codes": [[11, 0, 0], [0, 0, 9]]})
    new_items["sid"] = new_items["codes"].map(tokens.sid_string)
    pd.concat([sids, new_items], ignore_index=True).to_parquet(tiny_bundle.sids_path, index=False)
    extra = catalog.iloc[:2].assign(item_id=["n1", "n2"], title=["New A", "New B"])
    pd.concat([catalog, extra], ignore_index=True).to_parquet(tiny_bundle.catalog_path, index=False)
    inter = pd.read_parquet(tiny_bundle.interactions_path)
    inter.loc[0, "action"] = "skip"
    inter.to_parquet(tiny_bundle.interactions_path, index=False)

    tm2 = extend_bundle(tiny_bundle, quiet=True)
    for tid, text in tm1.meanings().items():
        assert tm2.meanings()[tid] == text
    added = {tid: text for tid, text in tm2.meanings().items() if tid not in tm1.meanings()}
    assert sorted(added.values()) == sorted(["<|s0_11|>", "<|s2_9|>", "<|act_skip|>"])
    assert min(added) == tm1.vocab_size
    model2, tok2, _ = load_extended(tiny_bundle.model_dir)
    rows2 = model2.get_input_embeddings().weight
    assert torch.equal(rows2[:tm1.vocab_size], rows1[:tm1.vocab_size])
    trie = ItemTrie.load(tiny_bundle.model_dir / "trie.npz")
    assert trie.item_id(sid_token_ids([11, 0, 0], tm2)) == "n1"
    assert tok2(tokens.sid_string([0, 0, 9]), add_special_tokens=False)["input_ids"] == \
        _span_ids([0, 0, 9], tm2)
    record = tiny_bundle.stage("tokenizer")
    assert record is not None and set(record["added_tokens"].values()) == set(added.values())


# semantic init ------------------------------------------------------------------------------------
def test_semantic_init_is_closer_to_item_text(smol_tok: Any) -> None:
    catalog = make_catalog(80, seed=1)
    sids = make_sids(catalog, levels=(16, 4), seed=1)
    levels = [16, 4, int(np.asarray(sids["codes"].tolist())[:, 2].max()) + 1]
    mean_model = tiny_llama(smol_tok, hidden=128, seed=3)
    sem_model = tiny_llama(smol_tok, hidden=128, seed=3)
    base = sem_model.get_input_embeddings().weight.detach().clone()
    mean_tok = smol_tok
    from chatrec.models import smollm2_tokenizer

    sem_tok = smollm2_tokenizer()
    tm_mean = extend(mean_model, mean_tok, levels=levels, actions=["like"], init="mean")
    tm_sem = extend(sem_model, sem_tok, levels=levels, actions=["like"], init="semantic",
                    catalog=catalog, sids=sids)
    assert tm_mean == tm_sem
    w_mean = mean_model.get_input_embeddings().weight.detach()
    w_sem = sem_model.get_input_embeddings().weight.detach()
    ids = torch.tensor([tm_sem.code_id(0, c) for c in range(16)])
    assert not torch.allclose(w_mean[ids], w_sem[ids])
    # the action token starts from its word
    like = smol_tok(" like", add_special_tokens=False)["input_ids"]
    assert torch.allclose(w_sem[tm_sem.actions["like"]], base[torch.tensor(like)].mean(0), atol=1e-6)

    titles = smol_tok(catalog["title"].tolist(), add_special_tokens=False)["input_ids"]
    item_vec = torch.stack([base[torch.tensor(t)].mean(0) for t in titles])  # [N, H]
    codes0 = np.asarray(sids["codes"].tolist())[:, 0]
    rng = np.random.default_rng(0)
    cos = torch.nn.functional.cosine_similarity
    wins, own_all, rand_all = 0, [], []
    used = sorted(set(codes0.tolist()))
    for code in used:
        own = torch.from_numpy(np.flatnonzero(codes0 == code))
        others = np.flatnonzero(codes0 != code)
        rand = torch.from_numpy(rng.choice(others, size=len(own), replace=False))
        row = w_sem[tm_sem.code_id(0, code)]
        c_own = cos(row, item_vec[own].mean(0), dim=0).item()
        c_rand = cos(row, item_vec[rand].mean(0), dim=0).item()
        own_all.append(c_own)
        rand_all.append(c_rand)
        wins += c_own > c_rand
    assert wins == len(used), (own_all, rand_all)
    assert np.mean(own_all) > np.mean(rand_all) + 0.05
    # and the helper agrees with the rows that were written
    vecs = semantic_code_vectors(base, smol_tok, catalog, sids)
    assert torch.allclose(vecs[(0, used[0])], w_sem[tm_sem.code_id(0, used[0])], atol=1e-6)


# trie ------------------------------------------------------------------------------------------------
def test_build_trie_from_frame_and_bundle(tiny_bundle: Bundle) -> None:
    tm = TokenMap.load(tiny_bundle.model_dir)
    sids = pd.read_parquet(tiny_bundle.sids_path)
    t1 = build_trie(sids, tm)
    t2 = build_trie(tiny_bundle, tm)
    assert t1.n_items == t2.n_items == len(sids)
    first = sid_token_ids(sids["codes"].iloc[0], tm)
    assert set(t1.allowed_next([]).tolist()) == {tm.code_id(0, c) for c in
                                                 {int(c[0]) for c in sids["codes"]}}
    assert t1.item_id(first) == sids["item_id"].iloc[0]
    with pytest.raises(DataError, match="no token"):
        build_trie(pd.DataFrame({"item_id": ["x"], "codes": [[99, 0, 0]]}), tm)


def test_make_tiny_bundle_variants(tmp_path: Path) -> None:
    b = make_tiny_bundle(tmp_path / "b", n_items=20, levels=(4, 4, 4), tie=False)
    model, tok, tm = load_extended(b.model_dir)
    assert len(tm.level_sizes) == 4
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert len(pd.read_parquet(b.catalog_path)) == 20
    stages = b.manifest()["stages"]
    assert {"data", "sids", "tokenizer"} <= set(stages)


def test_load_bottom_layers_is_quiet_and_checks_the_rest(tmp_path, caplog):  # type: ignore[no-untyped-def]
    """Loading fewer layers than saved skips the upper layers silently; any other key mismatch is an error."""
    import logging

    from safetensors.torch import load_file, save_file

    from chatrec.errors import BundleError
    from chatrec.testing import make_tiny_bundle
    from tokenizer_ext import load_extended

    b = make_tiny_bundle(tmp_path / "b", layers=2)
    with caplog.at_level(logging.WARNING):
        model, _, _ = load_extended(b.model_dir, num_layers=1)
    assert len(model.model.layers) == 1 and "LOAD REPORT" not in caplog.text

    weights = b.model_dir / "model.safetensors"
    state = load_file(str(weights))
    state.pop("model.layers.0.mlp.up_proj.weight")
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(BundleError, match="missing model.layers.0.mlp.up_proj.weight"):
        load_extended(b.model_dir, num_layers=1)
