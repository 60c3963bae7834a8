"""The real SmolLM2-135M-Instruct, extended: it still chats, and a forced SID span names a real item."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from chatrec import tokens
from chatrec.bundle import Bundle
from chatrec.testing import make_tiny_bundle
from chatrec.trie import ItemTrie
from tokenizer_ext import extend_bundle, load_extended

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Any, Any, Any]:
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("real") / "bundle", n_items=40, extend=False)
    extend_bundle(bundle, base="smollm2-135m-instruct", init="semantic", quiet=True)
    model, tok, tm = load_extended(bundle.model_dir)
    return bundle, model.eval(), tok, tm


def _greedy(model: Any, ids: list[int], n: int, eos: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=eos,
                         pad_token_id=eos)
    return out[0, len(ids):].tolist()


def test_extended_smollm2_still_answers_in_english(extended: tuple[Bundle, Any, Any, Any]) -> None:
    from transformers import AutoModelForCausalLM

    from chatrec.models import prepare_model

    _, model, tok, tm = extended
    prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"]) if hasattr(prompt, "keys") else list(prompt)
    answer_ids = _greedy(model, prompt, 30, tok.eos_token_id)
    answer = tok.decode(answer_ids, skip_special_tokens=True)
    assert not set(answer_ids) & set(tm.all_ids()), answer
    words = re.findall(r"[A-Za-z]+", answer)
    assert len(words) >= 4 and "Paris" in answer, answer
    # with mean/semantic rows far from the top logits, greedy text is the base model's text
    base = AutoModelForCausalLM.from_pretrained(prepare_model()).eval()
    assert _greedy(base, prompt, 30, tok.eos_token_id) == answer_ids


def test_forced_span_is_a_valid_item(extended: tuple[Bundle, Any, Any, Any]) -> None:
    bundle, model, tok, tm = extended
    trie = ItemTrie.load(Path(bundle.model_dir) / "trie.npz")
    messages = [{"role": "user", "content": "Recommend one movie to watch tonight."}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = [*(prompt["input_ids"] if hasattr(prompt, "keys") else prompt), tm.sid_begin]
    codes: list[int] = []
    with torch.no_grad():
        for _ in range(trie.depth + 1):
            logits = model(torch.tensor([ids])).logits[0, -1]          # [V]
            allowed = trie.allowed_next(codes) if len(codes) < trie.depth else [tm.sid_end]
            mask = torch.full_like(logits, float("-inf"))
            mask[torch.tensor(list(allowed), dtype=torch.long)] = 0
            nxt = int(torch.argmax(logits + mask))
            ids.append(nxt)
            if nxt == tm.sid_end:
                break
            codes.append(nxt)
    span = tok.decode(ids[ids.index(tm.sid_begin):])
    parsed = tokens.parse_sid(span)
    assert len(parsed) == trie.depth
    assert trie.item_id(codes) is not None
    assert ids[-1] == tm.sid_end
