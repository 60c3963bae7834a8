"""Render a chat conversation to token ids and a loss mask with the tokenizer's own chat template.

One pure function, shared by training (finetune) and serving (prompt ids): the ids are exactly
`tokenizer.apply_chat_template(messages)`, and the mask is 1 on the tokens each assistant turn
adds (its content and the template's end-of-turn marker), 0 on system, user and template
scaffolding such as `<|im_start|>assistant\\n`. Assistant spans are found by rendering growing
prefixes of the conversation: the tokens an assistant message adds on top of the prefix rendered
with `add_generation_prompt=True` are that message's tokens. A template that rewrites earlier
turns (so a prefix does not render to a prefix of the ids) is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatrec.errors import ChatrecError

ROLES = ("system", "user", "assistant")


class ConversationError(ChatrecError):
    """A conversation cannot be rendered (bad roles, template not prefix-stable, nothing to learn)."""


@dataclass(frozen=True)
class RenderedConversation:
    """Token ids and a same-length 0/1 mask (1 = the loss is taken on this token)."""

    input_ids: list[int]
    loss_mask: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_target_tokens(self) -> int:
        return sum(self.loss_mask)


def template_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool) -> list[int]:
    """`apply_chat_template` as a plain list of ids (transformers 5 returns a BatchEncoding by default)."""
    ids = tokenizer.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
    )
    if isinstance(ids, Mapping):  # older/other tokenizers
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, suffix_ids: Sequence[int] = ()) -> list[int]:
    """Ids of a prompt ending in the assistant's generation prompt, plus optional forced tokens.

    Retrieval uses `prompt_ids(tok, next_item_messages(...), suffix_ids=[sid_begin_id])`.
    """
    return template_ids(tokenizer, messages, add_generation_prompt=True) + [int(i) for i in suffix_ids]


def render_conversation(
    messages: Sequence[Mapping[str, str]],
    tokenizer: Any,
    *,
    max_tokens: int | None = None,
) -> RenderedConversation:
    """Token ids of `messages` rendered with `tokenizer`'s chat template, and the assistant loss mask.

    `max_tokens` truncates on the right (the mask is truncated with the ids); a conversation whose
    assistant tokens are all cut away raises `ConversationError`, as does one with no assistant turn.
    """
    _check_roles(messages)
    full = template_ids(tokenizer, messages, add_generation_prompt=False)
    mask = [0] * len(full)
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = template_ids(tokenizer, messages[:i], add_generation_prompt=True)
        upto = template_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if full[: len(upto)] != upto or upto[: len(prompt)] != prompt:
            raise ConversationError(
                f"the chat template of {type(tokenizer).__name__} is not prefix-stable at message {i} "
                "(it rewrites earlier turns), so assistant tokens cannot be located; use a template "
                "that renders each turn independently"
            )
        start, end = len(prompt), len(upto)
        for j in range(start, end):
            mask[j] = 1
    if max_tokens is not None:
        full, mask = full[:max_tokens], mask[:max_tokens]
    if not any(mask):
        raise ConversationError(
            "conversation has no assistant tokens to learn from"
            + (f" within max_tokens={max_tokens}" if max_tokens is not None else "")
        )
    return RenderedConversation(input_ids=full, loss_mask=mask)


def _check_roles(messages: Sequence[Mapping[str, str]]) -> None:
    if not messages:
        raise ConversationError("conversation is empty")
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role not in ROLES:
            raise ConversationError(f"message {i}: role must be one of {ROLES}, got {role!r}")
        if not isinstance(msg.get("content"), str):
            raise ConversationError(f"message {i}: content must be a string, got {type(msg.get('content')).__name__}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ConversationError("conversation has no assistant message to learn from")
