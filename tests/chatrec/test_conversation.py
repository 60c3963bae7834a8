"""`render_conversation`: ids from the chat template, loss mask on assistant tokens only."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from chatrec.conversation import ConversationError, prompt_ids, render_conversation

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|sid_begin|>", "<|sid_end|>", "<|s0_1|>", "<|act_like|>"]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    """A word-level fake tokenizer with a ChatML template (nanochat-style fake)."""
    words = ["[UNK]", "\n", "system", "user", "assistant", "hi", "there", "you", "rec", "more", "ok", "thanks"]
    vocab = {w: i for i, w in enumerate(words)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", behavior="isolated"),
                                               pre_tokenizers.WhitespaceSplit()])
    fast = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL})
    fast.chat_template = CHATML
    return fast


MSGS = [
    {"role": "system", "content": "you rec"},
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": "<|sid_begin|><|s0_1|><|sid_end|> ok"},
    {"role": "user", "content": "more"},
    {"role": "assistant", "content": "thanks <|act_like|>"},
]


def _decode_masked(tok, r, value: int) -> str:
    return tok.decode([i for i, m in zip(r.input_ids, r.loss_mask, strict=True) if m == value])


def test_ids_are_the_template_ids_and_mask_is_assistant_tokens(tok):
    r = render_conversation(MSGS, tok)
    assert r.input_ids == tok.apply_chat_template(MSGS, tokenize=True, return_dict=False)
    assert len(r.loss_mask) == len(r.input_ids)
    # exactly: each assistant content + its end-of-turn marker (and the newline the template writes)
    expected = []
    for m in MSGS:
        ids = tok(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        head = len(tok(f"<|im_start|>{m['role']}\n", add_special_tokens=False)["input_ids"])
        expected += [0] * head + [int(m["role"] == "assistant")] * (len(ids) - head)
    assert r.loss_mask == expected
    learned = _decode_masked(tok, r, 1)
    assert "<|sid_begin|>" in learned and "thanks" in learned and "<|im_end|>" in learned
    hidden = _decode_masked(tok, r, 0)
    assert "hi" in hidden and "more" in hidden and "assistant" in hidden
    assert "thanks" not in hidden and "<|sid_begin|>" not in hidden


def test_prompt_ids_match_the_prefix_of_a_rendered_sample(tok):
    """Serving's retrieval prompt is a prefix of the training sample: same ids, same place."""
    r = render_conversation(MSGS[:3], tok)
    sid_begin = tok.convert_tokens_to_ids("<|sid_begin|>")
    p = prompt_ids(tok, MSGS[:2], suffix_ids=[sid_begin])
    assert r.input_ids[: len(p)] == p
    assert r.loss_mask[len(p) - 1] == 1 and r.loss_mask[len(p) - 2] == 0


def test_truncation_keeps_mask_aligned(tok):
    full = render_conversation(MSGS, tok)
    cut = render_conversation(MSGS, tok, max_tokens=len(full) - 3)
    assert cut.input_ids == full.input_ids[:-3] and cut.loss_mask == full.loss_mask[:-3]
    with pytest.raises(ConversationError, match="max_tokens"):
        render_conversation(MSGS, tok, max_tokens=5)


def test_bad_conversations_are_refused(tok):
    with pytest.raises(ConversationError, match="no assistant"):
        render_conversation(MSGS[:2], tok)
    with pytest.raises(ConversationError, match="role"):
        render_conversation([{"role": "bot", "content": "x"}], tok)
    with pytest.raises(ConversationError, match="empty"):
        render_conversation([], tok)


def test_template_that_rewrites_history_is_refused(tok):
    # a template that drops earlier assistant turns' content (like some reasoning templates)
    rewriting = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}ok{% else %}{{ m['content'] }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ConversationError, match="prefix-stable"):
        _render_with(tok, rewriting)


def _render_with(tok, template: str):
    old = tok.chat_template
    tok.chat_template = template
    try:
        return render_conversation(MSGS, tok)
    finally:
        tok.chat_template = old
